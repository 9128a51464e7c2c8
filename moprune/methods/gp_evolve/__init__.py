"""``moprune evolve``: genetic programming of pruning functions on proxy tasks."""
