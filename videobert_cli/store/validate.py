"""`videobert validate OUT`: check every shard and the failure log, naming each problem."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .outdir import OutputDir
from .writer import sorted_shards
from .reader import describe_precisions, read_attrs, shard_precision
from .writer import SCHEMA_VERSION, TMP_SUFFIX

FEATURES = ("fused", "video_features", "text_features", "frame_features")
PER_CLIP = ("start", "end", "frame_times", "frame_indices", "text", "has_text", "video", "token_count",
            "token_start", *FEATURES)
REQUIRED_CLIPS = ("fused", "video_features", "text_features", "start", "end", "frame_times", "frame_indices",
                  "text", "has_text", "video", "token_count", "token_start")
REQUIRED_VIDEOS = ("path", "abspath", "size", "mtime", "duration", "first_clip", "clip_count", "warnings")
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
        if attrs.get("schema_version") != SCHEMA_VERSION:
            problems.append(f"{name}: schema version {attrs.get('schema_version')!r}, expected {SCHEMA_VERSION}")
            return []
        precision = shard_precision(attrs)
        report.precision[precision] = report.precision.get(precision, 0) + 1
        for key in ("config", "models", "dims", "created_utc", "tool_version", "versions"):
            if key not in attrs:
                problems.append(f"{name}: attribute {key!r} missing")
        clips, videos = f["clips"], f["videos"]
        missing = [k for k in REQUIRED_CLIPS if k not in clips] + [f"videos/{k}" for k in REQUIRED_VIDEOS
                                                                    if k not in videos]
        if missing:
            problems.append(f"{name}: datasets missing: {', '.join(missing)}")
            return []
        n = clips["start"].shape[0]
        report.clips += n
        for key in PER_CLIP:
            if key in clips and clips[key].shape[0] != n:
                problems.append(f"{name}: clips/{key} has {clips[key].shape[0]} rows, clips/start has {n}")
        dims = attrs.get("dims", {})
        frames = attrs.get("config", {}).get("frames_per_clip")
        expected = {"fused": (dims.get("fused"),), "video_features": (dims.get("video"),),
                    "text_features": (dims.get("text"),), "frame_features": (frames, dims.get("video")),
                    "frame_times": (frames,), "frame_indices": (frames,)}
        for key, tail in expected.items():
            if key in clips and tuple(clips[key].shape[1:]) != tail:
                problems.append(f"{name}: clips/{key} has shape {clips[key].shape}, expected (N, "
                                f"{', '.join(map(str, tail))})")
        for key in FEATURES:
            if key in clips:
                _check_finite(clips[key], f"{name}: clips/{key}", problems)
        if "tokens" in f:
            _check_finite(f["tokens/features"], f"{name}: tokens/features", problems)
            total_tokens = int(np.sum(clips["token_count"][()], dtype=np.int64))
            if f["tokens/features"].shape[0] != total_tokens or f["tokens/ids"].shape[0] != total_tokens:
                problems.append(f"{name}: tokens hold {f['tokens/features'].shape[0]} rows, token_count sums to "
                                f"{total_tokens}")
        start, end = clips["start"][()], clips["end"][()]
        if np.any(end < start):
            problems.append(f"{name}: {int(np.sum(end < start))} clip(s) end before they start")
        if not np.array_equal(clips["has_text"][()], clips["token_count"][()] > 0):
            problems.append(f"{name}: has_text disagrees with token_count")

        counts, firsts = videos["clip_count"][()], videos["first_clip"][()]
        v = len(videos["path"])
        for key in videos:
            if videos[key].shape[0] != v:
                problems.append(f"{name}: videos/{key} has {videos[key].shape[0]} rows, videos/path has {v}")
        if int(counts.sum()) != n:
            problems.append(f"{name}: the videos table counts {int(counts.sum())} clips, the shard holds {n}")
        elif not np.array_equal(firsts, np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(firsts.dtype)):
            problems.append(f"{name}: videos/first_clip is not contiguous")
        elif not np.array_equal(clips["video"][()], np.repeat(np.arange(v), counts)):
            problems.append(f"{name}: clips/video does not match the videos table")
        for row, warnings in enumerate(videos["warnings"].asstr()[()]):
            try:
                json.loads(warnings)
            except json.JSONDecodeError:
                problems.append(f"{name}: videos/warnings row {row} is not JSON")
        abspaths = list(videos["abspath"].asstr()[()])
        if len(set(abspaths)) != len(abspaths):
            problems.append(f"{name}: a video appears twice in one shard")
        return list(zip(abspaths, (int(x) for x in videos["size"][()]), (float(x) for x in videos["mtime"][()])))


def _check_finite(dataset: h5py.Dataset, label: str, problems: list[str]) -> None:
    bad = 0
    for i in range(0, dataset.shape[0], CHUNK):
        block = dataset[i : i + CHUNK]
        bad += int(np.size(block) - np.count_nonzero(np.isfinite(block)))
    if bad:
        problems.append(f"{label}: {bad} NaN/Inf value(s)")
