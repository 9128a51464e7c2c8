"""EvoFC (Li et al., Neurocomputing 2024) as a search method.

Per prunable group a pruning ratio and a ranking criterion
(:class:`~moprune.problems.criterion_ratio.CriterionRatioProblem`), searched with the
published NSGA-II (:func:`~moprune.algorithms.evofc.evofc_nsga2`), from a random
initialisation or pretrained weights; candidates scored after training their slice of one
supernet (weight inheritance, ``supernet.pt``), after training from scratch, or as they are.
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import asdict, dataclass
from typing import ClassVar, cast

import torch
from pymoo.core.algorithm import Algorithm

from moprune.algorithms.evofc import EvoFCConfig, evofc_nsga2
from moprune.core.execution import Execution
from moprune.core.space import PruningSpace
from moprune.criteria import CRITERIA, criterion_name
from moprune.data.datasets import DataBundle
from moprune.errors import ConfigError, RunDirError
from moprune.evaluation.evaluator import AsIs
from moprune.evaluation.inheritance import Inheritance, InheritanceEvaluator
from moprune.evaluation.retraining import Retraining
from moprune.evaluation.scorer import Scorer, Scoring
from moprune.fronts.front import PickRule
from moprune.methods.base import BuildEnv, MethodOptions, option, redefault
from moprune.methods.parsers import names, nonneg, positive, real
from moprune.methods.pymoo import PymooMethod, PymooOptions, header
from moprune.problems.criterion_ratio import (
    EVOFC_CRITERIA,
    VARIABLES,
    CriterionRatioProblem,
    parse_lower_bounds,
)
from moprune.runs.rundir import RunDir, atomic_write_bytes
from moprune.tasks.setup import SearchSetup, check_data, criterion_context, policy_for
from moprune.tasks.task import PruningTask
from moprune.training.finetune import FinetuneConfig
from moprune.training.init import random_init

SUPERNET = "supernet.pt"
INITS = ("random", "pretrained")
TRAINING = ("inherit", "scratch", "none")


@dataclass(frozen=True)
class EvoFCOptions:
    """The search space and the scoring of an EvoFC search, as stored in the run identity.

    Attributes:
        criteria: Criterion names, in bin order (default: EvoFC's four).
        lower: Lower-bound schedule of the ratios (see
            :func:`~moprune.problems.criterion_ratio.lower_bounds`).
        max_ratio: Upper bound of every ratio (< 1).
        variables: ``"pairs"`` (real-coded, the paper) or ``"mixed"`` (pymoo mixed variables).
        reinit_criteria: Compute the gradient criteria on a Xavier re-initialised copy (the
            paper); False uses the starting weights as they are.
        init: The network the search starts from: ``"random"`` (:func:`moprune.training.init.
            random_init` seeded by the run seed; the paper) or ``"pretrained"`` (the problem
            file's weights).
        training: ``"inherit"`` (weight inheritance through a supernet, one global schedule
            of ``epochs``), ``"scratch"`` (every candidate re-initialised and trained
            ``epochs`` epochs on its own) or ``"none"`` (scored as is: sensible only from
            pretrained weights).
        epochs: ``inherit``: length of the global schedule (one normal training run, shared
            by all candidates); ``scratch``: epochs per candidate.
        lr: Initial learning rate of that training (the task's schedule shape, momentum,
            weight decay, batch size and augmentation).
        planned: Candidates the search evaluates (``EvoFCConfig.evaluations(generations)``);
            they share the global schedule.

    """

    criteria: tuple[str, ...] = EVOFC_CRITERIA
    lower: str = "0"
    max_ratio: float = 0.99
    variables: str = "pairs"
    reinit_criteria: bool = True
    init: str = "random"
    training: str = "inherit"
    epochs: int = 1
    lr: float = 0.1
    planned: int = 200

    def __post_init__(self) -> None:
        problems = []
        for name, value, valid in (("variables", self.variables, VARIABLES),
                                   ("init", self.init, INITS),
                                   ("training", self.training, TRAINING)):
            if value not in valid:
                problems.append(f"{name} must be one of {valid}; got {value!r}")
        for c in self.criteria:
            if c not in CRITERIA:
                problems.append(f"unknown criterion {c!r}; registered: "
                                f"{', '.join(CRITERIA.names())}, or gp:FILE (an existing "
                                "function file written by `moprune evolve`)")
        if not 0.0 < self.max_ratio < 1.0:
            problems.append(f"max_ratio must be in (0, 1); got {self.max_ratio}")
        if self.training != "none" and self.epochs < 1:
            problems.append(f"training {self.training!r} needs epochs >= 1; got {self.epochs}")
        if not math.isfinite(self.lr) or self.lr <= 0:
            problems.append(f"lr must be a finite number > 0; got {self.lr}")
        if self.planned < 1:
            problems.append(f"planned must be >= 1; got {self.planned}")
        if len(set(self.criteria)) != len(self.criteria) or not self.criteria:
            problems.append(f"criteria must be distinct registered names; got "
                            f"{list(self.criteria)}")
        try:
            _, values = parse_lower_bounds(self.lower)
            if any(v < 0 or v >= self.max_ratio for v in values):
                problems.append(f"lower bounds must be in [0, max_ratio={self.max_ratio}); got "
                                f"{self.lower!r}")
        except ConfigError as exc:
            problems.append(str(exc))
        if problems:
            raise ConfigError("invalid EvoFC options: " + "; ".join(problems))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["criteria"] = list(self.criteria)
        return d

    @classmethod
    def from_dict(cls, stored: dict) -> EvoFCOptions:
        """Inverse of :meth:`to_dict` (extra keys, such as ``nsga2``, are ignored)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in stored.items() if k in fields}
        return cls(**{**values, "criteria": tuple(values["criteria"])})

    def scoring(self, task_recipe: FinetuneConfig) -> Scoring:
        """How candidates are scored: ``training`` (``epochs``, ``lr``) on the task's recipe."""
        recipe = dataclasses.replace(task_recipe, epochs=self.epochs, lr=self.lr)
        if self.training == "inherit":
            return Inheritance(recipe, self.planned)
        if self.training == "scratch":
            return Retraining(recipe, from_scratch=True)
        return AsIs()


@dataclass(frozen=True)
class EvoFCSearchOptions(MethodOptions):
    """EvoFC's command-line options (defaults: the published CIFAR settings)."""

    refusals: ClassVar[dict[str, str]] = {
        "--criterion": "--criterion does not apply to evofc, which searches a criterion per "
                       "layer: give the candidates with --criteria",
        "--partial-epochs": "--partial-epochs does not apply to evofc; its candidates train by "
                            "--training inherit|scratch with --search-epochs",
        "--partial-lr": "--partial-lr does not apply to evofc; its candidates train by "
                        "--training inherit|scratch with --search-lr",
    }

    pop_size: int = redefault(PymooOptions, "pop_size", 10)
    generations: int = redefault(PymooOptions, "generations", 20)
    residual: bool | None = redefault(PymooOptions, "residual", None)
    criteria: tuple[str, ...] | None = option(
        None, "criteria a group can choose, in bin order (any registered criterion, see "
        "docs/criteria.md)", type=names, none=",".join(EVOFC_CRITERIA))
    lower_bounds: str | None = option(
        None, "lower bounds of the pruning ratios: a number, 'stages:A,B,C' (one per "
        "feature-map resolution, e.g. stages:0.2,0.4,0.6 for ResNet-56) or 'cosine:LOW,HIGH' "
        "over depth", none="0")
    max_ratio: float | None = option(None, "upper bound of the pruning ratios, < 1", type=real,
                                     none="0.99")
    variables: str | None = option(
        None, "pairs: real-coded (ratio, criterion) pairs, criterion by equal-width bins (the "
        "paper); mixed: pymoo Real + Choice variables", choices=VARIABLES, none="pairs")
    offspring: int | None = option(None, "offspring per generation (published 10, "
                                   "ImageNet-scale 40)", type=positive,
                                   none="the population size")
    init: str | None = option(None, "start from a random initialisation (the paper) or from "
                              "the problem file's weights", choices=INITS, none="random")
    training: str | None = option(
        None, "inherit: weight inheritance through one supernet trained by one global "
        "schedule; scratch: every candidate re-initialised and trained on its own; none: "
        "scored as is (with --init pretrained)", choices=TRAINING, none="inherit")
    search_epochs: int | None = option(
        None, "inherit: epochs of the global schedule over the whole search (one normal "
        "training run); scratch: epochs per candidate", type=nonneg,
        none="the problem file's fine-tuning epochs")
    search_lr: float | None = option(
        None, "initial learning rate of that training, with the problem's schedule",
        type=real, none="0.1 from random init, the problem's from pretrained")
    reinit_criteria: bool | None = option(
        None, "compute the gradient criteria on a Xavier re-initialised copy (the paper)",
        action="toggle", none="on")

    def __post_init__(self) -> None:
        if self.pop_size < 2:
            raise ConfigError(f"--pop-size must be >= 2; got {self.pop_size}")
        if self.training == "none" and self.init in (None, "random"):
            raise ConfigError("--training none scores candidates as they are, which from a "
                              "random initialisation is chance; add --init pretrained, or "
                              "train them (--training inherit or scratch)")

    def pretrained(self) -> bool:
        return (self.init or "random") != "random"

    def nsga2(self) -> EvoFCConfig:
        """The NSGA-II settings."""
        return EvoFCConfig(pop_size=self.pop_size, n_offsprings=self.offspring or self.pop_size)

    def resolve(self, task: PruningTask) -> EvoFCOptions:
        """The search space and scoring, with the task's defaults filled in."""
        init = self.init or "random"
        lr = self.search_lr
        if lr is None:
            lr = 0.1 if init == "random" else task.finetune.lr
        epochs = task.finetune.epochs if self.search_epochs is None else self.search_epochs
        training = self.training or "inherit"
        if training != "none" and epochs == 0:
            raise ConfigError(f"--training {training} needs --search-epochs > 0 (or --training "
                              "none to score candidates as they are)")
        return EvoFCOptions(
            criteria=tuple(map(criterion_name, self.criteria or EVOFC_CRITERIA)),
            lower=self.lower_bounds or "0",
            max_ratio=0.99 if self.max_ratio is None else self.max_ratio,
            variables=self.variables or "pairs",
            reinit_criteria=True if self.reinit_criteria is None else self.reinit_criteria,
            init=init, training=training, epochs=epochs, lr=lr,
            planned=self.nsga2().evaluations(self.generations))


def evofc_setup(task: PruningTask, data: DataBundle, options: EvoFCOptions, *,
                device: str = "cpu", mode: str = "auto", progress: bool = False,
                max_macs_ratio: float | None = None, max_accuracy_drop: float | None = None,
                residual: bool | None = None, seed: int = 0,
                execution: Execution | None = None) -> SearchSetup:
    """Space, scorer and :class:`CriterionRatioProblem` of an EvoFC search of ``task``.

    With ``options.init == "random"`` the returned ``setup.task.model`` is the network
    re-initialised by :func:`~moprune.training.init.random_init` (seeded by ``seed``).
    """
    check_data(task, data)
    if options.init == "random":
        task = dataclasses.replace(task, model=random_init(task.model, seed).eval())
    space = PruningSpace.from_model(task.model, task.input_shape, policy_for(task, residual))
    scorer: Scorer = options.scoring(task.finetune).build(
        task.model, space, data, seed=seed, device=device, mode=mode, progress=progress,
        execution=execution or Execution())
    context = criterion_context(task, data, seed, device, options.criteria,
                                reinit=options.reinit_criteria)
    problem = CriterionRatioProblem(scorer, options.criteria, options.lower, options.max_ratio,
                                    options.variables, task.objectives, max_macs_ratio,
                                    max_accuracy_drop, context)
    return SearchSetup(task, data, space, scorer, problem)


class EvoFCMethod(PymooMethod):
    """NSGA-II over a ratio and a criterion per layer, with weight inheritance."""

    name = "evofc"
    summary = "NSGA-II over a ratio and a criterion per layer, with weight inheritance"
    group = "EvoFC (--algorithm evofc; defaults are the published settings)"
    Options: ClassVar[type[MethodOptions]] = EvoFCSearchOptions
    extra_files = (SUPERNET,)

    def __init__(self) -> None:
        pass

    def identity(self, options: MethodOptions, task: PruningTask, common: dict) -> dict:
        assert isinstance(options, EvoFCSearchOptions)
        if common["max_accuracy_drop"] is not None and options.init in (None, "random"):
            raise ConfigError("--max-accuracy-drop compares with the starting network, which "
                              "is untrained with --init random; use it with --init pretrained, "
                              "or constrain MACs (--max-macs-ratio) instead")
        evofc = options.resolve(task)
        return {"pop_size": options.pop_size, "generations": options.generations,
                "objectives": list(task.objectives), "max_macs_ratio": common["max_macs_ratio"],
                "residual": options.residual, "criterion": None, "criterion_sha256": None,
                "partial": None,
                self.name: {**evofc.to_dict(), "nsga2": options.nsga2().to_dict()}}

    def pretrained(self, identity: dict) -> bool:
        return options_of(identity).init != "random"

    def needs_training_data(self, identity: dict, task: PruningTask, searching: bool) -> bool:
        evofc = options_of(identity)
        return evofc.training != "none" or any(CRITERIA.get(c).needs_data
                                               for c in evofc.criteria)

    def build(self, task: PruningTask, data: DataBundle, identity: dict,
              env: BuildEnv) -> SearchSetup:
        return evofc_setup(task, data, options_of(identity), device=env.device, mode=env.mode,
                           progress=env.progress, max_macs_ratio=identity["max_macs_ratio"],
                           max_accuracy_drop=identity["max_accuracy_drop"],
                           residual=identity.get("residual"), seed=identity["seed"],
                           execution=env.execution)

    def describe(self, setup: SearchSetup, identity: dict) -> str:
        evofc = options_of(identity)
        n_train = len(setup.data.train)
        start = ("a random initialisation" if evofc.init == "random"
                 else "the problem file's weights")
        warning = ""
        if evofc.training == "inherit":
            scorer = cast(InheritanceEvaluator, setup.evaluator)
            how = (f"weight inheritance: one supernet, a global schedule of {evofc.epochs} "
                   f"epoch(s) on {n_train} training images (lr {evofc.lr}, "
                   f"{scorer.total_steps} steps shared by {evofc.planned} candidates, about "
                   f"{scorer.total_steps / evofc.planned:.1f} each), then scored")
            if scorer.total_steps < evofc.planned:
                warning = (f"\nwarning: the schedule has fewer steps ({scorer.total_steps}) than "
                           f"candidates ({evofc.planned}): most candidates train no step; raise "
                           "--search-epochs or --train-images")
        elif evofc.training == "scratch":
            how = (f"every candidate re-initialised and trained {evofc.epochs} epoch(s) on "
                   f"{n_train} training images (lr {evofc.lr}), then scored")
        else:
            how = "scored as is (no training)"
        line = (f"EvoFC from {start}; criteria {', '.join(evofc.criteria)}; ratio lower bounds "
                f"{evofc.lower}, upper bound {evofc.max_ratio}; {how}")
        return header(setup, line + warning)

    def check_cluster(self, identity: dict) -> None:
        if options_of(identity).training == "inherit":
            raise ConfigError("--workers/--scheduler cannot spread EvoFC's weight inheritance: "
                              "its candidates train one shared supernet in order; use "
                              "--training scratch or none, or leave the cluster options out")

    def algorithm(self, setup: SearchSetup, identity: dict) -> Algorithm:
        config = EvoFCConfig(**identity[self.name]["nsga2"])
        assert isinstance(setup.problem, CriterionRatioProblem)
        return evofc_nsga2(setup.problem, config)

    def run(self, setup: SearchSetup, run: RunDir, identity: dict, resume: bool,
            progress: bool, options: MethodOptions | None = None) -> list[dict]:
        front = super().run(setup, run, identity, resume, progress, options)
        if options_of(identity).training == "inherit":
            save_supernet(run, setup.evaluator)
        return front

    def replayable(self, identity: dict) -> bool:
        return options_of(identity).training != "inherit"  # a supernet's state is no score

    def rebuild(self, setup: SearchSetup, run: RunDir) -> None:
        """Load the supernet of a finished run into its rebuilt scorer."""
        if options_of(run.config()["identity"]).training == "inherit":
            load_supernet(run, setup.evaluator)

    def check_pick(self, identity: dict, rule: PickRule) -> None:
        if rule.kind == "max_accuracy_drop" and options_of(identity).init == "random":
            raise ConfigError("--max-accuracy-drop compares with the starting network, which "
                              "this EvoFC run initialised at random; use --max-macs-ratio or "
                              "--knee")

    def notes(self, identity: dict, baseline: dict) -> list[str]:
        notes = []
        if options_of(identity).training == "scratch":
            notes.append("accuracies after each candidate's training from scratch")
        elif baseline.get("scored_after_retraining"):
            notes.append("accuracies after each candidate's partial retraining")
        if "inheritance" in baseline:
            notes.append("hold-out accuracies as scored during the search, test accuracies "
                         "with the supernet's final weights, BatchNorm re-estimated per plan; "
                         "the full-width supernet reaches "
                         f"{baseline['supernet_test_accuracy']:.2%} test")
        return notes


def options_of(identity: dict) -> EvoFCOptions:
    """The EvoFC options stored in a run identity."""
    return EvoFCOptions.from_dict(identity[EvoFCMethod.name])


def save_supernet(run: RunDir, evaluator: Scorer) -> None:
    """Write the supernet's weights and schedule position to ``supernet.pt`` (atomic)."""
    buf = io.BytesIO()
    torch.save(evaluator.state_dict(), buf)
    atomic_write_bytes(run.path / SUPERNET, buf.getvalue())


def load_supernet(run: RunDir, evaluator: Scorer) -> None:
    """Load ``supernet.pt`` of a finished run into ``evaluator`` (its weights after search)."""
    path = run.path / SUPERNET
    if not path.is_file():
        raise RunDirError(f"{str(path)!r} is missing: the EvoFC run has not finished (finish it "
                          "with --resume) or the file was deleted")
    evaluator.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


__all__ = ["METHOD", "SUPERNET", "EvoFCMethod", "EvoFCOptions", "EvoFCSearchOptions",
           "evofc_setup", "load_supernet", "options_of", "save_supernet"]

METHOD = EvoFCMethod()
