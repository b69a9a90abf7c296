"""How every command ends on an error, and warns: one line on stderr, `videobert: error: ...`.

Scripts read the exit code and the one line; the one line is what a person reads first. Every
command goes through `fail`, so the prefix, the one-line form (a torch error can span many
lines) and the exit are the same everywhere. `extract` also promises a JSON summary on stdout
even when it fails, so it asks for one.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Iterator, NoReturn

import click

from ..exit_codes import EXIT_FAILED, EXIT_LOCKED, EXIT_USAGE


def fail(code: int, message: object, *, summary: bool = False) -> NoReturn:
    """Print the error as one line on stderr (and, with summary, {"error", "exit_code"} on stdout); exit code."""
    click.echo(f"videobert: error: {' '.join(str(message).split())}", err=True)
    if summary:
        click.echo(json.dumps({"error": str(message), "exit_code": code}))
    sys.exit(code)


def warn(message: str) -> None:
    click.echo(f"videobert: warning: {message}", err=True)


@contextmanager
def stored_feature_errors() -> Iterator[None]:
    """How the commands on stored features (train, evaluate, fuse, vocab, tokenize, export-sequences) end
    on an error: input they refuse is a usage error (2), a folder another run holds is 75, a failed read,
    write or computation is 1; always one line."""
    from ..learn.corpus import TrainingError
    from ..store.outdir import LockHeld

    try:
        yield
    except TrainingError as exc:
        fail(EXIT_USAGE, exc)
    except LockHeld as exc:  # a RuntimeError: before the catch-all below
        fail(EXIT_LOCKED, exc)
    except (OSError, RuntimeError) as exc:
        fail(EXIT_FAILED, exc)
