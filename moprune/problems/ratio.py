"""Per-group pruning ratios: one ratio per prunable group, channels ranked by a criterion."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.sampling.rnd import FloatRandomSampling

from moprune.core.encoding import RatioEncoding
from moprune.criteria import CRITERIA, ScoreContext, rank_channels
from moprune.errors import GenomeError
from moprune.evaluation.scorer import Scorer
from moprune.problems.base import PruningProblem


class LayerRatioProblem(PruningProblem):
    """One pruning ratio per prunable group; channels ranked by a criterion.

    Args:
        evaluator: Accuracy of plans on the hold-out split.
        criterion: Registered criterion name ranking channels within a group.
        max_ratio: Upper bound of every ratio (< 1).
        objectives: Names from ``moprune.core.objectives.OBJECTIVES``.
        max_macs_ratio: Optional constraint on MACs / baseline MACs.
        max_accuracy_drop: Optional constraint on the accuracy drop (fraction).
        score_context: Batch of training images and seed for data or random criteria.

    """

    def __init__(self, evaluator: Scorer, criterion: str = "l1", max_ratio: float = 0.9,
                 objectives: Sequence[str] = ("error", "macs_ratio"),
                 max_macs_ratio: float | None = None,
                 max_accuracy_drop: float | None = None,
                 score_context: ScoreContext | None = None) -> None:
        space = evaluator.space
        self.criterion = criterion
        scores = CRITERIA.get(criterion).score(evaluator.model, space, score_context)
        ranking = rank_channels(space, scores)
        encoding = RatioEncoding(space, ranking, space.policy.min_channels, max_ratio)
        super().__init__(evaluator, encoding, objectives, max_macs_ratio, max_accuracy_drop,
                         xl=0.0, xu=max_ratio, vtype=float)

    def check_genomes(self, X: np.ndarray) -> np.ndarray:
        """Refuse ratios outside ``[0, max_ratio]`` (an algorithm ignoring the bounds)."""
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        bad = ~np.isfinite(X) | (X < self.xl - 1e-12) | (X > self.xu + 1e-12)
        if bad.any():
            raise GenomeError(
                f"LayerRatioProblem genomes are ratios in [0, {float(self.xu[0])}], one per group; "
                f"the algorithm produced {X[bad][:3].tolist()}. Use operators that respect the "
                "bounds, e.g. NSGA2(pop_size=..., **problem.operators()).")
        return X

    def operators(self) -> dict[str, Any]:
        """The pymoo operators for ratios: random sampling, SBX, polynomial mutation."""
        return {"sampling": FloatRandomSampling(), "crossover": SBX(prob=0.9, eta=15),
                "mutation": PM(eta=20), "eliminate_duplicates": True}

    def genome_key(self, x: np.ndarray) -> str:
        return ",".join(repr(float(v)) for v in np.asarray(x, dtype=np.float64))

    def genome_from_key(self, key: str) -> np.ndarray:
        """Inverse of :meth:`genome_key`."""
        return np.array([float(v) for v in key.split(",")], dtype=np.float64)


__all__ = ["LayerRatioProblem"]
