#!/usr/bin/env bash
# The peer of issue 17: v-iashin/video_features' ResNet-50 extractor (CPU, fp32, its default batch size 1),
# on the short job's videos, for `scripts/short_job.py --peer "bash scripts/peer_video_features.sh default"`.
#
# Usage: peer_video_features.sh [BATCH_SIZE|default] [VIDEO_DIR_OR_FILE ...]
#   BATCH_SIZE  omitted or "default": the peer's configs/resnet.yml value (batch_size: 1)
#   videos      default: .bench/short-job/videos (searched recursively, demo/ included)
# Env:
#   PEER_DIR    where the peer is set up (default .bench/peer; see below)
#   FPS=2.667   extraction_fps for the peer (it re-encodes each video with `ffmpeg -filter:v fps=fps=$FPS`):
#               4 frames per 1.5 s, as `extract`'s defaults sample; it takes 444 frames where we take 448
#   KEEP=1      keep the temporary folder (features, log)
#
# Prints the wall-clock seconds of the peer's whole command (interpreter start, imports, model load,
# ffmpeg re-encodes, decoding, inference, saving) as peer_wall_seconds=S, and the frames it encoded
# (the first dimension of its saved <stem>_resnet.npy arrays) as peer_frames_total=N. Exits non-zero
# if the peer fails on any video (the peer itself catches per-video errors and exits 0).
#
# Setup (once; measured with commit a2f61b7 of 2025-01-31):
#   git clone https://github.com/v-iashin/video_features $PEER_DIR/video_features
#   python3 -m venv --system-site-packages $PEER_DIR/venv      # this machine's torch / torchvision
#   $PEER_DIR/venv/bin/pip install omegaconf opencv-python-headless; apt-get install ffmpeg
#   In utils/io.py comment out `assert video_path.endswith('.mp4')` (its message says to, for .avi/.webm).
#   Offline, torchvision cannot download IMAGENET1K_V1: save random weights (the same speed) where it
#   looks first, TORCH_HOME=$PEER_DIR/torch_home:
#   python3 -c "import torch, torchvision; torch.save(torchvision.models.resnet50().state_dict(),
#              '$PEER_DIR/torch_home/hub/checkpoints/resnet50-0676ba61.pth')"
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PEER="${PEER_DIR:-$ROOT/.bench/peer}"
BATCH="${1:-default}"
shift || true
if [ "$#" -eq 0 ]; then set -- "$ROOT/.bench/short-job/videos"; fi
FPS="${FPS:-2.667}"

export TORCH_HOME="$PEER/torch_home"
export PATH="$PEER/venv/bin:$PEER/bin:/usr/local/bin:/usr/bin:/bin"
export CUDA_VISIBLE_DEVICES=""
PY="$PEER/venv/bin/python"

command -v ffmpeg >/dev/null || { echo "ffmpeg not on PATH" >&2; exit 2; }
[ -f "$TORCH_HOME/hub/checkpoints/resnet50-0676ba61.pth" ] || { echo "missing resnet50-0676ba61.pth in $TORCH_HOME" >&2; exit 2; }

T="$(mktemp -d "${TMPDIR:-/tmp}/peer_run.XXXXXX")"
cleanup() { if [ "${KEEP:-0}" != 1 ]; then rm -rf "$T"; else echo "kept: $T"; fi; }
trap cleanup EXIT

# video list (absolute paths, recursive); stems must be unique (the peer asserts it)
for p in "$@"; do
  if [ -d "$p" ]; then
    find "$(cd "$p" && pwd)" -type f \( -iname '*.mp4' -o -iname '*.avi' -o -iname '*.webm' -o -iname '*.mkv' -o -iname '*.mov' -o -iname '*.m4v' \)
  else
    echo "$(cd "$(dirname "$p")" && pwd)/$(basename "$p")"
  fi
done | sort > "$T/videos.txt"
NV=$(wc -l < "$T/videos.txt")
[ "$NV" -gt 0 ] || { echo "no videos found" >&2; exit 2; }

ARGS=(feature_type=resnet model_name=resnet50 device=cpu on_extraction=save_numpy
      extraction_fps="$FPS" file_with_video_paths="$T/videos.txt"
      output_path="$T/out" tmp_path="$T/tmp")
if [ "$BATCH" != default ]; then ARGS+=(batch_size="$BATCH"); fi

echo "peer: $NV video(s), extraction_fps=$FPS, batch_size=$BATCH, device=cpu, tmp=$T"
echo "cmd: cd $PEER/video_features && python main.py ${ARGS[*]}"
set +e
t0=$(date +%s.%N)
( cd "$PEER/video_features" && "$PY" main.py "${ARGS[@]}" ) > "$T/peer.log" 2>&1
rc=$?
t1=$(date +%s.%N)
set -e
WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')

fail=0
if [ "$rc" -ne 0 ]; then echo "peer exited with rc=$rc" >&2; fail=1; fi
if grep -q "An error occurred during extraction" "$T/peer.log"; then echo "peer reported extraction errors" >&2; fail=1; fi

# count frames from the saved features (output_path gets resnet/resnet50 appended by the peer)
"$PY" - "$T/videos.txt" "$T/out/resnet/resnet50" <<'EOF' || fail=1
import sys, pathlib, numpy as np
videos = [l.strip() for l in open(sys.argv[1]) if l.strip()]
out = pathlib.Path(sys.argv[2])
total, bad = 0, 0
for v in videos:
    stem = pathlib.Path(v).stem
    f = out / f"{stem}_resnet.npy"
    if not f.exists():
        print(f"  {stem}: NO FEATURES", file=sys.stderr); bad += 1; continue
    a = np.load(f)
    ts = np.load(out / f"{stem}_timestamps_ms.npy")
    fps = float(np.load(out / f"{stem}_fps.npy"))
    ok = a.ndim == 2 and a.shape[0] > 0 and a.shape[1] == 2048 and np.isfinite(a).all() and len(ts) == a.shape[0]
    print(f"  {stem}: frames={a.shape[0]} dim={a.shape[1] if a.ndim == 2 else '?'} fps={fps:.3f}{'' if ok else '  BAD'}")
    bad += not ok
    total += a.shape[0]
print(f"peer_frames_total={total}")
sys.exit(1 if bad else 0)
EOF

echo "peer_wall_seconds=$WALL"
if [ "$fail" -ne 0 ]; then
  echo "---- peer log (tail) ----" >&2; tail -n 40 "$T/peer.log" >&2
  exit 1
fi
