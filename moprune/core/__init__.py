"""The engine: pruning spaces, plans, encodings, costs, gated and sliced evaluation, surgery.

Layer rules (:mod:`moprune.core.layers`) and objectives (:mod:`moprune.core.objectives`) are
registries the rest of the package reads; the core imports no model family and no method.
"""
