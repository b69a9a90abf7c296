"""The extraction run: discover -> plan -> decode -> encode -> fuse -> write.

`select_work` decides, from the output folder alone, what a run must extract (before any model
loads: a run with nothing new ends there, `record_problems`). `run_extract` hands the rest to the
decode workers and takes their chunks in input order: frames go to the batcher, finished videos to
the writer. A failed video is logged and recorded in the failure log, and the run goes on; a stop
request ends it after the videos already decoded are written. It returns a `RunSummary`.

Importing this module does not import torch (the batcher and the models come in with run_extract).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..store.outdir import OutputDir
from ..store.writer import ShardWriter
from .batching import BackgroundWriter, BatchFailed, FrameBatcher, VideoInProgress
from .discover import InputProblem, VideoInput
from .failures import Failure, VideoFailed
from .asr import AsrPass
from .sources import needs_recognition
from .subtitles import parse_languages
from .workers import Chunk, DecodePool, Header

if TYPE_CHECKING:
    from .extractor import Extractor

log = logging.getLogger(__name__)


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
    precision: str | None = None  # what the encoders ran at (fp32, bf16, fp16); None when nothing was loaded
    interrupted: bool = False
    main_thread_cpu_seconds: float = 0.0  # CPU time of the thread running the run (its busy share: / seconds)
    first_clip_seconds: float | None = None  # process start -> first video handed to the writer; None: unknown

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["clips_per_second"] = round(self.clips / self.seconds, 3) if self.seconds > 0 else 0.0
        d["seconds"] = round(self.seconds, 3)
        d["main_thread_cpu_seconds"] = round(self.main_thread_cpu_seconds, 3)
        if self.first_clip_seconds is not None:
            d["first_clip_seconds"] = round(self.first_clip_seconds, 3)
        return d


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


@dataclass
class Work:
    """What a run must extract, decided from the output folder before any model loads."""

    todo: list[VideoInput]
    summary: RunSummary  # with the skipped videos counted
    records: list[dict[str, Any]]  # the failure log, every part's, read once
    seconds: float  # spent deciding (counted in the run's seconds; model loading is not)


def select_work(inputs: list[VideoInput], problems: list[InputProblem], out: OutputDir,
                options: RunOptions) -> Work:
    """The videos not done yet (not in a completed shard, or changed since; failed before only if changed
    or with --retry-failed), from the output folder's shards and failure log alone."""
    started = time.perf_counter()
    summary = RunSummary(videos_total=len(inputs) + len(problems))
    done = out.done_videos()
    records = out.failure_records()  # every part's log, read once
    failed_before = out.failed_videos(done, records)
    todo = _select(inputs, done, failed_before, options, summary)
    return Work(todo, summary, records, time.perf_counter() - started)


def record_problems(problems: list[InputProblem], out: OutputDir, work: Work,
                    on_video: Callable[[int], None] | None = None) -> RunSummary:
    """A run with nothing to extract: the input problems go to the failure log, and no model is loaded."""
    started = time.perf_counter()
    log_ = _Failures(out, work.summary, work.records, on_video)
    for problem in problems:
        log_.fail(Failure(problem.given, "probe", "InputError", problem.reason), os.path.abspath(problem.given), None)
    work.summary.seconds = time.perf_counter() - started + work.seconds
    return work.summary


def run_extract(inputs: list[VideoInput], problems: list[InputProblem], out: OutputDir, extractor: Extractor,
                options: RunOptions, on_video: Callable[[int], None] | None = None,
                pool: DecodePool | None = None, work: Work | None = None) -> RunSummary:
    """Extract what is not done yet (`work`, or selected here); failures go to the failure log; completed
    shards are never touched."""
    from ..store.reader import PRECISION_NAMES

    cpu_started = time.thread_time()
    cfg = extractor.config
    work = work or select_work(inputs, problems, out, options)
    summary, records = work.summary, work.records
    started = time.perf_counter() - work.seconds
    summary.video_weights_random = extractor.image.record.sha256 == "random"
    summary.precision = PRECISION_NAMES.get(extractor.precision, extractor.precision)
    pool = pool or DecodePool(extractor.workers, options.decode_timeout)
    writer = BackgroundWriter(ShardWriter(out.path, extractor.shard_attrs(), shard_size=cfg.shard_size,
                                          dtype=cfg.dtype, save_frames=cfg.save_frames, save_tokens=cfg.save_tokens,
                                          first_index=(out.next_shard_index() if options.first_shard is None
                                                       else options.first_shard),
                                          part_label=out.part_label))
    run = _Run(extractor, out, writer, summary, records, on_video)
    asr: AsrPass | None = None
    try:
        for problem in problems:
            run.fail(Failure(problem.given, "probe", "InputError", problem.reason), os.path.abspath(problem.given),
                     None)
        todo, task_of = work.todo, extractor.task_for
        if extractor.asr is not None:
            todo, task_of, asr = _start_recognition(todo, extractor, out, options)
        for item, messages in pool.run(todo, task_of):
            if options.stop() or (options.fail_fast and summary.videos_failed):
                break
            if not run.take(item, messages, options.stop):
                break
        run.encode_waiting()  # the last, partial batch (also on a stop: these videos are fully decoded)
        run.finish_ready()
        writer.close()
    finally:
        writer.abort()  # no-op after a clean close
        pool.close()
        if asr is not None:
            asr.close()
        summary.shards = [str(p) for p in writer.written]
        summary.seconds = time.perf_counter() - started
        summary.main_thread_cpu_seconds = time.thread_time() - cpu_started
        summary.interrupted = options.stop()
    return summary


class _Failures:
    """Failed videos: logged, appended to the failure log, counted in the summary."""

    def __init__(self, out: OutputDir, summary: RunSummary, records: list[dict[str, Any]],
                 on_video: Callable[[int], None] | None) -> None:
        self.out, self.summary, self.on_video = out, summary, on_video
        self.attempts = Counter(record["abspath"] for record in records)  # earlier failures per video

    def fail_video(self, failure: Failure, item: VideoInput) -> None:
        self.fail(failure, str(item.path), _stat(item.path))

    def fail(self, failure: Failure, abspath: str, stat: os.stat_result | None) -> None:
        """Log the failure, append it to the failure log (with the file's size and mtime, to tell later
        whether it changed) and count it."""
        failure, abspath = replace(failure, path=printable(failure.path)), printable(abspath)
        log.error("%s: %s: %s", failure.path, failure.stage, failure.message)
        self.out.record_failure(**asdict(failure), abspath=abspath, attempt=self.attempts[abspath] + 1,
                                size=stat.st_size if stat else None, mtime=stat.st_mtime if stat else None)
        self.summary.videos_failed += 1
        self.summary.failures.append({"path": failure.path, "stage": failure.stage, "reason": failure.message})
        if self.on_video:
            self.on_video(0)


class _Run(_Failures):
    """The videos between decode and write (kept in input order, so rows are written in that order),
    and what happened to each: written, or failed and recorded."""

    def __init__(self, extractor: Extractor, out: OutputDir, writer: BackgroundWriter, summary: RunSummary,
                 records: list[dict[str, Any]], on_video: Callable[[int], None] | None) -> None:
        super().__init__(out, summary, records, on_video)
        cfg = extractor.config
        self.extractor, self.writer = extractor, writer
        self.batcher = FrameBatcher(extractor.image.encode, extractor.batch_size, cfg.frames_per_clip)
        self.in_order: deque[VideoInProgress] = deque()  # decoded or decoding, written in input order

    def take(self, item: VideoInput, messages: Iterator[Header | Chunk | Failure], stop: StopRequest) -> bool:
        """Feed one video's decoded chunks to the batcher and write what is ready; False: the run must stop."""
        video: VideoInProgress | None = None
        try:
            for message in messages:
                if stop():
                    raise Abandoned(item.given)
                if isinstance(message, Failure):
                    raise VideoFailed(message)
                if isinstance(message, Header):
                    video = VideoInProgress(item, message)
                    self.in_order.append(video)
                else:
                    self.batcher.add(video, message)
            if video is None:
                raise VideoFailed(Failure(item.given, "decode", "DecoderError", "the decoder returned nothing"))
            video.decoded = True
        except VideoFailed as exc:
            self.forget(video)
            self.fail_video(exc.failure, item)
            return True
        except BatchFailed as failed:
            self.fail_batch(failed)
            return True
        except Abandoned:
            self.forget(video)
            log.warning("%s: interrupted; it will be extracted by the next run", item.given)
            return False
        self.finish_ready()
        return True

    def encode_waiting(self) -> None:
        try:
            self.batcher.encode()
        except BatchFailed as failed:
            self.fail_batch(failed)

    def finish_ready(self) -> None:
        """Finish and write the videos at the head of the input order whose frames are all encoded."""
        ready = []
        while self.in_order and self.in_order[0].ready:
            ready.append(self.in_order.popleft())
        for video, result in zip(ready, self.extractor.finish(ready) if ready else []):
            if isinstance(result, Failure):
                self.fail_video(result, video.item)
                continue
            for warning in result.video.warnings:
                log.warning("%s: %s", video.item.given, warning)
            self.summary.warnings += len(result.video.warnings)
            self.writer.add(result)
            if self.summary.first_clip_seconds is None:
                self.summary.first_clip_seconds = process_age()
            self.summary.videos_done += 1
            self.summary.clips += result.num_clips
            if self.on_video:
                self.on_video(result.num_clips)

    def fail_batch(self, failed: BatchFailed) -> None:
        for video, failure in failed.videos:
            self.in_order.remove(video)
            self.fail_video(failure, video.item)

    def forget(self, video: VideoInProgress | None) -> None:
        """Drop a video that will not be written from the batcher and the write order."""
        if video is not None:
            self.batcher.drop(video)
            self.in_order.remove(video)



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


ASR_FOLDER = "asr"  # OUT/asr/: the recognised transcripts, as Whisper JSON


def _start_recognition(todo: list[VideoInput], extractor: Extractor, out: OutputDir, options: RunOptions
                       ) -> tuple[list[VideoInput], Callable[[VideoInput], Any], AsrPass]:
    """Start speech recognition, on a thread, for the videos that have no transcript; the videos that have
    one go first, so the encoders work on them while speech is recognised. Returns the new order, the
    task maker (which waits for a video's transcript) and the pass."""
    cfg = extractor.config
    languages = parse_languages(cfg.subtitle_lang)
    needs = [needs_recognition(item.path, cfg.sources, item.transcript, languages) for item in todo]
    ordered = [item for item, need in zip(todo, needs) if not need] + [item for item, need in zip(todo, needs) if need]
    wanted = [(str(item.path), item.path, item.relative) for item, need in zip(todo, needs) if need]
    record = extractor.asr_record
    asr = AsrPass(extractor.asr.recognise, cfg.asr_batch_size, out.path / ASR_FOLDER, record.name, record.sha256,
                  wanted, stop=options.stop).start()

    def task_of(item: VideoInput) -> Any:
        task = extractor.task_for(item)
        result = asr.wait(str(item.path))
        if result is None:
            return task
        return replace(task, asr_json=str(result.json_path) if result.json_path else None, asr_model=cfg.asr or "",
                       asr_error=result.error)

    return ordered, task_of, asr


def printable(path: str) -> str:
    """A path as valid UTF-8 text: bytes that are not UTF-8 shown as \\xNN (for logs and JSON)."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def process_age() -> float | None:
    """Seconds since this process started (Linux: /proc/self/stat's starttime, in clock ticks since boot),
    or None where that cannot be known."""
    try:
        with open("/proc/self/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()  # after the command name, which may hold spaces
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return age if age >= 0 else None


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None
