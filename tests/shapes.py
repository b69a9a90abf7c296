"""A paired corpus whose transcripts really describe the picture, made on the fly with PyAV.

Each video is a run of 1.5 s segments. In a segment one coloured shape (red, green, blue or yellow;
square, circle or triangle; big or small) slides left or right over a grey background, and the
video's SRT has one cue over exactly that segment saying so: "a big red square moves left". With
`extract --clip-seconds 1.5` every clip is one segment and its text is that segment's sentence.

`make_shapes_corpus` holds some colour/shape combinations out of the training videos: the
held-out videos (under `heldout/`) show them, so retrieval there needs what was learnt about
colours and shapes separately, not a memorised pair.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 230), "yellow": (235, 220, 30)}
SHAPES = ("square", "circle", "triangle")
SIZES = {"big": 0.30, "small": 0.16}  # half-width as a fraction of the frame
DIRECTIONS = ("left", "right")
SEGMENT_SECONDS = 1.5
# Held out of training: each colour keeps its other shapes and each shape its other colours.
HELD_OUT = {("red", "triangle"), ("green", "circle"), ("blue", "square"), ("yellow", "triangle")}


@dataclass(frozen=True)
class Segment:
    colour: str
    shape: str
    size: str
    direction: str

    @property
    def sentence(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} moves {self.direction}"


def draw(segment: Segment, progress: float, side: int) -> np.ndarray:
    """One RGB frame of `segment` at `progress` in [0, 1] through it."""
    img = np.full((side, side, 3), 110, dtype=np.uint8)
    half = SIZES[segment.size] * side
    travel = side / 2 - half - 2  # the shape stays inside the frame
    offset = (progress - 0.5) * 2 * travel * 0.6
    cx = side / 2 + (-offset if segment.direction == "left" else offset)
    cy = side / 2
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) + 0.5
    dx, dy = xx - cx, yy - cy
    if segment.shape == "square":
        inside = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    elif segment.shape == "circle":
        inside = dx * dx + dy * dy <= half * half
    else:  # triangle, apex up
        inside = (dy <= half) & (dy >= -half) & (np.abs(dx) <= (dy + half) / 2)
    img[inside] = COLOURS[segment.colour]
    return img


def srt_time(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def write_shapes_video(path: Path, segments: list[Segment], *, fps: int = 8, side: int = 72) -> None:
    """The video and, next to it, its SRT transcript (one cue per segment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    per_segment = int(round(SEGMENT_SECONDS * fps))
    time_base = Fraction(1, 1000)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        stream.time_base = stream.codec_context.time_base = time_base
        stream.options = {"crf": "12", "preset": "ultrafast"}
        index = 0
        for segment in segments:
            for k in range(per_segment):
                frame = av.VideoFrame.from_ndarray(draw(segment, (k + 0.5) / per_segment, side), format="rgb24")
                frame.pts = int(round(index / fps * 1000))
                frame.time_base = time_base
                index += 1
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    cues = []
    for k, segment in enumerate(segments):
        start, end = k * SEGMENT_SECONDS, (k + 1) * SEGMENT_SECONDS
        cues.append(f"{k + 1}\n{srt_time(start)} --> {srt_time(end)}\n{segment.sentence}\n")
    path.with_suffix(".srt").write_text("\n".join(cues), encoding="utf-8")


def all_segments() -> list[Segment]:
    return [Segment(c, s, z, d) for c in COLOURS for s in SHAPES for z in SIZES for d in DIRECTIONS]


def make_shapes_corpus(root: Path, *, train_videos: int = 64, heldout_videos: int = 12,
                       segments_per_video: int = 3, seed: int = 0) -> dict[str, list[Path]]:
    """Training videos under root/train (never showing a HELD_OUT combination) and held-out videos
    under root/heldout (each showing held-out combinations and seen ones)."""
    rng = random.Random(seed)
    seen = [s for s in all_segments() if (s.colour, s.shape) not in HELD_OUT]
    unseen = [s for s in all_segments() if (s.colour, s.shape) in HELD_OUT]
    paths: dict[str, list[Path]] = {"train": [], "heldout": []}
    for i in range(train_videos):
        path = root / "train" / f"v{i:03d}.mp4"
        write_shapes_video(path, [rng.choice(seen) for _ in range(segments_per_video)])
        paths["train"].append(path)
    for i in range(heldout_videos):
        path = root / "heldout" / f"h{i:03d}.mp4"
        # Most segments show a held-out combination; one per video is a seen combination.
        picks = [rng.choice(unseen) for _ in range(segments_per_video - 1)] + [rng.choice(seen)]
        rng.shuffle(picks)
        write_shapes_video(path, picks)
        paths["heldout"].append(path)
    return paths
