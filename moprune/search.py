"""The search loop: any pymoo algorithm on a pruning problem, checkpointed per generation."""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pymoo.core.algorithm import Algorithm
from tqdm.auto import tqdm

from moprune.algorithms import ALGORITHMS
from moprune.analysis import (
    ROLES,
    front_records,
    hypervolume_history,
    plot_elites_history,
    plot_front,
    plot_hypervolume,
    plot_kept_channels,
    plot_rounds,
    trade_off_models,
)
from moprune.evaluator import Evaluator
from moprune.execution import Execution
from moprune.inheritance import InheritanceEvaluator
from moprune.retraining import RetrainingEvaluator
from moprune.runs import (
    BASELINE,
    EXTRA_FILES,
    FRONT,
    PROGRESS,
    RunDir,
    RunDirError,
    atomic_write_bytes,
    detached_problem,
)
from moprune.task import SearchSetup
from moprune.training import evaluate_accuracy


@dataclass(frozen=True)
class SearchConfig:
    """Search settings.

    Attributes:
        pop_size: Population size.
        generations: Generations (pymoo ``n_gen`` termination).
        seed: Seed of the algorithm's random generator.
        algorithm: Registered algorithm name (``moprune.algorithms.ALGORITHMS``).

    """

    pop_size: int = 40
    generations: int = 20
    seed: int = 0
    algorithm: str = "nsga2"

    def __post_init__(self) -> None:
        if self.pop_size < 2:
            raise ValueError(f"--pop-size must be >= 2; got {self.pop_size}")
        if self.generations < 1:
            raise ValueError(f"--generations must be >= 1; got {self.generations}")
        ALGORITHMS.get(self.algorithm)  # unknown names fail here, listing the valid ones


ELITES = EXTRA_FILES[1]


class _Recorder:
    """Numbers new genomes, tags them with the generation and appends them to the run."""

    def __init__(self, run: RunDir, records: list[dict]) -> None:
        self.run = run
        self.records = records
        self.ids = {r["genome"]: r["id"] for r in records}
        self.generation = 0

    def __call__(self, batch: list[dict]) -> None:
        new = []
        for r in batch:
            if r["genome"] in self.ids:
                continue
            self.ids[r["genome"]] = len(self.records)
            r = {"id": len(self.records), "generation": self.generation, **r}
            self.records.append(r)
            new.append(r)
        if new:
            self.run.append_candidates(new)


def _log_elites(run: RunDir, algorithm: Algorithm, recorder: _Recorder, generation: int) -> None:
    """Append the generation's elites (algorithms that keep ``elites``, e.g. DeepPruningES)."""
    elites = getattr(algorithm, "elites", None)
    if elites is None:
        return
    problem = algorithm.problem
    row: dict = {"generation": generation}
    for role, x in zip(ROLES, elites.get("X"), strict=True):
        rid = recorder.ids[problem.genome_key(x)]
        rec = recorder.records[rid]
        row[role] = {"id": rid, "val_accuracy": rec["val_accuracy"],
                     "macs_ratio": rec["macs_ratio"]}
    run.append_jsonl(ELITES, [row])


def run_search(setup: SearchSetup, run: RunDir, config: SearchConfig, resume: bool,
               progress: bool = True, algorithm: Algorithm | None = None) -> list[dict]:
    """Run (or resume) a search and write its results into ``run``.

    Args:
        setup: Problem, evaluator and data (see ``moprune.task.make_problem``).
        run: The prepared run directory.
        config: Search settings.
        resume: Continue from the run's checkpoint.
        progress: Show progress bars.
        algorithm: A configured pymoo algorithm to use instead of the registry's
            ``config.algorithm`` preset (ignored on resume: the checkpoint's is used).

    Returns:
        The final front records (with test accuracy).

    """
    problem = setup.problem
    if resume:
        state = run.load_checkpoint()
        algorithm = state["algorithm"]
        algorithm.problem = problem
        done = int(state["generation"])
        if "evaluator" in state:  # the supernet of weight inheritance
            setup.evaluator.load_state_dict(state["evaluator"])  # type: ignore[attr-defined]
        records = run.truncate_candidates(done)
        if (run.path / ELITES).exists():
            run.filter_jsonl(ELITES, lambda r: r["generation"] <= done)
    else:
        if algorithm is None:
            algorithm = ALGORITHMS.get(config.algorithm)(problem, config.pop_size)
        algorithm.setup(problem, termination=("n_gen", config.generations), seed=config.seed,
                        verbose=False)
        done = 0
        records = []
        run.write_json(BASELINE, problem.baseline)
    recorder = _Recorder(run, records)
    problem.recorder = recorder
    bar = tqdm(total=config.generations, initial=done, desc="generations", unit="gen",
               disable=not progress)
    try:
        while algorithm.has_next():
            recorder.generation = done + 1
            algorithm.next()
            done += 1
            _log_elites(run, algorithm, recorder, done)
            state = {"algorithm": algorithm, "generation": done}
            if isinstance(setup.evaluator, InheritanceEvaluator):
                state["evaluator"] = setup.evaluator.state_dict()
            with detached_problem(algorithm):
                run.save_checkpoint(state)
            best = max(r["val_accuracy"] for r in records) if records else float("nan")
            run.write_json(PROGRESS, {"generations_done": done,
                                      "evaluated": len(records),
                                      "cache_hits": setup.evaluator.stats.cache_hits})
            bar.set_postfix(evaluated=len(records), best_acc=f"{best:.3f}")
            bar.update(1)
    finally:
        bar.close()
        problem.recorder = None
    return finalize(setup, run, progress=progress)


SUPERNET = EXTRA_FILES[2]


def save_supernet(run: RunDir, evaluator: InheritanceEvaluator) -> Path:
    """Write the supernet's weights and schedule position to ``supernet.pt`` (atomic)."""
    buf = io.BytesIO()
    torch.save(evaluator.state_dict(), buf)
    path = run.path / SUPERNET
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_supernet(run: RunDir, evaluator: InheritanceEvaluator) -> None:
    """Load ``supernet.pt`` of a finished run into ``evaluator`` (its weights after search)."""
    path = run.path / SUPERNET
    if not path.is_file():
        raise RunDirError(f"{str(path)!r} is missing: the EvoFC run has not finished (finish it "
                          "with --resume) or the file was deleted")
    evaluator.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def _supernet_summary(scorer: InheritanceEvaluator, setup: SearchSetup) -> dict:
    """How inheritance runs were scored, and the full-width supernet after the search."""
    full = scorer.pruned(np.ones(setup.space.n_channels, dtype=bool))  # BN re-estimated once
    r = scorer.recipe
    data, norm, device = setup.data, setup.data.normalization, scorer.device
    return {
        "inheritance": {"epochs": r.epochs, "lr": r.lr, "schedule": r.schedule,
                        "planned": scorer.planned, "trained": scorer.trained,
                        "total_steps": scorer.total_steps},
        "supernet_val_accuracy": evaluate_accuracy(full, data.val, norm, device=device)[0],
        "supernet_test_accuracy": evaluate_accuracy(full, data.test, norm, device=device)[0],
    }


def feasible(records: list[dict], baseline: dict, max_macs_ratio: float | None,
             max_accuracy_drop: float | None) -> list[dict]:
    """Records meeting the search constraints (all records when none does, with a warning)."""
    ok = [r for r in records
          if (max_macs_ratio is None or r["macs_ratio"] <= max_macs_ratio)
          and (max_accuracy_drop is None
               or r["val_accuracy"] >= baseline["val_accuracy"] - max_accuracy_drop)]
    if not ok:
        print("warning: no candidate meets the constraints; the front below ignores them")
        return records
    return ok


def finalize(setup: SearchSetup, run: RunDir, progress: bool = True) -> list[dict]:
    """Front of all evaluated candidates, its test accuracy, and the plots."""
    problem = setup.problem
    records = feasible(run.candidates(), problem.baseline, problem.max_macs_ratio,
                       problem.max_accuracy_drop)
    objectives = problem.objectives
    front = front_records(records, objectives)
    baseline = dict(problem.baseline)
    # a cluster's evaluator (moprune.distributed) measures the front with its local scorer
    scorer = getattr(setup.evaluator, "local", setup.evaluator)
    retrained = isinstance(scorer, RetrainingEvaluator)
    mode = scorer.reference.mode if retrained else getattr(scorer, "mode", "auto")
    # the search's precision, not compiled: the test split is measured once
    execution = dataclasses.replace(getattr(scorer, "execution", Execution()), compile=False)
    test_eval = Evaluator(setup.task.model, setup.space, setup.data.test,
                          setup.data.normalization, device=scorer.device,  # type: ignore
                          mode=mode if mode in ("gate", "slice") else "auto",
                          progress=progress, execution=execution)
    decode = problem.genome_from_key  # type: ignore[attr-defined]
    masks = problem.decode_masks(np.stack([decode(r["genome"]) for r in front]))
    baseline["test_accuracy"] = float(test_eval.baseline().accuracy[0])
    if isinstance(scorer, InheritanceEvaluator):
        # the front on the supernet's final weights; the supernet saved for export
        test = scorer.evaluate_on(masks, setup.data.test)
        baseline.update(_supernet_summary(scorer, setup))
        save_supernet(run, scorer)
    elif isinstance(scorer, RetrainingEvaluator):
        # the front's test accuracy after the same (seeded) partial retraining it was scored with
        test = scorer.evaluate_on(masks, setup.data.test)
        baseline["retrain"] = dataclasses.asdict(scorer.config)
    else:
        test = test_eval.evaluate_masks(masks)
    baseline["scored_after_retraining"] = retrained
    for r, acc in zip(front, test.accuracy):
        r["test_accuracy"] = float(acc)
    baseline["test_images"] = len(setup.data.test)
    baseline["val_images"] = len(setup.data.val)
    run.write_json(BASELINE, baseline)
    run.write_json(FRONT, front)
    write_plots(run)
    return front


def run_knee(config: dict) -> tuple[str, tuple[float, ...] | None]:
    """The knee definition of a run (DeepPruningES stores its own; otherwise the default)."""
    es = config["identity"].get("deeppruninges")
    if es is None:
        return "distance", None
    weights = es.get("knee_weights")
    return es["knee_method"], None if weights is None else tuple(weights)


def run_trade_offs(run: RunDir) -> dict[str, dict]:
    """Heavy, light and knee members of a finished run's front, by the run's knee definition."""
    config = run.config()
    method, weights = run_knee(config)
    return trade_off_models(run.front(), tuple(config["identity"]["objectives"]), method,
                            weights)


def write_plots(run: RunDir, ids: list[int] | None = None) -> list[Path]:
    """Front and hypervolume plots of a run, and kept channels of the knee (or of ``ids``).

    The front plot marks the heavy, light and knee members (the run's knee definition).
    Round-based runs (CCEP) also get ``rounds``: accuracy against MACs reduction per round;
    runs with an elite log (DeepPruningES) get ``elites``: the three elites per generation.
    """
    front = run.front()
    baseline = run.baseline()
    config = run.config()
    ident = config["identity"]
    objectives = tuple(ident["objectives"])
    test = {r["id"]: r["test_accuracy"] for r in front if "test_accuracy" in r}
    candidates = run.candidates()
    records = [{**r, "test_accuracy": test[r["id"]]} if r["id"] in test else r
               for r in feasible(candidates, baseline, ident.get("max_macs_ratio"),
                                 ident.get("max_accuracy_drop"))]
    models = run_trade_offs(run)
    knee = models["knee"]
    out = run.path / "plots"
    paths = plot_front(records, baseline, out / "front", picks=models,
                       title=config.get("title"))
    history = hypervolume_history(records, objectives, [1.0] * len(objectives), baseline)
    paths += plot_hypervolume(history, out / "hypervolume")
    names = [g["name"] for g in baseline["groups"]]
    sizes = [g["size"] for g in baseline["groups"]]
    if all("round" in r for r in records) and records:
        paths += plot_rounds(candidates, baseline, out / "rounds", title=config.get("title"))
    elites = run.read_jsonl(ELITES)
    if elites:
        paths += plot_elites_history(elites, baseline, out / "elites", title=config.get("title"))
    chosen = [("knee", knee)] if ids is None else [(f"id{i}", run.record(i)) for i in ids]
    for label, rec in chosen:
        paths += plot_kept_channels(names, rec["kept"], sizes, out / f"kept_channels_{label}",
                                    title=f"kept channels of candidate {rec['id']} ({label}), "
                                          f"{1 - rec['macs_ratio']:.1%} fewer MACs")
    return paths


__all__ = ["ELITES", "FRONT", "SearchConfig", "finalize", "run_knee", "run_search",
           "run_trade_offs", "write_plots"]
