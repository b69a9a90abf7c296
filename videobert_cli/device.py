"""Where the models run, and what the output records about the machine that made it.

`extract`, `train`, `fuse` and `evaluate` share one device rule (auto is the GPU when there is one; a
device that is asked for but absent is an error, never a silent CPU run), so it lives here, above
both families; the precision follows from the device. `library_versions` is what the shards record
of the software that shaped them.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version

import torch

from . import __version__
from .weights.resolve import ModelError


def resolve_device(spec: str) -> torch.device:
    """The device for `spec` (auto, cpu, cuda, cuda:N); raises ModelError for one that is not usable here."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ModelError(f"unknown device {spec!r} (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {spec} asked for, but CUDA is not available here")
    return device


def resolve_precision(spec: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `spec` on `device`; None = plain fp32."""
    if spec == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[spec]


def library_versions() -> dict[str, str]:
    """Installed versions of what shapes the output (read from package metadata: no imports)."""

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {"videobert": __version__, "torch": torch.__version__, "torchvision": installed("torchvision"),
            "transformers": installed("transformers"), "decord": installed("decord2"), "h5py": installed("h5py"),
            "python": sys.version.split()[0]}
