"""The device and precision rules: `precision: auto` follows what the hardware runs natively."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from videobert_cli import device as device_module
from videobert_cli.device import CpuCapability, cpu_capability, resolve_precision

CPU = torch.device("cpu")
BF16_NATIVE = CpuCapability("AVX512", avx2=True, avx512=True, avx512_bf16=True, vnni=True)  # e.g. AMD Zen 4
AMX = CpuCapability("AVX512", avx2=True, avx512=True, amx=True)  # Sapphire Rapids (AMX-BF16)
PLAIN_AVX512 = CpuCapability("AVX512", avx2=True, avx512=True, vnni=True)  # Skylake-X / Cascade Lake: emulated
AVX2_ONLY = CpuCapability("AVX2", avx2=True)


@pytest.mark.parametrize("capability, expected", [(BF16_NATIVE, torch.bfloat16), (AMX, torch.bfloat16),
                                                  (PLAIN_AVX512, None), (AVX2_ONLY, None),
                                                  (CpuCapability("unknown"), None)],
                         ids=["avx512_bf16", "amx", "plain-avx512", "avx2-only", "unknown"])
def test_auto_is_bf16_only_where_the_cpu_runs_it_natively(monkeypatch, capability, expected) -> None:
    monkeypatch.setattr(device_module, "cpu_capability", lambda: capability)
    assert resolve_precision("auto", CPU) == expected
    # An explicit choice is always kept, whatever the CPU.
    assert resolve_precision("fp32", CPU) is None
    assert resolve_precision("bf16", CPU) == torch.bfloat16


def test_auto_on_cuda_does_not_ask_the_cpu(monkeypatch) -> None:
    def no(*_: object) -> None:
        raise AssertionError("the CPU's capability decides nothing on a GPU")

    monkeypatch.setattr(device_module, "cpu_capability", no)
    for supported, expected in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert resolve_precision("auto", torch.device("cuda")) == expected


def test_capability_comes_from_torch_and_falls_back_to_nothing(monkeypatch) -> None:
    here = cpu_capability()
    assert here.isa and isinstance(here.native_bf16, bool) and here.isa in here.describe()
    for name in ("_is_avx2_supported", "_is_avx512_supported", "_is_avx512_bf16_supported",
                 "_is_amx_tile_supported", "_is_vnni_supported"):
        monkeypatch.delattr(torch.cpu, name, raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: (_ for _ in ()).throw(RuntimeError()))
    missing = cpu_capability()
    assert missing == CpuCapability("unknown") and not missing.native_bf16
    assert "bf16 emulated: fp32 is used" in missing.describe()
    assert BF16_NATIVE.describe() == "AVX512: AVX2, AVX-512, AVX512_BF16, VNNI, no AMX (native bf16)"


def test_defaults_follow_the_device_and_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU torch gets the cores and one worker decodes; on a GPU every core but one decodes and
    batches are larger; explicit settings always win."""
    import torch

    from videobert_cli.config import ExtractConfig
    from videobert_cli.extract.extractor import batch_size_for, plan_cpu_split

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    default = ExtractConfig()
    assert plan_cpu_split(default, cpu) == (1, 16) and batch_size_for(default, cpu) == 32
    assert plan_cpu_split(default, cuda) == (15, 1) and batch_size_for(default, cuda) == 128
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun ranks share the cores
    assert plan_cpu_split(default, cuda) == (7, 1)
    monkeypatch.setattr("os.cpu_count", lambda: 256)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert plan_cpu_split(default, cuda)[0] == 32
    chosen = ExtractConfig(workers=3, threads=2, batch_size=64)
    assert plan_cpu_split(chosen, cuda) == (3, 2) and batch_size_for(chosen, cuda) == 64


_FAULTS_SCRIPT = """
import resource
import torch
from videobert_cli.device import reuse_large_blocks
def faults_of_one_batch():  # what a forward pass does with an activation: allocate, write, free
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(64 << 20, dtype=torch.uint8)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_one_batch()
before = min(faults_of_one_batch() for _ in range(2))
said = reuse_large_blocks()
# posix_memalign asks a little more than a freed block holds, so the heap grows a few times before freed
# blocks have merged into ones large enough (runs vary with the address layout; 7 at most in 40 runs).
for _ in range(12):
    faults_of_one_batch()
print(before, "|", said, "|", min(faults_of_one_batch() for _ in range(3)))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc")
@pytest.mark.parametrize("env, expect_reuse", [({}, True), ({"MALLOC_MMAP_THRESHOLD_": "65536"}, False)],
                         ids=["default", "user-set-threshold"])
def test_freed_activations_are_reused_unless_the_user_set_the_allocator(env, expect_reuse) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], capture_output=True, text=True,
                         env={**environ, **env}, check=True).stdout
    before, said, after = (part.strip() for part in out.split("|"))
    pages = (64 << 20) // 4096
    assert int(before) > pages // 2  # a fresh mapping each time: every page faulted in again
    if expect_reuse:
        assert said.startswith("glibc:") and int(after) < pages // 20  # the freed block was kept and reused
    else:
        assert said == "left as it is (MALLOC_MMAP_THRESHOLD_ set)" and int(after) > pages // 2


@pytest.mark.parametrize("name, value, reason", [("LD_PRELOAD", "/usr/lib/libjemalloc.so.2", "jemalloc"),
                                                 ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536",
                                                  "GLIBC_TUNABLES")])
def test_an_allocator_the_user_chose_is_left_alone(monkeypatch, name, value, reason) -> None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        assert device_module.reuse_large_blocks() == "left as it is (not glibc)"
        return
    monkeypatch.setattr(device_module.ctypes, "CDLL", None)  # mallopt must not be reached
    monkeypatch.setenv(name, value)
    assert device_module.reuse_large_blocks() == f"left as it is ({reason} set)"
