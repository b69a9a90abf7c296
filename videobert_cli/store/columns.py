"""Columns of a shard read in blocks, and columns added to a shard atomically (`videobert tokenize`).

A shard is never changed in place: `add_clip_columns` writes a new copy under the temporary name
(every group, dataset and attribute copied as stored, the columns added or replaced), flushes it to
disk and renames it over the shard, as the writer does. A crash leaves the old shard whole (and a
`.tmp` file the next run removes); a second run replaces the columns rather than adding them twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import h5py
import numpy as np

from .schema import CLIPS, SCHEMA_MINOR, SCHEMA_MINOR_ATTR, START, TMP_SUFFIX, Column
from .writer import fsync_dir

BLOCK = 4096  # rows read at a time


def shard_clip_count(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return int(f[START.path].shape[0])


def has_clip_column(path: Path, name: str) -> bool:
    with h5py.File(path, "r") as f:
        return f"{CLIPS}/{name}" in f


def read_blocks(path: Path, name: str, block_rows: int = BLOCK) -> Iterator[np.ndarray]:
    """clips/`name` of one shard, every row in order, `block_rows` at a time (a shard larger than RAM works)."""
    with h5py.File(path, "r") as f:
        if f"{CLIPS}/{name}" not in f:
            raise KeyError(f"{path}: no dataset {CLIPS}/{name}")
        dataset = f[CLIPS][name]
        for start in range(0, dataset.shape[0], block_rows):
            yield dataset[start : start + block_rows]


def read_rows(path: Path, name: str, rows: np.ndarray, block_rows: int = BLOCK) -> np.ndarray:
    """clips/`name` at the given local rows (increasing), read block by block."""
    rows = np.asarray(rows, dtype=np.int64)
    with h5py.File(path, "r") as f:
        dataset = f[CLIPS][name]
        out = np.zeros((len(rows), *dataset.shape[1:]), dtype=dataset.dtype)
        done = 0
        for start in range(0, dataset.shape[0], block_rows):
            stop = start + block_rows
            k = int(np.searchsorted(rows, stop, side="left")) - done
            if k <= 0:
                continue
            block = dataset[start : min(stop, dataset.shape[0])]
            out[done : done + k] = block[rows[done : done + k] - start]
            done += k
            if done == len(rows):
                break
    return out


def _attr_value(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, np.generic)) else json.dumps(value, sort_keys=True)


def add_clip_columns(path: Path, columns: Mapping[Column, np.ndarray], attrs: Mapping[str, Any]) -> None:
    """Rewrite the shard with these clips/* columns (added, or replacing ones of the same name) and these
    file attributes (JSON-encoded like the writer's), atomically. The shard becomes schema 1.SCHEMA_MINOR."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with h5py.File(path, "r") as src, h5py.File(tmp, "w") as dst:
            n = src[START.path].shape[0]
            for column, data in columns.items():
                if column.group != CLIPS or len(data) != n:
                    raise ValueError(f"{path}: {column.path} has {len(data)} rows, the shard {n} clips")
            for key, value in src.attrs.items():
                dst.attrs[key] = value
            dst.attrs[SCHEMA_MINOR_ATTR] = SCHEMA_MINOR
            for key, value in attrs.items():
                dst.attrs[key] = _attr_value(value)
            replaced = {c.name for c in columns}
            for group_name, group in src.items():
                if group_name != CLIPS:
                    src.copy(group, dst, name=group_name)
                    continue
                out = dst.require_group(CLIPS)
                for key, value in group.attrs.items():
                    out.attrs[key] = value
                for name in group:
                    if name not in replaced:
                        src.copy(group[name], out, name=name)
            for column, data in columns.items():
                dst[CLIPS].create_dataset(column.name, data=np.asarray(data, dtype=column.dtype))
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
