"""Visual words: a hierarchical k-means tree over clip features, and the assignment of clips to its leaves.

VideoBERT (Sun et al. 2019) tokenizes video by assigning each clip's feature to a leaf of a k-means
tree, `branching` children per node and `depth` levels (12 x 4 = 20,736 words in the paper). The tree
is fitted by `learn/vocab.py` (`videobert vocab`); this module holds what extract and learn share:
the tree itself, the assignment (pure torch, on any device, in batches), the word ids, the check that
a vocabulary fits the features' models, and writing the words into shards (`videobert tokenize`,
`extract --visual-vocab`).

The tree is dense: level l (0-based) has room for branching^(l+1) centroids, the children of node g
(a node of level l-1, or the root for l = 0) being rows g*branching ... g*branching + branching-1.
`valid` marks the centroids that exist: a node fitted on fewer points than `branching` has no
children (it stopped early), and one whose points had fewer distinct values has fewer. A clip's
path is the child index taken at each level, -1 below a node without children; its word is the
path read as a number in base `branching`, -1 read as 0, so word ids are in [0, branching^depth)
and do not depend on where other branches stopped.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from .fusion import feature_model_ids
from .weights.resolve import RANDOM, ModelError, ModelRecord

VOCAB_FORMAT = "videobert-visual-vocab"
VOCAB_VERSION = 1
FIELDS = ("video_features", "fused")
ASSIGN_BATCH = 65536  # clips per assignment batch


@dataclass
class VisualVocab:
    branching: int
    depth: int
    field: str  # the clip feature it was fitted on: video_features or fused
    centroids: list[np.ndarray]  # level l: (branching^(l+1), dim) float32, zeros where not valid
    valid: list[np.ndarray]  # level l: (branching^(l+1),) bool
    models: list[dict[str, str]]  # role, name, sha256 of the models that made `field`
    seed: int = 0
    sample: dict[str, Any] = field(default_factory=dict)  # clips, of, sha256, probe
    fit: dict[str, Any] = field(default_factory=dict)  # iterations, tol, inertia per level, words used, ...
    created_utc: str = ""
    tool_version: str = ""
    source: str = ""  # the features folder it was fitted on (for information)

    def __post_init__(self) -> None:
        if self.branching < 2 or self.depth < 1:
            raise ValueError(f"a vocabulary needs branching >= 2 and depth >= 1 (got {self.branching}, {self.depth})")
        if len(self.centroids) != self.depth or len(self.valid) != self.depth:
            raise ValueError(f"{len(self.centroids)} levels of centroids for depth {self.depth}")
        for level, (c, v) in enumerate(zip(self.centroids, self.valid)):
            if c.ndim != 2 or c.shape[0] != self.branching ** (level + 1) or v.shape != (c.shape[0],):
                raise ValueError(f"level {level}: centroids {c.shape}, valid {v.shape} for branching {self.branching}")
        if self.field not in FIELDS:
            raise ValueError(f"field {self.field!r}: one of {', '.join(FIELDS)}")

    @property
    def dim(self) -> int:
        return int(self.centroids[0].shape[1])

    @property
    def size(self) -> int:
        """branching^depth: the room for words (ids are below it)."""
        return self.branching ** self.depth

    def leaves(self) -> int:
        """The number of leaves (nodes without children), i.e. of words a clip can get."""
        count = 0
        for level in range(self.depth):
            valid = self.valid[level]
            if level + 1 < self.depth:
                has_children = self.valid[level + 1].reshape(-1, self.branching).any(axis=1)
                count += int(np.sum(valid & ~has_children))
            else:
                count += int(np.sum(valid))
        return count

    def describe(self) -> dict[str, Any]:
        """What a shard records about the vocabulary its words come from (besides the file's sha256)."""
        return {"branching": self.branching, "depth": self.depth, "field": self.field, "dim": self.dim,
                "words": self.leaves(), "models": self.models, "seed": self.seed,
                "sample_sha256": self.sample.get("sha256", "")}


def words_from_paths(paths: np.ndarray, branching: int) -> np.ndarray:
    """(n, depth) paths -> (n,) int64 word ids: the path in base `branching`, -1 read as 0."""
    paths = np.asarray(paths, dtype=np.int64)
    depth = paths.shape[1]
    return (np.where(paths < 0, 0, paths) * branching ** np.arange(depth - 1, -1, -1)).sum(axis=1)


def paths_from_words(words: np.ndarray, branching: int, depth: int) -> np.ndarray:
    """(n,) word ids -> (n, depth) digits in base `branching` (without the -1 of early stops)."""
    words = np.asarray(words, dtype=np.int64)
    return np.stack([(words // branching ** (depth - 1 - l)) % branching for l in range(depth)], axis=1)


class TreeOnDevice:
    """The tree's centroids on a device, ready for assignment (moved once, used for many batches)."""

    def __init__(self, vocab: VisualVocab, device: torch.device | str = "cpu") -> None:
        self.branching, self.depth = vocab.branching, vocab.depth
        self.device = torch.device(device)
        self.centroids = [torch.as_tensor(c, dtype=torch.float32, device=self.device) for c in vocab.centroids]
        self.sq_norms = [(c * c).sum(dim=1) for c in self.centroids]
        self.valid = [torch.as_tensor(v, dtype=torch.bool, device=self.device) for v in vocab.valid]

    @torch.no_grad()
    def descend(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (n, dim) float32 on the device -> (paths (n, depth) int64, squared distance to the centroid of
        each level's node (n, depth), the last reached node's below an early stop)."""
        n, b = x.shape[0], self.branching
        node = torch.zeros(n, dtype=torch.int64, device=self.device)  # index of the current node in its level
        active = torch.ones(n, dtype=torch.bool, device=self.device)
        paths = torch.full((n, self.depth), -1, dtype=torch.int64, device=self.device)
        dists = torch.zeros((n, self.depth), dtype=torch.float32, device=self.device)
        x_sq = (x * x).sum(dim=1)
        for level in range(self.depth):
            centroids, sq, valid = self.centroids[level], self.sq_norms[level], self.valid[level]
            has_children = valid.view(-1, b).any(dim=1)
            if level:
                active &= has_children[node]
            rows = torch.nonzero(active).flatten()
            if len(rows):
                nodes = node[rows]
                order = torch.argsort(nodes, stable=True)
                rows, nodes = rows[order], nodes[order]
                groups, counts = torch.unique_consecutive(nodes, return_counts=True)
                start = 0
                for g, count in zip(groups.tolist(), counts.tolist()):
                    r = rows[start : start + count]
                    start += count
                    lo = g * b
                    xr = x[r] if count > 1 else x[r].expand(2, -1)  # one row would take BLAS's gemv path,
                    # whose rounding differs from gemm's: a clip's word would depend on its batch
                    d = (sq[lo : lo + b] - 2.0 * (xr @ centroids[lo : lo + b].T))[:count]
                    d = d.masked_fill(~valid[lo : lo + b], float("inf"))
                    best, choice = d.min(dim=1)
                    paths[r, level] = choice
                    node[r] = lo + choice
                    dists[r, level] = (best + x_sq[r]).clamp(min=0)
            if level:  # clips that stopped keep the distance to their last node
                stopped = ~active
                dists[stopped, level] = dists[stopped, level - 1]
        return paths, dists


def assign(vocab: VisualVocab | TreeOnDevice, features: np.ndarray | torch.Tensor | Iterable[np.ndarray],
           device: torch.device | str = "cpu", batch_size: int = ASSIGN_BATCH,
           progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The visual word (n,) int32 and path (n, depth) int32 of each row of `features` (an array, or an
    iterable of arrays: blocks streamed from shards), `batch_size` rows at a time on `device`."""
    tree = vocab if isinstance(vocab, TreeOnDevice) else TreeOnDevice(vocab, device)
    blocks = [features] if isinstance(features, (np.ndarray, torch.Tensor)) else features
    words, paths = [], []
    for block in blocks:
        for start in range(0, len(block), batch_size):
            chunk = torch.as_tensor(np.asarray(block[start : start + batch_size]) if not isinstance(block, torch.Tensor)
                                    else block[start : start + batch_size])
            p, _ = tree.descend(chunk.to(tree.device, torch.float32))
            p = p.cpu().numpy()
            paths.append(p.astype(np.int32))
            words.append(words_from_paths(p, tree.branching).astype(np.int32))
            if progress:
                progress(len(p))
    if not paths:
        return np.zeros(0, dtype=np.int32), np.zeros((0, tree.depth), dtype=np.int32)
    return np.concatenate(words), np.concatenate(paths)


# ------------------------------------------------------------------------------------ provenance


def field_models(models: Iterable[ModelRecord | Mapping[str, Any]], field_name: str) -> list[dict[str, str]]:
    """The models a clip field depends on: the video model for video_features; video, text and the
    fusion (its checkpoint sha256, or seed) for fused."""
    records = [m.to_dict() if isinstance(m, ModelRecord) else dict(m) for m in models]
    ids = feature_model_ids(records)
    if field_name == "video_features":
        return [m for m in ids if m["role"] == "video"]
    fusion = [{"role": "fusion", "name": str(m["name"]), "sha256": str(m["sha256"])}
              for m in records if m.get("role") == "fusion"]
    return ids + fusion


def _describe(models: list[dict[str, str]]) -> str:
    return " and ".join(f"{m['role']} model {m['name']} (sha256 {str(m['sha256'])[:12]})" for m in models)


def check_vocab_models(vocab: VisualVocab, models: Iterable[ModelRecord | Mapping[str, Any]], source: str,
                       random_verified: bool = False) -> None:
    """Refuse (ModelError) a vocabulary fitted on features of other models than these, compared by
    weights sha256, like a fusion checkpoint (fusion.check_feature_models). Random (untrained) weights
    differ in every extract run: accepted only when the caller has recognised the very features the
    vocabulary was fitted on (`random_verified`, a probe clip's feature)."""
    have = {m["role"]: m for m in field_models(models, vocab.field)}
    for want in vocab.models:
        got = have.get(want["role"])
        if got is None or got["sha256"] != want["sha256"] or got["name"] != want["name"]:
            raise ModelError(
                f"{source} was fitted on {vocab.field} of {_describe(vocab.models)}; these features come from "
                f"{_describe(list(have.values())) or 'unrecorded models'}: refusing to mix them (fit a vocabulary "
                "on these features with `videobert vocab`, or extract with the models it was fitted on)")
        if want["sha256"] == RANDOM and not random_verified:
            raise ModelError(
                f"{source} was fitted on features of RANDOM (untrained) {want['role']} weights, which differ in every "
                "extract run, and these are not the features it was fitted on: refusing (save the weights once "
                "and pass the file as --video-weights PATH to make them reproducible)")


def field_width(dims: Mapping[str, Any], field_name: str) -> int:
    return int(dims["video" if field_name == "video_features" else "fused"])


def check_vocab_for_run(vocab: VisualVocab, shard_attrs: Mapping[str, Any], source: str) -> None:
    """Before `extract --visual-vocab` decodes anything: the run's models and width (its shard
    attributes) must be those the vocabulary was fitted on (ModelError otherwise). Random weights
    are refused: a new run's random features are never the ones the vocabulary was fitted on."""
    check_vocab_models(vocab, shard_attrs.get("models", []), source)
    width = field_width(shard_attrs.get("dims") or {}, vocab.field)
    if width != vocab.dim:
        raise ModelError(f"{source}: fitted on {vocab.field} of width {vocab.dim}; this run's are {width} wide")


def feature_sha256(vector: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(vector, dtype="<f4").tobytes()).hexdigest()


# ----------------------------------------------------------------------------- words into shards


def tokenize_shards(shards: Sequence[Path], vocab: VisualVocab, vocab_sha256: str, vocab_path: str,
                    device: torch.device | str = "cpu", batch_size: int = ASSIGN_BATCH,
                    progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write clips/visual_word and clips/visual_path into each shard (every row, superseded ones too),
    atomically, with the vocabulary recorded in the `visual_vocab` attribute. Rereads `vocab.field`
    block by block; a shard already tokenized is rewritten with the new words."""
    from .store.columns import add_clip_columns, read_blocks
    from .store.schema import VISUAL_PATH, VISUAL_VOCAB_ATTR, VISUAL_WORD

    tree = TreeOnDevice(vocab, device)
    record = {**vocab.describe(), "sha256": vocab_sha256, "path": vocab_path,
              "tokenized_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    clips, used = 0, set()
    for shard in shards:
        words, paths = assign(tree, read_blocks(Path(shard), vocab.field), batch_size=batch_size, progress=progress)
        add_clip_columns(Path(shard), {VISUAL_WORD: words, VISUAL_PATH: paths}, {VISUAL_VOCAB_ATTR: record})
        clips += len(words)
        used.update(np.unique(words).tolist())
    return {"shards": [str(s) for s in shards], "clips": clips, "words_used": len(used), "device": str(tree.device)}
