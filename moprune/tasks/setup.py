"""From a task and its data to a search setup: space, scorer and pymoo problem.

:func:`make_problem` builds the setup of the two task encodings (filter masks, per-group
ratios) with any :class:`~moprune.evaluation.scorer.Scoring` (as is, after a partial
retraining, ...). Methods with a problem of their own (EvoFC) use the same pieces:
:func:`check_data`, :func:`policy_for` and :func:`criterion_context`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from moprune.core.execution import Execution
from moprune.core.space import PruningSpace, SpacePolicy
from moprune.criteria import CRITERIA, ScoreContext
from moprune.data.datasets import DataBundle, check_num_classes
from moprune.errors import ConfigError
from moprune.evaluation.evaluator import AsIs
from moprune.evaluation.scorer import Scorer, Scoring
from moprune.problems import ENCODINGS
from moprune.problems.base import PruningProblem
from moprune.tasks.task import PruningTask


@dataclass
class SearchSetup:
    """Everything a search needs, built from a task.

    Attributes:
        task: The task (its model re-initialised when the run starts from random weights).
        data: Training, hold-out and test splits.
        space: The pruning space.
        evaluator: The scorer of the hold-out split (any :class:`Scorer`).
        problem: The pymoo problem.

    """

    task: PruningTask
    data: DataBundle
    space: PruningSpace
    evaluator: Scorer
    problem: PruningProblem


def check_data(task: PruningTask, data: DataBundle) -> None:
    """Refuse data whose classes or image shape do not fit the task's network."""
    out = task.model(torch.zeros((1, *task.input_shape)))
    check_num_classes(data, int(out.shape[-1]))
    if tuple(data.input_shape) != tuple(task.input_shape):
        raise ConfigError(f"the data's images have shape {tuple(data.input_shape)}, the task "
                          f"expects {tuple(task.input_shape)}; check --data-root")


def policy_for(task: PruningTask, residual: bool | None) -> SpacePolicy:
    """The task's space policy, with ``residual`` overriding its residual stages if given."""
    if residual is None:
        return task.policy
    return dataclasses.replace(task.policy, residual=residual)


def criterion_context(task: PruningTask, data: DataBundle, seed: int,
                      device: str | torch.device = "cpu",
                      criteria: tuple[str, ...] | None = None,
                      reinit: bool = False) -> ScoreContext:
    """The context of the criteria (default: the task's): seed, batch and ``reinit``.

    Data criteria get a batch; gradient criteria run on a re-initialised copy if ``reinit``.
    The batch is seeded training images, never hold-out or test images: 128, or as many as
    the most demanding criterion asks for (evolved functions: 320).
    """
    criteria = criteria or (task.criterion,)
    needing = [c for c in map(CRITERIA.get, criteria) if c.needs_data]
    if not needing:
        return ScoreContext(seed=seed, reinit=reinit)
    if len(data.train) == 0:
        raise ConfigError(f"criterion {needing[0].name!r} ranks channels with a batch of "
                          "training images, but none were loaded; load the data with "
                          "load_train=True")
    return ScoreContext.from_split(data.train, data.normalization, seed,
                                   n_images=max(c.n_images for c in needing), device=device,
                                   reinit=reinit)


def make_problem(task: PruningTask, data: DataBundle, device: str = "cpu",
                 mode: str = "auto", progress: bool = False,
                 max_macs_ratio: float | None = None,
                 max_accuracy_drop: float | None = None, encoding: str | None = None,
                 objectives: tuple[str, ...] | None = None, residual: bool | None = None,
                 seed: int = 0, execution: Execution | None = None,
                 scoring: Scoring | None = None) -> SearchSetup:
    """Build space, scorer (on the hold-out split) and pymoo problem for ``task``.

    Args:
        task: The task.
        data: Its data (with the training part when the scoring or criterion trains).
        device: Where the scorer runs.
        mode: Evaluation mode (``"auto"``, ``"gate"``, ``"slice"``).
        progress: Show progress bars.
        max_macs_ratio: Constraint ``macs / baseline macs <= max_macs_ratio``.
        max_accuracy_drop: Constraint on the hold-out accuracy drop (a fraction).
        encoding: A name in :data:`moprune.problems.ENCODINGS` instead of the task's.
        objectives: Objective names instead of the task's.
        residual: Override the task policy's residual stages.
        seed: Seed of the criteria's batch and of any training the scoring does.
        execution: Precision, memory format and compilation of the scorer.
        scoring: How candidates are scored (default: :class:`~moprune.evaluation.evaluator.
            AsIs`, the full network pruned to the plan; e.g. ``Retraining(recipe)`` scores
            each after a seeded partial retraining).

    """
    execution = execution or Execution()
    encoding = encoding or task.encoding
    factory = ENCODINGS.get(encoding)
    check_data(task, data)
    space = PruningSpace.from_model(task.model, task.input_shape, policy_for(task, residual))
    scorer = (scoring or AsIs()).build(task.model, space, data, seed=seed, device=device,
                                       mode=mode, progress=progress, execution=execution)
    context = criterion_context(task, data, seed, device)
    problem = factory(scorer, task.criterion, objectives or task.objectives, max_macs_ratio,
                      max_accuracy_drop, context)
    return SearchSetup(task, data, space, scorer, problem)


__all__ = ["SearchSetup", "check_data", "criterion_context", "make_problem", "policy_for"]
