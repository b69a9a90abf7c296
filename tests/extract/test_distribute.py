"""Scale-out: torchrun ranks and --num-shards parts split the work, and the folder reads as one dataset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from media import write_video

from videobert_cli import open_features
from videobert_cli.cli.main import main
from videobert_cli.extract.discover import discover
from videobert_cli.extract.distribute import SplitError, combine_summaries, device_for, resolve_part, split_by_size
from videobert_cli.store.outdir import Part
from videobert_cli.store.outdir import LockHeld, OutputDir
from videobert_cli.extract.session import combined_exit
from videobert_cli.store.validate import validate

# -- the split (pure) ---------------------------------------------------------------------------


def test_split_by_size_is_disjoint_covering_and_balanced_by_bytes() -> None:
    sizes = [900, 10, 10, 10, 10, 10, 10, 10, 10, 300, 300, 300]
    parts = split_by_size(sizes, 3)
    assert sorted(i for p in parts for i in p) == list(range(len(sizes)))
    loads = [sum(sizes[i] for i in p) for p in parts]
    assert loads[0] == 900 and parts[0] == [0]  # the big file alone: balanced by bytes, not by count
    assert max(loads) - min(loads) <= max(sizes)
    assert all(p == sorted(p) for p in parts)
    assert split_by_size(sizes, 3) == parts  # deterministic
    assert split_by_size([5, 5], 4) == [[0], [1], [], []]


@pytest.mark.parametrize(("options", "env", "expected"), [
    ((None, None), {}, (0, 1, "single")),
    ((3, 2), {}, (2, 3, "--num-shards")),
    ((1, 0), {}, (0, 1, "single")),
    ((None, None), {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, (3, 4, "torchrun")),
    ((None, None), {"WORLD_SIZE": "1", "RANK": "0"}, (0, 1, "single")),
    ((None, None), {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "8"}, (7, 8, "slurm array")),
    ((None, None), {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "3",
                    "SLURM_ARRAY_TASK_STEP": "2"}, (3, 4, "slurm array")),
    ((2, 1), {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "8"}, (1, 2, "--num-shards")),
])
def test_the_part_comes_from_torchrun_then_options_then_slurm(options, env, expected) -> None:
    part = resolve_part(*options, env)
    assert (part.index, part.count, part.source) == expected


@pytest.mark.parametrize(("options", "env", "message"), [
    ((3, None), {}, "go together"),
    ((3, 3), {}, "outside 0..2"),
    ((0, 0), {}, "at least 1"),
    ((2, 0), {"WORLD_SIZE": "2", "RANK": "0"}, "cannot be combined with torchrun"),
    ((None, None), {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_STEP": "3"},
     "not on the array's grid"),
    ((None, None), {"WORLD_SIZE": "two"}, "not an integer"),
])
def test_bad_split_settings_are_refused_with_the_reason(options, env, message) -> None:
    with pytest.raises(SplitError, match=message):
        resolve_part(*options, env)


def test_torchrun_ranks_take_the_gpu_of_their_local_rank() -> None:
    rank = Part(3, 4, "torchrun", local_rank=1)
    assert device_for("auto", rank, cuda_available=True) == "cuda:1"
    assert device_for("cuda", rank, cuda_available=True) == "cuda:1"
    assert device_for("auto", rank, cuda_available=False) == "auto"
    assert device_for("cpu", rank, cuda_available=True) == "cpu"
    assert device_for("cuda:0", Part(0, 2, "--num-shards"), cuda_available=True) == "cuda:0"
    with pytest.raises(SplitError, match="LOCAL_RANK"):
        device_for("cuda:0", rank, cuda_available=True)


def test_the_combined_summary_adds_up_the_ranks_and_takes_the_gravest_exit_code() -> None:
    ranks = [{"videos_total": 3, "videos_done": 3, "clips": 30, "seconds": 10.0, "shards": ["a"], "exit_code": 0},
             {"videos_total": 4, "videos_done": 3, "videos_failed": 1, "clips": 20, "seconds": 20.0,
              "failures": [{"path": "x"}], "exit_code": 1}]
    combined = combine_summaries(ranks)
    assert combined["videos_total"] == 7 and combined["videos_done"] == 6 and combined["videos_failed"] == 1
    assert combined["clips_per_second"] == 2.5 and combined["world_size"] == 2 and combined["shards"] == ["a"]
    assert [r["clips_per_second"] for r in combined["ranks"]] == [None, None]  # only what each rank reported
    assert combined_exit([0, 1]) == 1 and combined_exit([143, 1, 0]) == 143 and combined_exit([1, 3]) == 3
    assert combined_exit([0, 0]) == 0


# -- locks, leftovers and failure logs of parts ---------------------------------------------------


def test_parts_lock_their_own_index_and_refuse_overlapping_runs(tmp_path: Path) -> None:
    held = [OutputDir(tmp_path, Part(0, 3, "--num-shards")), OutputDir(tmp_path, Part(2, 3, "--num-shards"))]
    for out in held:
        out.lock()  # different indexes run side by side
    try:
        with pytest.raises(LockHeld, match="another run of part 2"):
            OutputDir(tmp_path, Part(2, 3, "--num-shards")).lock()
        with pytest.raises(LockHeld, match="split 3 ways"):
            OutputDir(tmp_path, Part(1, 2, "--num-shards")).lock()  # its parts would overlap the running ones
        with pytest.raises(LockHeld, match="another run"):
            OutputDir(tmp_path).lock()  # a run in one part would overlap every part
        free = OutputDir(tmp_path, Part(1, 3, "--num-shards"))
        free.lock()
        free.unlock()
        assert "part 0 of 3" in (tmp_path / ".videobert.r000.lock").read_text()
    finally:
        for out in held:
            out.unlock()
    whole = OutputDir(tmp_path)
    whole.lock()
    try:
        with pytest.raises(LockHeld, match="a run that is not split"):
            OutputDir(tmp_path, Part(0, 2, "--num-shards")).lock()
    finally:
        whole.unlock()
    after = OutputDir(tmp_path, Part(1, 2, "--num-shards"))
    after.lock()  # every lock was released
    after.unlock()


def test_a_part_removes_only_the_leftovers_no_running_part_owns(tmp_path: Path) -> None:
    names = ["shard-00004.h5.tmp", "shard-r000-00001.h5.tmp", "shard-r001-00002.h5.tmp",
             "shard-r002-00003.h5.tmp", "shard-r005-00001.h5.tmp", "shard-r1000-00001.h5.tmp"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    OutputDir(tmp_path, Part(1, 3, "--num-shards")).remove_temporary()
    assert not (tmp_path / "shard-r001-00002.h5.tmp").exists()
    OutputDir(tmp_path, Part(0, 1001, "slurm array")).remove_temporary()  # r1000 is running: not its to remove
    assert (tmp_path / "shard-r1000-00001.h5.tmp").exists()
    OutputDir(tmp_path, Part(0, 3, "--num-shards")).remove_temporary()  # also the unsplit, r005 and r1000 ones
    assert sorted(p.name for p in tmp_path.glob("*.tmp")) == ["shard-r002-00003.h5.tmp"]
    OutputDir(tmp_path).remove_temporary()
    assert not list(tmp_path.glob("*.tmp"))


def test_failures_of_every_part_are_read_and_the_latest_counts(tmp_path: Path) -> None:
    first = OutputDir(tmp_path, Part(1, 2, "--num-shards"))
    assert first.failure_log.name == "failures-r001.jsonl"
    record = {"path": "a.mp4", "abspath": "/v/a.mp4", "stage": "decode", "message": "bad", "size": 1, "mtime": 1.0}
    (tmp_path / "failures.jsonl").write_text(json.dumps({**record, "time": "2026-01-01T00:00:00+00:00"}) + "\n")
    first.failure_log.write_text(json.dumps({**record, "size": 2, "time": "2026-02-01T00:00:00+00:00"}) + "\n")
    (tmp_path / "failures-r000.jsonl").write_text(json.dumps({**record, "size": 3, "time": "2025-12-01T00:00:00"
                                                                                             "+00:00"}) + "\n")
    whole = OutputDir(tmp_path)
    assert [r["size"] for r in whole.failure_records()] == [3, 1, 2]
    assert whole.failed_videos({})["/v/a.mp4"]["size"] == 2
    (tmp_path / "failures-r000.jsonl").write_text("{broken\n{}\n")
    with pytest.raises(ValueError, match="failures-r000.jsonl:1"):
        whole.failure_records()


# -- end to end: torchrun ranks and --num-shards processes on generated videos ------------------

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("many") / "in"
    for i, seconds in enumerate([1.5, 4.5, 3.0, 1.5, 3.0, 1.5, 2.0]):
        write_video(root / f"v{i}.mp4", fps=10, seconds=seconds)
        (root / f"v{i}.srt").write_text(f"1\n00:00:00,000 --> 00:00:01,500\nthe red square {i}\n")
    (root / "broken.mp4").write_text("not a video")  # one failure, logged by whichever part gets it
    return root


@pytest.fixture(scope="module")
def options(tiny_args: list[str]) -> list[str]:
    return [*tiny_args, "--set", "shard_size=1", "--batch-size", "4"]  # a shard per video: parts write often


def run(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def single(videos: Path, options: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("single") / "out"
    assert run(["extract", str(videos), "-o", str(out), *options]).exit_code == 1  # broken.mp4
    return clips_of(out)


def clips_of(out: Path) -> dict[tuple[str, float, float], np.ndarray]:
    feats = open_features(out)
    table = {}
    for index in range(feats.num_clips):
        clip = feats.clip(index, fields=("fused", "start", "end"))
        key = (Path(feats.videos[clip["video"]]["abspath"]).name, round(float(clip["start"]), 6),
               round(float(clip["end"]), 6))
        assert key not in table
        table[key] = np.asarray(clip["fused"])
    return table


def assert_same_clips(out: Path, single: dict) -> None:
    split = clips_of(out)
    assert sorted(split) == sorted(single)
    for key, fused in single.items():
        np.testing.assert_allclose(split[key], fused, rtol=1e-4, atol=1e-5, err_msg=str(key))
    report = validate(out)
    assert report.ok, report.problems
    assert report.superseded == 0


def child_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[2]))
    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(name, None)
    return env


def torchrun(nproc: int, videos: Path, out: Path, options: list[str], **popen) -> subprocess.Popen:
    return subprocess.Popen([*TORCHRUN, f"--nproc_per_node={nproc}", "-m", "videobert_cli", "extract", str(videos),
                             "-o", str(out), *options], env={**child_env(), **popen.pop("env", {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            **popen)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        with_group_killed(proc)
    return proc.returncode, stdout, stderr


def with_group_killed(proc: subprocess.Popen) -> None:
    """No process of the run outlives the test (a killed rank's decode worker included)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_torchrun_ranks_write_their_own_shards_and_together_the_single_run(videos: Path, options: list[str],
                                                                            single: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = finish(torchrun(2, videos, out, options))
    assert code == 1, stderr[-3000:]  # broken.mp4 failed: the gravest rank's code
    summary = json.loads(stdout.strip())  # one combined line, from rank 0
    assert summary["world_size"] == 2 and summary["videos_done"] == 7 and summary["videos_failed"] == 1
    assert [r["rank"] for r in summary["ranks"]] == [0, 1] and all(r["videos_done"] for r in summary["ranks"])
    assert summary["clips"] == len(single)
    names = sorted(p.name for p in out.glob("shard-*.h5"))
    assert {n[:10] for n in names} == {"shard-r000", "shard-r001"}
    logs = sorted(p.name for p in out.glob("failures*.jsonl"))
    assert len(logs) == 1 and logs[0] in ("failures-r000.jsonl", "failures-r001.jsonl")
    assert_same_clips(out, single)
    info = json.loads(run(["info", str(out), "--json"]).stdout)
    assert info["videos"] == 7 and info["clips"] == len(single)


def test_three_num_shards_processes_at_once_give_the_single_run(videos: Path, options: list[str], single: dict,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, "-m", "videobert_cli", "extract", str(videos), "-o", str(out),
                               *options, "--num-shards", "3", "--shard-index", str(i)], env=child_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
             for i in range(3)]
    results = [finish(proc) for proc in procs]
    summaries = [json.loads(stdout.strip()) for _, stdout, _ in results]
    assert sorted(s["part"]["index"] for s in summaries) == [0, 1, 2]
    assert sum(s["videos_done"] for s in summaries) == 7 and sum(s["videos_failed"] for s in summaries) == 1
    assert sorted(code for code, _, _ in results) == [0, 0, 1]
    assert_same_clips(out, single)


def test_torchrun_resumes_what_a_run_split_another_way_left(videos: Path, options: list[str], single: dict,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "out"
    refused = run(["extract", str(videos), "-o", str(out), *options, "--num-shards", "3", "--shard-index", "1",
                   "--overwrite"])
    assert refused.exit_code == 2 and "other parts' shards" in refused.stderr
    first = json.loads(run(["extract", str(videos), "-o", str(out), *options, "--num-shards", "3",
                            "--shard-index", "1"]).stdout)
    assert 0 < first["videos_done"] < 7
    code, stdout, stderr = finish(torchrun(2, videos, out, options))
    again = json.loads(stdout.strip())
    assert code == 1, stderr[-3000:]
    assert again["videos_done"] == 7 - first["videos_done"]  # nothing extracted twice
    assert again["videos_skipped"] == first["videos_done"]
    assert_same_clips(out, single)


def test_a_killed_rank_loses_nothing_and_the_same_command_finishes_its_part(videos: Path, options: list[str],
                                                                           single: dict, tmp_path: Path) -> None:
    items, _ = discover([str(videos)])
    parts = split_by_size([v.path.stat().st_size for v in items], 2)
    rank1 = [items[i].path.name for i in parts[1]]
    last = rank1[-1]  # rank 1 hangs on its last video, after writing the others
    out = tmp_path / "out"
    proc = torchrun(2, videos, out, options, env={"VIDEOBERT_TEST_HOOK": f"hang:{last}"})
    try:
        deadline = time.monotonic() + 180
        while len(list(out.glob("shard-r001-*.h5"))) < len(rank1) - 1 - ("broken.mp4" in rank1):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        pid = int((out / ".videobert.r001.lock").read_text().split()[1])
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        code, _, stderr = finish(proc, timeout=120)
        print(f"torchrun ended {time.monotonic() - killed:.1f} s after the kill", stderr[-2000:])
    finally:
        with_group_killed(proc)
    assert code != 0
    before = {Path(v["abspath"]).name for v in open_features(out).videos}
    assert last not in before
    assert validate(out).ok
    code, stdout, stderr = finish(torchrun(2, videos, out, options))
    assert code == 1, stderr[-3000:]
    summary = json.loads(stdout.strip())
    assert summary["videos_done"] == 7 - len(before)
    assert_same_clips(out, single)
