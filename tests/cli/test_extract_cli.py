"""End to end: `videobert extract` on generated videos and transcripts, then `info` and the reader."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from media import write_video

from videobert_cli import open_features
from videobert_cli.cli.main import main
from videobert_cli.extract.planning import fixed_windows

SRT = (
    "\ufeff1\r\n00:00:00,500 --> 00:00:02,000\r\n<i>hello</i> there friend\r\n\r\n"
    "2\r\n00:00:02,000 --> 00:00:03,500\r\n{\\an8}the red square moves left\r\n"
)
VTT = (
    "WEBVTT - generated\n\nNOTE a note\n\nSTYLE\n::cue { color: yellow }\n\n"
    "cue-1\n00:00.000 --> 00:01.000 align:start position:10%\n<v Narrator>a blue circle</v>\n\n"
    "00:01.500 --> 00:02.500\nmoves right\n"
)
WHISPER = {"segments": [{"start": 0.2, "end": 1.2, "text": " a green triangle"},
                        {"start": 1.6, "end": 2.8, "text": " moves up"}]}
VFR_TIMES = [0.0, 0.1, 0.2, 0.5, 0.6, 1.5, 1.55, 1.6, 2.9, 3.0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpus")
    talks, trans = root / "talks", root / "trans"
    write_video(talks / "a.mp4", fps=10, seconds=4)
    (talks / "a.srt").write_bytes(SRT.encode("utf-8"))
    write_video(talks / "nested" / "b.webm", codec="libvpx-vp9", fps=10, seconds=3)
    (trans / "nested").mkdir(parents=True)
    (trans / "nested" / "b.vtt").write_text(VTT, encoding="utf-8")
    write_video(talks / "c.mkv", frame_times=VFR_TIMES)
    (talks / "c.json").write_text(json.dumps(WHISPER), encoding="utf-8")
    write_video(talks / "d.MOV", fps=10, seconds=2.2, width=160, height=120)
    (talks / "d.txt").write_text("big red square\nsmall blue circle moves left\n", encoding="utf-8")
    write_video(talks / "other" / "a.mp4", fps=10, seconds=1.5)  # same name as talks/a.mp4
    (talks / "notes.txt").write_text("not a video, not picked up", encoding="utf-8")
    return {"root": root, "talks": talks, "trans": trans}


def run(args: list[str], stdin: str | None = None):
    return CliRunner().invoke(main, args, input=stdin, catch_exceptions=False)


@pytest.fixture(scope="module")
def extracted(corpus: dict[str, Path], tiny_args: list[str]) -> dict:
    out = corpus["root"] / "out"
    broken = corpus["root"] / "broken.mp4"
    broken.write_text("definitely not a video")
    result = run(["extract", str(corpus["talks"]), str(broken), "-o", str(out), "--transcripts", str(corpus["trans"]),
                  "--save-frames", "--save-tokens", *tiny_args])
    return {"out": out, "result": result, "summary": json.loads(result.stdout.strip().splitlines()[-1])}


def test_exit_code_and_summary_report_the_failed_video(extracted: dict) -> None:
    result, summary = extracted["result"], extracted["summary"]
    assert result.exit_code == 1
    assert summary["videos_total"] == 6 and summary["videos_done"] == 5 and summary["videos_failed"] == 1
    assert summary["failures"][0]["path"].endswith("broken.mp4")
    assert summary["failures"][0]["stage"] == "probe"
    assert summary["video_weights_random"] is True
    # the main thread's CPU time over the run (at most its wall time), and the time to the first written video
    # (from this test process's start, so longer than the run itself here)
    assert 0 < summary["main_thread_cpu_seconds"] <= summary["seconds"] + 0.01
    assert summary["first_clip_seconds"] > 0
    error_lines = [line for line in result.stderr.splitlines() if "broken.mp4" in line]
    assert len(error_lines) == 1 and "ERROR" in error_lines[0]


def test_every_video_has_its_clips_times_and_shapes(extracted: dict) -> None:
    feats = open_features(extracted["out"])
    by_name = {Path(v["abspath"]).relative_to(Path(v["abspath"]).parents[1]).as_posix(): v for v in feats.videos}
    assert len(feats.videos) == 5
    expected_durations = {"talks/a.mp4": 4.0, "nested/b.webm": 3.0, "talks/c.mkv": 3.1, "talks/d.MOV": 2.2,
                          "other/a.mp4": 1.5}
    assert set(by_name) == set(expected_durations)
    total = 0
    for name, duration in expected_durations.items():
        video = by_name[name]
        assert video["duration"] == pytest.approx(duration, abs=1e-3)
        windows = fixed_windows(video["duration"], 1.5, 0.5)
        assert video["clip_count"] == len(windows)
        rows = range(video["first_clip"], video["first_clip"] + video["clip_count"])
        starts = [feats.clip(i)["start"] for i in rows]
        ends = [feats.clip(i)["end"] for i in rows]
        assert starts == pytest.approx([w[0] for w in windows]) and ends == pytest.approx([w[1] for w in windows])
        total += video["clip_count"]
    assert feats.num_clips == total
    clip = feats.clip(0, fields=("fused", "video_features", "text_features", "frame_times", "frame_features",
                                 "tokens"))
    assert clip["fused"].shape == (32,) and clip["video_features"].shape == (512,)
    assert clip["text_features"].shape == (32,) and clip["frame_times"].shape == (4,)
    assert clip["frame_features"].shape == (4, 512)
    # The pooled image feature is the mean of the stored per-frame features.
    np.testing.assert_allclose(clip["video_features"], clip["frame_features"].mean(0), rtol=1e-5, atol=1e-6)


def _clips_of(feats, suffix: str) -> list[dict]:
    video = next(v for v in feats.videos if v["abspath"].endswith(suffix))
    return [feats.clip(i, fields=("start", "text", "has_text", "frame_times", "frame_indices", "token_count",
                                  "tokens"))
            for i in range(video["first_clip"], video["first_clip"] + video["clip_count"])], video


def test_srt_text_is_aligned_word_by_word(extracted: dict) -> None:
    clips, video = _clips_of(open_features(extracted["out"]), "talks/a.mp4")
    # Cue 1 (0.5-2.0 s): hello 0.75, there 1.25, friend 1.75; cue 2 (2.0-3.5 s): the 2.15 ... left 3.35
    assert [c["text"] for c in clips] == ["hello there", "friend the red square", "moves left"]
    assert [c["has_text"] for c in clips] == [True, True, True]
    assert video["transcript_format"] == "srt" and video["transcript_timed"]
    # Frames at the centres of four equal parts of [0, 1.5): 0.1875 ... -> frames 1, 5, 9, 13 at 10 fps.
    assert list(clips[0]["frame_indices"]) == [1, 5, 9, 13]
    np.testing.assert_allclose(clips[0]["frame_times"], [0.1, 0.5, 0.9, 1.3])
    # Tokens are stored for the clip's words only (the tiny vocab knows every one of these words).
    assert [c["token_count"] for c in clips] == [2, 4, 2]
    assert clips[0]["token_ids"].shape == (2,) and clips[0]["token_features"].shape == (2, 32)


def test_vtt_from_the_transcripts_folder_and_quirks_removed(extracted: dict) -> None:
    clips, video = _clips_of(open_features(extracted["out"]), "nested/b.webm")
    assert video["transcript"].endswith("trans/nested/b.vtt")
    # "moves right" (1.5-2.5 s): moves at 1.75 s, right at 2.25 s, both in the second window.
    assert [c["text"] for c in clips] == ["a blue circle", "moves right"]


def test_variable_frame_rate_video_uses_real_timestamps(extracted: dict) -> None:
    clips, video = _clips_of(open_features(extracted["out"]), "talks/c.mkv")
    assert video["frame_count"] == 10
    assert [c["text"] for c in clips] == ["a green triangle", "moves up"]
    assert list(clips[0]["frame_indices"]) == [1, 3, 4, 4]
    np.testing.assert_allclose(clips[0]["frame_times"], [0.1, 0.5, 0.6, 0.6])


def test_untimed_text_and_missing_transcript_are_flagged(extracted: dict) -> None:
    feats = open_features(extracted["out"])
    clips, video = _clips_of(feats, "talks/d.MOV")
    assert video["transcript_format"] == "txt" and not video["transcript_timed"]
    assert (video["width"], video["height"]) == (160, 120)
    # 8 words spread over 2.2 s: word i at (i + 0.5) * 0.275 s -> 5 words in [0, 1.5), 3 in [1.5, 2.2].
    assert [c["text"] for c in clips] == ["big red square small blue", "circle moves left"]
    clips, video = _clips_of(feats, "other/a.mp4")
    assert video["transcript_format"] == "none"
    assert [c["has_text"] for c in clips] == [False] and clips[0]["text"] == ""
    assert any("no transcript" in w for w in video["warnings"])


def test_shard_attributes_record_provenance(extracted: dict, tiny_bert: Path) -> None:
    shard = next(extracted["out"].glob("shard-*.h5"))
    with h5py.File(shard) as f:
        attrs = dict(f.attrs)
        assert attrs["schema_version"] == 1
        config = json.loads(attrs["config"])
        assert config["clip_seconds"] == 1.5 and config["video_model"] == "resnet18" and config["save_frames"]
        models = {m["role"]: m for m in json.loads(attrs["models"])}
        assert models["video"]["sha256"] == "random" and attrs["video_weights_random"]
        assert models["text"]["source"] == str(tiny_bert.resolve()) and len(models["text"]["sha256"]) == 64
        assert models["fusion"]["sha256"] == "seed:0"
        versions = json.loads(attrs["versions"])
        assert {"torch", "torchvision", "transformers", "decord"} <= set(versions)
        assert attrs["created_utc"].endswith("+00:00")
        assert f["clips/text"].dtype.kind == "O" and f["videos/path"].shape == (5,)


def test_info_reports_the_output(extracted: dict) -> None:
    result = run(["info", str(extracted["out"]), "--json"])
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["videos"] == 5 and report["clips"] == extracted["summary"]["clips"]
    assert report["dims"] == {"fused": 32, "video": 512, "text": 32}
    assert report["transcript_formats"] == {"srt": 1, "vtt": 1, "json": 1, "txt": 1, "none": 1}
    text = run(["info", str(extracted["out"])])
    assert text.exit_code == 0 and "RANDOM" in text.stdout and "resnet18" in text.stdout


def test_reader_dataset_serves_every_clip(extracted: dict) -> None:
    import torch

    dataset = open_features(extracted["out"]).dataset(fields=("fused", "text"))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    rows = sum(len(batch["text"]) for batch in loader)
    assert rows == len(dataset) == extracted["summary"]["clips"]
    assert torch.isfinite(dataset[0]["fused"]).all()


def test_shards_never_split_a_video_and_float16(corpus: dict[str, Path], tiny_args: list[str]) -> None:
    out = corpus["root"] / "small-shards"
    result = run(["extract", str(corpus["talks"]), "-o", str(out), "--shard-size", "3", "--dtype", "float16",
                  *tiny_args])
    assert result.exit_code == 0, result.stderr
    shards = sorted(out.glob("shard-*.h5"))
    assert len(shards) >= 3
    for shard in shards:
        with h5py.File(shard) as f:
            counts = f["videos/clip_count"][()]
            assert counts.sum() == f["clips/start"].shape[0]
            assert f["clips/start"].shape[0] <= 3 or len(counts) == 1  # only a single long video exceeds it
            assert f["clips/fused"].dtype == np.float16
    assert len(open_features(out).videos) == 5


def test_cue_mode_gives_one_clip_per_cue(corpus: dict[str, Path], tiny_args: list[str]) -> None:
    out = corpus["root"] / "cue"
    result = run(["extract", str(corpus["talks"] / "a.mp4"), "-o", str(out), "--clip-mode", "cue", *tiny_args])
    assert result.exit_code == 0, result.stderr
    feats = open_features(out)
    assert [feats.clip(i)["text"] for i in range(feats.num_clips)] == ["hello there friend",
                                                                        "the red square moves left"]
    assert [(feats.clip(i)["start"], feats.clip(i)["end"]) for i in range(2)] == [(0.5, 2.0), (2.0, 3.5)]


def test_paths_from_stdin(corpus: dict[str, Path], tiny_args: list[str]) -> None:
    out = corpus["root"] / "stdin"
    listing = f"{corpus['talks'] / 'a.mp4'}\n\n{corpus['talks'] / 'other' / 'a.mp4'}\n"
    result = run(["extract", "-", "-o", str(out), *tiny_args], stdin=listing)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["videos_done"] == 2


def test_rerun_skips_done_videos_and_overwrite_starts_afresh(corpus: dict[str, Path], tiny_args: list[str]) -> None:
    out = corpus["root"] / "again"
    first = run(["extract", str(corpus["talks"] / "a.mp4"), "-o", str(out), *tiny_args])
    assert first.exit_code == 0 and json.loads(first.stdout)["videos_done"] == 1
    second = run(["extract", str(corpus["talks"] / "a.mp4"), "-o", str(out), *tiny_args])
    assert second.exit_code == 0
    assert json.loads(second.stdout)["videos_skipped"] == 1 and json.loads(second.stdout)["videos_done"] == 0
    third = run(["extract", str(corpus["talks"] / "a.mp4"), "-o", str(out), "--overwrite", *tiny_args])
    assert third.exit_code == 0 and json.loads(third.stdout)["videos_done"] == 1
    assert [p.name for p in out.glob("shard-*.h5")] == ["shard-00000.h5"]
    other = run(["extract", str(corpus["talks"] / "a.mp4"), "-o", str(out), "--clip-seconds", "2", *tiny_args])
    assert other.exit_code == 2 and "other settings (clip_seconds)" in other.stderr


def test_a_folder_made_before_a_setting_existed_can_be_added_to(corpus: dict[str, Path], tiny_args: list[str]) -> None:
    """Shards whose config lacks a newer setting (as a folder made by an older videobert) compare it as its
    default, so a cron job keeps adding to its folder after an upgrade; a real change is still refused."""
    out = corpus["root"] / "older"
    assert run(["extract", str(corpus["talks"] / "a.mp4"), "-o", str(out), *tiny_args]).exit_code == 0
    shard = next(out.glob("shard-*.h5"))
    with h5py.File(shard, "r+") as f:
        config = json.loads(f.attrs["config"])
        for newer in ("transcript_sources", "subtitle_lang", "asr"):
            config.pop(newer)
        f.attrs["config"] = json.dumps(config)
    again = run(["extract", str(corpus["talks"]), "-o", str(out), *tiny_args])
    assert again.exit_code in (0, 1), again.stderr  # 1: the corpus holds a broken video on purpose
    assert json.loads(again.stdout)["videos_done"] >= 1
    refused = run(["extract", str(corpus["talks"]), "-o", str(out), "--transcript-sources", "sidecar", *tiny_args])
    assert refused.exit_code == 2 and "transcript_sources" in refused.stderr


def test_unresolvable_text_model_fails_before_decoding(corpus: dict[str, Path], tiny_args: list[str]) -> None:
    args = [a if a != tiny_args[tiny_args.index("--text-model") + 1] else "no-such-org/no-such-model"
            for a in tiny_args]
    result = run(["extract", str(corpus["talks"]), "-o", str(corpus["root"] / "nomodel"), *args])
    assert result.exit_code == 2
    assert "no-such-org/no-such-model" in result.stderr and "Hugging Face cache" in result.stderr
    assert not list((corpus["root"] / "nomodel").glob("shard-*.h5"))


def test_bad_config_is_a_usage_error(corpus: dict[str, Path], tiny_args: list[str]) -> None:
    result = run(["extract", str(corpus["talks"]), "-o", str(corpus["root"] / "x"), "--set", "clip_secs=2",
                  *tiny_args])
    assert result.exit_code == 2 and "unknown config key" in result.stderr
    result = run(["extract", str(corpus["talks"]), "-o", str(corpus["root"] / "x"), "--clip-seconds", "-1",
                  *tiny_args])
    assert result.exit_code == 2 and "clip_seconds" in result.stderr


def test_module_entry_point_runs() -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "videobert_cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and "videobert" in proc.stdout




def test_cue_mode_without_a_transcript_records_the_video_with_no_clips(corpus: dict[str, Path],
                                                                       tiny_args: list[str]) -> None:
    out = corpus["root"] / "cue-empty"
    result = run(["extract", str(corpus["talks"] / "other" / "a.mp4"), "-o", str(out), "--clip-mode", "cue",
                  *tiny_args])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["clips"] == 0
    feats = open_features(out)
    assert feats.num_clips == 0 and feats.videos[0]["clip_count"] == 0
    assert any("no clips" in w for w in feats.videos[0]["warnings"])


def test_text_that_is_not_fused_is_a_stored_warning(tmp_path: Path, tiny_args: list[str]) -> None:
    """Every word lost to the text encoder and every token cut by max_text_tokens is said in videos/warnings."""
    write_video(tmp_path / "long.mp4", fps=10, seconds=2)
    huge = "red" + "s" * 12  # 13 pieces: more than text_max_length=8 holds
    (tmp_path / "long.srt").write_text(f"1\n00:00:00,000 --> 00:00:01,500\nthe big {huge} square moves left\n"
                                       "\n2\n00:00:01,500 --> 00:00:02,000\nhello\n", encoding="utf-8")
    out = tmp_path / "out"
    result = run(["extract", str(tmp_path / "long.mp4"), "-o", str(out), "--set", "text_max_length=8",
                  "--set", "max_text_tokens=3", "--set", "clip_seconds=1.5", *tiny_args])
    assert result.exit_code == 0, result.stderr
    feats = open_features(out)
    warnings = feats.videos[0]["warnings"]
    assert any(w.startswith("1 word(s) have no text tokens") and huge in w for w in warnings), warnings
    # clip 0: the, big, square, moves, left = 5 tokens (the huge word has none) -> 2 cut
    assert any("1 clip(s) had more than max_text_tokens=3 tokens; 2 token(s)" in w for w in warnings), warnings
    assert feats.clip(0)["text"] == f"the big {huge} square moves left"  # clips/text keeps every word


LOADED = """
import sys
from videobert_cli.cli.main import main
code = 0
try:
    main(sys.argv[1:], prog_name="videobert")
except SystemExit as exc:
    code = exc.code
print("LOADED", sorted(m for m in ("torch", "torchvision", "transformers", "h5py") if m in sys.modules), code,
      file=sys.stderr)
"""


def loaded_modules(*args: str) -> tuple[list[str], int, str]:
    """Run the command line in a fresh interpreter: the heavy modules it imported, its exit code, stdout."""
    import ast
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.run([sys.executable, "-c", LOADED, *args], capture_output=True, text=True, env=env,
                          timeout=300)
    line = [line for line in proc.stderr.splitlines() if line.startswith("LOADED ")][-1]
    modules, _, code = line[len("LOADED "):].rpartition(" ")
    return ast.literal_eval(modules), int(code), proc.stdout


def test_help_and_the_package_import_no_torch() -> None:
    modules, code, stdout = loaded_modules("--help")
    assert code == 0 and "extract" in stdout and modules == []
    modules, code, stdout = loaded_modules("extract", "--help")
    assert code == 0 and "--precision" in stdout and modules == []


def test_a_rerun_with_nothing_new_loads_no_model(corpus: dict[str, Path], tiny_args: list[str], monkeypatch) -> None:
    """A cron run after the last one finished: every video is done, so it decides that before any model
    loads, and never imports torch; a changed setting is still refused, and a bad path still recorded."""
    out = corpus["root"] / "noop"
    video = str(corpus["talks"] / "a.mp4")
    first = run(["extract", video, "-o", str(out), *tiny_args])
    assert first.exit_code == 0 and json.loads(first.stdout)["precision"] in ("fp32", "bf16")

    from videobert_cli.extract import extractor

    def no_models(*_: object, **__: object) -> None:
        raise AssertionError("a run with nothing to extract loaded the models")

    monkeypatch.setattr(extractor.Extractor, "__init__", no_models)
    again = run(["extract", video, "-o", str(out), *tiny_args])
    assert again.exit_code == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["videos_skipped"] == 1 and summary["videos_done"] == 0 and summary["precision"] is None
    other = run(["extract", video, "-o", str(out), "--clip-seconds", "2", *tiny_args])
    assert other.exit_code == 2 and "other settings (clip_seconds)" in other.stderr
    missing = run(["extract", video, str(corpus["root"] / "gone.mp4"), "-o", str(out), *tiny_args])
    assert missing.exit_code == 1 and json.loads(missing.stdout)["failures"][0]["stage"] == "probe"

    modules, code, stdout = loaded_modules("extract", video, "-o", str(out), *tiny_args)
    assert code == 0 and json.loads(stdout)["videos_skipped"] == 1
    assert "torch" not in modules and "transformers" not in modules, modules
