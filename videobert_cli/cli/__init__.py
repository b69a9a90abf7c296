"""The command line: click commands that parse options, call the library and print results."""

from .main import main, run

__all__ = ["main", "run"]
