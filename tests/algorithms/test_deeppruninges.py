"""DeepPruningES: elite selection, the (3 + k) strategy as a pymoo Algorithm, residual stages,
and the run machinery (elites.jsonl, resume)."""

from __future__ import annotations

import functools
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import digits_eval_setup, model_and_space, one_torch_thread
from pymoo.core.problem import Problem
from pymoo.optimize import minimize
from torch import nn

from moprune.algorithms import ALGORITHMS
from moprune.algorithms.deeppruninges import DeepPruningES, DeepPruningESConfig
from moprune.core.plan import PruningPlan
from moprune.core.sliced import SlicedModel
from moprune.core.surgery import prune_model
from moprune.data.datasets import Normalization, Split
from moprune.errors import UnknownNameError
from moprune.evaluation.evaluator import Evaluator
from moprune.fronts.front import (
    ROLES,
    Elites,
    NoPickError,
    PickRule,
    knee_index,
    non_dominated,
    pick,
    select_elites,
    trade_off_models,
)
from moprune.methods.deeppruninges import ELITES, DeepPruningESMethod
from moprune.methods.deeppruninges import METHOD as ES
from moprune.problems.mask import FilterMaskProblem
from moprune.problems.ratio import LayerRatioProblem
from moprune.runs.rundir import RunDir, detached_problem
from moprune.tasks.setup import make_problem
from moprune.tasks.task import DataRequest, TaskOptions, load_problem_file

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "problems" / "digits_demo.py"
MIN_CHANNELS = 2
N_IMAGES = 64


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    yield from one_torch_thread()


# =============================================================================================
# select_elites on hand-computed fronts
# =============================================================================================

# Rows 0-3 are a front; row 4 is dominated by row 1 (0.2 < 0.6 and 0.5 < 0.6).
F_FRONT = np.array([[0.1, 0.9], [0.2, 0.5], [0.4, 0.2], [0.9, 0.1], [0.6, 0.6]])
# Normalised over the non-dominated rows 0-3 (error and MACs both span 0.1 .. 0.9, i.e. 0.8):
#   row 0: (0, 1)    row 1: (0.125, 0.5)    row 2: (0.375, 0.125)    row 3: (1, 0)
# equal weights, sum(f):     1,     0.625,  0.5,    1     -> knee = row 2
# weights (2, 1), 2*e + m:   1,     0.75,   0.875,  2     -> knee = row 1
# weights (1, 2), e + 2*m:   2,     1.125,  0.625,  1     -> knee = row 2
# weights (1, 0), e only:    0,     0.125,  0.375,  1     -> knee = row 0 (the heavy one)
# weights (0, 1), m only:    1,     0.5,    0.125,  0     -> knee = row 3 (the light one)


@pytest.mark.parametrize(("weights", "knee"), [
    (None, 2), ((1.0, 1.0), 2), ((2.0, 1.0), 1), ((1.0, 2.0), 2), ((1.0, 0.0), 0),
    ((0.0, 1.0), 3),
])
def test_select_elites_hand_computed(weights, knee) -> None:
    elites = select_elites(F_FRONT, knee_weights=weights)
    assert elites == Elites(heavy=0, light=3, knee=knee)
    assert elites.indices() == [0, 3, knee]


def test_knee_is_normalised_over_the_non_dominated_rows_only() -> None:
    # Row 5 (5.0, 0.15) is dominated by row 3 (0.9, 0.1). Had it been part of the min/max, the
    # error column would span 4.9 and the sums would be 1, 0.52, 0.186, 0.163: knee = row 3.
    # Over the front only the knee stays row 2 (see above).
    F = np.vstack([F_FRONT, [5.0, 0.15]])
    assert select_elites(F) == Elites(heavy=0, light=3, knee=2)


def test_line_and_tradeoff_knees_by_hand() -> None:
    # "line": the normalised extremes are (0, 1) and (1, 0); the distance of (e, m) to the line
    # e + m = 1 is |e + m - 1| / sqrt(2): 0, 0.375, 0.5, 0 (/ sqrt 2) -> row 2.
    assert select_elites(F_FRONT, knee_method="line") == Elites(0, 3, 2)
    # "tradeoff" may choose any front member; it is never the dominated row 4
    elites = select_elites(F_FRONT, knee_method="tradeoff")
    assert (elites.heavy, elites.light) == (0, 3)
    assert elites.knee in (0, 1, 2, 3)


def test_symmetric_front_tie_goes_to_the_lower_error() -> None:
    # The front of the brief: (0.5, 0.2) instead of (0.4, 0.2). Normalised, rows 1 and 2 are
    # (0.125, 0.5) and (0.5, 0.125): both sum to 0.625, a tie. The knee is looked up in the
    # non-dominated set sorted by error, so the lower-error member (row 1) wins.
    F = np.array([[0.1, 0.9], [0.2, 0.5], [0.5, 0.2], [0.9, 0.1], [0.6, 0.6]])
    assert select_elites(F) == Elites(heavy=0, light=3, knee=1)
    # with weights (1, 2) row 2 is strictly better: 1.125 vs 0.75
    assert select_elites(F, knee_weights=(1, 2)).knee == 2


def test_dominated_rows_are_never_elites() -> None:
    # row 0 dominates rows 1 and 2; row 3 dominates row 4
    F = np.array([[0.2, 0.2], [0.3, 0.2], [0.2, 0.3], [0.8, 0.05], [0.8, 0.06]])
    for method in ("distance", "line", "tradeoff"):
        elites = select_elites(F, knee_method=method)
        assert set(elites.indices()) <= {0, 3}
        assert (elites.heavy, elites.light) == (0, 3)


def test_duplicates_first_index_wins() -> None:
    # rows 0/2 and 1/4 and 3/5 are identical
    F = np.array([[0.3, 0.3], [0.1, 0.9], [0.3, 0.3], [0.9, 0.1], [0.1, 0.9], [0.9, 0.1]])
    # front {0, 1, 3}; normalised (0.25, 0.25), (0, 1), (1, 0): sums 0.5, 1, 1 -> knee 0
    assert select_elites(F) == Elites(heavy=1, light=3, knee=0)
    # the same matrix with the duplicates first
    G = F[[2, 4, 5, 0, 1, 3]]
    assert select_elites(G) == Elites(heavy=1, light=2, knee=0)
    # all rows identical: every elite is row 0 (as in generation 0 of the strategy)
    assert select_elites(np.tile([0.5, 1.0], (6, 1))) == Elites(0, 0, 0)


def test_ties_in_the_primary_objective() -> None:
    # two objectives: equal error, the higher-MACs row is dominated
    F = np.array([[0.1, 0.5], [0.1, 0.3], [0.5, 0.1]])
    assert select_elites(F).heavy == 1
    # equal MACs: the higher-error row is dominated
    F = np.array([[0.5, 0.1], [0.1, 0.5], [0.3, 0.1]])
    assert select_elites(F).light == 2
    # three objectives: rows 0 and 1 tie in error and are both non-dominated (row 0 is better
    # in the third objective); the tie goes to the lower MACs (row 1)
    F = np.array([[0.1, 0.5, 0.2], [0.1, 0.3, 0.9], [0.5, 0.1, 0.1]])
    assert select_elites(F).heavy == 1
    # tie in MACs between rows 0 and 1: the lower error (row 1) is the light elite
    F = np.array([[0.2, 0.1, 0.5], [0.1, 0.1, 0.9], [0.5, 0.3, 0.1]])
    assert select_elites(F).light == 1


def test_constraint_violation() -> None:
    F = np.array([[0.05, 0.95], [0.1, 0.9], [0.2, 0.5], [0.4, 0.2], [0.9, 0.1]])
    # rows 1-3 feasible. Row 0 dominates row 1 but is infeasible, so it is never chosen.
    # Normalised over {1, 2, 3}: error spans 0.1..0.4 (0.3), MACs 0.2..0.9 (0.7):
    #   row 1: (0, 1) = 1, row 2: (1/3, 3/7) = 0.762, row 3: (1, 0) = 1 -> knee row 2
    cv = np.array([0.2, 0.0, 0.0, 0.0, 0.1])
    assert select_elites(F, cv) == Elites(heavy=1, light=3, knee=2)
    assert select_elites(F, cv[:, None]) == Elites(heavy=1, light=3, knee=2)  # pymoo's shape
    # negative CV counts as feasible
    assert select_elites(F, -np.ones(5)) == select_elites(F) == select_elites(F, None)
    # none feasible: the least-violating rows {1, 2, 4} (CV 0.1). Normalised over them:
    #   row 1: (0, 1) = 1, row 2: (0.125, 0.5) = 0.625, row 4: (1, 0) = 1 -> knee row 2
    cv = np.array([0.3, 0.1, 0.1, 0.2, 0.1])
    assert select_elites(F, cv) == Elites(heavy=1, light=4, knee=2)
    # a single least-violating row is all three elites
    cv = np.array([0.3, 0.4, 0.05, 0.2, 0.1])
    assert select_elites(F, cv) == Elites(2, 2, 2)


def test_other_objective_columns() -> None:
    # heavy minimises column 1, light column 0: the roles swap
    assert select_elites(F_FRONT, heavy_objective=1, light_objective=0) == Elites(3, 0, 2)
    # a three-objective matrix, heavy = column 0, light = column 2
    F = np.array([[0.1, 0.5, 0.9], [0.5, 0.1, 0.5], [0.9, 0.9, 0.1]])
    assert select_elites(F, light_objective=2) == Elites(0, 2, 1)


def test_select_elites_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        select_elites(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="m>=2"):
        select_elites(np.zeros((3, 1)))
    with pytest.raises(ValueError, match="light_objective=2"):
        select_elites(F_FRONT, light_objective=2)
    with pytest.raises(ValueError, match="knee weights"):
        select_elites(F_FRONT, knee_weights=(1.0, 1.0, 1.0))
    with pytest.raises(UnknownNameError, match="knee"):
        select_elites(F_FRONT, knee_method="elbow")


def _dominates(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all(a <= b) and np.any(a < b))


def _lex_best(F: np.ndarray, rows, primary: int) -> int:
    """Reference: smallest ``primary``, then the other columns in order, then the index."""
    others = [j for j in range(F.shape[1]) if j != primary]
    return min(rows, key=lambda i: (F[i, primary], *(F[i, j] for j in others), i))


def test_elites_property_on_random_matrices() -> None:
    rng = np.random.default_rng(0)
    for trial in range(150):
        n, m = int(rng.integers(1, 16)), int(rng.integers(2, 4))
        F = rng.random((n, m))
        if trial % 2:  # coarse values: ties and duplicates
            F = np.round(F, 1)
        cv = None
        if trial % 3 == 0:
            cv = np.where(rng.random(n) < 0.4, rng.random(n).round(1), 0.0)
        rows = np.arange(n)
        if cv is not None:
            rows = rows[cv <= 0] if np.any(cv <= 0) else rows[cv == cv.min()]
        nd = rows[non_dominated(F[rows])]
        # the reference non-dominated set, by brute force (first of duplicates)
        brute = [i for i in rows
                 if not any(_dominates(F[j], F[i]) for j in rows)
                 and not any(np.array_equal(F[j], F[i]) for j in rows if j < i)]
        assert sorted(nd.tolist()) == sorted(brute)
        weights = tuple(rng.random(m) + 0.01)
        methods = [("distance", None), ("distance", weights), ("tradeoff", None)]
        if m == 2:
            methods.append(("line", None))
        for method, w in methods:
            elites = select_elites(F, cv, method, w)
            assert elites.heavy == _lex_best(F, nd, 0)
            assert elites.light == _lex_best(F, nd, 1)
            assert F[elites.heavy, 0] == F[rows, 0].min()
            assert F[elites.light, 1] == F[rows, 1].min()
            assert elites.knee == nd[knee_index(F[nd], method, w)]
            for i in elites.indices():
                assert i in brute  # feasible (or least violating) and non-dominated


# =============================================================================================
# trade_off_models agrees with pick and with the elites
# =============================================================================================


def _records(F: np.ndarray, base_macs: int = 10**6) -> list[dict]:
    return [{"id": i, "val_accuracy": 1.0 - float(f[0]), "macs_ratio": float(f[1]),
             "macs": int(round(f[1] * base_macs)), "params_ratio": float(f[1]),
             "params": int(round(f[1] * 1000))} for i, f in enumerate(F)]


def _random_records(rng: np.random.Generator, n: int) -> list[dict]:
    """Records around a convex front, ids shuffled; values on a fine grid, no ties."""
    t = np.sort(rng.choice(np.arange(1, 1000), size=n, replace=False)) / 1000
    err = (1 - t) ** 2 * 0.8 + rng.random(n) * 0.1
    macs = t
    F = np.column_stack([err, macs])
    records = _records(F)
    for r in records:  # the macs count rounds; keep the ratio consistent with it
        r["macs_ratio"] = r["macs"] / 10**6
    order = rng.permutation(n)
    return [records[i] for i in order]


KNEE_RULES = [("distance", None), ("distance", (2 / 3, 1 / 3)), ("distance", (1.0, 3.0)),
              ("line", None), ("tradeoff", None)]


@pytest.mark.parametrize(("method", "weights"), KNEE_RULES)
def test_trade_off_models_agree_with_pick(method, weights) -> None:
    rng = np.random.default_rng(1)
    baseline = {"val_accuracy": 1.0, "macs": 10**6}
    checked = 0
    for _ in range(40):
        records = _random_records(rng, int(rng.integers(4, 25)))
        models = trade_off_models(records, knee_method=method, knee_weights=weights)
        F = np.array([[1 - r["val_accuracy"], r["macs_ratio"]] for r in records])
        front = [records[i] for i in non_dominated(F)]
        if len(front) < 3:
            continue  # a two-member front is a tie for some rules (see the tie test below)
        checked += 1
        rule = PickRule("knee", knee_method=method, knee_weights=weights)
        assert models["knee"]["id"] == pick(records, baseline, rule)["id"]
        assert models["knee"] in front
        best_acc = max(r["val_accuracy"] for r in records)
        heavy = [r for r in records if r["val_accuracy"] == best_acc]
        assert models["heavy"] is min(heavy, key=lambda r: r["macs"])
        cheapest = min(r["macs_ratio"] for r in records)
        light = [r for r in records if r["macs_ratio"] == cheapest]
        assert models["light"] is max(light, key=lambda r: r["val_accuracy"])
    assert checked >= 20


def test_trade_off_models_uses_the_error_and_macs_columns() -> None:
    records = _records(F_FRONT)
    models = trade_off_models(records)
    assert [models[r]["id"] for r in ROLES] == [0, 3, 2]
    # MACs listed first: heavy is still the most accurate, light still the cheapest
    models = trade_off_models(records, objectives=("macs_ratio", "error"))
    assert [models[r]["id"] for r in ROLES] == [0, 3, 2]
    # without MACs, light minimises the other objective
    models = trade_off_models(records, objectives=("error", "params_ratio"))
    assert [models[r]["id"] for r in ROLES] == [0, 3, 2]
    with pytest.raises(NoPickError):
        trade_off_models([])


@pytest.mark.parametrize("F", [
    np.array([[0.1, 0.9], [0.5, 0.2]]),  # two members: normalised (0, 1) and (1, 0)
    np.array([[0.1, 0.9], [0.2, 0.5], [0.5, 0.2], [0.9, 0.1]]),  # symmetric: rows 1, 2 tie
], ids=["two-member-front", "symmetric-front"])
def test_trade_off_knee_equals_pick_knee_on_ties(F) -> None:
    """Tied knees go to the more accurate member in both (a two-member front always ties)."""
    records = _records(F)
    knee = trade_off_models(records)["knee"]
    picked = pick(records, {"val_accuracy": 1.0}, PickRule("knee"))
    assert knee["id"] == picked["id"]


# =============================================================================================
# the config
# =============================================================================================


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"pop_size": 3}, r"pop_size >= 4"),
    ({"pop_size": 0}, r"pop_size >= 4"),
    ({"pop_size": True}, r"pop_size >= 4"),
    ({"pop_size": 10.0}, r"pop_size >= 4"),
    ({"mutation_rate": 0.0}, r"mutation_rate.*\(0, 1\]"),
    ({"mutation_rate": 1.01}, r"mutation_rate.*\(0, 1\]"),
    ({"mutation_rate": -0.2}, r"mutation_rate"),
    ({"knee_weights": (-1.0, 1.0)}, r"knee_weights must be finite non-negative"),
    ({"knee_weights": (0.0, 0.0)}, r"not all\s+zero"),
    ({"knee_weights": (math.nan, 1.0)}, r"knee_weights"),
    ({"knee_weights": ((1.0, 1.0),)}, r"knee_weights"),
    ({"heavy_objective": 1, "light_objective": 1}, r"different columns"),
])
def test_config_validation(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        DeepPruningESConfig(**kwargs)


def test_config_knee_method_and_defaults() -> None:
    with pytest.raises(UnknownNameError, match="knee method"):
        DeepPruningESConfig(knee_method="elbow")
    cfg = DeepPruningESConfig()
    assert (cfg.pop_size, cfg.mutation_rate, cfg.knee_method, cfg.knee_weights) == \
        (30, 0.2, "distance", None)
    DeepPruningESConfig(pop_size=4, mutation_rate=1.0, knee_method="line")  # the limits
    cfg = DeepPruningESConfig(knee_weights=[2, 1])
    assert cfg.knee_weights == (2.0, 1.0)
    assert cfg.to_dict() == {"pop_size": 30, "mutation_rate": 0.2, "knee_method": "distance",
                             "knee_weights": [2.0, 1.0], "heavy_objective": None,
                             "light_objective": None}


# =============================================================================================
# the strategy as a pymoo Algorithm
# =============================================================================================


class BitProblem(Problem):
    """A cheap binary problem with two conflicting objectives and no repair."""

    def __init__(self, n_var: int = 300, seed: int = 0) -> None:
        w = np.random.default_rng(seed).random(n_var) + 0.1
        self.w = w / w.sum()
        super().__init__(n_var=n_var, n_obj=2, xl=0, xu=1, vtype=bool)

    def _evaluate(self, x, out, *args, **kwargs):
        X = np.asarray(x, dtype=bool)
        out["F"] = np.column_stack([1.0 - X @ self.w, X.mean(axis=1)])


def digits_problem(**kwargs) -> FilterMaskProblem:
    model, space, split, norm = digits_eval_setup(MIN_CHANNELS, N_IMAGES)
    return FilterMaskProblem(Evaluator(model, space, split, norm, device="cpu", mode="slice"),
                             **kwargs)


def step_through(problem, config: DeepPruningESConfig, n_gen: int, seed: int,
                 record_mutants: bool = False):
    """Run generation by generation; snapshot population and elites after each step."""
    alg = DeepPruningES(config)
    alg.setup(problem, termination=("n_gen", n_gen), seed=seed, verbose=False)
    mutants: list[tuple[np.ndarray, np.ndarray]] = []
    if record_mutants:
        def mutate(parents):
            out = DeepPruningES.mutate(alg, parents)
            mutants.append((parents.copy(), out.copy()))
            return out
        alg.mutate = mutate
    steps = []
    while alg.has_next():
        n_before = len(mutants)
        alg.next()
        pop = alg.pop
        steps.append({
            "X": pop.get("X").astype(bool).copy(), "F": pop.get("F").copy(),
            "CV": pop.get("CV").copy(), "roles": list(pop.get("parent_role")),
            "elites": alg.elite_roles, "eX": alg.elites.get("X").astype(bool).copy(),
            "eF": alg.elites.get("F").copy(),
            "mutants": mutants[n_before:],
        })
    return alg, steps


def test_generation_zero_is_unpruned() -> None:
    cfg = DeepPruningESConfig(pop_size=7)
    for problem in (BitProblem(50), digits_problem()):
        _, steps = step_through(problem, cfg, 1, seed=0)
        assert len(steps) == 1
        X, F = steps[0]["X"], steps[0]["F"]
        assert X.shape == (7, problem.n_var) and X.all()
        assert np.all(F == F[0])
        assert steps[0]["elites"] == Elites(0, 0, 0)
        assert all(r is None for r in steps[0]["roles"])


def check_generations(steps, cfg: DeepPruningESConfig, problem) -> None:
    """Elites survive unchanged, the rest are offspring of elites, elites re-selected."""
    n_off = cfg.pop_size - len(ROLES)
    for prev, cur in zip(steps, steps[1:]):
        assert len(cur["X"]) == len(cur["F"]) == cfg.pop_size
        np.testing.assert_array_equal(cur["X"][:3], prev["eX"])
        np.testing.assert_array_equal(cur["F"][:3], prev["eF"])
        roles = cur["roles"][3:]
        assert len(roles) == n_off and all(r in ROLES for r in roles)
        # the elites of this generation: select_elites of its F and CV
        expected = select_elites(cur["F"], cur["CV"], cfg.knee_method, cfg.knee_weights)
        assert cur["elites"] == expected
        np.testing.assert_array_equal(cur["eX"], cur["X"][expected.indices()])
        np.testing.assert_array_equal(cur["eF"], cur["F"][expected.indices()])


def test_generations_on_a_bit_problem() -> None:
    """No repair here: every offspring is its parent elite with independent bit flips."""
    cfg = DeepPruningESConfig(pop_size=30, mutation_rate=0.2)
    problem = BitProblem(300)
    alg, steps = step_through(problem, cfg, 10, seed=5, record_mutants=True)
    assert len(steps) == 10
    check_generations(steps, cfg, problem)
    flips = total = 0
    down = up = ones = zeros = 0
    role_counts = dict.fromkeys(ROLES, 0)
    for prev, cur in zip(steps, steps[1:]):
        (parents, mutants), = cur["mutants"]  # one mutation call per generation
        off = cur["X"][3:]
        np.testing.assert_array_equal(off, mutants)  # nothing but mutation, no repair here
        for i, role in enumerate(cur["roles"][3:]):
            role_counts[role] += 1
            parent = prev["eX"][ROLES.index(role)]
            np.testing.assert_array_equal(parents[i], parent)  # the declared parent elite
            flips += int(np.sum(off[i] != parent))
            total += parent.size
            down += int(np.sum(parent & ~off[i]))
            up += int(np.sum(~parent & off[i]))
            ones += int(parent.sum())
            zeros += int((~parent).sum())
    # the flip fraction is binomial: 5 standard errors
    rate = cfg.mutation_rate
    assert abs(flips / total - rate) < 5 * math.sqrt(rate * (1 - rate) / total)
    assert abs(down / ones - rate) < 5 * math.sqrt(rate * (1 - rate) / ones)
    assert zeros > 1000  # the elites got pruned, so 0 -> 1 flips are measurable
    assert abs(up / zeros - rate) < 5 * math.sqrt(rate * (1 - rate) / zeros)
    # parents are chosen uniformly among the three elites
    n = sum(role_counts.values())
    assert n == 9 * 27
    for count in role_counts.values():
        assert abs(count - n / 3) < 5 * math.sqrt(n * (1 / 3) * (2 / 3))
    # opt: the non-dominated members of the final population
    F = alg.pop.get("F")
    np.testing.assert_array_equal(alg.opt.get("F"), F[non_dominated(F)])
    # the search made progress: the light elite got lighter than the unpruned start
    assert steps[-1]["eF"][1, 1] < 0.5


@pytest.mark.parametrize("rate", [0.2, 0.05])
def test_mutation_rate_in_both_directions(rate) -> None:
    alg = DeepPruningES(DeepPruningESConfig(mutation_rate=rate))
    alg.setup(BitProblem(2000), termination=("n_gen", 2), seed=0, verbose=False)
    parents = np.random.default_rng(1).random((200, 2000)) < 0.5
    before = parents.copy()
    child = alg.mutate(parents)
    np.testing.assert_array_equal(parents, before)  # the parents are not changed in place
    assert child.shape == parents.shape and child.dtype == bool
    n_ones, n_zeros = int(parents.sum()), int((~parents).sum())
    down = np.sum(parents & ~child) / n_ones  # 1 -> 0
    up = np.sum(~parents & child) / n_zeros  # 0 -> 1
    # binomial standard error of a fraction over ~200000 bits: ~0.0009 (0.2), ~0.0005 (0.05)
    for frac, n in ((down, n_ones), (up, n_zeros)):
        assert abs(frac - rate) < 5 * math.sqrt(rate * (1 - rate) / n)
    # every row flips (a row of 2000 bits keeps no bit with probability (1-rate)^2000 ~ 0)
    assert np.all(np.any(child != parents, axis=1))
    # rate 1 flips every bit
    alg1 = DeepPruningES(DeepPruningESConfig(mutation_rate=1.0))
    alg1.setup(BitProblem(20), seed=0, verbose=False)
    np.testing.assert_array_equal(alg1.mutate(parents[:5, :20]), ~parents[:5, :20])


@pytest.mark.parametrize("constrained", [False, True], ids=["free", "max_macs_ratio"])
def test_generations_on_the_digits_cnn(constrained) -> None:
    """Offspring are the repaired mutants of their parent elite; every group keeps its
    minimum; the elites are select_elites of the population's F and CV."""
    problem = digits_problem(max_macs_ratio=0.6 if constrained else None)
    cfg = DeepPruningESConfig(pop_size=10, mutation_rate=0.85)
    _, steps = step_through(problem, cfg, 5, seed=2, record_mutants=True)
    check_generations(steps, cfg, problem)
    space = problem.space
    repaired_groups = 0
    for prev, cur in zip(steps, steps[1:]):
        (parents, mutants), = cur["mutants"]
        off = cur["X"][3:]
        for i, role in enumerate(cur["roles"][3:]):
            np.testing.assert_array_equal(parents[i], prev["eX"][ROLES.index(role)])
            np.testing.assert_array_equal(off[i], problem.encoding.repair(mutants[i]))
            # repair only adds channels back, and only in groups below the minimum
            assert np.all(off[i] >= mutants[i])
            before = np.add.reduceat(mutants[i].astype(int), space.offsets[:-1])
            after = np.add.reduceat(off[i].astype(int), space.offsets[:-1])
            assert np.all(after == np.maximum(before, MIN_CHANNELS))
            repaired_groups += int(np.sum(before < MIN_CHANNELS))
        kept = np.add.reduceat(cur["X"].astype(int), space.offsets[:-1], axis=1)
        assert np.all(kept >= MIN_CHANNELS)
        np.testing.assert_array_equal(problem.decode_masks(cur["X"]), cur["X"])  # stored as
        # evaluated: the population's genomes are the repaired masks
    # rate 0.85 from the unpruned start leaves < 2 of 16 channels with probability ~0.28
    assert repaired_groups > 0
    if constrained:
        # generation 0 is infeasible (MACs ratio 1 > 0.6); elites become feasible once
        # feasible offspring exist, and stay feasible (they survive)
        assert np.all(steps[0]["CV"] > 0)
        feasible = [np.any(s["CV"] <= 0) for s in steps]
        assert any(feasible)
        first = feasible.index(True)
        for s in steps[first:]:
            assert np.all(s["CV"][s["elites"].indices()] <= 0)


def test_high_mutation_rate_repairs_every_group() -> None:
    problem = digits_problem()
    cfg = DeepPruningESConfig(pop_size=12, mutation_rate=0.95)
    _, steps = step_through(problem, cfg, 3, seed=0)
    space = problem.space
    for s in steps:
        kept = np.add.reduceat(s["X"].astype(int), space.offsets[:-1], axis=1)
        assert np.all(kept >= MIN_CHANNELS)
    kept = np.add.reduceat(steps[1]["X"][3:].astype(int), space.offsets[:-1], axis=1)
    assert np.any(kept == MIN_CHANNELS)  # from all-ones, 95% flips leave < 2: repaired to 2


def _final(res_or_alg):
    alg = getattr(res_or_alg, "algorithm", res_or_alg)
    return alg.pop.get("X").astype(bool), alg.pop.get("F"), alg.elite_roles


def test_same_seed_same_run_other_seed_differs() -> None:
    cfg = DeepPruningESConfig(pop_size=8)
    runs = {s: _final(minimize(digits_problem(), DeepPruningES(cfg), ("n_gen", 4), seed=s,
                               verbose=False)) for s in (3, 4)}
    again = _final(minimize(digits_problem(), DeepPruningES(cfg), ("n_gen", 4), seed=3,
                            verbose=False))
    np.testing.assert_array_equal(runs[3][0], again[0])
    np.testing.assert_array_equal(runs[3][1], again[1])
    assert runs[3][2] == again[2]
    assert not np.array_equal(runs[3][0], runs[4][0])


def test_minimize_counts_generation_zero() -> None:
    problem = BitProblem(40)
    res = minimize(problem, DeepPruningES(DeepPruningESConfig(pop_size=5)), ("n_gen", 3),
                   seed=0, verbose=False)
    assert res.algorithm.n_gen - 1 == 3  # generation 0 + two generations of mutants
    assert res.algorithm.evaluator.n_eval == 5 + 2 * 2  # elites are not evaluated again
    F = res.algorithm.pop.get("F")
    np.testing.assert_array_equal(res.F, F[non_dominated(F)])


def test_refuses_non_binary_and_single_objective_problems() -> None:
    model, space, split, norm = digits_eval_setup(MIN_CHANNELS, N_IMAGES)
    ratio = LayerRatioProblem(Evaluator(model, space, split, norm, device="cpu", mode="slice"))
    with pytest.raises(TypeError, match="binary problem with >= 2 objectives"):
        DeepPruningES().setup(ratio, seed=0)
    with pytest.raises(TypeError, match="1 objective"):
        minimize(digits_problem(objectives=("error",)), DeepPruningES(), ("n_gen", 2), seed=0)
    with pytest.raises(ValueError, match="knee_weights has 3 values"):
        DeepPruningES(DeepPruningESConfig(knee_weights=(1, 1, 1))).setup(digits_problem(),
                                                                         seed=0)
    with pytest.raises(ValueError, match="objective column 2 does not exist"):
        DeepPruningES(DeepPruningESConfig(light_objective=2)).setup(digits_problem(), seed=0)
    # three objectives: weights of length 3 and column 2 are fine
    three = digits_problem(objectives=("error", "macs_ratio", "params_ratio"))
    DeepPruningES(DeepPruningESConfig(knee_weights=(1, 1, 1), light_objective=2)).setup(
        three, seed=0)
    # the registry preset
    alg = ALGORITHMS.get("deeppruninges")(digits_problem(), 7)
    assert isinstance(alg, DeepPruningES) and alg.config == DeepPruningESConfig(pop_size=7)
    with pytest.raises(TypeError, match="filter-mask"):
        ALGORITHMS.get("deeppruninges")(ratio, 7)


def test_pickled_mid_run_continues_identically() -> None:
    cfg = DeepPruningESConfig(pop_size=8, knee_weights=(2, 1))
    n_gen, seed = 6, 11
    straight = DeepPruningES(cfg)
    straight.setup(digits_problem(), termination=("n_gen", n_gen), seed=seed, verbose=False)
    while straight.has_next():
        straight.next()

    problem = digits_problem()
    alg = DeepPruningES(cfg)
    alg.setup(problem, termination=("n_gen", n_gen), seed=seed, verbose=False)
    for _ in range(3):
        alg.next()
    with detached_problem(alg):
        blob = pickle.dumps(alg)
    assert alg.problem is problem
    del alg
    resumed = pickle.loads(blob)
    assert resumed.problem is None
    resumed.problem = digits_problem()  # a fresh problem, as a resumed run builds it
    while resumed.has_next():
        resumed.next()
    for a, b in zip(_final(straight), _final(resumed)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(straight.elites.get("X"), resumed.elites.get("X"))
    assert resumed.n_gen == straight.n_gen


# =============================================================================================
# residual stages (the published ResNet encoding)
# =============================================================================================


@functools.cache
def _resnet_problem():
    model, space, shape = model_and_space("cifar_resnet20", True)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, *shape), dtype=torch.uint8, generator=g)
    split = Split(images, torch.randint(0, 10, (16,), generator=g))
    norm = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    problem = FilterMaskProblem(Evaluator(model, space, split, norm, device="cpu",
                                          mode="slice"))
    return model, space, split, norm, problem


def _group_of(space, owner: np.ndarray) -> set[int]:
    ids = owner[owner >= 0]
    return set((np.searchsorted(space.offsets, ids, side="right") - 1).tolist())


def test_residual_stages_on_a_resnet() -> None:
    model, space, split, norm, problem = _resnet_problem()
    assert space.policy.residual
    residual = [g.index for g in space.groups if g.residual]
    assert len(residual) == 3  # the stem stream and the two downsampling stages
    cfg = DeepPruningESConfig(pop_size=5)
    alg = DeepPruningES(cfg)
    alg.setup(problem, termination=("n_gen", 3), seed=0, verbose=False)
    while alg.has_next():
        alg.next()
    masks = problem.decode_masks(alg.pop.get("X"))
    kept = np.add.reduceat(masks.astype(int), space.offsets[:-1], axis=1)
    # the population drops residual channels
    assert np.any(kept[:, residual] < space.sizes[residual])
    elites = problem.decode_masks(alg.elites.get("X"))
    # check the elites, plus one population member that prunes every residual stage
    pruned_all = [i for i in range(len(masks)) if np.all(kept[i, residual] <
                                                          space.sizes[residual])]
    assert pruned_all
    check = np.vstack([elites, masks[pruned_all[:1]]])
    x = norm.apply(split.images[:4])
    sliced = SlicedModel(model, space)
    for mask in check:
        plan = PruningPlan.from_mask(space, mask)
        net = prune_model(model, space, plan)
        with torch.no_grad():
            out = net(x)
            ref = sliced.forward(x, torch.as_tensor(mask))
        assert out.shape == (4, 10)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
        n_kept = plan.n_kept()
        modules = dict(net.named_modules())
        for g in residual:
            for name in space.groups[g].layers:
                m = modules[name]
                if isinstance(m, nn.Conv2d | nn.Linear):
                    own_in = space.owner.get((name, "in"))
                    if own_in is not None and _group_of(space, own_in) == {g}:
                        n_in = m.in_channels if isinstance(m, nn.Conv2d) else m.in_features
                        assert n_in == n_kept[g], (name, g)
                    own_out = space.owner.get((name, "out"))
                    if own_out is not None and _group_of(space, own_out) == {g}:
                        n_out = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
                        assert n_out == n_kept[g], (name, g)
                elif isinstance(m, nn.BatchNorm2d):
                    assert m.num_features == n_kept[g], (name, g)
        # the stem writes the first stream; the classifier reads the last one
        assert net.conv1.out_channels == n_kept[residual[0]]
        assert net.linear.in_features == n_kept[residual[-1]]
    # every residual stream has convs reading it (so the checks above were not vacuous)
    full = dict(model.named_modules())
    for g in residual:
        readers = [name for name in space.groups[g].layers
                   if isinstance(full[name], nn.Conv2d) and (name, "in") in space.owner
                   and _group_of(space, space.owner[(name, "in")]) == {g}]
        assert len(readers) >= 2, space.groups[g].name


@pytest.mark.parametrize("model_id", ["flatten_linear_cnn", "dense_concat_cnn",
                                      "depthwise_avgpool_cnn", "tv:resnet18"])
def test_elites_of_plain_dense_and_torchvision_models_prune_exactly(model_id) -> None:
    """Plain, DenseNet-style (concatenation) and torchvision models, residual policy on."""
    model, space, shape = model_and_space(model_id, True)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, *shape), dtype=torch.uint8, generator=g)
    n_classes = int(model(torch.zeros(1, *shape)).shape[1])
    split = Split(images, torch.randint(0, n_classes, (8,), generator=g))
    norm = Normalization((0.5,) * shape[0], (0.25,) * shape[0])
    problem = FilterMaskProblem(Evaluator(model, space, split, norm, device="cpu",
                                          mode="slice"))
    alg = DeepPruningES(DeepPruningESConfig(pop_size=5))
    alg.setup(problem, termination=("n_gen", 3), seed=0, verbose=False)
    while alg.has_next():
        alg.next()
    masks = problem.decode_masks(alg.elites.get("X"))
    assert np.any(~problem.decode_masks(alg.pop.get("X")))  # something was pruned
    x = norm.apply(images[:2])
    sliced = SlicedModel(model, space)
    for mask, f in zip(masks, alg.elites.get("F"), strict=True):
        net = prune_model(model, space, PruningPlan.from_mask(space, mask))
        with torch.no_grad():
            torch.testing.assert_close(net(x), sliced.forward(x, torch.as_tensor(mask)),
                                       rtol=0, atol=1e-4)
        macs = problem.cost_model.cost_of_masks(mask[None]).macs[0]
        assert f[1] == pytest.approx(macs / problem.baseline["macs"])


# =============================================================================================
# through the run machinery: elites.jsonl, resume
# =============================================================================================

ES_CONFIG = DeepPruningESConfig(pop_size=6, knee_weights=(2 / 3, 1 / 3))
GENERATIONS = 4


def identity(config: DeepPruningESConfig = ES_CONFIG) -> dict:
    return {"objectives": ["error", "macs_ratio"], "algorithm": "deeppruninges",
            "deeppruninges": config.to_dict(), "pop_size": config.pop_size,
            "generations": GENERATIONS, "seed": 0, "max_macs_ratio": None,
            "max_accuracy_drop": None}


def run_search(setup, run: RunDir, resume: bool):
    """The method's driver on the identity the run was created with."""
    return ES.run(setup, run, run.config()["identity"], resume=resume, progress=False)


@functools.cache
def _digits_task(weights: Path):
    task = load_problem_file(DIGITS, TaskOptions(weights=weights))
    data = task.load_data(DataRequest(root=None, seed=0, eval_images=128, test_images=128))
    return task, data


def search_setup(weights: Path):
    task, data = _digits_task(weights)
    return make_problem(task, data)


def new_run(path: Path, config: DeepPruningESConfig = ES_CONFIG) -> RunDir:
    shutil.rmtree(path, ignore_errors=True)
    run = RunDir(path)
    run.create({"identity": identity(config), "title": "test"})
    return run


RESULTS = ("candidates.jsonl", ELITES, "front.json")


def results(run: RunDir) -> dict[str, bytes]:
    return {name: (run.path / name).read_bytes() for name in RESULTS}


@pytest.fixture(scope="module")
def es_run(tmp_path_factory, digits_weights):
    """An uninterrupted run; the population of every generation is captured as well."""
    populations: dict[int, list[str]] = {}
    real = DeepPruningESMethod.on_generation

    def log_elites(self, run, algorithm, recorder, generation):
        keys = [algorithm.problem.genome_key(x) for x in algorithm.pop.get("X")]
        populations[generation] = keys
        real(self, run, algorithm, recorder, generation)

    mp = pytest.MonkeyPatch()
    mp.setattr(DeepPruningESMethod, "on_generation", log_elites)
    try:
        run = new_run(tmp_path_factory.mktemp("es") / "run")
        front = run_search(search_setup(digits_weights), run, resume=False)
    finally:
        mp.undo()
    return run, front, populations


def test_elites_log(es_run) -> None:
    run, front, populations = es_run
    records = run.candidates()
    by_id = {r["id"]: r for r in records}
    by_genome = {r["genome"]: r for r in records}
    assert [r["id"] for r in records] == list(range(len(records)))
    rows = run.read_jsonl(ELITES)
    assert [row["generation"] for row in rows] == [1, 2, 3, 4]
    assert sorted(populations) == [1, 2, 3, 4]
    for row in rows:
        g = row["generation"]
        pop = [by_genome[k] for k in populations[g]]
        assert len(pop) == ES_CONFIG.pop_size
        for role in ROLES:
            rec = by_id[row[role]["id"]]  # the id exists
            assert row[role]["val_accuracy"] == rec["val_accuracy"]
            assert row[role]["macs_ratio"] == rec["macs_ratio"]
            assert rec["generation"] <= g
            assert rec in pop  # an elite is a member of the generation's population
        best_acc = max(r["val_accuracy"] for r in pop)
        heavy = by_id[row["heavy"]["id"]]
        assert heavy["val_accuracy"] == best_acc
        assert heavy["macs_ratio"] == min(r["macs_ratio"] for r in pop
                                          if r["val_accuracy"] == best_acc)
        cheapest = min(r["macs_ratio"] for r in pop)
        light = by_id[row["light"]["id"]]
        assert light["macs_ratio"] == cheapest
        # the knee: the strategy's rule on the population's objectives
        F = np.array([[1.0 - r["val_accuracy"], r["macs_ratio"]] for r in pop])
        elites = select_elites(F, None, ES_CONFIG.knee_method, ES_CONFIG.knee_weights)
        assert [pop[i]["id"] for i in elites.indices()] == [row[r]["id"] for r in ROLES]
        # elitism: the heavy elite is the most accurate candidate so far, light the cheapest
        so_far = [r for r in records if r["generation"] <= g]
        assert heavy["val_accuracy"] == max(r["val_accuracy"] for r in so_far)
        assert light["macs_ratio"] == min(r["macs_ratio"] for r in so_far)
    # generation 1 is the unpruned network only
    assert [r["id"] for r in records if r["generation"] == 1] == [0]
    assert records[0]["macs_ratio"] == 1.0
    assert all(rows[0][role]["id"] == 0 for role in ROLES)
    # the front: non-dominated, with test accuracy; the plots include the elites history
    assert front and all("test_accuracy" in r for r in front)
    assert (run.path / "plots" / "elites.png").stat().st_size > 0
    assert run.load_checkpoint()["generation"] == GENERATIONS


def test_the_default_config_runs(digits_weights, tmp_path) -> None:
    """The identity's settings are the strategy's: here the default knee."""
    run = new_run(tmp_path / "preset", DeepPruningESConfig(pop_size=6))
    run_search(search_setup(digits_weights), run, resume=False)
    alg = run.load_checkpoint()["algorithm"]
    assert isinstance(alg, DeepPruningES) and alg.config == DeepPruningESConfig(pop_size=6)
    rows = run.read_jsonl(ELITES)
    assert [row["generation"] for row in rows] == [1, 2, 3, 4]


class Interrupted(Exception):
    """Stands in for a crash in the middle of a search."""


@pytest.mark.parametrize("after_saving", [True, False],
                         ids=["crash-after-checkpoint", "crash-before-checkpoint"])
def test_resume_equals_an_uninterrupted_run(es_run, digits_weights, tmp_path, monkeypatch,
                                            after_saving) -> None:
    reference, _, _ = es_run
    run = new_run(tmp_path / "resumed")
    real_save = RunDir.save_checkpoint

    def crashing_save(self, state):
        crash = state["generation"] == 2
        if after_saving or not crash:
            real_save(self, state)
        if crash:
            raise Interrupted

    monkeypatch.setattr(RunDir, "save_checkpoint", crashing_save)
    with pytest.raises(Interrupted):
        run_search(search_setup(digits_weights), run, resume=False)
    monkeypatch.undo()
    assert run.load_checkpoint()["generation"] == (2 if after_saving else 1)
    # generation 2's elites were logged before the crash either way
    assert [row["generation"] for row in run.read_jsonl(ELITES)] == [1, 2]
    assert not (run.path / "front.json").exists()
    run_search(search_setup(digits_weights), run, resume=True)
    assert results(run) == results(reference)
    assert run.load_checkpoint()["generation"] == GENERATIONS


# =============================================================================================
# objective order, single objective, the unpruned network
# =============================================================================================


def test_elite_roles_follow_objective_names_not_positions() -> None:
    """With objectives listed as (MACs, error), heavy is still the most accurate elite."""
    model, space, val, norm = digits_eval_setup()
    problem = FilterMaskProblem(Evaluator(model, space, val, norm),
                                objectives=("macs_ratio", "error"))
    alg = DeepPruningES(DeepPruningESConfig(pop_size=8))
    alg.setup(problem, termination=("n_gen", 3), seed=0, verbose=False)
    while alg.has_next():
        alg.next()
    assert alg.columns == (1, 0)
    F = alg.pop.get("F")
    heavy, light, _ = alg.elites.get("F")
    assert heavy[1] == F[:, 1].min()  # lowest error
    assert light[0] == F[:, 0].min()  # lowest MACs


def test_trade_off_models_single_objective_and_unpruned() -> None:
    records = [{"id": 0, "val_accuracy": 0.9, "macs_ratio": 1.0},
               {"id": 1, "val_accuracy": 0.8, "macs_ratio": 0.7},
               {"id": 2, "val_accuracy": 0.6, "macs_ratio": 0.4}]
    models = trade_off_models(records, objectives=("error",))
    assert {r["id"] for r in models.values()} == {1}  # the best pruned record, all roles
    models = trade_off_models(records)
    assert models["heavy"]["id"] == 1 and models["light"]["id"] == 2  # unpruned left out
    only_unpruned = trade_off_models(records[:1])
    assert all(r["id"] == 0 for r in only_unpruned.values())
