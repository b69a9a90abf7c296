"""Smoke test: scripts/bench.py --quick runs and reports every figure (no timing assertions)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "scripts" / "bench.py"


def run_bench(tmp_path: Path, *args: str) -> tuple[dict, str]:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--corpus", str(tmp_path / "corpus"),
                           "--out", str(out), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == result
    return result, proc.stderr


def assert_run_figures(figures: dict) -> None:
    """(e)'s own figures: its main thread's busy share and its time to the first written video."""
    assert 0 < figures["e_main_thread_cpu_seconds"] <= figures["e_seconds"] + 0.01
    assert figures["e_main_thread_busy_share"] == round(figures["e_main_thread_cpu_seconds"] / figures["e_seconds"], 3)
    assert 0 < figures["e_first_clip_seconds"] <= figures["e_process_wall_s"]
    assert "e_gpu" not in figures  # on the CPU


def test_bench_quick_reports_every_stage(tmp_path: Path) -> None:
    result, stderr = run_bench(tmp_path)
    for key in ("a_decode_clips_per_s", "a1_one_worker_in_process_clips_per_s", "b_image_frames_per_s",
                "c_text_clips_per_s", "d_fuse_write_clips_per_s", "e_extract_clips_per_s", "ideal_clips_per_s",
                "ratio", "f_peak_rss_mb_corpus", "f_peak_rss_mb_long_video"):
        assert result[key] > 0, key
    assert result["clips"] == 3 and result["long_video_clips"] == 6
    assert result["a_workers"] == 1 and result["cpu_count"] == os.cpu_count() and result["batch_size"] == 32
    assert "ratio e / ideal" in stderr and "(a) decode pool, 1 worker(s)" in stderr and "(a1) one worker" in stderr
    assert "main thread busy" in stderr and "first clip written" in stderr and "GPU" not in stderr
    assert list(result["corpora"]) == ["640x360"] and result["corpora"]["640x360"]["ratio"] == result["ratio"]
    # fp32 beside what auto picks on this CPU (bf16 where it is native), with the CPU's capability
    from videobert_cli.device import cpu_capability

    assert result["cpu_capability"] == cpu_capability().describe() and result["cpu_capability"] in stderr
    assert result["precision"] == ("bf16" if cpu_capability().native_bf16 else "fp32")
    assert list(result["by_precision"]) == list(dict.fromkeys(["fp32", result["precision"]]))
    for name, figures in result["by_precision"].items():
        assert figures["precision_recorded"] == name
        assert 0 < figures["ideal_clips_per_s"] <= figures["image_ceiling_clips_per_s"]
        assert figures["e_extract_clips_per_s"] > 0 and figures["f_peak_rss_mb_long_video"] > 0
        assert_run_figures(figures)


def test_bench_proxy_puts_decoding_first(tmp_path: Path) -> None:
    """--proxy: cheap encoders (mobilenet_v3_small at 112 px, the 2-layer BERT), one precision, no long video."""
    result, stderr = run_bench(tmp_path, "--proxy", "--skip-long", "--precision", "fp32", "--batch-size", "8")
    assert result["proxy"] is True and "PROXY" in stderr and "the decode pool's rate" in stderr
    assert result["encoders"] == ["video_model=mobilenet_v3_small", "image_size=112", "resize_size=128",
                                  "text_model=bert-2-layer-random"]
    assert result["batch_size"] == 8 and "image encoder, batch 8" in stderr
    assert list(result["by_precision"]) == ["fp32"] and "f_peak_rss_mb_long_video" not in result
    assert not (tmp_path / "corpus" / "quick" / "long").exists()  # --skip-long: not even made
    assert result["a_decode_clips_per_s"] > 0 and result["ratio"] > 0
    assert_run_figures(result)


def test_gpu_corpus_set_plan() -> None:
    """--corpus-set gpu: 48 x 60 s 640x360, 12 x 60 s 1280x720 and the 20-minute video, each a corpus."""
    spec = importlib.util.spec_from_file_location("bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    root = Path("/nowhere")
    corpora, long, warm = bench.corpus_plan(root, quick=False, corpus_set="gpu")
    assert {name: (len(v), {(s, size) for _, s, size, _ in v}) for name, v in corpora.items()} == {
        "640x360": (48, {(60.0, (640, 360))}), "1280x720": (12, {(60.0, (1280, 720))}),
        "long_640x360": (1, {(1200.0, (640, 360))})}
    assert corpora["long_640x360"] == [long] and len({p for v in corpora.values() for p, *_ in v}) == 61
    small, small_long, _ = bench.corpus_plan(root, quick=False)
    assert list(small) == ["640x360"] and small["640x360"] == corpora["640x360"][:8] and small_long == long
    assert bench.corpus_plan(root, quick=False, corpus_set="gpu", skip_long=True)[1] is None
    assert "long_640x360" not in bench.corpus_plan(root, quick=False, corpus_set="gpu", skip_long=True)[0]
