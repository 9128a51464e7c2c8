"""Analysis of search results: Pareto fronts, knees, hypervolume, model picking and plots."""

from moprune.analysis.front import (
    KNEE_METHODS,
    OBJECTIVES,
    NoPickError,
    PickRule,
    front_records,
    hypervolume,
    hypervolume_history,
    knee_index,
    non_dominated,
    objective_values,
    pick,
)
from moprune.analysis.plots import (
    format_table,
    plot_front,
    plot_hypervolume,
    plot_kept_channels,
    plot_rounds,
)

__all__ = [
    "KNEE_METHODS",
    "OBJECTIVES",
    "NoPickError",
    "PickRule",
    "format_table",
    "front_records",
    "hypervolume",
    "hypervolume_history",
    "knee_index",
    "non_dominated",
    "objective_values",
    "pick",
    "plot_front",
    "plot_hypervolume",
    "plot_kept_channels",
    "plot_rounds",
]
