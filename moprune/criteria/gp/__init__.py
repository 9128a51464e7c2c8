"""Evolving transferable pruning functions with genetic programming (Liu et al., GECCO 2022).

- :mod:`~moprune.criteria.gp.primitives`: the 21 shape-safe operators, the DEAP primitive
  set and a batched interpreter;
- :mod:`~moprune.criteria.gp.terminals`: the terminals, from one pass of activations per layer;
- :mod:`~moprune.criteria.gp.function`: :class:`PruningFunction` (score, formula, simplify,
  save/load);
- :mod:`~moprune.criteria.gp.library`: the seeded hand-made metrics and the published function;
- :mod:`~moprune.problems.function`: proxy tasks, the pymoo problem, operators and the GP preset.
"""

from moprune.criteria.gp.function import PruningFunction, ScoreSettings, load_function, simplify
from moprune.criteria.gp.library import PUBLISHED, SEEDS

__all__ = ["PUBLISHED", "SEEDS", "PruningFunction", "ScoreSettings", "load_function",
           "simplify"]
