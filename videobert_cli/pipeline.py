"""The extraction run: discover -> plan -> decode -> encode -> fuse -> write.

`Extractor` holds the loaded models; `Extractor.process` turns one video into a
`VideoResult` or raises `VideoFailure` (a one-line reason and the stage it
failed in). `run_extract` drives a whole run and returns a `RunSummary`;
a failed video is reported and the run goes on.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import __version__
from .config import ExtractConfig
from .decode import DecodeError, open_video
from .discover import InputProblem, VideoInput
from .encoders import ImageEncoder, TextEncoder, WordTokens
from .fusion import FusionConfig, build_fusion
from .models import ModelError
from .planning import ClipPlan, plan_clips
from .transcripts import NO_TRANSCRIPT, TranscriptError, read_transcript
from .writer import SHARD_GLOB, TMP_SUFFIX, ShardWriter, VideoRecord, VideoResult

log = logging.getLogger(__name__)


class VideoFailure(Exception):
    def __init__(self, path: str, stage: str, reason: str) -> None:
        reason = " ".join(str(reason).split())  # always one line
        super().__init__(f"{path}: {stage}: {reason}")
        self.path, self.stage, self.reason = path, stage, reason


@dataclass
class RunSummary:
    videos_total: int = 0
    videos_done: int = 0
    videos_failed: int = 0
    clips: int = 0
    shards: list[str] = field(default_factory=list)
    seconds: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)
    warnings: int = 0
    video_weights_random: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["clips_per_second"] = round(self.clips / self.seconds, 3) if self.seconds > 0 else 0.0
        d["seconds"] = round(self.seconds, 3)
        return d


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ModelError(f"unknown device {spec!r} (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {spec} asked for, but CUDA is not available here")
    return device


def library_versions() -> dict[str, str]:
    import decord
    import h5py
    import torchvision
    import transformers

    return {"videobert": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "transformers": transformers.__version__, "decord": decord.__version__, "h5py": h5py.__version__,
            "python": sys.version.split()[0]}


class Extractor:
    """Loaded models plus the per-video processing; build once per run."""

    def __init__(self, config: ExtractConfig, models_root: Path | None = None) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.image = ImageEncoder(config.video_model, config.video_weights, self.device, config.image_size,
                                  config.resize_size, models_root)
        self.text = TextEncoder(config.text_model, self.device, config.text_max_length, config.text_context_words,
                                config.text_batch_size, models_root)
        fusion_config = FusionConfig(self.image.feature_dim, self.text.feature_dim, config.fusion_dim,
                                     config.fusion_heads)
        self.fusion, fusion_record = build_fusion(fusion_config, config.fusion_seed, config.fusion_checkpoint)
        self.fusion.to(self.device)
        self.fused_dim = self.fusion.config.dim
        self.models = [self.image.record, self.text.record, fusion_record]

    def shard_attrs(self) -> dict[str, Any]:
        return {
            "tool_version": __version__,
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "config": self.config.to_dict(),
            "models": [m.to_dict() for m in self.models],
            "video_weights_random": self.image.record.sha256 == "random",
            "dims": {"fused": self.fused_dim, "video": self.image.feature_dim, "text": self.text.feature_dim},
            "preprocess": {"resize": self.image.resize_size, "crop": self.image.crop_size,
                           "mean": self.image.mean.flatten().tolist(), "std": self.image.std.flatten().tolist()},
            "versions": library_versions(),
            "feature_dtype": self.config.dtype,
        }

    def process(self, item: VideoInput) -> VideoResult:
        cfg = self.config
        given = item.given
        try:
            stat = item.path.stat()
        except OSError as exc:
            raise VideoFailure(given, "probe", exc.strerror or str(exc)) from None
        transcript = NO_TRANSCRIPT
        if item.transcript is not None:
            try:
                transcript = read_transcript(item.transcript)
            except TranscriptError as exc:
                raise VideoFailure(given, "transcript", str(exc)) from None
        try:
            source = open_video(item.path, cfg.decode_threads, self.image.resize_size)
        except DecodeError as exc:
            raise VideoFailure(given, exc.stage, str(exc)) from None
        try:
            info = source.info
            plan = plan_clips(info.duration, info.frame_starts, transcript, mode=cfg.clip_mode,
                              clip_seconds=cfg.clip_seconds, min_clip_seconds=cfg.min_clip_seconds,
                              frames_per_clip=cfg.frames_per_clip)
            frame_features = self._encode_frames(source, plan.clips, given)
        finally:
            source.close()
        try:
            word_tokens = self.text.encode_cues([c.words for c in plan.transcript.cues]) if plan.words else {}
        except (RuntimeError, ValueError) as exc:
            raise VideoFailure(given, "encode", f"text encoder: {exc}") from None

        warnings = list(transcript.warnings) + list(plan.warnings)
        if item.transcript_note:
            warnings.append(item.transcript_note)
        if info.decoder_note:
            warnings.append(f"decoded with PyAV: {info.decoder_note}")
        if item.transcript is None:
            warnings.append("no transcript found: every clip has empty text")
        record = VideoRecord(
            path=given, abspath=str(item.path), size=stat.st_size, mtime=stat.st_mtime, duration=info.duration,
            fps=info.fps, frame_count=info.frame_count, width=info.width, height=info.height, codec=info.codec,
            decoder=info.decoder, decoder_note=info.decoder_note,
            transcript=str(item.transcript) if item.transcript else "", transcript_format=transcript.format,
            transcript_timed=transcript.timed, warnings=warnings,
        )
        return self._assemble(record, plan.clips, frame_features, word_tokens)

    def _encode_frames(self, source: Any, clips: tuple[ClipPlan, ...], given: str) -> torch.Tensor:
        """(n_clips, F, d_img) backbone features; decodes a few clips at a time to bound memory."""
        per_chunk = max(1, self.config.batch_size // self.config.frames_per_clip)
        out = []
        for i in range(0, len(clips), per_chunk):
            chunk = clips[i : i + per_chunk]
            wanted = [idx for clip in chunk for idx in clip.frame_indices]
            unique = sorted(set(wanted))  # one sorted read per chunk
            try:
                frames = source.read(unique)
            except DecodeError as exc:
                raise VideoFailure(given, "decode", str(exc)) from None
            except Exception as exc:  # decord raises its own error types and RuntimeError
                raise VideoFailure(given, "decode", f"{type(exc).__name__}: {str(exc).strip()[:200]}") from None
            features = self.image.encode(self.image.preprocess(frames), self.config.batch_size)
            position = {idx: k for k, idx in enumerate(unique)}
            out.append(features[[position[idx] for idx in wanted]].view(len(chunk), self.config.frames_per_clip, -1))
        if not out:
            return torch.zeros(0, self.config.frames_per_clip, self.image.feature_dim)
        return torch.cat(out)

    def _clip_tokens(self, clip: ClipPlan, word_tokens: dict[tuple[int, int], WordTokens]) -> WordTokens:
        parts = [word_tokens[(w.cue, w.position)] for w in clip.words if (w.cue, w.position) in word_tokens]
        limit = self.config.max_text_tokens
        if not parts:
            return WordTokens(torch.zeros(0, self.text.feature_dim), torch.zeros(0, dtype=torch.int64))
        return WordTokens(torch.cat([p.features for p in parts])[:limit], torch.cat([p.ids for p in parts])[:limit])

    @torch.inference_mode()
    def _assemble(self, record: VideoRecord, clips: tuple[ClipPlan, ...], frame_features: torch.Tensor,
                  word_tokens: dict[tuple[int, int], WordTokens]) -> VideoResult:
        n, d_txt, frames = len(clips), self.text.feature_dim, self.config.frames_per_clip
        tokens = [self._clip_tokens(c, word_tokens) for c in clips]
        counts = np.array([len(t.ids) for t in tokens], dtype=np.int32)
        fused = torch.zeros(n, self.fused_dim)
        text_pooled = torch.zeros(n, d_txt)
        batch = max(1, self.config.batch_size // self.config.frames_per_clip)
        for i in range(0, n, batch):
            sl = slice(i, min(i + batch, n))
            longest = int(counts[sl].max()) if n else 0
            padded = torch.zeros(sl.stop - sl.start, longest, d_txt)
            mask = torch.zeros(sl.stop - sl.start, longest, dtype=torch.bool)
            for row, tok in enumerate(tokens[sl]):
                padded[row, : len(tok.ids)] = tok.features
                mask[row, : len(tok.ids)] = True
            out, _ = self.fusion(frame_features[sl].to(self.device), padded.to(self.device), mask.to(self.device))
            fused[sl] = out.float().cpu()
            m = mask.unsqueeze(-1).float()
            text_pooled[sl] = (padded * m).sum(1) / m.sum(1).clamp(min=1)
        save_tokens = self.config.save_tokens
        return VideoResult(
            video=record,
            start=np.array([c.start for c in clips], dtype=np.float64),
            end=np.array([c.end for c in clips], dtype=np.float64),
            frame_indices=np.array([c.frame_indices for c in clips], dtype=np.int64).reshape(n, frames),
            frame_times=np.array([c.frame_times for c in clips], dtype=np.float64).reshape(n, frames),
            text=[c.text for c in clips],
            has_text=counts > 0,
            fused=fused.numpy(),
            video_features=frame_features.mean(dim=1).numpy() if n else np.zeros((0, self.image.feature_dim)),
            text_features=text_pooled.numpy(),
            token_count=counts,
            frame_features=frame_features.numpy() if self.config.save_frames else None,
            token_features=torch.cat([t.features for t in tokens]).numpy() if save_tokens and n else None,
            token_ids=torch.cat([t.ids for t in tokens]).numpy() if save_tokens and n else None,
        )


def prepare_output(out_dir: Path, overwrite: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = sorted(out_dir.glob(SHARD_GLOB))
    if existing and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds {len(existing)} shard(s); pass --overwrite to replace them, or choose another -o"
        )
    for stale in [*existing, *out_dir.glob(SHARD_GLOB + TMP_SUFFIX)]:
        stale.unlink()


def run_extract(inputs: list[VideoInput], problems: list[InputProblem], out_dir: Path, extractor: Extractor,
                on_video: Callable[[VideoInput, int], None] | None = None) -> RunSummary:
    cfg = extractor.config
    summary = RunSummary(videos_total=len(inputs) + len(problems))
    summary.video_weights_random = extractor.image.record.sha256 == "random"
    started = time.perf_counter()
    for problem in problems:
        _fail(summary, VideoFailure(problem.given, "probe", problem.reason))
    writer = ShardWriter(out_dir, extractor.shard_attrs(), shard_size=cfg.shard_size, dtype=cfg.dtype,
                         save_frames=cfg.save_frames, save_tokens=cfg.save_tokens)
    for item in inputs:
        try:
            result = extractor.process(item)
        except VideoFailure as failure:
            _fail(summary, failure)
            if on_video:
                on_video(item, 0)
            continue
        for warning in result.video.warnings:
            log.warning("%s: %s", item.given, warning)
        summary.warnings += len(result.video.warnings)
        writer.add(result)
        summary.videos_done += 1
        summary.clips += result.num_clips
        if on_video:
            on_video(item, result.num_clips)
    writer.close()
    summary.shards = [str(p) for p in writer.written]
    summary.seconds = time.perf_counter() - started
    return summary


def _fail(summary: RunSummary, failure: VideoFailure) -> None:
    log.error("%s", failure)
    summary.videos_failed += 1
    summary.failures.append({"path": failure.path, "stage": failure.stage, "reason": failure.reason})
