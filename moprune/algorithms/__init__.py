"""pymoo algorithms for pruning problems, and the registry ``--algorithm`` names.

:data:`ALGORITHMS` maps a name to ``factory(problem, pop_size) -> pymoo Algorithm``; every
entry runs from the command line on the mask and ratio encodings (``moprune search
--algorithm NAME``) through :class:`moprune.methods.pymoo.PymooMethod`. A factory builds its
algorithm with the problem's own operators (``problem.operators()``), so bits stay bits and
ratios stay in range. A problem file can register more (``ALGORITHMS.register("name",
factory)``).
"""

from __future__ import annotations

from collections.abc import Callable

from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.algorithms.moo.sms import SMSEMOA
from pymoo.algorithms.moo.spea2 import SPEA2
from pymoo.core.algorithm import Algorithm

from moprune.algorithms.coevolution import CoevolutionConfig, CoevolutionRound
from moprune.algorithms.deeppruninges import DeepPruningES, DeepPruningESConfig
from moprune.algorithms.evofc import EvoFCConfig, evofc_nsga2
from moprune.algorithms.presets import MaskNSGA2Config, mask_nsga2, ratio_nsga2
from moprune.core.registry import Registry
from moprune.errors import ConfigError
from moprune.problems.base import PruningProblem
from moprune.problems.criterion_ratio import CriterionRatioProblem
from moprune.problems.mask import FilterMaskProblem

AlgorithmFactory = Callable[[PruningProblem, int], Algorithm]
ALGORITHMS: Registry[AlgorithmFactory] = Registry("algorithm")


def _pop(pop_size: int) -> int:
    if pop_size < 2:
        raise ConfigError(f"pop_size must be >= 2; got {pop_size}")
    return pop_size


def _nsga2(problem: PruningProblem, pop_size: int) -> Algorithm:
    """NSGA-II with the problem's operators (for filter masks: :func:`mask_nsga2`)."""
    return NSGA2(pop_size=_pop(pop_size), **problem.operators())


def _smsemoa(problem: PruningProblem, pop_size: int) -> Algorithm:
    """SMS-EMOA (hypervolume-based survival) with the problem's operators."""
    return SMSEMOA(pop_size=_pop(pop_size), **problem.operators())


def _spea2(problem: PruningProblem, pop_size: int) -> Algorithm:
    """SPEA2 (strength Pareto archive) with the problem's operators."""
    return SPEA2(pop_size=_pop(pop_size), **problem.operators())


def _agemoea(problem: PruningProblem, pop_size: int) -> Algorithm:
    """AGE-MOEA (adaptive geometry estimation) with the problem's operators; needs numba."""
    _need_numba("agemoea")
    from pymoo.algorithms.moo.age import AGEMOEA

    return AGEMOEA(pop_size=_pop(pop_size), **problem.operators())


def _agemoea2(problem: PruningProblem, pop_size: int) -> Algorithm:
    """AGE-MOEA2 with the problem's operators; needs numba."""
    _need_numba("agemoea2")
    from pymoo.algorithms.moo.age2 import AGEMOEA2

    return AGEMOEA2(pop_size=_pop(pop_size), **problem.operators())


def _need_numba(name: str) -> None:
    try:
        import numba  # noqa: F401
    except ImportError:
        raise ConfigError(f"algorithm {name!r} (pymoo's AGE-MOEA) needs numba; install it with "
                          "pip install 'moprune[algorithms]' (or pip install numba)") from None


def _ccep_round(problem: PruningProblem, pop_size: int) -> Algorithm:
    """One CCEP coevolution round, without fine-tuning.

    ``moprune search --algorithm ccep`` runs the full method (rounds, ``moprune.methods.ccep``).
    """
    if not isinstance(problem, FilterMaskProblem):
        raise TypeError(f"CCEP needs a filter-mask problem; got {type(problem).__name__}")
    return CoevolutionRound(CoevolutionConfig(pop_size=pop_size))


def _deeppruninges(problem: PruningProblem, pop_size: int) -> Algorithm:
    """DeepPruningES with the published settings except ``pop_size`` (published: 30)."""
    if not isinstance(problem, FilterMaskProblem):
        raise TypeError(f"DeepPruningES needs a filter-mask problem; got "
                        f"{type(problem).__name__}")
    return DeepPruningES(DeepPruningESConfig(pop_size=pop_size))


def _evofc(problem: PruningProblem, pop_size: int) -> Algorithm:
    """EvoFC's NSGA-II (published: population 10, 10 offspring) on a criterion-ratio problem."""
    if not isinstance(problem, CriterionRatioProblem):
        raise TypeError(f"EvoFC needs a criterion-ratio problem (moprune.methods.evofc."
                        f"evofc_setup); got {type(problem).__name__}")
    return evofc_nsga2(problem, EvoFCConfig(pop_size=pop_size, n_offsprings=pop_size))


ALGORITHMS.register("nsga2", _nsga2)
ALGORITHMS.register("smsemoa", _smsemoa)
ALGORITHMS.register("spea2", _spea2)
ALGORITHMS.register("agemoea", _agemoea)
ALGORITHMS.register("agemoea2", _agemoea2)
ALGORITHMS.register("ccep", _ccep_round)
ALGORITHMS.register("deeppruninges", _deeppruninges)
ALGORITHMS.register("evofc", _evofc)

__all__ = ["ALGORITHMS", "AlgorithmFactory", "MaskNSGA2Config", "mask_nsga2", "ratio_nsga2"]
