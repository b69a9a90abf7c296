"""The HDF5 shard schema, once: file naming, attributes, groups, and each column's name, dtype and shape.

The writer, the reader, `validate` and the output folder all speak this layout; spelling it here
alone means a column cannot be renamed or retyped in one of them and silently missed by another.
README.md's "Output: HDF5 schema" section documents the same table for users (a test holds the two
together). Changing a name, dtype or shape here changes the files written: raise SCHEMA_VERSION.
Adding an optional column that older readers can ignore raises SCHEMA_MINOR instead: a shard keeps
`schema_version` 1 (what every reader of version 1 checks, so they still open it) and records the
revision in `schema_minor` (absent = 0).

Shapes are symbolic, in the README's letters: the rows first (N clips, M tokens, V videos), then
F (frames per clip), d (fused width), d_img (video features), d_txt (text features) and D (the
depth of the visual vocabulary), whose sizes a shard's attributes give (`sizes`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

SCHEMA_VERSION = 1
SCHEMA_MINOR = 1  # 1.1: the optional clips/visual_word and clips/visual_path (`videobert tokenize`)

# -- file naming ----------------------------------------------------------------------------------
# shard-NNNNN.h5 from a run in one part; shard-rIII-NNNNN.h5 from part (rank) III of a split run.
# NNNNN only grows within a folder: each run starts above every shard there, so the shard order
# (number, then name) puts a video's newer rows after its older ones whichever part wrote them.
SHARD_GLOB = "shard-*.h5"
TMP_SUFFIX = ".tmp"  # a shard is written as NAME.tmp and renamed to NAME once whole
_SHARD_NAME = re.compile(r"shard-(?:(r\d+)-)?(\d+)\.h5")


def shard_name(index: int, part_label: str = "") -> str:
    return f"shard-{part_label + '-' if part_label else ''}{index:05d}.h5"


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


# -- file attributes ------------------------------------------------------------------------------
SCHEMA_VERSION_ATTR = "schema_version"
SCHEMA_MINOR_ATTR = "schema_minor"
VISUAL_VOCAB_ATTR = "visual_vocab"  # JSON: the vocabulary the visual words come from (only with them)
JSON_ATTRS = ("config", "models", "dims", "versions", "preprocess", "execution",
              VISUAL_VOCAB_ATTR)  # stored as JSON text
REQUIRED_ATTRS = ("config", "models", "dims", "created_utc", "tool_version", "versions")


def sizes(attrs: Mapping[str, Any]) -> dict[str, int | None]:
    """The sizes of the shape letters, from a shard's attributes (None where they do not say)."""
    dims = attrs.get("dims") or {}
    vocab = attrs.get(VISUAL_VOCAB_ATTR)
    return {"F": (attrs.get("config") or {}).get("frames_per_clip"), "d": dims.get("fused"),
            "d_img": dims.get("video"), "d_txt": dims.get("text"),
            "D": vocab.get("depth") if isinstance(vocab, Mapping) else None}


# -- groups and columns ---------------------------------------------------------------------------
CLIPS = "clips"
TOKENS = "tokens"  # only with --save-tokens
VIDEOS = "videos"

STRING = h5py.string_dtype(encoding="utf-8")
FEATURE = "feature"  # stands for the run's feature dtype (--dtype: float32 or float16)


@dataclass(frozen=True)
class Column:
    """One dataset: `group/name`, its dtype and its symbolic shape. `key` names it in flat per-clip
    records (VideoResult's fields, `read_shard`'s clip dict, `FeatureSet.clip`)."""

    group: str
    name: str
    dtype: Any  # a numpy dtype, STRING, or FEATURE
    shape: tuple[str, ...]
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", self.name)

    @property
    def path(self) -> str:
        return f"{self.group}/{self.name}"

    @property
    def is_feature(self) -> bool:
        return isinstance(self.dtype, str) and self.dtype == FEATURE

    def stored_dtype(self, feature_dtype: Any) -> Any:
        return np.dtype(feature_dtype) if self.is_feature else self.dtype

    def tail(self, letter_sizes: Mapping[str, int | None]) -> tuple[int | None, ...]:
        """The shape after the rows, in numbers."""
        return tuple(letter_sizes.get(letter) for letter in self.shape[1:])


# clips/*: one row per clip. Listed in the order the writer creates them.
CLIP_VIDEO = Column(CLIPS, "video", np.dtype(np.int32), ("N",))  # row in this shard's videos/*
START = Column(CLIPS, "start", np.dtype(np.float64), ("N",))
END = Column(CLIPS, "end", np.dtype(np.float64), ("N",))
FRAME_INDICES = Column(CLIPS, "frame_indices", np.dtype(np.int64), ("N", "F"))
FRAME_TIMES = Column(CLIPS, "frame_times", np.dtype(np.float64), ("N", "F"))
TEXT = Column(CLIPS, "text", STRING, ("N",))
HAS_TEXT = Column(CLIPS, "has_text", np.dtype(np.bool_), ("N",))
FUSED = Column(CLIPS, "fused", FEATURE, ("N", "d"))
VIDEO_FEATURES = Column(CLIPS, "video_features", FEATURE, ("N", "d_img"))
TEXT_FEATURES = Column(CLIPS, "text_features", FEATURE, ("N", "d_txt"))
TOKEN_COUNT = Column(CLIPS, "token_count", np.dtype(np.int32), ("N",))
TOKEN_START = Column(CLIPS, "token_start", np.dtype(np.int64), ("N",))
CLIP_COLUMNS = (CLIP_VIDEO, START, END, FRAME_INDICES, FRAME_TIMES, TEXT, HAS_TEXT, FUSED, VIDEO_FEATURES,
                TEXT_FEATURES, TOKEN_COUNT, TOKEN_START)

# Saved on request: --save-frames adds FRAME_FEATURES, --save-tokens the tokens group
# (clip i owns token rows token_start[i] : token_start[i] + token_count[i]).
FRAME_FEATURES = Column(CLIPS, "frame_features", FEATURE, ("N", "F", "d_img"))
TOKEN_FEATURES = Column(TOKENS, "features", FEATURE, ("M", "d_txt"), key="token_features")
TOKEN_IDS = Column(TOKENS, "ids", np.dtype(np.int64), ("M",), key="token_ids")
FRAME_COLUMNS = (FRAME_FEATURES,)
TOKEN_COLUMNS = (TOKEN_FEATURES, TOKEN_IDS)

# Schema 1.1, added by `videobert tokenize` (or `extract --visual-vocab`): each clip's visual word,
# the leaf of the hierarchical k-means tree its feature falls in. visual_path holds the branch taken
# at each of the D levels (-1 below a branch that stopped early); visual_word is the path read as a
# number in base `branching` with -1 read as 0, so a word id is in [0, branching^D) and stable.
VISUAL_WORD = Column(CLIPS, "visual_word", np.dtype(np.int32), ("N",))
VISUAL_PATH = Column(CLIPS, "visual_path", np.dtype(np.int32), ("N", "D"))
VISUAL_COLUMNS = (VISUAL_WORD, VISUAL_PATH)

# videos/*: one row per video. The first ones are VideoRecord's fields, by the same names.
PATH = Column(VIDEOS, "path", STRING, ("V",))  # as given
ABSPATH = Column(VIDEOS, "abspath", STRING, ("V",))  # what identifies a video in a folder
SIZE = Column(VIDEOS, "size", np.dtype(np.int64), ("V",))
MTIME = Column(VIDEOS, "mtime", np.dtype(np.float64), ("V",))
DURATION = Column(VIDEOS, "duration", np.dtype(np.float64), ("V",))
FPS = Column(VIDEOS, "fps", np.dtype(np.float64), ("V",))
FRAME_COUNT = Column(VIDEOS, "frame_count", np.dtype(np.int64), ("V",))
WIDTH = Column(VIDEOS, "width", np.dtype(np.int32), ("V",))
HEIGHT = Column(VIDEOS, "height", np.dtype(np.int32), ("V",))
CODEC = Column(VIDEOS, "codec", STRING, ("V",))
DECODER = Column(VIDEOS, "decoder", STRING, ("V",))
DECODER_NOTE = Column(VIDEOS, "decoder_note", STRING, ("V",))
TRANSCRIPT = Column(VIDEOS, "transcript", STRING, ("V",))
TRANSCRIPT_FORMAT = Column(VIDEOS, "transcript_format", STRING, ("V",))
TRANSCRIPT_TIMED = Column(VIDEOS, "transcript_timed", np.dtype(np.bool_), ("V",))
WARNINGS = Column(VIDEOS, "warnings", STRING, ("V",))  # a JSON list per video
FIRST_CLIP = Column(VIDEOS, "first_clip", np.dtype(np.int64), ("V",))
CLIP_COUNT = Column(VIDEOS, "clip_count", np.dtype(np.int64), ("V",))
VIDEO_RECORD_COLUMNS = (PATH, ABSPATH, SIZE, MTIME, DURATION, FPS, FRAME_COUNT, WIDTH, HEIGHT, CODEC, DECODER,
                        DECODER_NOTE, TRANSCRIPT, TRANSCRIPT_FORMAT, TRANSCRIPT_TIMED)
VIDEO_COLUMNS = (*VIDEO_RECORD_COLUMNS, WARNINGS, FIRST_CLIP, CLIP_COUNT)

FEATURE_COLUMNS = tuple(c for c in (*CLIP_COLUMNS, *FRAME_COLUMNS, *TOKEN_COLUMNS) if c.is_feature)
