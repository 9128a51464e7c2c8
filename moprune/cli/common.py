"""Helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from moprune.core.execution import Execution
from moprune.errors import MopruneError
from moprune.tasks.task import TaskOptions, load_problem_module


def execution_of(args: argparse.Namespace) -> Execution:
    """The ``--precision`` / ``--compile`` settings of a command."""
    return Execution(precision=args.precision, compile=args.compile)


def task_options(weights: Path | None, pretrained: bool = True) -> TaskOptions:
    """What a command passes to a problem file's ``build_task``."""
    return TaskOptions(weights=weights.resolve() if weights else None, pretrained=pretrained)


def preload_problem_file(argv: Sequence[str]) -> None:
    """Import the problem file of ``moprune search PROBLEM ...`` before parsing the options.

    A problem file may register methods, pymoo algorithms or objectives; importing it first
    lets ``--algorithm NAME`` and the method's options name them. A file that fails to
    import is left for the command to report.
    """
    argv = list(argv)
    while argv and argv[0].startswith("-"):  # global options (--debug)
        argv = argv[1:]
    if len(argv) < 2 or argv[0] != "search" or argv[1].startswith("-"):
        return
    path = Path(argv[1])
    if path.suffix == ".py" and path.is_file():
        try:
            load_problem_module(path)
        except MopruneError:
            pass


__all__ = ["execution_of", "preload_problem_file", "task_options"]
