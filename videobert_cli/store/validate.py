"""`videobert validate OUT`: check every shard and the failure log, naming each problem."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import schema
from .outdir import OutputDir
from .reader import describe_precisions, read_attrs, shard_precision
from .schema import (ABSPATH, CLIP_COUNT, CLIP_VIDEO, CLIPS, END, FIRST_CLIP, HAS_TEXT, MTIME, PATH, SCHEMA_VERSION,
                     SCHEMA_VERSION_ATTR, SIZE, START, TMP_SUFFIX, TOKEN_COUNT, TOKEN_FEATURES, TOKEN_IDS, TOKENS,
                     VIDEOS, WARNINGS, sorted_shards)

CHUNK = 4096  # rows read at a time when scanning features for NaN/Inf


@dataclass
class Report:
    shards: int = 0
    videos: int = 0
    clips: int = 0
    superseded: int = 0
    failures_logged: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # worth knowing, not damage: `ok` stays True
    precision: dict[str, int] = field(default_factory=dict)  # shards per encoder precision

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "shards": self.shards, "videos": self.videos, "clips": self.clips,
                "superseded": self.superseded, "failures_logged": self.failures_logged,
                "problems": self.problems, "notes": self.notes, "warnings": self.warnings,
                "precision": self.precision}


def validate(out_dir: Path) -> Report:
    report = Report()
    out = OutputDir(out_dir)
    shards = sorted_shards(out_dir)
    report.shards = len(shards)
    if not shards:
        report.problems.append(f"{out_dir}: no shards")
    for tmp in sorted(out_dir.glob("*" + TMP_SUFFIX)):
        report.notes.append(f"{tmp.name}: left by an unfinished run (removed by the next run; not a shard)")
    seen: dict[str, tuple[str, int, float]] = {}
    for shard in shards:
        try:
            videos = _check_shard(shard, report)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            report.problems.append(f"{shard.name}: cannot be read ({type(exc).__name__}: {exc})")
            continue
        for abspath, size, mtime in videos:
            if abspath in seen:
                first_shard, first_size, first_mtime = seen[abspath]
                if (first_size, first_mtime) == (size, mtime) or first_shard == shard.name:
                    report.problems.append(f"{abspath}: extracted twice (in {first_shard} and {shard.name})")
                else:
                    report.superseded += 1
                    report.notes.append(f"{abspath}: changed and extracted again; rows in {first_shard} "
                                        f"superseded by {shard.name}")
            seen[abspath] = (shard.name, size, mtime)
    report.videos = len(seen)
    if len(report.precision) > 1:
        report.warnings.append(
            f"shards extracted at different precisions: {describe_precisions(report.precision)} (a resume on "
            "other hardware); their features differ in the last bits (bf16 vs fp32: cosine about 0.99999 on "
            "ResNet-50), re-extract with --overwrite and one --precision for a uniform corpus")
    try:
        report.failures_logged = len(out.failure_records())
    except (ValueError, OSError) as exc:
        report.problems.append(f"failure log: {exc}")
    return report


def _check_shard(path: Path, report: Report) -> list[tuple[str, int, float]]:
    name = path.name
    problems = report.problems
    with h5py.File(path, "r") as f:
        attrs = read_attrs(f)
        if attrs.get(SCHEMA_VERSION_ATTR) != SCHEMA_VERSION:
            problems.append(f"{name}: schema version {attrs.get(SCHEMA_VERSION_ATTR)!r}, expected {SCHEMA_VERSION}")
            return []
        precision = shard_precision(attrs)
        report.precision[precision] = report.precision.get(precision, 0) + 1
        for key in schema.REQUIRED_ATTRS:
            if key not in attrs:
                problems.append(f"{name}: attribute {key!r} missing")
        missing = [c.path for c in (*schema.CLIP_COLUMNS, *schema.VIDEO_COLUMNS) if c.path not in f]
        if missing:
            problems.append(f"{name}: datasets missing: {', '.join(missing)}")
            return []
        clips, videos = f[CLIPS], f[VIDEOS]
        n = clips[START.name].shape[0]
        report.clips += n
        sizes = schema.sizes(attrs)
        for column in (*schema.CLIP_COLUMNS, *schema.FRAME_COLUMNS):
            if column.path not in f:
                continue
            dataset = f[column.path]
            if dataset.shape[0] != n:
                problems.append(f"{name}: {column.path} has {dataset.shape[0]} rows, {START.path} has {n}")
            tail = column.tail(sizes)
            if tuple(dataset.shape[1:]) != tail:
                problems.append(f"{name}: {column.path} has shape {dataset.shape}, expected (N"
                                f"{''.join(f', {size}' for size in tail)})")
        for column in schema.FEATURE_COLUMNS:
            if column.path in f:
                _check_finite(f[column.path], f"{name}: {column.path}", problems)
        _check_visual_words(f, attrs, n, name, problems)
        if TOKENS in f:
            total_tokens = int(np.sum(clips[TOKEN_COUNT.name][()], dtype=np.int64))
            rows = f[TOKEN_FEATURES.path].shape[0]
            if rows != total_tokens or f[TOKEN_IDS.path].shape[0] != total_tokens:
                problems.append(f"{name}: tokens hold {rows} rows, token_count sums to {total_tokens}")
        start, end = clips[START.name][()], clips[END.name][()]
        if np.any(end < start):
            problems.append(f"{name}: {int(np.sum(end < start))} clip(s) end before they start")
        if not np.array_equal(clips[HAS_TEXT.name][()], clips[TOKEN_COUNT.name][()] > 0):
            problems.append(f"{name}: has_text disagrees with token_count")

        counts, firsts = videos[CLIP_COUNT.name][()], videos[FIRST_CLIP.name][()]
        v = len(videos[PATH.name])
        for key in videos:
            if videos[key].shape[0] != v:
                problems.append(f"{name}: videos/{key} has {videos[key].shape[0]} rows, {PATH.path} has {v}")
        if int(counts.sum()) != n:
            problems.append(f"{name}: the videos table counts {int(counts.sum())} clips, the shard holds {n}")
        elif not np.array_equal(firsts, np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(firsts.dtype)):
            problems.append(f"{name}: {FIRST_CLIP.path} is not contiguous")
        elif not np.array_equal(clips[CLIP_VIDEO.name][()], np.repeat(np.arange(v), counts)):
            problems.append(f"{name}: {CLIP_VIDEO.path} does not match the videos table")
        for row, warnings in enumerate(videos[WARNINGS.name].asstr()[()]):
            try:
                json.loads(warnings)
            except json.JSONDecodeError:
                problems.append(f"{name}: {WARNINGS.path} row {row} is not JSON")
        abspaths = list(videos[ABSPATH.name].asstr()[()])
        if len(set(abspaths)) != len(abspaths):
            problems.append(f"{name}: a video appears twice in one shard")
        return list(zip(abspaths, (int(x) for x in videos[SIZE.name][()]), (float(x) for x in videos[MTIME.name][()])))


def _check_finite(dataset: h5py.Dataset, label: str, problems: list[str]) -> None:
    bad = 0
    for i in range(0, dataset.shape[0], CHUNK):
        block = dataset[i : i + CHUNK]
        bad += int(np.size(block) - np.count_nonzero(np.isfinite(block)))
    if bad:
        problems.append(f"{label}: {bad} NaN/Inf value(s)")


def _check_visual_words(f: h5py.File, attrs: dict[str, Any], n: int, name: str, problems: list[str]) -> None:
    """Schema 1.1: clips/visual_word and clips/visual_path come together, with the vocabulary attribute;
    words in [0, branching^D), paths of D branch indexes in [0, branching) (-1 only after an early stop),
    and each word the path read in base `branching`."""
    present = [c for c in schema.VISUAL_COLUMNS if c.path in f]
    if not present:
        if schema.VISUAL_VOCAB_ATTR in attrs:
            problems.append(f"{name}: attribute {schema.VISUAL_VOCAB_ATTR!r} without {schema.VISUAL_WORD.path}")
        return
    if len(present) != len(schema.VISUAL_COLUMNS):
        missing = [c.path for c in schema.VISUAL_COLUMNS if c not in present]
        problems.append(f"{name}: visual words incomplete: {', '.join(missing)} missing")
        return
    vocab = attrs.get(schema.VISUAL_VOCAB_ATTR)
    if not isinstance(vocab, dict) or not isinstance(vocab.get("branching"), int) or not isinstance(vocab.get("depth"), int):
        problems.append(f"{name}: visual words without a readable {schema.VISUAL_VOCAB_ATTR!r} attribute "
                        "(branching, depth)")
        return
    if int(attrs.get(schema.SCHEMA_MINOR_ATTR, 0)) < 1:
        problems.append(f"{name}: visual words in a shard marked schema_minor {attrs.get(schema.SCHEMA_MINOR_ATTR, 0)}")
    branching, depth = vocab["branching"], vocab["depth"]
    words, paths = f[schema.VISUAL_WORD.path], f[schema.VISUAL_PATH.path]
    for column, dataset, shape in ((schema.VISUAL_WORD, words, (n,)), (schema.VISUAL_PATH, paths, (n, depth))):
        if dataset.dtype != column.dtype:
            problems.append(f"{name}: {column.path} is {dataset.dtype}, expected {column.dtype}")
        if tuple(dataset.shape) != shape:
            problems.append(f"{name}: {column.path} has shape {dataset.shape}, expected {shape}")
    if words.shape != (n,) or paths.shape != (n, depth):
        return
    w, p = words[()].astype(np.int64), paths[()].astype(np.int64)
    bad = int(np.sum((w < 0) | (w >= branching ** depth)))
    if bad:
        problems.append(f"{name}: {bad} visual word(s) outside [0, {branching ** depth})")
    stopped = p < 0
    if np.any((p >= branching) | (p < -1)) or np.any(stopped[:, :-1] & ~stopped[:, 1:]) or np.any(stopped[:, :1]):
        problems.append(f"{name}: {schema.VISUAL_PATH.path} holds branch indexes outside [0, {branching}) or a -1 "
                        "above a branch")
        return
    expected = (np.where(stopped, 0, p) * branching ** np.arange(depth - 1, -1, -1)).sum(axis=1)
    if not np.array_equal(expected, w):
        problems.append(f"{name}: {int(np.sum(expected != w))} visual word(s) disagree with {schema.VISUAL_PATH.path}")
