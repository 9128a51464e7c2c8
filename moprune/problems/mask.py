"""Filter masks: one bit per channel of every prunable group, with its pymoo operators."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling
from pymoo.operators.crossover.pntx import TwoPointCrossover
from pymoo.operators.mutation.bitflip import BitflipMutation

from moprune.core.encoding import MaskEncoding
from moprune.criteria import CRITERIA, ScoreContext, rank_channels
from moprune.errors import ConfigError, GenomeError
from moprune.evaluation.scorer import Scorer
from moprune.problems.base import PruningProblem


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
            raise ConfigError(f"keep_range must satisfy 0 <= low <= high <= 1; got {keep_range}")
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


class FilterMaskProblem(PruningProblem):
    """One bit per channel of every prunable group (1 = keep).

    Args:
        evaluator: Accuracy of plans on the hold-out split.
        objectives: Names from ``moprune.core.objectives.OBJECTIVES``; default error and MACs
            ratio.
        max_macs_ratio: Optional constraint on MACs / baseline MACs.
        max_accuracy_drop: Optional constraint on the accuracy drop (fraction).
        repair_criterion: Criterion that decides which channels a group gets back when a
            genome keeps fewer than the space's ``min_channels``.
        score_context: Batch of training images and seed for data or random criteria.

    """

    def __init__(self, evaluator: Scorer, objectives: Sequence[str] = ("error", "macs_ratio"),
                 max_macs_ratio: float | None = None, max_accuracy_drop: float | None = None,
                 repair_criterion: str = "l1", score_context: ScoreContext | None = None) -> None:
        space = evaluator.space
        scores = CRITERIA.get(repair_criterion).score(evaluator.model, space, score_context)
        ranking = rank_channels(space, scores)
        encoding = MaskEncoding(space, ranking, space.policy.min_channels)
        super().__init__(evaluator, encoding, objectives, max_macs_ratio, max_accuracy_drop,
                         xl=0, xu=1, vtype=bool)

    def check_genomes(self, X: np.ndarray) -> np.ndarray:
        """Refuse genomes that are not 0/1 (float genomes of real-valued operators)."""
        X = np.atleast_2d(np.asarray(X))
        if X.dtype != bool and not np.isin(X, (0, 1)).all():
            raise GenomeError(
                "FilterMaskProblem genomes are bits (0/1, one per channel), but the algorithm "
                f"produced values such as {X[~np.isin(X, (0, 1))][:3].tolist()}: it uses "
                "real-valued operators. Give it moprune's mask operators, e.g. "
                "NSGA2(pop_size=..., **problem.operators()), or use mask_nsga2(problem).")
        return X

    def operators(self, keep_range: tuple[float, float] = (0.6, 1.0),
                  bit_flip: float | None = None, crossover_prob: float = 0.9) -> dict[str, Any]:
        """The pymoo operators for bit masks, as keyword arguments of a genetic algorithm.

        Biased initial masks, two-point crossover, bit-flip mutation (per bit ``bit_flip``,
        default ``1 / n_var`` but at least 0.002), the minimum-channel repair and duplicate
        elimination.
        """
        flip = bit_flip if bit_flip is not None else max(1.0 / self.n_var, 0.002)
        return {"sampling": BiasedMaskSampling(keep_range),
                "crossover": TwoPointCrossover(prob=crossover_prob),
                "mutation": BitflipMutation(prob=1.0, prob_var=flip),
                "repair": MinChannelsRepair(), "eliminate_duplicates": True}

    def genome_key(self, x: np.ndarray) -> str:
        return np.packbits(np.asarray(x, dtype=bool)).tobytes().hex()

    def genome_from_key(self, key: str) -> np.ndarray:
        """Inverse of :meth:`genome_key`."""
        bits = np.unpackbits(np.frombuffer(bytes.fromhex(key), dtype=np.uint8))
        return bits[: self.n_var].astype(bool)


__all__ = ["BiasedMaskSampling", "FilterMaskProblem", "MinChannelsRepair"]
