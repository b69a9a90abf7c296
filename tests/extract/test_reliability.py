"""Crash safety: bad inputs, hangs and crashes, kills, signals, locks, full disks, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from media import write_audio_only, write_video

from videobert_cli import open_features
from videobert_cli.cli.main import main
from videobert_cli.store import writer
from videobert_cli.store.outdir import OutputDir
from videobert_cli.store.validate import validate

sys.path.insert(0, str(Path(__file__).parents[2] / "scripts"))
import kill_loop  # noqa: E402


def run(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def failures(out: Path) -> dict[str, dict]:
    return {Path(r["abspath"]).name: r for r in OutputDir(out).failure_records()}


def live_videos(out: Path) -> list[str]:
    return sorted(Path(v["abspath"]).name for v in open_features(out).videos)


def faststart_mp4(path: Path) -> None:
    """An MP4 whose moov comes first, so cutting it keeps the index of frames that are gone."""
    write_video(path, fps=10, seconds=3, container_options={"movflags": "faststart"})


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad") / "in"
    write_video(root / "good1.mp4", fps=10, seconds=3)
    (root / "good1.srt").write_text("1\n00:00:00,000 --> 00:00:02,000\nthe red square\n")
    write_video(root / "good2.mkv", fps=10, seconds=2)
    (root / "good2.srt").write_bytes(b"1\n00:00:00,000 --> 00:00:01,000\ncaf\xe9 red\n")  # not UTF-8: a warning
    write_video(root / "good3.mp4", fps=10, seconds=2)
    (root / "good3.json").write_text(json.dumps({"segments": [{"start": -1, "end": 1, "text": "left"}]}))
    (root / "zero.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("hello, I am not a video\n")
    write_video(root / "full.mp4", fps=10, seconds=3)
    data = (root / "full.mp4").read_bytes()
    (root / "full.mp4").unlink()
    (root / "nomoov.mp4").write_bytes(data[: len(data) // 2])  # moov is written last: cut off
    faststart_mp4(root / "midcut.mp4")
    data = (root / "midcut.mp4").read_bytes()
    (root / "midcut.mp4").write_bytes(data[: len(data) * 2 // 3])  # moov first, media cut
    write_audio_only(root / "audio.mp4")
    faststart_mp4(root / "garbled.mp4")
    data = bytearray((root / "garbled.mp4").read_bytes())
    start = data.find(b"mdat") + 8
    data[start:] = b"\x5a" * (len(data) - start)  # a video stream whose frames all fail to decode
    (root / "garbled.mp4").write_bytes(bytes(data))
    (root / "x.mp4").mkdir()
    os.symlink(root / "gone.mp4", root / "broken.mp4")
    write_video(Path(os.fsdecode(os.fsencode(str(root)) + b"/bad\xffname.mp4")), fps=10, seconds=1)
    write_video(root / "garbage_times.mp4", fps=10, seconds=1)
    (root / "garbage_times.srt").write_text("1\n00:00:xx,000 --> soon\nhello\n")
    (root / "orphan.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nno video\n")
    write_video(root / "changing.mp4", fps=10, seconds=3)
    return root


EXPECTED_FAILURES = {  # name -> stage
    "zero.mp4": "probe", "text.mp4": "probe", "nomoov.mp4": "probe", "midcut.mp4": "decode",
    "audio.mp4": "probe", "garbled.mp4": "decode", "x.mp4": "probe", "broken.mp4": "probe",
    "bad\\xffname.mp4": "probe", "garbage_times.mp4": "transcript", "orphan.srt": "probe", "changing.mp4": "decode",
}


def test_each_bad_input_is_recorded_and_every_good_video_written(bad_corpus: Path, tmp_path: Path,
                                                                   tiny_args: list[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDEOBERT_TEST_HOOK", "modify:changing")
    out = tmp_path / "out"
    result = run(["extract", str(bad_corpus), "-o", str(out), *tiny_args])
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert summary["videos_done"] == 3 and summary["videos_failed"] == len(EXPECTED_FAILURES)
    assert live_videos(out) == ["good1.mp4", "good2.mkv", "good3.mp4"]
    assert validate(out).ok
    logged = failures(out)
    assert {name: rec["stage"] for name, rec in logged.items()} == EXPECTED_FAILURES
    for name, record in logged.items():
        assert record["message"] and "\n" not in record["message"], name
        assert record["attempt"] == 1 and record["time"].endswith("+00:00")
    assert "truncated" in logged["midcut.mp4"]["message"]
    assert "changed while being read" in logged["changing.mp4"]["message"]
    assert "not valid UTF-8" in logged["bad\\xffname.mp4"]["message"]
    # One stderr line per failure, naming the file.
    for name in EXPECTED_FAILURES:
        assert sum(name in line for line in result.stderr.splitlines() if "ERROR" in line) == 1, name
    # Transcript problems that do not lose the video are warnings stored with it.
    warnings = {Path(v["abspath"]).name: v["warnings"] for v in open_features(out).videos}
    assert any("not valid UTF-8" in w for w in warnings["good2.mkv"])
    assert any("negative times" in w for w in warnings["good3.mp4"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_a_probe_failure(tmp_path: Path, tiny_args: list[str]) -> None:
    video = tmp_path / "in" / "locked.mp4"
    write_video(video, fps=10, seconds=1)
    video.chmod(0)
    result = run(["extract", str(video.parent), "-o", str(tmp_path / "out"), *tiny_args])
    assert result.exit_code == 1 and failures(tmp_path / "out")["locked.mp4"]["stage"] == "probe"


def test_a_hanging_or_crashing_decoder_fails_that_video_only(tmp_path: Path, tiny_args: list[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("a_hangs.mp4", "b_fine.mp4", "c_crashes.mp4", "d_fine.mp4"):
        write_video(tmp_path / "in" / name, fps=10, seconds=1.5)
    monkeypatch.setenv("VIDEOBERT_TEST_HOOK", "hang:hangs,crash:crashes")
    out = tmp_path / "out"
    started = time.monotonic()
    # 5 s: short for a test, yet long enough that a fine video on a loaded 2-core machine is never taken for hung.
    result = run(["extract", str(tmp_path / "in"), "-o", str(out), "--decode-timeout", "5", *tiny_args])
    assert time.monotonic() - started < 60
    assert result.exit_code == 1
    logged = failures(out)
    assert sorted(logged) == ["a_hangs.mp4", "c_crashes.mp4"], logged
    assert logged["a_hangs.mp4"]["error_type"] == "Timeout" and "no progress for 5 s" in logged["a_hangs.mp4"]["message"]
    assert logged["c_crashes.mp4"]["error_type"] == "DecoderCrashed" and "signal 11" in logged["c_crashes.mp4"]["message"]
    assert live_videos(out) == ["b_fine.mp4", "d_fine.mp4"]


def test_failed_videos_are_skipped_until_retried_and_attempts_counted(tmp_path: Path, tiny_args: list[str]) -> None:
    write_video(tmp_path / "in" / "v.mp4", fps=10, seconds=1.5)
    (tmp_path / "in" / "v.srt").write_text("1\n00:00:xx,000 --> later\nhello\n")
    write_video(tmp_path / "in" / "w.mp4", fps=10, seconds=1.5)
    out = tmp_path / "out"
    assert run(["extract", str(tmp_path / "in"), "-o", str(out), *tiny_args]).exit_code == 1
    again = run(["extract", str(tmp_path / "in"), "-o", str(out), *tiny_args])
    summary = json.loads(again.stdout)
    assert again.exit_code == 1 and summary["videos_failed_before"] == 1 and summary["videos_skipped"] == 1
    retry = run(["extract", str(tmp_path / "in"), "-o", str(out), "--retry-failed", *tiny_args])
    assert retry.exit_code == 1 and failures(out)["v.mp4"]["attempt"] == 2
    (tmp_path / "in" / "v.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")  # fixed
    fixed = run(["extract", str(tmp_path / "in"), "-o", str(out), "--retry-failed", *tiny_args])
    assert fixed.exit_code == 0 and json.loads(fixed.stdout)["videos_done"] == 1
    assert live_videos(out) == ["v.mp4", "w.mp4"]
    assert run(["extract", str(tmp_path / "in"), "-o", str(out), *tiny_args]).exit_code == 0


def test_fail_fast_stops_at_the_first_failure(tmp_path: Path, tiny_args: list[str]) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a_bad.mp4").write_text("nope")
    write_video(tmp_path / "in" / "b_good.mp4", fps=10, seconds=1.5)
    result = run(["extract", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--fail-fast", *tiny_args])
    assert result.exit_code == 1 and json.loads(result.stdout)["videos_done"] == 0


def test_a_changed_video_is_extracted_again_and_supersedes_its_old_rows(tmp_path: Path,
                                                                        tiny_args: list[str]) -> None:
    video = tmp_path / "in" / "v.mp4"
    write_video(video, fps=10, seconds=3)
    out = tmp_path / "out"
    assert run(["extract", str(video), "-o", str(out), *tiny_args]).exit_code == 0
    write_video(video, fps=10, seconds=4.5)  # replaced by a longer cut
    again = run(["extract", str(video), "-o", str(out), *tiny_args])
    assert again.exit_code == 0 and json.loads(again.stdout)["videos_superseded"] == 1
    feats = open_features(out)
    assert len(feats.videos) == 1 and feats.videos[0]["clip_count"] == 3 and feats.num_clips == 3
    assert len(feats.superseded) == 1
    report = validate(out)
    assert report.ok and report.superseded == 1


def test_a_second_run_on_the_same_output_exits_75_or_waits(tmp_path: Path, tiny_args: list[str]) -> None:
    write_video(tmp_path / "v.mp4", fps=10, seconds=1.5)
    out = tmp_path / "out"
    holder = OutputDir(out)
    holder.lock()
    try:
        blocked = run(["extract", str(tmp_path / "v.mp4"), "-o", str(out), *tiny_args])
        assert blocked.exit_code == 75 and "in use by another run" in blocked.stderr
        threading.Timer(2.0, holder.unlock).start()
        waited = run(["extract", str(tmp_path / "v.mp4"), "-o", str(out), "--wait", *tiny_args])
        assert waited.exit_code == 0
    finally:
        holder.unlock()


def test_a_lock_left_by_a_killed_run_does_not_block(tmp_path: Path, tiny_args: list[str]) -> None:
    write_video(tmp_path / "v.mp4", fps=10, seconds=1.5)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".videobert.lock").write_text("pid 999999 on elsewhere since long ago\n")
    (out / "shard-00007.h5.tmp").write_bytes(b"half a shard")
    result = run(["extract", str(tmp_path / "v.mp4"), "-o", str(out), *tiny_args])
    assert result.exit_code == 0 and not list(out.glob("*.tmp"))


def test_a_full_disk_ends_the_run_and_keeps_completed_shards(tmp_path: Path, tiny_args: list[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    write_video(tmp_path / "in" / "a.mp4", fps=10, seconds=1.5)
    out = tmp_path / "out"
    assert run(["extract", str(tmp_path / "in"), "-o", str(out), *tiny_args]).exit_code == 0
    write_video(tmp_path / "in" / "b.mp4", fps=10, seconds=1.5)

    def disk_full(path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer, "write_shard", disk_full)
    result = run(["extract", str(tmp_path / "in"), "-o", str(out), *tiny_args])
    assert result.exit_code == 3 and "No space left on device" in result.stderr
    assert [p.name for p in out.iterdir() if p.suffix in (".h5", ".tmp")] == ["shard-00000.h5"]
    assert validate(out).ok and live_videos(out) == ["a.mp4"]


def test_an_unwritable_output_is_a_clear_error(tmp_path: Path, tiny_args: list[str]) -> None:
    write_video(tmp_path / "v.mp4", fps=10, seconds=1.5)
    (tmp_path / "file").write_text("")
    result = run(["extract", str(tmp_path / "v.mp4"), "-o", str(tmp_path / "file" / "out"), *tiny_args])
    assert result.exit_code == 3 and "cannot use output folder" in result.stderr


def _cli(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "videobert_cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _start_and_wait_for_a_shard(args: list[str], out: Path) -> subprocess.Popen:
    proc = _cli(args)
    deadline = time.monotonic() + 120
    while not list(out.glob("shard-*.h5")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    return proc


def _six_videos(tmp_path: Path, tiny_args: list[str], shard_size: int) -> tuple[list[str], Path]:
    """Six 3 s videos under tmp_path/in; the extract arguments and the output folder."""
    for i in range(6):
        write_video(tmp_path / "in" / f"v{i}.mp4", fps=10, seconds=3)
    out = tmp_path / "out"
    return ["extract", str(tmp_path / "in"), "-o", str(out), "--shard-size", str(shard_size), *tiny_args], out


def test_sigterm_writes_finished_videos_and_a_rerun_finishes(tmp_path: Path, tiny_args: list[str]) -> None:
    args, out = _six_videos(tmp_path, tiny_args, shard_size=2)
    proc = _start_and_wait_for_a_shard(args, out)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=120)
    if proc.returncode == 143:  # stopped early, as asked
        assert json.loads(stdout.strip().splitlines()[-1])["interrupted"] is True
    else:  # it had already finished
        assert proc.returncode == 0
    assert validate(out).ok
    proc = _cli(args)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert live_videos(out) == [f"v{i}.mp4" for i in range(6)]


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path, tiny_args: list[str]) -> None:
    inputs = []
    for i in range(6):
        write_video(tmp_path / "in" / f"v{i}.mp4", fps=10, seconds=3)
        (tmp_path / "in" / f"v{i}.srt").write_text("1\n00:00:00,000 --> 00:00:03,000\na red square moves left\n")
        inputs.append(str(tmp_path / "in" / f"v{i}.mp4"))
    # Kills within 4 s: a run with nothing left now ends in well under a second, so later delays would
    # mostly find the job done; within 4 s they land in start-up, decoding, encoding and shard writes.
    figures = kill_loop.kill_loop(inputs, tmp_path / "out", ["--shard-size", "1", *tiny_args],
                                  {str(Path(p).resolve()) for p in inputs}, rounds=10, seed=1, max_delay=4.0)
    print("kill-loop figures:", json.dumps(figures))
    assert figures["kills"] >= 5
    assert figures["lost"] == 0 and figures["duplicated"] == 0 and figures["corrupt"] == 0
    assert figures["validate"] == 0 and figures["final_exit"] == 0 and figures["leftover_tmp"] == 0


def test_a_second_sigint_aborts_at_once_leaving_only_complete_shards(tmp_path: Path, tiny_args: list[str]) -> None:
    args, out = _six_videos(tmp_path, tiny_args, shard_size=1)
    proc = _start_and_wait_for_a_shard(args, out)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode in (130, 0)  # 0 only if it had finished before the signals
    assert not list(out.glob("*.tmp")) and validate(out).ok
    if proc.returncode == 130:
        assert json.loads(stdout.strip().splitlines()[-1])["interrupted"] is True


def test_a_text_encoder_error_fails_only_the_video_that_causes_it(tmp_path: Path, tiny_args: list[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from videobert_cli.extract.encoders import TextEncoder

    real = TextEncoder.encode_transcripts

    def fragile(self, transcripts):  # fails on any batch holding the word "left"
        if any("left" in words for cues in transcripts for words in cues):
            raise RuntimeError("out of memory (simulated)")
        return real(self, transcripts)

    monkeypatch.setattr(TextEncoder, "encode_transcripts", fragile)
    for name, text in (("a", "the red square"), ("b", "moves left"), ("c", "a blue circle")):
        write_video(tmp_path / "in" / f"{name}.mp4", fps=10, seconds=1.5)
        (tmp_path / "in" / f"{name}.srt").write_text(f"1\n00:00:00,000 --> 00:00:01,500\n{text}\n")
    result = run(["extract", str(tmp_path / "in"), "-o", str(tmp_path / "out"), *tiny_args, "--batch-size", "32"])
    summary = json.loads(result.stdout)
    assert result.exit_code == 1 and summary["videos_done"] == 2
    assert [(Path(f["path"]).name, f["stage"]) for f in summary["failures"]] == [("b.mp4", "encode")]

