"""Subtitles carried inside the video file (`yt-dlp --embed-subs`, MKV/MP4/WebM subtitle tracks).

`list_tracks` describes a file's subtitle streams (index, codec, language, default flag, bitmap or
text), `choose_track` picks one by language, and `read_embedded` decodes the chosen text track with
PyAV into the same `Transcript` a sidecar file gives, its text cleaned by `transcripts.clean_text`
(ASS override blocks, `\\N`, HTML-ish tags, entities).

Text codecs: SubRip, ASS/SSA, WebVTT, mov_text (MP4's 3GPP timed text) and any other stream whose
decoder FFmpeg marks as text. Bitmap codecs (PGS, DVB, DVD) would need OCR: they are skipped with a
warning of the video. A cue's times are its packet's presentation time and duration (a packet
without a duration ends where the next cue starts).

Track choice, in order: the first track in each requested language (ISO 639-1 or -2 codes, `en`
matches `eng`, `en-US` matches `en`; among several in one language the default-flagged one), then
the track flagged default, then the first text track. The source is recorded as
`embedded:<stream index>:<language>` (`und` when the track has none) and the format as
`embedded:<codec>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .transcripts import Cue, Transcript, clean_text, finish_cues

# ISO 639-1 -> the ISO 639-2 codes (bibliographic and terminological) containers store.
_ISO639 = {
    "ar": ("ara",), "bg": ("bul",), "bn": ("ben",), "ca": ("cat",), "cs": ("cze", "ces"), "cy": ("wel", "cym"),
    "da": ("dan",), "de": ("ger", "deu"), "el": ("gre", "ell"), "en": ("eng",), "es": ("spa",), "et": ("est",),
    "eu": ("baq", "eus"), "fa": ("per", "fas"), "fi": ("fin",), "fr": ("fre", "fra"), "ga": ("gle",),
    "gl": ("glg",), "he": ("heb",), "hi": ("hin",), "hr": ("hrv",), "hu": ("hun",), "hy": ("arm", "hye"),
    "id": ("ind",), "is": ("ice", "isl"), "it": ("ita",), "ja": ("jpn",), "ka": ("geo", "kat"), "ko": ("kor",),
    "lt": ("lit",), "lv": ("lav",), "mk": ("mac", "mkd"), "ms": ("may", "msa"), "nl": ("dut", "nld"),
    "no": ("nor", "nob", "nno"), "pl": ("pol",), "pt": ("por",), "ro": ("rum", "ron"), "ru": ("rus",),
    "sk": ("slo", "slk"), "sl": ("slv",), "sq": ("alb", "sqi"), "sr": ("srp",), "sv": ("swe",), "sw": ("swa",),
    "ta": ("tam",), "te": ("tel",), "th": ("tha",), "tl": ("tgl",), "tr": ("tur",), "uk": ("ukr",),
    "ur": ("urd",), "vi": ("vie",), "zh": ("chi", "zho"),
}
_CANONICAL = {code: two for two, codes in _ISO639.items() for code in codes}


def language_key(code: str) -> str:
    """One key per language: `en`, `eng`, `en-US`, `EN_gb` -> `en`; unknown codes stay as they are."""
    base = code.strip().lower().replace("_", "-").split("-")[0]
    return _CANONICAL.get(base, base)


def parse_languages(value: str | None) -> tuple[str, ...]:
    """`--subtitle-lang en,fr` -> ("en", "fr")."""
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


@dataclass(frozen=True)
class SubtitleTrack:
    index: int  # stream index in the container
    codec: str  # FFmpeg decoder name: subrip, ass, webvtt, mov_text, hdmv_pgs_subtitle, dvb_subtitle ...
    language: str  # as the container stores it ("eng"), "und" when it has none
    default: bool
    bitmap: bool
    title: str = ""

    @property
    def label(self) -> str:
        return f"stream {self.index} ({self.codec}, {self.language}{', default' if self.default else ''})"


class SubtitleReadError(RuntimeError):
    """A subtitle stream that cannot be demuxed or decoded."""


def list_tracks(path: Path) -> list[SubtitleTrack]:
    """The file's subtitle streams; [] for a file PyAV cannot open (the decoder reports that)."""
    import av

    try:
        container = av.open(str(path))
    except Exception:  # noqa: BLE001  (not a media file: decoding fails it with its own reason)
        return []
    with container:
        return [_describe(stream) for stream in container.streams.subtitles]


def _describe(stream) -> SubtitleTrack:  # type: ignore[no-untyped-def]
    import av

    codec = stream.codec_context.codec
    metadata = {k.lower(): v for k, v in dict(stream.metadata).items()}
    default = bool(stream.disposition & av.stream.Disposition.default)
    bitmap = bool(getattr(codec, "bitmap_sub", False)) or not bool(getattr(codec, "text_sub", True))
    return SubtitleTrack(stream.index, codec.name, metadata.get("language") or "und", default, bitmap,
                         metadata.get("title", ""))


def choose_track(tracks: Sequence[SubtitleTrack], languages: Sequence[str] = ()
                 ) -> tuple[SubtitleTrack | None, list[str]]:
    """(the text track to read or None, warnings): bitmap tracks skipped; see the module doc for the order."""
    warnings = [f"subtitle {t.label} is a bitmap track (needs OCR): skipped" for t in tracks if t.bitmap]
    text = [t for t in tracks if not t.bitmap]
    if not text:
        return None, warnings
    for wanted in languages:
        matching = [t for t in text if language_key(t.language) == language_key(wanted)]
        if matching:
            return next((t for t in matching if t.default), matching[0]), warnings
    chosen = next((t for t in text if t.default), text[0])
    if languages:
        warnings.append(f"no subtitle track in {', '.join(languages)}; used {chosen.label}")
    return chosen, warnings


def read_track(path: Path, track: SubtitleTrack) -> tuple[list[Cue], list[str]]:
    """The track's cues (text cleaned) and warnings. Raises SubtitleReadError."""
    import av

    warnings: list[str] = []
    cues: list[tuple[float, float | None, str]] = []
    undecodable = 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams[track.index]
            base = stream.time_base
            for packet in container.demux(stream):
                if packet.pts is None:
                    continue  # the flush packet at the end
                start = float(packet.pts * base)
                end = float((packet.pts + packet.duration) * base) if packet.duration else None
                parts = []
                for sub in packet.decode():
                    raw = getattr(sub, "dialogue", None)
                    if raw is None:
                        raw = getattr(sub, "text", b"")
                    if isinstance(raw, bytes):
                        try:
                            raw = raw.decode("utf-8")
                        except UnicodeDecodeError:
                            raw = raw.decode("utf-8", errors="replace")
                            undecodable += 1
                    parts.append(clean_text(str(raw)))
                text = " ".join(p for p in parts if p)
                if text:
                    cues.append((start, end, text))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise SubtitleReadError(f"subtitle {track.label}: cannot be read ({exc})") from None
    if undecodable:
        warnings.append(f"subtitle {track.label}: {undecodable} cue(s) not valid UTF-8; bytes replaced with U+FFFD")
    cues.sort(key=lambda c: c[0])
    out = []
    for i, (start, end, text) in enumerate(cues):
        if end is None:  # no duration in the file: until the next cue starts (zero-length for the last)
            end = cues[i + 1][0] if i + 1 < len(cues) else start
        out.append(Cue(start, end, text))
    return out, warnings


def embedded_source(track: SubtitleTrack) -> str:
    """What `videos/transcript` records for an embedded track."""
    return f"embedded:{track.index}:{track.language}"


def read_embedded(path: Path, languages: Sequence[str] = ()) -> tuple[Transcript | None, list[str]]:
    """The chosen embedded text track as a Transcript (None when the file has no usable text track, or the
    chosen one has no cue), and warnings (bitmap tracks skipped, language not found, unreadable track)."""
    track, warnings = choose_track(list_tracks(path), languages)
    if track is None:
        return None, warnings
    try:
        cues, more = read_track(path, track)
    except SubtitleReadError as exc:
        return None, warnings + [str(exc)]
    warnings += more
    if not cues:
        return None, warnings + [f"subtitle {track.label} holds no text"]
    finished = finish_cues(cues, warnings)  # adds its own warnings (cues out of order, ...)
    return Transcript(embedded_source(track), f"embedded:{track.codec}", True, finished, tuple(warnings)), warnings
