"""Test media made on the fly with PyAV.

Every frame carries its own index as a row of black/white blocks (12 bits) in
its top quarter, so a test can read back which frame a decoder returned.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np

INDEX_BITS = 12


def frame_image(index: int, width: int, height: int) -> np.ndarray:
    """An RGB frame whose top band encodes `index` in binary, MSB first."""
    img = np.full((height, width, 3), 96, dtype=np.uint8)
    # The lower part changes colour with the index so that encoders see motion.
    img[height // 4 :, :, 0] = (index * 37) % 256
    img[height // 4 :, :, 2] = (index * 11) % 256
    for bit in range(INDEX_BITS):
        on = (index >> (INDEX_BITS - 1 - bit)) & 1
        left, right = round(bit * width / INDEX_BITS), round((bit + 1) * width / INDEX_BITS)
        img[: height // 4, left:right] = 255 if on else 0
    return img


def read_index(img: np.ndarray) -> int:
    """Inverse of `frame_image` for an (H, W, 3) uint8 RGB frame, also after scaling."""
    height, width = img.shape[:2]
    y = height // 8
    value = 0
    for bit in range(INDEX_BITS):
        x = int((bit + 0.5) * width / INDEX_BITS)
        value = (value << 1) | int(img[y, x].mean() > 128)
    return value


def write_video(
    path: Path,
    *,
    frame_times: Sequence[float] | None = None,
    fps: int = 10,
    seconds: float = 3.0,
    width: int = 192,
    height: int = 108,
    codec: str = "libx264",
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    rotation: int = 0,
    time_base: Fraction = Fraction(1, 1000),
    metadata: dict[str, str] | None = None,
) -> list[float]:
    """Write a video and return the presentation time (s) of each frame.

    `frame_times` gives an explicit (possibly irregular) timeline for a
    variable-frame-rate file; otherwise frames come at `fps` for `seconds`.
    `options` replace the encoder's (e.g. B-frames), `container_options` the
    muxer's (e.g. faststart), `rotation` sets display-matrix rotation metadata,
    `time_base` is the stream's and encoder's (MPEG-2 needs 1/fps), `metadata`
    the container's tags.
    """
    if frame_times is None:
        frame_times = [i / fps for i in range(int(round(seconds * fps)))]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", options=container_options or {}) as container:
        container.metadata.update(metadata or {})
        stream = container.add_stream(codec, rate=fps)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        if options is not None:
            stream.options = options
        elif codec == "libx264":
            # Lossless-ish and without B-frame reordering surprises.
            stream.options = {"crf": "10", "preset": "ultrafast"}
        if rotation:
            stream.set_display_rotation(rotation)
        for index, t in enumerate(frame_times):
            frame = av.VideoFrame.from_ndarray(frame_image(index, width, height), format="rgb24")
            frame.pts = int(round(t / time_base))
            frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return [round(float(round(t / time_base) * time_base), 6) for t in frame_times]


def write_audio_only(path: Path, seconds: float = 1.0) -> None:
    """An .mp4 holding only an AAC audio stream."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = int(16000 * seconds)
        pts = 0
        for start in range(0, samples, 1024):
            n = min(1024, samples - start)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, n), dtype=np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            frame.pts = pts
            pts += n
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
