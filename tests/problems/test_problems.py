"""The pymoo problems (filter masks, layer ratios) and the algorithm presets."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import digits_eval_setup, one_torch_thread
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.algorithms.moo.sms import SMSEMOA
from pymoo.algorithms.soo.nonconvex.ga import GA
from pymoo.operators.crossover.pntx import TwoPointCrossover
from pymoo.operators.mutation.bitflip import BitflipMutation
from pymoo.optimize import minimize

from moprune.algorithms import ALGORITHMS
from moprune.algorithms.presets import MaskNSGA2Config, mask_nsga2, ratio_nsga2
from moprune.core.space import PruningSpace
from moprune.evaluation.evaluator import Evaluator
from moprune.problems.mask import BiasedMaskSampling, FilterMaskProblem, MinChannelsRepair
from moprune.problems.ratio import LayerRatioProblem


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    yield from one_torch_thread()


MIN_CHANNELS = 2
N_IMAGES = 64


def _setup():
    return digits_eval_setup(MIN_CHANNELS, N_IMAGES)


def make_evaluator() -> Evaluator:
    model, space, split, norm = _setup()
    return Evaluator(model, space, split, norm, device="cpu", mode="slice")


def mask_problem(**kwargs) -> FilterMaskProblem:
    return FilterMaskProblem(make_evaluator(), **kwargs)


def ratio_problem(**kwargs) -> LayerRatioProblem:
    return LayerRatioProblem(make_evaluator(), criterion="l1", max_ratio=0.9, **kwargs)


PROBLEMS = {"mask": mask_problem, "ratio": ratio_problem}


def unpruned_genome(problem) -> np.ndarray:
    if isinstance(problem, FilterMaskProblem):
        return np.ones(problem.n_var, dtype=bool)
    return np.zeros(problem.n_var)


def random_genomes(problem, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if isinstance(problem, FilterMaskProblem):
        return rng.random((n, problem.n_var)) < rng.uniform(0.05, 1.0, (n, 1))
    return rng.uniform(0.0, problem.xu, (n, problem.n_var))


def n_kept_per_group(space: PruningSpace, masks: np.ndarray) -> np.ndarray:
    return np.stack([masks[:, space.group_slice(g)].sum(1) for g in range(space.n_groups)], 1)


# --- the problem contract ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(PROBLEMS))
@pytest.mark.parametrize("objectives", [("error", "macs_ratio"),
                                        ("error", "macs_ratio", "params_ratio"),
                                        ("params_ratio", "error")])
def test_problem_contract(kind: str, objectives) -> None:
    problem = PROBLEMS[kind](objectives=objectives)
    space = problem.space
    assert problem.n_obj == len(objectives) and problem.n_ieq_constr == 0
    assert problem.n_var == (space.n_channels if kind == "mask" else space.n_groups)
    X = np.vstack([unpruned_genome(problem)[None], random_genomes(problem, 7)])
    out = problem.evaluate(X, return_values_of=["F", "accuracy", "macs", "params"],
                           return_as_dictionary=True)
    F = out["F"]
    assert F.shape == (8, len(objectives)) and np.all(np.isfinite(F))
    cols = {name: F[:, i] for i, name in enumerate(objectives)}
    assert np.all((cols["error"] >= 0) & (cols["error"] <= 1))
    for ratio in ("macs_ratio", "params_ratio"):
        if ratio in cols:
            assert np.all((cols[ratio] > 0) & (cols[ratio] <= 1))
            assert cols[ratio][0] == 1.0  # the unpruned genome
            assert np.all(cols[ratio][1:] < 1.0)
    np.testing.assert_allclose(cols["error"], 1.0 - out["accuracy"])
    assert cols["error"][0] == pytest.approx(1.0 - problem.baseline["val_accuracy"])
    if "macs_ratio" in cols:
        np.testing.assert_allclose(cols["macs_ratio"], out["macs"] / problem.baseline["macs"])
    if "params_ratio" in cols:
        np.testing.assert_allclose(cols["params_ratio"],
                                   out["params"] / problem.baseline["params"])
    assert out["macs"][0] == problem.baseline["macs"]
    assert out["params"][0] == problem.baseline["params"]
    # decoded masks always keep the space's minimum per group
    masks = problem.decode_masks(X)
    assert np.all(n_kept_per_group(space, masks) >= MIN_CHANNELS)


@pytest.mark.parametrize("kind", list(PROBLEMS))
def test_constraints_have_the_right_sign(kind: str) -> None:
    problem = PROBLEMS[kind](max_macs_ratio=0.6, max_accuracy_drop=0.05)
    assert problem.n_ieq_constr == 2
    heavy = (np.zeros(problem.n_var, dtype=bool) if kind == "mask"
             else np.full(problem.n_var, problem.xu))
    X = np.vstack([unpruned_genome(problem)[None], heavy[None], random_genomes(problem, 6, 1)])
    out = problem.evaluate(X, return_values_of=["F", "G", "accuracy"], return_as_dictionary=True)
    F, G = out["F"], out["G"]
    assert G.shape == (8, 2) and np.all(np.isfinite(G))
    macs_ratio, acc = F[:, 1], out["accuracy"]
    np.testing.assert_allclose(G[:, 0], macs_ratio - 0.6)
    np.testing.assert_allclose(G[:, 1], problem.baseline["val_accuracy"] - 0.05 - acc)
    assert G[0, 0] == pytest.approx(0.4)  # the unpruned network breaks the MACs budget ...
    assert G[0, 1] == pytest.approx(-0.05)  # ... but loses no accuracy
    assert G[1, 0] < 0  # the most pruned genome meets the MACs budget

    only_drop = PROBLEMS[kind](max_accuracy_drop=0.1)
    assert only_drop.n_ieq_constr == 1
    g = only_drop.evaluate(X[:1], return_values_of=["G"], return_as_dictionary=True)["G"]
    assert g.shape == (1, 1) and g[0, 0] == pytest.approx(-0.1)


@pytest.mark.parametrize("kind", list(PROBLEMS))
def test_bad_problem_options(kind: str) -> None:
    make = PROBLEMS[kind]
    with pytest.raises(ValueError, match="objectives"):
        make(objectives=("error", "latency"))
    with pytest.raises(ValueError, match="objectives"):
        make(objectives=("error", "error"))
    with pytest.raises(ValueError, match="objectives"):
        make(objectives=())
    with pytest.raises(ValueError, match="max_macs_ratio"):
        make(max_macs_ratio=0.0)
    with pytest.raises(ValueError, match="max_macs_ratio"):
        make(max_macs_ratio=1.5)
    with pytest.raises(ValueError, match="max_accuracy_drop"):
        make(max_accuracy_drop=-0.01)
    with pytest.raises(ValueError, match="max_accuracy_drop"):
        make(max_accuracy_drop=5.0)  # points instead of a fraction


def test_genome_keys_round_trip_and_recorder() -> None:
    for make in PROBLEMS.values():
        problem = make()
        X = random_genomes(problem, 4, seed=3)
        for x in X:
            np.testing.assert_array_equal(problem.genome_from_key(problem.genome_key(x)), x)
        records: list[dict] = []
        problem.recorder = records.extend
        problem.evaluate(X)
        assert len(records) == 4
        for rec, x in zip(records, X):
            assert rec["genome"] == problem.genome_key(x)
            assert 0 < rec["macs_ratio"] <= 1 and 0 <= rec["val_accuracy"] <= 1
            assert len(rec["kept"]) == problem.space.n_groups
            assert min(rec["kept"]) >= MIN_CHANNELS


# --- running pymoo algorithms -----------------------------------------------------------------


def run_mask(seed: int):
    problem = mask_problem()
    algorithm = mask_nsga2(problem, MaskNSGA2Config(pop_size=8))
    return problem, minimize(problem, algorithm, ("n_gen", 3), seed=seed, verbose=False)


def run_ratio(seed: int):
    problem = ratio_problem()
    return problem, minimize(problem, ratio_nsga2(problem, 8), ("n_gen", 3), seed=seed,
                             verbose=False)


@pytest.mark.parametrize("run", [run_mask, run_ratio], ids=["mask", "ratio"])
def test_minimize_is_deterministic(run) -> None:
    problem, a = run(0)
    _, b = run(0)
    _, c = run(1)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.F, b.F)
    assert a.X.shape[1] == problem.n_var and a.F.shape[1] == 2
    assert a.X.shape != c.X.shape or not np.array_equal(a.X, c.X)
    masks = problem.decode_masks(a.X)
    assert np.all(n_kept_per_group(problem.space, masks) >= MIN_CHANNELS)
    assert problem.evaluator.stats.evaluations > 0


def test_mask_nsga2_initial_population_is_repaired_and_has_the_unpruned_mask() -> None:
    problem = mask_problem()
    # low keep probabilities: most groups fall below the minimum and need the repair
    algorithm = mask_nsga2(problem, MaskNSGA2Config(pop_size=10, keep_range=(0.0, 0.05)))
    algorithm.setup(problem, termination=("n_gen", 1), seed=0)
    pop = algorithm.ask()
    X = pop.get("X")
    # (pymoo drops duplicates after the repair, without refilling: at most pop_size rows)
    assert 2 <= len(X) <= 10 and X.shape[1] == problem.n_var and X.dtype == bool
    assert len(np.unique(X, axis=0)) == len(X)
    assert any(row.all() for row in X)
    counts = n_kept_per_group(problem.space, X)
    assert np.all(counts >= MIN_CHANNELS)
    assert np.any(counts == MIN_CHANNELS)  # the repair had work to do
    # the repair has nothing left to do on them
    enc = problem.encoding
    for x in X:
        np.testing.assert_array_equal(enc.repair(x), x)


def test_mask_preset_checks_its_options() -> None:
    problem = mask_problem()
    with pytest.raises(ValueError, match="pop_size"):
        mask_nsga2(problem, MaskNSGA2Config(pop_size=1))
    with pytest.raises(ValueError, match="keep_range"):
        mask_nsga2(problem, MaskNSGA2Config(keep_range=(0.9, 0.1)))
    with pytest.raises(ValueError, match="pop_size"):
        ratio_nsga2(ratio_problem(), 1)
    assert isinstance(ALGORITHMS.get("nsga2")(problem, 6), NSGA2)


def test_sms_emoa_with_the_mask_operators() -> None:
    problem = mask_problem()
    algorithm = SMSEMOA(
        pop_size=8,
        sampling=BiasedMaskSampling((0.5, 1.0)),
        crossover=TwoPointCrossover(),
        mutation=BitflipMutation(prob=1.0, prob_var=0.05),
        repair=MinChannelsRepair(),
        eliminate_duplicates=True,
    )
    res = minimize(problem, algorithm, ("n_gen", 3), seed=0, verbose=False)
    assert res.F.ndim == 2 and res.F.shape[1] == 2 and np.all(np.isfinite(res.F))
    assert np.all(n_kept_per_group(problem.space, res.X.astype(bool)) >= MIN_CHANNELS)


def test_single_objective_ga_with_a_macs_budget() -> None:
    problem = ratio_problem(objectives=("error",), max_macs_ratio=0.7)
    res = minimize(problem, GA(pop_size=8, eliminate_duplicates=True), ("n_gen", 3), seed=0,
                   verbose=False)
    assert problem.n_obj == 1
    assert res.X is not None  # random ratios easily meet a 70 % MACs budget
    out = problem.evaluate(np.atleast_2d(res.X), return_values_of=["F", "G"],
                           return_as_dictionary=True)
    assert out["G"][0, 0] <= 0
    assert out["F"][0, 0] == pytest.approx(float(np.ravel(res.F)[0]))
