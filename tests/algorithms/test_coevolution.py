"""Cooperative coevolution (one CCEP round): bounds, operators, winner rule, the round."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import (
    built_model,
    digits_eval_setup,
    one_torch_thread,
    tiny_sequential,
)
from pymoo.core.population import Population
from pymoo.operators.survival.rank_and_crowding import RankAndCrowding
from pymoo.optimize import minimize
from torch import nn

from moprune.algorithms.coevolution import (
    BoundedBitflipMutation,
    CCEPSampling,
    CloneParents,
    CoevolutionConfig,
    CoevolutionRound,
    GroupMaskProblem,
    LexicographicSurvival,
    choose_winner,
    group_algorithm,
    min_kept,
    start_kept,
)
from moprune.core.space import PruningSpace, SpacePolicy
from moprune.data.datasets import Normalization, Split
from moprune.errors import UnknownNameError
from moprune.evaluation.evaluator import Evaluator
from moprune.fronts.front import non_dominated
from moprune.problems.mask import FilterMaskProblem
from moprune.problems.ratio import LayerRatioProblem


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    yield from one_torch_thread()


MIN_CHANNELS = 2
N_IMAGES = 64


def group_problem(size: int, min_channels: int = 1, prune_bound: float = 0.9,
                  multi: bool = False) -> GroupMaskProblem:
    return GroupMaskProblem(group=0, name="g", size=size, min_channels=min_channels,
                            prune_bound=prune_bound, multi=multi)


# --- the bounds -------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "bound", "min_channels", "k_min", "k_start"), [
    (16, 0.9, 1, 14, 15),
    (32, 0.9, 2, 28, 29),
    (10, 0.9, 1, 8, 9),  # 0.9 * 10 is an exact 9: no float rounding up to 10
    (20, 0.85, 1, 16, 17),
    (1, 0.9, 1, 1, 1),
    (2, 0.9, 1, 1, 2),
    (16, 0.9, 15, 15, 15),  # min_channels dominates
    (16, 0.5, 12, 12, 12),
    (25, 0.56, 1, 13, 14),  # 0.56 * 25 = 14.000000000000002 in floating point
    (100, 0.55, 1, 54, 55),  # 0.55 * 100 = 55.00000000000001
    (16, 1.0, 1, 15, 16),  # bound 1: one channel per round at most
    (16, 0.0, 3, 3, 3),  # bound 0: only min_channels limits
    (16, 0.0, 1, 1, 1),
    (5, 0.9, 8, 5, 5),  # never more than the group has
])
def test_min_kept_and_start_kept(size, bound, min_channels, k_min, k_start) -> None:
    assert min_kept(size, bound, min_channels) == k_min
    assert start_kept(size, bound, min_channels) == k_start
    sub = group_problem(size, min_channels, bound)
    assert (sub.k_min, sub.k_start) == (k_min, k_start)
    assert sub.n_var == size and sub.n_obj == 1


# --- the mutation -----------------------------------------------------------------------------


def test_mutation_never_breaks_the_prune_bound() -> None:
    rng = np.random.default_rng(0)
    mutation = BoundedBitflipMutation(0.0)
    for trial in range(60):
        size = int(rng.integers(1, 40))
        min_channels = int(rng.integers(1, 6))
        bound = float(rng.choice([0.0, 0.5, 0.7, 0.85, 0.9, 0.95, 1.0, rng.uniform()]))
        mutation.rate = float(rng.choice([0.05, 0.1, 0.3, 0.5, 1.0, rng.uniform()]))
        sub = group_problem(size, min_channels, bound)
        # start from valid individuals: at least k_start channels, as the sampling makes them
        X = CCEPSampling(float(rng.uniform(0.5, 1.0)))._do(sub, 8, random_state=rng)
        for gen in range(15):
            before = X.copy()
            Y = mutation._do(sub, X, random_state=np.random.default_rng(1000 * trial + gen))
            np.testing.assert_array_equal(X, before)  # the input is not changed in place
            assert Y.shape == X.shape and Y.dtype == bool
            kept = Y.sum(1)
            assert np.all(kept >= sub.k_min), (size, min_channels, bound, mutation.rate, kept)
            assert np.all(kept >= 1)
            assert np.all(kept <= size)
            X = Y


def test_mutation_restores_always_and_prunes_only_above_the_bound() -> None:
    sub = group_problem(10, 1, 0.9)  # k_min 8; prunes only while keeping >= 9
    mutation = BoundedBitflipMutation(1.0)  # every bit flips
    rng = np.random.default_rng(0)
    X = np.array([
        [1, 1, 1, 1, 1, 1, 1, 1, 0, 0],  # at k_min, ones first: no prune, zeros restored
        [0, 0, 1, 1, 1, 1, 1, 1, 1, 1],  # restores first, then prunes down to k_min
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],  # full: two prunes, then stuck at k_min
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # below any bound: every bit restored
        [1, 0, 1, 0, 1, 0, 1, 0, 1, 0],  # restores reach the bound at bit 7: bit 8 prunes
    ], dtype=bool)
    Y = mutation._do(sub, X, random_state=rng)
    expected = np.array([
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, 1, 0, 0, 1, 1, 1, 1, 1, 1],
        [0, 0, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 1, 1, 0, 1],
    ], dtype=bool)
    np.testing.assert_array_equal(Y, expected)
    # whatever the rate, every flipped zero is restored: with rate 1 no zero survives
    for seed in range(5):
        X = np.random.default_rng(seed).random((20, 10)) < 0.8
        Y = mutation._do(sub, X, random_state=np.random.default_rng(seed))
        assert np.all(Y[~X])


@pytest.mark.parametrize(("size", "bound", "min_channels"), [
    (16, 0.9, 1), (10, 0.9, 1), (25, 0.56, 1), (100, 0.55, 1), (16, 0.9, 15), (16, 1.0, 1),
    (16, 0.0, 3), (1, 0.9, 1),
])
def test_mutation_of_full_masks_stops_exactly_at_k_min(size, bound, min_channels) -> None:
    sub = group_problem(size, min_channels, bound)
    Y = BoundedBitflipMutation(1.0)._do(sub, np.ones((3, size), dtype=bool),
                                        random_state=np.random.default_rng(0))
    assert np.all(Y.sum(1) == sub.k_min)
    # bits are visited in order: the first ones go
    np.testing.assert_array_equal(Y[0], np.arange(size) >= size - sub.k_min)


def test_mutation_rate() -> None:
    rng = np.random.default_rng(0)
    X = rng.random((30, 50)) < 0.5
    # rate 0: nothing changes
    Y = BoundedBitflipMutation(0.0)._do(group_problem(50, 1, 0.9), X, random_state=rng)
    np.testing.assert_array_equal(Y, X)
    assert Y is not X
    # bound 0 and min_channels 1: every flip is applied (each mask keeps ~25 channels)
    Y = BoundedBitflipMutation(0.2)._do(group_problem(50, 1, 0.0), X, random_state=rng)
    changed = float(np.mean(Y != X))
    assert 0.15 < changed < 0.25
    assert np.any(Y & ~X) and np.any(X & ~Y)  # both directions happen


def test_mutation_accepts_int_genomes_through_pymoo() -> None:
    sub = group_problem(12, 1, 0.9)
    pop = Population.new(X=np.ones((4, 12), dtype=int))
    out = BoundedBitflipMutation(1.0).do(sub, pop, random_state=np.random.default_rng(0))
    X = out.get("X").astype(bool)
    assert np.all(X.sum(1) == sub.k_min)  # from full, the prunes stop exactly at k_min


# --- the sampling -----------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "bound", "keep_prob"), [
    (16, 0.9, 0.95), (32, 0.9, 0.5), (20, 0.85, 0.0), (7, 1.0, 0.3), (16, 0.0, 0.2),
])
def test_sampling(size: int, bound: float, keep_prob: float) -> None:
    sub = group_problem(size, 2, bound)
    sampling = CCEPSampling(keep_prob)
    X = sampling._do(sub, 12, random_state=np.random.default_rng(3))
    assert X.shape == (12, size) and X.dtype == bool
    assert X[0].all()
    assert np.all(X.sum(1) >= sub.k_start)
    if keep_prob == 0.0:  # every random mask is refilled to exactly k_start
        assert np.all(X[1:].sum(1) == sub.k_start)
    again = sampling._do(sub, 12, random_state=np.random.default_rng(3))
    np.testing.assert_array_equal(X, again)
    full = CCEPSampling(1.0)._do(sub, 6, random_state=np.random.default_rng(0))
    assert full.all()
    pop = sampling.do(sub, 5, random_state=np.random.default_rng(3))
    assert len(pop) == 5 and pop[0].get("X").all()


def test_sampling_keep_prob_is_used() -> None:
    sub = group_problem(200, 1, 0.0)  # no refill
    X = CCEPSampling(0.3)._do(sub, 50, random_state=np.random.default_rng(0))
    assert 0.25 < X[1:].mean() < 0.35


# --- clone parents, the mating step -----------------------------------------------------------


def test_clone_parents_makes_independent_copies() -> None:
    sub = group_problem(8, 1, 0.5)
    X = np.array([[1, 1, 1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 1, 1, 1, 1]], dtype=bool)
    pop = Population.new(X=X.copy())
    parents = np.array([[0], [1], [1], [0]])
    off = CloneParents().do(sub, pop, parents, random_state=np.random.default_rng(0))
    assert len(off) == 4
    np.testing.assert_array_equal(off.get("X").astype(bool), X[[0, 1, 1, 0]])
    parent_ids = {id(ind) for ind in pop}
    assert not any(id(ind) in parent_ids for ind in off)
    assert not any(np.shares_memory(o.X, p.X) for o in off for p in pop)
    for ind in off:
        ind.X[:] = False
    np.testing.assert_array_equal(pop.get("X").astype(bool), X)


def test_mating_step_leaves_the_parents_alone() -> None:
    sub = group_problem(16, 1, 0.5)
    alg = group_algorithm(CoevolutionConfig(pop_size=6, mutation_rate=0.5))
    X = CCEPSampling(0.9)._do(sub, 6, random_state=np.random.default_rng(0))
    pop = Population.new(X=X.copy(), F=np.linspace(0.1, 0.6, 6)[:, None])
    off = alg.mating.do(sub, pop, 6, algorithm=alg, random_state=np.random.default_rng(1))
    assert len(off) == 6
    np.testing.assert_array_equal(pop.get("X"), X)  # mutation did not reach the parents
    assert not (set(map(id, off)) & set(map(id, pop)))
    assert np.any(off.get("X") != X[0])  # rate 0.5 changes something
    assert np.all(off.get("X").astype(bool).sum(1) >= sub.k_min)


# --- survival, winner rule --------------------------------------------------------------------


def test_lexicographic_survival() -> None:
    sub = group_problem(4, 1, 0.0)
    X = np.array([
        [1, 1, 1, 1],  # 0: 0.2
        [1, 1, 0, 0],  # 1: 0.1, 2 kept
        [1, 0, 0, 0],  # 2: 0.1, 1 kept
        [1, 1, 1, 0],  # 3: 0.1, 3 kept
        [0, 1, 1, 1],  # 4: 0.3
        [1, 0, 1, 0],  # 5: 0.05
    ], dtype=bool)
    F = np.array([[0.2], [0.1], [0.1], [0.1], [0.3], [0.05]])
    pop = Population.new(X=X, F=F)
    survivors = LexicographicSurvival().do(sub, pop, n_survive=3)
    np.testing.assert_array_equal(survivors.get("X").astype(bool), X[[5, 2, 1]])
    np.testing.assert_array_equal(survivors.get("F")[:, 0], [0.05, 0.1, 0.1])
    np.testing.assert_array_equal(survivors.get("rank"), [0, 1, 2])
    everyone = LexicographicSurvival().do(sub, Population.new(X=X, F=F), n_survive=6)
    np.testing.assert_array_equal(everyone.get("X").astype(bool), X[[5, 2, 1, 3, 0, 4]])


def test_group_algorithm_parts() -> None:
    single = group_algorithm(CoevolutionConfig(pop_size=4))
    multi = group_algorithm(CoevolutionConfig(pop_size=4, objectives="multi"))
    assert isinstance(single.survival, LexicographicSurvival)
    assert isinstance(multi.survival, RankAndCrowding)
    assert single.pop_size == 4 and single.n_offsprings == 4
    assert isinstance(single.mating.crossover, CloneParents)
    assert isinstance(single.mating.mutation, BoundedBitflipMutation)


SINGLE = CoevolutionConfig()
KEEP_ALL = CoevolutionConfig(force_prune=False)


def test_choose_winner_second_best_rule() -> None:
    X = np.array([
        [1, 1, 1, 1],  # 0: unpruned, the lowest error
        [1, 1, 1, 0],  # 1
        [1, 1, 0, 0],  # 2
        [1, 0, 0, 0],  # 3: same error as 2, fewer channels
    ], dtype=bool)
    F = np.array([[0.1], [0.3], [0.2], [0.2]])
    assert choose_winner(X, F, SINGLE) == (3, True)
    assert choose_winner(X, F, KEEP_ALL) == (0, True)
    # the best is pruned: it wins in both modes
    F2 = F.copy()
    F2[1, 0] = 0.05
    assert choose_winner(X, F2, SINGLE) == (1, False)
    assert choose_winner(X, F2, KEEP_ALL) == (1, False)
    # a tie between the unpruned mask and a pruned one goes to fewer channels
    F3 = np.array([[0.1], [0.1], [0.4], [0.4]])
    assert choose_winner(X, F3, SINGLE) == (1, False)
    # int genomes work as well
    assert choose_winner(X.astype(int), F, SINGLE) == (3, True)


def test_choose_winner_with_nothing_pruned() -> None:
    X = np.ones((3, 5), dtype=bool)
    F = np.array([[0.3], [0.2], [0.4]])
    assert choose_winner(X, F, SINGLE) == (-1, True)
    assert choose_winner(X, F, KEEP_ALL) == (1, True)
    multi = CoevolutionConfig(objectives="multi")
    assert choose_winner(X, np.column_stack([F, np.ones(3)]), multi) == (-1, True)


@pytest.mark.parametrize("knee_method", ["distance", "tradeoff", "line"])
def test_choose_winner_multi_objective(knee_method: str) -> None:
    X = np.array([
        [1, 1, 1, 1],  # 0: unpruned, best error
        [1, 1, 1, 0],  # 1: 3/4, 0.2
        [1, 1, 0, 0],  # 2: 2/4, 0.3
        [1, 0, 0, 0],  # 3: 1/4, 0.9
        [0, 1, 1, 1],  # 4: 3/4, 0.5 (dominated by 1)
        [0, 0, 1, 1],  # 5: 2/4, 0.35 (dominated by 2)
    ], dtype=bool)
    err = np.array([0.1, 0.2, 0.3, 0.9, 0.5, 0.35])
    F = np.column_stack([err, X.sum(1) / 4])
    forced = CoevolutionConfig(objectives="multi", knee_method=knee_method)
    i, best_unpruned = choose_winner(X, F, forced)
    assert i in (1, 2, 3) and best_unpruned
    free = CoevolutionConfig(objectives="multi", knee_method=knee_method, force_prune=False)
    i, best_unpruned = choose_winner(X, F, free)
    assert i in (0, 1, 2, 3) and best_unpruned
    # a pruned member with the lowest error: not flagged
    F[1, 0] = 0.01
    i, best_unpruned = choose_winner(X, F, forced)
    assert i in (1, 2, 3) and not best_unpruned
    # a single pruned member is the winner
    assert choose_winner(X[[0, 4]], F[[0, 4]], forced) == (1, True)


# --- the config -------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"pop_size": 1}, "pop_size"),
    ({"generations": -1}, "generations"),
    ({"keep_prob": 1.5}, "keep_prob"),
    ({"mutation_rate": -0.1}, "mutation_rate"),
    ({"prune_bound": 1.01}, "prune_bound"),
    ({"objectives": "x"}, "objectives"),
])
def test_config_validation(kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CoevolutionConfig(**kwargs)


def test_config_lists_every_problem_and_checks_the_knee() -> None:
    with pytest.raises(ValueError, match="pop_size.*keep_prob"):
        CoevolutionConfig(pop_size=0, keep_prob=2.0)
    with pytest.raises(UnknownNameError, match="knee"):
        CoevolutionConfig(knee_method="elbow")
    CoevolutionConfig(pop_size=2, generations=0, keep_prob=0.0, mutation_rate=1.0,
                      prune_bound=1.0, objectives="multi", knee_method="line")


# --- the sub-problem --------------------------------------------------------------------------


def test_group_problem_reads_provided_values_only() -> None:
    for multi in (False, True):
        sub = group_problem(6, 1, 0.5, multi=multi)
        X = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 0, 1, 0, 1]], dtype=bool)
        sub.provide(X, np.array([0.25, 0.5]))
        F = sub.evaluate(X[::-1], return_values_of=["F"])
        np.testing.assert_array_equal(F[:, 0], [0.5, 0.25])
        if multi:
            np.testing.assert_allclose(F[:, 1], [4 / 6, 1.0])
        assert F.shape == (2, 2 if multi else 1)
        with pytest.raises(RuntimeError, match="without its network value"):
            sub.evaluate(X)  # the values were used up


# --- the round on the digits CNN --------------------------------------------------------------


def _digits():
    return digits_eval_setup(MIN_CHANNELS, N_IMAGES)


def digits_problem(**kwargs) -> FilterMaskProblem:
    model, space, split, norm = _digits()
    return FilterMaskProblem(Evaluator(model, space, split, norm, device="cpu", mode="slice"),
                             **kwargs)


def run_round(problem, config: CoevolutionConfig, seed: int = 1, termination=None):
    calls: list[list[dict]] = []
    problem.recorder = calls.append
    res = minimize(problem, CoevolutionRound(config), termination, seed=seed, verbose=False)
    return res, calls


def check_round(problem, res, calls, config: CoevolutionConfig) -> list:
    """The bounds hold everywhere; ``opt`` embeds the winners; returns the winners."""
    space = problem.space
    alg = res.algorithm
    subs = {a.problem.group: a.problem for a in alg.subs}
    for g in space.groups:  # every group could lose a channel here
        assert subs[g.index].size == g.size
        assert subs[g.index].k_min == min_kept(g.size, config.prune_bound,
                                               space.policy.min_channels)
    # every network candidate prunes at most one group, within that group's bound
    records = [r for call in calls for r in call]
    assert len(records) == len(subs) * config.pop_size * (config.generations + 1)
    for rec in records:
        pruned = [(g, k) for g, k in enumerate(rec["kept"]) if k < space.sizes[g]]
        assert len(pruned) <= 1
        for g, k in pruned:
            assert k >= subs[g].k_min
    # every group's final population: evaluated, within the bound
    for a in alg.subs:
        assert len(a.pop) == config.pop_size
        X, F = a.pop.get("X").astype(bool), a.pop.get("F")
        assert np.all(X.sum(1) >= a.problem.k_min) and np.all(np.isfinite(F))
        assert np.all(np.isfinite(np.vstack(a.pop.get("network_F"))))
    winners = alg.winners()
    for w in winners:
        sub = subs[w.group]
        assert w.name == sub.name and w.size == sub.size
        assert sub.k_min <= w.kept < w.size and w.keep.any()
    # opt: one row per winner, the winner embedded into an otherwise unpruned network
    assert res.opt is not None and len(res.opt) == len(winners)
    X = res.opt.get("X").astype(bool)
    for row, w in zip(X, winners):
        sl = space.group_slice(w.group)
        np.testing.assert_array_equal(row[sl], w.keep)
        assert row.sum() == space.n_channels - (w.size - w.kept)
    np.testing.assert_array_equal(res.opt.get("F"), np.vstack([w.network_F for w in winners]))
    # the stored values are the network's: evaluate the embedded masks afresh
    col = problem.objectives.index("error")
    F = digits_problem(objectives=problem.objectives).evaluate(X, return_values_of=["F"])
    np.testing.assert_allclose(F, res.opt.get("F"))
    np.testing.assert_allclose(F[:, col], [w.error for w in winners])
    return winners


def test_round_on_the_digits_cnn() -> None:
    config = CoevolutionConfig(generations=2)
    problem = digits_problem()
    res, calls = run_round(problem, config)
    winners = check_round(problem, res, calls, config)
    assert [w.group for w in winners] == [0, 1, 2]  # force_prune: every group prunes
    assert len(calls) == config.generations + 1  # one batched problem call per step
    assert not any(a.has_next() for a in res.algorithm.subs)
    # the first call starts every group with its unpruned network
    first = calls[0]
    for g in range(problem.space.n_groups):
        assert first[g * config.pop_size]["kept"] == list(problem.space.sizes)


def winner_masks(res) -> list[tuple[int, bytes]]:
    return [(w.group, w.keep.tobytes()) for w in res.algorithm.winners()]


def test_round_is_deterministic_and_batching_changes_nothing() -> None:
    config = CoevolutionConfig(generations=2, mutation_rate=0.2)
    a, _ = run_round(digits_problem(), config, seed=3)
    b, _ = run_round(digits_problem(), config, seed=3)
    assert winner_masks(a) == winner_masks(b)
    np.testing.assert_array_equal(a.opt.get("X"), b.opt.get("X"))
    for sa, sb in zip(a.algorithm.subs, b.algorithm.subs):
        np.testing.assert_array_equal(sa.pop.get("X"), sb.pop.get("X"))
    seq_config = CoevolutionConfig(generations=2, mutation_rate=0.2, batch_groups=False)
    problem = digits_problem()
    c, calls = run_round(problem, seq_config, seed=3)
    check_round(problem, c, calls, seq_config)
    assert len(calls) == problem.space.n_groups * (seq_config.generations + 1)  # group by group
    assert winner_masks(a) == winner_masks(c)
    np.testing.assert_array_equal(a.opt.get("F"), c.opt.get("F"))
    for sa, sc in zip(a.algorithm.subs, c.algorithm.subs):
        np.testing.assert_array_equal(sa.pop.get("X"), sc.pop.get("X"))
        np.testing.assert_array_equal(sa.pop.get("F"), sc.pop.get("F"))


# An explicit termination that never fires first: the round still ends when its groups are done.
UNTIL_DONE = ("n_gen", 10**6)


@pytest.mark.parametrize("config", [
    CoevolutionConfig(generations=0),
    CoevolutionConfig(generations=3, pop_size=3, mutation_rate=0.3, prune_bound=0.5,
                      keep_prob=0.6),
    CoevolutionConfig(generations=2, eliminate_duplicates=True),
    CoevolutionConfig(generations=2, keep_prob=1.0),
    CoevolutionConfig(generations=2, prune_bound=1.0),
], ids=["no_generations", "loose_bound", "no_duplicates", "keep_all", "bound_one"])
def test_round_settings(config: CoevolutionConfig) -> None:
    problem = digits_problem(objectives=("error",))
    res, calls = run_round(problem, config, termination=UNTIL_DONE)
    alg = res.algorithm
    assert not any(a.has_next() for a in alg.subs)
    if config.eliminate_duplicates:  # pymoo may hand out fewer offspring: only the bounds
        for a in alg.subs:
            assert np.all(a.pop.get("X").astype(bool).sum(1) >= a.problem.k_min)
        k_min = {a.problem.group: a.problem.k_min for a in alg.subs}
        winners = alg.winners()
        assert winners
        for w in winners:
            assert k_min[w.group] <= w.kept < w.size
        return
    winners = check_round(problem, res, calls, config)
    if config.keep_prob == 1.0 or config.prune_bound == 1.0:
        # the initial masks are all unpruned: the first call holds only unpruned networks
        assert all(rec["kept"] == list(problem.space.sizes) for rec in calls[0])
    if config.prune_bound == 1.0:
        assert all(w.kept == w.size - 1 for w in winners)
    if config.generations > 0:
        assert winners


@pytest.mark.parametrize("config", [
    CoevolutionConfig(generations=1, keep_prob=1.0),
    CoevolutionConfig(generations=1, prune_bound=1.0),
], ids=["keep_all", "bound_one"])
def test_round_with_only_unpruned_initial_masks(config) -> None:
    res, _ = run_round(digits_problem(), config)
    assert [w.group for w in res.algorithm.winners()] == [0, 1, 2]


def test_round_multi_objective() -> None:
    config = CoevolutionConfig(generations=2, objectives="multi", mutation_rate=0.3)
    problem = digits_problem()
    res, calls = run_round(problem, config)
    winners = check_round(problem, res, calls, config)
    assert winners
    for a in res.algorithm.subs:
        assert a.problem.n_obj == 2
        F = a.pop.get("F")
        np.testing.assert_allclose(F[:, 1], a.pop.get("X").astype(bool).sum(1) / a.problem.size)
    by_group = {a.problem.group: a for a in res.algorithm.subs}
    for w in winners:
        a = by_group[w.group]
        X, F = a.pop.get("X").astype(bool), a.pop.get("F")
        pruned = ~X.all(1)
        nd = np.flatnonzero(pruned)[non_dominated(F[pruned])]
        assert any(np.array_equal(X[i], w.keep) for i in nd)


def test_round_keeping_a_group_unpruned_is_allowed() -> None:
    config = CoevolutionConfig(generations=1, force_prune=False)
    problem = digits_problem()
    res, calls = run_round(problem, config)
    winners = check_round(problem, res, calls, config)
    for w in winners:
        assert not w.best_was_unpruned  # an unpruned best leaves the group out


def test_round_refuses_other_problems() -> None:
    with pytest.raises(ValueError, match="error"):
        minimize(digits_problem(objectives=("macs_ratio", "params_ratio")),
                 CoevolutionRound(CoevolutionConfig(generations=1)), seed=0)
    model, space, split, norm = _digits()
    ratio = LayerRatioProblem(Evaluator(model, space, split, norm, device="cpu", mode="slice"))
    with pytest.raises(TypeError, match="FilterMaskProblem"):
        minimize(ratio, CoevolutionRound(CoevolutionConfig(generations=1)), seed=0)


def test_round_error_column_need_not_come_first() -> None:
    config = CoevolutionConfig(generations=1)
    problem = digits_problem(objectives=("macs_ratio", "error"))
    res, calls = run_round(problem, config)
    winners = check_round(problem, res, calls, config)
    for a in res.algorithm.subs:  # the groups were ranked by error, not by MACs
        F = a.pop.get("F")[:, 0]
        net = np.vstack(a.pop.get("network_F"))
        np.testing.assert_array_equal(F, net[:, 1])
    assert winners


def test_round_runs_every_generation_of_a_long_round() -> None:
    config = CoevolutionConfig(generations=60, pop_size=2)
    problem = digits_problem(objectives=("error",))
    res, calls = run_round(problem, config)
    assert not any(a.has_next() for a in res.algorithm.subs)
    assert sum(map(len, calls)) == 3 * 2 * 61


# --- other architectures ----------------------------------------------------------------------


def random_split(n: int, shape: tuple[int, int, int], classes: int, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
    return Split(images, torch.randint(0, classes, (n,), generator=g))


def tiny_vgg() -> nn.Module:
    torch.manual_seed(0)
    return tiny_sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(12, 10, 3, padding=1), nn.BatchNorm2d(10), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(10, 5),
    ).eval()


def test_round_on_a_plain_vgg_style_net() -> None:
    model = tiny_vgg()
    shape = (3, 8, 8)
    space = PruningSpace.from_model(model, shape, SpacePolicy(min_channels=2))
    assert [g.size for g in space.groups] == [8, 12, 10]
    norm = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    problem = FilterMaskProblem(Evaluator(model, space, random_split(32, shape, 5), norm,
                                          device="cpu", mode="slice"))
    config = CoevolutionConfig(generations=2, pop_size=4, mutation_rate=0.3, prune_bound=0.8)
    calls: list[list[dict]] = []
    problem.recorder = calls.append
    res = minimize(problem, CoevolutionRound(config), seed=0, verbose=False)
    subs = {a.problem.group: a.problem for a in res.algorithm.subs}
    assert [subs[g].k_min for g in range(3)] == [6, 9, 7]
    for call in calls:
        for rec in call:
            for g, k in enumerate(rec["kept"]):
                assert k >= subs[g].k_min
    winners = res.algorithm.winners()
    assert [w.group for w in winners] == [0, 1, 2]
    for w in winners:
        assert subs[w.group].k_min <= w.kept < w.size


def test_round_on_a_resnet_with_internal_groups() -> None:
    model, shape = built_model("cifar_resnet20")
    space = PruningSpace.from_model(model, shape, SpacePolicy())
    assert space.n_groups == 9 and not any(g.residual for g in space.groups)
    norm = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    problem = FilterMaskProblem(Evaluator(model, space, random_split(8, shape, 10), norm,
                                          device="cpu", mode="slice"))
    config = CoevolutionConfig(generations=1, pop_size=2, mutation_rate=0.3)
    calls: list[list[dict]] = []
    problem.recorder = calls.append
    res = minimize(problem, CoevolutionRound(config), seed=0, verbose=False)
    assert len(res.algorithm.subs) == 9 and len(calls) == 2
    subs = {a.problem.group: a.problem for a in res.algorithm.subs}
    for rec in (r for call in calls for r in call):
        pruned = [g for g, k in enumerate(rec["kept"]) if k < space.sizes[g]]
        assert len(pruned) <= 1
        assert all(rec["kept"][g] >= subs[g].k_min for g in pruned)
    winners = res.algorithm.winners()
    assert len(winners) == 9
    for w in winners:
        assert subs[w.group].k_min <= w.kept < w.size
    assert len(res.opt) == 9
