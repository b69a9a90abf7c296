"""Finding videos and their transcripts."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from videobert_cli.extract.discover import discover


def touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_folders_are_walked_recursively_by_extension_case_insensitively(tmp_path: Path) -> None:
    for name in ["b.mp4", "a.MKV", "sub/c.webm", "sub/deeper/d.Mov", "sub/e.ts", "notes.txt", "f.mp4.part",
                 "g.srt", "h.WMV", "i.mpeg", "j.m4v", "k.flv", "l.avi", "m.mpg"]:
        touch(tmp_path / "in" / name)
    videos, problems = discover([str(tmp_path / "in")])
    names = [v.relative.as_posix() for v in videos]
    assert [(Path(p.given).name, p.reason) for p in problems] == [("g.srt", "transcript without a video of the same name")]
    assert sorted(names) == sorted(["b.mp4", "a.MKV", "sub/c.webm", "sub/deeper/d.Mov", "sub/e.ts", "h.WMV",
                                    "i.mpeg", "j.m4v", "k.flv", "l.avi", "m.mpg"])
    assert [str(v.path) for v in videos] == sorted(str(v.path) for v in videos)  # stable order
    assert all(v.path.is_absolute() for v in videos)


def test_duplicates_are_removed_and_same_names_do_not_collide(tmp_path: Path) -> None:
    a = touch(tmp_path / "x" / "talk.mp4")
    b = touch(tmp_path / "y" / "talk.mp4")
    os.symlink(a, tmp_path / "link.mp4")
    videos, _ = discover([str(tmp_path / "x"), str(a), str(tmp_path / "x" / ".." / "x" / "talk.mp4"),
                          str(tmp_path / "link.mp4"), str(b)])
    assert [v.path for v in videos] == [a, b]


def test_given_files_are_taken_whatever_their_extension(tmp_path: Path) -> None:
    odd = touch(tmp_path / "recording.bin")
    videos, _ = discover([str(odd)])
    assert [v.path for v in videos] == [odd] and videos[0].given == str(odd)


def test_missing_inputs_and_broken_links_are_problems(tmp_path: Path) -> None:
    os.symlink(tmp_path / "gone.mp4", tmp_path / "broken.mp4")
    videos, problems = discover([str(tmp_path / "nope.mp4"), str(tmp_path / "broken.mp4")])
    assert not videos
    assert [(Path(p.given).name, p.reason) for p in problems] == [("nope.mp4", "no such file or folder"),
                                                                  ("broken.mp4", "broken symbolic link")]


def test_stdin_list_with_blank_lines(tmp_path: Path) -> None:
    a, b = touch(tmp_path / "a.mp4"), touch(tmp_path / "d" / "b.mkv")
    videos, _ = discover(["-"], stdin=io.StringIO(f"{a}\n\n  {tmp_path / 'd'}  \n"))
    assert [v.path for v in videos] == [a, b]
    with pytest.raises(ValueError):
        discover(["-"], stdin=None)


def test_sidecar_transcript_and_format_priority(tmp_path: Path) -> None:
    video = touch(tmp_path / "talk.mp4")
    touch(tmp_path / "talk.txt")
    touch(tmp_path / "talk.srt")
    (item,), _ = discover([str(video)])
    assert item.transcript == tmp_path / "talk.srt"
    assert "talk.txt" in item.transcript_note


def test_transcripts_dir_mirrors_the_relative_layout(tmp_path: Path) -> None:
    touch(tmp_path / "in" / "a" / "talk.mp4")
    touch(tmp_path / "in" / "b" / "talk.mp4")
    touch(tmp_path / "in" / "b" / "talk.vtt")  # sidecar, used when the mirror has none
    touch(tmp_path / "tr" / "a" / "talk.json")
    videos, _ = discover([str(tmp_path / "in")], transcripts_dir=tmp_path / "tr")
    assert [v.transcript for v in videos] == [tmp_path / "tr" / "a" / "talk.json", tmp_path / "in" / "b" / "talk.vtt"]


def test_video_without_transcript(tmp_path: Path) -> None:
    (item,), _ = discover([str(touch(tmp_path / "talk.mp4"))])
    assert item.transcript is None


def test_a_directory_named_like_a_video_is_reported(tmp_path: Path) -> None:
    (tmp_path / "in" / "x.mp4").mkdir(parents=True)
    touch(tmp_path / "in" / "real.mp4")
    videos, problems = discover([str(tmp_path / "in")])
    assert [v.path.name for v in videos] == ["real.mp4"]
    assert [(Path(p.given).name, p.reason) for p in problems] == [
        ("x.mp4", "a directory named like a video file, with no videos in it")]
