"""store/outdir.py: locks between runs and parts of split runs, the failure logs, what is done (the
newest shard wins), the next shard number, leftovers of interrupted runs and --overwrite."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from handmade import attrs_for, video_result

from videobert_cli.store.outdir import SINGLE, Part
from videobert_cli.store.outdir import LockHeld, OutputDir, append_line
from videobert_cli.store.schema import TMP_SUFFIX
from videobert_cli.store.writer import write_shard


def part(index: int, count: int) -> Part:
    return Part(index, count, "--num-shards")


@pytest.fixture
def held():
    """Lock output folders; every lock is dropped at the end of the test."""
    taken: list[OutputDir] = []

    def lock(path: Path, of: Part = SINGLE) -> OutputDir:
        out = OutputDir(path, of)
        out.lock()
        taken.append(out)
        return out

    yield lock
    for out in taken:
        out.unlock()


def test_a_run_in_one_part_holds_the_folder_alone_and_says_who_it_is(tmp_path: Path, held):
    first = held(tmp_path)
    with pytest.raises(LockHeld, match=f"in use by another run \\(pid {os.getpid()} on "):
        held(tmp_path)
    with pytest.raises(LockHeld, match="not split"):
        held(tmp_path, part(0, 2))
    first.unlock()
    held(tmp_path).unlock()


def test_parts_of_one_split_share_the_folder_but_not_a_part(tmp_path: Path, held):
    held(tmp_path, part(0, 2))
    held(tmp_path, part(1, 2))
    with pytest.raises(LockHeld, match="another run of part 1"):
        held(tmp_path, part(1, 2))
    with pytest.raises(LockHeld, match="split 2 ways"):
        held(tmp_path, part(2, 3))
    with pytest.raises(LockHeld, match="part 0 of 2.*part 1 of 2"):  # the holders are the parts
        held(tmp_path)


def test_a_lock_refused_part_way_keeps_none_of_its_locks(tmp_path: Path, held):
    other = held(tmp_path, part(1, 2))
    with pytest.raises(LockHeld):
        held(tmp_path, part(1, 2))  # took the shared locks first, then failed on the part's own
    other.unlock()
    held(tmp_path)  # nothing left behind by the refused attempt


def test_failure_logs_are_per_part_and_read_together_oldest_first(tmp_path: Path):
    assert OutputDir(tmp_path).failure_log.name == "failures.jsonl"
    assert OutputDir(tmp_path, part(3, 4)).failure_log.name == "failures-r003.jsonl"
    append_line(OutputDir(tmp_path, part(1, 2)).failure_log,
                {"abspath": "/b", "stage": "decode", "message": "m", "time": "2026-01-02"})
    append_line(OutputDir(tmp_path).failure_log, {"abspath": "/a", "stage": "probe", "message": "m",
                                                  "time": "2026-01-01"})
    append_line(OutputDir(tmp_path).failure_log, {"abspath": "/a", "stage": "write", "message": "m",
                                                  "time": "2026-01-03"})
    records = OutputDir(tmp_path).failure_records()
    assert [(r["abspath"], r["stage"]) for r in records] == [("/a", "probe"), ("/b", "decode"), ("/a", "write")]
    assert OutputDir(tmp_path).failed_videos(done={})["/a"]["stage"] == "write"


@pytest.mark.parametrize("text, error", [
    ('{"abspath": "/a", "stage": "probe", "message": "m"}\n{"abspath": "/b", "sta', None),
    ('{"abspath": "/a", "sta\n{"abspath": "/b", "stage": "probe", "message": "m"}\n', "failures.jsonl:1: not a JSON"),
    ('{"abspath": "/a", "stage": "probe"}\n', "failures.jsonl:1: missing abspath/stage/message"),
    ('\n["a list"]\n', "failures.jsonl:2: missing"),
])
def test_only_a_torn_last_line_of_a_failure_log_is_forgiven(tmp_path: Path, text: str, error: str | None):
    (tmp_path / "failures.jsonl").write_text(text, encoding="utf-8")
    if error is None:
        assert [r["abspath"] for r in OutputDir(tmp_path).failure_records()] == ["/a"]
    else:
        with pytest.raises(ValueError, match=error):
            OutputDir(tmp_path).failure_records()


def shard(out: Path, name: str, videos: dict[str, tuple[int, float]]) -> None:
    """A shard of one-clip videos {path: (size, mtime)}."""
    one = (np.zeros((2, 6)), np.zeros((1, 4)), np.array([5]), "word")
    results = []
    for path, (size, mtime) in videos.items():
        result = video_result(path, [one], 8)
        result.video.size, result.video.mtime = size, mtime
        results.append(result)
    attrs = attrs_for(6, 4, 2)
    attrs["created_utc"] = name
    write_shard(out / name, results, attrs, np.dtype("float32"), False, False)


def test_done_videos_come_from_completed_shards_and_the_newest_wins(tmp_path: Path):
    out = OutputDir(tmp_path)
    assert (out.done_videos(), out.existing_attrs(), out.next_shard_index()) == ({}, None, 0)
    shard(tmp_path, "shard-00000.h5", {"a.mp4": (1, 1.0), "b.mp4": (2, 2.0)})
    shard(tmp_path, "shard-r001-00004.h5", {"a.mp4": (3, 3.0)})
    (tmp_path / ("shard-00009.h5" + TMP_SUFFIX)).write_bytes(b"unfinished")
    done = out.done_videos()
    assert sorted(done) == ["/videos/a.mp4", "/videos/b.mp4"]
    assert (done["/videos/a.mp4"].size, done["/videos/a.mp4"].shard, done["/videos/a.mp4"].clip_count) == (
        3, "shard-r001-00004.h5", 1)
    assert out.existing_attrs()["created_utc"] == "shard-r001-00004.h5"
    assert out.next_shard_index() == 5
    append_line(out.failure_log, {"abspath": "/videos/a.mp4", "stage": "probe", "message": "m"})
    append_line(out.failure_log, {"abspath": "/videos/c.mp4", "stage": "probe", "message": "m"})
    assert list(out.failed_videos()) == ["/videos/c.mp4"]  # a.mp4 was extracted since


def test_leftovers_are_removed_only_where_no_running_part_can_own_them(tmp_path: Path):
    names = ["shard-00001.h5", "shard-r000-00002.h5", "shard-r001-00002.h5", "shard-r005-00002.h5"]
    for name in names:
        (tmp_path / (name + TMP_SUFFIX)).write_bytes(b"unfinished")
    removed = [p.name for p in OutputDir(tmp_path, part(1, 2)).remove_temporary()]
    assert removed == ["shard-r001-00002.h5" + TMP_SUFFIX]
    removed = [p.name for p in OutputDir(tmp_path, part(0, 2)).remove_temporary()]
    assert removed == [n + TMP_SUFFIX for n in ("shard-00001.h5", "shard-r000-00002.h5", "shard-r005-00002.h5")]
    (tmp_path / ("shard-r001-00003.h5" + TMP_SUFFIX)).write_bytes(b"unfinished")
    assert [p.name for p in OutputDir(tmp_path).remove_temporary()] == ["shard-r001-00003.h5" + TMP_SUFFIX]
    assert list(tmp_path.iterdir()) == []


def test_overwrite_forgets_shards_and_failure_logs_only(tmp_path: Path):
    shard(tmp_path, "shard-00000.h5", {"a.mp4": (1, 1.0)})
    for name in ("failures.jsonl", "failures-r001.jsonl", "notes.txt", ".videobert.lock"):
        (tmp_path / name).write_text(json.dumps({}) + "\n")
    OutputDir(tmp_path).clear()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".videobert.lock", "notes.txt"]
