"""store/vocab_file.py (the vocabulary file) and store/columns.py (columns added to a shard atomically)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from videobert_cli.store import schema
from videobert_cli.store.columns import add_clip_columns, read_blocks, read_rows
from videobert_cli.store.vocab_file import VocabFileError, file_sha256, read_vocab, write_vocab
from videobert_cli.vocab import VisualVocab


def hand_made(branching: int = 2, depth: int = 2, dim: int = 3) -> VisualVocab:
    rng = np.random.default_rng(0)
    centroids = [rng.normal(size=(branching ** (l + 1), dim)).astype(np.float32) for l in range(depth)]
    valid = [np.ones(branching ** (l + 1), dtype=bool) for l in range(depth)]
    valid[1][-branching:] = False  # the last node of level 0 stopped early
    return VisualVocab(branching, depth, "video_features", centroids, valid,
                       [{"role": "video", "name": "resnet18", "sha256": "ab" * 32}], seed=3,
                       sample={"clips": 10, "of": 20, "sha256": "cd" * 32, "probe": {"video": "v", "clip": 0,
                                                                                     "sha256": "ef" * 32}},
                       fit={"inertia": [2.0, 1.0]}, created_utc="2024-01-01T00:00:00+00:00", tool_version="x",
                       source="/feats")


def test_round_trip_keeps_everything(tmp_path: Path):
    vocab = hand_made()
    sha = write_vocab(tmp_path / "v.h5", vocab)
    assert sha == file_sha256(tmp_path / "v.h5") and not (tmp_path / "v.h5.tmp").exists()
    again = read_vocab(tmp_path / "v.h5")
    for a, b in zip(vocab.centroids + vocab.valid, again.centroids + again.valid):
        assert np.array_equal(a, b) and a.dtype == b.dtype
    for key in ("branching", "depth", "field", "models", "seed", "sample", "fit", "created_utc", "tool_version",
                "source"):
        assert getattr(again, key) == getattr(vocab, key), key
    assert again.leaves() == 2 + 1


def test_what_is_not_a_vocabulary_is_refused(tmp_path: Path):
    with pytest.raises(VocabFileError, match="not found"):
        read_vocab(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(VocabFileError, match="cannot be read"):
        read_vocab(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(VocabFileError, match="not a visual vocabulary"):
        read_vocab(tmp_path / "other.h5")


def shard(path: Path, n: int = 10) -> Path:
    with h5py.File(path, "w") as f:
        f.attrs[schema.SCHEMA_VERSION_ATTR] = 1
        f.attrs["dims"] = '{"video": 3}'
        f.create_dataset(schema.START.path, data=np.arange(n, dtype=np.float64))
        f.create_dataset(schema.VIDEO_FEATURES.path, data=np.arange(3 * n, dtype=np.float32).reshape(n, 3))
        f.create_dataset(schema.PATH.path, data=["a"], dtype=schema.STRING)
    return path


def test_columns_are_added_then_replaced_and_nothing_else_changes(tmp_path: Path):
    path = shard(tmp_path / "shard-00000.h5")
    words = np.arange(10, dtype=np.int32)
    add_clip_columns(path, {schema.VISUAL_WORD: words}, {"visual_vocab": {"depth": 2}})
    add_clip_columns(path, {schema.VISUAL_WORD: words + 1}, {"visual_vocab": {"depth": 2}})
    with h5py.File(path, "r") as f:
        assert np.array_equal(f[schema.VISUAL_WORD.path][()], words + 1)
        assert f.attrs[schema.SCHEMA_MINOR_ATTR] == schema.SCHEMA_MINOR and f.attrs["dims"] == '{"video": 3}'
        assert f[schema.PATH.path].asstr()[0] == "a"
    assert [len(b) for b in read_blocks(path, "video_features", block_rows=4)] == [4, 4, 2]
    assert np.array_equal(read_rows(path, "video_features", np.array([1, 5, 9]), block_rows=4)[:, 0], [3, 15, 27])
    assert list(tmp_path.iterdir()) == [path]


def test_a_failed_rewrite_leaves_the_shard_whole(tmp_path: Path):
    path = shard(tmp_path / "shard-00000.h5")
    before = path.read_bytes()
    with pytest.raises(ValueError, match="rows"):
        add_clip_columns(path, {schema.VISUAL_WORD: np.zeros(3, dtype=np.int32)}, {})
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]
