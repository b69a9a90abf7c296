"""Decode sampled frames: decord first, PyAV where decord is known to be wrong.

We depend on the `decord2` distribution (it installs as `import decord`): it is
maintained, bundles a current FFmpeg (AV1 opens), and ships aarch64 wheels;
decord 0.6.0 has had no release since 2021. Both return wrong frames on
open-GOP HEVC, so HEVC goes to PyAV, as does any file decord will not open.
The decoder used, and why, is recorded per video.

A `VideoSource` gives the real presentation timestamp of every frame (variable
frame rate safe) and reads a sorted list of frame indices as RGB uint8
(n, H, W, 3) with rotation metadata applied. Only the asked-for frames are
held in memory.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

log = logging.getLogger(__name__)

try:
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    DECORD_ERRORS: tuple[type[BaseException], ...] = (
        decord.DECORDError,
        decord.DECORDLimitReachedError,  # not a subclass of DECORDError
        RuntimeError,
        IndexError,
    )
except ImportError:  # pragma: no cover - decord2 is a hard dependency
    decord = None
    DECORD_ERRORS = (RuntimeError, IndexError)

av.logging.set_level(av.logging.PANIC)

# decord returns frames off by one after a keyframe on open-GOP HEVC.
PYAV_CODECS = {"hevc": "decord returns wrong frames on open-GOP HEVC"}


class DecodeError(Exception):
    """A video that cannot be decoded; `stage` says where it failed."""

    def __init__(self, message: str, stage: str = "decode") -> None:
        super().__init__(message)
        self.stage = stage


@dataclass(frozen=True)
class VideoInfo:
    decoder: str  # "decord" or "pyav"
    decoder_note: str  # why PyAV was used, empty for decord
    codec: str
    frame_count: int
    fps: float  # average, for information only; never used to map times
    duration: float  # end of the last frame
    width: int  # of decoded frames (rotation applied)
    height: int
    frame_starts: np.ndarray  # (frame_count,) presentation time of each frame, seconds


def _probe_codec(path: Path) -> tuple[str, int]:
    """(codec name, frame count an MP4/MOV sample table declares, else 0).

    Other containers' counts are estimates (AVI's can be far off), so they are not used."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DecodeError("no video stream (audio-only or not a video)", stage="probe")
            stream = container.streams.video[0]
            declared = int(stream.frames or 0) if "mp4" in container.format.name else 0
            return stream.codec_context.name, declared
    except DecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"not a readable video ({type(exc).__name__}: {exc})", stage="probe") from None


# decord is parked (see DecordSource) once no frame has been asked of it for this long.
PARK_AFTER_S = 0.1


class DecordSource:
    """decord, read forward one frame at a time and parked whenever the caller pauses.

    Two faults of decord2 (3.4.0), both measured on this pipeline, decide how it is read:
    * It runs ahead. While it waits for a frame, its reading thread hands the decoding thread one
      more packet per poll, so a decoder short of CPU leaves it hundreds to thousands of packets
      ahead (up to 10,000, or the end of the file). When the call returns, the decoding thread
      goes on turning each of them into an RGB frame (0.7 MB at 640x360) and holds them until the
      next seek, for as long as the worker waits to hand its chunk over: the decode worker grew
      to 6 GB on a 20-minute video (the end of the file caps it near 1 GB on a 1-minute one).
      A seek empties those queues and stops that thread, so a helper thread "parks" decord with
      a seek to frame 0 once it has been idle for PARK_AFTER_S, and a read that finds it parked
      starts again at the keyframe before its first frame (at most one keyframe interval decoded
      twice, and only after a pause). Reads that follow each other closely keep going forward.
    * Its skip gives up after 10,000 polls without a frame (a skip of more than a few dozen frames
      once the decoder has no head start) and the frames after it come back as the asked-for
      ones, dozens of frames off, with no error. So frames are never skipped with decord: reads
      seek exactly to keyframes (`get_batch([keyframe])`, which skips nothing) and step with
      `next`, which waits for every frame (it costs about what `get_batch`'s skipping does).
    """

    def __init__(self, path: Path, threads: int, codec: str, short_side: int | None = None) -> None:
        self._reader = decord.VideoReader(str(path), num_threads=threads)
        n = len(self._reader)
        if n == 0:
            raise DecodeError("video stream has no frames")
        self._count = n
        self._keys = sorted({0, *self._reader.get_key_indices()})  # before its first keyframe decord starts at 0
        self._next = -1  # the frame decord's `next` returns; -1: parked (or unknown), seek first
        # decord gives float32 seconds; round to microseconds so 0.9 is stored as 0.9.
        stamps = np.round(self._reader.get_frame_timestamp(range(n)).astype(np.float64), 6)
        first = self._read([0])
        self._park()
        height, width = int(first.shape[1]), int(first.shape[2])
        if short_side and min(height, width) > 2 * short_side:
            self._resize_at_decode(path, threads, width, height, short_side)
        self.info = VideoInfo(
            decoder="decord",
            decoder_note="",
            codec=codec,
            frame_count=n,
            fps=float(self._reader.get_avg_fps()),
            duration=float(stamps[-1, 1]),
            height=height,
            width=width,
            frame_starts=stamps[:, 0],
        )
        self._lock = threading.Condition()
        self._park_at: float | None = None  # monotonic time to park at; None: parked, or closed
        self._closed = False
        threading.Thread(target=_park_when_idle, args=(weakref.ref(self), self._lock), daemon=True,
                         name="videobert-decord-park").start()

    def _resize_at_decode(self, path: Path, threads: int, width: int, height: int, short_side: int) -> None:
        """Let decord scale large frames (4K) down while converting, instead of copying them whole.

        decord's width/height stretch, so keep the aspect ratio here; the exact resize and crop
        happen later. Some sizes make decord2 fail (a buffer size check), so the scaled reader is
        tried on one frame and kept only if it gives the size asked for.
        """
        scale = short_side / min(width, height)
        w, h = max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)
        try:
            scaled = decord.VideoReader(str(path), num_threads=threads, width=w, height=h)
            shape = scaled.get_batch([0]).asnumpy().shape[1:3]
            _seek_start(scaled)
            if shape == (h, w):
                self._reader = scaled
        except DECORD_ERRORS as exc:
            log.debug("%s: decode-time resize to %dx%d failed (%s); decoding at full size", path, w, h, exc)

    def read(self, indices: list[int]) -> np.ndarray:
        with self._lock:
            if self._closed:
                raise DecodeError("video source is closed")
            try:
                return self._read(indices)
            finally:
                self._park_at = time.monotonic() + PARK_AFTER_S
                self._lock.notify()

    def _read(self, indices: list[int]) -> np.ndarray:
        """The frames at `indices` (any order, repeats allowed), decoded forward frame by frame."""
        wanted = sorted(set(int(i) for i in indices))
        if wanted and (wanted[0] < 0 or wanted[-1] >= self._count):
            raise IndexError(f"frame index out of range 0..{self._count - 1}")
        got: dict[int, np.ndarray] = {}
        try:
            for index in wanted:
                key = self._keys[bisect.bisect_right(self._keys, index) - 1]
                if self._next < 0 or index < self._next or key > self._next:  # parked, backwards, past a keyframe
                    frame = self._reader.get_batch([key]).asnumpy()[0]  # exact: lands on the keyframe, skips nothing
                    self._next = key + 1
                    if index == key:
                        got[index] = frame
                        continue
                while self._next < index:
                    self._reader.next()
                    self._next += 1
                got[index] = self._reader.next().asnumpy()
                self._next += 1
        except BaseException:
            self._next = -1  # position unknown: the next read seeks
            raise
        return np.stack([got[int(i)] for i in indices])

    def _park(self) -> None:
        """Seek to frame 0: decord drops what it decoded ahead and its decoding thread stops."""
        self._next = -1
        _seek_start(self._reader)

    def _park_if_idle(self) -> float | None:
        """With the lock held: park if the last read is PARK_AFTER_S old; else the seconds left (None: nothing to do)."""
        if self._park_at is None or self._closed:
            return None
        left = self._park_at - time.monotonic()
        if left > 0:
            return left
        self._park_at = None
        self._park()
        return None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._park_at = None
            self._lock.notify()
            self._reader = None


def _park_when_idle(ref: "weakref.ref[DecordSource]", lock: threading.Condition) -> None:
    """The parking thread of one DecordSource; it ends when the source is closed or collected."""
    with lock:
        while True:
            source = ref()
            if source is None or source._closed:
                return
            try:
                wait = source._park_if_idle()
            except Exception as exc:  # noqa: BLE001  (a failed park costs memory, never frames: reads seek)
                log.debug("decord: parking failed (%s)", exc)
                wait = None
            del source
            lock.wait(timeout=wait if wait is not None else 1.0)  # wakes on every read and on close


def _seek_start(reader: "decord.VideoReader") -> None:
    try:
        reader.seek(0)
    except DECORD_ERRORS as exc:  # the next read seeks to its own keyframe anyway
        log.debug("decord: seek to the start failed (%s)", exc)


class PyAVSource:
    """Decodes forward from the nearest keyframe; frames are matched by timestamp."""

    def __init__(self, path: Path, threads: int, codec: str, note: str) -> None:
        self._container = av.open(str(path))
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self._stream.codec_context.thread_count = threads
        tb = self._stream.time_base
        # Demux (no decoding) to learn every frame's timestamp.
        pts = sorted(p.pts for p in self._container.demux(self._stream) if p.pts is not None and p.size)
        if not pts:
            raise DecodeError("video stream has no frames")
        self._pts = np.asarray(pts, dtype=np.int64)
        starts = self._pts.astype(np.float64) * float(tb)
        offset = starts[0]  # decord reports times from the first frame; do the same
        starts = np.round(starts - offset, 6)
        step = float(np.median(np.diff(starts))) if len(starts) > 1 else 0.0
        self._frames = None
        self._last_pts: int | None = None
        self._cached_pts: int | None = None
        self._cached_image: np.ndarray | None = None
        first = self.read([0])
        self.info = VideoInfo(
            decoder="pyav",
            decoder_note=note,
            codec=codec,
            frame_count=len(pts),
            fps=float(self._stream.average_rate or 0.0),
            duration=float(starts[-1] + step) if step else float(starts[-1]),
            height=int(first.shape[1]),
            width=int(first.shape[2]),
            frame_starts=starts,
        )

    def _seek(self, target: int) -> None:
        self._container.seek(int(target), stream=self._stream, backward=True, any_frame=False)
        self._frames = self._container.decode(self._stream)
        self._last_pts = None

    def read(self, indices: list[int]) -> np.ndarray:
        out = []
        for target in self._pts[indices]:
            if target != self._cached_pts:
                self._cached_image = self._decode_at(int(target))
                self._cached_pts = int(target)
            out.append(self._cached_image)
        return np.stack(out)

    def _decode_at(self, target: int) -> np.ndarray:
        if self._frames is None or self._last_pts is None or target <= self._last_pts:
            self._seek(target)
        for frame in self._frames:
            if frame.pts is None:
                continue
            self._last_pts = frame.pts
            if frame.pts >= target:
                break
        else:
            raise DecodeError(f"frame at pts {target} could not be decoded (stream ended)")
        if frame.pts != target:
            raise DecodeError(f"frame at pts {target} could not be decoded (got pts {frame.pts})")
        image = frame.to_ndarray(format="rgb24")
        rotation = getattr(frame, "rotation", 0) or 0
        if rotation % 360:
            # The display matrix rotation is counter-clockwise, in degrees.
            image = np.ascontiguousarray(np.rot90(image, k=int(rotation // 90) % 4))
        return image

    def close(self) -> None:
        self._container.close()


def open_video(path: Path, threads: int = 1, short_side: int | None = None) -> DecordSource | PyAVSource:
    """Open `path` with the right decoder; raises DecodeError with a one-line reason.

    `short_side`: frames whose short side is over twice this may be scaled to it while decoding.
    `info.width/height` are always the video's own (rotated) size.
    """
    codec, declared = _probe_codec(path)
    source = _open(path, threads, short_side, codec)
    found = source.info.frame_count
    if declared and found < declared - 1:
        source.close()
        raise DecodeError(f"truncated: the container declares {declared} frames but only {found} are present")
    return source


def _open(path: Path, threads: int, short_side: int | None, codec: str) -> DecordSource | PyAVSource:
    note = PYAV_CODECS.get(codec, "")
    if not note:
        try:
            return DecordSource(path, threads, codec, short_side)
        except DecodeError:
            raise
        except DECORD_ERRORS as exc:
            note = f"decord could not open it ({type(exc).__name__}: {str(exc).strip().splitlines()[-1][:160]})"
            log.warning("%s: %s; decoding with PyAV", path, note)
    try:
        return PyAVSource(path, threads, codec, note)
    except DecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError, StopIteration) as exc:
        raise DecodeError(f"cannot decode ({type(exc).__name__}: {exc})") from None
