"""Write per-clip results into HDF5 shards (schema documented in the README).

A shard holds whole videos, up to `shard_size` clips (a longer video gets a
shard of its own). Each shard is written under a temporary name, flushed to
disk, then renamed, so a file named `shard-*.h5` is always complete.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

SCHEMA_VERSION = 1
SHARD_GLOB = "shard-*.h5"
TMP_SUFFIX = ".tmp"
# shard-NNNNN.h5 from a run in one part; shard-rIII-NNNNN.h5 from part (rank) III of a split run.
# NNNNN only grows within a folder: each run starts above every shard there, so the shard order
# (number, then name) puts a video's newer rows after its older ones whichever part wrote them.

_STR = h5py.string_dtype(encoding="utf-8")


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


_VIDEO_COLUMNS = {  # name -> HDF5 dtype
    "path": _STR, "abspath": _STR, "size": np.int64, "mtime": np.float64, "duration": np.float64,
    "fps": np.float64, "frame_count": np.int64, "width": np.int32, "height": np.int32, "codec": _STR,
    "decoder": _STR, "decoder_note": _STR, "transcript": _STR, "transcript_format": _STR,
    "transcript_timed": np.bool_,
}


_SHARD_NAME = re.compile(r"shard-(?:(r\d+)-)?(\d+)\.h5")


def shard_number(path: Path) -> int:
    return int(path.name.split("-")[-1].split(".")[0])


def shard_part_label(path: Path) -> str | None:
    """"rIII" for a shard (or its temporary file) written by a part of a split run, "" for a run in one
    part, None for a name that is not a shard's."""
    match = _SHARD_NAME.match(path.name)
    return None if match is None else (match.group(1) or "")


def sorted_shards(folder: Path) -> list[Path]:
    """Completed shards, oldest first."""
    return sorted(Path(folder).glob(SHARD_GLOB), key=lambda p: (shard_number(p), p.name))


def shard_name(index: int, part_label: str = "") -> str:
    return f"shard-{part_label + '-' if part_label else ''}{index:05d}.h5"


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
    dims = attrs["dims"]
    frames_per_clip = attrs["config"]["frames_per_clip"]
    with h5py.File(path, "w") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION
        for key, value in attrs.items():
            f.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value, sort_keys=True)

        clip_counts = np.array([r.num_clips for r in results], dtype=np.int64)
        first_clip = np.concatenate([[0], np.cumsum(clip_counts)[:-1]]).astype(np.int64)
        clips = f.create_group("clips")
        clips["video"] = np.repeat(np.arange(len(results), dtype=np.int32), clip_counts)
        clips["start"] = _cat([r.start for r in results], (), np.float64)
        clips["end"] = _cat([r.end for r in results], (), np.float64)
        clips["frame_indices"] = _cat([r.frame_indices for r in results], (frames_per_clip,), np.int64)
        clips["frame_times"] = _cat([r.frame_times for r in results], (frames_per_clip,), np.float64)
        clips.create_dataset("text", data=[t for r in results for t in r.text], dtype=_STR)
        clips["has_text"] = _cat([r.has_text for r in results], (), np.bool_)
        clips["fused"] = _cat([r.fused for r in results], (dims["fused"],), dtype)
        clips["video_features"] = _cat([r.video_features for r in results], (dims["video"],), dtype)
        clips["text_features"] = _cat([r.text_features for r in results], (dims["text"],), dtype)
        token_count = _cat([r.token_count for r in results], (), np.int32)
        clips["token_count"] = token_count
        clips["token_start"] = np.concatenate([[0], np.cumsum(token_count, dtype=np.int64)[:-1]]).astype(np.int64)
        if save_frames:
            clips["frame_features"] = _cat([r.frame_features for r in results],
                                           (frames_per_clip, dims["video"]), dtype)
        if save_tokens:
            tokens = f.create_group("tokens")
            tokens["features"] = _cat([r.token_features for r in results], (dims["text"],), dtype)
            tokens["ids"] = _cat([r.token_ids for r in results], (), np.int64)

        videos = f.create_group("videos")
        for name, col_dtype in _VIDEO_COLUMNS.items():
            videos.create_dataset(name, data=[getattr(r.video, name) for r in results], dtype=col_dtype)
        videos.create_dataset("warnings", data=[json.dumps(r.video.warnings) for r in results], dtype=_STR)
        videos["first_clip"] = first_clip
        videos["clip_count"] = clip_counts
