"""Proxy tasks of ``moprune evolve`` from problem files: network, space, data, scorer."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from moprune.core.space import PruningSpace
from moprune.criteria import ScoreContext
from moprune.criteria.gp.function import ScoreSettings
from moprune.evaluation.evaluator import Evaluator
from moprune.evaluation.retraining import RetrainingEvaluator
from moprune.evaluation.scorer import Scorer
from moprune.problems.function import ProxyTask
from moprune.tasks.task import DataRequest, TaskOptions, load_problem_file


@dataclass(frozen=True)
class TaskRequest:
    """How to build a proxy task from a problem file (see :func:`load_proxy_task`).

    Attributes:
        ratios: Per-layer pruning ratios of the fitness.
        eval_images: Hold-out images the pruned networks are scored on.
        train_images: Training images loaded (terminal batch and fine-tuning).
        finetune_epochs: Epochs of fine-tuning of each pruned network (0: none).
        data_root: The data folder of tasks that need one.
        weights: A checkpoint replacing the problem's default weights.
        seed: Seed of the hold-out split, the batch and the fine-tuning.
        device: Where the networks run.

    """

    ratios: tuple[float, ...] = (0.5,)
    eval_images: int = 500
    train_images: int = 2000
    finetune_epochs: int = 0
    data_root: str | None = None
    weights: str | None = None
    seed: int = 0
    device: str = "cpu"


def load_proxy_task(path: str | Path, request: TaskRequest,
                    settings: ScoreSettings) -> ProxyTask:
    """A proxy task from a problem file (its model, default weights, data and space)."""
    task = load_problem_file(path, TaskOptions(
        weights=Path(request.weights) if request.weights else None))
    data = task.load_data(DataRequest(root=Path(request.data_root) if request.data_root else None,
                                      seed=request.seed,
                                      eval_images=request.eval_images, load_train=True,
                                      train_images=request.train_images))
    space = PruningSpace.from_model(task.model, task.input_shape, task.policy)
    if request.finetune_epochs > 0:
        recipe = replace(task.finetune, epochs=request.finetune_epochs)
        scorer: Scorer = RetrainingEvaluator(task.model, space, data.train, data.val,
                                                 data.normalization, recipe, seed=request.seed,
                                                 device=request.device)
    else:
        scorer = Evaluator(task.model, space, data.val, data.normalization,
                           device=request.device)
    context = ScoreContext.from_split(data.train, data.normalization, request.seed,
                                      n_images=settings.images, device=request.device)
    model = task.model.to(request.device)
    return ProxyTask(task.name, model, space, scorer, context, tuple(request.ratios),
                     task.policy.min_channels)


__all__ = ["TaskRequest", "load_proxy_task"]
