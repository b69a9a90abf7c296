"""Fitting the visual vocabulary (`videobert vocab`) and tokenizing a features folder (`videobert tokenize`).

The fit (hierarchical k-means, as VideoBERT's): a seeded sample of at most `sample` clips is read
from the shards (block by block: the corpus need not fit in memory, the sample must); the root's
k-means splits it into `branching` clusters, each cluster is split again, down to `depth` levels.
Each k-means is k-means++ seeded, then Lloyd iterations until the centroids move less than `tol`
(relative to the data's variance) or `iterations` are done; a cluster left empty is re-seeded with
the point farthest from its centroid. A node with fewer points than `branching` is not split (its
clips stop there, see vocab.py for word ids). Every node draws from its own generator, seeded by
(seed, level, node), so the tree does not depend on the order nodes are fitted in, and the same seed
on the same features and device gives the same tree. Distances are torch matmuls on `device`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import __version__
from ..store.outdir import OutputDir
from ..store.reader import FeatureError, FeatureSet, open_features
from ..store.vocab_file import VocabFileError, file_sha256, read_vocab
from ..vocab import (FIELDS, TreeOnDevice, VisualVocab, check_vocab_models, feature_sha256, field_models, field_width,
                     tokenize_shards)
from ..weights.resolve import RANDOM, ModelError
from .corpus import TrainingError, video_key


@dataclass(frozen=True)
class VocabConfig:
    branching: int = 12
    depth: int = 4
    field: str = "video_features"
    sample: int = 200_000  # clips the tree is fitted on, at most
    seed: int = 0
    iterations: int = 50  # Lloyd iterations per node, at most
    tol: float = 1e-4  # stop a node when the centroids move less than tol * mean feature variance

    def check(self) -> None:
        if self.branching < 2:
            raise TrainingError("--branching must be >= 2")
        if self.depth < 1:
            raise TrainingError("--depth must be >= 1")
        if self.branching ** self.depth >= 2 ** 31:
            raise TrainingError("branching^depth must stay below 2^31 (word ids are int32)")
        if self.field not in FIELDS:
            raise TrainingError(f"--field {self.field!r}: one of {', '.join(FIELDS)}")
        if self.sample < self.branching:
            raise TrainingError("--sample must be at least --branching")
        if self.iterations < 1 or self.tol < 0:
            raise TrainingError("--iterations must be >= 1 and --tol >= 0")


def node_generator(seed: int, level: int, node: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, level, node]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def _sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return ((x * x).sum(1, keepdim=True) - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]).clamp(min=0)


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Up to k initial centroids (fewer when x has fewer distinct points)."""
    first = int(torch.randint(len(x), (1,), generator=generator))
    centers = [x[first]]
    closest = _sq_dist(x, x[first : first + 1]).flatten()
    while len(centers) < k:
        total = float(closest.sum())
        if total <= 0:
            break
        pick = int(torch.multinomial((closest / total).double().cpu(), 1, generator=generator))
        centers.append(x[pick])
        closest = torch.minimum(closest, _sq_dist(x, x[pick : pick + 1]).flatten())
    return torch.stack(centers)


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator, iterations: int = 50,
           tol: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(centroids (k', dim), labels (n,), iterations run): k-means++ init, Lloyd, empty clusters re-seeded."""
    centroids = kmeans_plus_plus(x, k, generator)
    k = len(centroids)
    threshold = tol * float(x.var(dim=0, unbiased=False).mean()) if len(x) > 1 else 0.0
    done = 0
    for done in range(1, iterations + 1):
        d = _sq_dist(x, centroids)
        best, labels = d.min(dim=1)
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        new = sums / counts.clamp(min=1)[:, None].to(x.dtype)
        empty = torch.nonzero(counts == 0).flatten().tolist()
        if empty:  # re-seed each with a point far from its centroid (a different one for each)
            far = torch.argsort(best, descending=True, stable=True)
            for slot, point in zip(empty, far[: len(empty)].tolist()):
                new[slot] = x[point]
        shift = float(((new - centroids) ** 2).sum(dim=1).max())
        centroids = new
        if not empty and shift <= threshold:
            break
    labels = _sq_dist(x, centroids).argmin(dim=1)
    return centroids, labels, done


def fit_tree(x: torch.Tensor, branching: int, depth: int, seed: int = 0, iterations: int = 50, tol: float = 1e-4,
             progress: Callable[[int], None] | None = None) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, Any]]:
    """The tree's centroids and valid masks per level (vocab.py's dense layout), fitted on x (n, dim),
    and fit statistics (inertia per level on x, nodes fitted, nodes stopped early, Lloyd iterations)."""
    n, dim = x.shape
    centroids = [np.zeros((branching ** (level + 1), dim), dtype=np.float32) for level in range(depth)]
    valid = [np.zeros(branching ** (level + 1), dtype=bool) for level in range(depth)]
    members: dict[int, torch.Tensor] = {0: torch.arange(n, device=x.device)}  # node of this level -> rows of x
    stats = {"nodes_fitted": 0, "nodes_stopped_early": 0, "lloyd_iterations": 0}
    for level in range(depth):
        below: dict[int, torch.Tensor] = {}
        for node in sorted(members):
            rows = members[node]
            if len(rows) < branching:
                stats["nodes_stopped_early"] += 1
                continue
            c, labels, its = kmeans(x[rows], branching, node_generator(seed, level, node), iterations, tol)
            stats["nodes_fitted"] += 1
            stats["lloyd_iterations"] += its
            lo = node * branching
            centroids[level][lo : lo + len(c)] = c.cpu().numpy()
            valid[level][lo : lo + len(c)] = True
            for child in range(len(c)):
                below[lo + child] = rows[labels == child]
        if progress:
            progress(level)
        members = below
    return centroids, valid, stats


def inertia_per_level(vocab: VisualVocab, x: torch.Tensor, batch_size: int = 65536) -> list[float]:
    """Sum over the rows of x of the squared distance to their node's centroid at each level."""
    tree = TreeOnDevice(vocab, x.device)
    total = torch.zeros(vocab.depth, dtype=torch.float64, device=x.device)
    for start in range(0, len(x), batch_size):
        _, dists = tree.descend(x[start : start + batch_size])
        total += dists.double().sum(dim=0)
    return [round(float(v), 6) for v in total.cpu()]


# ------------------------------------------------------------------------------------ the features


def sample_indices(num_clips: int, sample: int, seed: int) -> np.ndarray:
    """The clips the tree is fitted on: `sample` of them (all when fewer), chosen by the seed, increasing."""
    if sample >= num_clips:
        return np.arange(num_clips, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(num_clips, size=sample, replace=False)).astype(np.int64)


def _open(features_dir: str | Path) -> FeatureSet:
    try:
        return open_features(features_dir)
    except (FeatureError, OSError) as exc:
        raise TrainingError(str(exc)) from None


def folder_models(features: FeatureSet, field_name: str, what: str) -> list[dict[str, str]]:
    """The models behind `field_name` in every shard; a folder whose shards disagree is refused."""
    models = [field_models(a.get("models", []), field_name) for a in features.attrs]
    if any(m != models[0] for m in models):
        raise TrainingError(f"{features.out_dir}: its shards were made with different models; {what} needs one set")
    if not any(m["role"] == "video" for m in models[0]):
        raise TrainingError(f"{features.out_dir}: the shards do not record their video model")
    return models[0]


def probe(features: FeatureSet, field_name: str, index: int) -> dict[str, Any]:
    """A clip that recognises these very features later (for random weights): its video, row, feature sha256."""
    vector = features.rows(field_name, np.array([index]))[0]
    video = features.videos[int(features.clip(index, fields=())["video"])]
    return {"video": video_key(video), "clip": int(index - video["first_clip"]), "sha256": feature_sha256(vector)}


def probe_matches(features: FeatureSet, vocab: VisualVocab) -> bool:
    found = vocab.sample.get("probe")
    if not found:
        return False
    for video in features.videos:
        if video_key(video) == found["video"] and found["clip"] < video["clip_count"]:
            vector = features.rows(vocab.field, np.array([video["first_clip"] + found["clip"]]))[0]
            if feature_sha256(vector) == found["sha256"]:
                return True
    return False


def build_vocab(features_dir: str | Path, config: VocabConfig, device: torch.device,
                progress: Callable[[str, int, int], None] | None = None) -> tuple[VisualVocab, dict[str, Any]]:
    """Fit the tree on a seeded sample of FEATURES_DIR's `config.field`; (vocabulary, JSON summary)."""
    config.check()
    started = time.perf_counter()
    features = _open(features_dir)
    models = folder_models(features, config.field, "a vocabulary")
    if features.num_clips < config.branching:
        raise TrainingError(f"{features_dir}: {features.num_clips} clip(s), fewer than --branching "
                            f"{config.branching}: nothing to cluster")
    chosen = sample_indices(features.num_clips, config.sample, config.seed)
    sample = features.rows(config.field, chosen).astype(np.float32)
    if not np.all(np.isfinite(sample)):
        raise TrainingError(f"{features_dir}: the sampled {config.field} hold NaN/Inf (see `videobert validate`)")
    if progress:
        progress("sampled", len(sample), config.depth)
    x = torch.from_numpy(sample).to(device)
    centroids, valid, stats = fit_tree(x, config.branching, config.depth, config.seed, config.iterations, config.tol,
                                       progress=(lambda level: progress("level", level + 1, config.depth))
                                       if progress else None)
    sample_record = {"clips": len(chosen), "of": features.num_clips,
                     "sha256": hashlib.sha256(np.ascontiguousarray(sample, dtype="<f4").tobytes()).hexdigest(),
                     "probe": probe(features, config.field, int(chosen[0]))}
    vocab = VisualVocab(config.branching, config.depth, config.field, centroids, valid, models, config.seed,
                        sample_record, {}, dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                        __version__, str(Path(features_dir).resolve()))
    inertia = inertia_per_level(vocab, x)
    words, _ = _assign_sample(vocab, x)
    seconds = time.perf_counter() - started
    vocab.fit = {"iterations": config.iterations, "tol": config.tol, "inertia": inertia,
                 "words_used": int(len(np.unique(words))), "leaves": vocab.leaves(), **stats,
                 "seconds": round(seconds, 3), "device": str(device)}
    features.close()
    summary = {"features_dir": str(features_dir), "field": config.field, "dim": vocab.dim,
               "branching": config.branching, "depth": config.depth, "levels": config.depth,
               "words_possible": vocab.size, "leaves": vocab.leaves(), "words_used": vocab.fit["words_used"],
               "sample_clips": len(chosen), "corpus_clips": features.num_clips, "seed": config.seed,
               "inertia_per_level": inertia, **stats, "seconds": round(seconds, 3), "device": str(device),
               "models": models}
    return vocab, summary


def _assign_sample(vocab: VisualVocab, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    from ..vocab import assign

    return assign(vocab, x, device=x.device)


# ------------------------------------------------------------------------------------ tokenize


def load_vocab_for(features: FeatureSet, vocab_path: str | Path) -> VisualVocab:
    """The vocabulary, checked against these features: models (exit 2 on others'), width."""
    try:
        vocab = read_vocab(vocab_path)
    except VocabFileError as exc:
        raise TrainingError(str(exc)) from None
    models = [m for a in features.attrs[:1] for m in a.get("models", [])]
    if any(field_models(a.get("models", []), vocab.field) != field_models(models, vocab.field)
           for a in features.attrs):
        raise TrainingError(f"{features.out_dir}: its shards were made with different models")
    random = any(m["sha256"] == RANDOM for m in vocab.models)
    try:
        check_vocab_models(vocab, models, str(vocab_path), random_verified=random and probe_matches(features, vocab))
    except ModelError as exc:
        raise TrainingError(str(exc)) from None
    width = field_width(features.attrs[0].get("dims") or {}, vocab.field)
    if width != vocab.dim:
        raise TrainingError(f"{vocab_path}: fitted on {vocab.field} of width {vocab.dim}; these are {width} wide")
    return vocab


def tokenize(features_dir: str | Path, vocab_path: str | Path, device: torch.device, *, wait: bool = False,
             batch_size: int = 65536, progress: Callable[[int], None] | None = None,
             on_start: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Add each clip's visual word and path to every shard of FEATURES_DIR (atomic per shard), holding the
    folder's lock so no extract adds shards meanwhile. Raises store.outdir.LockHeld when it is held."""
    started = time.perf_counter()
    features = _open(features_dir)
    vocab = load_vocab_for(features, vocab_path)
    shards = [s.path for s in features.shards]
    features.close()
    out = OutputDir(Path(features_dir))
    out.lock(wait)
    try:
        if on_start:
            from ..store.columns import shard_clip_count

            on_start(sum(shard_clip_count(p) for p in shards))
        summary = tokenize_shards(shards, vocab, file_sha256(vocab_path), str(Path(vocab_path).resolve()),
                                  device=device, batch_size=batch_size, progress=progress)
    finally:
        out.unlock()
    seconds = time.perf_counter() - started
    return {"features_dir": str(features_dir), "vocab": str(vocab_path), "field": vocab.field,
            "branching": vocab.branching, "depth": vocab.depth, **summary, "seconds": round(seconds, 3),
            "clips_per_second": round(summary["clips"] / seconds, 1) if seconds > 0 else 0.0}
