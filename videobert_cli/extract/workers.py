"""Decode in a separate process, so a hanging or crashing decoder fails one video, not the run.

The worker reads the transcript, opens the video, plans its clips and streams
the sampled frames (resized and cropped, uint8) back chunk by chunk through a
bounded queue, so memory stays flat whatever the video's length. The main
process waits at most `timeout` seconds for each message: a decoder that makes
no progress for that long, or whose process dies (a native crash), is killed,
the video fails with stage "decode", and a fresh worker takes the next video.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from collections import deque
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np

from .failures import Failure, VideoFailed
from .planning import VideoPlan
from .transcripts import Transcript

# Test hook, comma-separated: "hang:<name part>", "crash:<name part>", "modify:<name part>".
TEST_HOOK_ENV = "VIDEOBERT_TEST_HOOK"
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


@dataclass
class Header:
    info: Any  # decode.VideoInfo
    plan: VideoPlan
    transcript: Transcript
    size: int
    mtime: float


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
    from .encoders import resize_crop
    from .planning import plan_clips
    from .sources import select_transcript
    from .transcripts import TranscriptError

    def failed(stage: str, error_type: str, message: str) -> VideoFailed:
        return VideoFailed(Failure(task.given, stage, error_type, message))

    path = Path(task.path)
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        raise failed("probe", "BadFileName", "file name is not valid UTF-8; rename it") from None
    if path.is_dir():
        raise failed("probe", "IsADirectoryError", "is a directory, not a video file")
    try:
        stat = path.stat()
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise failed("probe", type(exc).__name__, exc.strerror or str(exc)) from None
    if stat.st_size == 0:
        raise failed("probe", "EmptyFile", "file is empty (0 bytes)")
    if task.asr_error:
        raise failed("asr", "RecognitionError", task.asr_error)
    try:
        transcript = select_transcript(path, task.sources, Path(task.transcript) if task.transcript else None,
                                       task.subtitle_langs, Path(task.asr_json) if task.asr_json else None,
                                       task.asr_model)
    except TranscriptError as exc:
        raise failed("transcript", "TranscriptError", str(exc)) from None
    if _test_hook(task.path, "hang"):
        time.sleep(3600)
    if _test_hook(task.path, "crash"):
        os.kill(os.getpid(), signal.SIGSEGV)
    try:
        source = open_video(path, task.decode_threads, task.resize_size)
    except DecodeError as exc:
        raise failed(exc.stage, "DecodeError", str(exc)) from None
    try:
        info = source.info
        plan = plan_clips(info.duration, info.frame_starts, transcript, mode=task.clip_mode,
                          clip_seconds=task.clip_seconds, min_clip_seconds=task.min_clip_seconds,
                          frames_per_clip=task.frames_per_clip)
        yield Header(info, plan, plan.transcript, stat.st_size, stat.st_mtime)
        clips = plan.clips
        for first in range(0, len(clips), task.clips_per_chunk):
            chunk = clips[first : first + task.clips_per_chunk]
            unique = sorted({i for clip in chunk for i in clip.frame_indices})
            try:
                frames = source.read(unique)
            except DecodeError as exc:
                raise failed("decode", "DecodeError", str(exc)) from None
            except Exception as exc:  # decord raises its own types and RuntimeError
                raise VideoFailed(Failure.unexpected(task.given, "decode", exc)) from None
            if _test_hook(task.path, "modify") and first == 0:
                with open(path, "ab") as handle:
                    handle.write(b"\0" * 16)
            pixels = resize_crop(frames, task.resize_size, task.crop_size).numpy()
            yield Chunk(first, len(chunk), unique, pixels)
    finally:
        source.close()
    after = path.stat()
    if (after.st_size, after.st_mtime) != (stat.st_size, stat.st_mtime):
        raise failed("decode", "FileChanged", "file changed while being read; it will be retried next run")


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
    import torchvision.transforms.v2.functional  # noqa: F401  (resize_crop's; ~2 s, while the models load)

    from . import decode, encoders, planning, sources, transcripts  # noqa: F401  (imported before saying ready)

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides what an interrupt means
    results.put((0, Ready()))
    while (item := tasks.get()) is not None:
        task_id, task = item
        try:
            for message in prepare_video(task):
                results.put((task_id, message))
            results.put((task_id, End()))
        except VideoFailed as exc:
            results.put((task_id, exc.failure))
        except Exception as exc:  # anything else is still this video's failure, not the worker's end
            results.put((task_id, Failure.unexpected(task.given, "decode", exc)))


class DecodeWorker:
    """One decode process, restarted after a hang or crash."""

    def __init__(self, timeout: float, queue_size: int = 4) -> None:
        self.timeout = timeout
        self.queue_size = queue_size
        self._ctx = mp.get_context("spawn")  # no forked copies of torch or decoder threads
        self._task_id = 0
        self._given = ""  # the submitted task's video, for the failures the worker cannot send itself
        self._proc: Any = None
        self._busy = False
        self._start()  # now, so its imports overlap the main process loading models

    def _start(self) -> None:
        self._ready = False
        self._tasks = self._ctx.Queue()
        self._results = self._ctx.Queue(maxsize=self.queue_size)
        self._proc = self._ctx.Process(target=_worker_main, args=(self._tasks, self._results), daemon=True,
                                       name="videobert-decode")
        self._proc.start()

    def submit(self, task: VideoTask) -> None:
        """Start decoding `task` now; read it later with `messages()`."""
        if self._proc is None or not self._proc.is_alive() or self._busy:
            self.restart()  # a crashed worker, or a task whose messages were abandoned half-read
        self._task_id += 1
        self._given = task.given
        self._busy = True
        self._tasks.put((self._task_id, task))

    def messages(self) -> Iterator[Header | Chunk | Failure]:
        """The submitted task's messages; ends after its last Chunk or with a Failure."""
        last_progress = time.monotonic()
        while True:
            try:
                task_id, message = self._results.get(timeout=min(1.0, self.timeout))
            except queue.Empty:
                if not self._proc.is_alive():
                    code = self._proc.exitcode
                    self.restart()
                    how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                    yield Failure(self._given, "decode", "DecoderCrashed", f"the decoder process died ({how})")
                    return
                limit = self.timeout if self._ready else STARTUP_LIMIT
                if time.monotonic() - last_progress > limit:
                    self.restart()
                    yield Failure(self._given, "decode", "Timeout",
                                  f"no progress for {limit:g} s (decoder hung); killed")
                    return
                continue
            if isinstance(message, Ready):
                self._ready = True
                last_progress = time.monotonic()
                continue
            if task_id != self._task_id:
                continue  # left over from an abandoned task
            last_progress = time.monotonic()
            if isinstance(message, End):
                self._busy = False
                return
            yield message
            if isinstance(message, Failure):
                self._busy = False
                return

    def run(self, task: VideoTask) -> Iterator[Header | Chunk | Failure]:
        self.submit(task)
        return self.messages()

    def restart(self) -> None:
        self.close(graceful=False)
        self._start()
        self._busy = False

    def close(self, graceful: bool = True) -> None:
        if self._proc is None:
            return
        if graceful and not self._busy and self._proc.is_alive():
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


class DecodePool:
    """Several decode workers; videos are handed out round-robin and read back in order.

    While the main process encodes video i, the other workers are already
    decoding videos i+1 ... i+n-1 (each into its own bounded queue)."""

    def __init__(self, workers: int, timeout: float) -> None:
        self.workers = [DecodeWorker(timeout) for _ in range(max(1, workers))]

    def run(self, items: Iterable[T], task_of: Callable[[T], VideoTask]
            ) -> Iterator[tuple[T, Iterator[Header | Chunk | Failure]]]:
        pending = iter(items)
        in_flight: deque[tuple[DecodeWorker, T]] = deque()
        for worker in self.workers:
            item = next(pending, _DONE)
            if item is _DONE:
                break
            worker.submit(task_of(item))
            in_flight.append((worker, item))
        while in_flight:
            worker, item = in_flight.popleft()
            yield item, worker.messages()
            nxt = next(pending, _DONE)
            if nxt is not _DONE:
                worker.submit(task_of(nxt))  # restarts the worker if the caller left its messages half-read
                in_flight.append((worker, nxt))

    def close(self) -> None:
        for worker in self.workers:
            worker.close(graceful=not worker._busy)


_DONE = object()
