"""Find the videos to process and the transcript that goes with each.

Inputs are files (taken whatever their extension), folders (walked
recursively, videos chosen by extension, case-insensitive), or `-` for
newline-separated paths on stdin. The result is sorted by absolute path with
duplicates (the same file reached twice, also through links) removed.
A video's transcript is `<stem>.<ext>` under `--transcripts DIR` (mirroring the
video's path relative to the folder it was found in), else next to the video;
extensions are tried in the order of TRANSCRIPT_EXTENSIONS.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, TextIO

from .transcripts import TRANSCRIPT_EXTENSIONS

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .mkv .webm .avi .mov .m4v .mpg .mpeg .ts .flv .wmv".split()
)


@dataclass(frozen=True)
class VideoInput:
    path: Path  # absolute
    given: str  # as the user gave it (or as found under a given folder)
    relative: Path  # relative to the folder it was found in (its name, for files given directly)
    transcript: Path | None
    transcript_note: str = ""  # e.g. other transcript files that were ignored


@dataclass(frozen=True)
class InputProblem:
    given: str
    reason: str


ORPHAN_CHECKED = (".srt", ".vtt")  # subtitle files that only make sense next to a video


def _walk(folder: Path, problems: list[InputProblem]) -> Iterable[Path]:
    """Videos under `folder`; records directories named like videos that hold none, and
    subtitle files with no video of the same stem beside them."""
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        here = Path(root)
        videos = [name for name in sorted(files) if Path(name).suffix.lower() in VIDEO_EXTENSIONS]
        stems = {Path(name).stem for name in videos}
        for name in sorted(files):
            if Path(name).suffix.lower() in ORPHAN_CHECKED and Path(name).stem not in stems:
                problems.append(InputProblem(str(here / name), "transcript without a video of the same name"))
        if here != folder and here.suffix.lower() in VIDEO_EXTENSIONS and not videos and not dirs:
            problems.append(InputProblem(str(here), "a directory named like a video file, with no videos in it"))
        for name in videos:
            yield here / name


def find_transcript(video: Path, relative: Path, transcripts_dir: Path | None) -> tuple[Path | None, str]:
    places = []
    if transcripts_dir is not None:
        places.append(transcripts_dir / relative.parent)
    places.append(video.parent)
    for place in places:
        found = [place / (video.stem + ext) for ext in TRANSCRIPT_EXTENSIONS if (place / (video.stem + ext)).is_file()]
        if found:
            note = f"also found and ignored: {', '.join(p.name for p in found[1:])}" if len(found) > 1 else ""
            return found[0], note
    return None, ""


def read_path_list(stream: TextIO) -> list[str]:
    return [line.strip() for line in stream if line.strip()]


def discover(sources: Iterable[str], transcripts_dir: Path | None = None,
             stdin: TextIO | None = None) -> tuple[list[VideoInput], list[InputProblem]]:
    found: dict[Path, tuple[str, Path]] = {}
    problems: list[InputProblem] = []

    def add(path: Path, given: str, relative: Path) -> None:
        key = Path(os.path.realpath(path))
        found.setdefault(key, (given, relative))

    expanded: list[str] = []
    for source in sources:
        if source == "-":
            if stdin is None:
                raise ValueError("'-' given but no stdin to read paths from")
            expanded.extend(read_path_list(stdin))
        else:
            expanded.append(source)

    for given in expanded:
        path = Path(given).expanduser()
        if path.is_dir():
            for video in _walk(path, problems):
                add(video, str(video), video.relative_to(path))
        elif path.is_file():
            add(path, given, Path(path.name))
        elif path.is_symlink():
            problems.append(InputProblem(given, "broken symbolic link"))
        else:
            problems.append(InputProblem(given, "no such file or folder"))

    videos = []
    for real in sorted(found, key=str):
        given, relative = found[real]
        absolute = Path(os.path.abspath(Path(given).expanduser()))
        transcript, note = find_transcript(absolute, relative, transcripts_dir)
        videos.append(VideoInput(absolute, given, relative, transcript, note))
    return videos, problems
