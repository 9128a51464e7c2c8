"""Named fine-tuning recipes for exports (``moprune export --recipe NAME``).

A recipe turns the task's fine-tuning settings and an epoch count into the settings of one
fine-tuning: ``task`` (the problem file's recipe), ``fast`` (large-batch, one-cycle, for
GPUs); methods register their published ones (DeepPruningES: ``deeppruninges``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from moprune.core.registry import Registry
from moprune.training.finetune import FinetuneConfig, fast_recipe

Recipe = Callable[[FinetuneConfig, int], FinetuneConfig]
RECIPES: Registry[Recipe] = Registry("recipe")
RECIPES.register("task", lambda base, epochs: dataclasses.replace(base, epochs=epochs))
RECIPES.register("fast", lambda base, epochs: fast_recipe(base, epochs))

__all__ = ["RECIPES", "Recipe"]
