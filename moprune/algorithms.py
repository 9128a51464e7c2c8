"""Algorithm presets: NSGA-II for masks and ratios, a CCEP round, DeepPruningES, EvoFC."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.algorithm import Algorithm
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling
from pymoo.operators.crossover.pntx import TwoPointCrossover
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.bitflip import BitflipMutation
from pymoo.operators.mutation.pm import PM
from pymoo.operators.sampling.rnd import FloatRandomSampling

from moprune.coevolution import CoevolutionConfig, CoevolutionRound
from moprune.deeppruninges import DeepPruningES, DeepPruningESConfig
from moprune.evofc import CriterionRatioProblem, EvoFCConfig, evofc_nsga2
from moprune.problems import FilterMaskProblem, LayerRatioProblem, PruningProblem
from moprune.registry import Registry


class BiasedMaskSampling(Sampling):
    """Initial masks biased toward keeping most channels.

    Individual 0 is the unpruned mask; individual ``i`` keeps each channel with a probability
    drawn uniformly from ``keep_range``, so the first population spreads over MACs levels.

    Args:
        keep_range: (low, high) keep probabilities.

    """

    def __init__(self, keep_range: tuple[float, float] = (0.6, 1.0)) -> None:
        super().__init__()
        lo, hi = keep_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"keep_range must satisfy 0 <= low <= high <= 1; got {keep_range}")
        self.keep_range = (lo, hi)

    def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
        p = random_state.uniform(*self.keep_range, size=(n_samples, 1))
        X = random_state.random((n_samples, problem.n_var)) < p
        X[0] = True
        return X


class MinChannelsRepair(Repair):
    """Give every group back its most important channels up to the space's minimum."""

    def _do(self, problem, X, **kwargs):
        return np.array([problem.encoding.repair(x) for x in X], dtype=bool)


@dataclass(frozen=True)
class MaskNSGA2Config:
    """NSGA-II settings for binary masks.

    Attributes:
        pop_size: Population size.
        keep_range: Keep-probability range of the initial masks.
        bit_flip: Per-bit flip probability of the mutation (None = 1 / n_var, at least 0.002).
        crossover_prob: Probability of two-point crossover per mating.

    """

    pop_size: int = 40
    keep_range: tuple[float, float] = (0.6, 1.0)
    bit_flip: float | None = None
    crossover_prob: float = 0.9


def mask_nsga2(problem: FilterMaskProblem, config: MaskNSGA2Config | None = None) -> NSGA2:
    """NSGA-II preset for binary filter masks.

    Biased initial masks, bit-flip mutation, two-point crossover, duplicate elimination and
    the minimum-channel repair.
    """
    config = config or MaskNSGA2Config()
    if config.pop_size < 2:
        raise ValueError(f"pop_size must be >= 2; got {config.pop_size}")
    flip = config.bit_flip if config.bit_flip is not None else max(1.0 / problem.n_var, 0.002)
    return NSGA2(
        pop_size=config.pop_size,
        sampling=BiasedMaskSampling(config.keep_range),
        crossover=TwoPointCrossover(prob=config.crossover_prob),
        mutation=BitflipMutation(prob=1.0, prob_var=flip),
        repair=MinChannelsRepair(),
        eliminate_duplicates=True,
    )


def ratio_nsga2(problem: LayerRatioProblem, pop_size: int = 40) -> NSGA2:
    """NSGA-II preset for per-group ratios (SBX, polynomial mutation, duplicate elimination)."""
    if pop_size < 2:
        raise ValueError(f"pop_size must be >= 2; got {pop_size}")
    return NSGA2(pop_size=pop_size, sampling=FloatRandomSampling(),
                 crossover=SBX(prob=0.9, eta=15), mutation=PM(eta=20),
                 eliminate_duplicates=True)


AlgorithmFactory = Callable[[PruningProblem, int], Algorithm]
ALGORITHMS: Registry[AlgorithmFactory] = Registry("algorithm")


def _nsga2(problem: PruningProblem, pop_size: int) -> Algorithm:
    if isinstance(problem, CriterionRatioProblem):
        return evofc_nsga2(problem, EvoFCConfig(pop_size=pop_size, n_offsprings=pop_size))
    if isinstance(problem, FilterMaskProblem):
        return mask_nsga2(problem, MaskNSGA2Config(pop_size=pop_size))
    if isinstance(problem, LayerRatioProblem):
        return ratio_nsga2(problem, pop_size)
    raise TypeError(f"no NSGA-II preset for {type(problem).__name__}")


def _ccep_round(problem: PruningProblem, pop_size: int) -> Algorithm:
    """One CCEP coevolution round, without fine-tuning.

    ``moprune search --algorithm ccep`` runs the full method (rounds, ``moprune.ccep``).
    """
    if not isinstance(problem, FilterMaskProblem):
        raise TypeError(f"CCEP needs a filter-mask problem; got {type(problem).__name__}")
    return CoevolutionRound(CoevolutionConfig(pop_size=pop_size))


ALGORITHMS.register("nsga2", _nsga2)
ALGORITHMS.register("ccep", _ccep_round)


def _deeppruninges(problem: PruningProblem, pop_size: int) -> Algorithm:
    """DeepPruningES with the published settings except ``pop_size`` (published: 30)."""
    if not isinstance(problem, FilterMaskProblem):
        raise TypeError(f"DeepPruningES needs a filter-mask problem; got "
                        f"{type(problem).__name__}")
    return DeepPruningES(DeepPruningESConfig(pop_size=pop_size))


ALGORITHMS.register("deeppruninges", _deeppruninges)


def _evofc(problem: PruningProblem, pop_size: int) -> Algorithm:
    """EvoFC's NSGA-II (published: population 10, 10 offspring) on a criterion-ratio problem."""
    if not isinstance(problem, CriterionRatioProblem):
        raise TypeError(f"EvoFC needs a criterion-ratio problem (make_problem(..., evofc=...)); "
                        f"got {type(problem).__name__}")
    return evofc_nsga2(problem, EvoFCConfig(pop_size=pop_size, n_offsprings=pop_size))


ALGORITHMS.register("evofc", _evofc)
