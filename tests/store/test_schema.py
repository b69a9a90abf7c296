"""store/schema.py: the shard layout is consistent with itself, with the records the writer takes, and
with the README's table; file names follow the naming rules."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import h5py
import numpy as np

from videobert_cli.store import schema
from videobert_cli.store.writer import VideoRecord, VideoResult

README = Path(__file__).resolve().parents[2] / "README.md"
ALL_COLUMNS = (*schema.CLIP_COLUMNS, *schema.FRAME_COLUMNS, *schema.TOKEN_COLUMNS, *schema.VISUAL_COLUMNS,
               *schema.VIDEO_COLUMNS)
DERIVED = {schema.CLIP_VIDEO, schema.TOKEN_START, schema.WARNINGS, schema.FIRST_CLIP, schema.CLIP_COUNT}


def test_each_dataset_is_named_once_in_its_group_with_its_rows():
    assert len({c.path for c in ALL_COLUMNS}) == len(ALL_COLUMNS)
    rows = {schema.CLIPS: "N", schema.TOKENS: "M", schema.VIDEOS: "V"}
    for columns, group in ((schema.CLIP_COLUMNS, schema.CLIPS), (schema.FRAME_COLUMNS, schema.CLIPS),
                           (schema.TOKEN_COLUMNS, schema.TOKENS), (schema.VIDEO_COLUMNS, schema.VIDEOS),
                           (schema.VISUAL_COLUMNS, schema.CLIPS)):
        for column in columns:
            assert column.group == group and column.path == f"{group}/{column.name}"
            assert column.shape[0] == rows[group]
            assert set(column.shape[1:]) <= {"F", "d", "d_img", "d_txt", "D"}


def test_dtypes_are_numpy_dtypes_utf8_strings_or_the_feature_dtype():
    for column in ALL_COLUMNS:
        if column.is_feature:
            assert column.stored_dtype("float16") == np.float16
        elif column.dtype is schema.STRING:
            assert h5py.check_string_dtype(column.stored_dtype("float16")).encoding == "utf-8"
        else:
            assert isinstance(column.dtype, np.dtype) and column.stored_dtype("float16") is column.dtype
    assert [c.path for c in schema.FEATURE_COLUMNS] == ["clips/fused", "clips/video_features", "clips/text_features",
                                                        "clips/frame_features", "tokens/features"]


def test_columns_the_writer_does_not_derive_are_fields_of_the_records_it_is_given():
    result_fields = {f.name for f in dataclasses.fields(VideoResult)}
    record_fields = {f.name for f in dataclasses.fields(VideoRecord)}
    taken = [c for c in (*schema.CLIP_COLUMNS, *schema.FRAME_COLUMNS, *schema.TOKEN_COLUMNS) if c not in DERIVED]
    assert {c.key for c in taken} <= result_fields
    assert {c.key for c in schema.VIDEO_RECORD_COLUMNS} | {schema.WARNINGS.name} == record_fields
    assert schema.TOKEN_FEATURES.key == "token_features" and schema.TOKEN_IDS.key == "token_ids"


def test_sizes_come_from_the_attributes_and_give_each_tail():
    attrs = {"dims": {"fused": 8, "video": 12, "text": 4}, "config": {"frames_per_clip": 3}}
    sizes = schema.sizes(attrs)
    assert sizes == {"F": 3, "d": 8, "d_img": 12, "d_txt": 4, "D": None}
    assert schema.FRAME_FEATURES.tail(sizes) == (3, 12)
    assert schema.TOKEN_FEATURES.tail(sizes) == (4,)
    assert schema.START.tail(sizes) == ()
    assert schema.sizes({}) == {"F": None, "d": None, "d_img": None, "d_txt": None, "D": None}
    assert schema.VISUAL_PATH.tail(schema.sizes({"visual_vocab": {"depth": 4}})) == (4,)


def test_shard_names_carry_number_and_part():
    assert schema.shard_name(7) == "shard-00007.h5"
    assert schema.shard_name(7, "r002") == "shard-r002-00007.h5"
    for name, number, label in (("shard-00007.h5", 7, ""), ("shard-r002-00012.h5", 12, "r002")):
        assert schema.shard_number(Path(name)) == number
        assert schema.shard_part_label(Path(name)) == label
        assert schema.shard_part_label(Path(name + schema.TMP_SUFFIX)) == label
        assert Path(name).match(schema.SHARD_GLOB)
    assert schema.shard_part_label(Path("failures.jsonl")) is None


def test_shards_sort_by_number_then_name_and_temporary_files_are_not_shards(tmp_path: Path):
    names = ["shard-r001-00002.h5", "shard-00010.h5", "shard-r000-00002.h5", "shard-00001.h5"]
    for name in [*names, "shard-00011.h5" + schema.TMP_SUFFIX, "notes.h5"]:
        (tmp_path / name).touch()
    assert [p.name for p in schema.sorted_shards(tmp_path)] == [
        "shard-00001.h5", "shard-r000-00002.h5", "shard-r001-00002.h5", "shard-00010.h5"]


def readme_table() -> tuple[tuple[int, int], dict[str, str]]:
    """(the version in the README's schema heading, {dataset path: its shape and dtype cell})."""
    text = README.read_text(encoding="utf-8")
    version = re.search(r"## Output: HDF5 schema \(version (\d+)\.(\d+)\)", text)
    assert version, "README: no 'Output: HDF5 schema (version N.M)' heading"
    section = text[version.end():].split("\n## ", 1)[0]  # the schema section only
    datasets = {}
    for row in re.findall(r"^\| (`[^|]+) \| ([^|]+) \|", section, flags=re.M):
        group = None
        for name in re.findall(r"`([^`]+)`", row[0]):
            group, _, leaf = name.rpartition("/") if "/" in name else (group, "/", name)
            datasets[f"{group}/{leaf}"] = row[1]
    return (int(version[1]), int(version[2])), datasets


def test_the_readme_documents_this_schema():
    """Every dataset in the table and no other; its shape; its dtype where the table names one."""
    version, datasets = readme_table()
    assert version == (schema.SCHEMA_VERSION, schema.SCHEMA_MINOR)
    assert set(datasets) == {c.path for c in ALL_COLUMNS}
    for column in ALL_COLUMNS:
        cell = datasets[column.path]
        shape = f"({column.shape[0]},)" if len(column.shape) == 1 else f"({', '.join(column.shape)})"
        assert shape in cell, (column.path, cell)
        named = set(re.findall(r"\b(?:int32|int64|float64|bool|string)\b", cell))
        if column.is_feature or not named:
            continue
        assert ("string" if column.dtype is schema.STRING else column.dtype.name) in named, (column.path, cell)
