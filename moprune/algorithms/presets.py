"""NSGA-II presets for filter masks and per-group ratios, with their settings."""

from __future__ import annotations

from dataclasses import dataclass

from pymoo.algorithms.moo.nsga2 import NSGA2

from moprune.errors import ConfigError
from moprune.problems.mask import FilterMaskProblem
from moprune.problems.ratio import LayerRatioProblem


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
    the minimum-channel repair (:meth:`FilterMaskProblem.operators`).
    """
    config = config or MaskNSGA2Config()
    if config.pop_size < 2:
        raise ConfigError(f"pop_size must be >= 2; got {config.pop_size}")
    return NSGA2(pop_size=config.pop_size,
                 **problem.operators(config.keep_range, config.bit_flip, config.crossover_prob))


def ratio_nsga2(problem: LayerRatioProblem, pop_size: int = 40) -> NSGA2:
    """NSGA-II preset for per-group ratios (SBX, polynomial mutation, duplicate elimination)."""
    if pop_size < 2:
        raise ConfigError(f"pop_size must be >= 2; got {pop_size}")
    return NSGA2(pop_size=pop_size, **problem.operators())


__all__ = ["MaskNSGA2Config", "mask_nsga2", "ratio_nsga2"]
