"""Pruning tasks: what a problem file defines, and how it becomes a pymoo problem.

A problem file is a Python file with a function ``build_task(options: TaskOptions) ->
PruningTask``. The task names the model, how to load its data, the pruning policy, the
encoding and the objectives; :func:`make_problem` turns it into a space, an evaluator and a
pymoo problem.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from moprune.criteria import CRITERIA, ScoreContext
from moprune.encoding import GenomeError
from moprune.evaluator import Evaluator, MaskScorer
from moprune.evofc import CriterionRatioProblem, EvoFCOptions
from moprune.execution import Execution
from moprune.inheritance import InheritanceEvaluator, random_init
from moprune.problems import FilterMaskProblem, LayerRatioProblem, PruningProblem
from moprune.retraining import RetrainingEvaluator
from moprune.space import PruningSpace, SpacePolicy
from moprune.training import FinetuneConfig
from moprune.zoo.data import DataBundle, check_num_classes

ENTRY_POINT = "build_task"
ENCODINGS = ("mask", "ratio")


class ProblemFileError(ValueError):
    """A problem file is missing, broken or lacks the expected entry point."""


@dataclass(frozen=True)
class TaskOptions:
    """What the command line passes to a problem file's ``build_task``.

    Attributes:
        weights: A checkpoint to start from instead of the file's default weights.
        pretrained: False when the run re-initialises the network anyway (EvoFC's
            ``--init random``): a problem file may then skip loading (or downloading) its
            default weights.

    """

    weights: Path | None = None
    pretrained: bool = True


@dataclass(frozen=True)
class DataRequest:
    """How much data to load for a run.

    Attributes:
        root: Data root (``None`` for embedded datasets).
        seed: Seed of the hold-out split and of the test subset.
        eval_images: Hold-out images used for selection (None = the whole hold-out split).
        test_images: Test images for reporting (None = all).
        load_train: Decode the training part too (needed for fine-tuning).
        download: Allow torchvision to download CIFAR.
        train_images: Use only a seeded random part of the training part (None = all).

    """

    root: Path | None
    seed: int
    eval_images: int | None = None
    test_images: int | None = None
    load_train: bool = False
    download: bool = False
    train_images: int | None = None


@dataclass
class PruningTask:
    """A model, its data and what to search.

    Attributes:
        name: Short name for listings.
        model: The full network (eval mode).
        input_shape: One input, (C, H, W).
        load_data: ``DataRequest -> DataBundle``.
        policy: Which groups may be pruned.
        encoding: ``"mask"`` (one bit per channel) or ``"ratio"`` (one ratio per group);
            EvoFC's ratio-and-criterion genome comes from ``make_problem(..., evofc=...)``.
        objectives: Minimised objectives, names from ``moprune.problems.OBJECTIVES``.
        criterion: Ranking criterion (ratio encoding; repair order of masks).
        finetune: Default fine-tuning recipe for exported models.
        description: One line for ``inspect``.

    """

    name: str
    model: nn.Module
    input_shape: tuple[int, int, int]
    load_data: Callable[[DataRequest], DataBundle]
    policy: SpacePolicy = field(default_factory=SpacePolicy)
    encoding: str = "mask"
    objectives: tuple[str, ...] = ("error", "macs_ratio")
    criterion: str = "l1"
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    description: str = ""

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}; got {self.encoding!r}")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_problem_file(path: str | Path, options: TaskOptions) -> PruningTask:
    """Import a problem file and call its ``build_task(options)``.

    Raises:
        ProblemFileError: The file is missing, fails to import, or has no ``build_task``.

    """
    path = Path(path)
    if not path.is_file():
        raise ProblemFileError(f"problem file {str(path)!r} does not exist; pass the path of a "
                               "Python file such as problems/resnet56_cifar10.py")
    name = f"moprune_problem_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ProblemFileError(f"cannot import {str(path)!r}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ProblemFileError(f"problem file {str(path)!r} failed to import: "
                               f"{type(exc).__name__}: {exc}") from exc
    build = getattr(module, ENTRY_POINT, None)
    if not callable(build):
        raise ProblemFileError(
            f"problem file {str(path)!r} has no function {ENTRY_POINT}(options) -> PruningTask; "
            "define one (see problems/resnet20_cifar10.py for an example)."
        )
    task = build(options)
    if not isinstance(task, PruningTask):
        raise ProblemFileError(f"{ENTRY_POINT}() in {str(path)!r} returned "
                               f"{type(task).__name__}, expected moprune.task.PruningTask")
    return task


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a checkpoint into ``model``.

    Accepted: a state_dict, ``{"state_dict": ...}`` (optionally with DataParallel ``module.``
    prefixes) or ``{"model_state": ...}``.

    Raises:
        ValueError: The file is missing or its tensors do not fit the model.

    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file {str(path)!r} does not exist")
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, dict) and isinstance(obj.get("model"), nn.Module):
        raise ValueError(f"{str(path)!r} holds an exported (pruned) model, not weights for the "
                         "full network; use the baseline checkpoint instead.")
    state = obj
    if isinstance(obj, dict):
        state = obj.get("state_dict", obj.get("model_state", obj))
    if not isinstance(state, dict):
        raise ValueError(f"{str(path)!r} does not contain a state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"weights in {str(path)!r} do not fit the model: {exc}") from exc
    return model.eval()


@dataclass
class SearchSetup:
    """Everything a search needs, built from a task."""

    task: PruningTask
    data: DataBundle
    space: PruningSpace
    evaluator: MaskScorer
    problem: PruningProblem


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
        raise ValueError(f"criterion {needing[0].name!r} ranks channels with a batch of training "
                         "images, but none were loaded; load the data with load_train=True")
    return ScoreContext.from_split(data.train, data.normalization, seed,
                                   n_images=max(c.n_images for c in needing), device=device,
                                   reinit=reinit)


def _evofc_evaluator(model: nn.Module, space: PruningSpace, data: DataBundle,
                     recipe: FinetuneConfig, options: EvoFCOptions, seed: int, device: str,
                     mode: str, progress: bool, execution: Execution) -> MaskScorer:
    if options.training == "inherit":
        return InheritanceEvaluator(model, space, data.train, data.val, data.normalization,
                                    recipe, planned=options.planned, seed=seed, device=device,
                                    progress=progress)
    if options.training == "scratch":
        return RetrainingEvaluator(model, space, data.train, data.val, data.normalization,
                                   recipe, seed=seed, device=device, mode=mode,
                                   progress=progress, from_scratch=True, execution=execution)
    return Evaluator(model, space, data.val, data.normalization, device=device, mode=mode,
                     progress=progress, execution=execution)


def make_problem(task: PruningTask, data: DataBundle, device: str = "cpu",
                 mode: str = "auto", progress: bool = False,
                 max_macs_ratio: float | None = None,
                 max_accuracy_drop: float | None = None, encoding: str | None = None,
                 objectives: tuple[str, ...] | None = None, residual: bool | None = None,
                 retrain: FinetuneConfig | None = None, seed: int = 0,
                 evofc: EvoFCOptions | None = None,
                 execution: Execution | None = None) -> SearchSetup:
    """Build space, evaluator (on the hold-out split) and pymoo problem for ``task``.

    ``encoding``, ``objectives`` and ``residual`` (the space policy's residual stages)
    override the task's (CCEP always searches masks; DeepPruningES uses residual stages).
    With ``retrain`` (``epochs >= 1``) every candidate is scored after that partial
    retraining on ``data.train`` (a :class:`~moprune.retraining.RetrainingEvaluator`
    seeded from ``seed``). With ``evofc`` the problem is a
    :class:`~moprune.evofc.CriterionRatioProblem` scored as ``evofc.training`` says (weight
    inheritance, training from scratch, or as is), starting from ``evofc.init`` (with
    ``"random"`` the returned ``setup.task.model`` is the re-initialised network).
    ``execution`` sets precision, memory format and compilation of the evaluator (weight
    inheritance keeps its own fp32 training loop).
    """
    execution = execution or Execution()
    encoding = encoding or task.encoding
    objectives = objectives or task.objectives
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}; got {encoding!r}")
    out = task.model(torch.zeros((1, *task.input_shape)))
    check_num_classes(data, int(out.shape[-1]))
    if tuple(data.input_shape) != tuple(task.input_shape):
        raise ValueError(f"the data's images have shape {tuple(data.input_shape)}, the task "
                         f"expects {tuple(task.input_shape)}; check --data-root")
    policy = task.policy if residual is None else dataclasses.replace(task.policy,
                                                                        residual=residual)
    if evofc is not None and evofc.init == "random":
        task = dataclasses.replace(task, model=random_init(task.model, seed).eval())
    space = PruningSpace.from_model(task.model, task.input_shape, policy)
    evaluator: MaskScorer
    if evofc is not None:
        recipe = dataclasses.replace(task.finetune, epochs=evofc.epochs, lr=evofc.lr)
        evaluator = _evofc_evaluator(task.model, space, data, recipe, evofc, seed, device,
                                     mode, progress, execution)
    elif retrain is not None and retrain.epochs > 0:
        evaluator = RetrainingEvaluator(task.model, space, data.train, data.val,
                                        data.normalization, retrain, seed=seed, device=device,
                                        mode=mode, progress=progress, execution=execution)
    else:
        evaluator = Evaluator(task.model, space, data.val, data.normalization, device=device,
                              mode=mode, progress=progress, execution=execution)
    problem: PruningProblem
    if evofc is not None:
        context = criterion_context(task, data, seed, device, evofc.criteria,
                                    reinit=evofc.reinit_criteria)
        problem = CriterionRatioProblem(evaluator, evofc.criteria, evofc.lower,
                                        evofc.max_ratio, evofc.variables, objectives,
                                        max_macs_ratio, max_accuracy_drop, context)
        return SearchSetup(task, data, space, evaluator, problem)
    context = criterion_context(task, data, seed, device)
    if encoding == "mask":
        problem = FilterMaskProblem(evaluator, objectives, max_macs_ratio,
                                    max_accuracy_drop, repair_criterion=task.criterion,
                                    score_context=context)
    else:
        problem = LayerRatioProblem(evaluator, task.criterion, objectives=objectives,
                                    max_macs_ratio=max_macs_ratio,
                                    max_accuracy_drop=max_accuracy_drop, score_context=context)
    return SearchSetup(task, data, space, evaluator, problem)


__all__ = [
    "DataRequest", "GenomeError", "PruningTask", "ProblemFileError", "SearchSetup",
    "TaskOptions", "load_problem_file", "load_weights", "make_problem",
]
