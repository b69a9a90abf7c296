"""Smoke test: scripts/bench.py --quick runs and reports every figure (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "scripts" / "bench.py"


def test_bench_quick_reports_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--corpus", str(tmp_path / "corpus"),
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == result
    for key in ("a_decode_clips_per_s", "b_image_frames_per_s", "c_text_clips_per_s", "d_fuse_write_clips_per_s",
                "e_extract_clips_per_s", "ideal_clips_per_s", "ratio", "f_peak_rss_mb_corpus",
                "f_peak_rss_mb_long_video"):
        assert result[key] > 0, key
    assert result["clips"] == 3 and result["long_video_clips"] == 6
    assert "ratio e / ideal" in proc.stderr
    # fp32 beside what auto picks on this CPU (bf16 where it is native), with the CPU's capability
    from videobert_cli.device import cpu_capability

    assert result["cpu_capability"] == cpu_capability().describe() and result["cpu_capability"] in proc.stderr
    assert result["precision"] == ("bf16" if cpu_capability().native_bf16 else "fp32")
    assert list(result["by_precision"]) == list(dict.fromkeys(["fp32", result["precision"]]))
    for name, figures in result["by_precision"].items():
        assert figures["precision_recorded"] == name
        assert 0 < figures["ideal_clips_per_s"] <= figures["image_ceiling_clips_per_s"]
        assert figures["e_extract_clips_per_s"] > 0 and figures["f_peak_rss_mb_long_video"] > 0
