"""`videobert extract`: options -> an ExtractRequest for extract/session.py; progress bars and signals.

The session does the work and decides the exit code; this layer only turns options into a config
and a request, shows progress on a terminal, installs the SIGINT/SIGTERM handlers the session asks
for, and prints the JSON summary (or the error) it returns.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

import click

from ..config import ConfigError, load_config
from ..exit_codes import EXIT_INTERRUPTED, EXIT_USAGE, EXTRACT_HELP
from .messages import fail


def _setup_logging(quiet: bool, tag: str = "") -> logging.Logger:
    """Log lines go to the stderr of this invocation, one line each (tagged with the part in split runs)."""
    logger = logging.getLogger("videobert_cli")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"videobert{tag}: %(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.ERROR if quiet else logging.WARNING)
    logger.propagate = False
    return logger


@click.command(epilog=EXTRACT_HELP)
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Output folder for shard-NNNNN.h5 files.")
@click.option("--transcripts", "transcripts_dir", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Folder of transcripts mirroring the inputs' layout (looked in before the video's own folder).")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False),
              help="YAML config file (keys as in configs/default.yaml).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one config key (repeatable).")
@click.option("--clip-mode", type=click.Choice(["fixed", "cue"]), help="fixed windows, or one clip per cue.")
@click.option("--clip-seconds", type=float, help="Window length in fixed mode [1.5].")
@click.option("--frames-per-clip", type=int, help="Frames sampled per clip [4].")
@click.option("--device", help="auto, cpu, cuda or cuda:N [auto].")
@click.option("--batch-size", type=int, help="Frames per image-encoder batch, across videos [32 on CPU, 128 on CUDA].")
@click.option("--workers", type=int, help="Decode processes [1 on CPU, cores - 1 (at most 32) on CUDA].")
@click.option("--threads", type=int, help="torch intra-op threads [all cores on CPU].")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
              help="Encoder precision [auto: bf16 on CUDA GPUs that support it and on CPUs with native bf16 "
              "(AVX512_BF16, AMX), else fp32].")
@click.option("--compile/--no-compile", "compile", default=None, help="torch.compile the image encoder.")
@click.option("--video-model", help="torchvision backbone name [resnet50].")
@click.option("--video-weights", help="Weights: torchvision name (IMAGENET1K_V2, DEFAULT), a state-dict file, "
              "or 'random' (recorded as such).")
@click.option("--text-model", help="BERT model folder or Hugging Face name [bert-base-uncased].")
@click.option("--transcript-sources", metavar="LIST", help="Where words come from, in order; the first with text "
              "wins [sidecar,embedded,asr].")
@click.option("--subtitle-lang", metavar="LANGS", help="Embedded subtitle track languages wanted, in order (ISO 639: "
              "en, eng, en,fr) [the default-flagged track, else the first].")
@click.option("--asr", metavar="MODEL", help="Whisper model (folder or Hugging Face name) to recognise speech in "
              "videos with no transcript [off].")
@click.option("--shard-size", type=int, help="Clips per shard at most [10000].")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), help="Stored feature dtype [float32].")
@click.option("--fusion-checkpoint", help="Trained fusion weights (default: fixed-seed weights).")
@click.option("--save-frames/--no-save-frames", default=None, help="Also store per-frame image features.")
@click.option("--save-tokens/--no-save-tokens", default=None, help="Also store per-token text features and ids.")
@click.option("--models-dir", type=click.Path(path_type=Path, file_okay=False), envvar="VIDEOBERT_MODELS_DIR",
              help="Folder made by `videobert models fetch --to DIR`, searched first [$VIDEOBERT_MODELS_DIR].")
@click.option("--overwrite", is_flag=True, help="Start afresh: delete the shards and failure log in the output folder.")
@click.option("--retry-failed", is_flag=True, help="Process only the videos that failed in earlier runs.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first failed video (completed videos are written).")
@click.option("--decode-timeout", type=float, default=120.0, show_default=True,
              help="Seconds a video's decoder may go without progress before it is killed and the video failed.")
@click.option("--wait", is_flag=True, help="If another run holds the output folder, wait for it instead of exiting 75.")
@click.option("--num-shards", type=int, help="Split the work into N parts by file size and run one of them (with "
              "--shard-index): for job arrays and several machines sharing a filesystem [SLURM_ARRAY_TASK_COUNT "
              "in a Slurm job array; under torchrun the ranks split the work themselves].")
@click.option("--shard-index", type=int, help="The part to run, 0..N-1 [from SLURM_ARRAY_TASK_ID].")
@click.option("--visual-vocab", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write each clip's visual word (a vocabulary from `videobert vocab`, fitted on features "
              "of the same models) into the new shards.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or warnings; errors only.")
def extract(inputs: tuple[str, ...], out_dir: Path, transcripts_dir: Path | None, config_file: Path | None,
            overrides: tuple[str, ...], models_dir: Path | None, overwrite: bool, retry_failed: bool,
            fail_fast: bool, decode_timeout: float, wait: bool, num_shards: int | None, shard_index: int | None,
            quiet: bool, visual_vocab: Path | None = None, **flags: object) -> None:
    """Extract one fused embedding per clip from videos and their transcripts.

    INPUTS are video files, folders (searched recursively) or '-' to read
    newline-separated paths from stdin. Progress and errors go to stderr; one
    JSON summary line goes to stdout.

    Rerunning on the same output folder extracts only what is missing: videos
    already in a completed shard are skipped (a video whose size or mtime
    changed is extracted again and its new rows supersede the old), videos that
    failed before are skipped unless they changed or --retry-failed is given.
    Failures are appended to OUT/failures.jsonl.
    """
    from ..extract.distribute import SplitError, resolve_part
    from ..extract.session import ExtractRequest, SessionError, run_session

    try:
        config = load_config(config_file, overrides, flags)
        part = resolve_part(num_shards, shard_index, os.environ)
    except (ConfigError, SplitError) as exc:
        raise click.UsageError(str(exc)) from None
    if overwrite and part.split and not part.torchrun:
        raise click.UsageError("--overwrite would delete the other parts' shards too, so one part of a split run "
                               "cannot take it; delete the output folder first, or use --overwrite under torchrun")
    log = _setup_logging(quiet, f"[{part.label}]" if part.split else "")
    request = ExtractRequest(inputs=inputs, out_dir=out_dir, transcripts_dir=transcripts_dir, config=config,
                             part=part, models_dir=models_dir, overwrite=overwrite, wait=wait,
                             retry_failed=retry_failed, fail_fast=fail_fast, decode_timeout=decode_timeout,
                             visual_vocab=visual_vocab)
    bars = _ProgressBars(show=not quiet and sys.stderr.isatty())
    try:
        outcome = run_session(request, on_video=bars.update, on_start=bars.start,
                              install_stop=lambda stop: _install_stop_handlers(stop, log))
    except SessionError as exc:
        if exc.code == EXIT_USAGE and exc.usage:
            raise click.UsageError(str(exc)) from None
        fail(exc.code, exc, summary=exc.echo_json)  # torchrun ranks other than 0 leave stdout to rank 0
    except KeyboardInterrupt:
        click.echo("videobert: aborted: videos not yet in a completed shard will be done by the next run", err=True)
        click.echo(json.dumps({"interrupted": True, "aborted": True, "exit_code": EXIT_INTERRUPTED}))
        sys.exit(EXIT_INTERRUPTED)
    finally:
        bars.close()
    if outcome.echo_json:
        click.echo(json.dumps(outcome.summary))
    from .main import QUICK_EXIT

    QUICK_EXIT["ok"] = True  # shards written and closed, lock released, workers stopped: nothing left to unload
    sys.exit(outcome.exit_code)


class _ProgressBars:
    """A videos bar and a clips bar on stderr, only on a terminal (and only on torchrun's rank 0)."""

    def __init__(self, show: bool) -> None:
        self.show = show
        self.bars: list = []

    def start(self, videos: int, leader: bool) -> None:
        from tqdm import tqdm

        disable = not (self.show and leader)
        self.bars = [tqdm(total=videos, unit="video", disable=disable, file=sys.stderr),
                     tqdm(unit="clip", disable=disable, file=sys.stderr, position=1)]

    def update(self, clips: int) -> None:
        if self.bars:
            self.bars[0].update(1)
            self.bars[1].update(clips)

    def close(self) -> None:
        for bar in self.bars:
            bar.close()


def _install_stop_handlers(stop, log: logging.Logger) -> dict:
    """First SIGINT/SIGTERM: finish cleanly; a second SIGINT: abort at once."""

    def handler(signum: int, _frame: object) -> None:
        if stop.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.signal = signum
        log.warning("%s: stopping after writing finished videos (Ctrl-C again aborts)",
                    signal.Signals(signum).name)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for signum in previous:
        signal.signal(signum, handler)
    return previous
