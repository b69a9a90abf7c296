"""Scale-out: which part of the work this process does, and how torchrun ranks agree.

A run is split into N parts in one of three ways (never more than one at once):
torchrun (RANK / WORLD_SIZE / LOCAL_RANK), `--num-shards N --shard-index I`, or a
Slurm job array (SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT). Every part
computes the same split of the whole sorted input list, balanced by file size, so
the parts are disjoint and cover every video whatever order they run in; what is
already done is then skipped by reading every completed shard, whoever wrote it,
so a rerun with another number of parts finishes exactly what is left.

Only torchrun ranks talk to each other (torch.distributed, gloo for CPU
objects, nccl registered for CUDA): rank 0 discovers the inputs and hands the list
to all, they agree that every rank holds its lock and loaded its models, and at
the end rank 0 prints one combined summary. Separate `--num-shards` processes
share nothing but the output folder.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any, Mapping, Sequence

from ..store.outdir import SINGLE, Part

# A rank that finishes its part waits here for the slowest one (the split balances bytes,
# not decode time); a dead rank is noticed by torchrun, which stops the others.
COLLECTIVE_TIMEOUT = dt.timedelta(hours=24)


class SplitError(ValueError):
    """The split options or environment do not describe a valid part."""


def _int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise SplitError(f"{name}={value!r} is not an integer") from None


def resolve_part(num_shards: int | None, shard_index: int | None, environ: Mapping[str, str]) -> Part:
    """The part this process runs, from torchrun's variables, the options, or a Slurm array."""
    world = _int(environ, "WORLD_SIZE")
    if (num_shards is None) != (shard_index is None):
        raise SplitError("--num-shards and --shard-index go together")
    if world is not None and world > 1:
        if num_shards is not None:
            raise SplitError("--num-shards/--shard-index cannot be combined with torchrun (WORLD_SIZE="
                             f"{world}): torchrun already splits the work between its ranks")
        rank = _int(environ, "RANK") or 0
        return Part(rank, world, "torchrun", _int(environ, "LOCAL_RANK") or 0)
    if num_shards is not None:
        return _checked(shard_index, num_shards, "--num-shards")
    task, count = _int(environ, "SLURM_ARRAY_TASK_ID"), _int(environ, "SLURM_ARRAY_TASK_COUNT")
    if task is None or count is None:
        return SINGLE
    first, step = _int(environ, "SLURM_ARRAY_TASK_MIN") or 0, _int(environ, "SLURM_ARRAY_TASK_STEP") or 1
    if (task - first) % step:
        raise SplitError(f"Slurm array task {task} is not on the array's grid (min {first}, step {step}); "
                         "pass --num-shards and --shard-index")
    return _checked((task - first) // step, count, "slurm array")


def _checked(index: int, count: int, source: str) -> Part:
    if count < 1:
        raise SplitError(f"the number of parts must be at least 1, got {count}")
    if not 0 <= index < count:
        raise SplitError(f"part index {index} is outside 0..{count - 1} ({source})")
    return Part(index, count, source) if count > 1 else SINGLE


def device_for(spec: str, part: Part, cuda_available: bool) -> str:
    """The device a rank uses: torchrun ranks take cuda:LOCAL_RANK (one GPU each) when CUDA is there."""
    if not part.torchrun:
        return spec
    if spec.startswith("cuda:"):
        raise SplitError(f"--device {spec}: under torchrun each rank uses cuda:LOCAL_RANK; pass --device cuda or auto")
    if spec in ("auto", "cuda") and cuda_available:
        return f"cuda:{part.local_rank}"
    return spec


def split_by_size(sizes: Sequence[int], parts: int) -> list[list[int]]:
    """Item indexes per part: largest items first, each to the part with the fewest bytes so far
    (ties to the lower part); each part's indexes ascending. Deterministic for equal inputs."""
    loads = [0] * parts
    chosen: list[list[int]] = [[] for _ in range(parts)]
    for item in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        target = min(range(parts), key=lambda p: (loads[p], p))
        loads[target] += sizes[item]
        chosen[target].append(item)
    return [sorted(items) for items in chosen]


def file_size(path: os.PathLike[str] | str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0  # it fails at probe time wherever it lands; the split only needs a number


def take_part(items: Sequence[Any], sizes: Sequence[int], part: Part) -> list[Any]:
    if not part.split:
        return list(items)
    return [items[i] for i in split_by_size(sizes, part.count)[part.index]]


class Group:
    """The collectives torchrun ranks need; the same calls are no-ops for a lone process."""

    def __init__(self, part: Part) -> None:
        self.part = part
        self.rank, self.size = (part.index, part.count) if part.torchrun else (0, 1)

    @classmethod
    def start(cls, part: Part, cuda: bool) -> "Group":
        group = cls(part)
        if part.torchrun:
            import torch.distributed as dist

            # Objects travel through gloo on the CPU; nccl is registered for CUDA tensors.
            dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
        return group

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def broadcast(self, value: Any) -> Any:
        """Rank 0's value, on every rank."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's value, in rank order, on every rank."""
        if self.size == 1:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def close(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def combine_summaries(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary for a torchrun run: totals, and each rank's own figures."""
    counted = ("videos_total", "videos_done", "videos_skipped", "videos_superseded", "videos_failed",
               "videos_failed_before", "clips", "warnings")
    combined: dict[str, Any] = {key: sum(s.get(key, 0) for s in summaries) for key in counted}
    seconds = max((s.get("seconds", 0.0) for s in summaries), default=0.0)
    combined.update({
        "world_size": len(summaries),
        "seconds": round(seconds, 3),
        "clips_per_second": round(combined["clips"] / seconds, 3) if seconds > 0 else 0.0,
        "shards": [shard for s in summaries for shard in s.get("shards", [])],
        "failures": [failure for s in summaries for failure in s.get("failures", [])],
        "run_warnings": [warning for s in summaries for warning in s.get("run_warnings", [])],
        "video_weights_random": any(s.get("video_weights_random") for s in summaries),
        "precision": next((s["precision"] for s in summaries if s.get("precision")), None),
        "interrupted": any(s.get("interrupted") for s in summaries),
        "ranks": [{"rank": rank, **{k: s.get(k) for k in ("videos_total", "videos_done", "videos_failed",
                                                            "videos_skipped", "clips", "seconds",
                                                            "clips_per_second", "error")}}
                  for rank, s in enumerate(summaries)],
    })
    errors = [s["error"] for s in summaries if s.get("error")]
    if errors:
        combined["error"] = "; ".join(errors)
    return combined
