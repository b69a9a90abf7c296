"""One `extract` invocation: output folder, models and (under torchrun) the ranks, then the run.

The steps, in order: discover the inputs (rank 0 only, under torchrun), lock the output
folder (or this part of it), take this process's part of the list and decide what is left to
do, load every model, run the pipeline, and summarise. torchrun ranks stay in step: each
collective below is reached by every rank, and an error on any rank ends them all with that
rank's message.

A run with nothing new to extract (a cron run after the last one finished) ends before any
model loads, and without importing torch: it records the input problems, checks the folder's
settings against the config (not the weights' checksums, which need the models) and
summarises. torchrun ranks always go the whole way, since they agree on the models first.

Heavy imports (torch, the pipeline) happen inside run_session so `--help` stays quick.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import EXECUTION, ExtractConfig, keys_marked
from ..exit_codes import EXIT_FAILED, EXIT_LOCKED, EXIT_OK, EXIT_OUTPUT, EXIT_USAGE
from ..store.outdir import Part

log = logging.getLogger(__name__)

# Settings that change only how fast a run goes, not what it writes; all others must match
# the shards already in an output folder for a run to add to it. `precision` changes the features
# in their last bits only (bf16 vs fp32), so a change is allowed but warned (check_same_setup).
EXECUTION_KEYS = keys_marked(EXECUTION)


class SessionError(RuntimeError):
    """The run ends before (or instead of) extracting: a message and an exit code."""

    def __init__(self, message: str, code: int, *, usage: bool = False, echo_json: bool = True) -> None:
        super().__init__(message)
        self.code, self.usage, self.echo_json = code, usage, echo_json


@dataclass(frozen=True)
class ExtractRequest:
    inputs: tuple[str, ...]
    out_dir: Path
    transcripts_dir: Path | None
    config: ExtractConfig
    part: Part
    models_dir: Path | None
    overwrite: bool
    wait: bool
    retry_failed: bool
    fail_fast: bool
    decode_timeout: float
    visual_vocab: Path | None = None  # tokenize the shards this run writes (`extract --visual-vocab`)


@dataclass(frozen=True)
class Outcome:
    summary: dict[str, Any]
    exit_code: int
    echo_json: bool  # False on torchrun ranks other than 0: rank 0 prints the combined summary


def run_session(request: ExtractRequest, on_video: Callable[[int], None] | None = None,
                on_start: Callable[[int, bool], None] | None = None,
                install_stop: Callable[[Any], dict] | None = None) -> Outcome:
    """Run one extract. on_start(videos, is_leader) comes before the first video, on_video(clips) after
    each; install_stop(stop_request) installs signal handlers and returns the previous ones."""
    from .discover import discover
    from .distribute import Group, combine_summaries, file_size, take_part
    from ..weights.resolve import ModelError
    from ..store.outdir import LockHeld, OutputDir
    from .run import RunOptions, select_work
    from .workers import DecodePool

    part = request.part
    config, device = request.config, None
    if part.torchrun:  # the ranks' process group needs the device; a lone process resolves it once there is work
        config, device = _device(request.config, part)
    group = Group.start(part, cuda=device is not None and device.type == "cuda")

    def agree(error: tuple[str, int] | None, cleanup: Callable[[], Any] = lambda: None) -> None:
        """Go on only if no rank failed; otherwise every rank ends with the first failed rank's error."""
        errors = [e for e in group.gather(error) if e is not None]
        if errors:
            cleanup()
            group.close()
            message, code = errors[0]
            if len(errors) > 1:
                message += f" (and {len(errors) - 1} more rank(s))"
            raise SessionError(message, code, echo_json=group.leader)

    found: tuple | str | None = None
    if group.leader:  # torchrun ranks all take rank 0's list and sizes, so they split the same list
        try:
            videos, problems = discover(request.inputs, request.transcripts_dir, stdin=sys.stdin)
            found = (videos, problems, [file_size(v.path) for v in videos])
        except ValueError as exc:
            found = str(exc)
    found = group.broadcast(found)
    if isinstance(found, str):
        group.close()
        raise SessionError(found, EXIT_USAGE, usage=True, echo_json=group.leader)
    videos, problems, sizes = found
    if not videos and not problems:
        group.close()
        raise SessionError(f"no videos found in {', '.join(request.inputs)}", EXIT_USAGE, echo_json=group.leader)

    out = OutputDir(request.out_dir, part)
    error = None
    try:
        out.lock(request.wait)
    except LockHeld as exc:
        error = (str(exc), EXIT_LOCKED)
    except OSError as exc:
        error = (f"cannot use output folder {request.out_dir} ({exc.strerror or exc})", EXIT_OUTPUT)
    agree(error, out.unlock)

    first_shard = None
    if group.leader:
        if request.overwrite:
            out.clear()
        first_shard = out.next_shard_index()
    first_shard = group.broadcast(first_shard)  # also holds the other ranks until rank 0 has cleared
    out.remove_temporary()
    mine = take_part(videos, sizes, part)
    mine_problems = problems if part.index == 0 else []  # recorded once, by part 0
    options = RunOptions(retry_failed=request.retry_failed, fail_fast=request.fail_fast,
                         decode_timeout=request.decode_timeout, first_shard=first_shard)
    work = select_work(mine, mine_problems, out, options)
    if not work.todo and not part.torchrun:
        return _nothing_to_extract(config, out, mine_problems, work, part, on_video, on_start)

    from .extractor import Extractor, plan_cpu_split

    if device is None:
        try:
            config, device = _device(config, part)
        except SessionError:
            out.unlock()
            raise
    pool = DecodePool(plan_cpu_split(config, device)[0], request.decode_timeout)  # starts while models load
    error, extractor, run_warnings, vocab = None, None, [], None
    try:
        extractor = Extractor(config, request.models_dir)  # every model resolves before any video is decoded
        run_warnings = check_same_setup(out, extractor)
        vocab = load_run_vocab(request.visual_vocab, extractor)  # refused before any video is decoded
        if not group.leader:  # every rank checks; rank 0 alone reports, once for the run
            run_warnings = []
    except ModelError as exc:
        error = (str(exc), EXIT_USAGE)
    agree(error, lambda: (pool.close(), out.unlock()))
    assert extractor is not None
    if extractor.image.record.sha256 == "random" and group.leader:
        log.warning("video weights are RANDOM (untrained); recorded in the shards")
    for warning in run_warnings:
        log.warning("%s", warning)

    if on_start:
        on_start(len(mine) + len(mine_problems), group.leader)
    previous = install_stop(options.stop) if install_stop else {}
    try:
        summary = _run(mine, mine_problems, out, extractor, options, on_video, pool, part, work)
        if vocab is not None and summary.get("shards"):
            summary["visual_words"] = tokenize_new_shards(summary, vocab, device)
        summary["run_warnings"] = summary.get("run_warnings", []) + run_warnings
        summary["warnings"] = summary.get("warnings", 0) + len(run_warnings)
        if part.split:
            summary["part"] = {"index": part.index, "count": part.count, "source": part.source}
        if not part.torchrun:
            return Outcome(summary, summary["exit_code"], echo_json=True)
        try:  # with our handlers still in place: a SIGTERM now must not kill a rank mid-gather
            summaries = group.gather(summary)
        except RuntimeError as exc:  # a rank died; what this one wrote is complete
            raise SessionError(f"lost contact with the other ranks ({' '.join(str(exc).split())}); this rank's "
                               "videos are written, rerun the same command to finish", EXIT_FAILED,
                               echo_json=False) from None
        group.close()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        out.unlock()
    combined = combine_summaries(summaries)
    combined["exit_code"] = combined_exit([s["exit_code"] for s in summaries])
    # torchrun stops every rank as soon as one exits non-zero, so only rank 0, which prints the
    # summary, carries the run's exit code; the others' outcomes are in that summary.
    return Outcome(combined, combined["exit_code"] if group.leader else EXIT_OK, echo_json=group.leader)


def _device(config: ExtractConfig, part: Part) -> tuple[ExtractConfig, Any]:
    """The config with this process's device, and that device (imports torch)."""
    import torch

    from ..device import resolve_device
    from ..weights.resolve import ModelError
    from .distribute import SplitError, device_for

    try:
        config = dataclasses.replace(config, device=device_for(config.device, part, torch.cuda.is_available()))
        device = resolve_device(config.device)
    except (SplitError, ModelError) as exc:
        raise SessionError(str(exc), EXIT_USAGE) from None
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # this rank's GPU is the current one, for nccl and for allocations
    return config, device


def _nothing_to_extract(config: ExtractConfig, out: Any, problems: list, work: Any, part: Part, on_video: Any,
                        on_start: Any) -> Outcome:
    """Every video is done (or failed before, unchanged): no model loads. The folder's settings must
    still match, as on a run with work; input problems are recorded as ever."""
    from .run import record_problems

    try:
        changed = changed_settings(out.existing_attrs(), config, before_models=True)
        if changed:
            raise SessionError(different_settings(out, changed), EXIT_USAGE)
        if on_start:
            on_start(work.summary.videos_total, True)
        summary = record_problems(problems, out, work, on_video)
    finally:
        out.unlock()
    summary.video_weights_random = config.video_weights == "random"
    result = summary.to_dict()
    if part.split:
        result["part"] = {"index": part.index, "count": part.count, "source": part.source}
    result["exit_code"] = EXIT_FAILED if summary.videos_failed or summary.videos_failed_before else EXIT_OK
    return Outcome(result, result["exit_code"], echo_json=True)


def _run(mine: list, problems: list, out: Any, extractor: Any, options: Any, on_video: Any, pool: Any,
         part: Part, work: Any) -> dict:
    """run_extract, and this process's summary with its exit code."""
    from .batching import OutputWriteError
    from .run import run_extract

    try:
        summary = run_extract(mine, problems, out, extractor, options, on_video=on_video, pool=pool,
                              work=work).to_dict()
    except OutputWriteError as exc:
        if not part.torchrun:
            raise SessionError(str(exc), EXIT_OUTPUT) from None
        log.error("%s", exc)
        return {"error": str(exc), "exit_code": EXIT_OUTPUT}
    if summary["interrupted"]:
        summary["exit_code"] = 128 + int(options.stop.signal or signal.SIGINT)
    elif summary["videos_failed"] or summary["videos_failed_before"]:
        summary["exit_code"] = EXIT_FAILED
    else:
        summary["exit_code"] = EXIT_OK
    return summary


def load_run_vocab(path: Path | None, extractor: Any) -> tuple[Any, Path] | None:
    """`--visual-vocab`: the vocabulary, refused (ModelError) when fitted on features of other models."""
    if path is None:
        return None
    from ..store.vocab_file import VocabFileError, read_vocab
    from ..vocab import check_vocab_for_run
    from ..weights.resolve import ModelError

    try:
        vocab = read_vocab(path)
    except VocabFileError as exc:
        raise ModelError(str(exc)) from None
    check_vocab_for_run(vocab, extractor.shard_attrs(), str(path))
    return vocab, Path(path)


def tokenize_new_shards(summary: dict, vocab: tuple[Any, Path], device: Any) -> dict:
    """The visual words of the shards this run wrote, added to them (still under the run's lock)."""
    from ..store.vocab_file import file_sha256
    from ..vocab import tokenize_shards

    tree, path = vocab
    try:
        return tokenize_shards(summary["shards"], tree, file_sha256(path), str(path.resolve()), device=device)
    except OSError as exc:
        log.error("visual words not written: %s", exc)
        summary["exit_code"] = EXIT_OUTPUT
        return {"error": str(exc)}


def combined_exit(codes: list[int]) -> int:
    """The exit code of a torchrun run: the gravest of its ranks' codes."""
    for code in (EXIT_OUTPUT, 128 + signal.SIGTERM, 128 + signal.SIGINT, EXIT_FAILED):
        if code in codes:
            return code
    return EXIT_OK


def check_same_setup(out: Any, extractor: Any) -> list[str]:
    """Refuse to add rows made with other settings or models to an output folder; returns warnings.

    The precision is an execution setting (a resume may well run on other hardware: fp32 on a CPU,
    then bf16 on a GPU), and features at bf16 and fp32 agree closely (cosine 0.99999 measured on
    ResNet-50, H200), so a change is accepted, but never silently: it is returned as a warning
    (logged, and in the run summary), and `info` and `validate` show the precisions per shard."""
    from ..weights.resolve import ModelError
    from ..store.reader import PRECISION_NAMES, shard_precision

    existing = out.existing_attrs()
    if existing is None:
        return []
    changed = changed_settings(existing, extractor.config)
    old_models = {m["role"]: m["sha256"] for m in existing.get("models", [])}
    new_models = {m.role: m.sha256 for m in extractor.models}
    changed += [f"{role} model" for role in new_models if old_models.get(role) != new_models[role]]
    if changed:
        raise ModelError(different_settings(out, changed))
    old_precision, new_precision = shard_precision(existing), PRECISION_NAMES[extractor.precision]
    if old_precision not in ("unrecorded", new_precision):
        return [f"{out.path} holds shards extracted at {old_precision} precision and this run uses "
                f"{new_precision}: the folder will mix the two (features differ in the last bits; `info` and "
                f"`validate` show the mix); pass --precision {old_precision} to keep it uniform"]
    return []


def changed_settings(existing: dict | None, config: ExtractConfig, before_models: bool = False) -> list[str]:
    """The config keys (not execution settings) whose values differ from the folder's shards'. A fusion
    checkpoint brings its own width, known once it is loaded: before_models, fusion_dim/fusion_heads are
    not compared when there is one."""
    if existing is None:
        return []
    old, new = existing.get("config", {}), config.to_dict()
    skip = set(EXECUTION_KEYS) | ({"fusion_dim", "fusion_heads"} if before_models and config.fusion_checkpoint
                                  else set())
    # A setting newer than the shards (added by a later videobert) compares as its default: a folder
    # made before it existed can be added to without --overwrite.
    defaults = type(config)().to_dict()
    return sorted(k for k in set(old) | set(new) if k not in skip and old.get(k, defaults.get(k)) != new.get(k))


def different_settings(out: Any, changed: list[str]) -> str:
    return (f"{out.path} holds shards made with other settings ({', '.join(changed)}); "
            "use the same settings to add to it, --overwrite to start afresh, or another -o")
