"""The decode pool: long videos split at keyframes across workers, exact frames, input order, no idle
worker waiting for the main thread, bounded buffers, a failing segment failing its video."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from media import read_index, write_video

from videobert_cli.extract.failures import Failure
from videobert_cli.extract.workers import HEAD_CHUNKS, TEST_HOOK_ENV, Chunk, DecodePool, Header, VideoTask

SIDE = 96  # square frames: the resize and crop keep them whole, so every frame's index can be read back
CLOSED_GOP = {"crf": "10", "preset": "ultrafast", "g": "12"}
OPEN_GOP = {"x264-params": "open-gop=1:keyint=12:min-keyint=12:scenecut=0:bframes=3", "crf": "10",
            "preset": "medium"}


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pool")
    specs = {  # name: (seconds, encoder options)
        "long.mp4": (30.0, CLOSED_GOP),  # 20 clips: decord, split
        "open-gop.mkv": (24.0, OPEN_GOP),  # PyAV (open GOP), split
        "short.mp4": (3.0, CLOSED_GOP),  # 2 clips: never split
        "long.avi": (24.0, CLOSED_GOP),  # timed by slots: PyAV from the start, never split
    }
    paths = {}
    for name, (seconds, options) in specs.items():
        paths[name] = root / name
        write_video(paths[name], seconds=seconds, fps=10, width=SIDE, height=SIDE, options=options)
    return paths


def task(path: Path, clips_per_segment: int) -> VideoTask:
    return VideoTask(path=str(path), given=path.name, transcript=None, clip_mode="fixed", clip_seconds=1.5,
                     min_clip_seconds=0.5, frames_per_clip=4, decode_threads=1, resize_size=SIDE, crop_size=SIDE,
                     clips_per_chunk=2, segment_workers=3, clips_per_segment=clips_per_segment)


def decode_all(paths: list[Path], workers: int, clips_per_segment: int, **pool_options
               ) -> list[tuple[str, list]]:
    pool = DecodePool(workers, timeout=60, **pool_options)
    try:
        return [(item.name, list(messages)) for item, messages in
                pool.run(paths, lambda p: task(p, clips_per_segment))]
    finally:
        pool.close()


def frames_of(messages: list) -> tuple[Header, list[Chunk]]:
    header, *chunks = messages
    assert isinstance(header, Header), messages
    assert all(isinstance(c, Chunk) for c in chunks), [m for m in messages if not isinstance(m, Chunk)]
    return header, chunks


def test_long_videos_are_split_and_come_back_exact_and_in_order(videos: dict[str, Path]) -> None:
    paths = list(videos.values())
    split = decode_all(paths, workers=3, clips_per_segment=4)
    whole = decode_all(paths, workers=1, clips_per_segment=0)
    assert [name for name, _ in split] == [p.name for p in paths]  # input order
    for (name, messages), (_, reference) in zip(split, whole):
        header, chunks = frames_of(messages)
        _, reference_chunks = frames_of(reference)
        plan = header.plan
        expected_split = {"long.mp4": True, "open-gop.mkv": True, "short.mp4": False, "long.avi": False}[name]
        assert (len(header.segments) > 1) == expected_split, (name, header.segments)
        # Clips in order, each exactly once, every sampled frame the planned one.
        assert [c.first_clip for c in chunks] == [c.first_clip for c in reference_chunks]
        assert sum(c.clip_count for c in chunks) == len(plan.clips)
        for chunk in chunks:
            wanted = sorted({i for clip in plan.clips[chunk.first_clip : chunk.first_clip + chunk.clip_count]
                             for i in clip.frame_indices})
            assert chunk.unique_indices == wanted
            assert [read_index(p.transpose(1, 2, 0)) for p in chunk.pixels] == wanted, name
        # The same pixels as one worker decoding the whole video.
        for chunk, ref in zip(chunks, reference_chunks):
            assert np.array_equal(chunk.pixels, ref.pixels), (name, chunk.first_clip)


def test_segments_start_after_a_keyframe(videos: dict[str, Path]) -> None:
    [(_, messages)] = decode_all([videos["long.mp4"]], workers=2, clips_per_segment=4)
    header, _ = frames_of(messages)
    keys = header.info.keyframes
    clips = header.plan.clips
    for first, _ in header.segments[1:]:
        group = lambda f: max(k for k in keys if k <= f)  # noqa: E731
        assert group(min(clips[first].frame_indices)) > group(max(clips[first - 1].frame_indices))


def wait_for(condition, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_worker_that_is_done_gets_the_next_video_while_the_main_thread_is_busy(
        videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The main thread takes the first video and reads nothing for a while (as when it encodes): the
    workers go on to the following videos meanwhile, more videos than there are workers."""
    paths = [videos["short.mp4"]] * 6
    pool = DecodePool(2, timeout=60)
    try:
        run = pool.run(paths, lambda p: task(p, 0))
        next(run)  # the first video, not read
        assert wait_for(lambda: pool._next >= 4), "idle workers waited for the main thread"
        assert pool._buffered <= pool.budget + HEAD_CHUNKS  # short videos: one segment each
        assert sum(1 for _ in run) == 5  # the rest still come, in order
    finally:
        pool.close()


def test_what_is_buffered_stays_bounded_when_the_main_thread_stops_reading(videos: dict[str, Path]) -> None:
    paths = [videos["long.mp4"]] * 4
    pool = DecodePool(3, timeout=60, buffered_chunks=3, ahead=2)
    try:
        run = pool.run(paths, lambda p: task(p, 4))
        _, messages = next(run)
        next(messages)  # the header of the first video, then nothing
        time.sleep(3)
        # Other videos' chunks stay within the budget; the video being read has at most HEAD_CHUNKS per
        # segment (each of its segments in flight must be read, or the one being read could wait on it).
        first = pool._videos[0]
        own = {n: sum(isinstance(m, Chunk) for m in b) for n, b in first.buffers.items()}
        assert pool._buffered - sum(own.values()) <= 3
        assert all(count <= HEAD_CHUNKS for count in own.values()), own
        assert pool._next <= 3  # at most `ahead` videos past the one being read
        assert sum(1 for m in messages if isinstance(m, Chunk)) > 0
    finally:
        pool.close()


def test_a_file_that_changes_fails_its_video_even_in_a_later_segment(
        videos: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    changing = tmp_path / "modify-me.mp4"
    changing.write_bytes(videos["long.mp4"].read_bytes())
    monkeypatch.setenv(TEST_HOOK_ENV, "modify:modify-me")  # appends to the file after its first chunk
    result = decode_all([changing, videos["short.mp4"]], workers=3, clips_per_segment=4)
    assert [name for name, _ in result] == ["modify-me.mp4", "short.mp4"]
    failure = result[0][1][-1]
    assert isinstance(failure, Failure) and failure.error_type == "FileChanged", result[0][1][-1]
    frames_of(result[1][1])  # the next video is whole


def test_a_video_left_half_read_is_dropped_and_the_next_ones_come_whole(videos: dict[str, Path]) -> None:
    paths = [videos["long.mp4"], videos["short.mp4"], videos["long.mp4"]]
    pool = DecodePool(3, timeout=60)
    try:
        out = []
        for index, (item, messages) in enumerate(pool.run(paths, lambda p: task(p, 4))):
            if index == 0:
                next(messages)  # the header only: the caller gives the video up (a failed batch, say)
                continue
            out.append(frames_of(list(messages)))
        assert len(out) == 2 and sum(c.clip_count for c in out[1][1]) == len(out[1][0].plan.clips)
    finally:
        pool.close()


def test_a_pool_runs_one_list_after_another(videos: dict[str, Path]) -> None:
    pool = DecodePool(2, timeout=60)
    try:
        for paths in ([videos["short.mp4"]] * 3, [videos["long.mp4"], videos["short.mp4"]]):
            got = [(item.name, frames_of(list(messages))[0].plan) for item, messages in
                   pool.run(paths, lambda p: task(p, 4))]
            assert [name for name, _ in got] == [p.name for p in paths]
    finally:
        pool.close()


def test_a_long_video_shared_by_three_workers_gives_the_rows_one_worker_gives(
        videos: dict[str, Path], tmp_path: Path, tiny_args: list[str]) -> None:
    """End to end: the same clips, times, frames and (to float rounding) features, in the same order."""
    import subprocess
    import sys

    from videobert_cli.store.reader import read_shard

    shards = {}
    for workers in (1, 3):  # as users run it, in its own process
        out = tmp_path / f"w{workers}"
        result = subprocess.run([sys.executable, "-m", "videobert_cli", "extract", str(videos["long.mp4"]),
                                 str(videos["short.mp4"]), "-o", str(out), *tiny_args, "--workers", str(workers),
                                 "--batch-size", "8"], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        shards[workers] = read_shard(out / "shard-00000.h5")
    (_, one, one_videos), (attrs, three, three_videos) = shards[1], shards[3]
    from videobert_cli.extract.extractor import SEGMENT_CHUNKS
    from videobert_cli.extract.planning import segment_length

    clips = len(one["start"]) - 2  # the long video's (short.mp4 has 2)
    assert clips >= 2 * segment_length(clips, 3, SEGMENT_CHUNKS * 2)  # batch 8, 4 frames a clip: it was split
    assert attrs["execution"]["workers"] == 3
    for key in ("start", "end", "frame_indices", "frame_times", "text"):
        assert np.array_equal(one[key], three[key]), key
    for key in ("video_features", "fused"):
        np.testing.assert_allclose(one[key], three[key], atol=1e-4)
    assert list(one_videos["path"]) == list(three_videos["path"])


_WORKER_IMPORTS = """
import pickle, sys
from videobert_cli.extract.workers import prepare_video
for task in pickle.load(open(sys.argv[1], "rb")):
    assert any(type(m).__name__ == "Chunk" for m in prepare_video(task)), task.path
print(sorted({m.split(".")[0] for m in sys.modules if m.startswith(("torchvision", "transformers", "h5py"))}))
"""


def test_a_decode_worker_imports_neither_torchvision_nor_the_models(videos: dict[str, Path], tmp_path: Path) -> None:
    """What a worker does (decord and PyAV decoding, resizing, cropping) needs torch alone: each worker
    starts ~1.2 s of CPU sooner without torchvision and its torch._dynamo."""
    import dataclasses
    import pickle
    import subprocess
    import sys

    tasks = [dataclasses.replace(task(videos[name], 8), resize_size=64, crop_size=48)  # frames really resized
             for name in ("short.mp4", "long.avi")]
    (tmp_path / "tasks.pkl").write_bytes(pickle.dumps(tasks))
    out = subprocess.run([sys.executable, "-c", _WORKER_IMPORTS, str(tmp_path / "tasks.pkl")],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
