"""Evolving transferable pruning functions with genetic programming (Liu et al., GECCO 2022).

- :mod:`~moprune.gp.primitives`: the 21 shape-safe operators, the DEAP primitive set and
  a batched interpreter;
- :mod:`~moprune.gp.terminals`: the terminals, from one pass of activations per layer;
- :mod:`~moprune.gp.function`: :class:`PruningFunction` (score, formula, simplify, save/load);
- :mod:`~moprune.gp.library`: the seeded hand-made metrics and the published function;
- :mod:`~moprune.gp.search`: proxy tasks, the pymoo problem, operators and the GP preset.
"""

from moprune.gp.function import PruningFunction, ScoreSettings, load_function, simplify
from moprune.gp.library import PUBLISHED, SEEDS

__all__ = ["PUBLISHED", "SEEDS", "PruningFunction", "ScoreSettings", "load_function",
           "simplify"]
