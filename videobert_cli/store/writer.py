"""Write per-clip results into HDF5 shards (the layout is `schema.py`'s).

A shard holds whole videos, up to `shard_size` clips (a longer video gets a
shard of its own). Each shard is written under a temporary name, flushed to
disk, then renamed, so a file named `shard-*.h5` is always complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import schema
from .schema import SCHEMA_MINOR, SCHEMA_MINOR_ATTR, SCHEMA_VERSION, SCHEMA_VERSION_ATTR, TMP_SUFFIX, shard_name


@dataclass
class VideoRecord:
    """One row of the videos table."""

    path: str  # as given
    abspath: str
    size: int
    mtime: float
    duration: float
    fps: float
    frame_count: int
    width: int
    height: int
    codec: str
    decoder: str
    decoder_note: str
    transcript: str  # path, "" when none
    transcript_format: str  # srt | vtt | json | txt | ... | none
    transcript_timed: bool
    warnings: list[str] = field(default_factory=list)


@dataclass
class VideoResult:
    """Everything extracted from one video, ready to write (numpy, CPU)."""

    video: VideoRecord
    start: np.ndarray  # (n,) float64
    end: np.ndarray  # (n,)
    frame_indices: np.ndarray  # (n, F) int64
    frame_times: np.ndarray  # (n, F) float64
    text: list[str]
    has_text: np.ndarray  # (n,) bool
    fused: np.ndarray  # (n, d)
    video_features: np.ndarray  # (n, d_img)
    text_features: np.ndarray  # (n, d_txt)
    token_count: np.ndarray  # (n,) int32
    frame_features: np.ndarray | None = None  # (n, F, d_img)
    token_features: np.ndarray | None = None  # (sum token_count, d_txt)
    token_ids: np.ndarray | None = None  # (sum token_count,)

    @property
    def num_clips(self) -> int:
        return len(self.start)


class ShardWriter:
    def __init__(self, out_dir: Path, attrs: dict[str, Any], *, shard_size: int, dtype: str,
                 save_frames: bool, save_tokens: bool, first_index: int = 0, part_label: str = "") -> None:
        self.out_dir = out_dir
        self.part_label = part_label
        self.attrs = attrs
        self.shard_size = shard_size
        self.dtype = np.dtype(dtype)
        self.save_frames = save_frames
        self.save_tokens = save_tokens
        self.next_index = first_index
        self.pending: list[VideoResult] = []
        self.written: list[Path] = []

    @property
    def pending_clips(self) -> int:
        return sum(r.num_clips for r in self.pending)

    def add(self, result: VideoResult) -> None:
        if self.pending and self.pending_clips + result.num_clips > self.shard_size:
            self.flush()
        self.pending.append(result)
        if self.pending_clips >= self.shard_size:
            self.flush()

    def close(self) -> None:
        if self.pending:
            self.flush()

    def flush(self) -> Path:
        final = self.out_dir / shard_name(self.next_index, self.part_label)
        tmp = final.with_name(final.name + TMP_SUFFIX)
        try:
            write_shard(tmp, self.pending, self.attrs, self.dtype, self.save_frames, self.save_tokens)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, final)
            fsync_dir(self.out_dir)  # the rename itself survives a power loss
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.pending = []
        self.next_index += 1
        self.written.append(final)
        return final


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cat(arrays: list[np.ndarray], shape_tail: tuple[int, ...], dtype: Any) -> np.ndarray:
    arrays = [a for a in arrays if a is not None and len(a)]
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros((0, *shape_tail), dtype=dtype)


def write_shard(path: Path, results: list[VideoResult], attrs: dict[str, Any], dtype: np.dtype,
                save_frames: bool, save_tokens: bool) -> None:
    sizes = schema.sizes(attrs)
    with h5py.File(path, "w") as f:
        f.attrs[SCHEMA_VERSION_ATTR] = SCHEMA_VERSION
        f.attrs[SCHEMA_MINOR_ATTR] = SCHEMA_MINOR
        for key, value in attrs.items():
            f.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value, sort_keys=True)

        clip_counts = np.array([r.num_clips for r in results], dtype=np.int64)
        token_count = _cat([r.token_count for r in results], (), schema.TOKEN_COUNT.dtype)
        derived = {  # the columns no VideoResult field holds as such
            schema.CLIP_VIDEO: np.repeat(np.arange(len(results), dtype=np.int32), clip_counts),
            schema.TOKEN_COUNT: token_count,
            schema.TOKEN_START: np.concatenate([[0], np.cumsum(token_count, dtype=np.int64)[:-1]]).astype(np.int64),
            schema.WARNINGS: [json.dumps(r.video.warnings) for r in results],
            schema.FIRST_CLIP: np.concatenate([[0], np.cumsum(clip_counts)[:-1]]).astype(np.int64),
            schema.CLIP_COUNT: clip_counts,
        }
        columns = [*schema.CLIP_COLUMNS, *(schema.FRAME_COLUMNS if save_frames else ()),
                   *(schema.TOKEN_COLUMNS if save_tokens else ()), *schema.VIDEO_COLUMNS]
        for column in columns:
            group = f.require_group(column.group)
            if column in derived:
                data = derived[column]
            elif column.group == schema.VIDEOS:
                data = [getattr(r.video, column.key) for r in results]
            elif column.dtype is schema.STRING:
                data = [value for r in results for value in getattr(r, column.key)]
            else:
                data = _cat([getattr(r, column.key) for r in results], column.tail(sizes), column.stored_dtype(dtype))
            group.create_dataset(column.name, data=data, dtype=column.stored_dtype(dtype))
