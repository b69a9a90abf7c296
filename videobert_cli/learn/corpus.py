"""A features folder as learning material: the clips with text, their videos, the split, one clip's features.

Training, evaluation and `fuse` all start here, so what they share lives apart from the training
loop: opening a folder (and refusing one without per-frame and per-token features: the encoders
never run in learn/, the fusion is trained on what `extract --save-frames --save-tokens` stored),
naming videos by content rather than path (`video_key`, so a split and a checkpoint survive moving
the corpus), the split by video, reading one clip, and telling texts apart by their token ids.

Videos, never clips, are split into training and validation: neighbouring clips of one video share
scenes and words, so a clip split would leak.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import EXECUTION, FUSED, STORED, keys_marked
from ..fusion import feature_model_ids
from ..store.reader import FeatureError, FeatureSet, open_features, saved_extras

# The extraction settings the training-data fingerprint leaves out: none of them changes the
# per-frame and per-token features that learning reads.
_UNSHAPING = keys_marked(EXECUTION, FUSED, STORED)


class TrainingError(ValueError):
    """Features, options or a checkpoint that cannot be used (exit code 2: nothing was trained)."""


def video_key(video: dict[str, Any]) -> str:
    """How the split and a checkpoint name a video: a hash of its file name, size, frame count and
    duration, not of its path. So a video keeps its side of the split, and is recognised as one a
    checkpoint trained on, wherever the corpus is moved or copied; two copies of one file are one
    video (never on both sides). No paths go into checkpoints."""
    ident = [Path(str(video["abspath"])).name, int(video["size"]), int(video["frame_count"]),
             round(float(video["duration"]), 3)]
    return hashlib.sha1(json.dumps(ident).encode("utf-8")).hexdigest()[:16]


@dataclass
class Corpus:
    """A features folder seen as (clip frames, clip text) pairs; nothing but the index is read."""

    features: FeatureSet
    models: list[dict[str, str]]  # feature models: role, name, sha256
    dims: dict[str, int]
    config: dict[str, Any]  # the extraction config of the first shard
    clip_video: np.ndarray  # (num_clips,) index in features.videos
    has_text: np.ndarray  # (num_clips,) bool
    video_keys: list[str] = field(default_factory=list)  # video_key per video

    @property
    def videos(self) -> list[dict[str, Any]]:
        return self.features.videos

    def text_clips(self, videos: np.ndarray) -> np.ndarray:
        """Global indices of the clips with text of these videos, in clip order."""
        chosen = np.zeros(len(self.videos), dtype=bool)
        chosen[videos] = True
        return np.flatnonzero(chosen[self.clip_video] & self.has_text)

    def fingerprint(self, train_videos: np.ndarray, val_videos: np.ndarray) -> str:
        """sha256 over what determines the training data: the feature models and widths, the
        extraction settings that shape the per-frame and per-token features (not the execution
        settings, nor those that change only the fused vector or which features are stored), and
        each video of the split (absolute path, size, mtime, clip count)."""
        def rows(index: np.ndarray) -> list[list[Any]]:
            return sorted([v["abspath"], v["size"], v["mtime"], v["clip_count"]]
                          for v in (self.videos[int(i)] for i in index))
        blob = {"models": self.models, "dims": self.dims,
                "config": {k: v for k, v in sorted(self.config.items()) if k not in _UNSHAPING},
                "train": rows(train_videos), "validation": rows(val_videos)}
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def open_corpus(features_dir: str | Path) -> Corpus:
    """Open a features folder for training, evaluation or re-fusion; refuse one that cannot be."""
    try:
        features = open_features(features_dir)
    except (FeatureError, OSError) as exc:
        raise TrainingError(str(exc)) from None
    missing = []
    for shard in features.shards:
        extras = saved_extras(shard.path)
        for extra, flag in (("frames", "--save-frames"), ("tokens", "--save-tokens")):
            if extra not in extras and flag not in missing:
                missing.append(flag)
    if missing:
        raise TrainingError(
            f"{features_dir}: the shards lack per-frame and/or per-token features; extract again with "
            f"{' '.join(missing)} (missing: {', '.join(missing)})")
    models = [feature_model_ids(a.get("models", [])) for a in features.attrs]
    dims = [a.get("dims") for a in features.attrs]
    if any(m != models[0] for m in models) or any(d != dims[0] for d in dims):
        raise TrainingError(f"{features_dir}: its shards were made with different models or feature widths")
    if len(models[0]) != 2:
        raise TrainingError(f"{features_dir}: the shards do not record their video and text models")
    clip_video = np.zeros(features.num_clips, dtype=np.int64)
    for k, video in enumerate(features.videos):
        clip_video[video["first_clip"] : video["first_clip"] + video["clip_count"]] = k
    has_text = np.asarray(features.array("has_text"), dtype=bool).reshape(-1)
    return Corpus(features, models[0], dict(dims[0]), dict(features.attrs[0].get("config") or {}), clip_video,
                  has_text, [video_key(v) for v in features.videos])


def split_videos(corpus: Corpus, *, seed: int, val_fraction: float,
                 val_videos: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) video indices; only videos with at least one text clip take part.
    Validation is the videos whose path matches the glob `val_videos`, or else a `val_fraction`
    of them chosen by a hash of (seed, video_key)."""
    with_text = np.unique(corpus.clip_video[corpus.has_text])
    if val_videos:
        pattern = val_videos
        is_val = np.array([fnmatch.fnmatchcase(corpus.videos[i]["path"], pattern)
                           or fnmatch.fnmatchcase(corpus.videos[i]["abspath"], pattern) for i in with_text], dtype=bool)
        train, val = with_text[~is_val], with_text[is_val]
        if not len(val):
            raise TrainingError(f"--val-videos {pattern!r} matches no video with text")
    else:
        if len(with_text) < 2:
            raise TrainingError(f"{len(with_text)} video(s) with text: a split by video needs at least 2")
        # Rank by a seeded hash of the video key: stable when videos are added or the corpus moves.
        order = sorted(with_text, key=lambda i: hashlib.sha256(
            f"{seed}:{corpus.video_keys[i]}".encode()).hexdigest())
        n_val = min(len(order) - 1, max(1, round(val_fraction * len(order))))
        val, train = np.sort(np.array(order[:n_val])), np.sort(np.array(order[n_val:]))
    if not len(train):
        raise TrainingError("no video with text is left for training")
    return train.astype(np.int64), val.astype(np.int64)


def read_clip(features: FeatureSet, index: int, frames: bool = True) -> dict[str, Any]:
    """Clip `index`'s token features ("tokens", float32), token ids ("ids") and, with frames, its
    per-frame features ("frames", float32): what the fusion takes, read from the shards."""
    item = features.clip(int(index), fields=("frame_features", "tokens") if frames else ("tokens",))
    out = {"tokens": np.asarray(item["token_features"], dtype=np.float32), "ids": np.asarray(item["token_ids"])}
    if frames:
        out["frames"] = np.asarray(item["frame_features"], dtype=np.float32)
    return out


def text_key(ids: np.ndarray) -> int:
    """Equal for two texts with the same token ids."""
    digest = hashlib.blake2b(np.ascontiguousarray(ids, dtype="<i8").tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)
