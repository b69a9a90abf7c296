#!/usr/bin/env bash
# The GPU checks of issue #14, as one prepared script for a session that is lent the GPU machine
# (one H200, 16 cores, Python 3.12, torch/transformers installed; no decord2, av, pysubs2 there, and
# no network). Two steps:
#
#   bash scripts/gpu_check.sh prepare   # here: wheels for cp312 into .whl/, the uncased tokenizer into
#                                       # .bench/tokenizer/ (both git-ignored, carried to the device)
#   device run, carry [".whl", ".bench/tokenizer"], timeout_s 540:
#       bash scripts/gpu_check.sh run   # there: installs the wheels, runs the pool and decoder tests,
#                                       # the pool's schedule and bench.py --device cuda on the gpu corpus;
#                                       # every figure and log lands under $OUT
#
# The corpus (48 x 60 s 640x360, 12 x 60 s 1280x720, one 20-minute video) is made there in parallel.
set -euo pipefail
cd "$(dirname "$0")/.."

prepare() {
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d .whl decord2==3.4.0 av pysubs2
    mkdir -p .bench/tokenizer
    python3 - <<'EOF'
from transformers import AutoTokenizer

from videobert_cli.weights.resolve import OFFLINE_TEXT_MODELS, package_path

package, inner, _ = OFFLINE_TEXT_MODELS["sentence-transformers/all-MiniLM-L6-v2"]
folder = package_path(package, inner)
if folder is None:
    raise SystemExit(f"gpu_check: install {package} first (requirements-offline.txt)")
AutoTokenizer.from_pretrained(str(folder)).save_pretrained(".bench/tokenizer")
EOF
    du -sh .whl .bench/tokenizer >&2
}

run() {
    out=${OUT:?gpu_check: run needs \$OUT (the device tool sets it)}
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD VIDEOBERT_BENCH_TOKENIZER=$PWD/.bench/tokenizer
    { nvidia-smi; nproc; python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)"; } \
        > "$out/machine.txt" 2>&1 || true
    # The pool and exact frames, on this machine's cores (a few minutes at most).
    timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/extract/test_workers.py \
        tests/extract/test_decoder_agreement.py > "$out/tests.txt" 2>&1 || echo "tests failed: see tests.txt" >&2
    timeout 60 python3 scripts/pool_schedule.py --workers 15 --videos 30 --workdir /tmp/pool \
        > "$out/pool_schedule.json" 2> "$out/pool_schedule.err" || true
    # The benchmark with extract's defaults on this device (workers, batch size, precision auto).
    timeout 300 python3 scripts/bench.py --device cuda --corpus-set gpu --precision auto --corpus /tmp/bench \
        --out "$out/bench.json" 2> "$out/bench.err" || echo "bench failed: see bench.err" >&2
    tail -40 "$out/bench.err" >&2 || true
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: bash scripts/gpu_check.sh prepare|run" >&2; exit 2 ;;
esac
