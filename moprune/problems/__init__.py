"""Pruning as pymoo problems, and the registry of the encodings a task can name.

:data:`ENCODINGS` maps a task's ``encoding`` to the problem that searches it: ``"mask"`` (one
bit per channel, :class:`~moprune.problems.mask.FilterMaskProblem`) and ``"ratio"`` (one
ratio per group, :class:`~moprune.problems.ratio.LayerRatioProblem`). A new encoding is one
registration: ``ENCODINGS.register(name, factory)`` with the signature of
:data:`ProblemFactory`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from moprune.core.registry import Registry
from moprune.criteria import ScoreContext
from moprune.evaluation.scorer import Scorer
from moprune.problems.base import PruningProblem
from moprune.problems.mask import FilterMaskProblem
from moprune.problems.ratio import LayerRatioProblem

# (scorer, criterion, objectives, max_macs_ratio, max_accuracy_drop, criterion context)
ProblemFactory = Callable[[Scorer, str, Sequence[str], float | None, float | None,
                           ScoreContext], PruningProblem]
ENCODINGS: Registry[ProblemFactory] = Registry("encoding")


def _mask(scorer: Scorer, criterion: str, objectives: Sequence[str],
          max_macs_ratio: float | None, max_accuracy_drop: float | None,
          context: ScoreContext) -> PruningProblem:
    return FilterMaskProblem(scorer, objectives, max_macs_ratio, max_accuracy_drop,
                             repair_criterion=criterion, score_context=context)


def _ratio(scorer: Scorer, criterion: str, objectives: Sequence[str],
           max_macs_ratio: float | None, max_accuracy_drop: float | None,
           context: ScoreContext) -> PruningProblem:
    return LayerRatioProblem(scorer, criterion, objectives=objectives,
                             max_macs_ratio=max_macs_ratio, max_accuracy_drop=max_accuracy_drop,
                             score_context=context)


ENCODINGS.register("mask", _mask)
ENCODINGS.register("ratio", _ratio)

__all__ = ["ENCODINGS", "FilterMaskProblem", "LayerRatioProblem", "ProblemFactory",
           "PruningProblem"]
