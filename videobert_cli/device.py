"""Where the models run, and what the output records about the machine that made it.

`extract`, `train`, `fuse` and `evaluate` share one device rule (auto is the GPU when there is one; a
device that is asked for but absent is an error, never a silent CPU run), so it lives here, above
both families; the precision follows from the device (and, on the CPU, from what its instructions can do
natively: `cpu_capability`). `library_versions` is what the shards record of the software that shaped them.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from dataclasses import dataclass
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


@dataclass(frozen=True)
class CpuCapability:
    """What this CPU's vector units can do, as torch (oneDNN's CPU detection) sees it."""

    isa: str  # torch's kernel level: "AVX512", "AVX2", "DEFAULT", ... ("unknown" if torch cannot say)
    avx2: bool = False
    avx512: bool = False
    avx512_bf16: bool = False  # AVX512_BF16: bf16 dot products in hardware (Zen 4+, Cooper Lake, Sapphire Rapids)
    amx: bool = False  # AMX tiles (Sapphire Rapids+): bf16 matrix units
    vnni: bool = False

    @property
    def native_bf16(self) -> bool:
        """bf16 runs in hardware here; without it oneDNN emulates bf16 (slower than fp32)."""
        return self.avx512_bf16 or self.amx

    def describe(self) -> str:
        """One line: "AVX512: AVX2, AVX-512, AVX512_BF16, VNNI, no AMX (native bf16)"."""
        flags = [("AVX2", self.avx2), ("AVX-512", self.avx512), ("AVX512_BF16", self.avx512_bf16),
                 ("VNNI", self.vnni), ("AMX", self.amx)]
        named = ", ".join(name if on else f"no {name}" for name, on in flags)
        return f"{self.isa}: {named} ({'native bf16' if self.native_bf16 else 'bf16 emulated: fp32 is used'})"


def cpu_capability() -> CpuCapability:
    """This CPU's capability, from torch's own checks (private helpers, stable since torch 2.1); if they are
    missing, nothing is assumed (so `auto` stays fp32)."""
    try:
        isa = str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        isa = "unknown"

    def check(name: str) -> bool:
        probe = getattr(torch.cpu, name, None)
        try:
            return bool(probe()) if probe is not None else False
        except RuntimeError:
            return False

    return CpuCapability(isa=isa, avx2=check("_is_avx2_supported"), avx512=check("_is_avx512_supported"),
                         avx512_bf16=check("_is_avx512_bf16_supported"), amx=check("_is_amx_tile_supported"),
                         vnni=check("_is_vnni_supported"))


def resolve_precision(spec: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `spec` on `device`; None = plain fp32.

    auto is bf16 on CUDA GPUs that support it and on CPUs that run bf16 natively (AVX512_BF16 or AMX:
    ResNet-50 2.2x faster than fp32, features at cosine 0.99999), fp32 everywhere else (on AVX2 or plain
    AVX-512, bf16 would be emulated and slower). `torch.ops.mkldnn._is_mkldnn_bf16_supported` is not
    asked: it is True on plain AVX-512 too, where bf16 is emulated."""
    if spec == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if device.type == "cpu" and cpu_capability().native_bf16 else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[spec]


# glibc gives blocks above its mmap threshold (which it raises to 32 MB at most) their own mapping and
# unmaps them when freed, so every forward pass of a CNN on the CPU maps its large activations afresh and
# the kernel zeroes each page on first touch: ResNet-50 at batch 32 spent a fifth of its time there.
# Kept in the heap below 256 MB (a batch of 128 frames' largest activation in bf16), freed activations
# are reused by the next batch. The cost is memory held instead of returned: peak RSS 0.1-0.4 GB higher,
# and still flat (a 20-minute video in 800 or 1600 clips peaks no higher than 8 one-minute videos + 8%).
REUSED_BLOCK_BYTES = 256 << 20
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def reuse_large_blocks() -> str:
    """Keep glibc from unmapping freed blocks under 256 MB in this process (the CPU encoders' activations).

    Returns what was done, for the log: "glibc: ..." or why the allocator was left as it is: not glibc,
    or the user already chose (glibc's MALLOC_*_ variables or GLIBC_TUNABLES, or another allocator in
    LD_PRELOAD). Only speed changes, never a result."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return "left as it is (not glibc)"
    chosen = [name for name in _MALLOC_ENV if name in os.environ]
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        chosen.append("GLIBC_TUNABLES")
    preload = os.environ.get("LD_PRELOAD", "")
    chosen += [name for name in _OTHER_ALLOCATORS if name in preload]
    if chosen:
        return f"left as it is ({', '.join(chosen)} set)"
    mallopt = ctypes.CDLL(None).mallopt
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    if not (mallopt(m_mmap_threshold, REUSED_BLOCK_BYTES) and mallopt(m_trim_threshold, REUSED_BLOCK_BYTES)):
        return "left as it is (mallopt refused)"
    return "glibc: freed blocks under 256 MB are reused, not unmapped"


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
