"""One video through the models: decoded frames in, a `VideoResult` (its clips' rows) out.

`Extractor` loads every model once per run, before any video is decoded, so a bad model name or
missing weights end the run at once. Frames are preprocessed on the CPU (in the decode workers) and
encoded on the device in batches that span videos (see batching); `finish` then runs the text encoder,
also across videos, and the fusion, and assembles each video's rows. A video that fails here becomes
a failure of that video alone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..config import ExtractConfig
from ..device import library_versions, resolve_device, reuse_large_blocks
from ..fusion import FusionConfig, build_fusion, pad_tokens
from ..store.writer import VideoRecord, VideoResult
from .batching import VideoInProgress
from .discover import VideoInput
from .encoders import ImageEncoder, TextEncoder, WordTokens
from .failures import Failure
from .planning import ClipPlan, Word
from .subtitles import parse_languages
from .workers import VideoTask

log = logging.getLogger(__name__)


class Extractor:
    """Loaded models plus the per-video processing; build once per run."""

    def __init__(self, config: ExtractConfig, models_root: Path | None = None) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.workers, self.threads = plan_cpu_split(config, self.device)
        self.batch_size = batch_size_for(config, self.device)
        torch.set_num_threads(self.threads)
        if self.device.type == "cpu":
            log.debug("allocator: %s", reuse_large_blocks())
        self.image = ImageEncoder(config.video_model, config.video_weights, self.device, config.image_size,
                                  config.resize_size, models_root, config.precision, config.compile)
        self.text = TextEncoder(config.text_model, self.device, config.text_max_length, config.text_context_words,
                                config.text_batch_size, models_root, config.precision)
        fusion_config = FusionConfig(self.image.feature_dim, self.text.feature_dim, config.fusion_dim,
                                     config.fusion_heads)
        self.fusion, fusion_record = build_fusion(fusion_config, config.fusion_seed, config.fusion_checkpoint,
                                                  feature_models=[self.image.record, self.text.record])
        self.fusion.to(self.device)
        used = self.fusion.config
        if (used.dim, used.heads) != (config.fusion_dim, config.fusion_heads):
            # A checkpoint brings its own width: the shards record what made clips/fused (as `fuse`
            # does), since `train` and a resume read fusion_dim / fusion_heads from there.
            log.warning("the fusion checkpoint is %d wide with %d heads; the config's fusion_dim %d and "
                        "fusion_heads %d are not used (the shards record the checkpoint's)", used.dim, used.heads,
                        config.fusion_dim, config.fusion_heads)
            self.config = config = dataclasses.replace(config, fusion_dim=used.dim, fusion_heads=used.heads)
        self.fused_dim = used.dim
        self.models = [self.image.record, self.text.record, fusion_record]
        self.asr: Any = None  # WhisperRecognizer, when speech recognition is on
        if config.asr and "asr" in config.sources:
            from ..weights.resolve import resolve_asr_model
            from .asr import WhisperRecognizer

            folder, asr_record = resolve_asr_model(config.asr, models_root)
            self.asr = WhisperRecognizer(folder, self.device, config.asr_batch_size,
                                         half=config.precision != "fp32")
            self.asr_record = asr_record
            self.models.append(asr_record)

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
            "execution": {"device": str(self.device), "workers": self.workers, "threads": self.threads,
                          "precision": self.precision, "batch_size": self.batch_size,
                          "folded_batch_norms": self.image.folded_batch_norms},
        }

    @property
    def clips_per_chunk(self) -> int:
        """Clips per message from a decode worker: a batch's worth, at most CHUNK_FRAMES frames (the batcher
        joins chunks into batches, so small chunks cost nothing and keep what is buffered small)."""
        return max(1, min(self.batch_size, CHUNK_FRAMES) // self.config.frames_per_clip)

    @property
    def precision(self) -> str:
        """The dtype the encoders run at ("float32", "bfloat16", "float16"): --precision resolved for
        this device (auto is bf16 on CUDA GPUs that support it and on CPUs with native bf16, fp32 elsewhere)."""
        return str(self.image.amp_dtype or torch.float32).replace("torch.", "")

    def task_for(self, item: VideoInput) -> VideoTask:
        cfg = self.config
        return VideoTask(
            path=str(item.path), given=item.given, transcript=str(item.transcript) if item.transcript else None,
            clip_mode=cfg.clip_mode, clip_seconds=cfg.clip_seconds, min_clip_seconds=cfg.min_clip_seconds,
            frames_per_clip=cfg.frames_per_clip, decode_threads=cfg.decode_threads,
            resize_size=self.image.resize_size, crop_size=self.image.crop_size,
            clips_per_chunk=self.clips_per_chunk,
            sources=cfg.sources, subtitle_langs=parse_languages(cfg.subtitle_lang),
            segment_workers=self.workers,
            clips_per_segment=SEGMENT_CHUNKS * self.clips_per_chunk,
        )

    def finish(self, videos: list[VideoInProgress]) -> list[VideoResult | Failure]:
        """Text, fusion and assembly for videos whose frames are all encoded; the text encoder's batches
        span these videos, so many short videos still fill them."""
        cues = [[c.words for c in v.header.transcript.cues] if v.header.plan.words else [] for v in videos]
        try:
            tokens: list[Any] = self.text.encode_transcripts(cues)
        except (RuntimeError, ValueError):  # e.g. out of memory on one long transcript: find which video
            tokens = [self._text_alone(video, words) for video, words in zip(videos, cues)]
        return [word_tokens if isinstance(word_tokens, Failure) else self._finish_one(video, word_tokens)
                for video, word_tokens in zip(videos, tokens)]

    def _text_alone(self, video: VideoInProgress, cues: list[list[str]]) -> Any:
        try:
            return self.text.encode_cues(cues)
        except (RuntimeError, ValueError) as exc:
            return Failure(video.item.given, "encode", type(exc).__name__, f"text encoder: {exc}")

    def _finish_one(self, video: VideoInProgress, word_tokens: dict[tuple[int, int], WordTokens]) -> VideoResult:
        item, header = video.item, video.header
        plan, info, transcript = header.plan, header.info, header.transcript
        frame_features = (torch.cat([f for _, f in sorted(video.features, key=lambda p: p[0])]) if video.features
                          else torch.zeros(0, self.config.frames_per_clip, self.image.feature_dim))

        warnings = list(transcript.warnings) + list(plan.warnings)
        if item.transcript_note:
            warnings.append(item.transcript_note)
        if info.decoder_note:
            warnings.append(f"decoded with PyAV: {info.decoder_note}")
        if transcript.format == "none":
            warnings.append("no transcript found: every clip has empty text")
        record = VideoRecord(
            path=item.given, abspath=str(item.path), size=header.size, mtime=header.mtime, duration=info.duration,
            fps=info.fps, frame_count=info.frame_count, width=info.width, height=info.height, codec=info.codec,
            decoder=info.decoder, decoder_note=info.decoder_note,
            transcript=transcript.path or "", transcript_format=transcript.format,
            transcript_timed=transcript.timed, warnings=warnings,
        )
        return self._assemble(record, plan.clips, frame_features, word_tokens, plan.words)

    @torch.inference_mode()
    def _assemble(self, record: VideoRecord, clips: tuple[ClipPlan, ...], frame_features: torch.Tensor,
                  word_tokens: dict[tuple[int, int], WordTokens], words: tuple[Word, ...] = ()) -> VideoResult:
        n, d_txt, frames = len(clips), self.text.feature_dim, self.config.frames_per_clip
        limit = self.config.max_text_tokens
        kept = [clip_tokens(c, word_tokens, limit, d_txt) for c in clips]
        tokens = [t for t, _ in kept]
        record.warnings.extend(text_loss_warnings(words, word_tokens, [cut for _, cut in kept], limit,
                                                  self.config.text_max_length))
        counts = np.array([len(t.ids) for t in tokens], dtype=np.int32)
        fused = torch.zeros(n, self.fused_dim)
        text_pooled = torch.zeros(n, d_txt)
        batch = max(1, self.batch_size // self.config.frames_per_clip)
        for i in range(0, n, batch):
            sl = slice(i, min(i + batch, n))
            padded, mask = pad_tokens([tok.features for tok in tokens[sl]], d_txt)
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


def clip_tokens(clip: ClipPlan, word_tokens: dict[tuple[int, int], WordTokens], limit: int,
                dim: int) -> tuple[WordTokens, int]:
    """A clip's fusion input: its words' tokens in order, at most `limit`; and how many were cut."""
    parts = [word_tokens[(w.cue, w.position)] for w in clip.words if (w.cue, w.position) in word_tokens]
    if not parts:
        return WordTokens(torch.zeros(0, dim), torch.zeros(0, dtype=torch.int64)), 0
    features, ids = torch.cat([p.features for p in parts]), torch.cat([p.ids for p in parts])
    return WordTokens(features[:limit], ids[:limit]), max(0, len(ids) - limit)


def text_loss_warnings(words: tuple[Word, ...] | list[Word], word_tokens: dict[tuple[int, int], WordTokens],
                       cut: list[int], max_text_tokens: int, text_max_length: int) -> list[str]:
    """What of the transcript's text did not reach the fusion, as warnings for the video's row.

    `clips/text` keeps every word of a clip (what was said in its window); these warnings say which of
    those words' tokens are not in the clip's fused tokens (`token_count` counts those that are)."""
    warnings = []
    lost = [w.text for w in words if (w.cue, w.position) not in word_tokens]
    if lost:
        shown = ", ".join(repr(w[:40]) for w in lost[:3]) + (", ..." if len(lost) > 3 else "")
        warnings.append(f"{len(lost)} word(s) have no text tokens and are not fused (longer than "
                        f"text_max_length={text_max_length} tokens on their own, or dropped by the tokenizer): "
                        f"{shown}")
    over = [c for c in cut if c > 0]
    if over:
        warnings.append(f"{len(over)} clip(s) had more than max_text_tokens={max_text_tokens} tokens; "
                        f"{sum(over)} token(s) beyond the limit were not fused (clips/text still lists every word)")
    return warnings


CPU_BATCH, GPU_BATCH = 32, 128  # the default batch_size: frames per image-encoder forward
CHUNK_FRAMES = 32  # frames per message from a decode worker, at most
# The shortest segment of a long video shared by several decode workers, in chunks: each segment costs
# its worker one more open of the file (decord's index, ~0.1 s on a 20-minute file; the demux is passed on).
SEGMENT_CHUNKS = 4
MAX_GPU_WORKERS = 32  # each holds its own imports (~0.3 GB)


def batch_size_for(config: ExtractConfig, device: torch.device) -> int:
    """Frames per image-encoder forward: the config's, else 32 on the CPU (larger batches run no faster
    there) and 128 on a GPU (ResNet-50 bf16 on an H200: 5,898 frames/s at 32, 11,409 at 128)."""
    return config.batch_size or (GPU_BATCH if device.type == "cuda" else CPU_BATCH)


def plan_cpu_split(config: ExtractConfig, device: torch.device) -> tuple[int, int]:
    """(decode workers, torch threads). On the CPU the encoders need the cores far more than decoding
    does (ResNet-50 runs ~10 frames/s on 2 cores, decord decodes ~200), so torch gets every core and
    one worker decodes ahead; on a GPU decoding is the ceiling, so every core but one decodes (the
    main process feeds the device from the last). torchrun ranks on one machine share its cores
    (LOCAL_WORLD_SIZE)."""
    cores = max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1)))
    if device.type == "cuda":
        workers = config.workers or max(1, min(MAX_GPU_WORKERS, cores - 1))
        threads = config.threads or max(1, min(4, cores - workers))
    else:
        workers = config.workers or 1
        threads = config.threads or cores
    return workers, threads
