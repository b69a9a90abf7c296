#!/usr/bin/env python3
"""The decode pool's schedule on its own, without a GPU: does every worker stay busy?

On a GPU machine the workers' decoding is the ceiling and the main thread must never hold them up.
Here the same pool runs with its decoding made slow by waiting (the test hook `slow`: --slow seconds
more per chunk of frames), so W workers decode in parallel even on a 2-core machine, and the main thread
spends --main-ms per chunk (as if encoding it). The ideal is W workers' decode rate, each measured
alone first; the report gives clips/s and the ratio to that ideal, for many short videos and for one
long one (which only splitting at keyframes spreads over the workers).

    python3 scripts/pool_schedule.py [--workers 6] [--videos 12] [--main-ms 10] [--slow 1.0]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def consume(pool, paths: list[Path], task_of, main_s: float) -> tuple[int, float]:
    """(clips, seconds) of reading every video's chunks, spending `main_s` per chunk."""
    from bench import drain

    started = time.perf_counter()
    clips = drain(pool.run(paths, task_of), main_s)
    return clips, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--videos", type=int, default=12, help="short videos")
    parser.add_argument("--short-seconds", type=float, default=60.0, help="the short videos' length")
    parser.add_argument("--long-seconds", type=float, default=240.0, help="the long video's length")
    parser.add_argument("--main-ms", type=float, default=10.0, help="main-thread time per chunk")
    parser.add_argument("--clips-per-chunk", type=int, default=8)
    parser.add_argument("--slow", type=float, default=1.0, help="seconds of waiting added per chunk")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".bench" / "pool")
    args = parser.parse_args()
    os.environ["VIDEOBERT_TEST_HOOK"] = "slow:.mp4"
    os.environ["VIDEOBERT_TEST_SLOW_SECONDS"] = str(args.slow)

    from bench import emit, make_video

    from videobert_cli.extract.extractor import SEGMENT_CHUNKS
    from videobert_cli.extract.workers import DecodePool, VideoTask

    short = args.workdir / f"short{args.short_seconds:.0f}.mp4"
    long = args.workdir / f"long{args.long_seconds:.0f}.mp4"
    for path, seconds in ((short, args.short_seconds), (long, args.long_seconds)):
        if not path.exists():
            print(f"pool_schedule: making {path}", file=sys.stderr)
            make_video(path, seconds, size=(320, 180))

    def task_of(path: Path, workers: int) -> VideoTask:
        return VideoTask(path=str(path), given=path.name, transcript=None, clip_mode="fixed", clip_seconds=1.5,
                         min_clip_seconds=0.5, frames_per_clip=4, decode_threads=1, resize_size=128, crop_size=112,
                         clips_per_chunk=args.clips_per_chunk, segment_workers=workers,
                         clips_per_segment=SEGMENT_CHUNKS * args.clips_per_chunk)

    one = DecodePool(1, 120)
    try:
        consume(one, [short], lambda p: task_of(p, 1), 0.0)  # warm-up: the worker's imports
        clips, seconds = consume(one, [short], lambda p: task_of(p, 1), 0.0)
    finally:
        one.close()
    per_worker = clips / seconds
    pool = DecodePool(args.workers, 120)
    try:
        consume(pool, [short] * args.workers, lambda p: task_of(p, args.workers), 0.0)  # warm-up
        results = {}
        for name, paths in (("short", [short] * args.videos), ("long", [long])):
            clips, seconds = consume(pool, paths, lambda p: task_of(p, args.workers), args.main_ms / 1000)
            ideal = per_worker * args.workers
            results[name] = {"clips": clips, "clips_per_s": round(clips / seconds, 2),
                             "ideal_clips_per_s": round(ideal, 2), "ratio": round(clips / seconds / ideal, 3)}
    finally:
        pool.close()
    report = {"workers": args.workers, "cores": os.cpu_count(), "one_worker_clips_per_s": round(per_worker, 2),
              "main_ms_per_chunk": args.main_ms, **results}
    print(f"one worker alone: {per_worker:.2f} clips/s; {args.workers} workers, main thread "
          f"{args.main_ms:g} ms per chunk of {args.clips_per_chunk} clips", file=sys.stderr)
    for name, r in results.items():
        print(f"  {name:<6} {r['clips']:>4} clips  {r['clips_per_s']:>7} clips/s  ideal {r['ideal_clips_per_s']:>7}  "
              f"ratio {r['ratio']}", file=sys.stderr)
    emit(report, None)


if __name__ == "__main__":
    main()
