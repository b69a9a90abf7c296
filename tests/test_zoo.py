"""Real sample videos that public packages ship agree between decoders (scripts/zoo.py).

Runs only where the zoo cache has been fetched; CI has none, so the generated-media
tests in test_decoder_agreement.py carry the guarantees there.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "zoo.py"
spec = importlib.util.spec_from_file_location("zoo", SCRIPT)
zoo = importlib.util.module_from_spec(spec)
sys.modules["zoo"] = zoo  # its dataclasses look their module up
spec.loader.exec_module(zoo)

CLIPS = Path(os.environ.get("VIDEOBERT_ZOO", zoo.DEFAULT_CACHE)) / "clips"
FOUND = zoo.find_clips(CLIPS) if CLIPS.exists() else []


@pytest.mark.skipif(not FOUND, reason=f"no zoo under {CLIPS}: fetch it with `python3 scripts/zoo.py --fetch`")
@pytest.mark.parametrize("clip", FOUND, ids=[p.name for p in FOUND])
def test_real_clip_decoders_agree_on_every_planned_frame(clip: Path) -> None:
    result = zoo.check(clip)
    assert result.ok, result.problem


@pytest.mark.skipif(not FOUND, reason=f"no zoo under {CLIPS}: fetch it with `python3 scripts/zoo.py --fetch`")
def test_every_real_clip_extracts(tmp_path: Path, tiny_args: list[str]) -> None:
    """The kinds of files benchmarks are made of (HMDB51/UCF101 AVIs, Kinetics MP4s, WebM, MPEG-2) all extract."""
    import json

    from click.testing import CliRunner

    from videobert_cli import open_features
    from videobert_cli.cli.main import main

    result = CliRunner().invoke(main, ["extract", str(CLIPS), "-o", str(tmp_path / "out"), *tiny_args],
                                catch_exceptions=False)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.exit_code == 0, summary["failures"]
    assert summary["videos_done"] == len(FOUND)
    features = open_features(tmp_path / "out")
    assert len(features.videos) == len(FOUND) and features.num_clips > 0
