"""The ``moprune`` command line."""

from moprune.cli.main import main

__all__ = ["main"]
