"""`videobert models list|fetch|verify`: the models a config uses, before an extract needs them.

`weights.resolve` finds and fetches the files, `weights.verify` tells trained from random weights;
this layer loads the config the same way `extract` does and prints one row per model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..config import ConfigError, load_config
from ..exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from .messages import fail


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


def _asr(config) -> str | None:
    """The speech recognition model a config uses, if any."""
    return config.asr if config.asr and "asr" in config.sources else None


@click.group()
def models() -> None:
    """List, fetch and verify the models a config uses."""


@models.command("list")
@_config_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines (for scripts).")
def models_list(config_file: Path | None, overrides: tuple[str, ...], models_dir: Path | None, as_json: bool) -> None:
    """Where each model of the config resolves to, with size and sha256 (nothing is downloaded).

    Exit 0 when every model resolves, 2 when one does not."""
    from ..weights.resolve import list_models

    config = _load(config_file, overrides)
    rows = list_models(config.video_model, config.video_weights, config.text_model, models_dir, _asr(config))
    for row in rows:
        if as_json:
            click.echo(json.dumps(row))
        elif row.get("error"):
            click.echo(f"{row['role']:<6} {row['name']} [{row['weights']}]\n       NOT FOUND: {row['error']}")
        else:
            size = f"{row['size_bytes'] / 1e6:.1f} MB" if row["size_bytes"] else "-"
            click.echo(f"{row['role']:<6} {row['name']} [{row['weights']}]\n       {row['source']}\n"
                       f"       {size}, sha256 {row['sha256']}")
    sys.exit(EXIT_USAGE if any("error" in row for row in rows) else EXIT_OK)


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
        for line in fetch_models(config.video_model, config.video_weights, config.text_model, to or models_dir,
                                 _asr(config)):
            click.echo(line)
    except ModelError as exc:
        fail(EXIT_USAGE, exc)


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
        fail(EXIT_USAGE, exc)
    for v in verdicts:
        if as_json:
            click.echo(json.dumps({"role": v.role, "name": v.name, "trained": v.trained, "summary": v.summary,
                                   "details": v.details}))
        else:
            click.echo(f"{v.role:<6} {'OK       ' if v.trained else 'UNTRAINED'} {v.name}\n       {v.summary}")
            for detail in v.details[:1]:
                click.echo(f"       {detail}")
    sys.exit(EXIT_OK if all(v.trained for v in verdicts) else EXIT_FAILED)
