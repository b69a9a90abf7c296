"""Config: the YAML defaults file, overrides, and errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from videobert_cli.config import DEFAULTS, EXECUTION, ConfigError, ExtractConfig, keys_marked, load_config

DEFAULT_YAML = Path(__file__).parents[1] / "configs" / "default.yaml"


def test_default_yaml_holds_every_default_exactly() -> None:
    assert yaml.safe_load(DEFAULT_YAML.read_text()) == DEFAULTS.to_dict()
    assert load_config(DEFAULT_YAML) == ExtractConfig()


def test_file_then_set_then_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("clip_seconds: 2.0\nframes_per_clip: 8\nsave_frames: yes\n")
    config = load_config(cfg, ["frames_per_clip=6", "image_size=null", "text_model=./my model"],
                         {"clip_seconds": 3.0, "device": None})
    assert config.clip_seconds == 3.0 and config.frames_per_clip == 6 and config.save_frames is True
    assert config.image_size is None and config.text_model == "./my model" and config.device == "auto"


@pytest.mark.parametrize(
    "override,message",
    [
        ("clip_secs=2", "unknown config key"),
        ("frames_per_clip", "expected key=value"),
        ("frames_per_clip=two", "frames_per_clip"),
        ("frames_per_clip=1.5", "frames_per_clip"),
        ("clip_mode=sliding", "clip_mode"),
        ("fusion_heads=5", "divisible"),
        ("decode_threads=0", "VP9"),
        ("dtype=null", "cannot be null"),
        ("save_frames=maybe", "save_frames"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    bad.write_text("clip_seconds: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("shard_sizes: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'shard_sizes'"):
        load_config(bad)


def test_the_readme_names_the_settings_a_resume_may_change() -> None:
    """The settings `extract` lets differ from the shards already in a folder are the EXECUTION ones."""
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    listed = readme.split("Settings that change the output", 1)[1].split(")", 1)[0]
    assert set(re.findall(r"`(\w+)`", listed)) == keys_marked(EXECUTION)
