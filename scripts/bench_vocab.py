#!/usr/bin/env python3
"""How fast clips are assigned to a visual vocabulary (`tokenize`'s inner loop, videobert_cli/vocab.py).

Synthetic clip features (a mixture of Gaussians, `--dim` wide, ResNet-50's 2048 by default), a
full `--branching` x `--depth` tree (12 x 4 = 20,736 words, the paper's), then `--clips` clips
assigned `--batch-size` at a time. `--tree full` (the default) draws every node's centroids from the
features, so all 20,736 leaves exist (the most work an assignment does: every level searched);
`--tree fit` fits the tree on a `--fit-sample` instead (a small sample stops many branches early). Feature generation is not timed; the
copy to the device is. Prints one JSON line: clips/s, and the time 1M clips would take at that rate.

    python scripts/bench_vocab.py --device cuda --clips 1000000      # the GPU figure
    python scripts/bench_vocab.py --device cpu --clips 50000         # this CPU (1M extrapolated)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from videobert_cli.learn.vocab import fit_tree  # noqa: E402
from videobert_cli.vocab import TreeOnDevice, VisualVocab, assign  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--clips", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--branching", type=int, default=12)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--tree", choices=("full", "fit"), default="full")
    parser.add_argument("--fit-sample", type=int, default=30_000)
    parser.add_argument("--fit-iterations", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=65536)
    parser.add_argument("--modes", type=int, default=4000, help="Gaussian centres the features are drawn around.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(args.seed)
    centres = rng.normal(size=(args.modes, args.dim)).astype(np.float32)

    def features(n: int) -> np.ndarray:
        return centres[rng.integers(0, args.modes, n)] + 0.3 * rng.normal(size=(n, args.dim)).astype(np.float32)

    started = time.perf_counter()
    if args.tree == "fit":
        centroids, valid, stats = fit_tree(torch.from_numpy(features(args.fit_sample)).to(device), args.branching,
                                           args.depth, args.seed, iterations=args.fit_iterations)
    else:
        centroids = [features(args.branching ** (level + 1)) for level in range(args.depth)]
        valid = [np.ones(len(c), dtype=bool) for c in centroids]
        stats = {"nodes_fitted": 0}
    fit_seconds = time.perf_counter() - started
    vocab = VisualVocab(args.branching, args.depth, "video_features", centroids, valid, [], args.seed)
    tree = TreeOnDevice(vocab, device)
    assign(tree, features(min(args.batch_size, 4096)), batch_size=args.batch_size)  # warm up (kernels, caches)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds, done, used = 0.0, 0, set()
    while done < args.clips:
        block = features(min(args.batch_size, args.clips - done))
        t0 = time.perf_counter()
        words, _ = assign(tree, block, batch_size=args.batch_size)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        done += len(block)
        used.update(np.unique(words).tolist())
    rate = done / seconds
    print(json.dumps({
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "dim": args.dim,
        "tree": f"{args.branching}x{args.depth}", "words_possible": args.branching ** args.depth,
        "leaves": vocab.leaves(), "words_used": len(used), "tree_made": args.tree,
        "fit_seconds": round(fit_seconds, 1), "nodes_fitted": stats["nodes_fitted"], "clips": done,
        "assign_seconds": round(seconds, 3), "clips_per_second": round(rate, 1),
        "seconds_per_million_clips": round(1e6 / rate, 1), "batch_size": args.batch_size}))


if __name__ == "__main__":
    main()
