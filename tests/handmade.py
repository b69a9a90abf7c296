"""Features folders built by hand (no videos, no encoders), written by the real shard writer.

Each clip is (frame features (F, d_video), token features (L, d_text), token ids (L,), text); the
shards have the schema `extract --save-frames --save-tokens` writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from videobert_cli.store.writer import VideoRecord, VideoResult, write_shard

Clip = tuple[np.ndarray, np.ndarray, np.ndarray, str]

MODELS = [
    {"role": "video", "name": "handmade-video", "weights": "file", "source": "/nowhere/video.pth",
     "sha256": "a" * 64, "size_bytes": 1},
    {"role": "text", "name": "handmade-text", "weights": "folder", "source": "/nowhere/text",
     "sha256": "b" * 64, "size_bytes": 1},
    {"role": "fusion", "name": "cross-modal-attention", "weights": "seed:0", "source": "seed", "sha256": "seed:0",
     "size_bytes": 0},
]


def attrs_for(video_dim: int, text_dim: int, frames: int, *, fusion_dim: int = 8, heads: int = 2,
              models: list[dict] | None = None, dtype: str = "float32") -> dict:
    return {
        "tool_version": "test", "created_utc": "2026-01-01T00:00:00+00:00",
        "config": {"frames_per_clip": frames, "clip_seconds": 1.5, "fusion_dim": fusion_dim, "fusion_heads": heads,
                   "fusion_seed": 0, "fusion_checkpoint": None},
        "models": models or MODELS, "video_weights_random": False,
        "dims": {"fused": fusion_dim, "video": video_dim, "text": text_dim},
        "preprocess": {}, "versions": {}, "feature_dtype": dtype,
    }


def video_result(path: str, clips: Sequence[Clip], fused_dim: int) -> VideoResult:
    n = len(clips)
    frames = np.stack([c[0] for c in clips]).astype(np.float32)
    text_dim = clips[0][1].shape[1]
    counts = np.array([len(c[2]) for c in clips], dtype=np.int32)
    return VideoResult(
        video=VideoRecord(path=path, abspath=f"/videos/{path}", size=1, mtime=0.0, duration=1.5 * n, fps=10.0,
                          frame_count=15 * n, width=64, height=64, codec="h264", decoder="pyav", decoder_note="",
                          transcript="", transcript_format="srt", transcript_timed=True),
        start=np.arange(n) * 1.5, end=np.arange(1, n + 1) * 1.5,
        frame_indices=np.zeros((n, frames.shape[1]), dtype=np.int64),
        frame_times=np.zeros((n, frames.shape[1])), text=[c[3] for c in clips], has_text=counts > 0,
        fused=np.zeros((n, fused_dim), dtype=np.float32), video_features=frames.mean(1),
        text_features=np.stack([c[1].mean(0) if len(c[1]) else np.zeros(text_dim) for c in clips]).astype(np.float32),
        token_count=counts, frame_features=frames,
        token_features=np.concatenate([c[1] for c in clips]).astype(np.float32),
        token_ids=np.concatenate([c[2] for c in clips]).astype(np.int64),
    )


def write_features(out: Path, videos: dict[str, Sequence[Clip]], *, fusion_dim: int = 8, heads: int = 2,
                   models: list[dict] | None = None, videos_per_shard: int = 1000) -> Path:
    """Write `videos` ({path: clips}) as shards under `out`; returns `out`."""
    out.mkdir(parents=True, exist_ok=True)
    first = next(iter(videos.values()))[0]
    attrs = attrs_for(first[0].shape[1], first[1].shape[1], first[0].shape[0], fusion_dim=fusion_dim, heads=heads,
                      models=models)
    results = [video_result(path, clips, fusion_dim) for path, clips in videos.items()]
    for k in range(0, len(results), videos_per_shard):
        write_shard(out / f"shard-{k // videos_per_shard:05d}.h5", results[k : k + videos_per_shard], attrs,
                    np.dtype("float32"), True, True)
    return out


def random_corpus(out: Path, *, n_videos: int = 6, clips_per_video: int = 3, frames: int = 2, video_dim: int = 12,
                  text_dim: int = 8, n_words: int = 5, seed: int = 0, **kwargs) -> Path:
    """A learnable toy corpus: each clip shows one of `n_words` concepts (a fixed direction in frame
    space plus noise) and its text is that concept's token (a fixed direction in token space)."""
    rng = np.random.default_rng(seed)
    frame_dirs = rng.normal(size=(n_words, video_dim))
    token_dirs = rng.normal(size=(n_words, text_dim))
    videos = {}
    for v in range(n_videos):
        clips = []
        for _ in range(clips_per_video):
            w = int(rng.integers(n_words))
            f = frame_dirs[w] + 0.3 * rng.normal(size=(frames, video_dim))
            t = np.stack([token_dirs[w] + 0.1 * rng.normal(size=text_dim), rng.normal(size=text_dim)])
            clips.append((f, t, np.array([10 + w, 5]), f"word{w} thing"))
        videos[f"v{v:02d}.mp4"] = clips
    return write_features(out, videos, **kwargs)
