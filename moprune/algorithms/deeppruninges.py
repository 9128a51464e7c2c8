"""DeepPruningES (Fernandes & Yen, Information Sciences 2021): a (3+27) multi-objective ES.

Each generation the non-dominated set of the population gives three elites: *heavy* (lowest
error), *light* (lowest MACs) and the *knee* (by a knee definition shared with
``moprune pick``, default: the smallest weighted normalised distance to the ideal point).
They are the only parents and survive unchanged; the rest of the population are bit-flip
mutants of uniformly chosen elites (every bit flips with probability ``mutation_rate``, in
both directions), there is no crossover, and generation 0 is unpruned copies.

:class:`DeepPruningES` is a pymoo ``Algorithm`` for any binary problem (``minimize`` works,
and it pickles, so checkpoints and resume work); on a :class:`~moprune.problems.base.
FilterMaskProblem` the mutants are repaired so every group keeps the space's minimum. With
the pruning space's residual policy (``SpacePolicy(residual=True)``) the genome is the
published ResNet encoding: one bit per filter of every internal group plus one shared mask
per residual stage, which the stem, the shortcut projections and the classifier input follow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pymoo.core.algorithm import Algorithm
from pymoo.core.population import Population

from moprune.errors import ConfigError
from moprune.fronts.front import (
    KNEE_METHODS,
    ROLES,
    Elites,
    non_dominated,
    role_columns,
    select_elites,
)


@dataclass(frozen=True)
class DeepPruningESConfig:
    """Settings of the strategy (defaults: the published ones).

    Attributes:
        pop_size: Population size: 3 elites + ``pop_size - 3`` mutants (published: 30).
        mutation_rate: Per-bit flip probability of a mutant, both directions (published: 0.2).
        knee_method: Knee definition, a name in ``moprune.fronts.KNEE_METHODS``.
        knee_weights: Per-objective weights of the ``"distance"`` knee (None = equal: the
            minimum Manhattan distance; the authors' later code uses (2/3, 1/3)).
        heavy_objective: Column of the objective whose minimum is the heavy elite (None: the
            problem's ``"error"`` objective, else column 0).
        light_objective: Column of the objective whose minimum is the light elite (None: the
            problem's ``"macs_ratio"`` objective, else the first other column).

    """

    pop_size: int = 30
    mutation_rate: float = 0.2
    knee_method: str = "distance"
    knee_weights: tuple[float, ...] | None = None
    heavy_objective: int | None = None
    light_objective: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.pop_size, bool) or not isinstance(self.pop_size, int) \
                or self.pop_size < len(ROLES) + 1:
            raise ConfigError(f"DeepPruningES needs pop_size >= {len(ROLES) + 1} (3 elites and at "
                             f"least one mutant); got {self.pop_size!r}")
        if not 0.0 < self.mutation_rate <= 1.0:
            raise ConfigError(f"mutation_rate is a per-bit flip probability in (0, 1]; got "
                             f"{self.mutation_rate!r}")
        KNEE_METHODS.get(self.knee_method)  # lists the valid names
        if self.knee_weights is not None:
            w = np.asarray(self.knee_weights, dtype=float)
            if w.ndim != 1 or not np.all(np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
                raise ConfigError(f"knee_weights must be finite non-negative numbers, not all "
                                 f"zero, one per objective; got {self.knee_weights!r}")
            object.__setattr__(self, "knee_weights", tuple(float(v) for v in w))
        if self.heavy_objective is not None and self.heavy_objective == self.light_objective:
            raise ConfigError("heavy_objective and light_objective must be different columns")

    def to_dict(self) -> dict:
        return {"pop_size": self.pop_size, "mutation_rate": self.mutation_rate,
                "knee_method": self.knee_method,
                "knee_weights": None if self.knee_weights is None else list(self.knee_weights),
                "heavy_objective": self.heavy_objective,
                "light_objective": self.light_objective}


class DeepPruningES(Algorithm):
    """The (3 + (pop_size - 3)) multi-objective evolution strategy of DeepPruningES.

    Use it like any pymoo algorithm: ``minimize(problem, DeepPruningES(), ("n_gen", 11))``.
    The problem must be binary (``vtype=bool`` or bounds 0/1) with at least two objectives.
    pymoo's ``n_gen`` counts the unpruned generation 0 as the first generation, so the
    published 11 generations are generation 0 and 10 generations of mutants.

    After each generation ``elites`` holds the three elites (a ``Population`` in the order
    heavy, light, knee), ``elite_roles`` their :class:`Elites` indices into ``pop``, and
    ``opt`` the non-dominated members of the population.

    Args:
        config: The strategy's settings.

    """

    def __init__(self, config: DeepPruningESConfig | None = None) -> None:
        super().__init__()
        self.config = config or DeepPruningESConfig()
        self.elites: Population | None = None
        self.elite_roles: Elites | None = None
        self.columns: tuple[int, int] = (0, 1)  # heavy's and light's objective (set in setup)

    def _setup(self, problem, **kwargs):
        binary = problem.vtype is bool or (np.all(problem.xl == 0) and np.all(problem.xu == 1))
        if not binary or problem.n_obj < 2:
            raise TypeError(f"DeepPruningES needs a binary problem with >= 2 objectives (e.g. "
                            f"FilterMaskProblem); got {type(problem).__name__} with vtype "
                            f"{problem.vtype}, {problem.n_obj} objective(s)")
        names = getattr(problem, "objectives", None) or [str(j) for j in range(problem.n_obj)]
        heavy, light = role_columns(names)
        cfg = self.config
        self.columns = (heavy if cfg.heavy_objective is None else cfg.heavy_objective,
                        light if cfg.light_objective is None else cfg.light_objective)
        for col in self.columns:
            if not 0 <= col < problem.n_obj:
                raise ConfigError(f"objective column {col} does not exist: the problem has "
                                 f"{problem.n_obj} objectives")
        if self.columns[0] == self.columns[1]:
            raise ConfigError(f"the heavy and light elites need two different objective columns; "
                             f"got {self.columns}")
        w = self.config.knee_weights
        if w is not None and len(w) != problem.n_obj:
            raise ConfigError(f"knee_weights has {len(w)} values; the problem has {problem.n_obj} "
                             "objectives (one weight per objective)")

    def _repair(self, X: np.ndarray) -> np.ndarray:
        encoding = getattr(self.problem, "encoding", None)
        if encoding is None or not hasattr(encoding, "repair"):
            return X
        return np.array([encoding.repair(x) for x in X], dtype=bool)

    def _initialize_infill(self):
        X = np.ones((self.config.pop_size, self.problem.n_var), dtype=bool)
        return Population.new(X=X)

    def _initialize_advance(self, infills=None, **kwargs):
        self._select(infills)

    def mutate(self, parents: np.ndarray) -> np.ndarray:
        """Bit-flip mutants of ``parents`` (bool ``(k, n_var)``), before repair."""
        flips = self.random_state.random(parents.shape) < self.config.mutation_rate
        return np.logical_xor(parents, flips)

    def _infill(self):
        n_off = self.config.pop_size - len(ROLES)
        which = self.random_state.integers(len(ROLES), size=n_off)
        parents = self.elites.get("X").astype(bool)[which]
        off = Population.new(X=self._repair(self.mutate(parents)))
        off.set("parent_role", np.array(ROLES)[which])
        return off

    def _advance(self, infills=None, **kwargs):
        self._select(Population.merge(self.elites, infills))

    def _select(self, pop: Population) -> None:
        cfg = self.config
        roles = select_elites(pop.get("F"), pop.get("CV"), cfg.knee_method, cfg.knee_weights,
                              *self.columns)
        self.pop = pop
        self.elite_roles = roles
        self.elites = Population.create(*[pop[i].copy() for i in roles.indices()])

    def _set_optimum(self):
        F, CV = self.pop.get("F"), self.pop.get("CV").reshape(-1)
        rows = np.arange(len(self.pop))
        rows = rows[CV <= 0] if np.any(CV <= 0) else rows[CV == CV.min()]
        self.opt = self.pop[rows[non_dominated(F[rows])]]


__all__ = ["ROLES", "DeepPruningES", "DeepPruningESConfig", "Elites", "select_elites"]
