"""The effective configuration of a run: defaults, a YAML file, then `--set key=value`.

Every default lives in `ExtractConfig` below and, word for word, in
`configs/default.yaml` (a test keeps the two equal). The whole effective config
is stored in every shard, so a figure can always be traced to the settings that
made it.

Most settings shape the features a run writes. The others carry a mark on their field, once,
here: EXECUTION (how fast a run goes, not what it writes), FUSED (only the fused vector), STORED
(which features are stored, not their values). `keys_marked` turns marks into key sets, so the
modules that compare configs never keep their own lists: `extract` lets a run add to a folder made
with other EXECUTION settings; `train` fingerprints its data without any marked setting, since it
reads the per-frame and per-token features, which none of them changes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml


class ConfigError(ValueError):
    """A config file, key or value that cannot be used (exit code 2)."""


EXECUTION = "execution"  # how fast a run goes, not what it writes (precision: the last bits, see session.py)
FUSED = "fused"  # only the fused vector: the per-frame and per-token features stay the same
STORED = "stored"  # which features are stored, not their values


TRANSCRIPT_SOURCES = ("sidecar", "embedded", "asr")


def _marked(default: Any, mark: str) -> Any:
    return field(default=default, metadata={"mark": mark})


@dataclass(frozen=True)
class ExtractConfig:
    # clips
    clip_mode: str = "fixed"  # fixed | cue
    clip_seconds: float = 1.5  # VideoBERT's clip length
    min_clip_seconds: float = 0.5  # a final partial window shorter than this is dropped
    frames_per_clip: int = 4
    # video / image encoder
    video_model: str = "resnet50"
    video_weights: str = "IMAGENET1K_V2"  # torchvision weights name, state-dict path, or "random"
    image_size: int | None = None  # crop size; None = what the weights expect
    resize_size: int | None = None  # short side before the crop; None = what the weights expect
    decode_threads: int = _marked(1, EXECUTION)  # decord num_threads; 0 breaks VP9 (dmlc/decord#246)
    # text encoder
    text_model: str = "bert-base-uncased"
    max_text_tokens: int = 64  # token features kept per clip (fusion input)
    text_context_words: int = 16  # a cue shorter than this gets this many words of context each side
    text_max_length: int = 128  # tokens per encoder pass (cue + context)
    # transcripts: where a video's words come from, in order of precedence (the first that has text wins)
    transcript_sources: str = "sidecar,embedded,asr"  # comma-separated subset, in order
    subtitle_lang: str | None = None  # embedded track languages wanted, in order (ISO 639: en,fr); None = any
    asr: str | None = None  # Whisper model (folder or Hugging Face name) for videos without text; None = off
    asr_batch_size: int = _marked(8, EXECUTION)  # 30 s audio windows per Whisper forward, across videos
    # fusion
    fusion_dim: int = _marked(768, FUSED)
    fusion_heads: int = _marked(8, FUSED)
    fusion_seed: int = _marked(0, FUSED)
    fusion_checkpoint: str | None = _marked(None, FUSED)
    # execution
    device: str = _marked("auto", EXECUTION)  # auto | cpu | cuda | cuda:N
    batch_size: int | None = _marked(None, EXECUTION)  # frames per image-encoder forward, across videos; None = 32 on CPU, 128 on CUDA
    text_batch_size: int = _marked(64, EXECUTION)  # sentences per text-encoder forward
    workers: int | None = _marked(None, EXECUTION)  # decode processes; None = 1 on CPU, cores - 1 (at most 32) on CUDA
    threads: int | None = _marked(None, EXECUTION)  # torch intra-op threads; None = all cores on CPU
    # auto | fp32 | bf16 | fp16; auto = bf16 on CUDA GPUs that support it and on CPUs with native bf16
    # (AVX512_BF16 or AMX), else fp32
    precision: str = _marked("auto", EXECUTION)
    compile: bool = _marked(False, EXECUTION)  # torch.compile the image encoder
    # output
    shard_size: int = _marked(10000, EXECUTION)  # clips per shard at most (a video is never split)
    dtype: str = "float32"  # float32 | float16 for stored features
    save_frames: bool = _marked(False, STORED)
    save_tokens: bool = _marked(False, STORED)

    def __post_init__(self) -> None:
        checks = [
            (self.clip_mode in ("fixed", "cue"), "clip_mode must be 'fixed' or 'cue'"),
            (self.clip_seconds > 0, "clip_seconds must be > 0"),
            (0 <= self.min_clip_seconds <= self.clip_seconds, "min_clip_seconds must be in [0, clip_seconds]"),
            (self.frames_per_clip >= 1, "frames_per_clip must be >= 1"),
            (self.max_text_tokens >= 1, "max_text_tokens must be >= 1"),
            (self.text_max_length >= 8, "text_max_length must be >= 8"),
            (self.text_context_words >= 0, "text_context_words must be >= 0"),
            (self.fusion_dim >= 1 and self.fusion_heads >= 1, "fusion_dim and fusion_heads must be >= 1"),
            (self.fusion_dim % max(self.fusion_heads, 1) == 0, "fusion_dim must be divisible by fusion_heads"),
            ((self.batch_size is None or self.batch_size >= 1) and self.text_batch_size >= 1, "batch sizes must be >= 1"),
            (self.shard_size >= 1, "shard_size must be >= 1"),
            (self.dtype in ("float32", "float16"), "dtype must be float32 or float16"),
            (self.decode_threads >= 1, "decode_threads must be >= 1 (0 breaks VP9 decoding in decord)"),
            (self.workers is None or self.workers >= 1, "workers must be >= 1"),
            (self.threads is None or self.threads >= 1, "threads must be >= 1"),
            (self.precision in ("auto", "fp32", "bf16", "fp16"), "precision must be auto, fp32, bf16 or fp16"),
            (self.image_size is None or self.image_size >= 8, "image_size must be >= 8"),
            (self.resize_size is None or self.resize_size >= 8, "resize_size must be >= 8"),
            (bool(self.sources) and len(set(self.sources)) == len(self.sources)
             and set(self.sources) <= set(TRANSCRIPT_SOURCES),
             "transcript_sources must list some of sidecar, embedded, asr (comma-separated, each once)"),
            (self.asr_batch_size >= 1, "asr_batch_size must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def sources(self) -> tuple[str, ...]:
        """transcript_sources as a tuple, in order of precedence."""
        return tuple(part.strip() for part in self.transcript_sources.split(",") if part.strip())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


KEYS = {f.name: f for f in fields(ExtractConfig)}


def keys_marked(*marks: str) -> frozenset[str]:
    """The config keys whose field carries one of `marks` (EXECUTION, FUSED, STORED)."""
    return frozenset(name for name, f in KEYS.items() if f.metadata.get("mark") in marks)


def _coerce(key: str, value: Any) -> Any:
    """Turn a YAML/CLI value into the type the field declares."""
    type_text = str(KEYS[key].type)
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
        if "None" in type_text:
            return None
        raise ConfigError(f"{key} cannot be null")
    try:
        if type_text.startswith("bool"):
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if type_text.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if type_text.startswith("float"):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: cannot use {value!r} (expected {type_text})") from None


def load_config(
    config_file: Path | None = None,
    overrides: Iterable[str] = (),
    flags: Mapping[str, Any] | None = None,
) -> ExtractConfig:
    """Defaults < YAML file < `--set key=value` < explicit CLI flags."""
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = yaml.safe_load(Path(config_file).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{config_file}: cannot read config ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{config_file}: not valid YAML ({exc})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config_file}: a config file must be a mapping of key: value")
        for key, value in loaded.items():
            if key not in KEYS:
                raise ConfigError(f"{config_file}: unknown config key {key!r}")
            values[key] = _coerce(key, value)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value")
        if key not in KEYS:
            raise ConfigError(f"--set {item!r}: unknown config key {key!r} (known: {', '.join(sorted(KEYS))})")
        values[key] = _coerce(key, yaml.safe_load(raw) if raw.strip() else raw)
    for key, value in (flags or {}).items():
        if value is not None:
            values[key] = _coerce(key, value)
    return ExtractConfig(**values)


DEFAULTS = ExtractConfig()
__all__ = ["ConfigError", "DEFAULTS", "EXECUTION", "ExtractConfig", "FUSED", "KEYS", "STORED", "keys_marked",
           "load_config"]
