"""Plan clips: pure functions from (duration, frame timestamps, transcript) to clips.

No I/O here, so every rule can be tested without a video.

* `fixed` mode: windows [k*L, (k+1)*L) for k = 0, 1, ... covering the video.
  The final window ends at the video's end; if it is shorter than
  `min_clip_seconds` it is dropped (unless it is the only one), and the words
  in it are counted in the warnings.
* `cue` mode: one clip per cue, its window clipped to [0, duration]; cues that
  start at or after the end of the video are dropped and counted.
* Sample times: `frames_per_clip` times at the centres of equal parts of the
  window, each mapped to the frame being displayed at that time (the last frame
  whose presentation timestamp is <= t), so variable-frame-rate files come out
  right.
* Words: a cue's words as `Cue.words` gives them: whitespace-delimited, and text in scripts written
  without spaces (Chinese, Japanese, Thai, ...) split into characters, so such a cue is timed and
  windowed like an English one, not as a single "word". A clip's text puts a space only where the
  transcript had one.
* Word times: word i of a cue with n words and no word timestamps sits at
  start + (i + 0.5) / n * (end - start). A word belongs to the window holding
  its time (the final window also holds its end point).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .transcripts import Cue, Transcript, spread_untimed

_EPS = 1e-9


@dataclass(frozen=True)
class Word:
    text: str
    time: float
    cue: int  # index into the transcript's cues
    position: int  # index among that cue's words
    spaced: bool = True  # a space preceded it in the cue's text (False inside unspaced scripts)


@dataclass(frozen=True)
class ClipPlan:
    index: int
    start: float
    end: float
    frame_indices: tuple[int, ...]
    frame_times: tuple[float, ...]  # presentation time of each sampled frame
    words: tuple[Word, ...]

    @property
    def text(self) -> str:
        """The words as text: a space where the transcript had one and between cues, none inside CJK/Thai."""
        out = ""
        for i, w in enumerate(self.words):
            prev = self.words[i - 1] if i else None
            if prev is not None and (w.spaced or (w.cue, w.position) != (prev.cue, prev.position + 1)):
                out += " "
            out += w.text
        return out


@dataclass(frozen=True)
class VideoPlan:
    clips: tuple[ClipPlan, ...]
    transcript: Transcript  # with times assigned if it was untimed
    words: tuple[Word, ...]  # every word of the transcript, in time order
    warnings: tuple[str, ...]


def word_timeline(cues: tuple[Cue, ...] | list[Cue]) -> list[Word]:
    """Every word with its time, sorted by time (ties keep transcript order)."""
    words: list[Word] = []
    for ci, cue in enumerate(cues):
        tokens, spaced = cue.words, cue.spaced
        n = len(tokens)
        if cue.word_times is not None and len(cue.word_times) == n:
            times = list(cue.word_times)
        else:
            span = cue.end - cue.start
            times = [cue.start + (i + 0.5) / n * span for i in range(n)]
        words.extend(Word(text, t, ci, i, gap) for i, (text, t, gap) in enumerate(zip(tokens, times, spaced)))
    words.sort(key=lambda w: (w.time, w.cue, w.position))
    return words


def fixed_windows(duration: float, clip_seconds: float, min_clip_seconds: float) -> list[tuple[float, float]]:
    windows: list[tuple[float, float]] = []
    k = 0
    while k * clip_seconds < duration - _EPS:
        start = k * clip_seconds
        end = min((k + 1) * clip_seconds, duration)
        if end - start + _EPS >= min_clip_seconds or k == 0:
            windows.append((start, end))
        k += 1
    return windows


def sample_frames(
    start: float, end: float, count: int, frame_starts: np.ndarray
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Indices and times of the frames shown at `count` evenly spread times in [start, end)."""
    times = start + (np.arange(count) + 0.5) * (end - start) / count
    idx = np.searchsorted(frame_starts, times + _EPS, side="right") - 1
    idx = np.clip(idx, 0, len(frame_starts) - 1)
    return tuple(int(i) for i in idx), tuple(float(frame_starts[i]) for i in idx)


def plan_clips(
    duration: float,
    frame_starts: np.ndarray,
    transcript: Transcript,
    *,
    mode: str = "fixed",
    clip_seconds: float = 1.5,
    min_clip_seconds: float = 0.5,
    frames_per_clip: int = 4,
) -> VideoPlan:
    if len(frame_starts) == 0 or duration <= 0:
        raise ValueError("a video needs at least one frame and a positive duration")
    frame_starts = np.asarray(frame_starts, dtype=np.float64)
    transcript = spread_untimed(transcript, duration)
    words = word_timeline(transcript.cues)
    warnings: list[str] = []

    if mode == "fixed":
        windows = fixed_windows(duration, clip_seconds, min_clip_seconds)
        times = np.array([w.time for w in words])
        clip_words = []
        for i, (start, end) in enumerate(windows):
            last = i == len(windows) - 1
            if len(times):
                lo = np.searchsorted(times, start - _EPS, side="left")
                hi = np.searchsorted(times, end + _EPS if last else end - _EPS, side="right" if last else "left")
                clip_words.append(tuple(words[lo:hi]))
            else:
                clip_words.append(())
        covered_until = windows[-1][1]
        lost = sum(1 for w in words if w.time > covered_until + _EPS or w.time < -_EPS)
        if lost:
            warnings.append(f"{lost} word(s) timed after the last clip ({covered_until:.3f} s) are not in any clip")
    elif mode == "cue":
        windows, clip_words = [], []
        by_cue: dict[int, list[Word]] = {}
        for w in words:
            by_cue.setdefault(w.cue, []).append(w)
        past_end = 0
        for ci, cue in enumerate(transcript.cues):
            if cue.start >= duration - _EPS:
                past_end += 1
                continue
            windows.append((cue.start, min(cue.end, duration)))
            clip_words.append(tuple(sorted(by_cue.get(ci, []), key=lambda w: w.position)))
        if past_end:
            warnings.append(f"{past_end} cue(s) start after the video ends ({duration:.3f} s) and have no clip")
        if not transcript.cues:
            warnings.append("cue mode and no transcript cues: no clips")
    else:
        raise ValueError(f"unknown clip mode {mode!r}")

    clips = []
    for i, ((start, end), cw) in enumerate(zip(windows, clip_words)):
        indices, times_ = sample_frames(start, end, frames_per_clip, frame_starts)
        clips.append(ClipPlan(i, start, end, indices, times_, cw))
    return VideoPlan(tuple(clips), transcript, tuple(words), tuple(warnings))


def segment_length(clip_count: int, workers: int, minimum: int) -> int:
    """Clips per segment for a video of `clip_count` clips shared by `workers` decode workers: one segment
    per worker, none shorter than `minimum` (each costs its worker an open of the file). 0: do not split."""
    if workers < 2 or minimum < 1:
        return 0
    return max(minimum, -(-clip_count // workers))


def plan_segments(clips: Sequence[ClipPlan], keyframes: Sequence[int] | None,
                  clips_per_segment: int) -> tuple[tuple[int, int], ...]:
    """Split a video's clips into runs that different workers decode at once: (first clip, clip count) each.

    A long video decoded by one worker keeps one core busy however many there are; split, its runs go to
    every idle worker and come back in clip order. Each cut is moved forward from every
    `clips_per_segment` clips to the first clip whose frames all lie in a later group of pictures (after
    a keyframe) than the previous clip's, so two workers never decode the same frames; where no such
    clip comes within half a run, the cut stays (that worker then decodes from the keyframe before its
    first frame: the same frames, a little slower). One run when the keyframes are not known (a decoder
    that must read from the start), when `clips_per_segment` is 0, or when the video has fewer than two
    runs' worth of clips. No run is shorter than half of `clips_per_segment`, except the only one."""
    n = len(clips)
    if not keyframes or clips_per_segment < 1 or n < 2 * clips_per_segment:
        return ((0, n),)
    keys = sorted(set(int(k) for k in keyframes))

    def group(frame: int) -> int:  # the group of pictures `frame` belongs to: its keyframe's rank
        return bisect.bisect_right(keys, frame) - 1

    slack = max(1, clips_per_segment // 2)
    cuts = [0]
    target = clips_per_segment
    while n - target >= slack:
        cut = next((j for j in range(target, min(n - slack + 1, target + slack + 1))
                    if group(min(clips[j].frame_indices)) > group(max(clips[j - 1].frame_indices))), target)
        cuts.append(cut)
        target = cut + clips_per_segment
    return tuple((first, end - first) for first, end in zip(cuts, [*cuts[1:], n]))
