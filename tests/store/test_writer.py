"""store/writer.py: a shard holds exactly schema.py's datasets, dtypes and shapes, with consistent
indices; shards are cut at video boundaries; a shard appears under its name only once it is whole."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from handmade import attrs_for, video_result

from videobert_cli.store import schema, writer
from videobert_cli.store.writer import ShardWriter, write_shard

FRAMES, VIDEO_DIM, TEXT_DIM, FUSED_DIM = 2, 6, 4, 8


def clip(tokens: int, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(FRAMES, VIDEO_DIM)), rng.normal(size=(tokens, TEXT_DIM)), np.arange(tokens) + 5,
            "word " * tokens)


def results() -> list:
    a = video_result("a.mp4", [clip(2, 1), clip(0, 2), clip(1, 3)], FUSED_DIM)
    a.video.warnings = ["a word with no tokens"]
    return [a, video_result("b.mp4", [clip(3, 4)], FUSED_DIM)]


ATTRS = {**attrs_for(VIDEO_DIM, TEXT_DIM, FRAMES, fusion_dim=FUSED_DIM), "execution": {"precision": "float32"}}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("frames, tokens", [(False, False), (True, True), (True, False), (False, True)])
def test_a_shard_holds_the_schema_datasets_with_their_dtypes_and_shapes(tmp_path: Path, dtype: str, frames: bool,
                                                                         tokens: bool):
    path = tmp_path / "shard-00000.h5"
    write_shard(path, results(), ATTRS, np.dtype(dtype), frames, tokens)
    expected = [*schema.CLIP_COLUMNS, *(schema.FRAME_COLUMNS if frames else ()),
                *(schema.TOKEN_COLUMNS if tokens else ()), *schema.VIDEO_COLUMNS]
    sizes, rows = schema.sizes(ATTRS), {"N": 4, "M": 6, "V": 2}
    with h5py.File(path, "r") as f:
        found = []
        f.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
        assert sorted(found) == sorted(c.path for c in expected)
        for column in expected:
            dataset = f[column.path]
            if column.dtype is schema.STRING:
                assert h5py.check_string_dtype(dataset.dtype).encoding == "utf-8", column.path
            else:
                assert dataset.dtype == column.stored_dtype(dtype), column.path
            assert dataset.shape == (rows[column.shape[0]], *column.tail(sizes)), column.path


def test_attributes_are_the_schema_version_plus_the_given_ones_json_encoded_when_not_scalar(tmp_path: Path):
    write_shard(tmp_path / "s.h5", results(), ATTRS, np.dtype("float32"), False, False)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        stored = dict(f.attrs)
    assert stored.pop(schema.SCHEMA_VERSION_ATTR) == schema.SCHEMA_VERSION
    assert stored.pop(schema.SCHEMA_MINOR_ATTR) == schema.SCHEMA_MINOR
    assert set(stored) == set(ATTRS)
    for key, value in ATTRS.items():
        if isinstance(value, (dict, list)):
            assert key in schema.JSON_ATTRS and json.loads(stored[key]) == value
        else:
            assert stored[key] == value


def test_indices_tie_clips_tokens_and_videos_together(tmp_path: Path):
    given = results()
    write_shard(tmp_path / "s.h5", given, ATTRS, np.dtype("float32"), True, True)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert list(f[schema.CLIP_VIDEO.path][()]) == [0, 0, 0, 1]
        assert list(f[schema.FIRST_CLIP.path][()]) == [0, 3]
        assert list(f[schema.CLIP_COUNT.path][()]) == [3, 1]
        assert list(f[schema.TOKEN_COUNT.path][()]) == [2, 0, 1, 3]
        assert list(f[schema.TOKEN_START.path][()]) == [0, 2, 2, 3]
        assert list(f[schema.HAS_TEXT.path][()]) == [True, False, True, True]
        assert list(f[schema.TEXT.path].asstr()[()]) == [t for r in given for t in r.text]
        assert [json.loads(w) for w in f[schema.WARNINGS.path].asstr()[()]] == [["a word with no tokens"], []]
        assert list(f[schema.ABSPATH.path].asstr()[()]) == ["/videos/a.mp4", "/videos/b.mp4"]
        np.testing.assert_array_equal(f[schema.TOKEN_IDS.path][()], np.concatenate([r.token_ids for r in given]))
        np.testing.assert_allclose(f[schema.FRAME_FEATURES.path][3], given[1].frame_features[0], rtol=1e-6)


def test_a_video_without_clips_still_gets_its_row_and_zero_row_datasets_keep_their_width(tmp_path: Path):
    empty = video_result("empty.mp4", [clip(1)], FUSED_DIM)
    for name in ("start", "end", "frame_indices", "frame_times", "has_text", "fused", "video_features",
                 "text_features", "token_count", "frame_features", "token_features", "token_ids"):
        setattr(empty, name, getattr(empty, name)[:0])
    empty.text = []
    write_shard(tmp_path / "s.h5", [empty], ATTRS, np.dtype("float32"), True, True)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f[schema.FUSED.path].shape == (0, FUSED_DIM)
        assert f[schema.FRAME_FEATURES.path].shape == (0, FRAMES, VIDEO_DIM)
        assert f[schema.TOKEN_FEATURES.path].shape == (0, TEXT_DIM)
        assert list(f[schema.CLIP_COUNT.path][()]) == [0]


def writer_at(folder: Path, **kwargs) -> ShardWriter:
    options = {"shard_size": 3, "dtype": "float32", "save_frames": False, "save_tokens": False, **kwargs}
    return ShardWriter(folder, ATTRS, **options)


def test_shards_are_cut_between_videos_and_a_long_video_gets_its_own(tmp_path: Path):
    out = writer_at(tmp_path, first_index=4, part_label="r001")
    a, b = results()  # 3 clips, 1 clip
    for result in (b, a, b):
        out.add(result)
    out.close()
    assert [p.name for p in out.written] == ["shard-r001-00004.h5", "shard-r001-00005.h5", "shard-r001-00006.h5"]
    counts = []
    for path in out.written:
        with h5py.File(path, "r") as f:
            counts.append(list(f[schema.CLIP_COUNT.path][()]))
    assert counts == [[1], [3], [1]]
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in out.written]


def test_a_shard_is_written_under_a_temporary_name_then_renamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    renames = []

    def replace(source, target):
        source, target = Path(source), Path(target)
        assert source.name == target.name + schema.TMP_SUFFIX and not target.exists()
        with h5py.File(source, "r") as f:  # already whole when it takes its name
            assert f[schema.CLIP_COUNT.path].shape == (2,)
        renames.append(target.name)
        real_replace(source, target)

    real_replace = os.replace
    monkeypatch.setattr(writer.os, "replace", replace)
    out = writer_at(tmp_path, shard_size=10)
    for result in results():
        out.add(result)
    out.close()
    assert renames == ["shard-00000.h5"]
    assert [p.name for p in tmp_path.iterdir()] == ["shard-00000.h5"]


@pytest.mark.parametrize("failing", ["write_shard", "replace"])
def test_a_failed_write_leaves_no_shard_and_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              failing: str):
    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    def half_written(path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        no_space()

    if failing == "write_shard":
        monkeypatch.setattr(writer, "write_shard", half_written)
    else:
        monkeypatch.setattr(writer.os, "replace", no_space)
    out = writer_at(tmp_path, shard_size=10)
    out.add(results()[0])
    with pytest.raises(OSError, match="No space"):
        out.close()
    assert list(tmp_path.iterdir()) == [] and out.written == []
