"""Decoders return exactly the planned frames, at their real timestamps."""

from __future__ import annotations

import time
from pathlib import Path

import av
import decord
import numpy as np
import pytest
from media import read_index, write_audio_only, write_video

from videobert_cli.extract.decode import DecodeError, _probe, decord_fault, open_pyav, open_video
from videobert_cli.extract.planning import plan_clips
from videobert_cli.extract.transcripts import NO_TRANSCRIPT

VFR_TIMES = [0.0, 0.1, 0.2, 0.5, 0.6, 1.5, 1.55, 1.6, 2.9, 3.0]


def test_constant_rate_timestamps_and_frames(tmp_path: Path) -> None:
    path = tmp_path / "cfr.mp4"
    times = write_video(path, fps=10, seconds=3)
    source = open_video(path)
    assert source.info.decoder == "decord"
    assert source.info.frame_count == 30
    np.testing.assert_allclose(source.info.frame_starts, times, atol=1e-6)
    assert source.info.duration == pytest.approx(3.0)
    assert (source.info.width, source.info.height) == (192, 108)
    frames = source.read([0, 7, 29])
    assert frames.shape == (3, 108, 192, 3) and frames.dtype == np.uint8
    assert [read_index(f) for f in frames] == [0, 7, 29]


def test_variable_frame_rate_maps_times_to_the_frame_on_screen(tmp_path: Path) -> None:
    path = tmp_path / "vfr.mp4"
    write_video(path, frame_times=VFR_TIMES)
    source = open_video(path)
    np.testing.assert_allclose(source.info.frame_starts, VFR_TIMES, atol=1e-6)
    plan = plan_clips(source.info.duration, source.info.frame_starts, NO_TRANSCRIPT, frames_per_clip=4)
    # First window [0, 1.5): samples at 0.1875, 0.5625, 0.9375, 1.3125 -> frames starting 0.1, 0.5, 0.6, 0.6
    assert plan.clips[0].frame_indices == (1, 3, 4, 4)
    for clip in plan.clips:
        frames = source.read(sorted(set(clip.frame_indices)))
        got = [read_index(f) for f in frames]
        assert got == sorted(set(clip.frame_indices))
        # Each sampled frame's timestamp is the real one from the file.
        assert list(clip.frame_times) == [VFR_TIMES[i] for i in clip.frame_indices]


@pytest.mark.parametrize("codec,suffix", [("libx264", ".mp4"), ("libvpx-vp9", ".webm"), ("mpeg4", ".avi")])
def test_decord_and_pyav_give_the_same_frames(tmp_path: Path, codec: str, suffix: str) -> None:
    path = tmp_path / f"clip{suffix}"
    write_video(path, codec=codec, fps=10, seconds=2)
    decord_source = open_video(path)
    assert decord_source.info.decoder == "decord"
    pyav_source = open_pyav(path)
    np.testing.assert_allclose(decord_source.info.frame_starts, pyav_source.info.frame_starts, atol=1e-3)
    indices = list(range(decord_source.info.frame_count))
    a, b = decord_source.read(indices), pyav_source.read(indices)
    assert [read_index(f) for f in a] == indices
    assert [read_index(f) for f in b] == indices
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0


def test_b_frames_come_back_in_presentation_order(tmp_path: Path) -> None:
    path = tmp_path / "bframes.mp4"
    write_video(path, fps=10, seconds=4, options={"crf": "10", "preset": "medium", "bf": "3", "g": "12"})
    for source in (open_video(path), open_pyav(path)):
        assert source.info.frame_count == 40
        assert source.info.frame_starts[0] == 0.0
        assert [read_index(f) for f in source.read([0, 3, 13, 25, 39])] == [0, 3, 13, 25, 39]


def test_hevc_goes_to_pyav_with_the_reason_recorded(tmp_path: Path) -> None:
    """A multi-GOP open-GOP HEVC file: decord numbered its keyframes [0, 9, 24, 36, 48] for [0, 12, 24, 36, 48]."""
    if "libx265" not in av.codecs_available:
        pytest.skip("PyAV's bundled FFmpeg has no libx265 encoder: cannot write an HEVC test file")
    path = tmp_path / "clip.mp4"
    params = "keyint=12:min-keyint=12:open-gop=1:bframes=3:scenecut=0:log-level=none"
    write_video(path, codec="libx265", fps=10, seconds=5, options={"x265-params": params, "crf": "10"})
    source = open_video(path)
    assert source.info.decoder == "pyav"
    assert "HEVC" in source.info.decoder_note
    assert source.info.frame_count == 50 and source.info.duration == pytest.approx(5.0)
    indices = [0, 5, 11, 12, 13, 25, 37, 49]  # around the keyframes at 12, 24, 36, 48
    assert [read_index(f) for f in source.read(indices)] == indices
    # The per-file check would have caught it too: decord's keyframes are not HEVC's in presentation order.
    reader = decord.VideoReader(str(path))
    probe = _probe(path)
    assert decord_fault(probe, sorted({0, *reader.get_key_indices()}),
                        reader.get_frame_timestamp(range(len(reader)))[:, 0].astype(float)).startswith("open-GOP")


def test_pyav_reads_out_of_order_and_repeated_indices(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    write_video(path, fps=10, seconds=2)
    source = open_pyav(path)
    assert [read_index(f) for f in source.read([5, 5, 2, 19, 0])] == [5, 5, 2, 19, 0]


def test_decord_reads_exact_frames_across_keyframes_pauses_and_backward_jumps(tmp_path: Path) -> None:
    path = tmp_path / "long.mp4"
    write_video(path, fps=10, seconds=40, options={"g": "50"})  # a keyframe every 5 s
    source = open_video(path)
    assert source.info.decoder == "decord"
    reads = [[0, 3], [120, 121, 260], [5, 5, 2], [399], [350, 100, 101]]
    for number, indices in enumerate(reads):
        assert [read_index(f) for f in source.read(indices)] == indices
        if number % 2 == 0:
            time.sleep(0.4)  # idle: the reader is parked (decord stops decoding ahead)
            assert source._next == -1
    source.close()
    with pytest.raises(DecodeError, match="closed"):
        source.read([0])


@pytest.mark.parametrize(
    "make,stage",
    [
        (lambda p: p.write_bytes(b""), "probe"),
        (lambda p: p.write_text("this is not a video\n"), "probe"),
        (lambda p: write_audio_only(p), "probe"),
    ],
    ids=["zero-bytes", "text-file", "audio-only"],
)
def test_unreadable_inputs_raise_a_one_line_decode_error(tmp_path: Path, make, stage: str) -> None:
    path = tmp_path / "bad.mp4"
    make(path)
    with pytest.raises(DecodeError) as info:
        open_video(path)
    assert info.value.stage == stage
    assert "\n" not in str(info.value)


def test_truncated_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    good = tmp_path / "good.mp4"
    write_video(good, fps=10, seconds=2)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(DecodeError):
        source = open_video(cut)
        source.read(list(range(source.info.frame_count)))


def test_large_frames_are_scaled_while_decoding_keeping_the_aspect_ratio(tmp_path: Path) -> None:
    path = tmp_path / "wide.mp4"
    write_video(path, fps=10, seconds=1, width=640, height=360)
    source = open_video(path, short_side=72)
    assert (source.info.width, source.info.height) == (640, 360)  # the video's own size is recorded
    frames = source.read([0, 9])
    assert frames.shape == (2, 72, 128, 3)
    assert [read_index(f) for f in frames] == [0, 9]
    # Not worth it for small frames: decoded as they are.
    assert open_video(path, short_side=224).read([0]).shape == (1, 360, 640, 3)


def test_rotation_metadata_is_applied_the_same_way_by_both_decoders(tmp_path: Path) -> None:
    path = tmp_path / "portrait.mp4"
    write_video(path, fps=10, seconds=1, rotation=90)  # a phone held upright
    decord_source = open_video(path)
    pyav_source = open_pyav(path)
    a, b = decord_source.read([3]), pyav_source.read([3])
    assert (decord_source.info.width, decord_source.info.height) == (108, 192)  # portrait, as displayed
    assert a.shape == b.shape == (1, 192, 108, 3)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0
    assert read_index(np.rot90(a[0], k=3)) == 3  # the picture itself, turned upright


def test_torch_still_computes_after_the_decoder_module_is_imported_first() -> None:
    """decord2 loads every library under site-packages/nvidia with RTLD_GLOBAL, NVBLAS among them; a torch
    loaded after it crashed on its first convolution. decode.py loads torch first."""
    import subprocess
    import sys

    code = ("from videobert_cli.extract import decode\n"
            "import torch\n"
            "x = torch.nn.functional.conv2d(torch.ones(1, 3, 16, 16), torch.ones(4, 3, 3, 3))\n"
            "print(float((torch.ones(8, 8) @ torch.ones(8, 8)).sum()), float(x.sum()))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["512.0", str(float(4 * 14 * 14 * 27))]
