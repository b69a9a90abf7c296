"""Which transcript a video gets: sidecar file, embedded subtitle track, or speech recognition.

The sources are tried in the order of `transcript_sources` (default `sidecar,embedded,asr`); the first
that gives text wins. A sidecar file that cannot be read fails the video (as before: a broken file the
user put there must not be passed over silently); an embedded track that cannot be read is a warning
and the next source is tried. Warnings of the sources tried (bitmap tracks skipped, a requested
subtitle language missing) stay with the video whichever source wins.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

from .subtitles import choose_track, list_tracks, read_embedded
from .transcripts import NO_TRANSCRIPT, Transcript, read_transcript

ASR_PREFIX = "asr:"


def asr_format(model: str) -> str:
    """`transcript_format` of a recognised transcript: `asr:<model name>` (a folder by its name)."""
    name = model.rstrip("/")
    return ASR_PREFIX + (Path(name).name if Path(name).expanduser().is_dir() else name)


def select_transcript(video: Path, sources: Sequence[str], sidecar: Path | None, languages: Sequence[str] = (),
                      asr_json: Path | None = None, asr_model: str = "") -> Transcript:
    """The video's transcript; when no source has text, the empty recognised one if recognition ran, else
    NO_TRANSCRIPT (with the warnings gathered).
    Raises TranscriptError for a sidecar file that cannot be read."""
    notes: list[str] = []
    ran_empty: Transcript | None = None  # recognition that found no speech: recorded as such
    for source in sources:
        found: Transcript | None = None
        if source == "sidecar" and sidecar is not None:
            found = read_transcript(sidecar)
        elif source == "embedded":
            found, warnings = read_embedded(video, languages)
            if found is None:
                notes.extend(warnings)  # else they are the transcript's own
        elif source == "asr" and asr_json is not None:
            found = dataclasses.replace(read_transcript(asr_json), format=asr_format(asr_model))
            found = dataclasses.replace(found, warnings=found.warnings + _json_warnings(asr_json))
            ran_empty = found
        if found is not None and not found.is_empty:
            return dataclasses.replace(found, warnings=tuple(notes) + found.warnings)
    if ran_empty is not None:
        notes.append("speech recognition found no speech: every clip has empty text")
    empty = ran_empty or NO_TRANSCRIPT
    return dataclasses.replace(empty, warnings=tuple(notes) + empty.warnings)


def _json_warnings(path: Path) -> tuple[str, ...]:
    """The `warnings` a recognised transcript's JSON carries (audio that stopped decoding, no audio stream)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ()
    found = doc.get("warnings") if isinstance(doc, dict) else None
    return tuple(str(w) for w in found) if isinstance(found, list) else ()


def needs_recognition(video: Path, sources: Sequence[str], sidecar: Path | None,
                      languages: Sequence[str] = ()) -> bool:
    """Whether speech recognition must run for this video: `asr` is a source and no source before it
    has a transcript (a sidecar file; an embedded text track, probed without decoding it)."""
    if "asr" not in sources:
        return False
    for source in sources[: list(sources).index("asr")]:
        if source == "sidecar" and sidecar is not None:
            return False
        if source == "embedded" and choose_track(list_tracks(video), languages)[0] is not None:
            return False
    return True
