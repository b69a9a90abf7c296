"""Clip planning rules, without any video: windows, word times, frame sampling."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from videobert_cli.extract.planning import fixed_windows, plan_clips, sample_frames, word_timeline
from videobert_cli.extract.transcripts import NO_TRANSCRIPT, Cue, Transcript

FPS10 = np.arange(100) / 10.0  # 10 s of constant 10 fps


def timed(*cues: Cue) -> Transcript:
    return Transcript("t.srt", "srt", True, tuple(cues))


def at(*pairs: tuple[str, float]) -> Transcript:
    """One cue whose words sit exactly at the given times."""
    text = " ".join(w for w, _ in pairs)
    times = tuple(t for _, t in pairs)
    return timed(Cue(min(times), max(times), text, times))


def clip_texts(plan) -> list[str]:
    return [c.text for c in plan.clips]


# --------------------------------------------------------------------------- fixed_windows


def test_fixed_windows_exact_multiple():
    assert fixed_windows(3.0, 1.5, 0.5) == [(0.0, 1.5), (1.5, 3.0)]


def test_fixed_windows_keeps_long_enough_partial():
    assert fixed_windows(4.0, 1.5, 0.5) == [(0.0, 1.5), (1.5, 3.0), (3.0, 4.0)]


def test_fixed_windows_drops_short_partial():
    assert fixed_windows(3.2, 1.5, 0.5) == [(0.0, 1.5), (1.5, 3.0)]


def test_fixed_windows_keeps_partial_of_exactly_min_length():
    assert fixed_windows(3.5, 1.5, 0.5) == [(0.0, 1.5), (1.5, 3.0), (3.0, 3.5)]


def test_fixed_windows_video_shorter_than_min_gives_one_window():
    assert fixed_windows(0.3, 1.5, 0.5) == [(0.0, 0.3)]


def test_fixed_windows_min_zero_keeps_every_partial():
    assert fixed_windows(3.2, 1.5, 0.0) == [(0.0, 1.5), (1.5, 3.0), (3.0, 3.2)]


# --------------------------------------------------------------------------- word_timeline


def test_word_times_interpolated_at_centres():
    words = word_timeline([Cue(0.5, 2.0, "hello there friend")])
    assert [w.text for w in words] == ["hello", "there", "friend"]
    assert [w.time for w in words] == pytest.approx([0.75, 1.25, 1.75])
    assert [(w.cue, w.position) for w in words] == [(0, 0), (0, 1), (0, 2)]


def test_word_times_from_file_used_when_given():
    words = word_timeline([Cue(0.0, 2.0, "a b", (0.1, 1.9))])
    assert [w.time for w in words] == [0.1, 1.9]


def test_word_times_of_wrong_length_are_ignored():
    words = word_timeline([Cue(0.0, 2.0, "a b", (0.1,))])
    assert [w.time for w in words] == pytest.approx([0.5, 1.5])


def test_word_timeline_sorted_across_overlapping_cues():
    words = word_timeline([Cue(0.0, 4.0, "a b"), Cue(1.5, 2.5, "c")])
    assert [(w.text, w.time) for w in words] == [("a", 1.0), ("c", 2.0), ("b", 3.0)]


def test_word_timeline_ties_keep_transcript_order():
    words = word_timeline([Cue(1.0, 1.0, "x y"), Cue(1.0, 1.0, "z")])
    assert [w.text for w in words] == ["x", "y", "z"]


# --------------------------------------------------------------------------- words in fixed windows


def test_words_split_between_windows():
    plan = plan_clips(3.0, FPS10[:30], timed(Cue(0.5, 2.0, "hello there friend")))
    assert clip_texts(plan) == ["hello there", "friend"]
    assert plan.warnings == ()


def test_word_at_window_boundary_goes_to_later_window():
    plan = plan_clips(3.0, FPS10[:30], at(("early", 1.4), ("edge", 1.5)))
    assert clip_texts(plan) == ["early", "edge"]


def test_word_at_video_end_belongs_to_final_window():
    plan = plan_clips(3.0, FPS10[:30], at(("start", 0.0), ("end", 3.0)))
    assert clip_texts(plan) == ["start", "end"]
    assert plan.warnings == ()


def test_words_after_last_kept_window_reported():
    # 3.2 s: the partial window (3.0, 3.2) is shorter than 0.5 s and dropped.
    plan = plan_clips(3.2, FPS10[:32], at(("in", 2.9), ("out", 3.05), ("also", 3.15)))
    assert [(c.start, c.end) for c in plan.clips] == [(0.0, 1.5), (1.5, 3.0)]
    assert clip_texts(plan) == ["", "in"]
    assert len(plan.warnings) == 1
    assert plan.warnings[0].startswith("2 word(s)")


def test_words_past_the_video_end_reported():
    plan = plan_clips(3.0, FPS10[:30], at(("in", 1.0), ("late", 5.0)))
    assert clip_texts(plan) == ["in", ""]
    assert any(w.startswith("1 word(s)") for w in plan.warnings)


def test_fixed_mode_without_transcript_gives_empty_clips():
    plan = plan_clips(3.0, FPS10[:30], NO_TRANSCRIPT)
    assert [(c.start, c.end) for c in plan.clips] == [(0.0, 1.5), (1.5, 3.0)]
    assert clip_texts(plan) == ["", ""]
    assert plan.words == ()
    assert plan.warnings == ()


def test_clip_indices_are_sequential():
    plan = plan_clips(4.0, FPS10[:40], NO_TRANSCRIPT)
    assert [c.index for c in plan.clips] == [0, 1, 2]


# --------------------------------------------------------------------------- sample_frames


def test_sample_frames_constant_fps():
    indices, times = sample_frames(0.0, 1.5, 4, FPS10[:30])
    assert indices == (1, 5, 9, 13)
    assert times == pytest.approx((0.1, 0.5, 0.9, 1.3))


def test_sample_frames_second_window_constant_fps():
    indices, _ = sample_frames(1.5, 3.0, 4, FPS10[:30])
    assert indices == (16, 20, 24, 28)


VFR = np.array([0.0, 0.1, 0.2, 0.5, 0.6, 1.5, 1.55, 1.6, 2.9, 3.0])


def test_sample_frames_variable_frame_rate_uses_timestamps():
    # One sample at t = 1.0: the frame on screen started at 0.6 (index 4).
    # An average-fps mapping would pick round(1.0 * 10 / 3.0) = 3 instead.
    indices, times = sample_frames(0.5, 1.5, 1, VFR)
    assert indices == (4,)
    assert times == (0.6,)


def test_sample_frames_variable_frame_rate_whole_window():
    # Samples at 0.375, 1.125, 1.875, 2.625 s.
    indices, times = sample_frames(0.0, 3.0, 4, VFR)
    assert indices == (2, 4, 7, 7)
    assert times == (0.2, 0.6, 1.6, 1.6)


def test_sample_at_exact_frame_start_picks_that_frame():
    # Sample at 0.5 s, exactly where frame 3 starts.
    indices, _ = sample_frames(0.0, 1.0, 1, VFR)
    assert indices == (3,)


def test_sample_after_last_frame_start_picks_last_frame():
    indices, _ = sample_frames(3.0, 4.0, 2, VFR)
    assert indices == (9, 9)


def test_sample_of_zero_length_window_repeats_one_frame():
    indices, times = sample_frames(0.55, 0.55, 4, VFR)
    assert indices == (3, 3, 3, 3)
    assert times == (0.5, 0.5, 0.5, 0.5)


# --------------------------------------------------------------------------- cue mode


def test_cue_mode_one_clip_per_cue_with_its_text():
    t = timed(Cue(0.2, 1.0, "first cue"), Cue(1.0, 2.5, "second one here"))
    plan = plan_clips(3.0, FPS10[:30], t, mode="cue")
    assert [(c.start, c.end) for c in plan.clips] == [(0.2, 1.0), (1.0, 2.5)]
    assert clip_texts(plan) == ["first cue", "second one here"]
    assert plan.warnings == ()


def test_cue_mode_overlapping_cues_each_get_their_own_words():
    t = timed(Cue(0.0, 2.0, "a b c"), Cue(0.5, 1.0, "x y"))
    plan = plan_clips(3.0, FPS10[:30], t, mode="cue")
    assert clip_texts(plan) == ["a b c", "x y"]


def test_cue_mode_window_clipped_to_duration():
    plan = plan_clips(3.0, FPS10[:30], timed(Cue(2.0, 5.0, "runs long")), mode="cue")
    assert [(c.start, c.end) for c in plan.clips] == [(2.0, 3.0)]
    assert clip_texts(plan) == ["runs long"]


def test_cue_mode_cues_after_end_dropped_with_warning():
    t = timed(Cue(1.0, 2.0, "kept"), Cue(3.0, 3.5, "at end"), Cue(4.0, 5.0, "after"))
    plan = plan_clips(3.0, FPS10[:30], t, mode="cue")
    assert clip_texts(plan) == ["kept"]
    assert len(plan.warnings) == 1
    assert plan.warnings[0].startswith("2 cue(s)")


def test_cue_mode_zero_length_cue_samples_one_frame():
    plan = plan_clips(3.0, FPS10[:30], timed(Cue(1.23, 1.23, "blink")), mode="cue")
    (clip,) = plan.clips
    assert clip.frame_indices == (12, 12, 12, 12)
    assert clip.text == "blink"


def test_cue_mode_without_cues_gives_no_clips_and_warning():
    plan = plan_clips(3.0, FPS10[:30], NO_TRANSCRIPT, mode="cue")
    assert plan.clips == ()
    assert any("no clips" in w for w in plan.warnings)


def test_unknown_mode_raises():
    with pytest.raises(ValueError, match="unknown clip mode"):
        plan_clips(3.0, FPS10[:30], NO_TRANSCRIPT, mode="scene")


@pytest.mark.parametrize("duration, starts", [(0.0, FPS10[:3]), (-1.0, FPS10[:3]), (3.0, np.array([]))])
def test_video_without_frames_or_duration_raises(duration, starts):
    with pytest.raises(ValueError):
        plan_clips(duration, starts, NO_TRANSCRIPT)


# --------------------------------------------------------------------------- untimed transcripts


def test_untimed_transcript_spread_before_planning():
    t = Transcript("t.txt", "txt", False, (Cue(0.0, 0.0, "one two"), Cue(0.0, 0.0, "three four five six")))
    plan = plan_clips(3.0, FPS10[:30], t)
    # Six words over 3 s: 0.5 s each, centred at 0.25, 0.75, ..., 2.75.
    assert [t for c in plan.transcript.cues for t in (c.start, c.end)] == pytest.approx([0.0, 1.0, 1.0, 3.0])
    assert [w.time for w in plan.words] == pytest.approx([0.25, 0.75, 1.25, 1.75, 2.25, 2.75])
    assert clip_texts(plan) == ["one two three", "four five six"]


def test_untimed_transcript_in_cue_mode_gets_spread_windows():
    t = Transcript("t.txt", "txt", False, (Cue(0.0, 0.0, "a b"), Cue(0.0, 0.0, "c d e f")))
    plan = plan_clips(6.0, FPS10[:60], t, mode="cue")
    assert [t for c in plan.clips for t in (c.start, c.end)] == pytest.approx([0.0, 2.0, 2.0, 6.0])
    assert clip_texts(plan) == ["a b", "c d e f"]


# --------------------------------------------------------------------------- properties

WORDS = ["alpha", "beta", "gamma", "delta", "eps"]


@st.composite
def videos(draw):
    """(duration, frame_starts): constant fps or a random increasing timeline from 0."""
    duration = draw(st.floats(0.05, 600.0, allow_nan=False))
    if draw(st.booleans()):
        fps = draw(st.sampled_from([1.0, 8.0, 23.976, 25.0, 29.97, 30.0, 60.0]))
        n = max(1, int(np.ceil(duration * fps - 1e-9)))
        starts = np.arange(n) / fps
    else:
        n = draw(st.integers(1, 200))
        gaps = draw(st.lists(st.floats(0.01, 1.0), min_size=n, max_size=n))
        cum = np.concatenate([[0.0], np.cumsum(gaps)[:-1]])
        starts = cum / (cum[-1] + gaps[-1]) * duration  # strictly increasing, all < duration
    return duration, starts


@st.composite
def transcripts(draw, duration):
    cues = []
    for _ in range(draw(st.integers(0, 8))):
        start = draw(st.floats(0.0, duration * 1.2))
        length = draw(st.floats(0.0, duration * 0.5))
        words = draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=6))
        cues.append(Cue(start, start + length, " ".join(words)))
    return timed(*cues)


def check_clip_frames(plan, starts, frames_per_clip):
    for clip in plan.clips:
        idx = np.array(clip.frame_indices)
        assert len(idx) == frames_per_clip
        assert ((idx >= 0) & (idx < len(starts))).all()
        assert (np.diff(idx) >= 0).all()
        assert clip.frame_times == tuple(float(x) for x in starts[idx])
        t = clip.start + (np.arange(frames_per_clip) + 0.5) * (clip.end - clip.start) / frames_per_clip
        assert (starts[idx] <= t + 1e-9).all()  # the frame has started by its sample time
        has_next = idx + 1 < len(starts)
        assert (starts[idx[has_next] + 1] > t[has_next] - 1e-9).all()  # and it is the latest such frame


@st.composite
def clip_lengths(draw, duration):
    """0.05..20 s, but no more than 300 windows so that each example stays fast."""
    return max(draw(st.floats(0.05, 20.0)), duration / 300)


def word_counts(plan):
    counts = {}
    for clip in plan.clips:
        for w in clip.words:
            counts[(w.cue, w.position)] = counts.get((w.cue, w.position), 0) + 1
    return counts


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_property_fixed_windows_tile_the_video(data):
    duration, starts = data.draw(videos())
    clip_seconds = data.draw(clip_lengths(duration))
    min_clip = data.draw(st.floats(0.0, 1.0)) * clip_seconds
    frames_per_clip = data.draw(st.integers(1, 8))
    transcript = data.draw(transcripts(duration))
    plan = plan_clips(duration, starts, transcript, clip_seconds=clip_seconds,
                      min_clip_seconds=min_clip, frames_per_clip=frames_per_clip)

    windows = [(c.start, c.end) for c in plan.clips]
    assert windows
    assert windows[0][0] == 0.0
    for (_, end), (next_start, _) in zip(windows, windows[1:]):
        assert next_start == end  # contiguous, no overlap
    for start, end in windows:
        assert start < end <= duration
    assert windows[-1][1] >= duration - clip_seconds - 1e-9
    check_clip_frames(plan, starts, frames_per_clip)
    assert all(n == 1 for n in word_counts(plan).values())


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_property_fixed_mode_min_zero_places_every_word_in_range_once(data):
    duration, starts = data.draw(videos())
    clip_seconds = data.draw(clip_lengths(duration))
    transcript = data.draw(transcripts(duration))
    plan = plan_clips(duration, starts, transcript, clip_seconds=clip_seconds, min_clip_seconds=0.0)

    assert plan.clips[-1].end == pytest.approx(duration, abs=1e-9)
    counts = word_counts(plan)
    for w in plan.words:
        placed = counts.get((w.cue, w.position), 0)
        if 0.0 <= w.time <= duration:
            assert placed == 1, w
        elif w.time > duration + 1e-9:
            assert placed == 0, w
    outside = sum(1 for w in plan.words if w.time > duration + 1e-9)
    assert bool(outside) == any("word(s)" in m for m in plan.warnings)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_property_cue_mode(data):
    duration, starts = data.draw(videos())
    frames_per_clip = data.draw(st.integers(1, 8))
    transcript = data.draw(transcripts(duration))
    plan = plan_clips(duration, starts, transcript, mode="cue", frames_per_clip=frames_per_clip)

    kept = [c for c in transcript.cues if c.start < duration - 1e-9]
    assert len(plan.clips) == len(kept)
    for clip, cue in zip(plan.clips, kept):
        assert (clip.start, clip.end) == (cue.start, min(cue.end, duration))
        assert clip.text == cue.text
    check_clip_frames(plan, starts, frames_per_clip)
    assert all(n == 1 for n in word_counts(plan).values())


# --------------------------------------------------------------------------- scripts without spaces

UNSPACED_CUES = {
    "english": "we discuss methods of video understanding and multimodal learning today with examples",
    "chinese": "我们今天讨论视频理解的方法和多模态学习",
    "japanese": "今日はビデオ理解とマルチモーダル学習について話します",
    "thai": "วันนี้เราจะพูดคุยเกี่ยวกับการทำความเข้าใจวิดีโอ",
}


@pytest.mark.parametrize("language", sorted(UNSPACED_CUES))
def test_unspaced_scripts_are_timed_and_windowed_like_english(language):
    text = UNSPACED_CUES[language]
    plan = plan_clips(6.0, np.arange(60) / 10.0, timed(Cue(0.0, 6.0, text)), clip_seconds=1.5)
    texts = clip_texts(plan)
    assert len(texts) == 4 and all(texts), texts  # the cue's words spread over every clip it covers
    separator = " " if language == "english" else ""
    assert separator.join(texts) == text  # no word lost or doubled, no space invented inside CJK/Thai
    if language != "english":
        assert not any(" " in t for t in texts)
    counts = [len(c.words) for c in plan.clips]
    assert max(counts) - min(counts) <= 1  # even spread, as for English


def test_unspaced_units_keep_english_words_and_spaces_around_them():
    cue = Cue(0.0, 4.0, "In 2024年，我们 use AI模型. ok")
    assert cue.words == ["In", "2024", "年", "，", "我", "们", "use", "AI", "模", "型", ".", "ok"]
    plan = plan_clips(4.0, np.arange(40) / 10.0, timed(cue), clip_seconds=4.0)
    assert clip_texts(plan) == ["In 2024年，我们 use AI模型. ok"]


def test_thai_combining_marks_stay_with_their_letter():
    words = Cue(0.0, 1.0, "พูดคุย").words
    assert words == ["พู", "ด", "คุ", "ย"]


def test_english_words_keep_their_punctuation():
    assert Cue(0.0, 1.0, "Hello, world! It's 3.5 o'clock (roughly).").words == [
        "Hello,", "world!", "It's", "3.5", "o'clock", "(roughly)."]


def test_unspaced_units_match_the_bert_pre_tokenizer_on_cjk(tiny_bert):
    """For CJK ideographs our units are BERT's own pre-tokens (its normalizer splits every ideograph)."""
    from transformers import AutoTokenizer

    backend = AutoTokenizer.from_pretrained(str(tiny_bert)).backend_tokenizer
    text = "我们今天讨论视频理解的方法，和多模态学习。"
    pieces = [p for p, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text))]
    assert Cue(0.0, 1.0, text).words == pieces


# --------------------------------------------------------------------------- plan_segments


def clips_every(frames: int, count: int, per_clip: int = 4) -> tuple:
    """`count` clips of `frames` frames each, `per_clip` sampled frames spread over every clip."""
    from videobert_cli.extract.planning import ClipPlan

    out = []
    for c in range(count):
        indices = tuple(c * frames + (k * frames) // per_clip + frames // (2 * per_clip) for k in range(per_clip))
        out.append(ClipPlan(c, float(c), c + 1.0, indices, tuple(map(float, indices)), ()))
    return tuple(out)


def test_one_segment_without_keyframes_or_splitting_or_enough_clips():
    from videobert_cli.extract.planning import plan_segments

    clips = clips_every(15, 40)
    assert plan_segments(clips, None, 8) == ((0, 40),)  # a decoder that reads from the start
    assert plan_segments(clips, (0, 100), 0) == ((0, 40),)  # one worker
    assert plan_segments(clips, tuple(range(0, 600, 12)), 21) == ((0, 40),)  # fewer than two segments' clips
    assert plan_segments((), (0,), 4) == ((0, 0),)


def test_cuts_move_to_the_next_group_of_pictures():
    from videobert_cli.extract.planning import plan_segments

    clips = clips_every(15, 40)  # clip c holds frames 15c .. 15c + 14 (sampled 15c+1, +4, +8, +12)
    keys = tuple(range(0, 600, 50))  # a keyframe every 50 frames
    segments = plan_segments(clips, keys, 8)
    assert [first for first, _ in segments] == [0, 10, 20, 30]
    for first, _ in segments[1:]:  # no two segments decode the same group of pictures
        group = lambda f: max(k for k in keys if k <= f)  # noqa: E731
        assert group(min(clips[first].frame_indices)) > group(max(clips[first - 1].frame_indices))


def test_a_cut_stays_put_when_no_keyframe_comes_within_half_a_segment():
    from videobert_cli.extract.planning import plan_segments

    clips = clips_every(15, 40)
    assert plan_segments(clips, (0,), 10) == ((0, 10), (10, 10), (20, 10), (30, 10))


@settings(max_examples=200, deadline=None)
@given(count=st.integers(0, 120), per=st.integers(0, 30), gop=st.integers(1, 200), frames=st.integers(1, 40))
def test_segments_cover_every_clip_once_in_order(count, per, gop, frames):
    from videobert_cli.extract.planning import plan_segments

    clips = clips_every(frames, count, per_clip=min(4, frames))
    segments = plan_segments(clips, tuple(range(0, count * frames + 1, gop)), per)
    assert segments[0][0] == 0
    assert sum(n for _, n in segments) == count
    assert all(a + n == b for (a, n), (b, _) in zip(segments, segments[1:]))
    if len(segments) > 1:
        assert all(n >= max(1, per // 2) for _, n in segments)
