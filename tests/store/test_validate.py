"""`videobert validate` names each kind of damage; the failure log tolerates only a torn last line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from media import write_video

from videobert_cli.cli.main import main
from videobert_cli.store.outdir import OutputDir
from videobert_cli.store.validate import validate


@pytest.fixture
def extracted(tmp_path: Path, tiny_args: list[str]) -> Path:
    write_video(tmp_path / "v.mp4", fps=10, seconds=3)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["extract", str(tmp_path / "v.mp4"), "-o", str(out), *tiny_args])
    assert result.exit_code == 0, result.stderr
    assert validate(out).ok
    return out


def test_damage_is_named_and_exits_1(extracted: Path) -> None:
    shard = extracted / "shard-00000.h5"
    shutil.copy(shard, extracted / "shard-00001.h5")  # the same video twice, unchanged
    with h5py.File(shard, "r+") as f:
        fused = f["clips/fused"][()]
        fused[0, 0] = np.nan
        f["clips/fused"][...] = fused
        f["videos/clip_count"][0] = 5
    (extracted / "failures.jsonl").write_text('{"abspath": "/x", "stage": "probe", "message": "m"}\nnot json\n{}\n')
    problems = validate(extracted).problems
    assert any("clips/fused: 1 NaN/Inf" in p for p in problems)
    assert any("the videos table counts 5 clips, the shard holds 2" in p for p in problems)
    assert any("extracted twice" in p for p in problems)
    assert any("failures.jsonl:2: not a JSON line" in p for p in problems)
    result = CliRunner().invoke(main, ["validate", str(extracted)])
    assert result.exit_code == 1 and "PROBLEM" in result.stdout


def test_a_torn_last_line_of_the_failure_log_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "failures.jsonl").write_text(json.dumps({"abspath": "/a", "stage": "probe", "message": "m"})
                                             + '\n{"abspath": "/b", "sta')
    assert [r["abspath"] for r in OutputDir(tmp_path).failure_records()] == ["/a"]


def test_a_change_of_precision_on_resume_is_warned_and_shown(tmp_path: Path, tiny_args: list[str]) -> None:
    """fp32 shards, then bf16 ones in the same folder (a resume on a GPU): accepted (bf16 vs fp32 features
    agree to a cosine of 0.99999), but never silently: a warning on stderr and in the summary, the
    precision per shard in `info`, and a warning (not a problem) from `validate`."""
    loud = [a for a in tiny_args if a != "--quiet"]
    out = tmp_path / "out"
    runs = []
    for name, precision in (("a.mp4", "fp32"), ("b.mp4", "bf16")):
        write_video(tmp_path / name, fps=10, seconds=1.5)
        runs.append(CliRunner().invoke(main, ["extract", str(tmp_path / name), "-o", str(out), *loud,
                                              "--precision", precision]))
        assert runs[-1].exit_code == 0, runs[-1].stderr
    first, second = runs
    assert "fp32" not in first.stderr and json.loads(first.stdout)["run_warnings"] == []
    lines = [line for line in second.stderr.splitlines() if "fp32" in line or "bf16" in line]
    assert len(lines) == 1 and lines[0].startswith("videobert: WARNING: ") and "precision" in lines[0] \
        and "fp32" in lines[0] and "bf16" in lines[0], second.stderr
    summary = json.loads(second.stdout)
    assert len(summary["run_warnings"]) == 1 and "bf16" in summary["run_warnings"][0]
    report = json.loads(CliRunner().invoke(main, ["info", str(out), "--json"]).stdout)
    assert report["precision"] == {"fp32": 1, "bf16": 1}
    text = CliRunner().invoke(main, ["info", str(out)]).stdout
    assert "precision:   fp32 (1 shard), bf16 (1 shard)" in text, text
    checked = validate(out)
    assert checked.ok and len(checked.warnings) == 1 and "fp32 (1 shard), bf16 (1 shard)" in checked.warnings[0]
    result = CliRunner().invoke(main, ["validate", str(out)])
    assert result.exit_code == 0 and "warning: " in result.stdout and result.stdout.strip().endswith("OK")
