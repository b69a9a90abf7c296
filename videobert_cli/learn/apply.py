"""Re-fusing stored features with another fusion (`videobert fuse`): no decoding, no encoders.

Every shard of FEATURES_DIR becomes a shard of the same name in NEW_DIR, written by the same
`ShardWriter` as `extract` (so the schema is the same by construction): the same videos, clips,
frame and token features; `clips/fused` recomputed from `clips/frame_features` and the clip's
`tokens/features` exactly as `extract` computes it; the checkpoint recorded as the fusion model
(`models`, sha256) and in `config.fusion_checkpoint`, `fusion_dim`, `fusion_heads`, `dims.fused`.

Features stored as float16 are fused from their float16 values, so the result can differ from
`extract --fusion-checkpoint` in the last bits; with float32 features the two agree. A shard is
held in memory while it is rewritten, as `extract` holds it while writing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import __version__
from ..fusion import FusionConfig, build_fusion, pad_tokens, read_checkpoint
from ..weights.resolve import ModelError
from ..store.reader import read_shard
from ..store.schema import SHARD_GLOB, TMP_SUFFIX, shard_number, shard_part_label
from ..store.writer import ShardWriter, VideoRecord, VideoResult
from .corpus import TrainingError, open_corpus
from .training import check_checkpoint_features, resolve_device


def prepare_output(out_dir: Path, features_dir: Path, overwrite: bool) -> None:
    if out_dir.resolve() == features_dir.resolve():
        raise TrainingError(f"-o {out_dir} is the features folder itself; write the re-fused shards elsewhere")
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = sorted(out_dir.glob(SHARD_GLOB))
    if existing and not overwrite:
        raise TrainingError(f"{out_dir} already holds {len(existing)} shard(s); pass --overwrite to replace them, "
                            "or choose another -o")
    for stale in [*existing, *out_dir.glob(SHARD_GLOB + TMP_SUFFIX)]:
        stale.unlink()


def _text(value: Any) -> Any:
    return value.decode("utf-8") if isinstance(value, bytes) else value


@torch.inference_mode()
def fuse_clips(module: torch.nn.Module, frames: np.ndarray, tokens: np.ndarray, token_start: np.ndarray,
               token_count: np.ndarray, device: torch.device, batch_size: int) -> np.ndarray:
    """(n, d) fused vectors of n clips from their stored frame features (n, F, d_img) and the token
    rows token_start[i] : token_start[i] + token_count[i] of `tokens` (as `extract` batches them)."""
    n = len(frames)
    out = np.zeros((n, module.config.dim), dtype=np.float32)
    for s in range(0, n, batch_size):
        rows = range(s, min(s + batch_size, n))
        padded, mask = pad_tokens([tokens[token_start[i] : token_start[i] + token_count[i]] for i in rows],
                                  tokens.shape[1])
        batch = torch.from_numpy(frames[s : rows.stop].astype(np.float32))
        fused, _ = module(batch.to(device), padded.to(device), mask.to(device))
        out[s : rows.stop] = fused.float().cpu().numpy()
    return out


def _results(clips: dict[str, np.ndarray], videos: dict[str, np.ndarray], fused: np.ndarray) -> list[VideoResult]:
    names = [f.name for f in dataclasses.fields(VideoRecord)]
    results = []
    for row in range(len(videos["path"])):
        values = {name: _text(videos[name][row]) for name in names if name in videos}
        values["warnings"] = json.loads(values.get("warnings") or "[]")
        for name, value in values.items():
            if isinstance(value, np.generic):
                values[name] = value.item()
        first, count = int(videos["first_clip"][row]), int(videos["clip_count"][row])
        sl = slice(first, first + count)
        token_start, token_count = clips["token_start"][sl], clips["token_count"][sl]
        t0 = int(token_start[0]) if count else 0
        t1 = int(token_start[-1] + token_count[-1]) if count else 0
        results.append(VideoResult(
            video=VideoRecord(**values), start=clips["start"][sl], end=clips["end"][sl],
            frame_indices=clips["frame_indices"][sl], frame_times=clips["frame_times"][sl],
            text=[_text(t) for t in clips["text"][sl]], has_text=clips["has_text"][sl], fused=fused[sl],
            video_features=clips["video_features"][sl], text_features=clips["text_features"][sl],
            token_count=token_count, frame_features=clips["frame_features"][sl],
            token_features=clips["token_features"][t0:t1], token_ids=clips["token_ids"][t0:t1]))
    return results


def _new_attrs(attrs: dict[str, Any], record: Any, config: FusionConfig, checkpoint: Path) -> dict[str, Any]:
    # The schema attributes are the writer's; visual words are not carried over (they name the old features).
    out = {k: v for k, v in attrs.items() if k not in ("schema_version", "schema_minor", "visual_vocab")}
    out["tool_version"] = __version__
    out["created_utc"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    out["models"] = [m for m in attrs.get("models", []) if m.get("role") != "fusion"] + [record.to_dict()]
    out["config"] = {**attrs.get("config", {}), "fusion_checkpoint": str(checkpoint), "fusion_dim": config.dim,
                     "fusion_heads": config.heads}
    out["dims"] = {**attrs.get("dims", {}), "fused": config.dim}
    return out


def apply_checkpoint(features_dir: str | Path, checkpoint: str | Path, out_dir: str | Path, *, device: str = "auto",
                     batch_size: int = 256, overwrite: bool = False,
                     on_shard: Callable[[Path, int], None] | None = None) -> dict[str, Any]:
    """Write NEW_DIR: FEATURES_DIR's shards with `clips/fused` recomputed by the checkpoint's fusion."""
    features_dir, out_dir, checkpoint = Path(features_dir), Path(out_dir), Path(checkpoint).expanduser()
    if batch_size < 1:
        raise TrainingError("batch size must be >= 1")
    torch_device = resolve_device(device)
    corpus = open_corpus(features_dir)
    try:
        blob = read_checkpoint(checkpoint)
        verified = check_checkpoint_features(blob, corpus, checkpoint)
        widths = FusionConfig(int(corpus.dims["video"]), int(corpus.dims["text"]))
        module, record = build_fusion(widths, 0, str(checkpoint), feature_models=corpus.models,
                                      random_verified=verified)
    except ModelError as exc:
        raise TrainingError(str(exc)) from None
    module = module.to(torch_device).eval()
    prepare_output(out_dir, features_dir, overwrite)
    started = dt.datetime.now()
    shards, clips_done = [], 0
    for shard in sorted({s.path for s in corpus.features.shards}):
        attrs, clips, videos = read_shard(shard)
        fused = fuse_clips(module, clips["frame_features"], clips["token_features"], clips["token_start"],
                           clips["token_count"], torch_device, batch_size)
        writer = ShardWriter(out_dir, _new_attrs(attrs, record, module.config, checkpoint),
                             shard_size=len(fused) + 1, dtype=str(attrs.get("feature_dtype", "float32")),
                             save_frames=True, save_tokens=True, first_index=shard_number(shard),
                             part_label=shard_part_label(shard) or "")  # parts' shards share numbers
        for result in _results(clips, videos, fused):
            writer.add(result)
        writer.close()
        shards.extend(str(p) for p in writer.written)
        clips_done += len(fused)
        if on_shard:
            on_shard(shard, len(fused))
    seconds = (dt.datetime.now() - started).total_seconds()
    return {"features_dir": str(features_dir), "out_dir": str(out_dir), "checkpoint": str(checkpoint),
            "checkpoint_sha256": record.sha256, "fusion_dim": module.config.dim, "shards": shards,
            "clips": clips_done, "seconds": round(seconds, 3),
            "clips_per_second": round(clips_done / seconds, 3) if seconds > 0 else 0.0, "device": str(torch_device)}
