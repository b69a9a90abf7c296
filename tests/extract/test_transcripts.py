"""Reading real-world transcript files: one quirk per test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from videobert_cli.extract.planning import plan_clips
from videobert_cli.extract.transcripts import (
    Cue,
    Transcript,
    TranscriptError,
    clean_text,
    read_transcript,
    spread_untimed,
)


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def spans(t: Transcript) -> list[tuple[float, float, str]]:
    return [(c.start, c.end, c.text) for c in t.cues]


# --------------------------------------------------------------------------- clean_text


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("<i>hello</i> world", "hello world"),
        ("<b>bold</b> text", "bold text"),
        ("{\\an8}top of screen", "top of screen"),
        ("<v Roger Bingham>We are here", "We are here"),
        ("<c.yellow>yellow</c> words", "yellow words"),
        ('<font color="#ff0000">red</font>', "red"),
        ("fish &amp; chips &lt;3", "fish & chips <3"),
        ("first\\Nsecond", "first second"),
        ("  lots   of\t\n space  ", "lots of space"),
        # Only real tags go: text that merely looks like one stays.
        ("if a<b and c>d then stop", "if a<b and c>d then stop"),
        ("a<b and c>d", "a<b and c>d"),
        ("x < y", "x < y"),
        ("x<y or y>z", "x<y or y>z"),
        ("<i>hi</i>", "hi"),
        ("<I>HI</I>", "HI"),
        ("<v Roger>hello</v>", "hello"),
        ("<v.loud Roger Bingham>hello</v>", "hello"),
        ("<c.yellow>x</c>", "x"),
        ("<c.yellow.bg_blue>x</c>", "x"),
        ('<font color="red">x</font>', "x"),
        ("<font color=red face='Arial'>x</font>", "x"),
        ("<00:01.000>word", "word"),
        ("<00:00:01.000>one <00:00:01.500>two", "one two"),
        ("<lang en>hello</lang>", "hello"),
        ("<ruby>kan<rt>kan</rt></ruby>", "kankan"),
        ("<span class=\"x\">x</span>", "x"),
        ("one<br>two<br/>three<br />four", "one two three four"),
        ("{\\i1}styled{\\i0}", "styled"),
        ("<b.loud>x</b> <u>y</u> <s>z</s>", "x y z"),
    ],
)
def test_clean_text_strips_only_real_tags(raw, expected):
    assert clean_text(raw) == expected


def test_clean_text_keeps_a_lone_less_than_sign():
    assert clean_text("1 < 2") == "1 < 2"


def test_clean_text_of_only_markup_is_empty():
    assert clean_text("<i></i>{\\an8}") == ""


# --------------------------------------------------------------------------- SRT


def test_srt_with_bom_and_crlf(tmp_path):
    data = (
        b"\xef\xbb\xbf1\r\n00:00:01,000 --> 00:00:02,500\r\nHello\r\n\r\n"
        b"2\r\n00:00:03,000 --> 00:00:04,000\r\nBye\r\n"
    )
    t = read_transcript(write(tmp_path, "a.srt", data))
    assert t.format == "srt"
    assert t.timed
    assert spans(t) == [(1.0, 2.5, "Hello"), (3.0, 4.0, "Bye")]
    assert t.warnings == ()


def test_srt_bom_does_not_leak_into_text(tmp_path):
    data = b"\xef\xbb\xbf1\r\n00:00:01,000 --> 00:00:02,000\r\nHi\r\n"
    t = read_transcript(write(tmp_path, "a.srt", data))
    assert "\ufeff" not in t.cues[0].text
    assert t.cues[0].text == "Hi"


def test_srt_formatting_tags_removed(tmp_path):
    data = "1\n00:00:01,000 --> 00:00:02,000\n{\\an8}<i>Hello</i> <b>big</b> <font color=\"red\">world</font>\n"
    t = read_transcript(write(tmp_path, "a.srt", data))
    assert [c.text for c in t.cues] == ["Hello big world"]


def test_srt_and_vtt_keep_text_that_only_looks_like_a_tag(tmp_path):
    srt = "1\n00:00:01,000 --> 00:00:02,000\nif a<b and c>d then <i>stop</i>\n"
    vtt = "WEBVTT\n\n00:01.000 --> 00:02.000\n<v Roger>if a<b and c>d <00:01.500>then <c.yellow>stop</c>\n"
    for name, body in (("a.srt", srt), ("a.vtt", vtt)):
        t = read_transcript(write(tmp_path, name, body))
        assert [c.text for c in t.cues] == ["if a<b and c>d then stop"], name


def test_srt_html_entities_decoded(tmp_path):
    data = "1\n00:00:01,000 --> 00:00:02,000\nsalt &amp; pepper\n"
    t = read_transcript(write(tmp_path, "a.srt", data))
    assert [c.text for c in t.cues] == ["salt & pepper"]


def test_multi_line_cue_joined_with_single_spaces(tmp_path):
    data = "1\n00:00:01,000 --> 00:00:02,000\nfirst line\n  second   line\nthird\n"
    t = read_transcript(write(tmp_path, "a.srt", data))
    assert [c.text for c in t.cues] == ["first line second line third"]


def test_cues_out_of_order_are_sorted_with_warning(tmp_path):
    data = (
        "1\n00:00:05,000 --> 00:00:06,000\nlater\n\n"
        "2\n00:00:01,000 --> 00:00:02,000\nearlier\n"
    )
    t = read_transcript(write(tmp_path, "a.srt", data))
    assert spans(t) == [(1.0, 2.0, "earlier"), (5.0, 6.0, "later")]
    assert any("out of order" in w for w in t.warnings)


def test_cues_in_order_give_no_order_warning(tmp_path):
    data = (
        "1\n00:00:01,000 --> 00:00:02,000\nfirst\n\n"
        "2\n00:00:05,000 --> 00:00:06,000\nsecond\n"
    )
    t = read_transcript(write(tmp_path, "a.srt", data))
    assert not any("out of order" in w for w in t.warnings)


def test_overlapping_cues_are_both_kept(tmp_path):
    data = (
        "1\n00:00:01,000 --> 00:00:03,000\none\n\n"
        "2\n00:00:02,000 --> 00:00:04,000\ntwo\n"
    )
    t = read_transcript(write(tmp_path, "a.srt", data))
    assert spans(t) == [(1.0, 3.0, "one"), (2.0, 4.0, "two")]


def test_zero_length_cue_is_kept(tmp_path):
    data = (
        "1\n00:00:01,000 --> 00:00:01,000\nblink\n\n"
        "2\n00:00:02,000 --> 00:00:03,000\nnext\n"
    )
    t = read_transcript(write(tmp_path, "a.srt", data))
    assert spans(t)[0] == (1.0, 1.0, "blink")
    assert len(t.cues) == 2


def test_empty_cue_is_dropped_with_warning(tmp_path):
    data = (
        "1\n00:00:01,000 --> 00:00:02,000\n\n\n"
        "2\n00:00:02,000 --> 00:00:03,000\nnext\n"
    )
    t = read_transcript(write(tmp_path, "a.srt", data))
    assert spans(t) == [(2.0, 3.0, "next")]
    assert any("1 empty cue" in w for w in t.warnings)


def test_cue_of_only_tags_counts_as_empty(tmp_path):
    data = (
        "1\n00:00:01,000 --> 00:00:02,000\n<i></i>\n\n"
        "2\n00:00:02,000 --> 00:00:03,000\nnext\n"
    )
    t = read_transcript(write(tmp_path, "a.srt", data))
    assert [c.text for c in t.cues] == ["next"]
    assert any("empty cue" in w for w in t.warnings)


def test_latin1_bytes_replaced_with_warning_naming_file(tmp_path):
    data = b"1\n00:00:01,000 --> 00:00:02,000\ncaf\xe9 au lait\n"
    t = read_transcript(write(tmp_path, "latin.srt", data))
    assert [c.text for c in t.cues] == ["caf\ufffd au lait"]
    assert any("latin.srt" in w and "UTF-8" in w for w in t.warnings)


def test_valid_utf8_gives_no_encoding_warning(tmp_path):
    data = "1\n00:00:01,000 --> 00:00:02,000\ncafé au lait\n".encode("utf-8")
    t = read_transcript(write(tmp_path, "ok.srt", data))
    assert [c.text for c in t.cues] == ["café au lait"]
    assert t.warnings == ()


@pytest.mark.parametrize("name, body, message", [
    ("broken.json", '{"segments": [', "broken.json"),
    ("nosegs.json", '{"text": "hello"}', "nosegs.json"),
    ("notimes.json", '{"segments": [{"text": "hello"}]}', "notimes.json: segment 0"),
    ("notes.docx", "hello", "notes.docx: unknown transcript format"),
])
def test_unreadable_transcript_is_an_error_naming_the_file(tmp_path, name, body, message):
    with pytest.raises(TranscriptError, match=message):
        read_transcript(write(tmp_path, name, body))


def test_garbage_srt_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(TranscriptError, match="junk.srt: no cue could be read"):
        read_transcript(write(tmp_path, "junk.srt", "this is not a subtitle file\njust words\n"))


def test_garbage_timestamps_are_an_error_not_silently_empty(tmp_path):
    body = "1\n00:00:xx,000 --> banana\nhello\n\n2\n99:99 --> ??\nworld\n"
    with pytest.raises(TranscriptError, match="unreadable cue timings"):
        read_transcript(write(tmp_path, "bad.srt", body))


def test_vtt_with_only_a_header_is_an_empty_transcript(tmp_path):
    t = read_transcript(write(tmp_path, "empty.vtt", "WEBVTT\n\nNOTE nothing said\n"))
    assert t.cues == () and not t.warnings


def test_empty_srt_gives_no_cues_and_no_warning(tmp_path):
    t = read_transcript(write(tmp_path, "empty.srt", b""))
    assert t.cues == ()
    assert t.warnings == ()


# --------------------------------------------------------------------------- WebVTT


def test_vtt_header_with_title_and_metadata(tmp_path):
    data = (
        "WEBVTT - Some title\nKind: captions\nLanguage: en\n\n"
        "00:00:01.000 --> 00:00:02.000\nhello\n"
    )
    t = read_transcript(write(tmp_path, "a.vtt", data))
    assert t.format == "vtt"
    assert spans(t) == [(1.0, 2.0, "hello")]


def test_vtt_note_block_is_not_a_cue(tmp_path):
    data = (
        "WEBVTT\n\nNOTE this is a comment\nspanning two lines\n\n"
        "00:00:01.000 --> 00:00:02.000\nhello\n"
    )
    t = read_transcript(write(tmp_path, "a.vtt", data))
    assert [c.text for c in t.cues] == ["hello"]


def test_vtt_style_block_is_not_a_cue(tmp_path):
    data = (
        "WEBVTT\n\nSTYLE\n::cue {\n  color: yellow;\n}\n\n"
        "00:00:01.000 --> 00:00:02.000\nhello\n"
    )
    t = read_transcript(write(tmp_path, "a.vtt", data))
    assert [c.text for c in t.cues] == ["hello"]


def test_vtt_cue_identifier_is_not_text(tmp_path):
    data = "WEBVTT\n\nintro-cue\n00:00:01.000 --> 00:00:02.000\nhello\n"
    t = read_transcript(write(tmp_path, "a.vtt", data))
    assert [c.text for c in t.cues] == ["hello"]


def test_vtt_cue_settings_ignored(tmp_path):
    data = "WEBVTT\n\n00:00:01.000 --> 00:00:02.500 align:start position:10%\nhello\n"
    t = read_transcript(write(tmp_path, "a.vtt", data))
    assert spans(t) == [(1.0, 2.5, "hello")]


def test_vtt_short_timestamps(tmp_path):
    data = "WEBVTT\n\n01:02.500 --> 01:04.250\nhello\n"
    t = read_transcript(write(tmp_path, "a.vtt", data))
    assert spans(t) == [(62.5, 64.25, "hello")]


def test_vtt_voice_and_class_spans_removed(tmp_path):
    data = "WEBVTT\n\n00:01.000 --> 00:02.000\n<v Roger>Hello <c.yellow>there</c> &amp; you\n"
    t = read_transcript(write(tmp_path, "a.vtt", data))
    assert [c.text for c in t.cues] == ["Hello there & you"]


def test_vtt_with_every_quirk_at_once(tmp_path):
    data = (
        "WEBVTT - title\nKind: captions\n\n"
        "NOTE a note\n\n"
        "STYLE\n::cue { color: red }\n\n"
        "first\n00:01.000 --> 00:02.000 align:start position:10%\n<v A>one\n\n"
        "00:00:03.000 --> 00:00:04.000\ntwo\nlines\n"
    )
    t = read_transcript(write(tmp_path, "a.vtt", data))
    assert spans(t) == [(1.0, 2.0, "one"), (3.0, 4.0, "two lines")]
    assert t.warnings == ()


# --------------------------------------------------------------------------- Whisper JSON


def test_whisper_json_segments(tmp_path):
    doc = {"text": "x", "segments": [{"start": 0.0, "end": 1.5, "text": " Hello there."},
                                      {"start": 1.5, "end": 3.0, "text": " Bye."}]}
    t = read_transcript(write(tmp_path, "a.json", json.dumps(doc)))
    assert t.format == "json"
    assert t.timed
    assert spans(t) == [(0.0, 1.5, "Hello there."), (1.5, 3.0, "Bye.")]
    assert all(c.word_times is None for c in t.cues)


def test_whisper_json_word_timestamps(tmp_path):
    doc = {"segments": [{"start": 0.0, "end": 2.0, "text": " Hello world",
                         "words": [{"word": " Hello", "start": 0.0, "end": 0.4},
                                   {"word": " world", "start": 1.0, "end": 1.6}]}]}
    t = read_transcript(write(tmp_path, "a.json", json.dumps(doc)))
    (cue,) = t.cues
    assert cue.text == "Hello world"
    assert cue.word_times == pytest.approx((0.2, 1.3))


def test_whisperx_untimed_words_are_interpolated_not_the_whole_segment(tmp_path):
    # WhisperX leaves numerals without start/end: only those words lose their own times.
    doc = {"segments": [{"start": 0.0, "end": 4.0, "text": " In 2024 we met 99",
                         "words": [{"word": "In", "start": 0.0, "end": 0.4},
                                   {"word": "2024"},
                                   {"word": "we", "start": 1.0, "end": 1.4},
                                   {"word": "met", "start": 2.0, "end": 2.4},
                                   {"word": "99", "score": 0.5}]},
                        {"start": 5.0, "end": 6.0, "text": " 1 2",
                         "words": [{"word": "1"}, {"word": "2"}]},
                        {"start": 6.0, "end": 7.0, "text": " ok",
                         "words": [{"word": "ok", "start": 6.2, "end": 6.4}]}]}
    t = read_transcript(write(tmp_path, "wx.json", json.dumps(doc)))
    first, second, third = t.cues
    assert first.text == "In 2024 we met 99"
    # 2024 sits between the end of "In" and the start of "we"; 99 between "met" and the segment's end.
    assert first.word_times == pytest.approx((0.2, 0.7, 1.2, 2.2, 3.2))
    assert second.word_times == pytest.approx((5 + 1 / 3, 5 + 2 / 3))  # no timed word: the segment's span
    assert third.word_times == pytest.approx((6.3,))
    assert any("wx.json" in w and "4 Whisper word(s) had no start/end time" in w for w in t.warnings), t.warnings


def test_whisper_words_all_timed_give_no_warning(tmp_path):
    doc = {"segments": [{"start": 0.0, "end": 1.0, "text": " a b",
                         "words": [{"word": " a", "start": 0.0, "end": 0.2}, {"word": " b", "start": 0.5, "end": 0.7}]}]}
    t = read_transcript(write(tmp_path, "a.json", json.dumps(doc)))
    assert t.cues[0].word_times == pytest.approx((0.1, 0.6))
    assert t.warnings == ()


def test_whisper_chinese_words_become_timed_characters_without_spaces(tmp_path):
    doc = {"segments": [{"start": 0.0, "end": 1.0, "text": "我们今天",
                         "words": [{"word": "我们", "start": 0.0, "end": 0.4},
                                   {"word": "今天", "start": 0.5, "end": 0.9}]}]}
    t = read_transcript(write(tmp_path, "zh.json", json.dumps(doc)))
    (cue,) = t.cues
    assert cue.text == "我们今天"
    assert cue.words == ["我", "们", "今", "天"]
    assert cue.word_times == pytest.approx((0.1, 0.3, 0.6, 0.8))  # each word's span shared by its characters
    assert t.warnings == ()


def test_whisper_json_negative_times_clamped_with_warning(tmp_path):
    doc = {"segments": [{"start": -0.5, "end": 1.0, "text": "hi"},
                        {"start": -2.0, "end": -1.0, "text": "gone"}]}
    t = read_transcript(write(tmp_path, "a.json", json.dumps(doc)))
    assert spans(t) == [(0.0, 0.0, "gone"), (0.0, 1.0, "hi")]
    assert any("2 cue(s) with negative times" in w for w in t.warnings)


def test_whisper_json_end_before_start_made_zero_length(tmp_path):
    doc = {"segments": [{"start": 2.0, "end": 1.0, "text": "backwards"}]}
    t = read_transcript(write(tmp_path, "a.json", json.dumps(doc)))
    assert spans(t) == [(2.0, 2.0, "backwards")]
    assert any("zero-length" in w for w in t.warnings)


def test_whisper_json_negative_word_times_clamped(tmp_path):
    doc = {"segments": [{"start": -0.4, "end": 1.0, "text": "hi there",
                         "words": [{"word": "hi", "start": -0.4, "end": -0.2},
                                   {"word": "there", "start": 0.2, "end": 0.6}]}]}
    t = read_transcript(write(tmp_path, "a.json", json.dumps(doc)))
    (cue,) = t.cues
    assert cue.word_times is not None
    assert all(cue.start <= wt <= cue.end for wt in cue.word_times)


def test_whisper_word_at_negative_time_still_reaches_first_clip(tmp_path):
    doc = {"segments": [{"start": -0.4, "end": 1.0, "text": "hi there",
                         "words": [{"word": "hi", "start": -0.4, "end": -0.2},
                                   {"word": "there", "start": 0.2, "end": 0.6}]}]}
    t = read_transcript(write(tmp_path, "a.json", json.dumps(doc)))
    plan = plan_clips(3.0, np.arange(30) / 10, t)
    assert plan.clips[0].text == "hi there"


# --------------------------------------------------------------------------- plain text


def test_plain_text_is_untimed_one_cue_per_non_empty_line(tmp_path):
    t = read_transcript(write(tmp_path, "a.txt", "one two\n\n   \nthree four five six seven eight\n"))
    assert t.format == "txt"
    assert not t.timed
    assert [c.text for c in t.cues] == ["one two", "three four five six seven eight"]


def test_spread_untimed_spreads_words_evenly(tmp_path):
    t = read_transcript(write(tmp_path, "a.txt", "one two\nthree four five six seven eight\n"))
    spread = spread_untimed(t, 8.0)
    assert spans(spread) == [(0.0, 2.0, "one two"), (2.0, 8.0, "three four five six seven eight")]
    assert spread.timed is False
    assert spread.format == "txt"


def test_spread_untimed_leaves_timed_transcript_alone():
    t = Transcript("x.srt", "srt", True, (Cue(1.0, 2.0, "hi"),))
    assert spread_untimed(t, 10.0) is t


def test_spread_untimed_of_empty_transcript():
    t = Transcript("x.txt", "txt", False, ())
    assert spread_untimed(t, 10.0).cues == ()


def test_extension_is_case_insensitive(tmp_path):
    t = read_transcript(write(tmp_path, "A.SRT", "1\n00:00:01,000 --> 00:00:02,000\nhi\n"))
    assert t.format == "srt"
    assert [c.text for c in t.cues] == ["hi"]


def test_missing_file_raises(tmp_path):
    with pytest.raises(TranscriptError, match="cannot read"):
        read_transcript(tmp_path / "missing.srt")
