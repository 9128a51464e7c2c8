"""Cooperative coevolution over the prunable groups of a network: the search of one CCEP round.

Each prunable group gets its own small pymoo genetic algorithm over bit masks of the group's
channels (:class:`GroupMaskProblem`), evaluated in the context of the current network (every
other group unpruned). :class:`CoevolutionRound` is itself a pymoo ``Algorithm`` on a
:class:`~moprune.problems.base.FilterMaskProblem`: each step it asks every group's algorithm for
its offspring, embeds them into whole-network masks and evaluates all groups' candidates in
one batched call of the problem, then hands each group its values back. So
``minimize(problem, CoevolutionRound(config))`` runs one coevolution round, and the
per-group algorithms are plain pymoo parts (sampling, selection, mutation, survival).

The operators follow CCEP (Shang et al., IJCAI 2022): initial masks keep each channel with
probability ``keep_prob`` (individual 0 is unpruned); parents are drawn uniformly; no
crossover; bit-flip mutation where a restore (0 -> 1) is always allowed and a prune
(1 -> 0) only while the individual keeps at least ``prune_bound`` of the group's channels;
(mu + lambda) truncation by accuracy with ties to fewer channels; and a group's winner is
its best member, or the best pruned one if the best is the unpruned mask (the "second best"
rule; when survival has left only copies of the unpruned mask, the best pruned mask the group
evaluated this round).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pymoo.algorithms.base.genetic import GeneticAlgorithm
from pymoo.core.algorithm import Algorithm
from pymoo.core.crossover import Crossover
from pymoo.core.mutation import Mutation
from pymoo.core.population import Population
from pymoo.core.problem import Problem
from pymoo.core.sampling import Sampling
from pymoo.core.selection import Selection
from pymoo.core.survival import Survival
from pymoo.core.termination import NoTermination
from pymoo.operators.survival.rank_and_crowding import RankAndCrowding

from moprune.errors import ConfigError
from moprune.fronts.front import KNEE_METHODS, knee_index, non_dominated
from moprune.problems.mask import FilterMaskProblem

SUB_OBJECTIVES = ("single", "multi")


@dataclass(frozen=True)
class CoevolutionConfig:
    """Settings of the per-group algorithms of one coevolution round (CCEP defaults).

    Attributes:
        pop_size: Individuals per group (and offspring per generation).
        generations: Generations per group after the initial population.
        keep_prob: Probability that an initial mask keeps a channel (0.95 CIFAR, 0.9
            ImageNet); individual 0 is always the unpruned mask.
        mutation_rate: Per-bit flip probability.
        prune_bound: A prune (1 -> 0) happens only while the individual keeps at least this
            fraction of the group's current channels (0.9 CIFAR, 0.85 ImageNet), so a group
            loses at most about ``1 - prune_bound`` of its channels per round.
        objectives: ``"single"``: accuracy, ties to fewer channels (CCEP); ``"multi"``:
            error and the group's kept fraction with NSGA-II survival, the winner being the
            knee (``knee_method``) of the group's pruned non-dominated members.
        force_prune: If the best individual is the unpruned mask, take the best pruned one
            (CCEP's "second best" rule); False lets a group stay as it is.
        eliminate_duplicates: pymoo duplicate elimination in each group (CCEP: off).
        knee_method: Knee definition for ``objectives="multi"`` (``KNEE_METHODS``).
        batch_groups: Evaluate all groups' candidates of a step in one call (True) or group
            after group (False; same results, for comparison).

    """

    pop_size: int = 5
    generations: int = 10
    keep_prob: float = 0.95
    mutation_rate: float = 0.1
    prune_bound: float = 0.9
    objectives: str = "single"
    force_prune: bool = True
    eliminate_duplicates: bool = False
    knee_method: str = "distance"
    batch_groups: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.pop_size < 2:
            problems.append(f"pop_size must be >= 2; got {self.pop_size}")
        if self.generations < 0:
            problems.append(f"generations must be >= 0; got {self.generations}")
        for name in ("keep_prob", "mutation_rate", "prune_bound"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                problems.append(f"{name} must be in [0, 1]; got {value}")
        if self.objectives not in SUB_OBJECTIVES:
            problems.append(f"objectives must be one of {SUB_OBJECTIVES}; got "
                            f"{self.objectives!r}")
        if problems:
            raise ConfigError("invalid CoevolutionConfig: " + "; ".join(problems))
        KNEE_METHODS.get(self.knee_method)


def min_kept(size: int, prune_bound: float, min_channels: int) -> int:
    """Fewest channels a group of ``size`` can keep at the end of one round.

    A prune happens only while an individual keeps ``>= prune_bound * size`` channels, so the
    last prune can reach ``ceil(prune_bound * size) - 1``; never fewer than ``min_channels``
    and never more than ``size``.
    """
    return min(size, max(min_channels, math.ceil(prune_bound * size - 1e-9) - 1))


def start_kept(size: int, prune_bound: float, min_channels: int) -> int:
    """Fewest channels an initial mask keeps (refilled up to ``ceil(prune_bound * size)``)."""
    return min(size, max(min_channels, math.ceil(prune_bound * size - 1e-9)))


class GroupMaskProblem(Problem):
    """One group's sub-problem: a keep bit per channel of the group.

    Its values are the whole network's hold-out error with only this group pruned; they are
    computed by :class:`CoevolutionRound` (batched over all groups) and handed over with
    :meth:`provide` before pymoo's evaluator reads them.

    Args:
        group: Index of the group in the pruning space.
        name: Group name (root layer).
        size: Channels of the group in the current network.
        min_channels: The space's minimum per group.
        prune_bound: See :class:`CoevolutionConfig`.
        multi: Two objectives (error, kept fraction) instead of one (error).

    """

    def __init__(self, group: int, name: str, size: int, min_channels: int,
                 prune_bound: float, multi: bool) -> None:
        self.group = group
        self.name = name
        self.size = size
        self.prune_bound = prune_bound
        self.k_min = min_kept(size, prune_bound, min_channels)
        self.k_start = start_kept(size, prune_bound, min_channels)
        self._pending: dict[bytes, float] = {}
        super().__init__(n_var=size, n_obj=2 if multi else 1, xl=0, xu=1, vtype=bool)

    def provide(self, X: np.ndarray, error: np.ndarray) -> None:
        """Hand over the network error of each row of ``X`` (read by the next evaluation)."""
        for x, e in zip(np.asarray(X, dtype=bool), error):
            self._pending[np.packbits(x).tobytes()] = float(e)

    def _evaluate(self, x, out, *args, **kwargs):
        X = np.atleast_2d(np.asarray(x, dtype=bool))
        try:
            error = np.array([self._pending[np.packbits(r).tobytes()] for r in X])
        except KeyError:
            raise RuntimeError(
                f"group {self.name!r}: a sub-candidate was evaluated without its network "
                "value; group sub-problems are evaluated through CoevolutionRound"
            ) from None
        self._pending.clear()
        if self.n_obj == 1:
            out["F"] = error[:, None]
        else:
            out["F"] = np.column_stack([error, X.sum(1) / self.size])


class CCEPSampling(Sampling):
    """Initial masks: the unpruned one, then masks keeping each channel with ``keep_prob``.

    A mask keeping fewer than ``problem.k_start`` channels gets random channels back up to
    it (as CCEP refills masks below the prune bound).
    """

    def __init__(self, keep_prob: float) -> None:
        super().__init__()
        self.keep_prob = keep_prob

    def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
        X = random_state.random((n_samples, problem.n_var)) < self.keep_prob
        X[0] = True
        for x in X:
            deficit = problem.k_start - int(x.sum())
            if deficit > 0:
                x[random_state.choice(np.flatnonzero(~x), deficit, replace=False)] = True
        return X


class UniformParentSelection(Selection):
    """Each offspring's parent drawn uniformly from the population (with replacement)."""

    def _do(self, problem, pop, n_select, n_parents, *args, random_state=None, **kwargs):
        return random_state.integers(len(pop), size=(n_select, n_parents))


class CloneParents(Crossover):
    """No crossover: each offspring is a fresh copy of its single parent.

    (pymoo's ``NoCrossover`` hands back the parent objects themselves, so an in-place
    mutation would change the parents.)
    """

    def __init__(self) -> None:
        super().__init__(n_parents=1, n_offsprings=1, prob=0.0)


class BoundedBitflipMutation(Mutation):
    """Per-bit flips with rate ``rate``; restores always, prunes only above the bound.

    Bits are visited in order; a flip 0 -> 1 is always applied, a flip 1 -> 0 only while
    the individual keeps at least ``prune_bound * size`` channels (and more than
    ``min_channels``), so no individual ever keeps fewer than ``problem.k_min``.
    """

    def __init__(self, rate: float) -> None:
        super().__init__(prob=1.0)
        self.rate = rate

    def _do(self, problem, X, *args, random_state=None, **kwargs):
        X = np.array(X, dtype=bool)
        flips = random_state.random(X.shape) < self.rate
        limit = problem.prune_bound * problem.size - 1e-9
        for x, f in zip(X, flips):
            kept = int(x.sum())
            for j in np.flatnonzero(f):
                if not x[j]:
                    x[j] = True
                    kept += 1
                elif kept >= limit and kept > problem.k_min:
                    x[j] = False
                    kept -= 1
        return X


class LexicographicSurvival(Survival):
    """(mu + lambda) truncation: lowest error first, ties to fewer kept channels."""

    def __init__(self) -> None:
        super().__init__(filter_infeasible=False)

    def _do(self, problem, pop, *args, n_survive=None, **kwargs):
        F, X = pop.get("F"), pop.get("X").astype(bool)
        order = np.lexsort((X.sum(1), F[:, 0]))
        pop.set("rank", np.argsort(order))
        return pop[order[:n_survive]]


def group_algorithm(config: CoevolutionConfig) -> GeneticAlgorithm:
    """The pymoo algorithm of one group (CCEP's per-layer EA)."""
    survival = RankAndCrowding() if config.objectives == "multi" else LexicographicSurvival()
    return GeneticAlgorithm(
        pop_size=config.pop_size, n_offsprings=config.pop_size,
        sampling=CCEPSampling(config.keep_prob), selection=UniformParentSelection(),
        crossover=CloneParents(), mutation=BoundedBitflipMutation(config.mutation_rate),
        survival=survival, eliminate_duplicates=config.eliminate_duplicates,
        advance_after_initial_infill=True,
    )


@dataclass(frozen=True)
class GroupWinner:
    """The mask a group contributes to the next network.

    Attributes:
        group: Group index in the pruning space.
        name: Group name.
        keep: Keep bits over the group's current channels.
        error: Hold-out error of the network with only this group pruned to ``keep``.
        best_was_unpruned: The best individual was the unpruned mask (so this is the best
            pruned one, CCEP's "second best" rule).
        network_F: The problem's objective values of that network.

    """

    group: int
    name: str
    keep: np.ndarray
    error: float
    best_was_unpruned: bool
    network_F: np.ndarray

    @property
    def kept(self) -> int:
        return int(self.keep.sum())

    @property
    def size(self) -> int:
        return int(self.keep.size)


def choose_winner(X: np.ndarray, F: np.ndarray, config: CoevolutionConfig) -> tuple[int, bool]:
    """Index of a group population's winner and whether the best member was unpruned.

    Single objective: the lowest error, ties to fewer channels; with ``force_prune`` the best
    pruned member when the best is unpruned. Multi-objective: the knee of the pruned
    non-dominated members (error, kept fraction); the single-objective rule if none.
    Returns ``(-1, True)`` when ``force_prune`` is set and no member is pruned.
    """
    X = np.asarray(X, dtype=bool)
    kept = X.sum(1)
    pruned = kept < X.shape[1]
    order = np.lexsort((kept, F[:, 0]))
    best_unpruned = not pruned[order[0]]
    if config.objectives == "multi":
        cand = np.flatnonzero(pruned if config.force_prune else np.ones(len(X), bool))
        if len(cand):
            obj = np.column_stack([F[cand, 0], kept[cand] / X.shape[1]])
            nd = cand[non_dominated(obj)]
            nd = nd[np.lexsort((kept[nd], F[nd, 0]))]
            obj = np.column_stack([F[nd, 0], kept[nd] / X.shape[1]])
            return int(nd[knee_index(obj, config.knee_method)]), best_unpruned
    if not config.force_prune or not best_unpruned:
        return int(order[0]), best_unpruned
    rest = [i for i in order if pruned[i]]
    return (int(rest[0]) if rest else -1), True


class CoevolutionRound(Algorithm):
    """One round of cooperative coevolution on a :class:`FilterMaskProblem`.

    Every group that can still lose channels (see :func:`min_kept`) gets a
    :func:`group_algorithm`; the problem's network (all groups unpruned) is the context.
    ``opt`` holds each group's winner embedded in a whole-network mask; :meth:`winners`
    returns them per group.

    Args:
        config: Per-group settings.

    """

    def __init__(self, config: CoevolutionConfig | None = None) -> None:
        # The round ends when every group's algorithm has run its generations; pymoo's
        # default termination (which watches ``opt``) must not end it earlier.
        super().__init__(termination=NoTermination())
        self.config = config or CoevolutionConfig()
        self.subs: list[GeneticAlgorithm] = []
        self._parts: list[tuple[GeneticAlgorithm, Population, slice]] = []
        self._best_pruned: dict[int, tuple[tuple[float, int], np.ndarray, np.ndarray]] = {}

    def _setup(self, problem, **kwargs):
        if not isinstance(problem, FilterMaskProblem):
            raise TypeError(f"CoevolutionRound needs a FilterMaskProblem (one bit per "
                            f"channel); got {type(problem).__name__}")
        if "error" not in problem.objectives:
            raise ConfigError(f"the problem's objectives {problem.objectives} lack 'error', "
                             "which the group sub-problems are ranked by")
        space = problem.space
        cfg = self.config
        self.subs = []
        self._best_pruned = {}
        for group in space.groups:
            sub = GroupMaskProblem(group.index, group.name, group.size,
                                   space.policy.min_channels, cfg.prune_bound,
                                   multi=cfg.objectives == "multi")
            if sub.k_min >= group.size:
                continue  # cannot lose a channel this round
            alg = group_algorithm(cfg)
            alg.setup(sub, termination=("n_gen", cfg.generations + 1),
                      seed=int(self.random_state.integers(2**31)), verbose=False)
            self.subs.append(alg)

    def has_next(self) -> bool:
        return any(a.has_next() for a in self.subs) and super().has_next()

    def next(self) -> None:
        if self.config.batch_groups:
            return super().next()
        infills = self.infill()  # group after group: one problem call per group
        if infills is None:
            return self.advance()
        for _, _, rows in self._parts:
            self.evaluator.eval(self.problem, infills[rows], algorithm=self)
        self.advance(infills=infills)

    def _gather(self) -> Population | None:
        space = self.problem.space
        self._parts = []
        blocks = []
        start = 0
        for alg in self.subs:
            if not alg.has_next():
                continue
            sub = alg.infill()
            if sub is None or len(sub) == 0:
                continue
            X = np.ones((len(sub), space.n_channels), dtype=bool)
            X[:, space.group_slice(alg.problem.group)] = sub.get("X").astype(bool)
            blocks.append((X, alg.problem.group))
            self._parts.append((alg, sub, slice(start, start + len(sub))))
            start += len(sub)
        if not blocks:
            self.termination.force_termination = True
            return None
        pop = Population.new(X=np.vstack([b[0] for b in blocks]))
        pop.set("group", np.concatenate([np.full(len(b[0]), b[1]) for b in blocks]))
        return pop

    def _initialize_infill(self):
        return self._gather()

    def _infill(self):
        return self._gather()

    def _initialize_advance(self, infills=None, **kwargs):
        self._advance(infills=infills)

    def _advance(self, infills=None, **kwargs):
        if infills is None:
            return
        col = self.problem.objectives.index("error")
        F = infills.get("F")
        for alg, sub, rows in self._parts:
            sub.set("network_F", F[rows])
            alg.problem.provide(sub.get("X"), F[rows, col])
            alg.evaluator.eval(alg.problem, sub)
            self._remember_pruned(alg.problem, sub.get("X").astype(bool), F[rows], col)
            alg.advance(infills=sub)
        self._parts = []

    def _remember_pruned(self, problem: GroupMaskProblem, X: np.ndarray, F: np.ndarray,
                         col: int) -> None:
        """Keep each group's best pruned mask ever evaluated (lowest error, then fewest kept).

        (mu + lambda) survival can fill a population with copies of the unpruned mask; the
        "second best" rule then falls back on this, so every group that met a pruned mask
        this round still shrinks.
        """
        best = self._best_pruned.get(problem.group)
        for x, f in zip(X, F):
            kept = int(x.sum())
            if kept == problem.size:
                continue
            key = (float(f[col]), kept)
            if best is None or key < best[0]:
                best = (key, x.copy(), np.asarray(f, dtype=float).copy())
        if best is not None:
            self._best_pruned[problem.group] = best

    def winners(self) -> list[GroupWinner]:
        """Each group's winner (groups that could not or did not prune are left out)."""
        out = []
        for alg in self.subs:
            if alg.pop is None or len(alg.pop) == 0:
                continue
            X, F = alg.pop.get("X").astype(bool), alg.pop.get("F")
            i, best_unpruned = choose_winner(X, F, self.config)
            if i < 0 and alg.problem.group in self._best_pruned:
                _, keep, net_f = self._best_pruned[alg.problem.group]
                error = float(net_f[self.problem.objectives.index("error")])
                out.append(GroupWinner(alg.problem.group, alg.problem.name, keep.copy(), error,
                                       True, net_f))
                continue
            if i < 0 or X[i].all():
                continue
            net_f = np.asarray(alg.pop[i].get("network_F"), dtype=float)
            error = float(net_f[self.problem.objectives.index("error")])
            out.append(GroupWinner(alg.problem.group, alg.problem.name, X[i].copy(), error,
                                   best_unpruned, net_f))
        return out

    def _set_optimum(self):
        space = self.problem.space
        ws = self.winners() if self.subs else []
        if not ws:
            self.opt = Population.empty()
            return
        X = np.ones((len(ws), space.n_channels), dtype=bool)
        for row, w in zip(X, ws):
            row[space.group_slice(w.group)] = w.keep
        self.opt = Population.new(X=X, F=np.vstack([w.network_F for w in ws]))


__all__ = [
    "BoundedBitflipMutation", "CCEPSampling", "CloneParents", "CoevolutionConfig",
    "CoevolutionRound", "GroupMaskProblem", "GroupWinner", "LexicographicSurvival",
    "UniformParentSelection", "choose_winner", "group_algorithm", "min_kept", "start_kept",
]
