"""EvoFC's NSGA-II: the published preset, for real-coded pairs or pymoo mixed variables.

The problem is :class:`~moprune.problems.criterion_ratio.CriterionRatioProblem`; weight
inheritance (the supernet) lives in :mod:`moprune.evaluation.inheritance`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2, binary_tournament
from pymoo.core.algorithm import Algorithm
from pymoo.core.mixed import (
    MixedVariableDuplicateElimination,
    MixedVariableGA,
    MixedVariableMating,
    MixedVariableSampling,
)
from pymoo.core.variable import Choice, Real
from pymoo.operators.crossover.pntx import TwoPointCrossover
from pymoo.operators.crossover.ux import UX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.mutation.rm import ChoiceRandomMutation
from pymoo.operators.selection.tournament import TournamentSelection
from pymoo.operators.survival.rank_and_crowding import RankAndCrowding
from pymoo.util.display.multi import MultiObjectiveOutput
from pymoo.util.misc import has_feasible

from moprune.errors import ConfigError
from moprune.problems.criterion_ratio import CriterionRatioProblem


@dataclass(frozen=True)
class EvoFCConfig:
    """The published NSGA-II settings of EvoFC (CIFAR: 10/10/20; ImageNet: 40/40/30).

    Attributes:
        pop_size: Population size.
        n_offsprings: Offspring per generation.
        crossover_prob: Probability of two-point crossover per mating.
        mutation_eta: Distribution index of the polynomial mutation (published: 3).
        mutation_prob_var: Per-gene mutation probability (None: 1 / genes, pymoo's default).

    """

    pop_size: int = 10
    n_offsprings: int = 10
    crossover_prob: float = 0.9
    mutation_eta: float = 3.0
    mutation_prob_var: float | None = None

    def __post_init__(self) -> None:
        if self.pop_size < 2 or self.n_offsprings < 1:
            raise ConfigError(f"EvoFC needs pop_size >= 2 and n_offsprings >= 1; got "
                             f"{self.pop_size} and {self.n_offsprings}")
        if not 0.0 <= self.crossover_prob <= 1.0:
            raise ConfigError(f"crossover_prob must be in [0, 1]; got {self.crossover_prob}")
        if not self.mutation_eta > 0:
            raise ConfigError(f"mutation_eta must be > 0; got {self.mutation_eta}")
        p = self.mutation_prob_var
        if p is not None and not 0.0 <= p <= 1.0:
            raise ConfigError(f"mutation_prob_var must be None or in [0, 1]; got {p}")

    def evaluations(self, generations: int) -> int:
        """Candidates a run of ``generations`` evaluates (pymoo counts the first as one)."""
        return self.pop_size + self.n_offsprings * (generations - 1)

    def to_dict(self) -> dict:
        return asdict(self)


RANK_AND_CROWDING = "comp_by_rank_and_crowding"  # pymoo's binary tournament on rank, crowding




class MixedNSGA2(MixedVariableGA):
    """NSGA-II on pymoo mixed variables: rank-and-crowding survival, binary tournament."""

    def __init__(self, pop_size: int, n_offsprings: int, mating: MixedVariableMating) -> None:
        super().__init__(pop_size=pop_size, n_offsprings=n_offsprings,
                         sampling=MixedVariableSampling(), mating=mating,
                         eliminate_duplicates=MixedVariableDuplicateElimination(),
                         survival=RankAndCrowding(), output=MultiObjectiveOutput(),
                         advance_after_initial_infill=True)
        self.tournament_type = RANK_AND_CROWDING

    def _set_optimum(self, **kwargs):
        if not has_feasible(self.pop):
            self.opt = self.pop[[np.argmin(self.pop.get("CV"))]]
        else:
            self.opt = self.pop[self.pop.get("rank") == 0]


def evofc_nsga2(problem: CriterionRatioProblem, config: EvoFCConfig | None = None) -> Algorithm:
    """EvoFC's NSGA-II: binary tournament, two-point crossover, polynomial mutation (eta 3).

    Binary tournament on rank and crowding; duplicates are eliminated.

    With mixed variables the ratios get the same two operators (crossover within the ratio
    genes) and each criterion a uniform crossover and a random re-choice with the per-gene
    probability.
    """
    config = config or EvoFCConfig()
    if problem.variables == "pairs":
        algorithm = NSGA2(pop_size=config.pop_size, n_offsprings=config.n_offsprings,
                          **problem.operators(config.crossover_prob, config.mutation_eta,
                                              config.mutation_prob_var))
        algorithm.tournament_type = RANK_AND_CROWDING
        return algorithm
    selection = TournamentSelection(func_comp=binary_tournament)
    per_gene = config.mutation_prob_var
    if per_gene is None:
        per_gene = 1.0 / problem.n_genes  # as with pairs: 1 / (2 x groups) per variable
    mating = MixedVariableMating(
        selection=selection,
        crossover={Real: TwoPointCrossover(prob=config.crossover_prob), Choice: UX()},
        mutation={Real: PM(eta=config.mutation_eta, prob_var=per_gene),
                  Choice: ChoiceRandomMutation(prob_var=per_gene)},
        eliminate_duplicates=MixedVariableDuplicateElimination())
    return MixedNSGA2(config.pop_size, config.n_offsprings, mating)


__all__ = ["RANK_AND_CROWDING", "EvoFCConfig", "MixedNSGA2", "evofc_nsga2"]
