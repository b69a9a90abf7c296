"""Every planned frame is the frame PyAV shows at that time, whatever decoder `open_video` picks.

decord was silently wrong on open-GOP H.264/MPEG-2/HEVC (frames off by several),
on AVI and MPEG-PS files with B-frames (no timestamps at all), and one frame short
in duration on MPEG-TS and AVI; these tests generate each kind of file and hold
the chosen decoder to PyAV reading forward, which is right on all of them.
Every frame carries its index (tests/media.py), so a wrong frame is caught even
where two decoders would agree with each other.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from media import read_index, write_video

from videobert_cli.extract.decode import open_pyav, open_video
from videobert_cli.extract.planning import plan_clips
from videobert_cli.extract.transcripts import NO_TRANSCRIPT

FPS = 10
SECONDS = 3.5  # 3 clips of 1.5 s (the last 0.5 s); one frame short of the end gives 2
OPEN_GOP = {"x264-params": "open-gop=1:keyint=12:min-keyint=12:scenecut=0:bframes=3", "crf": "10", "preset": "medium"}
CLOSED_B = {"crf": "10", "preset": "medium", "bf": "3", "g": "12"}
MPEG2 = {"g": "12", "bf": "2", "qscale": "2"}  # open GOP is MPEG-2's default
XVID = {"g": "12", "bf": "2", "qscale": "2"}  # MPEG-4 Part 2 with B-frames, as in HMDB51/UCF101 AVIs
VFR_TIMES = [0.0, 0.1, 0.2, 0.5, 0.6, 1.5, 1.55, 1.6, 2.9, 3.0, 3.3, 3.4]
SLOTS = Fraction(1, FPS)  # AVI and MPEG-2 streams: one tick per frame

# id: (suffix, codec, encoder options, time base, frame times or None, (decoder, words its note must hold))
CASES: dict[str, tuple[str, str, dict | None, Fraction, list[float] | None, tuple[str, str]]] = {
    "h264-closed-mp4": (".mp4", "libx264", None, Fraction(1, 1000), None, ("decord", "")),
    "h264-closed-mkv": (".mkv", "libx264", None, Fraction(1, 1000), None, ("decord", "")),
    "h264-closed-ts": (".ts", "libx264", None, Fraction(1, 1000), None, ("decord", "")),
    "h264-closed-mov": (".mov", "libx264", None, Fraction(1, 1000), None, ("decord", "")),
    "h264-closed-avi": (".avi", "libx264", None, SLOTS, None, ("pyav", "no valid frame timestamps")),
    "h264-bframes-mp4": (".mp4", "libx264", CLOSED_B, Fraction(1, 1000), None, ("decord", "")),
    "h264-bframes-mkv": (".mkv", "libx264", CLOSED_B, Fraction(1, 1000), None, ("decord", "")),
    "h264-bframes-ts": (".ts", "libx264", CLOSED_B, Fraction(1, 1000), None, ("pyav", "B-frames in MPEG-TS")),
    "h264-bframes-avi": (".avi", "libx264", CLOSED_B, SLOTS, None, ("pyav", "AVI stores no presentation times")),
    "h264-opengop-mp4": (".mp4", "libx264", OPEN_GOP, Fraction(1, 1000), None, ("pyav", "open-GOP")),
    "h264-opengop-mkv": (".mkv", "libx264", OPEN_GOP, Fraction(1, 1000), None, ("pyav", "open-GOP")),
    "h264-opengop-ts": (".ts", "libx264", OPEN_GOP, Fraction(1, 1000), None, ("pyav", "open-GOP")),
    "h264-opengop-avi": (".avi", "libx264", OPEN_GOP, SLOTS, None, ("pyav", "AVI stores no presentation times")),
    "mpeg2-opengop-ts": (".ts", "mpeg2video", MPEG2, SLOTS, None, ("pyav", "")),
    "mpeg2-opengop-mkv": (".mkv", "mpeg2video", MPEG2, SLOTS, None, ("pyav", "")),
    "mpeg2-opengop-mpg": (".mpg", "mpeg2video", MPEG2, SLOTS, None, ("pyav", "")),
    "mpeg4-avi": (".avi", "mpeg4", None, SLOTS, None, ("decord", "")),
    "mpeg4-bframes-avi": (".avi", "mpeg4", XVID, SLOTS, None, ("pyav", "no valid frame timestamps")),
    "vp9-webm": (".webm", "libvpx-vp9", None, Fraction(1, 1000), None, ("decord", "")),
    "vp8-webm": (".webm", "libvpx", None, Fraction(1, 1000), None, ("decord", "")),
    "h264-vfr-mp4": (".mp4", "libx264", None, Fraction(1, 1000), VFR_TIMES, ("decord", "")),
    "h264-vfr-mkv": (".mkv", "libx264", None, Fraction(1, 1000), VFR_TIMES, ("decord", "")),
    "h264-vfr-ts": (".ts", "libx264", CLOSED_B, Fraction(1, 1000), VFR_TIMES, ("", "")),
}


def make(tmp_path: Path, case: str) -> tuple[Path, list[float]]:
    suffix, codec, options, time_base, frame_times, _ = CASES[case]
    path = tmp_path / f"{case}{suffix}"
    times = write_video(path, codec=codec, options=options, fps=FPS, seconds=SECONDS, time_base=time_base,
                        frame_times=frame_times)
    return path, times


def planned(info) -> list[int]:
    plan = plan_clips(info.duration, info.frame_starts, NO_TRANSCRIPT, frames_per_clip=4)
    return sorted({i for clip in plan.clips for i in clip.frame_indices})


@pytest.mark.parametrize("case", list(CASES))
def test_every_planned_frame_is_the_one_shown_at_its_time(tmp_path: Path, case: str) -> None:
    path, times = make(tmp_path, case)
    source = open_video(path)
    info = source.info
    # The frames and their times are the ones written.
    assert info.frame_count == len(times)
    np.testing.assert_allclose(info.frame_starts, times, atol=1e-3)
    wanted = planned(info)
    frames = source.read(wanted)
    assert [read_index(f) for f in frames] == wanted, f"{info.decoder} returned the wrong frames"
    # Byte for byte what PyAV, reading forward, shows at the same times.
    reference = open_pyav(path)
    assert reference.info.frame_count == info.frame_count
    np.testing.assert_allclose(reference.info.frame_starts, info.frame_starts, atol=1e-3)
    expected = reference.read(wanted)
    assert [read_index(f) for f in expected] == wanted
    if info.decoder == "pyav":
        assert np.array_equal(frames, expected)
    else:  # decord converts to RGB with its own rounding
        assert np.abs(frames.astype(int) - expected.astype(int)).mean() < 2.0
    # Backward and repeated reads land on the same frames.
    again = list(reversed(wanted))[:5] + [wanted[0]]
    assert [read_index(f) for f in source.read(again)] == again
    source.close()
    reference.close()


@pytest.mark.parametrize("case", list(CASES))
def test_duration_and_clip_count_agree_across_decoders(tmp_path: Path, case: str) -> None:
    path, times = make(tmp_path, case)
    chosen, reference = open_video(path), open_pyav(path)
    assert chosen.info.duration == pytest.approx(reference.info.duration, abs=1e-6)
    if CASES[case][4] is None:  # constant rate: the last frame lasts one frame period
        assert chosen.info.duration == pytest.approx(SECONDS, abs=1e-3)
    clips = [plan_clips(s.info.duration, s.info.frame_starts, NO_TRANSCRIPT).clips for s in (chosen, reference)]
    assert len(clips[0]) == len(clips[1])
    assert [c.frame_indices for c in clips[0]] == [c.frame_indices for c in clips[1]]
    if CASES[case][4] is None:
        assert len(clips[0]) == 3


@pytest.mark.parametrize("case", [c for c, spec in CASES.items() if spec[5][0]])
def test_the_decoder_choice_and_its_reason_are_recorded(tmp_path: Path, case: str) -> None:
    path, _ = make(tmp_path, case)
    decoder, words = CASES[case][5]
    info = open_video(path).info
    assert info.decoder == decoder
    if decoder == "decord":
        assert info.decoder_note == ""
    else:
        assert info.decoder_note and words in info.decoder_note


def test_open_gop_h264_goes_to_pyav_because_decord_numbers_keyframes_wrong(tmp_path: Path) -> None:
    path, _ = make(tmp_path, "h264-opengop-mp4")
    source = open_video(path)
    assert source.info.decoder == "pyav"
    assert source.info.decoder_note == "open-GOP: decord's keyframe numbering does not match presentation order"
    # Right after the second keyframe (12): decord returned frame 14 (or 2) here.
    assert [read_index(f) for f in source.read([13, 25, 34])] == [13, 25, 34]


def test_avi_without_stored_timestamps_is_timed_by_its_frame_slots(tmp_path: Path) -> None:
    """HMDB51-style xvid AVI: decord reports AV_NOPTS_VALUE for every frame time."""
    path, times = make(tmp_path, "mpeg4-bframes-avi")
    source = open_video(path)
    assert source.info.decoder == "pyav"
    assert "AVI stores no presentation times" in source.info.decoder_note
    np.testing.assert_allclose(source.info.frame_starts, times, atol=1e-6)
    assert source.info.duration == pytest.approx(SECONDS)
    plan = plan_clips(source.info.duration, source.info.frame_starts, NO_TRANSCRIPT)
    assert len(plan.clips) == 3


@pytest.mark.parametrize("suffix", [".mkv", ".avi", ".mp4"])
def test_metadata_that_is_not_utf8_does_not_stop_a_video(tmp_path: Path, suffix: str) -> None:
    marker = "QQQQtitleQQQQ"
    good = tmp_path / f"good{suffix}"
    codec, time_base = ("mpeg4", SLOTS) if suffix == ".avi" else ("libx264", Fraction(1, 1000))
    write_video(good, codec=codec, fps=FPS, seconds=2, time_base=time_base, metadata={"title": marker})
    data = good.read_bytes()
    assert data.count(marker.encode()) == 1
    path = tmp_path / f"latin1{suffix}"
    path.write_bytes(data.replace(marker.encode(), "QQQQtÓtlÉQQ".encode("latin-1")))  # same length
    with pytest.raises(UnicodeDecodeError):  # what the probe died of
        av.open(str(path)).close()
    source = open_video(path)
    assert source.info.frame_count == 20
    assert [read_index(f) for f in source.read([0, 19])] == [0, 19]
    assert [read_index(f) for f in open_pyav(path).read([5])] == [5]
