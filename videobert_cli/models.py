"""Find model weights on disk, offline first, and say exactly where they came from.

Image backbone weights (`video_weights`):
  * a path to a state dict (.pth / .pt / .safetensors);
  * a torchvision weights name (IMAGENET1K_V2, DEFAULT, ...), looked up in
    $TORCH_HOME/hub/checkpoints/ under the file name torchvision uses; the
    sha256 prefix in that name is verified (torchvision does not check cached
    files). A download is tried only when the file is missing and
    HF_HUB_OFFLINE / VIDEOBERT_OFFLINE are unset;
  * `random`: untrained weights, only when asked for by name, and recorded so.
Text model (`text_model`): a local folder, or a Hugging Face name found in the
cache ($HF_HOME), or downloaded when online.
Nothing falls back to another model or to random weights.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RANDOM = "random"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class ModelError(RuntimeError):
    """A model that cannot be resolved or loaded (exit code 2: nothing was decoded)."""


@dataclass(frozen=True)
class ModelRecord:
    """Provenance of one model, stored in every shard."""

    role: str  # "video" | "text" | "fusion"
    name: str
    weights: str  # as asked for
    source: str  # file or folder it was loaded from, or "random"
    sha256: str  # of the weights file, or "random"
    size_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "VIDEOBERT_OFFLINE"))


def torch_checkpoint_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def load_state_dict(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{path}: not a state dict")
    return state


def resolve_video_weights(model_name: str, spec: str) -> tuple[dict[str, Any] | None, ModelRecord, Any]:
    """Return (state dict or None for random, provenance, torchvision weights enum or None)."""
    from torchvision.models import get_model_weights

    try:
        weights_enum = get_model_weights(model_name)
    except (ValueError, KeyError):
        raise ModelError(f"unknown torchvision model {model_name!r}") from None

    if spec == RANDOM:
        return None, ModelRecord("video", model_name, spec, RANDOM, RANDOM), None

    path = Path(spec).expanduser()
    if path.suffix in (".pth", ".pt", ".safetensors", ".bin") or path.exists():
        if not path.is_file():
            raise ModelError(f"video weights file not found: {path}")
        record = ModelRecord("video", model_name, spec, str(path.resolve()), sha256_file(path), path.stat().st_size)
        return load_state_dict(path), record, None

    try:
        weights = weights_enum[spec] if spec != "DEFAULT" else weights_enum.DEFAULT
    except KeyError:
        names = ", ".join(w.name for w in weights_enum)
        raise ModelError(
            f"{spec!r} is not a weights file nor a torchvision weights name for {model_name} "
            f"(names: {names}, DEFAULT; or 'random')"
        ) from None
    filename = weights.url.rsplit("/", 1)[-1]
    cached = torch_checkpoint_dir() / filename
    if not cached.is_file():
        if offline():
            raise ModelError(_missing_torch_file(model_name, weights, cached))
        try:
            from torch.hub import download_url_to_file

            cached.parent.mkdir(parents=True, exist_ok=True)
            download_url_to_file(weights.url, str(cached), hash_prefix=None, progress=False)
        except Exception as exc:  # network errors come in many types
            raise ModelError(_missing_torch_file(model_name, weights, cached) + f" (download failed: {exc})") from None
    digest = sha256_file(cached)
    stem = Path(filename).stem
    prefix = stem.rsplit("-", 1)[-1] if "-" in stem else ""
    if prefix and all(c in "0123456789abcdef" for c in prefix) and not digest.startswith(prefix):
        raise ModelError(
            f"{cached}: sha256 {digest[:12]}... does not match the prefix {prefix} in its name; "
            "the file is corrupt or not the one torchvision publishes: delete it and fetch it again"
        )
    record = ModelRecord("video", model_name, f"{weights_enum.__name__}.{weights.name}", str(cached), digest,
                         cached.stat().st_size)
    return load_state_dict(cached), record, weights


def _missing_torch_file(model_name: str, weights: Any, cached: Path) -> str:
    return (
        f"weights {weights} for {model_name} are not in the torchvision cache: looked for {cached}. "
        f"Copy {weights.url.rsplit('/', 1)[-1]} there (set TORCH_HOME to choose the cache), "
        "or pass --video-weights PATH to a state dict"
    )


def resolve_text_model(name: str) -> tuple[Path, ModelRecord]:
    """A folder holding config.json, tokenizer files and weights, and its provenance."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ModelError(f"text model folder {folder} has no config.json")
    else:
        if folder.exists() or name.startswith((".", "/", "~")):
            raise ModelError(f"text model folder not found: {folder}")
        folder = _from_hf_cache(name)
    weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    if weights is None:
        raise ModelError(f"text model folder {folder} has no weights file ({' or '.join(WEIGHT_FILES)})")
    record = ModelRecord("text", name, name, str(folder.resolve()), sha256_file(weights), weights.stat().st_size)
    return folder, record


def _from_hf_cache(name: str) -> Path:
    from huggingface_hub import constants, snapshot_download

    patterns = ["*.json", "*.txt", *WEIGHT_FILES]
    try:
        return Path(snapshot_download(name, local_files_only=True, allow_patterns=patterns))
    except Exception:
        pass
    where = constants.HF_HUB_CACHE
    if offline():
        raise ModelError(
            f"text model {name!r} is neither a folder nor in the Hugging Face cache ({where}) and offline mode is on; "
            "pass --text-model PATH to a model folder, or fetch it on a machine with network"
        )
    try:
        return Path(snapshot_download(name, allow_patterns=patterns))
    except Exception as exc:
        raise ModelError(
            f"text model {name!r} is neither a folder nor in the Hugging Face cache ({where}), "
            f"and downloading it failed ({type(exc).__name__}); pass --text-model PATH to a model folder"
        ) from None
