"""Objectives: one registry that problems, fronts, picks, plots and tables all read.

An :class:`Objective` is minimised. It has a vectorised value over a population
(:meth:`Objective.compute`, from the population's :class:`Metrics`: accuracy, loss, costs and
keep-masks), a value read back from a candidate record (:meth:`Objective.read`), a label and
a unit for plots and tables. Built-ins: ``error`` (1 - hold-out accuracy), ``macs_ratio`` and
``params_ratio`` (MACs or parameters / the unpruned network's). A user-defined objective is
one :func:`register` call (in a problem file, for instance); its values are stored in every
candidate record under its name, so ``plot`` and ``pick`` read them like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from moprune.core.registry import Registry
from moprune.errors import ConfigError


@dataclass(frozen=True)
class Metrics:
    """What a population's objective values are computed from; one entry per candidate.

    Attributes:
        accuracy: Hold-out accuracy, (n,).
        loss: Hold-out cross-entropy, (n,).
        macs: MACs per image, (n,).
        params: Parameters, (n,).
        macs_ratio: MACs / the unpruned network's, (n,).
        params_ratio: Parameters / the unpruned network's, (n,).
        masks: Keep-masks over the space's channels, (n, n_channels).
        baseline: The unpruned network's record (``val_accuracy``, ``macs``, ``params``, ...).

    """

    accuracy: np.ndarray
    loss: np.ndarray
    macs: np.ndarray
    params: np.ndarray
    macs_ratio: np.ndarray
    params_ratio: np.ndarray
    masks: np.ndarray
    baseline: dict


@dataclass(frozen=True)
class Objective:
    """A minimised objective.

    Attributes:
        name: Registry name (also the record field of a stored objective).
        label: Axis and column label, e.g. ``"MACs / unpruned"``.
        unit: What one unit of the value is.
        compute: ``Metrics -> (n,)`` values of a population, vectorised.
        read: ``record -> value``; ``None`` reads ``record[name]`` (stored objectives).
        stored: The problem writes the value into every candidate record under ``name``
            (needed unless ``read`` derives it from fields every record has).

    """

    name: str
    label: str
    unit: str
    compute: Callable[[Metrics], np.ndarray]
    read: Callable[[dict], float] | None = None
    stored: bool = True

    def value(self, record: dict) -> float:
        """The objective's value of one candidate record."""
        if self.read is not None:
            return float(self.read(record))
        return float(record[self.name])


OBJECTIVES: Registry[Objective] = Registry("objective")


def register(objective: Objective) -> Objective:
    """Register a user-defined objective (strict: a taken name raises)."""
    if objective.read is None and not objective.stored:
        raise ConfigError(f"objective {objective.name!r} is neither stored in the records nor "
                         "readable from them; set stored=True or give read=")
    return OBJECTIVES.register(objective.name, objective)


OBJECTIVES.register("error", Objective(
    "error", "hold-out error", "fraction of hold-out images misclassified",
    compute=lambda m: 1.0 - m.accuracy, read=lambda r: 1.0 - float(r["val_accuracy"]),
    stored=False))
OBJECTIVES.register("macs_ratio", Objective(
    "macs_ratio", "MACs / unpruned", "fraction of the unpruned network's MACs",
    compute=lambda m: m.macs_ratio, read=lambda r: float(r["macs_ratio"]), stored=False))
OBJECTIVES.register("params_ratio", Objective(
    "params_ratio", "parameters / unpruned", "fraction of the unpruned network's parameters",
    compute=lambda m: m.params_ratio, read=lambda r: float(r["params_ratio"]), stored=False))


def check_objectives(objectives: Sequence[str]) -> tuple[str, ...]:
    """Distinct registered names, at least one; raises listing the valid names otherwise."""
    objectives = tuple(objectives)
    bad = [o for o in objectives if o not in OBJECTIVES]
    if bad or not objectives or len(set(objectives)) != len(objectives):
        raise ConfigError(f"objectives must be distinct names from {tuple(OBJECTIVES.names())}; "
                          f"got {objectives}")
    return objectives


__all__ = ["OBJECTIVES", "Metrics", "Objective", "check_objectives", "register"]
