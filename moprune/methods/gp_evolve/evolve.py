"""Run a GP search for a pruning function in a run directory (resumable), log and plot it.

Files of a run (besides ``config.json`` and ``checkpoint.pkl``):

- ``candidates.jsonl``: every function evaluated (generation, expression, formula, per-task
  accuracy, fitness, validity and why not);
- ``gp.jsonl``: one line per generation (best and median fitness, the best function);
- ``best.gp.json``: the best function so far, simplified (load it with ``gp:<file>``);
- ``plots/fitness.png`` and ``.svg``: best and median fitness per generation, with the best
  seeded metric for reference.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict
from pathlib import Path

from pymoo.core.algorithm import Algorithm
from tqdm.auto import tqdm

from moprune.algorithms.gp import GPConfig, gp_algorithm
from moprune.criteria.gp.function import PruningFunction
from moprune.criteria.gp.library import SEEDS
from moprune.problems.function import FunctionProblem, Outcome
from moprune.runs.rundir import RunDir, detached_problem

GENERATIONS = "gp.jsonl"
BEST = "best.gp.json"


def _restore(problem: FunctionProblem, records: list[dict]) -> None:
    """Put recorded outcomes back into the problem's cache (exact resume)."""
    for r in records:
        problem.outcomes[r["expression"]] = Outcome(
            r["expression"], tuple(r["accuracies"]), r["fitness"], r["valid"], r["reason"],
            r["seconds"])


def _summary(generation: int, population: list[Outcome], new: list[Outcome],
             seeds_best: float) -> dict:
    valid = [o.fitness for o in population if o.valid]
    best = max(population, key=lambda o: (o.fitness, -len(o.expression)))
    return {"generation": generation, "best_fitness": best.fitness,
            "best_accuracies": list(best.accuracies), "best_expression": best.expression,
            "median_fitness": statistics.median(valid) if valid else 0.0,
            "valid": len(valid), "population": len(population), "evaluated": len(new),
            "invalid_new": sum(not o.valid for o in new), "seeds_best": seeds_best}


def _seeds_best(problem: FunctionProblem, seeds: tuple[str, ...]) -> float:
    scored = [problem.outcomes[s].fitness for s in seeds if s in problem.outcomes]
    return max(scored) if scored else float("nan")


def save_best(run: RunDir, problem: FunctionProblem, best: Outcome, generation: int,
              settings_note: dict) -> Path:
    fn = PruningFunction(best.expression, problem.settings, "evolved").simplified()
    seed_names = {v: k for k, v in SEEDS.items()}
    info = {"fitness": best.fitness, "accuracies": dict(zip(
        [t.name for t in problem.tasks], best.accuracies, strict=True)),
        "generation": generation, "evolved_expression": best.expression,
        "seed": seed_names.get(best.expression), **settings_note}
    fn = PruningFunction(fn.expression, fn.settings, "evolved", info)
    return fn.save(run.path / BEST)


def evolve(problem: FunctionProblem, config: GPConfig, run: RunDir, seed: int,
           resume: bool = False, progress: bool = True) -> list[dict]:
    """Run (or resume) the search; returns the per-generation summaries.

    The run directory must be prepared (``RunDir.check`` and ``create``) by the caller.
    """
    if resume:
        state = run.load_checkpoint()
        algorithm: Algorithm = state["algorithm"]
        algorithm.problem = problem
        done = int(state["generation"])
        _restore(problem, run.resume_candidates(state))
        summaries = run.filter_jsonl(GENERATIONS, lambda r: r["generation"] <= done)
    else:
        algorithm = gp_algorithm(config, problem.objectives)
        algorithm.setup(problem, termination=("n_gen", config.generations), seed=seed,
                        verbose=False)
        done = 0
        summaries = []
        run.write_json("baseline.json", problem.baseline())
    note = {"tasks": [t.name for t in problem.tasks],
            "ratios": {t.name: list(t.ratios) for t in problem.tasks},
            "objectives": problem.objectives, "gp": asdict(config), "run_seed": seed}
    bar = tqdm(total=config.generations, initial=done, desc="GP generations", unit="gen",
               disable=not progress)
    try:
        while algorithm.has_next():
            problem.new = []
            algorithm.next()
            done += 1
            new = problem.new
            run.append_candidates([o.record(done) for o in new])
            population = [problem.outcomes[str(x[0])] for x in algorithm.pop.get("X")]
            row = _summary(done, population, new, _seeds_best(problem, config.seeds))
            summaries.append(row)
            run.append_jsonl(GENERATIONS, [row])
            best = problem.outcomes[row["best_expression"]]
            save_best(run, problem, best, done, note)
            with detached_problem(algorithm):
                run.save_checkpoint({"algorithm": algorithm, "generation": done})
            bar.set_postfix(best=f"{row['best_fitness']:.4f}", valid=row["valid"])
            bar.update(1)
    finally:
        bar.close()
    plot_fitness(run.path / "plots" / "fitness", summaries)
    return summaries


def plot_fitness(stem: Path, summaries: list[dict]) -> list[Path]:
    """Best and median fitness per generation (PNG and SVG)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not summaries:
        return []
    stem.parent.mkdir(parents=True, exist_ok=True)
    gens = [r["generation"] for r in summaries]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(gens, [r["best_fitness"] for r in summaries], "o-", label="best")
    ax.plot(gens, [r["median_fitness"] for r in summaries], "s--", label="median (valid)")
    seeds = summaries[-1]["seeds_best"]
    if seeds == seeds:  # not NaN
        ax.axhline(seeds, color="grey", linestyle=":", label="best seeded metric")
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness (geometric mean accuracy)")
    ax.set_title("GP search for a pruning function")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for p in paths:
        fig.savefig(p, dpi=120)
    plt.close(fig)
    return paths


__all__ = ["BEST", "GENERATIONS", "evolve", "plot_fitness", "save_best"]
