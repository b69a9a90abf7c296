"""Decode sampled frames: decord where it is proven right for the file, PyAV otherwise.

We depend on the `decord2` distribution (it installs as `import decord`): it is
maintained, bundles a current FFmpeg (AV1 opens), and ships aarch64 wheels;
decord 0.6.0 has had no release since 2021. decord is faster, but it is silently
wrong on some files, so every file is first demuxed with PyAV (packets only, no
decoding: cheap) and decord is kept only where it agrees with that demux:

* open GOP (x264 `open-gop`, MPEG-2's default, HEVC): decord numbers frames
  around each keyframe in decode order, so its keyframe indices are off (on an
  x264 file, [0, 9, 21, ...] for [0, 12, 24, ...]) and reads come back frames
  off, with no error. Its keyframe indices must equal the keyframe positions in
  presentation order (packets sorted by pts);
* missing timestamps (xvid/MPEG-4 or H.264 with B-frames in AVI, MPEG-PS):
  decord reports AV_NOPTS_VALUE (about -9.2e17 s) as frame times;
* B-frames in MPEG-TS/PS: decord's frames start late (4 frames on a closed-GOP
  x264 TS) although its keyframes match, so such files go to PyAV too;
* its frame count and frame times must equal the demuxed ones.

A file that fails any check goes to PyAV (which reads forward from a keyframe
and matches frames by timestamp), and the reason is recorded in
`VideoInfo.decoder_note`. HEVC always goes to PyAV.

AVI stores no presentation times (FFmpeg guesses them from decode order, wrong
with B-frames); it is constant-rate by definition, one frame per time slot, so
its frames are timed by their slots and read by counting frames in output order.
That is noted too: no time is ever invented silently.

The duration is the last frame's start plus its length (from the container,
else the median frame step), the same for both decoders; decord's own end of
the last frame equals its start in MPEG-TS and AVI.

A `VideoSource` gives the real presentation timestamp of every frame (variable
frame rate safe) and reads a sorted list of frame indices as RGB uint8
(n, H, W, 3) with rotation metadata applied. Only the asked-for frames are
held in memory. Container metadata is read with undecodable bytes ignored:
real files carry non-UTF-8 titles.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import av
import numpy as np

log = logging.getLogger(__name__)

# torch before decord, always: decord2 (3.4.0) loads every library under site-packages/nvidia/*/lib with
# RTLD_GLOBAL when it is imported, NVBLAS among them (torch's CUDA wheels install it), and NVBLAS then
# takes the BLAS calls of a torch loaded after it: its first matmul or convolution crashes (SIGSEGV).
import torch  # noqa: F401,E402

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
    # Frames a read can start from without decoding any frame before them (keyframes, in presentation
    # order); None where this decoder always reads from the start (frames timed by slots, e.g. AVI).
    keyframes: tuple[int, ...] | None = None


class VideoSource(Protocol):
    """An open video, whichever decoder reads it (DecordSource, PyAVSource)."""

    @property
    def info(self) -> VideoInfo: ...

    probe: Probe  # the demux it was opened with (set by open_video)

    def read(self, indices: list[int]) -> np.ndarray:
        """The frames at `indices` (frame numbers), RGB uint8 (n, H, W, 3) with rotation applied."""
        ...

    def close(self) -> None: ...


def _open_container(path: Path) -> "av.container.InputContainer":
    """Open for reading; metadata that is not UTF-8 (seen in real AVIs) is read with those bytes dropped."""
    return av.open(str(path), metadata_errors="ignore")


@dataclass(frozen=True)
class Probe:
    """What a demux of the first video stream (packets only, no decoding) says about its frames."""

    codec: str
    declared: int  # frame count an MP4/MOV sample table declares, else 0
    container: str  # FFmpeg's format name, e.g. "avi", "mpegts", "mov,mp4,m4a,3gp,3g2,mj2"
    frame_starts: np.ndarray  # (n,) presentation time of each frame from the first, seconds, sorted
    keyframes: tuple[int, ...] | None  # keyframe positions in presentation order; None: not knowable
    keyframes_in_decode_order: tuple[int, ...]
    last_length: float  # the last frame's display length per the container; 0: not stored
    timing: str  # "pts": from stored timestamps; "slots": frame i in output order is the i-th time slot
    timing_note: str  # how times were derived where not from stored timestamps, else ""
    reordered: bool  # frames are decoded in another order than shown (B-frames): pts fall somewhere in decode order

    @property
    def frame_count(self) -> int:
        return len(self.frame_starts)

    @property
    def duration(self) -> float:
        return video_duration(self.frame_starts, self.last_length)


def video_duration(starts: np.ndarray, last_length: float) -> float:
    """End of the last frame: its start plus its length, else plus the median frame step."""
    if len(starts) == 0:
        return 0.0
    if last_length <= 0 and len(starts) > 1:
        last_length = float(np.median(np.diff(starts)))
    return round(float(starts[-1]) + max(last_length, 0.0), 6)


def _probe(path: Path) -> Probe:
    """Demux `path` once; raises DecodeError (stage "probe") for anything that is not a video.

    Frame counts that non-MP4 containers declare are estimates (AVI's can be far off), so they are not used."""
    try:
        with _open_container(path) as container:
            if not container.streams.video:
                raise DecodeError("no video stream (audio-only or not a video)", stage="probe")
            stream = container.streams.video[0]
            fmt = container.format.name
            declared = int(stream.frames or 0) if "mp4" in fmt else 0
            codec = stream.codec_context.name
            tb = float(stream.time_base) if stream.time_base else 0.0
            rate = float(stream.average_rate or stream.base_rate or 0.0)
            packets = [(p.pts, p.dts, bool(p.is_keyframe), int(p.duration or 0))
                       for p in container.demux(stream) if p.size]
    except DecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"not a readable video ({type(exc).__name__}: {exc})", stage="probe") from None
    return _timeline(codec, declared, fmt, packets, tb, rate)


def _timeline(codec: str, declared: int, fmt: str, packets: list[tuple[int | None, int | None, bool, int]],
              tb: float, rate: float) -> Probe:
    """Frame times and keyframe positions from demuxed (pts, dts, keyframe, duration) packets, in file order."""
    decode_keys = tuple(i for i, p in enumerate(packets) if p[2])
    pts = [p[0] for p in packets]
    dts = [p[1] for p in packets]
    note = ""
    shown = [t for t in pts if t is not None]
    reordered = any(b < a for a, b in zip(shown, shown[1:]))
    keys: tuple[int, ...] | None = None
    last_length = 0.0
    if "avi" not in fmt and packets and None not in pts and len(set(pts)) == len(pts):
        order = sorted(range(len(packets)), key=lambda i: pts[i])
        ticks = np.asarray([pts[i] for i in order], dtype=np.float64)
        keys = tuple(k for k, i in enumerate(order) if packets[i][2])
        last_length = packets[order[-1]][3] * tb
        timing = "pts"
    elif packets and None not in dts and len(set(dts)) == len(dts) and tb > 0:
        # One frame per time slot (AVI by definition): the frames shown are the slots the packets fill,
        # in order, whatever order they are decoded in.
        ticks = np.sort(np.asarray(dts, dtype=np.float64))
        last_length = packets[-1][3] * tb
        timing = "slots"
        note = ("AVI stores no presentation times: frames are timed by their constant-rate slots, in output order"
                if "avi" in fmt else
                "the container stores no usable presentation times: frames are timed by their decode-time slots, "
                "in output order")
    else:
        if rate <= 0:
            raise DecodeError("the container stores no usable timestamps and no frame rate", stage="probe")
        ticks = np.arange(len(packets), dtype=np.float64) / rate
        tb = 1.0
        last_length = 1.0 / rate
        timing = "slots"
        note = f"the container stores no usable timestamps: frame i is timed i / {rate:g} fps (its declared rate)"
    if not len(ticks):
        raise DecodeError("video stream has no frames")
    starts = np.round((ticks - ticks[0]) * tb, 6)
    return Probe(codec=codec, declared=declared, container=fmt, frame_starts=starts, keyframes=keys,
                 keyframes_in_decode_order=decode_keys, last_length=max(float(last_length), 0.0),
                 timing=timing, timing_note=note, reordered=reordered)


class DecordDisagrees(Exception):
    """decord's view of a file contradicts its demux: its frames cannot be trusted there."""


# decord's frame times may differ from the demuxed ones by float32 rounding, no more.
TIME_TOLERANCE_S = 1e-3


def decord_fault(probe: Probe, decord_keys: list[int], decord_starts: np.ndarray) -> str:
    """Why decord cannot be trusted on this file, or "" if its numbering matches the demux."""
    n = len(decord_starts)
    if not np.all(np.isfinite(decord_starts)) or decord_starts.min() < -TIME_TOLERANCE_S \
            or np.any(np.diff(decord_starts) <= 0):
        return "decord has no valid frame timestamps (AV_NOPTS_VALUE or out of order)"
    if n != probe.frame_count:
        return f"decord counts {n} frames where the container holds {probe.frame_count}"
    expected = probe.keyframes if probe.keyframes is not None else probe.keyframes_in_decode_order
    if set(decord_keys) != {0, *expected}:
        if probe.keyframes is None:
            return "decord's keyframe numbering does not match the file's (B-frames in a container without pts)"
        return "open-GOP: decord's keyframe numbering does not match presentation order"
    if probe.reordered and probe.container in ("mpegts", "mpeg"):
        return "B-frames in MPEG-TS/PS: decord starts frames late (4 frames on an x264 TS), with matching keyframes"
    if np.abs(decord_starts - probe.frame_starts).max() > TIME_TOLERANCE_S:
        return "decord's frame times disagree with the container's timestamps"
    return ""


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

    def __init__(self, path: Path, threads: int, probe: Probe, short_side: int | None = None) -> None:
        self._reader = decord.VideoReader(str(path), num_threads=threads)
        n = len(self._reader)
        if n == 0:
            raise DecodeError("video stream has no frames")
        self._count = n
        self._keys = sorted({0, *self._reader.get_key_indices()})  # before its first keyframe decord starts at 0
        self._next = -1  # the frame decord's `next` returns; -1: parked (or unknown), seek first
        # decord gives float32 seconds; round to microseconds so 0.9 is stored as 0.9.
        stamps = np.round(self._reader.get_frame_timestamp(range(n)).astype(np.float64), 6)
        fault = decord_fault(probe, self._keys, stamps[:, 0])
        if fault:
            self._reader = None
            raise DecordDisagrees(fault)
        first = self._read([0])
        self._park()
        height, width = int(first.shape[1]), int(first.shape[2])
        if short_side and min(height, width) > 2 * short_side:
            self._resize_at_decode(path, threads, width, height, short_side)
        self.info = VideoInfo(
            decoder="decord",
            decoder_note="",
            codec=probe.codec,
            frame_count=n,
            fps=float(self._reader.get_avg_fps()),
            duration=probe.duration,  # decord's own end of the last frame is its start in MPEG-TS and AVI
            height=height,
            width=width,
            frame_starts=stamps[:, 0],
            keyframes=tuple(self._keys),
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
    """Decodes forward from the nearest keyframe; frames are matched by timestamp.

    Where the container stores no presentation times (probe.timing "slots", e.g. AVI), frames are
    matched by their position in the decoder's output order instead, decoding from the start (a
    backward read reopens the file). Where a seek lands after the asked-for frame (MPEG-TS can), it
    decodes from the start too, rather than return a later frame.
    """

    def __init__(self, path: Path, threads: int, probe: Probe, note: str) -> None:
        self._path = path
        self._threads = threads
        self._by_position = probe.timing != "pts"
        self._container = None
        self._open()
        # Demux (no decoding) to learn every frame's timestamp (the probe did it without keeping the ticks).
        pts = sorted(p.pts for p in self._container.demux(self._stream) if p.pts is not None and p.size)
        if self._by_position:
            self._pts = np.arange(probe.frame_count, dtype=np.int64)  # positions in output order
        else:
            if len(pts) != probe.frame_count:
                raise DecodeError(f"demux found {len(pts)} frames, then {probe.frame_count}")
            self._pts = np.asarray(pts, dtype=np.int64)
        self._frames = None
        self._last_pts: int | None = None
        self._landed = 0  # pts of the first frame decoded after the last seek
        self._position = -1  # output position of the last frame decoded (by-position mode)
        self._cached_pts: int | None = None
        self._cached_image: np.ndarray | None = None
        first = self.read([0])
        self.info = VideoInfo(
            decoder="pyav",
            decoder_note=note,
            codec=probe.codec,
            frame_count=probe.frame_count,
            fps=float(self._stream.average_rate or 0.0),
            duration=probe.duration,
            height=int(first.shape[1]),
            width=int(first.shape[2]),
            frame_starts=probe.frame_starts,
            keyframes=None if self._by_position else probe.keyframes,
        )

    def _open(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = _open_container(self._path)
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self._stream.codec_context.thread_count = self._threads
        self._frames = None
        self._last_pts = None
        self._position = -1

    def _from_start(self) -> None:
        self._open()
        self._frames = self._container.decode(self._stream)

    def _seek(self, target: int) -> None:
        self._container.seek(int(target), stream=self._stream, backward=True, any_frame=False)
        self._frames = self._container.decode(self._stream)
        self._last_pts = None

    def read(self, indices: list[int]) -> np.ndarray:
        out = []
        for target in self._pts[indices]:
            if target != self._cached_pts:
                decode = self._decode_position if self._by_position else self._decode_at
                self._cached_image = _rgb(decode(int(target)))
                self._cached_pts = int(target)
            out.append(self._cached_image)
        return np.stack(out)

    def _decode_position(self, position: int) -> "av.VideoFrame":
        if self._frames is None or position <= self._position:
            self._from_start()
        for frame in self._frames:
            self._position += 1
            if self._position == position:
                return frame
        raise DecodeError(f"frame {position} could not be decoded (stream ended at frame {self._position})")

    def _decode_at(self, target: int) -> "av.VideoFrame":
        if self._frames is None or self._last_pts is None or target <= self._last_pts:
            self._seek(target)
            frame = self._next_at_or_after(target)
            if frame is None or self._landed > target:
                log.debug("%s: a seek to pts %d landed after it; decoding from the start", self._path, target)
                self._from_start()
                frame = self._next_at_or_after(target)
        else:
            frame = self._next_at_or_after(target)
        if frame is None:
            raise DecodeError(f"frame at pts {target} could not be decoded (stream ended)")
        if frame.pts != target:
            raise DecodeError(f"frame at pts {target} could not be decoded (got pts {frame.pts})")
        return frame

    def _next_at_or_after(self, target: int) -> "av.VideoFrame | None":
        """The next decoded frame whose pts is >= target (None: the stream ended)."""
        for frame in self._frames:
            if frame.pts is None:
                continue
            if self._last_pts is None:
                self._landed = frame.pts  # the first frame after a seek
            self._last_pts = frame.pts
            if frame.pts >= target:
                return frame
        return None

    def close(self) -> None:
        self._container.close()


def open_pyav(path: Path, threads: int = 1, note: str = "") -> PyAVSource:
    """PyAV on `path` whatever decord would do: the reference the tests and scripts/zoo.py compare with."""
    return PyAVSource(path, threads, _probe(path), note)


def _rgb(frame: "av.VideoFrame") -> np.ndarray:
    image = frame.to_ndarray(format="rgb24")
    rotation = getattr(frame, "rotation", 0) or 0
    if rotation % 360:
        # The display matrix rotation is counter-clockwise, in degrees.
        image = np.ascontiguousarray(np.rot90(image, k=int(rotation // 90) % 4))
    return image


def open_video(path: Path, threads: int = 1, short_side: int | None = None, probe: Probe | None = None
               ) -> VideoSource:
    """Open `path` with the right decoder; raises DecodeError with a one-line reason.

    `short_side`: frames whose short side is over twice this may be scaled to it while decoding.
    `info.width/height` are always the video's own (rotated) size. `probe`: the file's demux, when an
    earlier open of the same file made it (`source.probe`); else it is made here.
    """
    probe = probe or _probe(path)
    source = _open(path, threads, short_side, probe)
    source.probe = probe
    found = source.info.frame_count
    if probe.declared and found < probe.declared - 1:
        source.close()
        raise DecodeError(f"truncated: the container declares {probe.declared} frames but only {found} are present")
    return source


def _open(path: Path, threads: int, short_side: int | None, probe: Probe) -> VideoSource:
    note = PYAV_CODECS.get(probe.codec, "")
    if not note:
        try:
            return DecordSource(path, threads, probe, short_side)
        except DecodeError:
            raise
        except DecordDisagrees as exc:
            note = str(exc)
        except DECORD_ERRORS as exc:
            note = f"decord could not open it ({type(exc).__name__}: {str(exc).strip().splitlines()[-1][:160]})"
        log.warning("%s: %s; decoding with PyAV", path, note)
    if probe.timing_note:
        note = f"{note}; {probe.timing_note}"
    try:
        return PyAVSource(path, threads, probe, note)
    except DecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError, StopIteration) as exc:
        raise DecodeError(f"cannot decode ({type(exc).__name__}: {exc})") from None
