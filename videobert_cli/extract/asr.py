"""Speech recognition for videos with no transcript: Whisper (transformers), word timestamps, batched.

Audio: `AudioWindows` decodes a file's first audio stream with PyAV, resampled to 16 kHz mono float32,
and hands out 30 s windows every 25 s (5 s overlap). It holds at most one window plus one decoded
frame, never the whole track: a 2-hour film costs the memory of 30 s.

Recognition: `WhisperRecognizer` runs the transformers ASR pipeline (greedy decoding, word timestamps
from the cross-attention alignment heads) on a batch of windows. A window that is silent (RMS below
SILENCE_RMS, about -60 dBFS) is not recognised: Whisper invents words ("Thank you.") in silence.

Word times: Whisper stretches a word before a pause over the pause; `trim_words` cuts words longer
than MAX_WORD_SECONDS back to that length (from their start; the window's first word from its end).

Long audio: a word is kept from the window where it lies farthest from an edge: window k (start
s_k = 25 k) keeps the words whose centre lies in [s_k + 2.5, s_k + 27.5) (from 0 in the first window, to
the end in the last), so each moment of audio is taken from exactly one window, and no word cut by a
window's edge is taken from that window. Times are the window's start plus Whisper's times.

`AsrPass` runs in a background thread beside the image encoder: it recognises, in input order, the
videos that need it, filling each batch with windows of several videos, and writes each result as a
Whisper JSON (`segments` with `words`, plus the model, its sha256, the video's size and mtime, and
warnings) under `OUT/asr/`, atomically. A rerun reuses a JSON made by the same model for the same file.
A video without an audio stream, or silent, gets a JSON with no segments (no text, not a failure);
audio that stops decoding keeps what was recognised before, with a warning; a recognition error
(the model raising) fails that video at stage "asr".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..weights.resolve import ModelError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WINDOW_SECONDS = 30.0  # Whisper's input length
STRIDE_SECONDS = 25.0  # 5 s overlap between windows
SILENCE_RMS = 1e-3  # about -60 dBFS: quieter windows are not recognised
MAX_WORD_SECONDS = 1.0  # a recognised word longer than this has swallowed a pause (see trim_words)
SEGMENT_GAP = 1.0  # a pause this long between words starts a new segment in the JSON
JSON_VERSION = 1


@dataclass(frozen=True)
class Window:
    start: float  # seconds from the start of the audio
    samples: np.ndarray  # float32 mono at SAMPLE_RATE, at most WINDOW_SECONDS long
    first: bool
    last: bool = False


class AudioWindows:
    """Overlapping windows of a file's first audio stream, decoded and resampled as they are needed.

    `peak_seconds` says how much audio was held at most; `warnings` what went wrong while decoding
    (the windows before it are still given); `has_audio` is False for a file without an audio stream."""

    def __init__(self, path: Path, window: float = WINDOW_SECONDS, stride: float = STRIDE_SECONDS) -> None:
        self.path, self.window, self.stride = path, int(window * SAMPLE_RATE), int(stride * SAMPLE_RATE)
        self.peak_seconds = 0.0
        self.warnings: list[str] = []
        self.has_audio = True
        self.duration = 0.0

    def _samples(self) -> Iterator[np.ndarray]:
        import av

        try:
            container = av.open(str(self.path))
        except Exception as exc:  # noqa: BLE001  (the decoder fails the video with its own reason)
            self.has_audio = False
            self.warnings.append(f"speech recognition: cannot open the file ({exc})")
            return
        with container:
            if not container.streams.audio:
                self.has_audio = False
                return
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            try:
                for frame in container.decode(stream):
                    for out in resampler.resample(frame):
                        yield out.to_ndarray().reshape(-1)
                for out in resampler.resample(None):
                    yield out.to_ndarray().reshape(-1)
            except (av.FFmpegError, ValueError) as exc:
                self.warnings.append(f"speech recognition: audio stopped decoding at {self.duration:.1f} s "
                                     f"({exc}); the rest has no text")

    def __iter__(self) -> Iterator[Window]:
        parts: deque[np.ndarray] = deque()
        held = 0  # samples in parts
        start = 0  # sample index of parts[0][0]
        first = True
        pending: Window | None = None  # given one window late, to know whether it is the last
        for block in self._samples():
            self.duration += len(block) / SAMPLE_RATE
            parts.append(block.astype(np.float32, copy=False))
            held += len(block)
            self.peak_seconds = max(self.peak_seconds, held / SAMPLE_RATE)
            while held >= self.window:
                data = np.concatenate(parts)
                if pending is not None:
                    yield pending
                pending = Window(start / SAMPLE_RATE, data[: self.window].copy(), first)
                first = False
                data = data[self.stride :]
                parts, held, start = deque([data]), len(data), start + self.stride
        data = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        # What remains after the last full window: a window of its own unless the last one covered it.
        if len(data) > (self.window - self.stride if pending is not None else 0):
            if pending is not None:
                yield pending
            pending = Window(start / SAMPLE_RATE, data.copy(), first)
        if pending is not None:
            yield replace(pending, last=True)


def keep_range(window: Window, window_seconds: float = WINDOW_SECONDS,
               stride_seconds: float = STRIDE_SECONDS) -> tuple[float, float]:
    """The span (absolute seconds) whose words this window contributes."""
    margin = (window_seconds - stride_seconds) / 2
    lo = window.start if window.first else window.start + margin
    hi = float("inf") if window.last else window.start + window_seconds - margin
    return lo, hi


def is_silent(samples: np.ndarray) -> bool:
    return samples.size == 0 or float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) < SILENCE_RMS


Word = tuple  # (text, start, end) in seconds


class WhisperRecognizer:
    """A Whisper model on a device: `recognise(windows)` -> per window, its words (text, start, end),
    times relative to the window's start."""

    def __init__(self, folder: Path, device: Any, batch_size: int = 8, half: bool = False) -> None:
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor, pipeline
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        dtype = torch.float16 if half and getattr(device, "type", "cpu") == "cuda" else torch.float32
        try:
            self.model = WhisperForConditionalGeneration.from_pretrained(str(folder), dtype=dtype).eval().to(device)
            processor = WhisperProcessor.from_pretrained(str(folder))
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelError(f"{folder}: cannot load as a Whisper model ({str(exc).splitlines()[0]})") from None
        tokenizer = processor.tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token  # batching needs one
        self.batch_size = batch_size
        self.english_only = not getattr(self.model.generation_config, "is_multilingual", False)
        self.pipe = pipeline("automatic-speech-recognition", model=self.model, tokenizer=tokenizer,
                             feature_extractor=processor.feature_extractor, device=device, dtype=dtype)

    def recognise(self, windows: Sequence[np.ndarray]) -> list[list[Word]]:
        import torch

        if not windows:
            return []
        inputs = [{"raw": np.asarray(w, dtype=np.float32), "sampling_rate": SAMPLE_RATE} for w in windows]
        generate = {"num_beams": 1, "do_sample": False}
        if not self.english_only:
            generate["task"] = "transcribe"
        with torch.inference_mode():
            results = self.pipe(inputs, batch_size=self.batch_size, return_timestamps="word",
                                generate_kwargs=generate)
        out = []
        for result in results:
            words = []
            for chunk in result.get("chunks") or []:
                text = str(chunk.get("text", "")).strip()
                start, end = (chunk.get("timestamp") or (None, None))[:2]
                if not text or start is None:
                    continue
                end = start if end is None else max(float(end), float(start))
                words.append((text, float(start), end))
            out.append(words)
        return out


def trim_words(words: Sequence[Word], longest: float = MAX_WORD_SECONDS) -> list[Word]:
    """Whisper's word times stretch over silence: the word before a pause ends where the next word starts
    ("dog." 3.76-6.52 s for a word spoken in 0.4 s), the first word starts at the window's start. A word
    longer than `longest` is cut to that length: from its start, except the window's first word, from its end."""
    out = []
    for i, (text, start, end) in enumerate(words):
        if end - start > longest:
            start, end = (end - longest, end) if i == 0 else (start, start + longest)
        out.append((text, start, end))
    return out


def segments_of(words: list[Word], gap: float = SEGMENT_GAP) -> list[dict[str, Any]]:
    """Whisper JSON segments: words split where a pause of `gap` seconds or more falls."""
    segments: list[dict[str, Any]] = []
    for text, start, end in sorted(words, key=lambda w: (w[1], w[2])):
        word = {"word": text, "start": round(start, 3), "end": round(end, 3)}
        if segments and start - segments[-1]["end"] < gap:
            segments[-1]["words"].append(word)
            segments[-1]["end"] = max(segments[-1]["end"], word["end"])
        else:
            segments.append({"start": word["start"], "end": word["end"], "words": [word]})
    for segment in segments:
        segment["text"] = " ".join(w["word"] for w in segment["words"])
    return segments


@dataclass
class _Video:
    key: str
    path: Path
    json_path: Path
    windows: Iterator[Window]
    audio: AudioWindows
    words: list[Word] = field(default_factory=list)
    exhausted: bool = False
    windows_total: int = 0


@dataclass(frozen=True)
class AsrResult:
    json_path: Path | None
    error: str = ""  # a recognition error: the video fails at stage "asr"


def json_name(relative: Path, abspath: Path) -> Path:
    """`talks/a.mp4` -> `talks/a.mp4.<8 hex of the absolute path>.json`: readable, and unique per video."""
    tag = hashlib.sha1(os.fsencode(str(abspath))).hexdigest()[:8]
    return relative.parent / f"{relative.name}.{tag}.json"


def reusable(path: Path, model_sha256: str, size: int, mtime: float) -> bool:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(doc, dict) and doc.get("model_sha256") == model_sha256
            and doc.get("video_size") == size and doc.get("video_mtime") == mtime)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write atomically: a killed run leaves the old file or none, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(doc, handle, ensure_ascii=False, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class AsrPass:
    """Recognise speech in `videos` (key, absolute path, relative path) on a background thread; `wait(key)`
    gives each one's result once it is written. `recognise` is WhisperRecognizer.recognise (or a stand-in)."""

    def __init__(self, recognise: Callable[[Sequence[np.ndarray]], list[list[Word]]], batch_size: int,
                 folder: Path, model_name: str, model_sha256: str,
                 videos: Sequence[tuple[str, Path, Path]], stop: Callable[[], bool] = lambda: False,
                 window: float = WINDOW_SECONDS, stride: float = STRIDE_SECONDS) -> None:
        self.recognise, self.batch_size, self.folder = recognise, batch_size, folder
        self.model_name, self.model_sha256, self.stop = model_name, model_sha256, stop
        self.window, self.stride = window, stride
        self.results: dict[str, AsrResult] = {}
        self.done: dict[str, threading.Event] = {key: threading.Event() for key, _, _ in videos}
        self.todo: deque[tuple[str, Path, Path]] = deque()
        self.reused = 0
        self.audio_seconds = 0.0
        self.peak_seconds = 0.0
        self.batches = 0
        for key, path, relative in videos:
            target = folder / json_name(relative, path)
            try:
                stat = path.stat()
                ok = reusable(target, model_sha256, stat.st_size, stat.st_mtime)
            except OSError:
                ok = False
            if ok:
                self.reused += 1
                self._finish(key, AsrResult(target))
            else:
                self.todo.append((key, path, target))
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="videobert-asr", daemon=True)

    def start(self) -> "AsrPass":
        self._thread.start()
        return self

    def wait(self, key: str) -> AsrResult | None:
        """The video's result; None when it was not asked for, or the run is stopping."""
        event = self.done.get(key)
        if event is None:
            return None
        while not event.wait(0.5):
            if self.stop() or self._closing or not self._thread.is_alive() and not event.is_set():
                return self.results.get(key)
        return self.results.get(key)

    def close(self) -> None:
        self._closing = True
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def _finish(self, key: str, result: AsrResult) -> None:
        self.results[key] = result
        self.done[key].set()

    def _open(self, key: str, path: Path, target: Path) -> _Video:
        audio = AudioWindows(path, self.window, self.stride)
        return _Video(key, path, target, iter(audio), audio)

    def _run(self) -> None:
        active: list[_Video] = []
        while not (self.stop() or self._closing):
            while len(active) < self.batch_size and self.todo:
                active.append(self._open(*self.todo.popleft()))
            if not active:
                return
            batch: list[tuple[_Video, Window]] = []
            progress = True
            while len(batch) < self.batch_size and progress:  # round robin over the active videos
                progress = False
                for video in active:
                    if video.exhausted or len(batch) >= self.batch_size:
                        continue
                    window = next(video.windows, None)
                    if window is None:
                        video.exhausted = True
                        continue
                    progress = True
                    video.windows_total += 1
                    if not is_silent(window.samples):
                        batch.append((video, window))
            failed: set[int] = set()
            if batch:
                try:
                    recognised = self.recognise([w.samples for _, w in batch])
                    self.batches += 1
                except Exception as exc:  # noqa: BLE001  (a model error fails these videos, not the run)
                    message = f"speech recognition failed: {type(exc).__name__}: {exc}"
                    for video, _ in batch:
                        if id(video) not in failed:
                            failed.add(id(video))
                            self._finish(video.key, AsrResult(None, message))
                    recognised = [[] for _ in batch]
                for (video, window), words in zip(batch, recognised):
                    lo, hi = keep_range(window, self.window, self.stride)
                    for text, start, end in trim_words(words):
                        start, end = window.start + start, window.start + end
                        if lo <= (start + end) / 2 < hi:
                            video.words.append((text, start, end))
            for video in list(active):
                if id(video) in failed:
                    active.remove(video)
                elif video.exhausted:
                    active.remove(video)
                    self._write(video)

    def _write(self, video: _Video) -> None:
        audio = video.audio
        self.audio_seconds += audio.duration
        self.peak_seconds = max(self.peak_seconds, audio.peak_seconds)
        warnings = list(audio.warnings)
        if not audio.has_audio and not warnings:
            warnings.append("speech recognition: the file has no audio stream")
        try:
            stat = video.path.stat()
            size, mtime = stat.st_size, stat.st_mtime
        except OSError:
            size, mtime = None, None
        doc = {"version": JSON_VERSION, "model": self.model_name, "model_sha256": self.model_sha256,
               "video": str(video.path), "video_size": size, "video_mtime": mtime,
               "audio_seconds": round(audio.duration, 3), "warnings": warnings,
               "segments": segments_of(video.words)}
        try:
            write_json(video.json_path, doc)
        except OSError as exc:
            self._finish(video.key, AsrResult(None, f"cannot write {video.json_path} ({exc.strerror or exc})"))
            return
        self._finish(video.key, AsrResult(video.json_path))
