"""Fronts of search results: non-dominated sets, knees, hypervolume, picking, plots, tables."""

from moprune.core.objectives import OBJECTIVES
from moprune.fronts.front import (
    KNEE_METHODS,
    ROLES,
    Elites,
    NoPickError,
    PickRule,
    front_records,
    hypervolume,
    hypervolume_history,
    knee_index,
    non_dominated,
    objective_values,
    pick,
    select_elites,
    trade_off_models,
)
from moprune.fronts.plots import (
    format_table,
    plot_elites_history,
    plot_front,
    plot_hypervolume,
    plot_kept_channels,
    plot_rounds,
    plot_trade_offs,
)

__all__ = [
    "KNEE_METHODS", "OBJECTIVES", "ROLES", "Elites", "NoPickError", "PickRule", "format_table",
    "front_records", "hypervolume", "hypervolume_history", "knee_index", "non_dominated",
    "objective_values", "pick", "plot_elites_history", "plot_front", "plot_hypervolume",
    "plot_kept_channels", "plot_rounds", "plot_trade_offs", "select_elites", "trade_off_models",
]
