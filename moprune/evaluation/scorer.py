"""The scorer contract: what problems, drivers and exports need from anything that scores plans.

A scorer gives accuracy and loss of a population of keep-masks on the hold-out split. The
plain :class:`~moprune.evaluation.evaluator.Evaluator` scores the full network pruned to each
plan; :class:`~moprune.evaluation.retraining.RetrainingEvaluator` after a seeded partial
retraining; :class:`~moprune.evaluation.inheritance.InheritanceEvaluator` after training the
plan's slice of a supernet; :class:`~moprune.evaluation.distributed.DaskEvaluator` on a
cluster. All of them implement :class:`Scorer`, so nothing downstream asks which one it has.

A :class:`Scoring` is the recipe of a scorer (how candidates are scored), built for a model,
space and data by :func:`moprune.tasks.setup.make_problem`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
from torch import nn

from moprune.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from moprune.core.execution import Execution
    from moprune.core.space import PruningSpace
    from moprune.data.datasets import DataBundle, Split
    from moprune.evaluation.evaluator import Evaluator


@dataclass
class EvalStats:
    """Counters of a scorer."""

    evaluations: int = 0
    cache_hits: int = 0
    images: int = 0
    diverged: int = 0


@dataclass(frozen=True)
class EvalResult:
    """Accuracy and loss of a population of plans.

    Attributes:
        accuracy: Fraction of correct top-1 predictions, (n,).
        loss: Mean cross-entropy, (n,).

    """

    accuracy: np.ndarray
    loss: np.ndarray


class Scorer(Protocol):
    """What a pruning problem, the search driver and the exports need from a scorer.

    Attributes:
        model: The full network the space was built from (never modified).
        space: Its pruning space.
        stats: Evaluations, cache hits, images seen, diverged trainings.
        device: Where it runs.
        mode: How it scores (``"gate"``, ``"slice"``, ``"retrain"``, ``"inherit"``).
        execution: Precision, memory format and compilation (resolved on ``device``).
        data: The hold-out split it scores on.
        candidates_per_pass: Candidates it scores together in one forward pass (a task's
            worth of work on a cluster).

    """

    @property
    def model(self) -> nn.Module: ...

    @property
    def space(self) -> PruningSpace: ...

    @property
    def stats(self) -> EvalStats: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def mode(self) -> str: ...

    @property
    def execution(self) -> Execution: ...

    @property
    def data(self) -> Split: ...

    @property
    def candidates_per_pass(self) -> int: ...

    def baseline(self) -> EvalResult:
        """Accuracy and loss of the unpruned network on the hold-out split."""

    def evaluate_masks(self, masks: np.ndarray) -> EvalResult:
        """Accuracy and loss of each row of a ``(n, n_channels)`` keep-mask matrix."""

    def evaluate_on(self, masks: np.ndarray, split: Split, progress: bool = False
                    ) -> EvalResult:
        """The candidates as they were scored (retrained, inherited, ...) on another split."""

    def reference_evaluator(self, split: Split, progress: bool = False) -> Evaluator:
        """A plain evaluator of the full network on ``split``, with this scorer's settings."""

    def candidate_model(self, mask: np.ndarray) -> nn.Module | None:
        """The network a plan was scored as, if it is not the full network pruned to it."""

    def report(self, data: DataBundle) -> dict:
        """Entries of the run's ``baseline.json`` that say how candidates were scored."""

    def state_dict(self) -> dict:
        """What a resumed search must restore (empty for a stateless scorer)."""

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""


class Scoring(Protocol):
    """How candidates are scored: builds the scorer of a run."""

    def build(self, model: nn.Module, space: PruningSpace, data: DataBundle, *, seed: int,
              device: str | torch.device, mode: str, progress: bool,
              execution: Execution) -> Scorer:
        """The scorer of ``model``'s plans on ``data`` (hold-out split ``data.val``)."""


MaskCache = dict[bytes, tuple[float, float]]


def uncached(masks: np.ndarray, n_channels: int, cache: MaskCache, stats: EvalStats
             ) -> tuple[np.ndarray, list[bytes], dict[bytes, int]]:
    """Check a keep-mask matrix and find the rows still to evaluate.

    Returns the masks as a bool matrix, every row's cache key, and ``{key: first row}`` of
    the distinct keys not in ``cache``; repeats and cached rows count as ``stats.cache_hits``.
    """
    masks = np.atleast_2d(np.asarray(masks, dtype=bool))
    if masks.shape[1] != n_channels:
        raise ConfigError(f"masks must have {n_channels} columns (one per channel of the "
                          f"space); got shape {masks.shape}")
    keys = [np.packbits(m).tobytes() for m in masks]
    todo: dict[bytes, int] = {}
    for i, k in enumerate(keys):
        if k in cache or k in todo:
            stats.cache_hits += 1
        else:
            todo[k] = i
    return masks, keys, todo


def evaluate_cached(masks: np.ndarray, n_channels: int, cache: MaskCache, stats: EvalStats,
                    run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                    images: int) -> EvalResult:
    """Results of every row of ``masks``; ``run`` computes the distinct uncached ones at once.

    New results go into ``cache``; ``stats`` counts them (``images`` per candidate).
    """
    masks, keys, todo = uncached(masks, n_channels, cache, stats)
    if todo:
        rows = list(todo.values())
        acc, loss = run(masks[rows])
        for j, k in enumerate(todo):
            cache[k] = (float(acc[j]), float(loss[j]))
        stats.evaluations += len(rows)
        stats.images += len(rows) * images
    return cached_result(cache, keys)


def cached_result(cache: MaskCache, keys: list[bytes]) -> EvalResult:
    """Accuracy and loss of ``keys`` from the cache."""
    return EvalResult(accuracy=np.array([cache[k][0] for k in keys]),
                      loss=np.array([cache[k][1] for k in keys]))


__all__ = ["EvalResult", "EvalStats", "MaskCache", "Scorer", "Scoring", "cached_result",
           "evaluate_cached", "uncached"]
