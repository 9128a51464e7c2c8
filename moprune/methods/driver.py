"""The shared search driver: any pymoo algorithm, one checkpoint per generation; the front.

:func:`run_generations` runs (or resumes) an algorithm on a run's problem, numbering every new
genome and appending it to ``candidates.jsonl``; :func:`finalize` measures the non-dominated
candidates on the test split and writes ``front.json``, the baseline and the plots. Methods
with a driver of their own (CCEP) reuse :func:`write_plots` and :func:`trade_offs`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from pymoo.core.algorithm import Algorithm
from tqdm.auto import tqdm

from moprune.core.objectives import OBJECTIVES
from moprune.errors import ConfigError
from moprune.fronts import (
    format_table,
    front_records,
    hypervolume_history,
    plot_front,
    plot_hypervolume,
    plot_kept_channels,
    trade_off_models,
)
from moprune.runs.rundir import BASELINE, FRONT, PROGRESS, RunDir, detached_problem
from moprune.tasks.setup import SearchSetup

Knee = tuple[str, tuple[float, ...] | None]  # (knee method, weights): a run's knee definition
ExtraPlots = Callable[[RunDir, Path], list[Path]]
DEFAULT_KNEE: Knee = ("distance", None)



class Recorder:
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


GenerationHook = Callable[[RunDir, Algorithm, Recorder, int], None]
ResumeHook = Callable[[RunDir, int], None]


def run_generations(setup: SearchSetup, run: RunDir, algorithm: Algorithm | None,
                    generations: int, seed: int, resume: bool, progress: bool = True,
                    on_generation: GenerationHook | None = None,
                    on_resume: ResumeHook | None = None, until: int | None = None) -> int:
    """Run (or resume) ``algorithm`` for ``generations`` generations, checkpointing each.

    Args:
        setup: Problem, scorer and data (see :func:`moprune.tasks.setup.make_problem`).
        run: The prepared run directory.
        algorithm: The configured pymoo algorithm of a new run (ignored on resume: the
            checkpoint's is used).
        generations: pymoo ``n_gen`` (the first generation is the initial population).
        seed: Seed of the algorithm's random generator.
        resume: Continue from the run's checkpoint.
        progress: Show a progress bar.
        on_generation: Called after each generation as ``(run, algorithm, recorder,
            generation)``, before the checkpoint (e.g. to log DeepPruningES's elites).
        on_resume: Called on resume as ``(run, generations done)``, after the candidates are
            trimmed to the checkpoint (e.g. to trim the method's own logs).
        until: Stop after this many generations (a checkpoint is saved; ``--resume``
            continues), e.g. to replay only what an interrupted run had done.

    Returns:
        The generations done.

    """
    problem = setup.problem
    if resume:
        state = run.load_checkpoint()
        algorithm = state["algorithm"]
        algorithm.problem = problem
        done = int(state["generation"])
        if "evaluator" in state:  # a scorer with state of its own (weight inheritance)
            setup.evaluator.load_state_dict(state["evaluator"])
        records = run.resume_candidates(state)
        if on_resume is not None:
            on_resume(run, done)
    else:
        if algorithm is None:
            raise ConfigError("a new search needs an algorithm")
        algorithm.setup(problem, termination=("n_gen", generations), seed=seed, verbose=False)
        done = 0
        records = []
        run.write_json(BASELINE, problem.baseline)
    recorder = Recorder(run, records)
    problem.recorder = recorder
    bar = tqdm(total=generations, initial=done, desc="generations", unit="gen",
               disable=not progress)
    try:
        while algorithm.has_next() and (until is None or done < until):
            recorder.generation = done + 1
            algorithm.next()
            done += 1
            if on_generation is not None:
                on_generation(run, algorithm, recorder, done)
            state = {"algorithm": algorithm, "generation": done}
            scorer_state = setup.evaluator.state_dict()
            if scorer_state:
                state["evaluator"] = scorer_state
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
    return done


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


def finalize(setup: SearchSetup, run: RunDir, knee: Knee = DEFAULT_KNEE,
             extra_plots: ExtraPlots | None = None, progress: bool = True) -> list[dict]:
    """Front of all evaluated candidates, its test accuracy, the baseline, and the plots.

    The front's candidates are measured on the test split as the scorer scored them (after
    their retraining, or with the supernet's weights); the unpruned network by a plain
    evaluator with the scorer's settings.
    """
    problem = setup.problem
    records = feasible(run.candidates(), problem.baseline, problem.max_macs_ratio,
                       problem.max_accuracy_drop)
    front = front_records(records, problem.objectives)
    baseline = dict(problem.baseline)
    scorer = setup.evaluator
    test = setup.data.test
    masks = problem.decode_masks(np.stack([problem.genome_from_key(r["genome"])
                                           for r in front]))
    baseline["test_accuracy"] = float(
        scorer.reference_evaluator(test, progress=progress).baseline().accuracy[0])
    baseline.update(scorer.report(setup.data))
    result = scorer.evaluate_on(masks, test, progress=progress)
    for r, acc in zip(front, result.accuracy):
        r["test_accuracy"] = float(acc)
    baseline["test_images"] = len(setup.data.test)
    baseline["val_images"] = len(setup.data.val)
    run.write_json(BASELINE, baseline)
    run.write_json(FRONT, front)
    run.finish()
    write_plots(run, knee, extra_plots)
    return front


def trade_offs(run: RunDir, knee: Knee = DEFAULT_KNEE) -> dict[str, dict]:
    """Heavy, light and knee members of a finished run's front, by the run's knee definition."""
    return trade_off_models(run.front(), tuple(run.config()["identity"]["objectives"]), *knee)


def write_plots(run: RunDir, knee: Knee = DEFAULT_KNEE, extra_plots: ExtraPlots | None = None,
                ids: list[int] | None = None) -> list[Path]:
    """All plots of a run: front, hypervolume, kept channels, and the method's own.

    Kept channels of the knee (or of ``ids``); the method's plots by ``extra_plots(run,
    plots folder)``. The front plot marks the heavy, light and knee members (the run's knee
    definition); runs with objectives other than error and MACs get one front plot per extra
    objective.
    """
    front = run.front()
    baseline = run.baseline()
    config = run.config()
    ident = config["identity"]
    objectives = tuple(ident["objectives"])
    test = {r["id"]: r["test_accuracy"] for r in front if "test_accuracy" in r}
    records = [{**r, "test_accuracy": test[r["id"]]} if r["id"] in test else r
               for r in feasible(run.candidates(), baseline, ident.get("max_macs_ratio"),
                                 ident.get("max_accuracy_drop"))]
    models = trade_offs(run, knee)
    out = run.path / "plots"
    paths = plot_front(records, baseline, out / "front", picks=models,
                       title=config.get("title"))
    for name in objectives:
        if name in ("error", "macs_ratio"):
            continue
        paths += plot_front(records, baseline, out / f"front_{name}", picks=models,
                            title=config.get("title"), objective=OBJECTIVES.get(name))
    history = hypervolume_history(records, objectives, [1.0] * len(objectives), baseline)
    paths += plot_hypervolume(history, out / "hypervolume")
    if extra_plots is not None:
        paths += extra_plots(run, out)
    names = [g["name"] for g in baseline["groups"]]
    sizes = [g["size"] for g in baseline["groups"]]
    chosen = [("knee", models["knee"])] if ids is None else [(f"id{i}", run.record(i))
                                                             for i in ids]
    for label, rec in chosen:
        paths += plot_kept_channels(names, rec["kept"], sizes, out / f"kept_channels_{label}",
                                    title=f"kept channels of candidate {rec['id']} ({label}), "
                                          f"{1 - rec['macs_ratio']:.1%} fewer MACs")
    return paths


MEMBER_COLUMNS = (
    ("name", "model", ""), ("id", "id", "d"), ("val_accuracy", "val acc", ".2%"),
    ("test_accuracy", "test acc", ".2%"), ("macs", "MACs", ",d"),
    ("macs_reduction", "MACs red.", ".1%"), ("params", "params", ",d"),
    ("params_reduction", "params red.", ".1%"),
)
ROLE_LABELS = {"heavy": "heavy (most accurate)", "knee": "knee", "light": "light (cheapest)"}


def member_row(name: str, record: dict, baseline: dict) -> dict:
    """A table row of a candidate record against the baseline."""
    return {"name": name, "id": record.get("id"), "val_accuracy": record["val_accuracy"],
            "test_accuracy": record.get("test_accuracy"), "macs": record["macs"],
            "macs_reduction": 1 - record["macs"] / baseline["macs"], "params": record["params"],
            "params_reduction": 1 - record["params"] / baseline["params"]}


def summary_table(run: RunDir, knee: Knee = DEFAULT_KNEE, notes: tuple[str, ...] = ()) -> str:
    """Baseline vs the heavy, knee and light members of the front, as a text table."""
    baseline = run.baseline()
    models = trade_offs(run, knee)
    rows = [member_row("baseline", {**baseline, "id": None}, baseline)]
    rows += [member_row(ROLE_LABELS[role], models[role], baseline)
             for role in ("heavy", "knee", "light")]
    lines = ["MACs per image; FLOPs = 2 x MACs", *notes]
    return format_table(rows, MEMBER_COLUMNS) + f"\n({'; '.join(lines)})"


def summary_report(run: RunDir, knee: Knee = DEFAULT_KNEE, notes: tuple[str, ...] = ()) -> str:
    """What a search prints when it ends: the summary table and the run's size."""
    return (summary_table(run, knee, notes)
            + f"\n\n{len(run.candidates())} candidates evaluated, {len(run.front())} on the "
              f"front. Run directory: {run.path}  (plots in {run.path / 'plots'})")


__all__ = ["DEFAULT_KNEE", "MEMBER_COLUMNS", "ExtraPlots", "Knee", "Recorder", "feasible",
           "finalize", "member_row", "run_generations", "summary_report", "summary_table",
           "trade_offs", "write_plots"]
