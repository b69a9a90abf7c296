"""Learning the fusion from stored features: `videobert train`.

The encoders never run here: training reads the per-frame image features and the per-token text
features that `extract --save-frames --save-tokens` stored (corpus.py opens the folder, splits it
and reads a clip), one clip at a time, keeping at most `cache_mb` of them in memory (a corpus
larger than RAM streams from the shards).

What is trained is the fusion module itself (both projections, both cross-attention directions,
the LayerNorms before pooling) plus an alignment head, a small MLP on the fused vector that says
whether a clip's frames and a text belong together (VideoBERT's linguistic-visual alignment). For
a batch of B clips, with s(i, j) = head(fuse(frames of clip i, tokens of clip j)):

    alignment   = BCE(s(i, i) -> 1, s(i, n_i) -> 0)     n_i: another clip of the same video
                                                        (probability `same_video_negatives`) or
                                                        of another video of the split
    contrastive = (CE_rows(S) + CE_columns(S)) / 2       S = [s(i, j)] over the batch (B x B):
                                                        symmetric InfoNCE with in-batch negatives
    loss        = alignment_weight * alignment + contrastive_weight * contrastive

A text with exactly the tokens of the clip's own text is never used as its negative (it is not
one): such pairs are left out of S's softmax and are not drawn as n_i. Clips without text have
nothing to align and are skipped.

Videos, never clips, are split into training and validation (corpus.split_videos). Training stops early when the validation
loss has not improved for `patience` epochs and keeps the best epoch's weights. Everything random
(initial weights, clip order, negatives) comes from `seed`: the same seed on the same features and
device gives the same checkpoint (bitwise on the CPU).

The checkpoint is `fusion.save_fusion`'s {"state_dict", "config"} (so `extract --fusion-checkpoint`
loads it) plus the head, the feature models (name and weights sha256), the feature widths, the
training settings and metrics, the split and a fingerprint of the training data. Loading one back
(load_trained, check_checkpoint_features) is here too, for `evaluate` and `fuse`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..fusion import (CHECKPOINT_FORMAT, CrossModalFusion, FusionConfig, build_fusion, check_feature_models,
                     checkpoint_config, load_weights, pad_tokens, read_checkpoint, save_fusion)
from ..weights.resolve import RANDOM, ModelError
from ..store.reader import open_features
from .corpus import Corpus, TrainingError, open_corpus, read_clip, split_videos, text_key

CHECKPOINT_VERSION = 1


class TrainingFailed(RuntimeError):
    """Training ran but could not finish (the loss became NaN, ...): exit code 1."""


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    epochs: int = 50  # at most; early stopping usually ends sooner
    patience: int = 5  # epochs without a better validation loss before stopping
    batch_size: int = 64  # clips per step; the contrastive loss scores batch_size^2 pairs
    lr: float = 5e-4
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    alignment_weight: float = 1.0
    contrastive_weight: float = 1.0
    same_video_negatives: float = 0.5  # share of alignment negatives from the clip's own video
    val_fraction: float = 0.2  # of the videos with text, when val_videos is not given
    val_videos: str | None = None  # glob on video path (as given or absolute): these are validation
    dim: int | None = None  # fusion width; None = the fusion_dim the features were extracted with
    heads: int | None = None  # attention heads; None = the extraction's fusion_heads
    device: str = "auto"
    workers: int = 0  # DataLoader worker processes reading the shards
    cache_mb: int = 1024  # clip features kept in memory once read (per worker); the rest is re-read

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.patience >= 1, "patience must be >= 1"),
            (self.batch_size >= 2, "batch size must be >= 2 (the contrastive loss needs in-batch negatives)"),
            (self.lr > 0 and self.weight_decay >= 0, "lr must be > 0 and weight decay >= 0"),
            (self.alignment_weight >= 0 and self.contrastive_weight >= 0
             and self.alignment_weight + self.contrastive_weight > 0,
             "loss weights must be >= 0 and not both 0"),
            (0 <= self.same_video_negatives <= 1, "same-video negatives must be a share in [0, 1]"),
            (0 < self.val_fraction < 1, "validation fraction must be in (0, 1)"),
            (self.dim is None or self.dim >= 1, "dim must be >= 1"),
            (self.heads is None or self.heads >= 1, "heads must be >= 1"),
            (self.workers >= 0, "workers must be >= 0"),
            (self.cache_mb >= 0, "cache must be >= 0 MB"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainingError(message)


def resolve_device(spec: str) -> torch.device:
    """The extractor's device rule (pipeline.resolve_device), reported as a TrainingError."""
    from ..weights.resolve import ModelError
    from ..device import resolve_device as resolve

    try:
        return resolve(spec)
    except ModelError as exc:
        raise TrainingError(str(exc)) from None


# ---------------------------------------------------------------------------------------- batches


class PairDataset(torch.utils.data.Dataset):
    """(epoch e, k) -> clip i = clips[k]: its frames, its text, and a text that is not its own (the
    alignment negative).

    The negative of clip i in epoch e is drawn from a generator seeded with (seed, e, i), so it does
    not depend on batch order or on DataLoader workers. Clips are read lazily from the shards; up to
    `cache_bytes` of them are kept once read (a corpus that fits is read once, a larger one streams)."""

    def __init__(self, corpus: Corpus, clips: np.ndarray, seed: int, same_video_share: float,
                 tries: int = 8, cache_bytes: int = 0) -> None:
        self.corpus = corpus
        self.clips = np.asarray(clips, dtype=np.int64)
        self.seed = seed
        self.same_video_share = same_video_share
        self.tries = tries
        self.cache_bytes = cache_bytes
        self._cache: dict[int, dict[str, Any]] = {}
        self._cached_bytes = 0
        videos = corpus.clip_video[self.clips]
        self._by_video: dict[int, np.ndarray] = {int(v): self.clips[videos == v] for v in np.unique(videos)}
        self._single_video = len(self._by_video) < 2

    def __len__(self) -> int:
        return len(self.clips)

    def __getstate__(self) -> dict[str, Any]:
        """Open HDF5 handles cannot be pickled (DataLoader workers under spawn): send the folder."""
        state = self.__dict__.copy()
        state["corpus"] = dataclasses.replace(self.corpus, features=None)
        state["_cache"], state["_cached_bytes"] = {}, 0
        state["_features_dir"] = str(self.corpus.features.out_dir)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        features_dir = state.pop("_features_dir")
        self.__dict__.update(state)
        self.corpus = dataclasses.replace(self.corpus, features=open_features(features_dir))

    def _clip(self, index: int, frames: bool = True) -> dict[str, Any]:
        """A clip's features, from the cache or the shards (a negative needs only its tokens, but a
        whole clip is read while the cache has room, to be kept)."""
        item = self._cache.get(index)
        if item is None:
            item = read_clip(self.corpus.features, index, frames=frames or self._cached_bytes < self.cache_bytes)
            size = sum(v.nbytes for v in item.values())
            if "frames" in item and self._cached_bytes + size <= self.cache_bytes:
                self._cache[index] = item
                self._cached_bytes += size
        return item

    def _candidate(self, rng: np.random.Generator, clip: int, video: int) -> int | None:
        own = self._by_video[video]
        if len(own) > 1 and (self._single_video or rng.random() < self.same_video_share):
            other = own[own != clip]
            return int(other[rng.integers(len(other))])
        if self._single_video:
            return None
        while True:  # another video's clip; terminates: at least two videos
            pick = int(self.clips[rng.integers(len(self.clips))])
            if self.corpus.clip_video[pick] != video:
                return pick

    def __getitem__(self, index: tuple[int, int]) -> dict[str, Any]:
        epoch, k = index
        clip = int(self.clips[k])
        video = int(self.corpus.clip_video[clip])
        item = dict(self._clip(clip))
        item["key"] = text_key(item["ids"])
        item["clip"], item["video"] = clip, video
        rng = np.random.default_rng([self.seed, epoch, clip])
        item["neg_tokens"] = None
        for _ in range(self.tries):
            candidate = self._candidate(rng, clip, video)
            if candidate is None:
                break
            neg = self._clip(candidate, frames=False)
            if not np.array_equal(neg["ids"], item["ids"]):  # the same words are not a negative
                item["neg_tokens"] = neg["tokens"]
                break
        return item


def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    width = items[0]["tokens"].shape[1]
    tokens, token_mask = pad_tokens([i["tokens"] for i in items], width, min_length=1)
    neg, neg_mask = pad_tokens([i["neg_tokens"] for i in items], width, min_length=1)
    return {
        "frames": torch.from_numpy(np.stack([i["frames"] for i in items])),
        "tokens": tokens, "token_mask": token_mask, "neg_tokens": neg, "neg_mask": neg_mask,
        "has_neg": torch.tensor([i["neg_tokens"] is not None for i in items]),
        "keys": torch.tensor([i["key"] for i in items], dtype=torch.int64),
        "clips": torch.tensor([i["clip"] for i in items], dtype=torch.int64),
        "videos": torch.tensor([i["video"] for i in items], dtype=torch.int64),
    }


class _EpochOrder(torch.utils.data.Sampler):
    """(epoch, k) for a fresh seeded permutation of k each epoch (or the identity, for validation).
    The epoch travels with each index, so persistent DataLoader workers draw the right negatives."""

    def __init__(self, n: int, seed: int, shuffle: bool) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if not self.shuffle:
            return iter([(self.epoch, k) for k in range(self.n)])
        order = np.random.default_rng([self.seed, self.epoch, 7]).permutation(self.n).tolist()
        return iter([(self.epoch, k) for k in order])


# ------------------------------------------------------------------------------------------ model


class AlignmentHead(nn.Module):
    """fused vector -> logit that the clip's frames and the text belong together."""

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or dim
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.net(fused).squeeze(-1)


class FusionAligner(nn.Module):
    def __init__(self, fusion: CrossModalFusion, head: AlignmentHead) -> None:
        super().__init__()
        self.fusion, self.head = fusion, head

    def pair_logits(self, hv: torch.Tensor, ht: torch.Tensor, token_mask: torch.Tensor, vi: torch.Tensor,
                    ti: torch.Tensor, chunk: int = 1 << 14) -> torch.Tensor:
        """Logits of the pairs (clip vi[k]'s projected frames, text ti[k]'s projected tokens)."""
        out = []
        for s in range(0, len(vi), chunk):
            v, t = vi[s : s + chunk], ti[s : s + chunk]
            fused, _ = self.fusion.attend(hv[v], ht[t], token_mask[t])
            out.append(self.head(fused))
        return torch.cat(out) if out else hv.new_zeros(0)

    def score_matrix(self, hv: torch.Tensor, ht: torch.Tensor, token_mask: torch.Tensor,
                     chunk: int = 1 << 14) -> torch.Tensor:
        """S[i, j] = logit(clip i's frames, text j), (n_clips, n_texts)."""
        n, m = hv.shape[0], ht.shape[0]
        vi = torch.arange(n, device=hv.device).repeat_interleave(m)
        ti = torch.arange(m, device=hv.device).repeat(n)
        return self.pair_logits(hv, ht, token_mask, vi, ti, chunk).view(n, m)


def init_model(fusion_config: FusionConfig, seed: int) -> FusionAligner:
    """The untrained starting point: the fusion `extract` uses for this seed, and a seeded head."""
    fusion, _ = build_fusion(fusion_config, seed, None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = AlignmentHead(fusion_config.dim)
    return FusionAligner(fusion, head)


def batch_losses(model: FusionAligner, batch: dict[str, torch.Tensor], config: TrainConfig) -> dict[str, torch.Tensor]:
    hv, ht = model.fusion.project(batch["frames"], batch["tokens"])
    n = hv.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=hv.device)
    if config.contrastive_weight > 0:
        scores = model.score_matrix(hv, ht, batch["token_mask"])
        pos = scores.diagonal()
        same_text = (batch["keys"][:, None] == batch["keys"][None, :]) & ~eye
        masked = scores.masked_fill(same_text, float("-inf"))
        target = torch.arange(n, device=hv.device)
        contrastive = (F.cross_entropy(masked, target) + F.cross_entropy(masked.t(), target)) / 2
    else:
        idx = torch.arange(n, device=hv.device)
        pos = model.pair_logits(hv, ht, batch["token_mask"], idx, idx)
        contrastive = pos.new_zeros(())
    has_neg = batch["has_neg"]
    hn = model.fusion.text_proj(batch["neg_tokens"])
    idx = torch.arange(n, device=hv.device)
    neg = model.pair_logits(hv, hn, batch["neg_mask"], idx, idx)[has_neg]
    logits = torch.cat([pos, neg])
    labels = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)])
    alignment = F.binary_cross_entropy_with_logits(logits, labels)
    total = config.alignment_weight * alignment + config.contrastive_weight * contrastive
    correct = ((logits > 0) == (labels > 0.5)).float().sum()
    return {"loss": total, "alignment": alignment, "contrastive": contrastive,
            "correct": correct.detach(), "pairs": torch.tensor(float(len(labels)))}


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# ------------------------------------------------------------------------------------------- loop


@dataclass
class TrainResult:
    checkpoint: str
    device: str
    train_videos: int
    val_videos: int
    train_clips: int
    val_clips: int
    epochs_run: int
    best_epoch: int
    stopped_early: bool
    best: dict[str, float]
    seconds: float
    steps: int
    steps_per_second: float
    clips_per_second: float
    fingerprint: str
    history: list[dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _loader(dataset: PairDataset, order: _EpochOrder, config: TrainConfig, device: torch.device):
    return torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, sampler=order, collate_fn=collate,
                                       num_workers=config.workers, persistent_workers=config.workers > 0,
                                       pin_memory=device.type == "cuda")


@torch.no_grad()
def _validate(model: FusionAligner, loader, config: TrainConfig, device: torch.device) -> dict[str, float]:
    model.eval()
    sums = {"loss": 0.0, "alignment": 0.0, "contrastive": 0.0}
    clips = correct = pairs = 0.0
    for batch in loader:
        out = batch_losses(model, _to(batch, device), config)
        n = len(batch["clips"])
        for k in sums:
            sums[k] += float(out[k]) * n
        clips += n
        correct += float(out["correct"])
        pairs += float(out["pairs"])
    result = {k: v / max(clips, 1) for k, v in sums.items()}
    result["alignment_accuracy"] = correct / max(pairs, 1)
    return result


def train(features_dir: str | Path, out_path: str | Path, config: TrainConfig,
          progress: Callable[[int, dict[str, Any]], None] | None = None,
          on_start: Callable[[int], None] | None = None) -> TrainResult:
    """Train on FEATURES_DIR and write the checkpoint to out_path. `on_start(total_steps)` and
    `progress(steps_done, losses)` drive a progress display."""
    started = time.perf_counter()
    device = resolve_device(config.device)
    corpus = open_corpus(features_dir)
    train_videos, val_videos = split_videos(corpus, seed=config.seed, val_fraction=config.val_fraction,
                                            val_videos=config.val_videos)
    train_clips, val_clips = corpus.text_clips(train_videos), corpus.text_clips(val_videos)
    if len(train_clips) < 2:
        raise TrainingError(f"{len(train_clips)} training clip(s) with text: at least 2 are needed")
    extraction = corpus.config
    dim = config.dim or int(extraction.get("fusion_dim") or corpus.dims["fused"])
    heads = config.heads or int(extraction.get("fusion_heads") or 8)
    if dim % heads:
        raise TrainingError(f"fusion width {dim} is not divisible by {heads} heads")
    fusion_config = FusionConfig(int(corpus.dims["video"]), int(corpus.dims["text"]), dim, heads)

    model = init_model(fusion_config, config.seed).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    cache = config.cache_mb * 2**20 // max(1, config.workers)  # split between the worker processes
    train_set = PairDataset(corpus, train_clips, config.seed, config.same_video_negatives, cache_bytes=cache)
    val_set = PairDataset(corpus, val_clips, config.seed + 1, config.same_video_negatives, cache_bytes=cache)
    order = _EpochOrder(len(train_set), config.seed, shuffle=True)
    train_loader = _loader(train_set, order, config, device)
    val_loader = _loader(val_set, _EpochOrder(len(val_set), config.seed, shuffle=False), config, device)
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    if on_start:
        on_start(steps_per_epoch * config.epochs)

    history: list[dict[str, float]] = []
    best_loss, best_epoch, best_state, stale = math.inf, 0, {}, 0
    steps, train_seconds, seen = 0, 0.0, 0
    for epoch in range(1, config.epochs + 1):
        order.epoch = epoch
        model.train()
        sums = {"loss": 0.0, "alignment": 0.0, "contrastive": 0.0}
        clips = 0
        tick = time.perf_counter()
        for batch in train_loader:
            out = batch_losses(model, _to(batch, device), config)
            if not torch.isfinite(out["loss"]):
                raise TrainingFailed(f"the loss became {float(out['loss'].detach())} at epoch {epoch}, "
                                     f"step {steps + 1}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            n = len(batch["clips"])
            for k in sums:
                sums[k] += float(out[k].detach()) * n
            clips += n
            steps += 1
            if progress:
                progress(steps, {"epoch": epoch, "loss": float(out["loss"].detach()),
                                 "align": float(out["alignment"].detach()),
                                 "nce": float(out["contrastive"].detach()),
                                 **({"val": history[-1]["val_loss"]} if history else {})})
        train_seconds += time.perf_counter() - tick
        seen += clips
        val = _validate(model, val_loader, config, device)
        if not math.isfinite(val["loss"]):
            raise TrainingFailed(f"the validation loss became {val['loss']} at epoch {epoch}; lower --lr")
        row = {"epoch": epoch, **{f"train_{k}": v / max(clips, 1) for k, v in sums.items()},
               **{f"val_{k}": v for k, v in val.items()}}
        history.append({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})
        if val["loss"] < best_loss - 1e-6:
            best_loss, best_epoch, stale = val["loss"], epoch, 0
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                break
    model.load_state_dict(best_state)
    seconds = time.perf_counter() - started
    fingerprint = corpus.fingerprint(train_videos, val_videos)
    result = TrainResult(
        checkpoint=str(out_path), device=str(device), train_videos=len(train_videos), val_videos=len(val_videos),
        train_clips=len(train_clips), val_clips=len(val_clips), epochs_run=len(history), best_epoch=best_epoch,
        stopped_early=len(history) < config.epochs, best=history[best_epoch - 1], seconds=round(seconds, 3),
        steps=steps, steps_per_second=round(steps / train_seconds, 3) if train_seconds else 0.0,
        clips_per_second=round(seen / train_seconds, 3) if train_seconds else 0.0, fingerprint=fingerprint,
        history=history)
    save_checkpoint(model.cpu(), Path(out_path), corpus, config, result, train_videos, val_videos)
    return result


def save_checkpoint(model: FusionAligner, path: Path, corpus: Corpus, config: TrainConfig, result: TrainResult,
                    train_videos: np.ndarray, val_videos: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = result.to_dict()
    save_fusion(
        model.fusion, path,
        format=CHECKPOINT_FORMAT, format_version=CHECKPOINT_VERSION,
        head_state_dict=model.head.state_dict(),
        head={"hidden": model.head.net[0].out_features},
        init_seed=config.seed,
        feature_models=corpus.models,
        feature_probe=feature_probe(corpus, int(corpus.text_clips(train_videos)[0])),
        feature_dims={"video": int(corpus.dims["video"]), "text": int(corpus.dims["text"])},
        training={"config": asdict(config), "metrics": {k: v for k, v in summary.items() if k != "checkpoint"},
                  "tool_version": __version__, "torch": str(torch.__version__),
                  "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
        data={"fingerprint": result.fingerprint, "features_dir": str(Path(corpus.features.out_dir).resolve()),
              "train_videos": sorted(corpus.video_keys[int(i)] for i in train_videos),
              "val_videos": sorted(corpus.video_keys[int(i)] for i in val_videos),
              "train_clips": result.train_clips, "val_clips": result.val_clips},
    )


# ------------------------------------------------------------------------------------- checkpoints


@dataclass
class TrainedFusion:
    """A `videobert train` checkpoint, loaded, and its untrained starting point."""

    path: Path
    blob: dict[str, Any]
    trained: FusionAligner
    untrained: FusionAligner

    @property
    def train_video_keys(self) -> set[str]:
        return set(self.blob["data"]["train_videos"])

    @property
    def val_video_keys(self) -> set[str]:
        return set(self.blob["data"]["val_videos"])


def load_trained(checkpoint: str | Path, corpus: Corpus) -> TrainedFusion:
    """Load a checkpoint made by `videobert train` for use on `corpus`; refuse one trained on
    features from other models or of other widths."""
    path = Path(checkpoint).expanduser()
    try:
        blob = read_checkpoint(path)
    except ModelError as exc:
        raise TrainingError(str(exc)) from None
    if blob.get("format") != CHECKPOINT_FORMAT or "head_state_dict" not in blob:
        raise TrainingError(f"{path}: not a checkpoint written by `videobert train` (it has no alignment head)")
    try:
        config = checkpoint_config(blob, path)
    except ModelError as exc:
        raise TrainingError(str(exc)) from None
    if (config.video_dim, config.text_dim) != (corpus.dims["video"], corpus.dims["text"]):
        raise TrainingError(f"{path}: trained on features of width video={config.video_dim}, "
                            f"text={config.text_dim}; these are video={corpus.dims['video']}, "
                            f"text={corpus.dims['text']}")
    try:
        check_checkpoint_features(blob, corpus, path)
    except ModelError as exc:
        raise TrainingError(str(exc)) from None
    missing = [f"{section}.{key}" for section, key in (("training", "config"), ("data", "train_videos"),
                                                        ("data", "val_videos"))
               if not isinstance(blob.get(section), dict) or key not in blob[section]]
    try:
        hidden, init_seed = int(blob["head"]["hidden"]), int(blob["init_seed"])
    except (KeyError, TypeError, ValueError):
        missing.append("head.hidden or init_seed")
    if missing:
        raise TrainingError(f"{path}: malformed fusion checkpoint: missing or unreadable {', '.join(missing)}")
    trained = FusionAligner(CrossModalFusion(config), AlignmentHead(config.dim, hidden))
    try:
        load_weights(trained.fusion, blob["state_dict"], path)
        load_weights(trained.head, blob["head_state_dict"], path, "head_state_dict")
    except ModelError as exc:
        raise TrainingError(str(exc)) from None
    untrained = init_model(config, init_seed)
    return TrainedFusion(path, blob, trained.eval(), untrained.eval())


def feature_probe(corpus: Corpus, clip: int) -> dict[str, Any]:
    """Identifies one clip's stored features: its video, its place in the video and a sha256 of
    its frame and token features. A checkpoint keeps the probe of its first training clip, so that
    features of random (unrecorded) weights can be recognised as the very ones it was trained on."""
    item = read_clip(corpus.features, clip)
    digest = hashlib.sha256(item["frames"].astype("<f4").tobytes() + item["tokens"].astype("<f4").tobytes())
    video = int(corpus.clip_video[clip])
    return {"video": corpus.video_keys[video], "clip": int(clip - corpus.videos[video]["first_clip"]),
            "sha256": digest.hexdigest()}


def check_checkpoint_features(blob: dict[str, Any], corpus: Corpus, source: str | Path) -> bool:
    """Refuse (ModelError) a checkpoint trained on features of other models. When it was trained on
    random weights, accept only the features it was trained on, recognised by its feature probe.
    Returns whether random weights were so verified. A checkpoint that records no feature models
    (a plain {"state_dict", "config"}) cannot be checked beyond its widths."""
    trained_on = blob.get("feature_models")
    if not trained_on:
        return False
    verified = False
    probe = blob.get("feature_probe")
    try:
        if probe and any(m["sha256"] == RANDOM for m in trained_on):
            for v, key in enumerate(corpus.video_keys):
                video = corpus.videos[v]
                if key == probe["video"] and probe["clip"] < video["clip_count"]:
                    found = feature_probe(corpus, int(video["first_clip"]) + int(probe["clip"]))
                    verified = verified or found["sha256"] == probe["sha256"]
        check_feature_models(trained_on, corpus.models, str(source), random_verified=verified)
    except (KeyError, TypeError, ValueError) as exc:  # hand-edited or foreign contents
        raise ModelError(f"{source}: malformed fusion checkpoint: unreadable feature_models or feature_probe "
                         f"({type(exc).__name__}: {exc})") from None
    return verified
