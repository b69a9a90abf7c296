"""Subtitle tracks inside the video file: listing, choosing by language, reading, precedence, end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from media import write_video_with_subtitles

from videobert_cli import open_features
from videobert_cli.cli.main import main
from videobert_cli.extract.sources import select_transcript
from videobert_cli.extract.subtitles import (
    SubtitleTrack,
    choose_track,
    language_key,
    list_tracks,
    read_embedded,
)

EN = [(0.5, 1.2, "hello {\\i1}there{\\i0}"), (1.6, 2.8, "the red\\Nsquare &amp; moves")]
FR = [(0.2, 1.0, "{\\an8}bonjour le monde")]
DE = [(0.1, 0.4, "guten tag")]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("subs")
    mkv = root / "multi.mkv"  # SubRip (eng), ASS (fre, default), WebVTT (ger), a bitmap DVD track (eng)
    write_video_with_subtitles(mkv, [
        {"codec": "subrip", "language": "eng", "cues": EN},
        {"codec": "ass", "language": "fre", "default": True, "cues": FR},
        {"codec": "webvtt", "language": "ger", "cues": DE},
        {"codec": "dvdsub", "language": "eng"},
    ])
    mp4 = root / "movtext.mp4"  # mov_text in two languages, none default
    write_video_with_subtitles(mp4, [{"codec": "mov_text", "language": "fra", "cues": FR},
                                     {"codec": "mov_text", "language": "eng", "cues": EN}])
    bitmap = root / "bitmap.mkv"
    write_video_with_subtitles(bitmap, [{"codec": "dvdsub", "language": "eng"}])
    return {"mkv": mkv, "mp4": mp4, "bitmap": bitmap, "root": root}


def spans(transcript) -> list[tuple[float, float, str]]:
    return [(c.start, c.end, c.text) for c in transcript.cues]


def test_tracks_are_listed_with_codec_language_default_and_kind(files: dict[str, Path]) -> None:
    tracks = list_tracks(files["mkv"])
    assert [(t.index, t.codec, t.language, t.default, t.bitmap) for t in tracks] == [
        (1, "srt", "eng", False, False), (2, "ssa", "fre", True, False), (3, "webvtt", "ger", False, False),
        (4, "dvdsub", "eng", False, True)]
    assert [(t.codec, t.language) for t in list_tracks(files["mp4"])] == [("mov_text", "fra"), ("mov_text", "eng")]


def test_requested_language_is_read_and_cleaned_like_a_sidecar_file(files: dict[str, Path]) -> None:
    transcript, warnings = read_embedded(files["mkv"], ["en"])
    assert transcript is not None
    assert (transcript.path, transcript.format, transcript.timed) == ("embedded:1:eng", "embedded:srt", True)
    assert spans(transcript) == [(0.5, 1.2, "hello there"), (1.6, 2.8, "the red square & moves")]
    assert warnings == ["subtitle stream 4 (dvdsub, eng) is a bitmap track (needs OCR): skipped"]
    assert list(transcript.warnings) == warnings


@pytest.mark.parametrize("langs, expected", [
    ([], "embedded:2:fre"),  # the default-flagged track
    (["de"], "embedded:3:ger"),  # WebVTT
    (["ger"], "embedded:3:ger"),
    (["fr-CA"], "embedded:2:fre"),
    (["ja", "de"], "embedded:3:ger"),  # the first requested language that is there
])
def test_track_order_requested_then_default(files: dict[str, Path], langs: list[str], expected: str) -> None:
    transcript, _ = read_embedded(files["mkv"], langs)
    assert transcript is not None and transcript.path == expected


def test_ass_and_webvtt_text(files: dict[str, Path]) -> None:
    fr, _ = read_embedded(files["mkv"], ["fr"])
    de, _ = read_embedded(files["mkv"], ["de"])
    assert spans(fr) == [(0.2, 1.0, "bonjour le monde")] and fr.format == "embedded:ssa"
    assert spans(de) == [(0.1, 0.4, "guten tag")] and de.format == "embedded:webvtt"


def test_mov_text_in_mp4(files: dict[str, Path]) -> None:
    first, _ = read_embedded(files["mp4"], [])  # the MP4 muxer flags the first track of a kind default
    assert first.path == "embedded:1:fra" and first.format == "embedded:mov_text"
    assert spans(first) == [(0.2, 1.0, "bonjour le monde")]
    english, _ = read_embedded(files["mp4"], ["eng"])
    assert english.path == "embedded:2:eng" and [c.text for c in english.cues] == ["hello there",
                                                                                  "the red square & moves"]


def test_missing_language_falls_back_with_a_warning(files: dict[str, Path]) -> None:
    transcript, warnings = read_embedded(files["mp4"], ["ja"])
    assert transcript.path == "embedded:1:fra"
    assert "no subtitle track in ja; used stream 1 (mov_text, fra, default)" in warnings


def test_bitmap_only_file_has_no_embedded_text(files: dict[str, Path]) -> None:
    transcript, warnings = read_embedded(files["bitmap"], ["en"])
    assert transcript is None
    assert warnings == ["subtitle stream 1 (dvdsub, eng) is a bitmap track (needs OCR): skipped"]


def test_chooser_on_descriptors() -> None:
    tracks = [SubtitleTrack(2, "hdmv_pgs_subtitle", "eng", True, True), SubtitleTrack(3, "srt", "eng", False, False),
              SubtitleTrack(4, "srt", "eng", True, False), SubtitleTrack(5, "srt", "und", False, False)]
    chosen, warnings = choose_track(tracks, ["en-US"])
    assert chosen.index == 4  # among the English text tracks, the default one
    assert warnings == ["subtitle stream 2 (hdmv_pgs_subtitle, eng, default) is a bitmap track (needs OCR): skipped"]
    assert choose_track(tracks[:1], [])[0] is None
    assert choose_track([tracks[3], tracks[1]], [])[0].index == 5  # no default: the first text track
    assert [language_key(c) for c in ("en", "ENG", "en_GB", "fre", "fra", "zh-Hant", "xx")] == [
        "en", "en", "en", "fr", "fr", "zh", "xx"]


def test_precedence_sidecar_embedded_and_the_flag(files: dict[str, Path], tmp_path: Path) -> None:
    sidecar = tmp_path / "multi.srt"
    sidecar.write_text("1\n00:00:00,000 --> 00:00:01,000\nfrom the sidecar\n", encoding="utf-8")
    video = files["mkv"]
    assert select_transcript(video, ("sidecar", "embedded", "asr"), sidecar).format == "srt"
    assert select_transcript(video, ("embedded", "sidecar"), sidecar, ["en"]).path == "embedded:1:eng"
    assert select_transcript(video, ("sidecar", "embedded"), None, ["en"]).path == "embedded:1:eng"
    nothing = select_transcript(video, ("sidecar",), None)
    assert nothing.format == "none" and nothing.is_empty
    # Bitmap warnings survive whichever source wins.
    only_bitmap = select_transcript(files["bitmap"], ("embedded", "sidecar"), sidecar)
    assert only_bitmap.format == "srt" and any("bitmap" in w for w in only_bitmap.warnings)


def test_extract_takes_embedded_text_when_there_is_no_sidecar(files: dict[str, Path], tiny_args: list[str],
                                                              tmp_path: Path) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(files["mkv"], folder / "multi.mkv")
    shutil.copy(files["mp4"], folder / "movtext.mp4")
    (folder / "movtext.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nsidecar words\n", encoding="utf-8")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["extract", str(folder), "-o", str(out), "--subtitle-lang", "en",
                                       *tiny_args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    feats = open_features(out)
    by_name = {Path(v["abspath"]).name: v for v in feats.videos}
    mkv = by_name["multi.mkv"]
    assert (mkv["transcript"], mkv["transcript_format"], mkv["transcript_timed"]) == (
        "embedded:1:eng", "embedded:srt", True)
    assert any("bitmap" in w for w in mkv["warnings"])
    texts = [feats.clip(i, fields=("text", "has_text"))["text"]
             for i in range(mkv["first_clip"], mkv["first_clip"] + mkv["clip_count"])]
    assert texts == ["hello there", "the red square & moves"]  # words at their times, 1.5 s windows
    assert by_name["movtext.mp4"]["transcript_format"] == "srt"  # the sidecar wins
    # The flag turns the order round: the embedded English track beats the sidecar.
    out2 = tmp_path / "out2"
    result = CliRunner().invoke(main, ["extract", str(folder / "movtext.mp4"), "-o", str(out2), "--subtitle-lang",
                                       "en", "--transcript-sources", "embedded,sidecar", *tiny_args],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    video = open_features(out2).videos[0]
    assert (video["transcript"], video["transcript_format"]) == ("embedded:2:eng", "embedded:mov_text")
    assert json.loads(result.stdout.strip().splitlines()[-1])["videos_done"] == 1
