"""Decode in separate processes, so a hanging or crashing decoder fails one video, not the run.

A worker takes units of work. A video's first unit reads the transcript, opens the video, plans its
clips and splits them into segments (`planning.plan_segments`: a long video is cut at keyframes when
several workers can share it); it sends a `Header`, then the first segment's frames (resized and
cropped, uint8) chunk by chunk. Every further segment is a unit of its own (`SegmentTask`) that any
idle worker decodes at the same time. Chunks flow back through bounded queues and bounded buffers,
so memory stays flat whatever the videos' lengths.

`DecodePool` hands out the units from a dispatcher thread, in input order, as soon as a worker is
idle (not when the main thread gets round to it), and gives each video's messages to the main
thread in order (Header, then every segment's chunks in clip order): the main thread only encodes
and writes. A worker that makes no progress for `timeout` seconds, or whose process dies (a native
crash), is killed, its video fails with stage "decode", and a fresh worker takes the next unit.
"""

from __future__ import annotations

import heapq
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from .failures import Failure, VideoFailed
from .planning import VideoPlan
from .transcripts import Transcript

# Test hook, comma-separated: "hang:<name part>", "crash:<name part>", "modify:<name part>".
TEST_HOOK_ENV = "VIDEOBERT_TEST_HOOK"
SLOW_ENV = "VIDEOBERT_TEST_SLOW_SECONDS"  # "slow:<name part>": seconds added per chunk (default 0.2)
T = TypeVar("T")


@dataclass(frozen=True)
class VideoTask:
    path: str  # absolute
    given: str  # as the user gave it: what its failure is reported under
    transcript: str | None
    clip_mode: str
    clip_seconds: float
    min_clip_seconds: float
    frames_per_clip: int
    decode_threads: int
    resize_size: int
    crop_size: int
    clips_per_chunk: int
    sources: tuple[str, ...] = ("sidecar",)  # transcript sources in order of precedence (see sources.py)
    subtitle_langs: tuple[str, ...] = ()
    asr_json: str | None = None  # the recognised transcript, when speech recognition ran for this video
    asr_model: str = ""
    asr_error: str = ""  # speech recognition failed for this video: it fails at stage "asr"
    segment_workers: int = 1  # workers that may share a long video (planning.segment_length)
    clips_per_segment: int = 0  # the shortest segment; 0: never split a video


@dataclass(frozen=True)
class SegmentTask:
    """A later segment of a video whose first unit planned it: decode these clips' frames, nothing else."""

    video: VideoTask
    first_clip: int
    clip_frames: tuple[tuple[int, ...], ...]  # frame indices of each clip of the segment, in clip order
    size: int  # the file as the first unit saw it: a change in between fails the video
    mtime: float
    decoder: str  # and the decoder it chose, which must choose the same here
    frame_count: int
    probe: Any = None  # decode.Probe: what the first unit's demux found (saves this worker a demux)

    @property
    def given(self) -> str:
        return self.video.given


@dataclass
class Header:
    info: Any  # decode.VideoInfo
    plan: VideoPlan
    transcript: Transcript
    size: int
    mtime: float
    segments: tuple[tuple[int, int], ...] = ()  # (first clip, clip count); the first unit decodes the first
    probe: Any = None  # decode.Probe of a split video: the other segments' workers open it without a demux


@dataclass
class Chunk:
    first_clip: int
    clip_count: int
    unique_indices: list[int]
    pixels: np.ndarray  # (len(unique_indices), 3, crop, crop) uint8


@dataclass
class End:
    pass


@dataclass
class Ready:
    """A fresh worker has imported its libraries: the stall clock starts now, not at spawn."""


def _test_hook(path: str, action: str) -> bool:
    for hook in os.environ.get(TEST_HOOK_ENV, "").split(","):
        kind, _, part = hook.partition(":")
        if kind == action and part and part in os.path.basename(path):
            return True
    return False


def prepare_video(task: VideoTask) -> Iterator[Header | Chunk]:
    """Plan and decode one video: a Header, then Chunks. Raises VideoFailed."""
    from .decode import DecodeError, open_video
    from .planning import plan_clips, plan_segments, segment_length
    from .sources import select_transcript
    from .transcripts import TranscriptError

    path = Path(task.path)
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        raise _failed(task, "probe", "BadFileName", "file name is not valid UTF-8; rename it") from None
    if path.is_dir():
        raise _failed(task, "probe", "IsADirectoryError", "is a directory, not a video file")
    try:
        stat = path.stat()
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise _failed(task, "probe", type(exc).__name__, exc.strerror or str(exc)) from None
    if stat.st_size == 0:
        raise _failed(task, "probe", "EmptyFile", "file is empty (0 bytes)")
    if task.asr_error:
        raise _failed(task, "asr", "RecognitionError", task.asr_error)
    try:
        transcript = select_transcript(path, task.sources, Path(task.transcript) if task.transcript else None,
                                       task.subtitle_langs, Path(task.asr_json) if task.asr_json else None,
                                       task.asr_model)
    except TranscriptError as exc:
        raise _failed(task, "transcript", "TranscriptError", str(exc)) from None
    if _test_hook(task.path, "hang"):
        time.sleep(3600)
    if _test_hook(task.path, "crash"):
        os.kill(os.getpid(), signal.SIGSEGV)
    try:
        source = open_video(path, task.decode_threads, task.resize_size)
    except DecodeError as exc:
        raise _failed(task, exc.stage, "DecodeError", str(exc)) from None
    try:
        info = source.info
        plan = plan_clips(info.duration, info.frame_starts, transcript, mode=task.clip_mode,
                          clip_seconds=task.clip_seconds, min_clip_seconds=task.min_clip_seconds,
                          frames_per_clip=task.frames_per_clip)
        length = segment_length(len(plan.clips), task.segment_workers, task.clips_per_segment)
        segments = plan_segments(plan.clips, info.keyframes, length)
        yield Header(info, plan, plan.transcript, stat.st_size, stat.st_mtime, segments,
                     source.probe if len(segments) > 1 else None)
        first, count = segments[0]
        yield from _read_chunks(source, task, first, [c.frame_indices for c in plan.clips[first : first + count]])
    finally:
        source.close()
    _unchanged(task, stat.st_size, stat.st_mtime)


def prepare_segment(task: SegmentTask) -> Iterator[Chunk]:
    """Decode a later segment of a video (another worker planned it): Chunks. Raises VideoFailed."""
    from .decode import DecodeError, open_video

    video = task.video
    _unchanged(video, task.size, task.mtime)
    try:
        source = open_video(Path(video.path), video.decode_threads, video.resize_size, probe=task.probe)
    except DecodeError as exc:
        raise _failed(video, exc.stage, "DecodeError", str(exc)) from None
    try:
        if (source.info.decoder, source.info.frame_count) != (task.decoder, task.frame_count):
            raise _failed(video, "decode", "FileChanged", FILE_CHANGED)
        yield from _read_chunks(source, video, task.first_clip, task.clip_frames)
    finally:
        source.close()
    _unchanged(video, task.size, task.mtime)


def _read_chunks(source: Any, task: VideoTask, first_clip: int,
                 clip_frames: Sequence[tuple[int, ...]]) -> Iterator[Chunk]:
    """The frames of consecutive clips (the first is `first_clip`), `clips_per_chunk` clips per Chunk."""
    from .decode import DecodeError
    from .encoders import resize_crop

    for offset in range(0, len(clip_frames), task.clips_per_chunk):
        clips = clip_frames[offset : offset + task.clips_per_chunk]
        unique = sorted({i for frames in clips for i in frames})
        try:
            frames = source.read(unique)
        except DecodeError as exc:
            raise _failed(task, "decode", "DecodeError", str(exc)) from None
        except Exception as exc:  # decord raises its own types and RuntimeError
            raise VideoFailed(Failure.unexpected(task.given, "decode", exc)) from None
        if _test_hook(task.path, "modify") and first_clip + offset == 0:
            with open(task.path, "ab") as handle:
                handle.write(b"\0" * 16)
        if _test_hook(task.path, "slow"):  # a slow decoder (scripts/pool_schedule.py)
            time.sleep(float(os.environ.get(SLOW_ENV, "0.2")))
        pixels = resize_crop(frames, task.resize_size, task.crop_size).numpy()
        yield Chunk(first_clip + offset, len(clips), unique, pixels)


def _unchanged(task: VideoTask, size: int, mtime: float) -> None:
    """Raises VideoFailed if the file's size or mtime is no longer what the first read saw."""
    try:
        after = Path(task.path).stat()
    except OSError as exc:
        raise _failed(task, "decode", type(exc).__name__, exc.strerror or str(exc)) from None
    if (after.st_size, after.st_mtime) != (size, mtime):
        raise _failed(task, "decode", "FileChanged", FILE_CHANGED)


FILE_CHANGED = "file changed while being read; it will be retried next run"


def _failed(task: VideoTask, stage: str, error_type: str, message: str) -> VideoFailed:
    return VideoFailed(Failure(task.given, stage, error_type, message))


STARTUP_LIMIT = 300.0  # seconds a fresh worker may take to import its libraries


def _die_with_parent() -> None:
    """A worker whose main process is killed (kill -9, OOM) goes too, instead of decoding for nobody
    and holding the run's pipes open (Linux; elsewhere the worker ends at its next queue read error)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    parent = mp.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died before prctl took effect
        os._exit(1)


def _worker_main(tasks: Any, results: Any) -> None:
    _die_with_parent()
    import torch

    from . import decode, encoders, planning, sources, transcripts  # noqa: F401  (imported before saying ready)

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides what an interrupt means
    results.put((0, Ready()))
    while (item := tasks.get()) is not None:
        task_id, task = item
        prepare = prepare_segment if isinstance(task, SegmentTask) else prepare_video
        try:
            for message in prepare(task):
                results.put((task_id, message))
            results.put((task_id, End()))
        except VideoFailed as exc:
            results.put((task_id, exc.failure))
        except Exception as exc:  # anything else is still this video's failure, not the worker's end
            results.put((task_id, Failure.unexpected(task.given, "decode", exc)))




class DecodeWorker:
    """One decode process, restarted after a hang or crash; it decodes one unit at a time."""

    def __init__(self, timeout: float, queue_size: int = 4) -> None:
        self.timeout = timeout
        self.queue_size = queue_size
        self._ctx = mp.get_context("spawn")  # no forked copies of torch or decoder threads
        self._task_id = 0
        self._proc: Any = None
        self.unit: tuple[int, int] | None = None  # (video, segment) being decoded; None: idle
        self.given = ""  # its video, for the failures the worker cannot send itself
        self.last_progress = 0.0
        self._start()  # now, so its imports overlap the main process loading models

    def _start(self) -> None:
        self.ready = False
        self._tasks = self._ctx.Queue()
        self._results = self._ctx.Queue(maxsize=self.queue_size)  # bounded: a worker waits, memory stays flat
        self._proc = self._ctx.Process(target=_worker_main, args=(self._tasks, self._results), daemon=True,
                                       name="videobert-decode")
        self._proc.start()
        self.last_progress = time.monotonic()

    def submit(self, unit: tuple[int, int], task: VideoTask | SegmentTask) -> None:
        """Start decoding `task` now; its messages come from `poll`."""
        if self._proc is None or not self._proc.is_alive() or self.unit is not None:
            self.restart()  # a crashed worker, or one still on an abandoned unit
        self._task_id += 1
        self.unit, self.given = unit, task.given
        self.last_progress = time.monotonic()
        self._tasks.put((self._task_id, task))

    def poll(self) -> Header | Chunk | End | Failure | None:
        """The current unit's next message, if one has arrived (None: not yet). A Failure or End ends the unit;
        a hang or a crash is turned into a Failure here (and the worker restarted)."""
        while True:
            try:
                task_id, message = self._results.get_nowait()
            except queue.Empty:
                return self._stalled()
            if isinstance(message, Ready):
                self.ready = True
                self.last_progress = time.monotonic()
                continue
            if task_id != self._task_id or self.unit is None:
                continue  # left over from an abandoned unit
            self.last_progress = time.monotonic()
            if isinstance(message, (End, Failure)):
                self.unit = None
            return message

    def _stalled(self) -> Failure | None:
        if self.unit is None:
            return None
        if not self._proc.is_alive():
            code = self._proc.exitcode
            given = self.given
            self.restart()
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            return Failure(given, "decode", "DecoderCrashed", f"the decoder process died ({how})")
        limit = self.timeout if self.ready else STARTUP_LIMIT
        if time.monotonic() - self.last_progress > limit:
            given = self.given
            self.restart()
            return Failure(given, "decode", "Timeout", f"no progress for {limit:g} s (decoder hung); killed")
        return None

    def restart(self) -> None:
        self.close(graceful=False)
        self._start()
        self.unit = None

    def close(self, graceful: bool = True) -> None:
        if self._proc is None:
            return
        if graceful and self.unit is None and self._proc.is_alive():
            # An idle worker holds nothing: it is asked to stop, and killed if still tearing down its
            # interpreter (torch's modules take ~1 s to unload) after a moment.
            self._tasks.put(None)
            self._proc.join(timeout=0.1)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5)
        for q in (self._tasks, self._results):
            q.cancel_join_thread()
            q.close()
        self._proc = None


@dataclass
class _Video:
    """A video between its first unit and the main thread's last read of it."""

    index: int
    item: Any
    task: VideoTask
    buffers: dict[int, deque] = field(default_factory=dict)  # per segment: messages the main thread has not read
    ended: set[int] = field(default_factory=set)  # segments whose every chunk has arrived
    segments: int | None = None  # how many, once the Header says
    failure: Failure | None = None
    closed: bool = False  # the main thread is done with it: later messages are dropped

    def buffer(self, segment: int) -> deque:
        return self.buffers.setdefault(segment, deque())


class DecodePool:
    """Decode workers fed by a dispatcher thread; videos come back in input order.

    The dispatcher gives an idle worker the first unit in input order: the next segment of a video
    already planned, else the next video. It reads every worker's messages as they come into the
    videos' buffers, so a worker that has finished a unit gets the next one at once, whatever the main
    thread is doing. What is buffered is bounded: beyond `buffered_chunks` chunks (and `ahead` videos
    past the one the main thread reads), only the main thread's current video is read (up to
    HEAD_CHUNKS chunks per segment: at most one segment per worker is in flight) and planned ahead;
    the others wait in their workers' bounded queues."""

    def __init__(self, workers: int, timeout: float, buffered_chunks: int | None = None,
                 ahead: int | None = None) -> None:
        self.workers = [DecodeWorker(timeout) for _ in range(max(1, workers))]
        count = len(self.workers)
        self.budget = buffered_chunks or 4 * count
        self.ahead = ahead or 2 * count + 1
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._reset()

    def _reset(self) -> None:
        """The state of one list of videos (`run`), as it starts."""
        self._videos: dict[int, _Video] = {}
        self._pending: list[tuple[int, int, Any]] = []  # heap of (video, segment, SegmentTask)
        self._head = 0  # the video the main thread reads or waits for
        self._next = 0  # index of the next video to start
        self._exhausted = False  # every video has been started
        self._buffered = 0  # chunks in the videos' buffers
        self._error: BaseException | None = None
        self._closing = False

    def run(self, items: Iterable[T], task_of: Callable[[T], VideoTask]
            ) -> Iterator[tuple[T, Iterator[Header | Chunk | Failure]]]:
        """(item, its messages) in input order; the messages end after the last Chunk or with a Failure.
        A video whose messages are left half-read is dropped when the next one is asked for."""
        self._stop_dispatcher()  # a pool may run several lists, one at a time (the workers stay warm)
        for worker in self.workers:
            if worker.unit is not None:  # still on a unit of the last list: its messages are not for this one
                worker.restart()
        self._reset()
        self._thread = threading.Thread(target=self._dispatch, args=(iter(items), task_of), daemon=True,
                                         name="videobert-dispatch")
        self._thread.start()
        index = 0
        while True:
            with self._cond:
                self._head = index
                self._cond.notify_all()
                while index not in self._videos and not (self._exhausted and index >= self._next):
                    self._raise()
                    self._cond.wait(0.5)
                self._raise()
                video = self._videos.get(index)
            if video is None:
                return
            try:
                yield video.item, self._messages(video)
            finally:
                self._forget(video)
            index += 1

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _messages(self, video: _Video) -> Iterator[Header | Chunk | Failure]:
        segment = 0
        while True:
            with self._cond:
                while True:
                    self._raise()
                    if video.failure is not None:
                        message: Any = video.failure
                        break
                    buffer = video.buffer(segment)
                    if buffer:
                        message = buffer.popleft()
                        if isinstance(message, Chunk):
                            self._buffered -= 1
                            self._cond.notify_all()
                        break
                    if segment in video.ended:
                        segment += 1
                        if video.segments is not None and segment >= video.segments:
                            return
                        continue
                    self._cond.wait(0.5)
            yield message
            if isinstance(message, Failure):
                return

    def _forget(self, video: _Video) -> None:
        """The main thread is done with `video`: drop what is left of it."""
        with self._cond:
            video.closed = True
            self._buffered -= sum(1 for b in video.buffers.values() for m in b if isinstance(m, Chunk))
            video.buffers.clear()
            self._drop_pending(video)
            self._videos.pop(video.index, None)
            self._cond.notify_all()

    # The dispatcher thread.

    def _dispatch(self, items: Iterator[T], task_of: Callable[[T], VideoTask]) -> None:
        idle_wait = 0.001
        try:
            while not self._closing:
                busy = self._assign(items, task_of)
                busy = self._collect() or busy
                with self._cond:
                    if busy:
                        idle_wait = 0.001
                    else:  # nothing happened: wait a little longer each time (at most 20 ms), or a main-thread read
                        self._cond.wait(idle_wait)
                        idle_wait = min(0.02, idle_wait * 2)
        except BaseException as exc:  # handed to the main thread, which raises it
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def _assign(self, items: Iterator[T], task_of: Callable[[T], VideoTask]) -> bool:
        """Give every idle worker the first unit in input order that the bounds allow."""
        assigned = False
        for worker in self.workers:
            if worker.unit is not None:
                continue
            with self._cond:
                room = self._buffered < self.budget
                if self._closing:
                    return assigned
                if self._pending and (self._pending[0][0] == self._head or room):
                    index, segment, task = heapq.heappop(self._pending)
                    worker.submit((index, segment), task)
                    assigned = True
                    continue
                start = not self._exhausted and (self._next == self._head
                                                 or (room and self._next - self._head < self.ahead))
            if not start:
                return assigned
            item = next(items, _DONE)  # outside the lock: task_of may wait (for speech recognition)
            task = task_of(item) if item is not _DONE else None
            with self._cond:
                if item is _DONE:
                    self._exhausted = True
                    self._cond.notify_all()
                    return assigned
                index = self._next
                self._videos[index] = _Video(index, item, task)
                self._next += 1
                self._cond.notify_all()
            worker.submit((index, 0), task)
            assigned = True
        return assigned

    def _collect(self) -> bool:
        """Move the workers' messages into their videos' buffers (within the bounds); True if any moved."""
        moved = False
        for worker in self.workers:
            while worker.unit is not None:
                index, segment = worker.unit
                with self._cond:
                    video = self._videos.get(index)
                    if video is not None and index != self._head and self._buffered >= self.budget:
                        break  # it waits in the worker's bounded queue
                    if video is not None and index == self._head and len(video.buffer(segment)) >= HEAD_CHUNKS:
                        break
                message = worker.poll()
                if message is None:
                    break
                moved = True
                with self._cond:
                    self._route(video, segment, message)
        return moved

    def _drop_pending(self, video: _Video) -> None:
        """With the lock held: the segments of `video` not handed out yet are not needed any more."""
        self._pending = [p for p in self._pending if p[0] != video.index]
        heapq.heapify(self._pending)

    def _route(self, video: _Video | None, segment: int, message: Header | Chunk | End | Failure) -> None:
        """With the lock held: one message into its video's buffer."""
        if video is None or video.closed or video.failure is not None:
            return  # the main thread dropped it, or it already failed: the rest is not needed
        if isinstance(message, Failure):
            video.failure = message
            self._drop_pending(video)
        elif isinstance(message, End):
            video.ended.add(segment)
        else:
            video.buffer(segment).append(message)
            if isinstance(message, Chunk):
                self._buffered += 1
            elif isinstance(message, Header):
                video.segments = len(message.segments) or 1
                for number, (first, count) in enumerate(message.segments[1:], start=1):
                    frames = tuple(c.frame_indices for c in message.plan.clips[first : first + count])
                    task = SegmentTask(video.task, first, frames, message.size, message.mtime, message.info.decoder,
                                       message.info.frame_count, message.probe)
                    heapq.heappush(self._pending, (video.index, number, task))
        self._cond.notify_all()

    def _stop_dispatcher(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._thread = None

    def close(self) -> None:
        self._stop_dispatcher()
        for worker in self.workers:
            worker.close(graceful=worker.unit is None)


HEAD_CHUNKS = 8  # chunks read ahead per segment of the main thread's video, whatever the budget
_DONE = object()
