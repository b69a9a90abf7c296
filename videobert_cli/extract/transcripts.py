"""Read a transcript file into timed cues.

Formats: SubRip (.srt), WebVTT (.vtt) and the other formats pysubs2 reads
(.ass, .ssa, .sub), Whisper-style JSON (.json) and plain text (.txt, untimed).
What real files contain (BOM, CRLF, tags, NOTE/STYLE blocks, cue settings, cues
out of order, overlapping, zero-length or empty cues, bytes that are not UTF-8)
is handled here; anything that changed the text is reported in `warnings`.

Words are what planning times and windows, so they must be real units of text in every script. Most
scripts put spaces between words; Chinese, Japanese, Thai, Lao, Khmer and Myanmar do not, and a
whitespace split would make a whole cue one "word" (timed at the cue's centre, all in one clip). Inside
a whitespace-word that holds such characters, `split_word` makes each of them (with its combining marks)
a unit, as BERT's pre-tokenizer does for CJK ideographs; kana and Thai runs BERT leaves whole, but a
character is the only boundary we can know there without a dictionary. English words keep their
punctuation as before. Each unit remembers whether a space preceded it, so text is joined back
without inventing spaces between CJK characters.
"""

from __future__ import annotations

import html
import json
import re
import unicodedata
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pysubs2

SUBTITLE_FORMATS = {".srt": "srt", ".vtt": "vtt", ".ass": "ass", ".ssa": "ssa", ".sub": "microdvd"}
TRANSCRIPT_EXTENSIONS = (".srt", ".vtt", ".json", ".txt", ".ass", ".ssa")

# Markup pysubs2 leaves in place, and only that: a pattern such as `<[^>]*>` would eat ordinary text
# ("if a<b and c>d" -> "if ad"). A tag is removed only when it is one of the SRT/WebVTT/HTML formatting
# tags below with the shape that tag really has: b/i/u/s/ruby/rt take at most WebVTT classes (`<b.loud>`),
# c takes classes (`<c.yellow>`), v a speaker (`<v Roger>`), lang a language code, font/span only
# name=value attributes; plus WebVTT timestamp tags (`<00:01.000>`) and ASS override blocks `{\...}`.
_CLASSES = r"(?:\.[\w-]+)*"
_ATTRS = r"""(?:\s+[\w-]+\s*=\s*(?:"[^"<>]*"|'[^'<>]*'|[^\s<>"']+))*\s*"""
_MARKUP = re.compile(
    "|".join([
        rf"<(?:b|i|u|s|ruby|rt|c){_CLASSES}\s*>",
        rf"<v{_CLASSES}(?:\s+[^<>]*)?>",
        rf"<lang{_CLASSES}\s+[A-Za-z]{{2,8}}(?:-[A-Za-z0-9]{{1,8}})*\s*>",
        rf"<(?:font|span){_ATTRS}>",
        r"</(?:b|i|u|s|ruby|rt|c|v|lang|font|span)\s*>",
        r"<(?:\d+:)?\d{2}:\d{2}\.\d{3}>",  # WebVTT karaoke timestamp
        r"\{\\[^{}]*\}",  # ASS override block
    ]),
    re.IGNORECASE,
)
_LINE_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


# Scripts written without spaces between words: CJK ideographs (with extensions and compatibility forms),
# CJK radicals, Bopomofo, Hiragana, Katakana (with half-width forms), Thai, Lao, Myanmar, Khmer.
_UNSPACED_RANGES = (
    (0x0E00, 0x0E7F), (0x0E80, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x19E0, 0x19FF),
    (0x2E80, 0x2FDF), (0x3005, 0x3007), (0x3021, 0x3029), (0x3031, 0x3035), (0x3038, 0x303C),
    (0x3040, 0x30FF), (0x3100, 0x312F), (0x31A0, 0x31FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF),
    (0xA9E0, 0xA9FF), (0xAA60, 0xAA7F), (0xF900, 0xFAFF), (0xFF66, 0xFF9F), (0x20000, 0x323AF),
)
_UNSPACED = re.compile("[" + "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in _UNSPACED_RANGES) + "]")


def is_unspaced(char: str) -> bool:
    """True for a character of a script written without spaces between words."""
    return _UNSPACED.match(char) is not None


def split_word(word: str) -> list[str]:
    """Units of one whitespace-delimited word: the word itself, unless it holds unspaced-script characters;
    then each such character (with its combining marks) and each punctuation mark is a unit of its own,
    and runs of other characters ("AI", "2024") stay together."""
    if not _UNSPACED.search(word):
        return [word]
    units: list[str] = []
    run = False  # the last unit is a run of other characters that may grow
    for char in word:
        category = unicodedata.category(char)
        if category[0] == "M" and units:
            units[-1] += char  # a combining mark (Thai vowels and tone marks) stays with its base
        elif is_unspaced(char) or category[0] == "P":
            units.append(char)
            run = False
        elif run:
            units[-1] += char
        else:
            units.append(char)
            run = True
    return units


def segment(text: str) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    """(units, whether a space preceded each unit) of a cue's text."""
    words: list[str] = []
    spaced: list[bool] = []
    for word in text.split():
        units = split_word(word)
        words.extend(units)
        spaced.extend([True] + [False] * (len(units) - 1))
    return tuple(words), tuple(spaced)


def join_words(words: list[str] | tuple[str, ...], spaced: list[bool] | tuple[bool, ...]) -> str:
    """Words back into text: a space only where the text had one."""
    return "".join((" " if i and gap else "") + w for i, (w, gap) in enumerate(zip(words, spaced)))


class TranscriptError(ValueError):
    """A transcript that cannot be read at all."""


@dataclass(frozen=True)
class Cue:
    """One transcript segment; `word_times` (one per word of `words`) are given only when the file has them."""

    start: float
    end: float
    text: str
    word_times: tuple[float, ...] | None = None

    @cached_property
    def _segmented(self) -> tuple[tuple[str, ...], tuple[bool, ...]]:
        return segment(self.text)

    @property
    def words(self) -> list[str]:
        """The cue's words: whitespace-delimited, unspaced scripts split into units (see `split_word`)."""
        return list(self._segmented[0])

    @property
    def spaced(self) -> tuple[bool, ...]:
        """Per word: whether a space preceded it in the text."""
        return self._segmented[1]


@dataclass(frozen=True)
class Transcript:
    path: str | None
    format: str  # srt | vtt | json | txt | ... | none
    timed: bool
    cues: tuple[Cue, ...]
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_empty(self) -> bool:
        return not self.cues


NO_TRANSCRIPT = Transcript(path=None, format="none", timed=False, cues=())


def clean_text(text: str) -> str:
    """Plain words of a cue: no markup, entities decoded, whitespace collapsed."""
    text = text.replace("\\N", " ").replace("\\n", " ")
    text = _LINE_BREAK.sub(" ", text)
    text = _MARKUP.sub("", text)
    text = html.unescape(text)
    return " ".join(text.split())


def decode_bytes(data: bytes, path: Path, warnings: list[str]) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        bad = text.count("\ufffd")
        warnings.append(f"{path.name}: not valid UTF-8; {bad} undecodable byte sequence(s) replaced with U+FFFD")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def finish_cues(cues: list[Cue], warnings: list[str]) -> tuple[Cue, ...]:
    """Drop empty cues, fix negative or reversed times, sort by start (what was fixed goes to `warnings`)."""
    kept: list[Cue] = []
    empty = negative = reversed_ = 0
    for cue in cues:
        if not cue.text:
            empty += 1
            continue
        start, end, word_times = cue.start, cue.end, cue.word_times
        if start < 0 or end < 0 or any(t < 0 for t in word_times or ()):
            negative += 1
            start, end = max(start, 0.0), max(end, 0.0)
            if word_times is not None:
                word_times = tuple(max(t, 0.0) for t in word_times)
        if end < start:
            reversed_ += 1
            end = start
        kept.append(Cue(start, end, cue.text, word_times))
    if empty:
        warnings.append(f"{empty} empty cue(s) skipped")
    if negative:
        warnings.append(f"{negative} cue(s) with negative times clamped to 0")
    if reversed_:
        warnings.append(f"{reversed_} cue(s) ending before they start made zero-length")
    ordered = sorted(kept, key=lambda c: (c.start, c.end))
    if ordered != kept:
        warnings.append("cues out of order; sorted by start time")
    return tuple(ordered)


def _parse_subtitles(text: str, fmt: str, path: Path) -> list[Cue]:
    # pysubs2's own SRT/VTT tag stripping (`<[a-zA-Z][^>]*>`) eats text such as "a<b and c>d": keep the
    # tags and let clean_text remove the real ones.
    options = {"keep_html_tags": True} if fmt in ("srt", "vtt") else {}
    try:
        subs = pysubs2.SSAFile.from_string(text, format_=fmt, **options)
    except Exception as exc:  # pysubs2 raises several unrelated types on bad input
        raise TranscriptError(f"{path}: cannot parse as {fmt}: {exc}") from None
    return [Cue(e.start / 1000.0, e.end / 1000.0, clean_text(e.text)) for e in subs if not e.is_comment]


def _number(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _whisper_words(words: list, seg_start: float, seg_end: float) -> tuple[list[str], list[float], int]:
    """(word texts, word times, how many had no time) of a segment's Whisper `words`.

    A word's time is the centre of its [start, end]. WhisperX leaves some words (numerals such as
    "2024") without start/end: those alone get times, spread evenly over the gap between the end of the
    timed word before them and the start of the timed word after them (the segment's start/end at its
    edges), so one untimed word no longer costs the whole segment its word times."""
    items: list[tuple[str, float | None, float | None]] = []
    for w in words:
        text = clean_text(str(w.get("word", ""))) if isinstance(w, dict) else ""
        if not text:
            continue
        start, end = _number(w.get("start")), _number(w.get("end"))
        if start is None or end is None:
            start = end = None
        items.append((text, start, end))
    times: list[float | None] = [None if s is None else 0.5 * (s + e) for _, s, e in items]
    missing = sum(t is None for t in times)
    i = 0
    while i < len(items):
        if times[i] is not None:
            i += 1
            continue
        j = i
        while j < len(items) and times[j] is None:
            j += 1
        lo = items[i - 1][2] if i > 0 else seg_start
        hi = items[j][1] if j < len(items) else seg_end
        lo, hi = float(lo), max(float(lo), float(hi))  # type: ignore[arg-type]
        for k in range(i, j):
            times[k] = lo + (k - i + 1) / (j - i + 1) * (hi - lo)
        i = j
    texts, out = [], []
    for (text, start, end), t in zip(items, times):
        units = segment(text)[0]  # "我们" is two units: spread over the word's own span when it has one
        for j, unit in enumerate(units):
            texts.append(unit)
            if start is None or end is None:
                out.append(float(t))  # type: ignore[arg-type]
            else:
                out.append(start + (j + 0.5) / len(units) * (end - start))
    return texts, out, missing


def _join_whisper(words: list[str]) -> str:
    """Whisper words as text: no space between two unspaced-script characters (Chinese words come without
    spaces), a space everywhere else."""
    out = ""
    for word in words:
        if out and not (is_unspaced(out[-1]) and is_unspaced(word[0])):
            out += " "
        out += word
    return out


def _parse_json(text: str, path: Path, warnings: list[str]) -> list[Cue]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TranscriptError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    segments = doc.get("segments") if isinstance(doc, dict) else doc
    if not isinstance(segments, list):
        raise TranscriptError(f'{path}: expected {{"segments": [{{"start", "end", "text"}}, ...]}}')
    cues = []
    untimed = 0
    for i, seg in enumerate(segments):
        try:
            start, end = float(seg["start"]), float(seg["end"])
            raw_text = str(seg.get("text", ""))
        except (KeyError, TypeError, ValueError):
            raise TranscriptError(f"{path}: segment {i} lacks numeric start/end") from None
        word_times = None
        words = seg.get("words")
        if isinstance(words, list) and words:
            # Whisper word timestamps: use them instead of interpolating.
            texts, times, missing = _whisper_words(words, start, end)
            if texts:
                raw_text = _join_whisper(texts)
                if len(segment(clean_text(raw_text))[0]) == len(times):
                    word_times = tuple(times)
                    untimed += missing
                else:  # cannot happen with words split as above; never pair times with the wrong words
                    warnings.append(f"{path.name}: segment {i}: Whisper words do not match its text; "
                                    "word times not used")
        cues.append(Cue(start, end, clean_text(raw_text), word_times))
    if untimed:
        warnings.append(f"{path.name}: {untimed} Whisper word(s) had no start/end time (WhisperX leaves numerals "
                        "untimed); each was placed between the timed words around it")
    return cues


def _parse_plain(text: str) -> list[Cue]:
    # Untimed: one cue per non-empty line; times are assigned later from the duration.
    return [Cue(0.0, 0.0, line) for line in (clean_text(x) for x in text.split("\n")) if line]


def read_transcript(path: Path) -> Transcript:
    """Parse `path`; raises TranscriptError when nothing usable can be read."""
    suffix = path.suffix.lower()
    warnings: list[str] = []
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TranscriptError(f"{path}: cannot read transcript ({exc.strerror})") from None
    text = decode_bytes(data, path, warnings)
    if suffix == ".json":
        cues, fmt, timed = _parse_json(text, path, warnings), "json", True
    elif suffix == ".txt":
        cues, fmt, timed = _parse_plain(text), "txt", False
    elif suffix in SUBTITLE_FORMATS:
        fmt, timed = SUBTITLE_FORMATS[suffix], True
        cues = _parse_subtitles(text, fmt, path)
    else:
        raise TranscriptError(f"{path}: unknown transcript format {suffix!r}")
    if not cues and ("-->" in text or (fmt == "srt" and text.strip())):
        # Text would be lost silently: cue timings that do not parse, or prose in a .srt.
        raise TranscriptError(f"{path}: no cue could be read ({'unreadable cue timings' if '-->' in text else 'not ' + fmt})")
    return Transcript(str(path), fmt, timed, finish_cues(cues, warnings), tuple(warnings))


def spread_untimed(transcript: Transcript, duration: float) -> Transcript:
    """Give an untimed transcript's cues times, spreading its words evenly over `duration`."""
    if transcript.timed or not transcript.cues:
        return transcript
    total = sum(len(c.words) for c in transcript.cues)
    cues, done = [], 0
    for cue in transcript.cues:
        n = len(cue.words)
        cues.append(Cue(duration * done / total, duration * (done + n) / total, cue.text))
        done += n
    return Transcript(transcript.path, transcript.format, False, tuple(cues), transcript.warnings)
