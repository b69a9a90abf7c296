#!/usr/bin/env python3
"""Kill `videobert extract` with SIGKILL at random moments, rerun, and count what was lost or duplicated.

Each round starts the same extract command on the same output folder and kills
it after a random delay (seeded), so kills land during start-up, decoding,
encoding and shard writing. A final run finishes the job. Then every good
video must be present exactly once and `videobert validate` must pass.

    python3 scripts/kill_loop.py --rounds 20 --seed 1 EXTRACT_ARGS...

Prints one JSON line: runs, kills, videos, lost, duplicated, corrupt, validate.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py


def extract_command(inputs: list[str], out: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "videobert_cli", "extract", *inputs, "-o", str(out), "--quiet", *extra]


def kill_loop(inputs: list[str], out: Path, extra: list[str], expected: set[str], rounds: int, seed: int,
              max_delay: float) -> dict:
    rng = random.Random(seed)
    kills = runs = 0
    for _ in range(rounds):
        runs += 1
        proc = subprocess.Popen(extract_command(inputs, out, extra), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, max_delay))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    runs += 1
    final = subprocess.run(extract_command(inputs, out, extra), capture_output=True, text=True)
    counts: dict[str, int] = {}
    corrupt = 0
    for shard in sorted(out.glob("shard-*.h5")):
        try:
            with h5py.File(shard, "r") as f:
                for path in f["videos/abspath"].asstr()[()]:
                    counts[path] = counts.get(path, 0) + 1
        except OSError:
            corrupt += 1
    validate = subprocess.run([sys.executable, "-m", "videobert_cli", "validate", str(out)], capture_output=True,
                              text=True)
    return {
        "runs": runs, "kills": kills, "videos": len(expected),
        "lost": len(expected - set(counts)), "duplicated": sum(1 for c in counts.values() if c > 1),
        "corrupt": corrupt, "validate": validate.returncode, "final_exit": final.returncode,
        "leftover_tmp": len(list(out.glob("*.tmp"))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=10.0, help="longest wait before a kill, seconds")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("inputs", nargs="+", help="video files (all expected to succeed)")
    args, extra = parser.parse_known_args()
    expected = {str(Path(p).resolve()) for p in args.inputs}
    print(json.dumps(kill_loop(args.inputs, args.out, extra, expected, args.rounds, args.seed, args.max_delay)))


if __name__ == "__main__":
    main()
