"""Between decode and write: full encoder batches in, shard writes out, neither waiting on the other.

Videos arrive from the decode workers a chunk of frames at a time. The image encoder runs fastest on
full batches, and most videos are shorter than a batch, so `FrameBatcher` fills each batch with chunks
of as many videos as it takes and hands every chunk's features back to its own video (kept as a
`VideoInProgress` until its last chunk is encoded). `BackgroundWriter` then writes finished videos on
a thread, so HDF5 I/O overlaps the next batches; a write error surfaces on the run's next call.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..store.writer import ShardWriter, VideoResult
from .discover import VideoInput
from .failures import Failure
from .workers import Chunk, Header

if TYPE_CHECKING:  # torch comes in with the models (a run with nothing to do never imports it)
    import torch

Encode = Callable[["torch.Tensor", int], "torch.Tensor"]  # (uint8 frames, batch size) -> (frames, d) features


@dataclass
class VideoInProgress:
    item: VideoInput
    header: Header
    features: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (first clip, (n, F, d_img))
    chunks_waiting: int = 0  # chunks handed to the batcher, not yet encoded
    decoded: bool = False  # every chunk has arrived

    @property
    def ready(self) -> bool:
        return self.decoded and self.chunks_waiting == 0


class BatchFailed(Exception):
    """The image encoder failed on a batch: every video with frames in it fails, each with its Failure."""

    def __init__(self, videos: list[tuple[VideoInProgress, Failure]]) -> None:
        super().__init__(videos[0][1].message)
        self.videos = videos


class FrameBatcher:
    """Collects decoded chunks, across video boundaries, into full image-encoder batches."""

    def __init__(self, encode: Encode, batch_size: int, frames_per_clip: int) -> None:
        self.encode_frames = encode
        self.batch_size = batch_size
        self.frames_per_clip = frames_per_clip
        self.waiting: list[tuple[VideoInProgress, Chunk]] = []
        self.frames = 0

    def add(self, video: VideoInProgress, chunk: Chunk) -> None:
        """Queue a chunk; encodes once a batch is full (raises BatchFailed if that fails)."""
        video.chunks_waiting += 1
        self.waiting.append((video, chunk))
        self.frames += len(chunk.unique_indices)
        if self.frames >= self.batch_size:
            self.encode()

    def drop(self, video: VideoInProgress) -> None:
        """Forget a video's waiting chunks (it failed or was abandoned)."""
        self.waiting = [(v, c) for v, c in self.waiting if v is not video]
        self.frames = sum(len(c.unique_indices) for _, c in self.waiting)

    def encode(self) -> None:
        """One forward pass over everything waiting (a few batches at most); features go back to their videos."""
        if not self.waiting:
            return
        import torch

        pixels = torch.from_numpy(np.concatenate([c.pixels for _, c in self.waiting]))
        try:
            encoded = self.encode_frames(pixels, self.batch_size)
        except RuntimeError as exc:
            videos = {id(v): v for v, _ in self.waiting}.values()
            self.waiting, self.frames = [], 0
            for video in videos:
                video.chunks_waiting = -1  # marks the failure for the run loop
            raise BatchFailed([(v, Failure(v.item.given, "encode", "RuntimeError", f"image encoder: {exc}"))
                               for v in videos]) from None
        offset = 0
        for video, chunk in self.waiting:
            rows = encoded[offset : offset + len(chunk.unique_indices)]
            offset += len(chunk.unique_indices)
            position = {idx: k for k, idx in enumerate(chunk.unique_indices)}
            clips = video.header.plan.clips[chunk.first_clip : chunk.first_clip + chunk.clip_count]
            wanted = [position[i] for clip in clips for i in clip.frame_indices]
            video.features.append((chunk.first_clip, rows[wanted].view(len(clips), self.frames_per_clip, -1)))
            video.chunks_waiting -= 1
        self.waiting, self.frames = [], 0


class OutputWriteError(RuntimeError):
    """The output folder cannot be written (full disk, permissions): the run ends."""


_CLOSE, _ABORT = object(), object()


class BackgroundWriter:
    """Runs ShardWriter.add/close on a thread so HDF5 I/O overlaps compute; errors surface on the next call
    (an OSError as OutputWriteError)."""

    def __init__(self, writer: ShardWriter, depth: int = 2) -> None:
        self.writer = writer
        self.queue: queue.Queue = queue.Queue(maxsize=depth)  # bounded: at most `depth` videos wait
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="videobert-writer", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            result = self.queue.get()
            try:
                if result is _ABORT:
                    return
                if result is _CLOSE:
                    if self.error is None:
                        self.writer.close()
                    return
                if self.error is None:
                    self.writer.add(result)
            except BaseException as exc:  # kept for the main thread
                self.error = exc
                if result is _CLOSE:
                    return
            finally:
                self.queue.task_done()

    def _raise(self) -> None:
        if self.error is None:
            return
        error, self.error = self.error, None
        if isinstance(error, OSError):
            raise OutputWriteError(f"cannot write the output ({error.strerror or error}); completed shards are "
                                   "intact, rerun to finish") from None
        raise error

    def add(self, result: VideoResult) -> None:
        self._raise()
        self.queue.put(result)

    def close(self) -> None:
        """Write what is pending and stop; raises the first write error."""
        if self.thread.is_alive():
            self.queue.put(_CLOSE)
            self.thread.join()
        self._raise()

    def abort(self) -> None:
        """Stop without closing the writer (after an error or an abort): what is already queued still goes
        to it (and a shard that fills up is written), its last, partial shard is not."""
        if self.thread.is_alive():
            self.queue.put(_ABORT)
            self.thread.join()

    @property
    def written(self) -> list[Path]:
        return self.writer.written
