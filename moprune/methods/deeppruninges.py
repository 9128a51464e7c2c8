"""DeepPruningES (Fernandes & Yen, Information Sciences 2021) as a search method.

The (3 + 27) evolution strategy (:class:`~moprune.algorithms.deeppruninges.DeepPruningES`)
on filter masks, residual stages included, every candidate scored after a short seeded
partial retraining; the heavy, light and knee elites of every generation are logged to
``elites.jsonl`` and plotted, and the run's knee definition is the strategy's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pymoo.core.algorithm import Algorithm

from moprune.algorithms.deeppruninges import DeepPruningES, DeepPruningESConfig
from moprune.errors import ConfigError
from moprune.evaluation.retraining import final_recipe
from moprune.fronts import ROLES, plot_elites_history
from moprune.methods.base import MethodOptions, option, redefault
from moprune.methods.driver import Recorder
from moprune.methods.parsers import fraction, weights
from moprune.methods.pymoo import PymooMethod, PymooOptions
from moprune.runs.rundir import RunDir
from moprune.tasks.setup import SearchSetup
from moprune.tasks.task import PruningTask
from moprune.training.recipes import RECIPES

ELITES = "elites.jsonl"
KNEE_HELP = ("knee definition: distance (min weighted normalised L1 distance to the ideal "
             "point), tradeoff (pymoo high trade-off points) or line (max distance to the line "
             "between the extremes)")
WEIGHTS_HELP = ("weights of the distance knee, one per objective in the run's order (error, "
                "MACs), e.g. 2,1 as in the authors' later code")
KNEE_ELSEWHERE = ("--knee-method and --knee-weights choose DeepPruningES's elites; for "
                  "--algorithm {method} choose the knee afterwards with `moprune pick RUN "
                  "--knee --knee-method M`")


@dataclass(frozen=True)
class DeepPruningESOptions(PymooOptions):
    """The published settings: 30 x 11, mutation 0.2, 3 epochs of partial retraining."""

    pop_size: int = redefault(PymooOptions, "pop_size", 30)
    generations: int = redefault(PymooOptions, "generations", 11)
    partial_epochs: int = redefault(PymooOptions, "partial_epochs", 3)
    residual: bool | None = redefault(PymooOptions, "residual", True)
    mutation_rate: float = option(0.2, "per-bit flip probability of the mutants (ccep: of "
                                  "the group masks)", type=fraction)
    knee_method: str = option("distance", KNEE_HELP, elsewhere=KNEE_ELSEWHERE)
    knee_weights: tuple[float, ...] | None = option(
        None, WEIGHTS_HELP, type=weights, elsewhere=KNEE_ELSEWHERE,
        none="equal = min Manhattan distance")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.config()  # the strategy's own checks (pop_size >= 4, mutation rate, knee)

    def config(self) -> DeepPruningESConfig:
        """The strategy's settings."""
        return DeepPruningESConfig(pop_size=self.pop_size, mutation_rate=self.mutation_rate,
                                   knee_method=self.knee_method, knee_weights=self.knee_weights)


class DeepPruningESMethod(PymooMethod):
    """The (3 + 27) evolution strategy with heavy, light and knee elites."""

    name = "deeppruninges"
    summary = "the (3+27) evolution strategy with heavy/light/knee elites"
    group = "DeepPruningES (--algorithm deeppruninges; defaults are the published settings)"
    Options: ClassVar[type[MethodOptions]] = DeepPruningESOptions
    extra_files = (ELITES,)

    def __init__(self) -> None:  # no pymoo registry entry to check
        pass

    def identity(self, options: MethodOptions, task: PruningTask, common: dict) -> dict:
        assert isinstance(options, DeepPruningESOptions)
        n_obj = len(task.objectives)
        if n_obj < 2:
            raise ConfigError(f"DeepPruningES needs two or more objectives (error and MACs); the "
                              f"problem file has {list(task.objectives)}")
        if options.knee_weights is not None and len(options.knee_weights) != n_obj:
            raise ConfigError(f"--knee-weights has {len(options.knee_weights)} values; the "
                              f"problem has {n_obj} objectives ({', '.join(task.objectives)}): "
                              "give one each")
        return {**super().identity(options, task, common),
                self.name: options.config().to_dict()}

    def encoding(self) -> str:
        return "mask"  # the published genome: one bit per filter (and per residual channel)

    def algorithm(self, setup: SearchSetup, identity: dict) -> Algorithm:
        return DeepPruningES(config_of(identity))

    def on_generation(self, run: RunDir, algorithm: Algorithm, recorder: Recorder,
                      generation: int) -> None:
        """Append the generation's three elites to ``elites.jsonl``."""
        problem = algorithm.problem
        row: dict = {"generation": generation}
        for role, x in zip(ROLES, algorithm.elites.get("X"), strict=True):
            rid = recorder.ids[problem.genome_key(x)]
            rec = recorder.records[rid]
            row[role] = {"id": rid, "val_accuracy": rec["val_accuracy"],
                         "macs_ratio": rec["macs_ratio"]}
        run.append_jsonl(ELITES, [row])

    def on_resume(self, run: RunDir, generation: int) -> None:
        if (run.path / ELITES).exists():
            run.filter_jsonl(ELITES, lambda r: r["generation"] <= generation)

    def knee(self, identity: dict) -> tuple[str, tuple[float, ...] | None]:
        es = identity[self.name]
        w = es.get("knee_weights")
        return es["knee_method"], None if w is None else tuple(w)

    def plots(self, run: RunDir, out: Path) -> list[Path]:
        elites = run.read_jsonl(ELITES)
        if not elites:
            return []
        return plot_elites_history(elites, run.baseline(), out / "elites",
                                   title=run.config().get("title"))


def config_of(identity: dict) -> DeepPruningESConfig:
    """The strategy's settings stored in a run identity."""
    es = dict(identity[DeepPruningESMethod.name])
    if es.get("knee_weights") is not None:
        es["knee_weights"] = tuple(es["knee_weights"])
    return DeepPruningESConfig(**es)


METHOD = DeepPruningESMethod()
RECIPES.register(METHOD.name, final_recipe)  # export --recipe deeppruninges: the published one

__all__ = ["ELITES", "METHOD", "DeepPruningESMethod", "DeepPruningESOptions", "config_of"]
