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

import logging
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


class DecordSource:
    def __init__(self, path: Path, threads: int, codec: str, short_side: int | None = None) -> None:
        self._reader = decord.VideoReader(str(path), num_threads=threads)
        n = len(self._reader)
        if n == 0:
            raise DecodeError("video stream has no frames")
        # decord gives float32 seconds; round to microseconds so 0.9 is stored as 0.9.
        stamps = np.round(self._reader.get_frame_timestamp(range(n)).astype(np.float64), 6)
        first = self._reader.get_batch([0]).asnumpy()
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
            if scaled.get_batch([0]).asnumpy().shape[1:3] == (h, w):
                self._reader = scaled
        except DECORD_ERRORS as exc:
            log.debug("%s: decode-time resize to %dx%d failed (%s); decoding at full size", path, w, h, exc)

    def read(self, indices: list[int]) -> np.ndarray:
        return self._reader.get_batch(indices).asnumpy()

    def close(self) -> None:
        self._reader = None


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
