"""DEAP's tree generation and variation as pymoo operators, and the published GP preset.

Individuals are prefix expressions (strings) in a single ``object`` variable, so they
pickle, compare and hash as strings; the operators parse them into DEAP trees, apply
``genHalfAndHalf``, ``cxOnePoint`` or ``mutUniform`` and print them back. An offspring is
kept only if it passes the problem's validity check (finite scores within the time limit,
see :meth:`moprune.problems.function.FunctionProblem.check`) and the height limit; after
``max_tries`` failed attempts the parent is kept.

DEAP draws from the module ``random``; here every draw comes from a ``random.Random``
seeded from pymoo's ``random_state`` (the global state is not touched).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np
from deap import gp
from pymoo.algorithms.base.genetic import GeneticAlgorithm
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.algorithms.soo.nonconvex.ga import FitnessSurvival
from pymoo.core.crossover import Crossover
from pymoo.core.duplicate import ElementwiseDuplicateElimination
from pymoo.core.mutation import Mutation
from pymoo.core.population import Population
from pymoo.core.sampling import Sampling
from pymoo.operators.selection.tournament import TournamentSelection

from moprune.criteria.gp.library import SEEDS
from moprune.criteria.gp.primitives import PSET, parse
from moprune.errors import ConfigError


@contextmanager
def deap_random(random_state: np.random.Generator) -> Iterator[random.Random]:
    """Route DEAP's draws to a ``random.Random`` seeded from ``random_state``."""
    rng = random.Random(int(random_state.integers(2**63)))
    previous = gp.random
    gp.random = rng
    try:
        yield rng
    finally:
        gp.random = previous


def _checker(problem, max_height: int) -> Callable[[gp.PrimitiveTree], bool]:
    check = getattr(problem, "check", None)

    def ok(tree: gp.PrimitiveTree) -> bool:
        if tree.height > max_height:
            return False
        return check is None or check(str(tree)) is None
    return ok


class TreeSampling(Sampling):
    """The seeds first (in order), then random valid trees (``genHalfAndHalf``).

    Args:
        seeds: Prefix expressions placed first (a seed failing the check is still used:
            it is evaluated like any function and scores 0 if invalid).
        depth: (min, max) depth of the random trees.
        max_height: Largest tree height.
        max_tries: Attempts per random tree before giving up.

    """

    def __init__(self, seeds: tuple[str, ...], depth: tuple[int, int] = (1, 4),
                 max_height: int = 10, max_tries: int = 50) -> None:
        super().__init__()
        self.seeds = tuple(seeds)
        self.depth = depth
        self.max_height = max_height
        self.max_tries = max_tries

    def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
        out = list(dict.fromkeys(self.seeds))[:n_samples]
        ok = _checker(problem, self.max_height)
        budget = self.max_tries * max(n_samples - len(out), 0)
        with deap_random(random_state):
            while len(out) < n_samples:
                if budget <= 0:
                    raise RuntimeError(
                        f"could not generate {n_samples - len(out)} more valid random trees in "
                        f"{self.max_tries * n_samples} attempts; raise the time limit or check "
                        "that the proxy tasks' networks produce finite activations")
                budget -= 1
                tree = gp.PrimitiveTree(gp.genHalfAndHalf(PSET, *self.depth))
                if str(tree) not in out and ok(tree):
                    out.append(str(tree))
        return np.array(out, dtype=object)[:, None]


class SubtreeCrossover(Crossover):
    """One-point subtree crossover (``gp.cxOnePoint``) with probability ``prob``."""

    def __init__(self, prob: float = 0.75, max_height: int = 10, max_tries: int = 10) -> None:
        super().__init__(2, 2, prob=1.0)  # the probability is applied per mating below
        self.rate = prob
        self.max_height = max_height
        self.max_tries = max_tries

    def _do(self, problem, X, *args, random_state=None, **kwargs):
        ok = _checker(problem, self.max_height)
        Y = X.copy()
        with deap_random(random_state) as rng:
            for k in range(X.shape[1]):
                if rng.random() >= self.rate:
                    continue
                a, b = str(X[0, k, 0]), str(X[1, k, 0])
                children: list[str | None] = [None, None]
                for _ in range(self.max_tries):
                    for j, child in enumerate(gp.cxOnePoint(parse(a), parse(b))):
                        if children[j] is None and ok(child):
                            children[j] = str(child)
                    if None not in children:
                        break
                Y[0, k, 0] = children[0] or a
                Y[1, k, 0] = children[1] or b
        return Y


class SubtreeMutation(Mutation):
    """Uniform subtree mutation: a random node replaced by a new full tree of depth 0-4."""

    def __init__(self, prob: float = 0.75, depth: tuple[int, int] = (0, 4),
                 max_height: int = 10, max_tries: int = 10) -> None:
        super().__init__(prob=1.0)  # the probability is applied per individual below
        self.rate = prob
        self.depth = depth
        self.max_height = max_height
        self.max_tries = max_tries

    def _do(self, problem, X, *args, random_state=None, **kwargs):
        ok = _checker(problem, self.max_height)
        grow = partial(gp.genFull, min_=self.depth[0], max_=self.depth[1])
        Y = X.copy()
        with deap_random(random_state) as rng:
            for i in range(len(X)):
                if rng.random() >= self.rate:
                    continue
                for _ in range(self.max_tries):
                    (child,) = gp.mutUniform(parse(str(X[i, 0])), expr=grow, pset=PSET)
                    if ok(child):
                        Y[i, 0] = str(child)
                        break
        return Y


def same_expression(a, b) -> bool:
    return str(a.X[0]) == str(b.X[0])


def best_of(pop, P, **kwargs) -> np.ndarray:
    """Tournament winner: the lowest first objective (ties: the earlier contestant)."""
    F = pop.get("F")[:, 0]
    return np.array([row[np.argmin(F[row])] for row in P], dtype=int)


@dataclass(frozen=True)
class GPConfig:
    """The published GP settings (Liu et al., GECCO 2022), all adjustable.

    Attributes:
        pop_size: Individuals per generation (20-40 published).
        generations: Generations after the initial one (10-15 published).
        elites: Best individuals copied unchanged into the next generation.
        crossover: Probability of one-point crossover per pair.
        mutation: Probability of uniform subtree mutation per offspring.
        tournament: Tournament size of parent selection.
        init_depth: (min, max) depth of random initial trees.
        mutation_depth: (min, max) depth of the subtree a mutation inserts.
        max_height: Largest tree height (bloat control).
        max_tries: Attempts to produce a valid offspring before keeping the parent.
        seeds: Expressions of the initial population (default: the seven seeded metrics).

    """

    pop_size: int = 20
    generations: int = 10
    elites: int = 6
    crossover: float = 0.75
    mutation: float = 0.75
    tournament: int = 3
    init_depth: tuple[int, int] = (1, 4)
    mutation_depth: tuple[int, int] = (0, 4)
    max_height: int = 10
    max_tries: int = 10
    seeds: tuple[str, ...] = tuple(SEEDS.values())

    def __post_init__(self) -> None:
        if self.pop_size < 2 or self.generations < 0:
            raise ConfigError(f"pop_size must be >= 2 and generations >= 0, got "
                             f"{self.pop_size} and {self.generations}")
        if not 0 <= self.elites < self.pop_size:
            raise ConfigError(f"elites must lie in [0, pop_size) = [0, {self.pop_size}), got "
                             f"{self.elites}")
        for name in ("crossover", "mutation"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} probability must lie in [0, 1], got "
                                 f"{getattr(self, name)}")
        if self.tournament < 1 or self.max_tries < 1 or self.max_height < 1:
            raise ConfigError("tournament, max_tries and max_height must be >= 1")
        for name in ("init_depth", "mutation_depth"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ConfigError(f"{name} must be (min, max) with 0 <= min <= max, got "
                                 f"{getattr(self, name)}")
        for expression in self.seeds:
            parse(expression)


class ElitistGP(GeneticAlgorithm):
    """Generational GP: the ``elites`` best survive, the rest of the population is offspring."""

    def __init__(self, config: GPConfig) -> None:
        self.config = config
        super().__init__(
            pop_size=config.pop_size,
            sampling=_sampling(config),
            selection=TournamentSelection(func_comp=best_of, pressure=config.tournament),
            crossover=SubtreeCrossover(config.crossover, config.max_height, config.max_tries),
            mutation=SubtreeMutation(config.mutation, config.mutation_depth, config.max_height,
                                     config.max_tries),
            survival=FitnessSurvival(),
            n_offsprings=config.pop_size - config.elites,
            eliminate_duplicates=ElementwiseDuplicateElimination(cmp_func=same_expression),
            advance_after_initial_infill=True,
        )

    def _advance(self, infills=None, **kwargs):
        n_keep = max(self.config.elites, self.pop_size - len(infills))
        keep = self.survival.do(self.problem, self.pop, n_survive=n_keep,
                                random_state=self.random_state)
        self.pop = self.survival.do(self.problem, Population.merge(keep, infills),
                                    n_survive=self.pop_size, random_state=self.random_state)


def _sampling(config: GPConfig) -> TreeSampling:
    return TreeSampling(config.seeds, config.init_depth, config.max_height,
                        max(config.max_tries, 50))


def gp_algorithm(config: GPConfig, objectives: str = "geomean") -> GeneticAlgorithm:
    """The preset: elitist GP for one objective, NSGA-II with GP operators for several."""
    if objectives == "geomean":
        return ElitistGP(config)
    return NSGA2(pop_size=config.pop_size, sampling=_sampling(config),
                 crossover=SubtreeCrossover(config.crossover, config.max_height,
                                            config.max_tries),
                 mutation=SubtreeMutation(config.mutation, config.mutation_depth,
                                          config.max_height, config.max_tries),
                 eliminate_duplicates=ElementwiseDuplicateElimination(cmp_func=same_expression))


__all__ = ["ElitistGP", "GPConfig", "SubtreeCrossover", "SubtreeMutation", "TreeSampling",
           "best_of", "deap_random", "gp_algorithm"]
