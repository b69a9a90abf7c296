"""The extraction run: discover -> plan -> decode -> encode -> fuse -> write.

`Extractor` holds the loaded models; `Extractor.process` turns one video into a
`VideoResult` or raises `VideoFailure` (a one-line reason and the stage it
failed in). `run_extract` drives a whole run and returns a `RunSummary`;
a failed video is reported and the run goes on.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import queue
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import __version__
from ..config import ExtractConfig
from ..device import library_versions, resolve_device
from .discover import InputProblem, VideoInput
from .encoders import ImageEncoder, TextEncoder, WordTokens
from ..fusion import FusionConfig, build_fusion, pad_tokens
from ..store.outdir import OutputDir
from .planning import ClipPlan, Word
from .workers import Chunk, DecodePool, Failed, Header, VideoTask
from ..store.writer import ShardWriter, VideoRecord, VideoResult

log = logging.getLogger(__name__)


class VideoFailure(Exception):
    def __init__(self, path: str, stage: str, reason: str, error_type: str = "Error") -> None:
        reason = " ".join(str(reason).split())  # always one line
        super().__init__(f"{path}: {stage}: {reason}")
        self.path, self.stage, self.reason, self.error_type = path, stage, reason, error_type


class Abandoned(Exception):
    """The run was asked to stop while this video was in progress."""


@dataclass
class RunSummary:
    videos_total: int = 0
    videos_done: int = 0
    videos_skipped: int = 0  # already in a completed shard, unchanged
    videos_superseded: int = 0  # changed since extracted: extracted again
    videos_failed: int = 0
    videos_failed_before: int = 0  # failed in an earlier run and unchanged: see --retry-failed
    clips: int = 0
    shards: list[str] = field(default_factory=list)
    seconds: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)
    warnings: int = 0  # warnings logged: the videos' (stored in their rows) and the run's
    run_warnings: list[str] = field(default_factory=list)  # the run's own (e.g. a change of precision)
    video_weights_random: bool = False
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["clips_per_second"] = round(self.clips / self.seconds, 3) if self.seconds > 0 else 0.0
        d["seconds"] = round(self.seconds, 3)
        return d


class Extractor:
    """Loaded models plus the per-video processing; build once per run."""

    def __init__(self, config: ExtractConfig, models_root: Path | None = None) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.workers, self.threads = plan_cpu_split(config, self.device)
        torch.set_num_threads(self.threads)
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
                          "precision": self.precision},
        }

    @property
    def precision(self) -> str:
        """The dtype the encoders run at ("float32", "bfloat16", "float16"): --precision resolved for
        this device (auto is bf16 on CUDA GPUs that support it, fp32 elsewhere)."""
        return str(self.image.amp_dtype or torch.float32).replace("torch.", "")

    def task_for(self, item: VideoInput) -> VideoTask:
        cfg = self.config
        return VideoTask(
            path=str(item.path), transcript=str(item.transcript) if item.transcript else None,
            clip_mode=cfg.clip_mode, clip_seconds=cfg.clip_seconds, min_clip_seconds=cfg.min_clip_seconds,
            frames_per_clip=cfg.frames_per_clip, decode_threads=cfg.decode_threads,
            resize_size=self.image.resize_size, crop_size=self.image.crop_size,
            clips_per_chunk=max(1, cfg.batch_size // cfg.frames_per_clip),
        )

    def finish(self, videos: list["VideoInProgress"]) -> list[VideoResult | VideoFailure]:
        """Text, fusion and assembly for videos whose frames are all encoded; the text encoder's batches
        span these videos, so many short videos still fill them."""
        cues = [[c.words for c in v.header.transcript.cues] if v.header.plan.words else [] for v in videos]
        try:
            tokens: list[Any] = self.text.encode_transcripts(cues)
        except (RuntimeError, ValueError):  # e.g. out of memory on one long transcript: find which video
            tokens = [self._text_alone(video, words) for video, words in zip(videos, cues)]
        return [word_tokens if isinstance(word_tokens, VideoFailure) else self._finish_one(video, word_tokens)
                for video, word_tokens in zip(videos, tokens)]

    def _text_alone(self, video: "VideoInProgress", cues: list[list[str]]) -> Any:
        try:
            return self.text.encode_cues(cues)
        except (RuntimeError, ValueError) as exc:
            return VideoFailure(video.item.given, "encode", f"text encoder: {exc}", type(exc).__name__)

    def _finish_one(self, video: "VideoInProgress", word_tokens: dict[tuple[int, int], WordTokens]) -> VideoResult:
        item, header = video.item, video.header
        plan, info, transcript = header.plan, header.info, header.transcript
        frame_features = (torch.cat([f for _, f in sorted(video.features, key=lambda p: p[0])]) if video.features
                          else torch.zeros(0, self.config.frames_per_clip, self.image.feature_dim))

        warnings = list(transcript.warnings) + list(plan.warnings)
        if item.transcript_note:
            warnings.append(item.transcript_note)
        if info.decoder_note:
            warnings.append(f"decoded with PyAV: {info.decoder_note}")
        if item.transcript is None:
            warnings.append("no transcript found: every clip has empty text")
        record = VideoRecord(
            path=item.given, abspath=str(item.path), size=header.size, mtime=header.mtime, duration=info.duration,
            fps=info.fps, frame_count=info.frame_count, width=info.width, height=info.height, codec=info.codec,
            decoder=info.decoder, decoder_note=info.decoder_note,
            transcript=str(item.transcript) if item.transcript else "", transcript_format=transcript.format,
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
        batch = max(1, self.config.batch_size // self.config.frames_per_clip)
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


class StopRequest:
    """Set by the first SIGINT/SIGTERM: take no new video, abandon the current one, write what is done."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self) -> bool:
        return self.signal is not None


@dataclass
class RunOptions:
    retry_failed: bool = False
    fail_fast: bool = False
    decode_timeout: float = 120.0
    stop: StopRequest = field(default_factory=StopRequest)
    first_shard: int | None = None  # number of the first shard written (agreed by torchrun ranks)


class OutputWriteError(RuntimeError):
    """The output folder cannot be written (full disk, permissions): the run ends."""


@dataclass
class VideoInProgress:
    item: VideoInput
    header: Header
    features: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (first clip, (n, F, d_img))
    chunks_waiting: int = 0  # chunks handed to the batcher, not yet encoded
    decoded: bool = False  # every chunk has arrived

    @property
    def ready(self) -> bool:
        return self.decoded and self.chunks_waiting == 0


class FrameBatcher:
    """Collects decoded chunks, across video boundaries, into full image-encoder batches."""

    def __init__(self, extractor: Extractor) -> None:
        self.extractor = extractor
        self.waiting: list[tuple[VideoInProgress, Chunk]] = []
        self.frames = 0

    def add(self, video: VideoInProgress, chunk: Chunk) -> None:
        video.chunks_waiting += 1
        self.waiting.append((video, chunk))
        self.frames += len(chunk.unique_indices)
        if self.frames >= self.extractor.config.batch_size:
            self.encode()

    def drop(self, video: VideoInProgress) -> None:
        self.waiting = [(v, c) for v, c in self.waiting if v is not video]
        self.frames = sum(len(c.unique_indices) for _, c in self.waiting)

    def encode(self) -> None:
        """One forward pass over everything waiting (a few batches at most); features go back to their videos."""
        if not self.waiting:
            return
        ex, frames_per_clip = self.extractor, self.extractor.config.frames_per_clip
        pixels = torch.from_numpy(np.concatenate([c.pixels for _, c in self.waiting]))
        try:
            encoded = ex.image.encode(pixels, ex.config.batch_size)
        except RuntimeError as exc:
            videos = {id(v): v for v, _ in self.waiting}.values()
            self.waiting, self.frames = [], 0
            for video in videos:
                video.chunks_waiting = -1  # marks the failure for the run loop
            raise BatchFailed(list(videos), f"image encoder: {exc}") from None
        offset = 0
        for video, chunk in self.waiting:
            rows = encoded[offset : offset + len(chunk.unique_indices)]
            offset += len(chunk.unique_indices)
            position = {idx: k for k, idx in enumerate(chunk.unique_indices)}
            clips = video.header.plan.clips[chunk.first_clip : chunk.first_clip + chunk.clip_count]
            wanted = [position[i] for clip in clips for i in clip.frame_indices]
            video.features.append((chunk.first_clip, rows[wanted].view(len(clips), frames_per_clip, -1)))
            video.chunks_waiting -= 1
        self.waiting, self.frames = [], 0


class BatchFailed(Exception):
    def __init__(self, videos: list[VideoInProgress], reason: str) -> None:
        super().__init__(reason)
        self.videos, self.reason = videos, reason


_ABORT = object()


class BackgroundWriter:
    """Runs ShardWriter.add/close on a thread so HDF5 I/O overlaps compute; errors surface on the next call."""

    def __init__(self, writer: ShardWriter, depth: int = 2) -> None:
        self.writer = writer
        self.queue: queue.Queue = queue.Queue(maxsize=depth)  # bounded: at most `depth` videos wait
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="videobert-writer", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            result = self.queue.get()
            try:
                if result is _ABORT:
                    return
                if result is None:
                    if self.error is None:
                        self.writer.close()
                    return
                if self.error is None:
                    self.writer.add(result)
            except BaseException as exc:  # kept for the main thread
                self.error = exc
                if result is None:
                    return
            finally:
                self.queue.task_done()

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def add(self, result: VideoResult) -> None:
        self._raise()
        self.queue.put(result)

    def close(self) -> None:
        """Write what is pending and stop; raises the first write error."""
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        self._raise()

    def abort(self) -> None:
        """Stop without writing what is pending (after an error or an abort)."""
        if self.thread.is_alive():
            self.queue.put(_ABORT)
            self.thread.join()

    @property
    def written(self) -> list[Path]:
        return self.writer.written


def plan_cpu_split(config: ExtractConfig, device: torch.device) -> tuple[int, int]:
    """(decode workers, torch threads). On the CPU the encoders need the cores far more than decoding
    does (ResNet-50 runs ~10 frames/s on 2 cores, decord decodes ~200), so torch gets every core and
    one worker decodes ahead; on a GPU the workers must keep up with the device. torchrun ranks on
    one machine share its cores (LOCAL_WORLD_SIZE)."""
    cores = max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1)))
    if device.type == "cuda":
        workers = config.workers or max(1, min(8, cores - 1))
        threads = config.threads or max(1, min(4, cores - workers))
    else:
        workers = config.workers or 1
        threads = config.threads or cores
    return workers, threads


def run_extract(inputs: list[VideoInput], problems: list[InputProblem], out: OutputDir, extractor: Extractor,
                options: RunOptions, on_video: Callable[[int], None] | None = None,
                pool: DecodePool | None = None) -> RunSummary:
    """Extract what is not done yet; failures go to the failure log; completed shards are never touched."""
    cfg = extractor.config
    started = time.perf_counter()
    summary = RunSummary(videos_total=len(inputs) + len(problems))
    summary.video_weights_random = extractor.image.record.sha256 == "random"
    done = out.done_videos()
    records = out.failure_records()  # every part's log, read once
    failed_before = out.failed_videos(done, records)
    attempts: dict[str, int] = {}
    for record in records:
        attempts[record["abspath"]] = attempts.get(record["abspath"], 0) + 1

    def fail(given: str, abspath: str, stage: str, error_type: str, reason: str, stat: os.stat_result | None) -> None:
        reason = " ".join(str(reason).split())
        given, abspath = printable(given), printable(abspath)
        log.error("%s: %s: %s", given, stage, reason)
        attempt = attempts.get(abspath, 0) + 1
        out.record_failure(path=given, abspath=abspath, stage=stage, error_type=error_type, message=reason,
                           size=stat.st_size if stat else None, mtime=stat.st_mtime if stat else None,
                           attempt=attempt)
        summary.videos_failed += 1
        summary.failures.append({"path": given, "stage": stage, "reason": reason})
        if on_video:
            on_video(0)

    for problem in problems:
        fail(problem.given, os.path.abspath(problem.given), "probe", "InputError", problem.reason, None)
    todo = _select(inputs, done, failed_before, options, summary)

    writer = BackgroundWriter(ShardWriter(out.path, extractor.shard_attrs(), shard_size=cfg.shard_size,
                                          dtype=cfg.dtype, save_frames=cfg.save_frames, save_tokens=cfg.save_tokens,
                                          first_index=(out.next_shard_index() if options.first_shard is None
                                                       else options.first_shard),
                                          part_label=out.part_label))
    pool = pool or DecodePool(extractor.workers, options.decode_timeout)
    batcher = FrameBatcher(extractor)
    in_order: deque[VideoInProgress] = deque()  # decoded or decoding, written in input order

    def finish_ready() -> None:
        ready = []
        while in_order and in_order[0].ready:
            ready.append(in_order.popleft())
        for video, result in zip(ready, extractor.finish(ready) if ready else []):
            if isinstance(result, VideoFailure):
                fail(video.item.given, str(video.item.path), result.stage, result.error_type, result.reason,
                     _stat(video.item.path))
                continue
            for warning in result.video.warnings:
                log.warning("%s: %s", video.item.given, warning)
            summary.warnings += len(result.video.warnings)
            _write(writer.add, result)
            summary.videos_done += 1
            summary.clips += result.num_clips
            if on_video:
                on_video(result.num_clips)

    def fail_batch(failed: BatchFailed) -> None:
        for video in failed.videos:
            in_order.remove(video)
            fail(video.item.given, str(video.item.path), "encode", "RuntimeError", failed.reason,
                 _stat(video.item.path))

    def forget(video: VideoInProgress | None) -> None:
        """Drop a video that will not be written from the batcher and the write order."""
        if video is not None:
            batcher.drop(video)
            in_order.remove(video)

    def encode_waiting() -> None:
        try:
            batcher.encode()
        except BatchFailed as failed:
            fail_batch(failed)

    try:
        for item, messages in pool.run(todo, extractor.task_for):
            if options.stop() or (options.fail_fast and summary.videos_failed):
                break
            video: VideoInProgress | None = None
            try:
                for message in messages:
                    if options.stop():
                        raise Abandoned(item.given)
                    if isinstance(message, Failed):
                        raise VideoFailure(item.given, message.stage, message.message, message.error_type)
                    if isinstance(message, Header):
                        video = VideoInProgress(item, message)
                        in_order.append(video)
                    else:
                        batcher.add(video, message)
                if video is None:
                    raise VideoFailure(item.given, "decode", "the decoder returned nothing", "DecoderError")
                video.decoded = True
            except VideoFailure as failure:
                forget(video)
                fail(item.given, str(item.path), failure.stage, failure.error_type, failure.reason,
                     _stat(item.path))
                continue
            except BatchFailed as failed:
                fail_batch(failed)
                continue
            except Abandoned:
                forget(video)
                log.warning("%s: interrupted; it will be extracted by the next run", item.given)
                break
            finish_ready()
        encode_waiting()  # the last, partial batch (also on a stop: these videos are fully decoded)
        finish_ready()
        _write(writer.close)
    finally:
        writer.abort()  # no-op after a clean close
        pool.close()
        summary.shards = [str(p) for p in writer.written]
        summary.seconds = time.perf_counter() - started
        summary.interrupted = options.stop()
    return summary


def _select(inputs: list[VideoInput], done: dict, failed_before: dict, options: RunOptions,
            summary: RunSummary) -> list[VideoInput]:
    """The videos this run must extract; counts the skipped ones in `summary`."""
    todo: list[VideoInput] = []
    for item in inputs:
        key = str(item.path)
        stat = _stat(item.path)
        if key in done:
            entry = done[key]
            if stat is None or (stat.st_size, stat.st_mtime) == (entry.size, entry.mtime):
                summary.videos_skipped += 1
                continue
            log.warning("%s: changed since it was extracted into %s; extracting again (the new rows supersede "
                        "the old ones)", item.given, entry.shard)
            summary.videos_superseded += 1
        elif key in failed_before:
            previous = failed_before[key]
            unchanged = stat is None or (previous.get("size"), previous.get("mtime")) == (stat.st_size, stat.st_mtime)
            if unchanged and not options.retry_failed:
                summary.videos_failed_before += 1
                continue
        elif options.retry_failed:  # only what failed before
            summary.videos_skipped += 1
            continue
        todo.append(item)
    return todo


def printable(path: str) -> str:
    """A path as valid UTF-8 text: bytes that are not UTF-8 shown as \\xNN (for logs and JSON)."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def _write(action: Callable[..., Any], *args: Any) -> None:
    try:
        action(*args)
    except OSError as exc:
        raise OutputWriteError(f"cannot write the output ({exc.strerror or exc}); completed shards are intact, "
                               "rerun to finish") from None


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None
