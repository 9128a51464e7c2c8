"""Any registered pymoo algorithm as a search method: NSGA-II by default, SMS-EMOA, ...

``moprune search --algorithm NAME`` runs :data:`moprune.algorithms.ALGORITHMS` entry ``NAME``
(the library's, or one a problem file registers) on the problem file's encoding (filter masks
or per-group ratios), one generation per checkpoint. Candidates are scored as they are, or
after a seeded partial retraining (``--partial-epochs``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pymoo.core.algorithm import Algorithm

from moprune.algorithms import ALGORITHMS
from moprune.criteria import CRITERIA, GP_PREFIX, criterion_name
from moprune.data.datasets import DataBundle
from moprune.errors import ConfigError
from moprune.evaluation.retraining import Retraining, partial_recipe
from moprune.methods.base import BuildEnv, Method, MethodOptions, option
from moprune.methods.driver import Recorder, finalize, run_generations, summary_report
from moprune.methods.parsers import nonneg, positive, real
from moprune.runs.rundir import RunDir
from moprune.tasks.setup import SearchSetup, make_problem
from moprune.tasks.task import PruningTask, file_sha256

RESIDUAL_HELP = ("also search the residual stages: one shared mask per stage that the stem, "
                 "shortcuts and classifier follow")


@dataclass(frozen=True)
class PymooOptions(MethodOptions):
    """Options of a pymoo algorithm's search (and the base of DeepPruningES's)."""

    pop_size: int = option(40, "population size (for ccep the population of each group)",
                           type=positive, common=True)
    generations: int = option(20, "number of generations, the first being the initial "
                              "population (for ccep the generations per group and round)",
                              type=positive, common=True)
    criterion: str | None = option(
        None, "criterion that orders channels (ratio encoding) or repairs masks, instead of "
        "the problem file's: a registered name (l1, fpgm, snr, gp_published, ...; see "
        "docs/criteria.md) or gp:FILE, a function saved by `moprune evolve`", common=True,
        none="the problem file's")
    partial_epochs: int = option(0, "partial retraining of every candidate before it is "
                                 "scored, in epochs on the training part", type=nonneg)
    partial_lr: float | None = option(
        None, "learning rate of the partial retraining (SGD, momentum 0.9, Nesterov, "
        "constant); the problem's batch size, weight decay and augmentation", type=real,
        none="1e-3")
    residual: bool | None = option(None, RESIDUAL_HELP, action="toggle",
                                   none="the problem file's policy")

    def __post_init__(self) -> None:
        if self.pop_size < 2:
            raise ConfigError(f"--pop-size must be >= 2; got {self.pop_size}")
        if self.generations < 1:
            raise ConfigError(f"--generations must be >= 1; got {self.generations}")
        if self.partial_lr is not None and self.partial_epochs == 0:
            raise ConfigError("--partial-lr needs --partial-epochs > 0 (there is no partial "
                              "retraining to apply it to)")
        if self.partial_lr is not None and (not math.isfinite(self.partial_lr)
                                            or self.partial_lr <= 0):
            raise ConfigError(f"--partial-lr must be a finite number > 0; got {self.partial_lr}")
        if self.criterion is not None:
            object.__setattr__(self, "criterion", criterion_name(self.criterion))

    @property
    def lr(self) -> float:
        """The partial retraining's learning rate."""
        return 1e-3 if self.partial_lr is None else self.partial_lr


def criterion_sha(name: str | None) -> str | None:
    """Hash of a ``gp:`` criterion's file (None for registered criteria)."""
    if name is None or not name.startswith(GP_PREFIX):
        return None
    return file_sha256(Path(name[len(GP_PREFIX):]))


class PymooMethod(Method):
    """A registered pymoo algorithm on the problem file's encoding.

    Args:
        algorithm: The name in :data:`~moprune.algorithms.ALGORITHMS` (default: NSGA-II).

    """

    summary = "NSGA-II (or any registered pymoo algorithm) over the problem's encoding"
    group = "NSGA-II and other pymoo algorithms (--algorithm nsga2 or a registered name)"
    Options: ClassVar[type[MethodOptions]] = PymooOptions

    def __init__(self, algorithm: str = "nsga2") -> None:
        ALGORITHMS.get(algorithm)  # unknown names fail here, listing the valid ones
        self.name = algorithm  # type: ignore[misc]

    # ---- configuration ------------------------------------------------------------------
    def identity(self, options: MethodOptions, task: PruningTask, common: dict) -> dict:
        assert isinstance(options, PymooOptions)
        return {
            "pop_size": options.pop_size, "generations": options.generations,
            "objectives": list(task.objectives), "max_macs_ratio": common["max_macs_ratio"],
            "residual": options.residual, "criterion": options.criterion,
            "criterion_sha256": criterion_sha(options.criterion),
            "partial": ({"epochs": options.partial_epochs, "lr": options.lr}
                        if options.partial_epochs > 0 else None),
        }

    def needs_training_data(self, identity: dict, task: PruningTask, searching: bool) -> bool:
        return bool(identity.get("partial")) or CRITERIA.get(task.criterion).needs_data

    # ---- building -----------------------------------------------------------------------
    def encoding(self) -> str | None:
        """The encoding searched (None: the problem file's)."""
        return None

    def build(self, task: PruningTask, data: DataBundle, identity: dict,
              env: BuildEnv) -> SearchSetup:
        partial = identity.get("partial")
        scoring = (Retraining(partial_recipe(task.finetune, partial["epochs"], partial["lr"]))
                   if partial else None)
        return make_problem(task, data, device=env.device, mode=env.mode, progress=env.progress,
                            max_macs_ratio=identity["max_macs_ratio"],
                            max_accuracy_drop=identity["max_accuracy_drop"],
                            encoding=self.encoding(), residual=identity.get("residual"),
                            seed=identity["seed"], execution=env.execution, scoring=scoring)

    def describe(self, setup: SearchSetup, identity: dict) -> str:
        partial = identity.get("partial")
        data = setup.data
        scoring = (f"each candidate retrained {partial['epochs']} epochs on {len(data.train)} "
                   f"training images (lr {partial['lr']}), then scored" if partial else
                   f"evaluation mode {setup.evaluator.mode}")
        return header(setup, scoring)

    def algorithm(self, setup: SearchSetup, identity: dict) -> Algorithm:
        """The configured pymoo algorithm of a new run."""
        return ALGORITHMS.get(self.name)(setup.problem, identity["pop_size"])

    # ---- running ------------------------------------------------------------------------
    def on_generation(self, run: RunDir, algorithm: Algorithm, recorder: Recorder,
                      generation: int) -> None:
        """Called after every generation, before its checkpoint (default: nothing)."""

    def on_resume(self, run: RunDir, generation: int) -> None:
        """Called when a run resumes after ``generation`` (trim the method's own logs)."""

    def run(self, setup: SearchSetup, run: RunDir, identity: dict, resume: bool,
            progress: bool, options: MethodOptions | None = None) -> list[dict]:
        algorithm = None if resume else self.algorithm(setup, identity)
        run_generations(setup, run, algorithm, identity["generations"], identity["seed"],
                        resume=resume, progress=progress, on_generation=self.on_generation,
                        on_resume=self.on_resume)
        return finalize(setup, run, self.knee(identity), self.plots, progress=progress)

    def replayable(self, identity: dict) -> bool:
        return True

    def replay(self, setup: SearchSetup, run: RunDir, identity: dict, until: int,
               progress: bool) -> int:
        """The search again from its start, up to generation ``until``; finished if it ends.

        Scores come from ``setup.problem.recorded`` where the genome is there, so the same
        seed retraces the recorded search without scoring it again.
        """
        done = run_generations(setup, run, self.algorithm(setup, identity),
                               identity["generations"], identity["seed"], resume=False,
                               progress=progress, on_generation=self.on_generation,
                               until=until)
        if done >= identity["generations"]:
            finalize(setup, run, self.knee(identity), self.plots, progress=progress)
        return done

    def report(self, run: RunDir) -> str:
        identity = run.config()["identity"]
        return summary_report(run, self.knee(identity),
                              tuple(self.notes(identity, run.baseline())))


def header(setup: SearchSetup, scoring: str) -> str:
    """The line printed before a search: network, space, data and how candidates are scored."""
    data = setup.data
    return (f"{setup.task.name}: {setup.space}; {len(data.val)} hold-out images, "
            f"{len(data.test)} test images; {scoring} on {setup.evaluator.device}")


METHOD = PymooMethod("nsga2")

__all__ = ["METHOD", "PymooMethod", "PymooOptions", "criterion_sha", "header"]
