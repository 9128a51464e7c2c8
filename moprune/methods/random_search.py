"""Random search: the baseline every evolutionary search should beat at the same budget.

Each generation draws ``pop_size`` new genomes from the problem's own initial distribution
(``problem.operators()["sampling"]``: for filter masks the biased masks NSGA-II starts from,
for ratios uniform ratios), repairs them like the evolutionary presets do, and keeps the
non-dominated set of everything evaluated. Same budget as NSGA-II with the same population
and generations; no selection, no variation.

This whole method is this one file: the :class:`RandomSearch` pymoo algorithm and the
:class:`RandomSearchMethod` plugin, which reuses the shared driver (run directory,
checkpoints, resume, the front) through :class:`~moprune.methods.pymoo.PymooMethod`.
``moprune search PROBLEM --algorithm random`` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from pymoo.core.algorithm import Algorithm
from pymoo.core.population import Population
from pymoo.core.repair import NoRepair, Repair
from pymoo.core.sampling import Sampling
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from moprune.errors import ConfigError
from moprune.methods.base import MethodOptions, redefault
from moprune.methods.pymoo import PymooMethod, PymooOptions
from moprune.tasks.setup import SearchSetup


class RandomSearch(Algorithm):
    """``pop_size`` fresh samples per generation; ``opt`` is the non-dominated set so far.

    Args:
        pop_size: Samples per generation.
        sampling: The pymoo sampling operator the samples come from.
        repair: Applied to every sample (e.g. the minimum-channel repair of masks).

    """

    def __init__(self, pop_size: int, sampling: Sampling, repair: Repair | None = None) -> None:
        super().__init__()
        if pop_size < 1:
            raise ConfigError(f"random search needs pop_size >= 1; got {pop_size}")
        self.pop_size = pop_size
        self.sampling = sampling
        self.repair = repair or NoRepair()
        self.front = Population.empty()

    def _sample(self) -> Population:
        pop = self.sampling.do(self.problem, self.pop_size, random_state=self.random_state)
        return self.repair.do(self.problem, pop)

    def _initialize_infill(self) -> Population:
        return self._sample()

    def _infill(self) -> Population:
        return self._sample()

    def _initialize_advance(self, infills: Population | None = None, **kwargs) -> None:
        self._advance(infills)

    def _advance(self, infills: Population | None = None, **kwargs) -> None:
        merged = Population.merge(self.front, infills)
        cv = merged.get("CV").reshape(-1)
        rows = np.flatnonzero(cv <= 0) if np.any(cv <= 0) else np.flatnonzero(cv == cv.min())
        front = NonDominatedSorting().do(merged[rows].get("F"), only_non_dominated_front=True)
        self.front = merged[rows[front]]
        self.pop = infills

    def _set_optimum(self) -> None:
        self.opt = self.front


@dataclass(frozen=True)
class RandomSearchOptions(PymooOptions):
    """Random search's options: the samples per generation and the generations."""

    refusals: ClassVar[dict[str, str]] = {}

    pop_size: int = redefault(PymooOptions, "pop_size", 40)
    generations: int = redefault(PymooOptions, "generations", 20)


class RandomSearchMethod(PymooMethod):
    """Random sampling from the problem's initial distribution, the same budget as NSGA-II."""

    name = "random"
    summary = "random sampling from the problem's initial distribution (the baseline)"
    group = "random search (--algorithm random)"
    Options: ClassVar[type[MethodOptions]] = RandomSearchOptions

    def __init__(self) -> None:  # no pymoo registry entry to check
        pass

    def algorithm(self, setup: SearchSetup, identity: dict) -> Algorithm:
        operators = setup.problem.operators()
        return RandomSearch(identity["pop_size"], operators["sampling"],
                            operators.get("repair"))


METHOD = RandomSearchMethod()

__all__ = ["METHOD", "RandomSearch", "RandomSearchMethod", "RandomSearchOptions"]
