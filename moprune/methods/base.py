"""The method contract: what one search method owns, and the registry the command line reads.

A :class:`Method` is one module that knows everything about one search method: its typed
options (a :class:`MethodOptions` dataclass whose fields are the method's command-line
flags), what enters the run identity, how it builds the scorer, problem and algorithm from a
task, how it runs (the shared per-generation driver, or its own), the extra files it writes,
how it finalises the front, and how it rebuilds a candidate's network for export. The engine,
the run directory and the command line name no method: they call these hooks.

Built-in methods are the modules of this package that define ``METHOD``; they are found by
listing the package, so a new method is one new file. A problem file can register more with
``METHODS.register(...)``, and any pymoo algorithm registered in
:data:`moprune.algorithms.ALGORITHMS` runs as a method through
:class:`~moprune.methods.pymoo.PymooMethod`.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from moprune.core.surgery import prune_model
from moprune.errors import ConfigError
from moprune.methods.driver import trade_offs, write_plots
from moprune.training.init import random_init

if TYPE_CHECKING:
    from torch import nn

    from moprune.core.execution import Execution
    from moprune.data.datasets import DataBundle
    from moprune.fronts.front import PickRule
    from moprune.runs.rundir import RunDir
    from moprune.tasks.setup import SearchSetup
    from moprune.tasks.task import PruningTask


@dataclass(frozen=True)
class Flag:
    """How an option field appears on the command line.

    Attributes:
        help: Help text, without the default (the parser appends each method's default).
        type: Parser of the value (``int``, a range check, ...); None for switches.
        choices: Allowed values.
        action: ``"value"`` (takes a value), ``"switch"`` (``--x``) or ``"toggle"``
            (``--x`` / ``--no-x``).
        metavar: Name of the value in the help.
        common: Shown among the main options (several methods share it), not in the
            method's own group.
        elsewhere: Why the flag does not apply when given to a method without it;
            ``{method}`` is replaced by that method's name.
        none: What a ``None`` default means, for the help (e.g. "the problem file's").

    """

    help: str
    type: Callable[[str], Any] | None = None
    choices: tuple[Any, ...] | None = None
    action: str = "value"
    metavar: str | None = None
    common: bool = False
    elsewhere: str | None = None
    none: str = "none"


def option(default: Any, help: str, *, type: Callable[[str], Any] | None = None,
           choices: tuple[Any, ...] | None = None, action: str = "value",
           metavar: str | None = None, common: bool = False,
           elsewhere: str | None = None, none: str = "none") -> Any:
    """A :class:`MethodOptions` field with its command-line flag."""
    flag = Flag(help, type, choices, action, metavar, common, elsewhere, none)
    return field(default=default, metadata={"flag": flag})


def redefault(options: type[MethodOptions], name: str, default: Any) -> Any:
    """The field ``name`` of ``options`` with another default (same flag), for a subclass."""
    return field(default=default, metadata=options.__dataclass_fields__[name].metadata)


def flag_name(name: str) -> str:
    """``pop_size`` -> ``--pop-size``."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class MethodOptions:
    """Base of a method's options: a frozen dataclass, validated in ``__post_init__``.

    Class attribute ``refusals`` maps a flag of another method to why it does not apply to
    this one (shown when a user gives it).
    """

    refusals: ClassVar[dict[str, str]] = {}

    def pretrained(self) -> bool:
        """Whether the run starts from the problem file's weights (else it re-initialises)."""
        return True

    @classmethod
    def flags(cls) -> dict[str, Flag]:
        """``{field name: Flag}`` of the options."""
        return {f.name: f.metadata["flag"] for f in dataclasses.fields(cls)
                if "flag" in f.metadata}

    def to_dict(self) -> dict:
        """The options as plain values (tuples as lists)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


@dataclass(frozen=True)
class BuildEnv:
    """Where and how a setup is built (the parts of a run that are not its identity).

    Attributes:
        device: ``"cpu"`` or ``"cuda[:N]"``.
        mode: Evaluation mode (``"auto"``, ``"gate"``, ``"slice"``).
        progress: Show progress bars.
        execution: Precision, memory format and compilation.

    """

    device: str
    mode: str
    progress: bool
    execution: Execution


class Method:
    """One search method. Subclass it, set the class attributes, override what differs.

    Class attributes:
        name: The ``--algorithm`` name.
        summary: One line for ``moprune search --help``.
        group: Title of the method's option group in the help.
        Options: Its :class:`MethodOptions` dataclass.
        extra_files: Files (and folders) it writes into the run directory besides the
            common ones.

    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    group: ClassVar[str] = ""
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    extra_files: ClassVar[tuple[str, ...]] = ()

    # ---- configuration --------------------------------------------------------------
    def identity(self, options: MethodOptions, task: PruningTask, common: dict) -> dict:
        """The method's entries of the run identity, checked against the task.

        ``common`` holds the run's shared settings (``seed``, ``max_macs_ratio``,
        ``max_accuracy_drop``, ...). The result must contain ``pop_size``, ``generations``,
        ``objectives``, ``max_macs_ratio``, ``residual``, ``criterion`` and ``partial``.
        """
        raise NotImplementedError

    def pretrained(self, identity: dict) -> bool:
        """Whether the run starts from the problem file's weights (else it re-initialises)."""
        return True

    def needs_training_data(self, identity: dict, task: PruningTask, searching: bool) -> bool:
        """Whether the run trains or ranks channels with training images.

        ``searching``: for the search itself (False: to rebuild a finished run's setup).
        """
        raise NotImplementedError

    # ---- building and running ---------------------------------------------------------
    def build(self, task: PruningTask, data: DataBundle, identity: dict,
              env: BuildEnv) -> SearchSetup:
        """Space, scorer and problem of a run, from its identity."""
        raise NotImplementedError

    def describe(self, setup: SearchSetup, identity: dict) -> str:
        """One line on how the search scores its candidates (printed before it starts)."""
        return f"evaluation mode {setup.evaluator.mode}"

    def check_cluster(self, identity: dict) -> None:
        """Raise a ``ConfigError`` if the search cannot spread its scoring over a cluster."""

    def run(self, setup: SearchSetup, run: RunDir, identity: dict, resume: bool,
            progress: bool, options: MethodOptions | None = None) -> list[dict]:
        """Run (or resume) the search into ``run``; returns the final front.

        ``options``: the command's options, for settings outside the identity (speed only).
        """
        raise NotImplementedError

    def replayable(self, identity: dict) -> bool:
        """Whether a run can be rebuilt by replaying it from its recorded scores.

        True for searches whose scores depend only on the plan (``moprune repair``); False
        when scoring has state of its own (weight inheritance, CCEP's fine-tuned rounds).
        """
        return False

    def replay(self, setup: SearchSetup, run: RunDir, identity: dict, until: int,
               progress: bool) -> int:
        """Rerun the search from its start up to generation ``until``; returns the generations."""
        raise ConfigError(f"{self.name} runs cannot be replayed")

    def rebuild(self, setup: SearchSetup, run: RunDir) -> None:
        """Bring a finished run's rebuilt setup to its end-of-search state (e.g. a supernet)."""

    def report(self, run: RunDir) -> str:
        """The summary printed after the search."""
        raise NotImplementedError

    # ---- results ----------------------------------------------------------------------
    def knee(self, identity: dict) -> tuple[str, tuple[float, ...] | None]:
        """The run's knee definition ``(method, weights)``."""
        return "distance", None

    def plots(self, run: RunDir, out: Path) -> list[Path]:
        """Plots of the method's own files (besides the front and hypervolume)."""
        return []

    def candidate_model(self, setup: SearchSetup, run: RunDir, record: dict) -> nn.Module | None:
        """The network ``record`` was scored as, when not the full network pruned to its plan."""
        mask = setup.problem.decode_masks(setup.problem.genome_from_key(record["genome"])[None])[0]
        return setup.evaluator.candidate_model(mask)

    def write_plots(self, run: RunDir, ids: list[int] | None = None) -> list[Path]:
        """(Re)draw all plots of a finished run (``moprune plot``)."""
        return write_plots(run, self.knee(run.config()["identity"]), self.plots, ids)

    def trade_offs(self, run: RunDir) -> dict[str, dict]:
        """The heavy, knee and light members of a finished run, by the run's knee."""
        return trade_offs(run, self.knee(run.config()["identity"]))

    def start_model(self, setup: SearchSetup, run: RunDir, record: dict, start: str,
                    seed: int) -> nn.Module | None:
        """The network an export starts from: as scored (``"scored"``) or re-initialised.

        ``"scored"``: :meth:`candidate_model`. ``"scratch"``: the full network pruned to the
        plan and re-initialised (:func:`~moprune.training.init.random_init`, seeded by
        ``seed``); it is meant to be trained.
        """
        if start == "scored":
            return self.candidate_model(setup, run, record)
        if start != "scratch":
            raise ConfigError(f"start must be 'scored' or 'scratch'; got {start!r}")
        genome = setup.problem.genome_from_key(record["genome"])
        plan = setup.problem.decode(genome)
        return random_init(prune_model(setup.task.model, setup.space, plan), seed).eval()

    def check_pick(self, identity: dict, rule: PickRule) -> None:
        """Raise a ``ConfigError`` if ``rule`` makes no sense for this run."""

    def notes(self, identity: dict, baseline: dict) -> list[str]:
        """Notes under the summary table (how the accuracies were measured)."""
        return []


# ---------------------------------------------------------------------- command line


def options_from_args(method: Method, args: argparse.Namespace,
                      methods: list[Method]) -> MethodOptions:
    """The method's options from parsed arguments; a flag of another method is refused.

    Flags are parsed with ``None`` defaults, so a value given on the command line is one
    that is not ``None``; the method's dataclass supplies its own defaults.
    """
    own = method.Options.flags()
    for other in methods:
        for name, flag in other.Options.flags().items():
            if name in own or getattr(args, name, None) is None:
                continue
            cli = flag_name(name)
            why = method.Options.refusals.get(cli)
            if why is None and flag.elsewhere is not None:
                why = flag.elsewhere.format(method=method.name)
            if why is None:
                owners = [m.name for m in methods if name in m.Options.flags()]
                why = (f"{cli} is an option of --algorithm {' and '.join(owners)}, not of "
                       f"{method.name}")
            raise ConfigError(why)
    given = {name: getattr(args, name) for name in own if getattr(args, name, None) is not None}
    return method.Options(**given)


def add_method_arguments(parser: argparse.ArgumentParser, methods: list[Method]) -> None:
    """Every method's flags: shared ones in the main group, the rest in one group each.

    A flag several methods share is added once; its help lists each method's default.
    """
    seen: set[str] = set()
    for method in methods:
        group = None
        for name, flag in method.Options.flags().items():
            if name in seen:
                continue
            seen.add(name)
            owners = [m for m in methods if name in m.Options.flags()]
            defaults = [(m.name, _show(_default(m, name), flag.none)) for m in owners]
            help_text = flag.help + _defaults_help(defaults)
            target: argparse._ActionsContainer = parser
            if not flag.common:
                if group is None:
                    group = parser.add_argument_group(method.group)
                target = group
            kwargs: dict[str, Any] = {"default": None, "help": help_text, "dest": name}
            if flag.action == "switch":
                kwargs["action"] = "store_const"
                kwargs["const"] = True
            elif flag.action == "toggle":
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs.update({"type": flag.type, "choices": flag.choices,
                               "metavar": flag.metavar})
            target.add_argument(flag_name(name), **kwargs)


def _default(method: Method, name: str) -> Any:
    f = next(f for f in dataclasses.fields(method.Options) if f.name == name)
    return f.default


def _show(value: Any, none: str) -> str:
    if value is None:
        return none
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _defaults_help(defaults: list[tuple[str, str]]) -> str:
    """The default(s) for a flag's help: one value, or each method's.

    ``(default: X)``; ``(default: X for a and b, Y for c)``; ``otherwise Z`` stands for the
    value most methods share.
    """
    by_value: dict[str, list[str]] = {}
    for method, value in defaults:
        by_value.setdefault(value, []).append(method)
    if len(by_value) == 1:
        return f" (default: {defaults[0][1]})".replace("%", "%%")
    common = max(by_value, key=lambda v: len(by_value[v]))
    otherwise = len(by_value[common]) > len(defaults) / 2
    parts = [f"{v} for {' and '.join(ms)}" for v, ms in by_value.items()
             if not (otherwise and v == common)]
    if otherwise:
        parts.append(f"otherwise {common}")
    return (" (default: " + ", ".join(parts) + ")").replace("%", "%%")


__all__ = ["BuildEnv", "Flag", "Method", "MethodOptions", "add_method_arguments",
           "flag_name", "option", "options_from_args", "redefault"]
