"""Read an output folder of shards as one dataset.

    from videobert_cli import open_features
    feats = open_features("feats/")
    feats.num_clips, feats.videos[0]["path"], feats.clip(0)["fused"]
    dataset = feats.dataset(fields=("fused", "text"))   # a torch Dataset over every shard

Shards are opened lazily and per process, so the Dataset works with
DataLoader workers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import h5py
import numpy as np

if TYPE_CHECKING:
    from .dataset import ClipDataset

from .schema import (ABSPATH, CLIP_COUNT, CLIP_VIDEO, CLIPS, END, FIRST_CLIP, FRAME_FEATURES, FRAME_INDICES,
                     FRAME_TIMES, FUSED, HAS_TEXT, JSON_ATTRS, PATH, SCHEMA_VERSION, SCHEMA_VERSION_ATTR, SHARD_GLOB,
                     SCHEMA_MINOR_ATTR, START, TEXT, TEXT_FEATURES, TOKEN_COLUMNS, TOKEN_COUNT, TOKEN_START, TOKENS,
                     VIDEO_COLUMNS, VIDEO_FEATURES, VIDEOS, VISUAL_VOCAB_ATTR, VISUAL_WORD, WARNINGS, sorted_shards)

# What `FeatureSet.clip` returns by default; "tokens" (and "frame_features") also ask for the saved extras.
CLIP_FIELDS = tuple(c.name for c in (FUSED, VIDEO_FEATURES, TEXT_FEATURES, START, END, FRAME_TIMES, FRAME_INDICES,
                                     TEXT, HAS_TEXT, TOKEN_COUNT))
# The autocast dtype a shard records (execution.precision), by its --precision name.
PRECISION_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


class FeatureError(ValueError):
    pass


def shard_paths(out_dir: Path) -> list[Path]:
    return sorted_shards(Path(out_dir))


def read_attrs(handle: h5py.File) -> dict[str, Any]:
    attrs = {}
    for key, value in handle.attrs.items():
        if isinstance(value, bytes):
            value = value.decode()
        if key in JSON_ATTRS and isinstance(value, str):
            value = json.loads(value)
        elif isinstance(value, np.generic):
            value = value.item()
        attrs[key] = value
    return attrs


def shard_precision(attrs: dict[str, Any]) -> str:
    """The precision a shard's encoders ran at (fp32, bf16, fp16), from its `execution` attribute;
    "unrecorded" for shards that do not say (written by hand, or by `fuse` from such shards)."""
    execution = attrs.get("execution")
    value = execution.get("precision") if isinstance(execution, dict) else None
    return PRECISION_NAMES.get(str(value), str(value)) if value else "unrecorded"


def precision_counts(attrs: Sequence[dict[str, Any]]) -> dict[str, int]:
    """{precision: number of shards}, in the order the precisions first appear."""
    counts: dict[str, int] = {}
    for a in attrs:
        counts[shard_precision(a)] = counts.get(shard_precision(a), 0) + 1
    return counts


def describe_precisions(counts: dict[str, int]) -> str:
    """"fp32 (3 shards), bf16 (2 shards)"."""
    return ", ".join(f"{p} ({n} shard{'s' if n != 1 else ''})" for p, n in counts.items())


def read_shard(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One whole shard in memory: (attributes, clip columns incl. token_features/token_ids, video columns)."""
    with h5py.File(path, "r") as f:
        attrs = read_attrs(f)
        clips = {k: f[CLIPS][k][()] for k in f[CLIPS]}
        if TOKENS in f:
            clips.update({c.key: f[c.path][()] for c in TOKEN_COLUMNS})
        videos = {k: f[VIDEOS][k][()] for k in f[VIDEOS]}
    return attrs, clips, videos


def saved_extras(path: Path) -> set[str]:
    """What a shard holds beyond the pooled features: "frames" (--save-frames), "tokens" (--save-tokens)."""
    with h5py.File(path, "r") as f:
        return {name for name, present in (("frames", FRAME_FEATURES.path in f), ("tokens", TOKENS in f)) if present}


@dataclass(frozen=True)
class ShardIndex:
    path: Path
    first_clip: int  # global index of the shard's first live clip
    rows: np.ndarray  # local clip rows that are live, increasing
    video_map: np.ndarray  # local video row -> global index in `videos`, -1 when superseded

    @property
    def num_clips(self) -> int:
        return len(self.rows)


class FeatureSet:
    """All shards of an output folder as one dataset of live clips, in shard order.

    A video extracted again (it changed) appears in a newer shard; only its
    newest rows are live, older ones are listed in `superseded`."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        paths = shard_paths(self.out_dir)
        if not paths:
            raise FeatureError(f"{self.out_dir}: no shards ({SHARD_GLOB})")
        self.attrs: list[dict[str, Any]] = []
        tables: list[list[dict[str, Any]]] = []
        newest: dict[str, tuple[int, int]] = {}  # abspath -> (shard number, row)
        for number, path in enumerate(paths):
            attrs, columns = _read_video_table(path)
            self.attrs.append(attrs)
            rows = []
            for row in range(len(columns[PATH.name])):
                video = {k: plain_value(v[row]) for k, v in columns.items()}
                video[WARNINGS.name] = json.loads(video[WARNINGS.name])
                video["shard"] = str(path)
                rows.append(video)
                newest[video[ABSPATH.name]] = (number, row)
            tables.append(rows)

        self.shards: list[ShardIndex] = []
        self.videos: list[dict[str, Any]] = []
        self.superseded: list[dict[str, Any]] = []
        total = 0
        for number, (path, rows) in enumerate(zip(paths, tables)):
            live_rows: list[np.ndarray] = []
            video_map = np.full(len(rows), -1, dtype=np.int64)
            first = total
            for row, video in enumerate(rows):
                local = np.arange(video[FIRST_CLIP.name], video[FIRST_CLIP.name] + video[CLIP_COUNT.name])
                if newest[video[ABSPATH.name]] != (number, row):
                    self.superseded.append(video)
                    continue
                video_map[row] = len(self.videos)
                video[FIRST_CLIP.name] = total + sum(len(r) for r in live_rows)  # global live clip index
                live_rows.append(local)
                self.videos.append(video)
            rows_array = np.concatenate(live_rows) if live_rows else np.zeros(0, dtype=np.int64)
            self.shards.append(ShardIndex(path, first, rows_array, video_map))
            total += len(rows_array)
        self.num_clips = total
        self._handles: dict[Path, h5py.File] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self.num_clips

    def _file(self, path: Path) -> h5py.File:
        if self._pid != os.getpid():  # h5py handles must not cross a fork
            self._handles, self._pid = {}, os.getpid()
        if path not in self._handles:
            self._handles[path] = h5py.File(path, "r")
        return self._handles[path]

    def _locate(self, index: int) -> tuple[ShardIndex, int]:
        if not 0 <= index < self.num_clips:
            raise IndexError(index)
        filled = [s for s in self.shards if s.num_clips]
        shard = filled[int(np.searchsorted([s.first_clip for s in filled], index, side="right")) - 1]
        return shard, int(shard.rows[index - shard.first_clip])

    def clip(self, index: int, fields: Sequence[str] = CLIP_FIELDS) -> dict[str, Any]:
        """One clip's fields, plus `video` (its index in `videos`) and, when saved, frames/tokens."""
        shard, row = self._locate(index)
        f = self._file(shard.path)
        clips = f[CLIPS]
        item: dict[str, Any] = {name: plain_value(clips[name][row]) for name in fields if name in clips}
        item[CLIP_VIDEO.name] = int(shard.video_map[int(clips[CLIP_VIDEO.name][row])])
        if FRAME_FEATURES.name in clips and FRAME_FEATURES.name in fields:
            item[FRAME_FEATURES.key] = clips[FRAME_FEATURES.name][row]
        if TOKENS in f and TOKENS in fields:
            start, count = int(clips[TOKEN_START.name][row]), int(clips[TOKEN_COUNT.name][row])
            for column in TOKEN_COLUMNS:
                item[column.key] = f[column.path][start : start + count]
        return item

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self.num_clips):
            yield self.clip(i)

    def array(self, name: str) -> np.ndarray:
        """One clip field over every shard, concatenated (fits-in-RAM use)."""
        parts = [self._file(s.path)[CLIPS][name][()][s.rows] for s in self.shards]
        return np.concatenate(parts) if parts else np.zeros(0)

    def rows(self, name: str, indices: np.ndarray) -> np.ndarray:
        """One clip field at these global clip indices (increasing), read block by block from each shard:
        a sample of a corpus larger than RAM."""
        from .columns import read_rows

        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and (np.any(np.diff(indices) <= 0) or indices[0] < 0 or indices[-1] >= self.num_clips):
            raise IndexError("indices must be increasing global clip indices")
        parts = []
        for s in self.shards:
            lo, hi = np.searchsorted(indices, [s.first_clip, s.first_clip + s.num_clips])
            if hi > lo:
                parts.append(read_rows(s.path, name, s.rows[indices[lo:hi] - s.first_clip]))
        return np.concatenate(parts) if parts else np.zeros(0)

    def describe(self) -> dict[str, Any]:
        """What `videobert info` prints: counts, dims, models, config."""
        first = self.attrs[0]
        configs = {json.dumps(a.get("config"), sort_keys=True) for a in self.attrs}
        return {
            "out_dir": str(self.out_dir),
            "schema_version": first.get(SCHEMA_VERSION_ATTR),
            "schema_minor": min(int(a.get(SCHEMA_MINOR_ATTR, 0)) for a in self.attrs),
            "visual_vocab": first.get(VISUAL_VOCAB_ATTR),
            "shards_with_visual_words": sum(VISUAL_WORD.name in self._file(s.path)[CLIPS] for s in self.shards),
            "shards": [str(s.path) for s in self.shards],
            "videos": len(self.videos),
            "superseded_videos": len(self.superseded),
            "clips": self.num_clips,
            "clips_with_text": int(self.array(HAS_TEXT.name).sum()),
            "video_seconds": round(sum(v["duration"] for v in self.videos), 3),
            "dims": first.get("dims"),
            "feature_dtype": first.get("feature_dtype"),
            "precision": precision_counts(self.attrs),
            "models": first.get("models"),
            "video_weights_random": bool(first.get("video_weights_random")),
            "config": first.get("config"),
            "configs_differ": len(configs) > 1,
            "created_utc": sorted(a.get("created_utc", "") for a in self.attrs),
            "versions": first.get("versions"),
            "decoders": {d: sum(v["decoder"] == d for v in self.videos) for d in {v["decoder"] for v in self.videos}},
            "transcript_formats": {t: sum(v["transcript_format"] == t for v in self.videos)
                                   for t in {v["transcript_format"] for v in self.videos}},
        }

    def dataset(self, fields: Sequence[str] = CLIP_FIELDS) -> "ClipDataset":
        from .dataset import ClipDataset

        return ClipDataset(self, fields)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}


def __getattr__(name: str) -> Any:
    """ClipDataset lives in store/dataset.py (it needs torch; reading shards does not)."""
    if name == "ClipDataset":
        from .dataset import ClipDataset

        return ClipDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _read_video_table(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A shard's attributes and videos table; FeatureError naming the shard when it is not one this reader
    can use (h5py's own errors on a damaged file do not name it)."""
    try:
        with h5py.File(path, "r") as f:
            attrs = read_attrs(f)
            if attrs.get(SCHEMA_VERSION_ATTR) != SCHEMA_VERSION:
                raise FeatureError(f"{path}: schema version {attrs.get(SCHEMA_VERSION_ATTR)}, "
                                   f"this reader knows {SCHEMA_VERSION}")
            missing = [c.path for c in VIDEO_COLUMNS if c.path not in f]
            if missing:
                raise FeatureError(f"{path}: datasets missing: {', '.join(missing)}")
            return attrs, {k: f[VIDEOS][k][()] for k in f[VIDEOS]}
    except OSError as exc:
        raise FeatureError(f"{path}: cannot be read ({exc})") from None


def plain_value(value: Any) -> Any:
    """An HDF5 scalar as plain Python: bytes decoded as UTF-8, numpy scalars as Python numbers."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def open_features(out_dir: str | Path) -> FeatureSet:
    return FeatureSet(out_dir)
