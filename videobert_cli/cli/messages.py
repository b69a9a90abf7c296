"""How every command ends on an error, and warns: one line on stderr, `videobert: error: ...`.

Scripts read the exit code and the one line; the one line is what a person reads first. Every
command goes through `fail`, so the prefix, the one-line form (a torch error can span many
lines) and the exit are the same everywhere. `extract` also promises a JSON summary on stdout
even when it fails, so it asks for one.
"""

from __future__ import annotations

import json
import sys
from typing import NoReturn

import click


def fail(code: int, message: object, *, summary: bool = False) -> NoReturn:
    """Print the error as one line on stderr (and, with summary, {"error", "exit_code"} on stdout); exit code."""
    click.echo(f"videobert: error: {' '.join(str(message).split())}", err=True)
    if summary:
        click.echo(json.dumps({"error": str(message), "exit_code": code}))
    sys.exit(code)


def warn(message: str) -> None:
    click.echo(f"videobert: warning: {message}", err=True)
