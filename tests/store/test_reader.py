"""store/reader.py over shards written by hand: the live clips of a folder, the newest shard's rows of
a video re-extracted, whole-shard reads, precisions, and a FeatureError naming a damaged shard."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from handmade import attrs_for, video_result, write_features

from videobert_cli import open_features
from videobert_cli.store import schema
from videobert_cli.store.reader import (FeatureError, describe_precisions, precision_counts, read_shard,
                                        saved_extras, shard_precision)
from videobert_cli.store.writer import write_shard

FRAMES, VIDEO_DIM, TEXT_DIM = 2, 6, 4


def clip(value: float, tokens: int) -> tuple:
    """A clip whose frame features are all `value` and whose token ids count up from 10 * value."""
    return (np.full((FRAMES, VIDEO_DIM), value), np.full((tokens, TEXT_DIM), value),
            np.arange(tokens) + int(10 * value), f"clip {value}")


def shard(out: Path, name: str, videos: dict[str, list], *, frames: bool = True, tokens: bool = True,
          **attrs) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    results = [video_result(path, clips, 8) for path, clips in videos.items()]
    full = {**attrs_for(VIDEO_DIM, TEXT_DIM, FRAMES), **attrs}
    write_shard(out / name, results, full, np.dtype("float32"), frames, tokens)
    return out / name


def test_one_folder_reads_as_one_dataset_of_clips(tmp_path: Path):
    write_features(tmp_path, {"a.mp4": [clip(1, 2), clip(2, 0)], "b.mp4": [clip(3, 1)]}, videos_per_shard=1)
    features = open_features(tmp_path)
    assert (len(features), [v["path"] for v in features.videos]) == (3, ["a.mp4", "b.mp4"])
    assert [v["first_clip"] for v in features.videos] == [0, 2]
    assert features.videos[1]["shard"] == str(tmp_path / "shard-00001.h5")
    item = features.clip(2, fields=("text", "frame_features", "tokens"))
    assert (item["text"], item["video"]) == ("clip 3", 1)
    assert item["frame_features"].shape == (FRAMES, VIDEO_DIM) and list(item["token_ids"]) == [30]
    assert features.clip(1, fields=("tokens",))["token_features"].shape == (0, TEXT_DIM)
    assert [c["video"] for c in features] == [0, 0, 1]
    np.testing.assert_array_equal(features.array("has_text"), [True, False, True])
    batch = features.dataset(fields=("fused", "text"))[0]
    assert isinstance(batch["fused"], torch.Tensor) and batch["text"] == "clip 1"
    described = features.describe()
    assert (described["shards"], described["clips"], described["clips_with_text"]) == (
        [str(tmp_path / "shard-00000.h5"), str(tmp_path / "shard-00001.h5")], 3, 2)
    assert described["precision"] == {"unrecorded": 2}
    with pytest.raises(IndexError):
        features.clip(3)
    features.close()


def test_a_video_extracted_again_is_live_in_the_newest_shard_only(tmp_path: Path):
    shard(tmp_path, "shard-00000.h5", {"a.mp4": [clip(1, 1), clip(2, 1)], "b.mp4": [clip(3, 1)]})
    shard(tmp_path, "shard-r001-00002.h5", {"c.mp4": [clip(4, 1)]})
    shard(tmp_path, "shard-r000-00002.h5", {"a.mp4": [clip(5, 1)]})  # same number: ordered by name
    features = open_features(tmp_path)
    assert [v["path"] for v in features.videos] == ["b.mp4", "a.mp4", "c.mp4"]
    assert [(v["path"], Path(v["shard"]).name) for v in features.superseded] == [("a.mp4", "shard-00000.h5")]
    assert [features.clip(i)["text"] for i in range(len(features))] == ["clip 3", "clip 5", "clip 4"]
    assert [features.clip(i)["video"] for i in range(len(features))] == [0, 1, 2]
    assert [v["first_clip"] for v in features.videos] == [0, 1, 2]
    assert features.describe()["superseded_videos"] == 1


def test_read_shard_holds_a_whole_shard_with_its_tokens_as_clip_columns(tmp_path: Path):
    path = shard(tmp_path, "shard-00000.h5", {"a.mp4": [clip(1, 2), clip(2, 1)]})
    attrs, clips, videos = read_shard(path)
    assert attrs[schema.SCHEMA_VERSION_ATTR] == schema.SCHEMA_VERSION and attrs["dims"]["video"] == VIDEO_DIM
    expected = {c.key for c in (*schema.CLIP_COLUMNS, *schema.FRAME_COLUMNS, *schema.TOKEN_COLUMNS)}
    assert set(clips) == expected and set(videos) == {c.name for c in schema.VIDEO_COLUMNS}
    assert list(clips["token_ids"]) == [10, 11, 20]
    plain = shard(tmp_path, "shard-00001.h5", {"b.mp4": [clip(1, 2)]}, frames=False, tokens=False)
    assert "token_features" not in read_shard(plain)[1]


@pytest.mark.parametrize("frames, tokens, extras", [(True, True, {"frames", "tokens"}), (True, False, {"frames"}),
                                                    (False, True, {"tokens"}), (False, False, set())])
def test_saved_extras_name_what_save_frames_and_save_tokens_added(tmp_path: Path, frames: bool, tokens: bool,
                                                                  extras: set):
    assert saved_extras(shard(tmp_path, "shard-00000.h5", {"a.mp4": [clip(1, 1)]}, frames=frames,
                              tokens=tokens)) == extras


def test_precisions_are_named_as_on_the_command_line_and_counted_per_shard():
    assert shard_precision({"execution": {"precision": "bfloat16"}}) == "bf16"
    assert shard_precision({"execution": {"precision": "float32"}}) == "fp32"
    assert shard_precision({"execution": {"precision": "float8"}}) == "float8"
    assert shard_precision({"execution": {}}) == shard_precision({}) == "unrecorded"
    counts = precision_counts([{"execution": {"precision": p}} for p in ("float16", "float32", "float16")])
    assert list(counts.items()) == [("fp16", 2), ("fp32", 1)]
    assert describe_precisions(counts) == "fp16 (2 shards), fp32 (1 shard)"


def test_a_folder_without_shards_is_a_feature_error(tmp_path: Path):
    (tmp_path / ("shard-00000.h5" + schema.TMP_SUFFIX)).write_bytes(b"unfinished")
    with pytest.raises(FeatureError, match="no shards"):
        open_features(tmp_path)


def damage_version(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        f.attrs[schema.SCHEMA_VERSION_ATTR] = schema.SCHEMA_VERSION + 1


def damage_table(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        del f[schema.ABSPATH.path]


def damage_bytes(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize("damage, message", [(damage_version, "schema version 2, this reader knows 1"),
                                             (damage_table, "datasets missing: videos/abspath"),
                                             (damage_bytes, "cannot be read")])
def test_a_damaged_shard_is_a_feature_error_that_names_it(tmp_path: Path, damage, message: str):
    shard(tmp_path, "shard-00000.h5", {"a.mp4": [clip(1, 1)]})
    damage(shard(tmp_path, "shard-00001.h5", {"b.mp4": [clip(2, 1)]}))
    with pytest.raises(FeatureError, match=message) as error:
        open_features(tmp_path)
    assert str(error.value).startswith(str(tmp_path / "shard-00001.h5"))
