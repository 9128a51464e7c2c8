"""CCEP (Shang et al., IJCAI 2022) as a search method: coevolution rounds with fine-tuning.

Each round evolves one small population per prunable group, splices the groups' winners
into one network, physically prunes and fine-tunes it (:mod:`moprune.methods.ccep_rounds`);
the network after every round is a trade-off point of the run (``candidates.jsonl``, one line
per round; the weights in ``rounds/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from torch import nn

from moprune.algorithms.coevolution import SUB_OBJECTIVES, CoevolutionConfig
from moprune.criteria import CRITERIA
from moprune.data.datasets import DataBundle
from moprune.errors import ConfigError
from moprune.methods.base import BuildEnv, Method, MethodOptions, option, redefault
from moprune.methods.ccep_rounds import (
    COEVOLUTION_LOG,
    OBJECTIVES,
    RECIPES,
    ROUNDS_DIR,
    CCEPConfig,
    load_network,
    plot_run_rounds,
    rounds_summary,
    run_ccep,
)
from moprune.methods.parsers import fraction, nonneg, positive
from moprune.methods.pymoo import PymooOptions, criterion_sha
from moprune.runs.rundir import RunDir
from moprune.tasks.setup import SearchSetup, make_problem
from moprune.tasks.task import PruningTask


@dataclass(frozen=True)
class CCEPOptions(MethodOptions):
    """CCEP's command-line options (defaults: the published CIFAR settings)."""

    refusals: ClassVar[dict[str, str]] = {
        "--partial-epochs": "--partial-epochs does not apply to ccep (it fine-tunes after "
                            "every round instead: --finetune-epochs)",
        "--partial-lr": "--partial-lr does not apply to ccep (it fine-tunes after every round "
                        "instead: --finetune-epochs)",
        "--residual": "ccep searches the problem file's pruning space (its policy decides "
                      "about residual stages); drop --residual / --no-residual",
    }

    pop_size: int = redefault(PymooOptions, "pop_size", 5)
    generations: int = redefault(PymooOptions, "generations", 10)
    criterion: str | None = redefault(PymooOptions, "criterion", None)
    rounds: int = option(20, "rounds of coevolution + fine-tuning", type=positive)
    finetune_epochs: int = option(100, "fine-tuning epochs after each round (0 = none)",
                                  type=nonneg)
    finetune_recipe: str = option(
        "published", "published: SGD lr 0.1, momentum 0.9, wd 1e-4, batch 128, lr x0.1 at "
        "half; task: the problem file's recipe", choices=RECIPES)
    keep_prob: float = option(0.95, "keep probability of the initial masks", type=fraction)
    mutation_rate: float = option(0.1, "per-bit flip probability (ccep: of the group masks; "
                                  "deeppruninges: of the mutants)", type=fraction)
    prune_bound: float = option(0.9, "prunes only while a mask keeps this fraction of the "
                                "group's channels (0.85 for ImageNet-scale)", type=fraction)
    group_objectives: str = option(
        "single", "single: accuracy, ties to fewer channels; multi: accuracy and the group's "
        "channels with NSGA-II survival", choices=SUB_OBJECTIVES)
    sequential_groups: bool = option(
        False, "evaluate group after group instead of all groups together (same results, "
        "slower; for comparison)", action="switch")

    def coevolution(self) -> CoevolutionConfig:
        """The per-group algorithms' settings."""
        return CoevolutionConfig(
            pop_size=self.pop_size, generations=self.generations, keep_prob=self.keep_prob,
            mutation_rate=self.mutation_rate, prune_bound=self.prune_bound,
            objectives=self.group_objectives, batch_groups=not self.sequential_groups)

    def __post_init__(self) -> None:
        self.coevolution()  # the per-group checks (pop_size >= 2, rates in [0, 1], ...)


class CCEPMethod(Method):
    """Cooperative coevolution rounds with fine-tuning; stops at a MACs target."""

    name = "ccep"
    summary = "cooperative coevolution, rounds with fine-tuning"
    group = "CCEP (--algorithm ccep; defaults are the published settings)"
    Options: ClassVar[type[MethodOptions]] = CCEPOptions
    extra_files = (COEVOLUTION_LOG, f"{ROUNDS_DIR}/*.pt", f"{ROUNDS_DIR}/.*.tmp")

    def identity(self, options: MethodOptions, task: PruningTask, common: dict) -> dict:
        assert isinstance(options, CCEPOptions)
        config = CCEPConfig(rounds=options.rounds, coevolution=options.coevolution(),
                            finetune_epochs=options.finetune_epochs,
                            recipe=options.finetune_recipe,
                            target_macs_ratio=common["max_macs_ratio"],
                            max_accuracy_drop=common["max_accuracy_drop"], seed=common["seed"])
        return {"pop_size": options.pop_size, "generations": options.generations,
                "objectives": list(OBJECTIVES),
                # the MACs ratio is a stopping target, not a constraint on the records
                "max_macs_ratio": None, "residual": None, "criterion": options.criterion,
                "criterion_sha256": criterion_sha(options.criterion), "partial": None,
                self.name: config.to_dict()}

    def needs_training_data(self, identity: dict, task: PruningTask, searching: bool) -> bool:
        finetunes = searching and identity[self.name]["finetune_epochs"] > 0
        return finetunes or CRITERIA.get(task.criterion).needs_data

    def check_cluster(self, identity: dict) -> None:
        raise ConfigError("--workers/--scheduler are not available with --algorithm ccep (its "
                          "rounds evaluate every group's sub-populations in one local call); "
                          "leave them out")

    def build(self, task: PruningTask, data: DataBundle, identity: dict,
              env: BuildEnv) -> SearchSetup:
        return make_problem(task, data, device=env.device, mode=env.mode, progress=False,
                            encoding="mask", objectives=OBJECTIVES, seed=identity["seed"],
                            execution=env.execution)

    def describe(self, setup: SearchSetup, identity: dict) -> str:
        config = config_of(identity)
        recipe = config.recipe_for(setup.task.finetune)
        data, cc = setup.data, config.coevolution
        return (f"{setup.task.name}: {setup.space}; {len(data.val)} hold-out images, "
                f"{len(data.test)} test images, {len(data.train)} training images; evaluation "
                f"mode {setup.evaluator.mode} on {setup.evaluator.device}\n"
                f"CCEP: up to {config.rounds} rounds of {cc.generations} generations x "
                f"{cc.pop_size} masks per group, then {recipe.epochs} fine-tuning epochs (lr "
                f"{recipe.lr}, {recipe.schedule} schedule)")

    def run(self, setup: SearchSetup, run: RunDir, identity: dict, resume: bool,
            progress: bool, options: MethodOptions | None = None) -> list[dict]:
        batch = not (isinstance(options, CCEPOptions) and options.sequential_groups)
        return run_ccep(setup, run, config_of(identity, batch_groups=batch), resume=resume,
                        progress=progress)

    def report(self, run: RunDir) -> str:
        return (rounds_summary(run) + f"\n\nRun directory: {run.path}  (plots in "
                f"{run.path / 'plots'}; `moprune export {run.path} --id ROUND --out FILE` "
                "exports a round)")

    def plots(self, run: RunDir, out: Path) -> list[Path]:
        return plot_run_rounds(run, out)

    def candidate_model(self, setup: SearchSetup, run: RunDir, record: dict) -> nn.Module:
        """The round's fine-tuned network (``rounds/round_NNN.pt``)."""
        return load_network(run, record["weights_file"]).model

    def start_model(self, setup: SearchSetup, run: RunDir, record: dict, start: str,
                    seed: int) -> nn.Module | None:
        if start == "scratch":
            raise ConfigError("a CCEP round's network is not a plan of the full network; "
                              "export it with --start scored")
        return super().start_model(setup, run, record, start, seed)


def config_of(identity: dict, batch_groups: bool = True) -> CCEPConfig:
    """The CCEP settings stored in a run identity."""
    stored = dict(identity[CCEPMethod.name])
    co = CoevolutionConfig(**stored.pop("coevolution"), batch_groups=batch_groups)
    return CCEPConfig(**stored, coevolution=co)


METHOD = CCEPMethod()

__all__ = ["METHOD", "CCEPMethod", "CCEPOptions", "config_of"]
