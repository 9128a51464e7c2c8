"""GP search for pruning functions: pymoo operators, the problem, elitism, runs and the CLI."""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import digits_bundle

from moprune.algorithms.gp import (
    ElitistGP,
    GPConfig,
    SubtreeCrossover,
    SubtreeMutation,
    TreeSampling,
    deap_random,
)
from moprune.cli.main import main
from moprune.core.encoding import RatioEncoding
from moprune.core.space import PruningSpace
from moprune.criteria import CRITERIA, ScoreContext, rank_channels
from moprune.criteria.gp.function import load_function
from moprune.criteria.gp.library import SEEDS
from moprune.criteria.gp.primitives import parse
from moprune.evaluation.evaluator import Evaluator
from moprune.methods.gp_evolve.evolve import BEST, GENERATIONS, evolve
from moprune.problems.function import FunctionProblem, ProxyTask, geometric_mean
from moprune.runs.rundir import RunDir
from moprune.tasks.task import TaskOptions, load_problem_file

DEMO = Path(__file__).resolve().parents[2] / "moprune" / "tasks" / "digits.py"


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def digits_task(weights: Path, ratios=(0.3,), name="digits") -> ProxyTask:
    task = load_problem_file(DEMO, TaskOptions(weights=weights))
    data = digits_bundle()
    space = PruningSpace.from_model(task.model, task.input_shape, task.policy)
    val = data.val.subset(200)
    scorer = Evaluator(task.model, space, val, data.normalization)
    ctx = ScoreContext.from_split(data.train, data.normalization, 0, n_images=320)
    return ProxyTask(name, task.model, space, scorer, ctx, ratios, task.policy.min_channels)


@pytest.fixture(scope="module")
def problem(digits_weights) -> FunctionProblem:
    return FunctionProblem([digits_task(digits_weights)], time_limit=5.0)


class NoCheck:
    """A problem stand-in for operator tests: every tree is valid."""


class RejectAll:
    def check(self, expression: str) -> str:
        return "rejected"


def _X(expressions):
    return np.array(expressions, dtype=object)[:, None]


# --------------------------------------------------------------------------- operators


def test_deap_draws_are_seeded_and_leave_the_global_random_state_alone() -> None:
    state = random.getstate()
    a = TreeSampling((), max_height=10)._do(NoCheck(), 6,
                                            random_state=np.random.default_rng(1))
    b = TreeSampling((), max_height=10)._do(NoCheck(), 6,
                                            random_state=np.random.default_rng(1))
    c = TreeSampling((), max_height=10)._do(NoCheck(), 6,
                                            random_state=np.random.default_rng(2))
    assert random.getstate() == state
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    from deap import gp
    with deap_random(np.random.default_rng(0)):
        assert gp.random is not random
    assert gp.random is random


def test_sampling_puts_the_seeds_first_then_distinct_valid_trees() -> None:
    seeds = tuple(SEEDS.values())
    X = TreeSampling(seeds, depth=(1, 3), max_height=6)._do(
        NoCheck(), 12, random_state=np.random.default_rng(0))
    assert X.shape == (12, 1)
    assert X[:7, 0].tolist() == list(seeds)
    assert len(set(X[:, 0])) == 12
    assert all(parse(e).height <= 6 for e in X[:, 0])
    with pytest.raises(RuntimeError, match="could not generate"):
        TreeSampling((), max_tries=2)._do(RejectAll(), 3, random_state=np.random.default_rng(0))


def test_crossover_and_mutation_give_parseable_trees_within_the_height_limit() -> None:
    parents = np.array([[[SEEDS["snr"]], [SEEDS["filter_l1"]]],
                        [[SEEDS["fisher"]], [SEEDS["geometric_median"]]]], dtype=object)
    Y = SubtreeCrossover(prob=1.0, max_height=8)._do(NoCheck(), parents,
                                                      random_state=np.random.default_rng(0))
    assert Y.shape == parents.shape
    assert all(parse(str(e)).height <= 8 for e in Y.flatten())
    assert Y.flatten().tolist() != parents.flatten().tolist()
    M = SubtreeMutation(prob=1.0, max_height=8)._do(
        NoCheck(), _X(list(SEEDS.values())), random_state=np.random.default_rng(0))
    assert sum(a != b for a, b in zip(M[:, 0], SEEDS.values(), strict=True)) >= 5
    assert all(parse(str(e)).height <= 8 for e in M[:, 0])


def test_rejected_offspring_fall_back_to_their_parents() -> None:
    parents = np.array([[[SEEDS["snr"]]], [[SEEDS["fisher"]]]], dtype=object)
    Y = SubtreeCrossover(prob=1.0)._do(RejectAll(), parents,
                                       random_state=np.random.default_rng(0))
    assert Y.tolist() == parents.tolist()
    X = _X([SEEDS["snr"]])
    assert SubtreeMutation(prob=1.0)._do(RejectAll(), X, random_state=np.random.default_rng(0)
                                         ).tolist() == X.tolist()


def test_probability_zero_changes_nothing() -> None:
    X = _X(list(SEEDS.values()))
    assert SubtreeMutation(prob=0.0)._do(NoCheck(), X, random_state=np.random.default_rng(0)
                                         ).tolist() == X.tolist()


@pytest.mark.parametrize("bad", [dict(elites=20), dict(crossover=1.5), dict(pop_size=1),
                                 dict(init_depth=(3, 1)), dict(seeds=("add(P)",))])
def test_gp_config_rejects_bad_settings(bad) -> None:
    with pytest.raises(ValueError):
        GPConfig(**bad)


# --------------------------------------------------------------------------- the problem


def test_fitness_of_the_l1_seed_equals_pruning_by_the_l1_criterion(problem) -> None:
    task = problem.tasks[0]
    (outcome,) = problem.evaluate_expressions([SEEDS["filter_l1"]])
    scores = CRITERIA.get("l1").score(task.model, task.space)
    enc = RatioEncoding(task.space, rank_channels(task.space, scores), task.min_channels, 0.3)
    masks = enc.decode_masks(np.array([[0.3] * task.space.n_groups]))
    expected = float(task.scorer.evaluate_masks(masks).accuracy[0])
    assert outcome.valid and outcome.accuracies == (expected,)
    assert outcome.fitness == pytest.approx(expected)


def test_invalid_functions_score_zero_with_a_reason(problem) -> None:
    const, slow = problem.evaluate_expressions(["N", "inv(matmul(Q, transpose(Q)))"])
    assert not const.valid and const.fitness == 0.0 and "constant" in const.reason
    assert problem.check("N") is not None and problem.check(SEEDS["snr"]) is None
    tight = FunctionProblem(problem.tasks, time_limit=1e-6)
    (out,) = tight.evaluate_expressions([SEEDS["fisher"]])
    assert not out.valid and "time limit" in out.reason


def test_objectives_and_geometric_mean(problem, digits_weights) -> None:
    assert geometric_mean([0.25, 1.0]) == pytest.approx(0.5)
    assert geometric_mean([0.0, 1.0]) == 0.0
    two = FunctionProblem([problem.tasks[0], digits_task(digits_weights, (0.5,), "d2")],
                          objectives="tasks")
    out = two.evaluate(_X([SEEDS["snr"]]), return_as_dictionary=True)
    (o,) = two.evaluate_expressions([SEEDS["snr"]])
    assert out["F"].shape == (1, 2)
    np.testing.assert_allclose(out["F"][0], [1 - a for a in o.accuracies])
    with pytest.raises(ValueError, match="objectives"):
        FunctionProblem(problem.tasks, objectives="sum")
    with pytest.raises(ValueError, match="ratios"):
        digits_task(digits_weights, (1.0,))


def test_elitism_keeps_the_best_of_each_generation(problem) -> None:
    algo = ElitistGP(GPConfig(pop_size=8, generations=3, elites=3, max_height=6))
    algo.setup(problem, termination=("n_gen", 3), seed=0, verbose=False)
    algo.next()
    best = sorted(algo.pop, key=lambda ind: ind.F[0])[:3]
    algo.next()
    kept = {str(ind.X[0]) for ind in algo.pop}
    assert {str(ind.X[0]) for ind in best} <= kept
    assert len(algo.pop) == 8


# --------------------------------------------------------------------------- runs


def _run(problem, path: Path, generations: int = 3, seed: int = 0) -> list[dict]:
    run = RunDir(path)
    run.create({"identity": {"test": True}})
    return evolve(problem, GPConfig(pop_size=8, generations=generations, max_height=6), run,
                  seed, progress=False)


def _records(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in RunDir(path).candidates()]


def test_same_seed_same_search_and_the_best_is_saved(problem, digits_weights, tmp_path) -> None:
    rows = _run(problem, tmp_path / "a")
    fresh = FunctionProblem([digits_task(digits_weights)], time_limit=5.0)
    _run(fresh, tmp_path / "b")
    assert _records(tmp_path / "a") == _records(tmp_path / "b")
    assert (tmp_path / "a" / BEST).read_text() == (tmp_path / "b" / BEST).read_text()
    assert [r["generation"] for r in rows] == [1, 2, 3]
    assert all(b["best_fitness"] >= a["best_fitness"] for a, b in zip(rows, rows[1:]))
    best = load_function(tmp_path / "a" / BEST)
    assert best.info["fitness"] == rows[-1]["best_fitness"]
    assert (tmp_path / "a" / "plots" / "fitness.png").stat().st_size > 0
    # the saved (simplified) function prunes to the same accuracy
    (again,) = fresh.evaluate_expressions([best.expression])
    assert again.fitness == pytest.approx(rows[-1]["best_fitness"])


class Interrupted(Exception):
    pass


def test_resume_after_an_interruption_equals_an_uninterrupted_run(
        problem, digits_weights, tmp_path, monkeypatch) -> None:
    _run(problem, tmp_path / "full")
    real = RunDir.save_checkpoint

    def crash(self, state):
        real(self, state)
        if state["generation"] == 2:
            raise Interrupted

    monkeypatch.setattr(RunDir, "save_checkpoint", crash)
    fresh = FunctionProblem([digits_task(digits_weights)], time_limit=5.0)
    with pytest.raises(Interrupted):
        _run(fresh, tmp_path / "cut")
    monkeypatch.undo()
    again = FunctionProblem([digits_task(digits_weights)], time_limit=5.0)
    evolve(again, GPConfig(pop_size=8, generations=3, max_height=6), RunDir(tmp_path / "cut"),
           0, resume=True, progress=False)
    assert _records(tmp_path / "full") == _records(tmp_path / "cut")
    assert RunDir(tmp_path / "full").read_jsonl(GENERATIONS) == \
        RunDir(tmp_path / "cut").read_jsonl(GENERATIONS)


# --------------------------------------------------------------------------- CLI


def _evolve_args(weights: Path, out: Path, *extra: str) -> list[str]:
    return ["evolve", f"digits={weights}", "--out", str(out), "--pop-size", "8",
            "--generations", "2", "--eval-images", "150", "--train-images", "400",
            "--ratios", "0.3", "--max-height", "6", "--quiet", *extra]


def test_cli_evolve_then_search_with_the_evolved_criterion(digits_weights, tmp_path,
                                                           capsys) -> None:
    out = tmp_path / "gp"
    assert main(_evolve_args(digits_weights, out)) == 0
    text = capsys.readouterr().out
    assert "best fitness" in text and f"gp:{out / BEST}" in text
    assert json.loads((out / BEST).read_text())["format"] == "moprune-gp-function"
    # the run refuses to be overwritten, resumes when finished
    assert main(_evolve_args(digits_weights, out)) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(_evolve_args(digits_weights, out, "--resume")) == 0
    # the evolved function as the criterion of a search
    run = tmp_path / "search"
    status = main(["search", str(DEMO), "--weights", str(digits_weights), "--pop-size", "4",
                   "--generations", "1", "--eval-images", "64", "--criterion",
                   f"gp:{out / BEST}", "--out", str(run), "--quiet"])
    assert status == 0, capsys.readouterr().err
    identity = json.loads((run / "config.json").read_text())["identity"]
    assert identity["criterion"] == f"gp:{(out / BEST).resolve()}"
    assert identity["criterion_sha256"]


@pytest.mark.parametrize("args, message", [
    (["--criterion", "nope"], "unknown criterion 'nope'"),
    (["--criterion", "gp:/no/such.gp.json"], "no file"),
    (["--algorithm", "evofc", "--criterion", "l1"], "--criterion does not apply to evofc"),
    (["--algorithm", "evofc", "--criteria", "l1,gp:/no/such.gp.json"], "no file"),
])
def test_search_refuses_bad_criteria_before_writing(args, message, digits_weights, tmp_path,
                                                    capsys) -> None:
    out = tmp_path / "run"
    status = main(["search", str(DEMO), "--weights", str(digits_weights), "--out", str(out),
                   "--quiet", *args])
    assert status == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--ratios", "1.2"], "ratios must lie in (0, 1)"),
    (["--max-classes", "1"], "--max-classes must be >= 2"),
    (["--time-limit", "0"], "--time-limit must be > 0"),
    (["--elites", "8"], "elites must lie in [0, pop_size)"),
])
def test_evolve_refuses_bad_options(extra, message, digits_weights, tmp_path, capsys) -> None:
    out = tmp_path / "gp"
    with pytest.raises(SystemExit) if extra[0] == "--ratios" else contextlib.nullcontext():
        status = main(_evolve_args(digits_weights, out, *extra))
        assert status == 2
    assert message in capsys.readouterr().err
    assert not (out / "config.json").exists()


def test_evolve_refuses_missing_task_files(tmp_path, capsys) -> None:
    status = main(["evolve", str(tmp_path / "nope.py"), "--out", str(tmp_path / "gp")])
    assert status == 2 and "no problem file" in capsys.readouterr().err
    status = main(["evolve", f"digits={tmp_path / 'none.pt'}", "--out", str(tmp_path / "gp")])
    assert status == 2 and "none.pt" in capsys.readouterr().err
