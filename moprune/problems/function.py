"""Fitness of pruning functions on proxy tasks, as a pymoo problem over expression strings.

A proxy task is a network with its pruning space, a class-balanced batch of training images
(for the terminals) and a scorer of keep-masks on hold-out images (with or without a brief
fine-tuning of the pruned network). A function's accuracy on a task is the mean, over the
task's per-layer ratios, of the accuracy of the network pruned at that ratio in every group,
keeping the channels the function ranks highest. The fitness is the geometric mean of the
tasks' accuracies (one objective), or every task's accuracy (one objective each).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pymoo.core.problem import Problem
from torch import nn

from moprune.core.encoding import RatioEncoding
from moprune.core.space import PruningSpace
from moprune.criteria import ScoreContext, rank_channels
from moprune.criteria.gp.function import (
    ScoreSettings,
    capture,
    reads_activations,
    render,
    score_trees,
)
from moprune.criteria.gp.primitives import parse
from moprune.criteria.gp.terminals import Activations
from moprune.errors import ConfigError
from moprune.evaluation.scorer import Scorer

OBJECTIVES = ("geomean", "tasks")


@dataclass
class ProxyTask:
    """One network on which candidate functions prune and are scored.

    Attributes:
        name: Label in logs and reports.
        model: The trained network (never modified).
        space: Its pruning space.
        scorer: Accuracy of keep-masks on hold-out images (``Evaluator``, or
            ``RetrainingEvaluator`` for a brief fine-tuning of each pruned network).
        context: The class-balanced source of the terminals: training images and labels.
        ratios: Per-layer pruning ratios; the task's accuracy is their mean.
        min_channels: Channels every group keeps.

    """

    name: str
    model: nn.Module
    space: PruningSpace
    scorer: Scorer
    context: ScoreContext
    ratios: tuple[float, ...] = (0.5,)
    min_channels: int = 1
    _acts: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.ratios or any(not 0.0 < r < 1.0 for r in self.ratios):
            raise ConfigError(f"task {self.name!r}: ratios must lie in (0, 1), got "
                             f"{self.ratios!r}")

    def activations(self, settings: ScoreSettings) -> Activations:
        """The terminals' activations (one forward pass, cached per settings)."""
        if settings not in self._acts:
            self._acts[settings] = capture(self.model, self.space, self.context.images,
                                           self.context.labels, settings)
        return self._acts[settings]

    def masks(self, scores: np.ndarray) -> np.ndarray:
        """Keep-masks ``(len(ratios), n_channels)`` of the channels ranked by ``scores``."""
        encoding = RatioEncoding(self.space, rank_channels(self.space, scores),
                                 self.min_channels, max(self.ratios))
        return encoding.decode_masks(np.array([[r] * self.space.n_groups for r in self.ratios]))

    def accuracy(self, scores: np.ndarray) -> float:
        return float(np.mean(self.scorer.evaluate_masks(self.masks(scores)).accuracy))


@dataclass
class Outcome:
    """What evaluating one function gave."""

    expression: str
    accuracies: tuple[float, ...]
    fitness: float
    valid: bool
    reason: str = ""
    seconds: float = 0.0

    def record(self, generation: int) -> dict:
        return {"generation": generation, "expression": self.expression,
                "formula": render(self.expression), "size": len(parse(self.expression)),
                "accuracies": list(self.accuracies), "fitness": self.fitness,
                "valid": self.valid, "reason": self.reason, "seconds": self.seconds}


def geometric_mean(values: Sequence[float]) -> float:
    values = [max(float(v), 0.0) for v in values]
    if min(values) <= 0.0:
        return 0.0
    return math.exp(sum(math.log(v) for v in values) / len(values))


class FunctionProblem(Problem):
    """Maximise proxy-task accuracy of a pruning function (one ``object`` variable: a string).

    ``F`` is ``1 - geometric mean`` of the tasks' accuracies (``objectives="geomean"``) or
    ``1 - accuracy`` per task (``"tasks"``). A function is *valid* when it scores every
    channel of every task with finite numbers, within ``time_limit`` seconds per task, and
    tells at least two channels of one group apart; invalid functions get accuracy 0.
    Scores and outcomes are cached by expression.

    Args:
        tasks: The proxy tasks.
        settings: How functions are evaluated on the networks.
        objectives: ``"geomean"`` or ``"tasks"``.
        time_limit: Seconds one function may take to score one task's channels.

    """

    def __init__(self, tasks: Sequence[ProxyTask], settings: ScoreSettings | None = None,
                 objectives: str = "geomean", time_limit: float = 2.0) -> None:
        if not tasks:
            raise ConfigError("a function search needs at least one proxy task")
        if objectives not in OBJECTIVES:
            raise ConfigError(f"objectives must be one of {OBJECTIVES}, got {objectives!r}")
        if time_limit <= 0:
            raise ConfigError(f"time_limit must be > 0 seconds, got {time_limit}")
        self.tasks = list(tasks)
        self.settings = settings or ScoreSettings()
        self.objectives = objectives
        self.time_limit = float(time_limit)
        self.outcomes: dict[str, Outcome] = {}
        self.new: list[Outcome] = []  # outcomes asked for since the driver last collected them
        self._scores: dict[str, list[np.ndarray] | str] = {}
        super().__init__(n_var=1, n_obj=1 if objectives == "geomean" else len(self.tasks),
                         vtype=object)

    # ------------------------------------------------------------------ validity and scores
    def task_scores(self, expressions: Sequence[str]) -> None:
        """Score the channels of every task for the expressions not scored yet."""
        todo = [e for e in dict.fromkeys(expressions) if e not in self._scores]
        if not todo:
            return
        trees = [parse(e) for e in todo]
        per_task: list[list[np.ndarray | str]] = []
        for task in self.tasks:
            acts = task.activations(self.settings) if any(map(reads_activations, trees)) \
                else Activations.weights_only(task.model, task.space)
            per_task.append(score_trees(trees, acts, self.settings, self.time_limit))
        for i, e in enumerate(todo):
            results = [scores[i] for scores in per_task]
            self._scores[e] = self._validate(results)

    def _validate(self, results: list[np.ndarray | str]) -> list[np.ndarray] | str:
        distinct = False
        for task, scores in zip(self.tasks, results, strict=True):
            if isinstance(scores, str):
                return f"{task.name}: {scores}"
            if not np.isfinite(scores).all():
                return f"{task.name}: scores are not all finite"
            distinct = distinct or any(np.ptp(scores[task.space.group_slice(g)]) > 0
                                       for g in range(task.space.n_groups))
        if not distinct:
            return "constant scores: no two channels of a group are told apart"
        return results  # type: ignore[return-value]

    def check(self, expression: str) -> str | None:
        """Why ``expression`` is invalid, or None (the scores are kept for its evaluation)."""
        self.task_scores([expression])
        result = self._scores[expression]
        return result if isinstance(result, str) else None

    # ------------------------------------------------------------------ evaluation
    def evaluate_expressions(self, expressions: Sequence[str]) -> list[Outcome]:
        """Outcomes of ``expressions`` (cached)."""
        self.task_scores(expressions)
        for e in dict.fromkeys(expressions):
            if e in self.outcomes:
                self.new.append(self.outcomes[e])
                continue
            s0 = time.perf_counter()
            result = self._scores[e]
            if isinstance(result, str):
                outcome = Outcome(e, tuple(0.0 for _ in self.tasks), 0.0, False, result)
            else:
                accs = tuple(t.accuracy(s) for t, s in zip(self.tasks, result, strict=True))
                outcome = Outcome(e, accs, geometric_mean(accs), True)
            outcome.seconds = time.perf_counter() - s0
            self.outcomes[e] = outcome
            self.new.append(outcome)
        return [self.outcomes[e] for e in expressions]

    def objective_values(self, outcome: Outcome) -> list[float]:
        if self.objectives == "geomean":
            return [1.0 - outcome.fitness]
        return [1.0 - a for a in outcome.accuracies]

    def _evaluate(self, X, out, *args, **kwargs) -> None:  # noqa: ARG002 (pymoo signature)
        outcomes = self.evaluate_expressions([str(x) for x in np.asarray(X)[:, 0]])
        out["F"] = np.array([self.objective_values(o) for o in outcomes], dtype=float)

    def baseline(self) -> dict:
        """Unpruned accuracy of every task."""
        return {t.name: float(t.scorer.baseline().accuracy[0]) for t in self.tasks}


__all__ = ["OBJECTIVES", "FunctionProblem", "Outcome", "ProxyTask", "geometric_mean"]
