"""Pruning tasks: what a problem file defines, and how it becomes a pymoo problem.

A problem file is a Python file with a function ``build_task(options: TaskOptions) ->
PruningTask``. The task names the model, how to load its data, the pruning policy, the
encoding and the objectives; :func:`moprune.tasks.setup.make_problem` turns it into a space,
a scorer and a pymoo problem.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import sys
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from moprune.core.space import SpacePolicy
from moprune.criteria import GP_PREFIX
from moprune.data.datasets import DataBundle
from moprune.errors import ConfigError, MopruneError, ProblemFileError
from moprune.problems import ENCODINGS
from moprune.training.finetune import FinetuneConfig

ENTRY_POINT = "build_task"


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
        encoding: A name in :data:`moprune.problems.ENCODINGS`: ``"mask"`` (one bit per
            channel) or ``"ratio"`` (one ratio per group); EvoFC searches its own
            ratio-and-criterion genome (``moprune.methods.evofc``).
        objectives: Minimised objectives, names from ``moprune.problems.base.OBJECTIVES``.
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
            raise ConfigError(f"encoding must be one of {tuple(ENCODINGS.names())}; got "
                              f"{self.encoding!r}")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_problem_module(path: str | Path) -> ModuleType:
    """Import a problem file once per content (registrations it makes happen once).

    A problem file may register methods, algorithms, objectives or layer rules at import;
    importing the same file again returns the module already imported.

    Raises:
        ProblemFileError: The file is missing or fails to import.

    """
    path = Path(path)
    if not path.is_file():
        raise ProblemFileError(f"problem file {str(path)!r} does not exist; pass the path of a "
                               "Python file such as problems/resnet56_cifar10.py")
    where = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    name = f"moprune_problem_{where}_{file_sha256(path)[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ProblemFileError(f"cannot import {str(path)!r}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ProblemFileError(f"problem file {str(path)!r} failed to import: "
                               f"{type(exc).__name__}: {exc}") from exc
    return module


def load_problem_file(path: str | Path, options: TaskOptions) -> PruningTask:
    """Import a problem file and call its ``build_task(options)``.

    Raises:
        ProblemFileError: The file is missing, fails to import, has no ``build_task``, or
            ``build_task`` raises something other than a moprune error (whose message
            already says what to fix). The original exception is the ``__cause__``.

    """
    module = load_problem_module(path)
    build = getattr(module, ENTRY_POINT, None)
    if not callable(build):
        raise ProblemFileError(
            f"problem file {str(path)!r} has no function {ENTRY_POINT}(options) -> PruningTask; "
            "define one (see problems/resnet20_cifar10.py for an example)."
        )
    try:
        task = build(options)
    except MopruneError:
        raise
    except Exception as exc:
        hint = ""
        if isinstance(exc, urllib.error.URLError):
            hint = (" (offline? published weights load through torch.hub: copy the .th files "
                    "into $TORCH_HOME/hub/checkpoints/, or pass --weights)")
        raise ProblemFileError(f"{ENTRY_POINT}() in problem file {str(path)!r} raised "
                               f"{type(exc).__name__}: {exc}{hint}") from exc
    if not isinstance(task, PruningTask):
        raise ProblemFileError(f"{ENTRY_POINT}() in {str(path)!r} returned "
                               f"{type(task).__name__}, expected moprune.tasks.task.PruningTask")
    return task


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a checkpoint into ``model``.

    Accepted: a state_dict, ``{"state_dict": ...}`` (optionally with DataParallel ``module.``
    prefixes) or ``{"model_state": ...}``.

    Raises:
        ConfigError: The file is missing, unreadable (truncated, not a PyTorch checkpoint) or
            its tensors do not fit the model.

    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch.load raises many types on a damaged file
        raise ConfigError(
            f"weights file {str(path)!r} cannot be read ({type(exc).__name__}: {exc}); it is "
            "truncated or not a PyTorch checkpoint. Pass the file `moprune finetune` wrote, or "
            "leave out --weights for the problem file's weights.") from exc
    if isinstance(obj, dict) and isinstance(obj.get("model"), nn.Module):
        raise ConfigError(f"{str(path)!r} holds an exported (pruned) model, not weights for the "
                         "full network; use the baseline checkpoint instead.")
    state = obj
    if isinstance(obj, dict):
        state = obj.get("state_dict", obj.get("model_state", obj))
    if not isinstance(state, dict):
        raise ConfigError(f"{str(path)!r} does not contain a state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"weights in {str(path)!r} do not fit the model: {exc}") from exc
    return model.eval()


def with_criterion(task: PruningTask, name: str | None, sha256: str | None = None
                   ) -> PruningTask:
    """The task with another ranking criterion (a registered name or ``gp:FILE``).

    With ``sha256`` (the hash a run recorded), warns if a ``gp:`` file changed since.
    """
    if name is None:
        return task
    if name.startswith(GP_PREFIX) and sha256 is not None:
        path = Path(name[len(GP_PREFIX):])
        if path.is_file() and file_sha256(path) != sha256:
            print(f"warning: {path} changed since the run was made; results may differ")
    return dataclasses.replace(task, criterion=name)


__all__ = [
    "DataRequest", "ProblemFileError", "PruningTask", "TaskOptions", "file_sha256",
    "load_problem_file", "load_problem_module", "load_weights", "with_criterion",
]
