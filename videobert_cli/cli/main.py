"""The `videobert` command line: parses options and calls the library."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import NoReturn

import click

from .. import __version__
from ..config import ConfigError, load_config

from ..extract.session import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ExtractRequest, SessionError, run_session

EXIT_CODES_HELP = """\b
Exit codes:
  0    everything asked for is done (new videos extracted, the rest already were)
  1    some videos failed, now or in an earlier run (see OUT/failures.jsonl,
       --retry-failed); the others were written
  2    usage, config or model error: nothing was extracted
  3    the output could not be written (disk full, permissions): completed
       shards are intact, rerun to finish
  75   another run holds the output folder, or this part of it
       (--num-shards, torchrun: see the README; use --wait to queue)
  130  interrupted by SIGINT, 143 by SIGTERM: finished videos were written,
       rerun to finish"""


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="videobert")
def main() -> None:
    """Per-clip multimodal (video + transcript) embeddings, written to HDF5 shards."""


@main.command(epilog=EXIT_CODES_HELP)
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
@click.option("--batch-size", type=int, help="Frames per image-encoder batch, across videos [32].")
@click.option("--workers", type=int, help="Decode processes [1 on CPU, min(8, cores-1) on CUDA].")
@click.option("--threads", type=int, help="torch intra-op threads [all cores on CPU].")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
              help="Encoder precision [auto: bf16 on CUDA GPUs that support it, else fp32].")
@click.option("--compile/--no-compile", "compile", default=None, help="torch.compile the image encoder.")
@click.option("--video-model", help="torchvision backbone name [resnet50].")
@click.option("--video-weights", help="Weights: torchvision name (IMAGENET1K_V2, DEFAULT), a state-dict file, "
              "or 'random' (recorded as such).")
@click.option("--text-model", help="BERT model folder or Hugging Face name [bert-base-uncased].")
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
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or warnings; errors only.")
def extract(inputs: tuple[str, ...], out_dir: Path, transcripts_dir: Path | None, config_file: Path | None,
            overrides: tuple[str, ...], models_dir: Path | None, overwrite: bool, retry_failed: bool,
            fail_fast: bool, decode_timeout: float, wait: bool, num_shards: int | None, shard_index: int | None,
            quiet: bool, **flags: object) -> None:
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
                             retry_failed=retry_failed, fail_fast=fail_fast, decode_timeout=decode_timeout)
    bars = _ProgressBars(show=not quiet and sys.stderr.isatty())
    try:
        outcome = run_session(request, on_video=bars.update, on_start=bars.start,
                              install_stop=lambda stop: _install_stop_handlers(stop, log))
    except SessionError as exc:
        if exc.code == EXIT_USAGE and exc.usage:
            raise click.UsageError(str(exc)) from None
        _fatal(str(exc), exc.code, echo_json=exc.echo_json)
    except KeyboardInterrupt:
        click.echo("videobert: aborted: videos not yet in a completed shard will be done by the next run", err=True)
        click.echo(json.dumps({"interrupted": True, "aborted": True, "exit_code": 130}))
        sys.exit(130)
    finally:
        bars.close()
    if outcome.echo_json:
        click.echo(json.dumps(outcome.summary))
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


def _fatal(message: str, code: int, echo_json: bool = True) -> NoReturn:
    """A run-ending error: one line on stderr, a JSON summary on stdout, the exit code."""
    click.echo(f"videobert: error: {message}", err=True)
    if echo_json:  # torchrun ranks other than 0 leave stdout to rank 0
        click.echo(json.dumps({"error": message, "exit_code": code}))
    sys.exit(code)


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


@main.command()
@click.argument("out_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for scripts).")
def info(out_dir: Path, as_json: bool) -> None:
    """Describe an output folder: videos, clips, dims, models, config."""
    from ..store.reader import FeatureError, describe_precisions, open_features

    try:
        features = open_features(out_dir)
        report = features.describe()
    except (FeatureError, OSError) as exc:
        click.echo(f"videobert: error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    finally:
        pass
    if as_json:
        click.echo(json.dumps(report, indent=None, sort_keys=True))
        return
    dims = report["dims"]
    lines = [
        f"output:      {report['out_dir']} (schema v{report['schema_version']}, {len(report['shards'])} shard(s))",
        f"videos:      {report['videos']} ({report['video_seconds']:.1f} s of video)",
        f"clips:       {report['clips']} ({report['clips_with_text']} with text)",
        f"dims:        fused {dims['fused']}, video {dims['video']}, text {dims['text']} ({report['feature_dtype']})",
        f"precision:   {describe_precisions(report['precision'])}",
    ]
    for model in report["models"]:
        lines.append(f"{model['role'] + ' model:':<14}{model['name']} [{model['weights']}] sha256 {model['sha256'][:16]}"
                     f"  ({model['source']})")
    if report["video_weights_random"]:
        lines.append("WARNING:     video weights are RANDOM (untrained)")
    cfg = report["config"]
    lines.append(f"clips:       {cfg['clip_mode']} mode, {cfg['clip_seconds']} s, {cfg['frames_per_clip']} frames/clip")
    lines.append(f"decoders:    {report['decoders']}; transcripts: {report['transcript_formats']}")
    if report["configs_differ"]:
        lines.append("NOTE:        shards were written with different configs")
    click.echo("\n".join(lines))


@main.command()
@click.argument("out_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for scripts).")
def validate(out_dir: Path, as_json: bool) -> None:
    """Check every shard and the failure log of an output folder.

    Checks that each shard opens, has the known schema version, consistent
    shapes and row counts, no NaN/Inf in features, that no video is present
    twice (a changed video extracted again supersedes its old rows: a note),
    and that failures.jsonl parses. Shards extracted at different precisions
    are a warning, not a problem. Exit 0 when all is well, 1 naming each
    problem."""
    from ..store.validate import validate as run_validate

    report = run_validate(out_dir)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        click.echo(f"{out_dir}: {report.shards} shard(s), {report.videos} video(s), {report.clips} clip(s), "
                   f"{report.superseded} superseded, {report.failures_logged} failure record(s)")
        for note in report.notes:
            click.echo(f"note: {note}")
        for warning in report.warnings:
            click.echo(f"warning: {warning}")
        for problem in report.problems:
            click.echo(f"PROBLEM: {problem}")
        click.echo("OK" if report.ok else f"{len(report.problems)} problem(s)")
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)


def _config_options(func):
    func = click.option("--models-dir", type=click.Path(path_type=Path, file_okay=False),
                        envvar="VIDEOBERT_MODELS_DIR", help="Models folder searched first [$VIDEOBERT_MODELS_DIR].")(func)
    func = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one config key.")(func)
    func = click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False),
                        help="YAML config file (as for extract).")(func)
    return func


def _load(config_file: Path | None, overrides: tuple[str, ...]):
    try:
        return load_config(config_file, overrides)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


@main.group()
def models() -> None:
    """List, fetch and verify the models a config uses."""


@models.command("list")
@_config_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines (for scripts).")
def models_list(config_file: Path | None, overrides: tuple[str, ...], models_dir: Path | None, as_json: bool) -> None:
    """Where each model of the config resolves to, with size and sha256 (nothing is downloaded).

    Exit 0 when every model resolves, 2 when one does not."""
    from ..weights.resolve import ModelError, locate_text_model, locate_video_weights, sha256_file, text_weights_file

    config = _load(config_file, overrides)
    rows, failed = [], False
    for role, name, weights in (("video", config.video_model, config.video_weights),
                                ("text", config.text_model, config.text_model)):
        row = {"role": role, "name": name, "weights": weights}
        try:
            if role == "video":
                path, _ = locate_video_weights(name, weights, models_dir, download=False)
            else:
                path = text_weights_file(locate_text_model(name, models_dir, download=False))
            if path is None:
                row.update(source="random (untrained)", size_bytes=0, sha256="random")
            else:
                row.update(source=str(path.resolve()), size_bytes=path.stat().st_size, sha256=sha256_file(path))
        except ModelError as exc:
            failed = True
            row.update(source=None, error=str(exc))
        rows.append(row)
    for row in rows:
        if as_json:
            click.echo(json.dumps(row))
        elif row.get("error"):
            click.echo(f"{row['role']:<6} {row['name']} [{row['weights']}]\n       NOT FOUND: {row['error']}")
        else:
            size = f"{row['size_bytes'] / 1e6:.1f} MB" if row["size_bytes"] else "-"
            click.echo(f"{row['role']:<6} {row['name']} [{row['weights']}]\n       {row['source']}\n"
                       f"       {size}, sha256 {row['sha256']}")
    sys.exit(EXIT_USAGE if failed else EXIT_OK)


@models.command("fetch")
@_config_options
@click.option("--to", "to", type=click.Path(path_type=Path, file_okay=False),
              help="Put the files in this folder (copy it to an offline machine and pass --models-dir) "
                   "instead of the default caches.")
def models_fetch(config_file: Path | None, overrides: tuple[str, ...], models_dir: Path | None,
                 to: Path | None) -> None:
    """Download (or copy from caches and offline packages) what the config needs."""
    from ..weights.resolve import ModelError, fetch_models

    config = _load(config_file, overrides)
    try:
        for line in fetch_models(config.video_model, config.video_weights, config.text_model, to or models_dir):
            click.echo(line)
    except ModelError as exc:
        click.echo(f"videobert: error: {exc}", err=True)
        sys.exit(EXIT_USAGE)


@models.command("verify")
@_config_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines (for scripts).")
def models_verify(config_file: Path | None, overrides: tuple[str, ...], models_dir: Path | None,
                  as_json: bool) -> None:
    """Load each model and check that its weights are trained, not random.

    Exit 0 when all look trained, 1 when one looks untrained, 2 when one cannot be loaded."""
    from ..weights.resolve import ModelError
    from ..weights.verify import verify_models

    config = _load(config_file, overrides)
    try:
        verdicts = verify_models(config.video_model, config.video_weights, config.text_model, models_dir)
    except ModelError as exc:
        click.echo(f"videobert: error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    for v in verdicts:
        if as_json:
            click.echo(json.dumps({"role": v.role, "name": v.name, "trained": v.trained, "summary": v.summary,
                                   "details": v.details}))
        else:
            click.echo(f"{v.role:<6} {'OK       ' if v.trained else 'UNTRAINED'} {v.name}\n       {v.summary}")
            for detail in v.details[:1]:
                click.echo(f"       {detail}")
    sys.exit(EXIT_OK if all(v.trained for v in verdicts) else EXIT_FAILED)


from .learn import evaluate, fuse, train  # noqa: E402  (registered last: they import the library lazily)

main.add_command(train)
main.add_command(evaluate)
main.add_command(fuse)
