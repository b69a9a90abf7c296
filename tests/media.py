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


ASS_HEADER = (
    "[Script Info]\nScriptType: v4.00+\nPlayResX: 384\nPlayResY: 288\n\n[V4+ Styles]\n"
    "Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, Italic, "
    "Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, "
    "MarginR, MarginV, Encoding\n"
    "Style: Default,Arial,16,&Hffffff,&Hffffff,&H0,&H0,0,0,0,0,100,100,0,0,1,1,0,2,10,10,10,0\n\n"
    "[Events]\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n\n"
)


def write_video_with_subtitles(path: Path, tracks: Sequence[dict], seconds: float = 3.0, fps: int = 10,
                               audio: np.ndarray | None = None, audio_rate: int = 16000) -> None:
    """A video (mkv or mp4) with subtitle streams muxed after the video stream (indexes 1, 2, ...).

    Each track: {"codec": "subrip" | "ass" | "webvtt" | "mov_text" | "dvdsub", "language": "eng" (optional),
    "default": bool (optional), "cues": [(start s, end s, ASS dialogue text), ...]}. Text tracks are encoded
    with FFmpeg's subtitle encoders; a "dvdsub" track (bitmap) gets one dummy packet, enough for a reader
    that skips bitmap tracks without decoding them. `audio` (float32 mono samples at `audio_rate`) adds a
    PCM audio stream after the subtitles."""
    from fractions import Fraction as F

    import av

    plain = path.with_name(path.stem + ".plain.mp4")
    write_video(plain, seconds=seconds, fps=fps)
    ms = F(1, 1000)
    with av.open(str(plain)) as source, av.open(str(path), "w") as out:
        video = out.add_stream_from_template(source.streams.video[0])
        streams = []
        for track in tracks:
            stream = out.add_stream(track["codec"])
            stream.time_base = ms
            stream.codec_context.time_base = ms
            stream.codec_context.subtitle_header = ASS_HEADER.encode()
            if track.get("language"):
                stream.metadata["language"] = track["language"]
            stream.disposition = av.stream.Disposition.default if track.get("default") else av.stream.Disposition(0)
            streams.append(stream)
        audio_stream = None
        if audio is not None:
            audio_stream = out.add_stream("pcm_s16le" if path.suffix == ".mkv" else "aac", rate=audio_rate,
                                          layout="mono")
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = video
            out.mux(packet)
        for track, stream in zip(tracks, streams):
            if track["codec"] == "dvdsub":
                packet = av.Packet(b"\x00\x10\x00\x00" + b"\x00" * 12)
                packet.stream, packet.pts, packet.dts, packet.duration = stream, 0, 0, 500
                out.mux(packet)
                continue
            for i, (start, end, text) in enumerate(track["cues"]):
                begin, length = int(round(start * 1000)), int(round((end - start) * 1000))
                subtitle = av.subtitles.subtitle.SubtitleSet.create(f"{i},0,Default,,0,0,0,,{text}".encode(),
                                                                    0, length, pts=begin)
                packet = stream.codec_context.encode_subtitle(subtitle)
                packet.stream, packet.pts, packet.dts, packet.duration = stream, begin, begin, length
                out.mux(packet)
        if audio_stream is not None:
            samples = np.asarray(audio, dtype=np.float32).reshape(1, -1)
            fmt = "s16" if path.suffix == ".mkv" else "fltp"
            data = (np.clip(samples, -1, 1) * 32767).astype(np.int16) if fmt == "s16" else samples
            for start in range(0, data.shape[1], 1024):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, start:start + 1024]), format=fmt,
                                                   layout="mono")
                frame.sample_rate, frame.pts = audio_rate, start
                for packet in audio_stream.encode(frame):
                    out.mux(packet)
            for packet in audio_stream.encode():
                out.mux(packet)
    plain.unlink()
