"""FrameBatcher and BackgroundWriter on their own: fake encoders and writers, no models, no files."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from videobert_cli.extract.batching import (BackgroundWriter, BatchFailed, FrameBatcher, OutputWriteError,
                                            VideoInProgress)
from videobert_cli.extract.discover import VideoInput
from videobert_cli.extract.planning import ClipPlan, VideoPlan
from videobert_cli.extract.transcripts import NO_TRANSCRIPT
from videobert_cli.extract.workers import Chunk, Header

FRAMES_PER_CLIP = 2


def video(name: str, clips: list[tuple[int, ...]]) -> VideoInProgress:
    """A video whose plan samples `clips` (frame numbers, FRAMES_PER_CLIP each)."""
    plan = VideoPlan(tuple(ClipPlan(i, float(i), i + 1.0, frames, tuple(map(float, frames)), ())
                           for i, frames in enumerate(clips)), NO_TRANSCRIPT, (), ())
    item = VideoInput(Path(f"/videos/{name}.mp4"), f"{name}.mp4", Path(f"{name}.mp4"), None)
    return VideoInProgress(item, Header(None, plan, NO_TRANSCRIPT, 1, 0.0))


def chunk(video: VideoInProgress, first: int, count: int, base: int) -> Chunk:
    """The chunk of `count` clips from clip `first`; every pixel of frame i is base + i (features tell frames apart)."""
    unique = sorted({i for clip in video.header.plan.clips[first : first + count] for i in clip.frame_indices})
    pixels = np.stack([np.full((3, 2, 2), base + i, np.uint8) for i in unique])
    return Chunk(first, count, unique, pixels)


class Encoder:
    """Each frame's feature is its pixel value; remembers the size of every call."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[int] = []
        self.fail = fail

    def __call__(self, pixels: torch.Tensor, batch_size: int) -> torch.Tensor:
        self.calls.append(len(pixels))
        if self.fail:
            raise RuntimeError("CUDA out of memory")
        return pixels.float().mean(dim=(1, 2, 3)).unsqueeze(1)


def frames_of(video: VideoInProgress) -> list[list[list[int]]]:
    """The encoded features, per chunk, as the frame values each clip received."""
    return [features.squeeze(-1).int().tolist() for _, features in video.features]


def test_a_batch_is_filled_across_videos_and_each_clip_gets_its_own_frames() -> None:
    encoder = Encoder()
    batcher = FrameBatcher(encoder, batch_size=5, frames_per_clip=FRAMES_PER_CLIP)
    a, b = video("a", [(0, 1), (1, 2)]), video("b", [(0, 3)])
    batcher.add(a, chunk(a, 0, 2, base=0))  # frames 0, 1, 2 (1 is shared by both clips)
    assert encoder.calls == [] and a.chunks_waiting == 1
    batcher.add(b, chunk(b, 0, 1, base=100))  # frames 0, 3: the batch is full
    assert encoder.calls == [5]
    assert frames_of(a) == [[[0, 1], [1, 2]]]
    assert frames_of(b) == [[[100, 103]]]
    assert (a.chunks_waiting, b.chunks_waiting) == (0, 0) and batcher.waiting == []


def test_chunks_keep_their_clips_order_and_the_end_flushes_a_partial_batch() -> None:
    encoder = Encoder()
    batcher = FrameBatcher(encoder, batch_size=4, frames_per_clip=FRAMES_PER_CLIP)
    v = video("v", [(0, 1), (2, 3), (4, 5)])
    batcher.add(v, chunk(v, 0, 2, base=0))  # 4 frames: encoded at once
    batcher.add(v, chunk(v, 2, 1, base=0))  # 2 frames: waits for more
    assert encoder.calls == [4] and v.chunks_waiting == 1
    batcher.encode()  # the end of the run
    assert encoder.calls == [4, 2]
    assert [first for first, _ in v.features] == [0, 2]
    assert frames_of(v) == [[[0, 1], [2, 3]], [[4, 5]]]
    v.decoded = True
    assert v.ready
    batcher.encode()  # nothing waiting: no call
    assert encoder.calls == [4, 2]


def test_a_dropped_video_frames_are_not_encoded() -> None:
    encoder = Encoder()
    batcher = FrameBatcher(encoder, batch_size=10, frames_per_clip=FRAMES_PER_CLIP)
    failed, kept = video("failed", [(0, 1), (2, 3)]), video("kept", [(0, 1)])
    batcher.add(failed, chunk(failed, 0, 2, base=0))
    batcher.add(kept, chunk(kept, 0, 1, base=50))
    batcher.drop(failed)
    assert batcher.frames == 2
    batcher.encode()
    assert encoder.calls == [2]
    assert failed.features == [] and frames_of(kept) == [[[50, 51]]]


def test_an_encoder_error_fails_every_video_in_the_batch_once() -> None:
    batcher = FrameBatcher(Encoder(fail=True), batch_size=6, frames_per_clip=FRAMES_PER_CLIP)
    a, b = video("a", [(0, 1), (2, 3)]), video("b", [(0, 1)])
    batcher.add(a, chunk(a, 0, 1, base=0))
    batcher.add(b, chunk(b, 0, 1, base=0))
    with pytest.raises(BatchFailed) as failed:
        batcher.add(a, chunk(a, 1, 1, base=0))
    assert [(v, f.path, f.stage, f.error_type, f.message) for v, f in failed.value.videos] == [
        (a, "a.mp4", "encode", "RuntimeError", "image encoder: CUDA out of memory"),
        (b, "b.mp4", "encode", "RuntimeError", "image encoder: CUDA out of memory"),
    ]
    assert batcher.waiting == [] and batcher.frames == 0
    a.decoded = b.decoded = True
    assert not a.ready and not b.ready  # marked failed: never finished, even once decoded


class Writer:
    """A ShardWriter stand-in: records what it is given; `fail_on` raises, `gate` holds the first add."""

    def __init__(self, fail_on: object = None, error: BaseException | None = None,
                 gate: threading.Event | None = None) -> None:
        self.added: list[object] = []
        self.closed = False
        self.written: list[Path] = []
        self.fail_on, self.error, self.gate = fail_on, error, gate

    def add(self, result: object) -> None:
        if self.gate is not None:
            assert self.gate.wait(10)
        if result == self.fail_on:
            raise self.error
        self.added.append(result)

    def close(self) -> None:
        self.closed = True
        self.written.append(Path("shard-00000.h5"))


def test_the_writer_writes_in_order_and_closes() -> None:
    writer = Writer()
    background = BackgroundWriter(writer)
    for result in range(20):
        background.add(result)
    background.close()
    assert writer.added == list(range(20)) and writer.closed
    assert background.written == [Path("shard-00000.h5")]
    assert not background.thread.is_alive()


def test_a_write_error_surfaces_on_the_next_call_and_nothing_more_is_written() -> None:
    writer = Writer(fail_on=1, error=OSError(errno.ENOSPC, "No space left on device"))
    background = BackgroundWriter(writer)
    with pytest.raises(OutputWriteError, match=r"cannot write the output \(No space left on device\); completed "
                                               r"shards are intact, rerun to finish"):
        for result in range(3):
            background.add(result)
        background.close()
    background.abort()
    assert writer.added == [0] and not writer.closed


def test_an_error_other_than_os_error_surfaces_as_itself() -> None:
    background = BackgroundWriter(Writer(fail_on=0, error=ValueError("bad row")))
    background.add(0)
    with pytest.raises(ValueError, match="bad row"):
        background.close()


def test_abort_stops_without_closing_the_writer() -> None:
    gate = threading.Event()
    writer = Writer(gate=gate)
    background = BackgroundWriter(writer, depth=3)
    for result in range(3):  # the first is being written (held), two wait
        background.add(result)
    threading.Timer(0.2, gate.set).start()
    background.abort()
    assert not background.thread.is_alive()
    assert writer.added == [0, 1, 2] and not writer.closed  # what was queued still went in; no last shard
    background.abort()  # again: nothing to do
