"""The `videobert` command group: the version option and every command, registered in one place.

Each family of commands lives in its own module (extract, inspect, models, learn, vocab) and imports the
library lazily inside its commands, so `videobert --help` stays quick.
"""

from __future__ import annotations

import click

from .. import __version__
from .extract import extract
from .inspect import info, validate
from .learn import evaluate, fuse, train
from .models import models
from .vocab import export_sequences, tokenize, vocab


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="videobert")
def main() -> None:
    """Per-clip multimodal (video + transcript) embeddings, written to HDF5 shards."""


main.add_command(extract)
main.add_command(info)
main.add_command(validate)
main.add_command(models)
main.add_command(train)
main.add_command(evaluate)
main.add_command(fuse)
main.add_command(vocab)
main.add_command(tokenize)
main.add_command(export_sequences)

# Set by a command whose work is all on disk when it returns (extract): the program may then end
# without unloading its modules (torch's take ~1 s of an `extract`'s wall time).
QUICK_EXIT = {"ok": False}


def run() -> None:
    """The `videobert` program (console script and `python -m videobert_cli`): `main`, then, after an
    extract, an immediate exit once stdout and stderr are flushed."""
    import os
    import sys

    try:
        main(prog_name="videobert")
    except SystemExit as exc:
        if not QUICK_EXIT["ok"]:
            raise
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
