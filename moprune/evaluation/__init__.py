"""Scorers of pruning plans: as they are, after retraining, by weight inheritance, on Dask."""
