"""Reading what older versions of moprune wrote: checkpoints and run identities.

Checkpoints are pickles, which name classes by module path; the layered package (0.2) moved
classes, so :class:`Unpickler` maps the old paths. A run identity key added later has the value
runs made before it implicitly had (:data:`LEGACY_IDENTITY`).
"""

from __future__ import annotations

import importlib
import pickle
from typing import Any

# identity keys added later, with the value that runs made before them implicitly had
LEGACY_IDENTITY = {"precision": "fp32"}

# Modules whose classes moved when the package was layered (0.1 -> 0.2). Each old module maps
# to the modules its names may now live in.
MOVED_MODULES = {
    "moprune.algorithms": ("moprune.algorithms.presets", "moprune.problems.mask"),
    "moprune.deeppruninges": ("moprune.algorithms.deeppruninges",),
    "moprune.coevolution": ("moprune.algorithms.coevolution",),
    "moprune.evofc": ("moprune.algorithms.evofc", "moprune.problems.criterion_ratio"),
    "moprune.problems": ("moprune.problems.mask", "moprune.problems.ratio",
                         "moprune.problems.base"),
    "moprune.gp.operators": ("moprune.algorithms.gp",),
    "moprune.gp.search": ("moprune.problems.function",),
    "moprune.gp.primitives": ("moprune.criteria.gp.primitives",),
    "moprune.training": ("moprune.training.finetune",),
}


class Unpickler(pickle.Unpickler):
    """Unpickles checkpoints, also those naming classes at their pre-0.2 module paths."""

    def find_class(self, module: str, name: str) -> Any:
        for candidate in MOVED_MODULES.get(module, ()):
            mod = importlib.import_module(candidate)
            if hasattr(mod, name):
                return getattr(mod, name)
        return super().find_class(module, name)


__all__ = ["LEGACY_IDENTITY", "MOVED_MODULES", "Unpickler"]
