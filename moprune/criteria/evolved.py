"""Criteria from expression trees.

The class-separation seeds, the published evolved function (Liu et al., GECCO 2022) and
``gp:<file>`` functions saved by ``moprune evolve``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from moprune.criteria.base import CRITERIA, GP_PREFIX, Criterion
from moprune.criteria.gp.function import PruningFunction, load_function
from moprune.criteria.gp.library import PUBLISHED, SEEDS

DESCRIPTIONS = {
    "snr": "|mu_P - mu_Q| / (std_P + std_Q) of the channel's feature maps, class P against "
           "the rest Q, summed over classes (signal-to-noise ratio)",
    "fisher": "(mu_P - mu_Q)^2 / (var_P + var_Q), summed over classes (Fisher ratio)",
    "symmetric_divergence": "symmetric KL divergence of Gaussian fits of class and non-class "
                            "activations, summed over classes",
    "t_statistic": "|mu_P - mu_Q| / sqrt(var_P/n_P + var_Q/n_Q), summed over classes (Welch)",
}


def function_criterion(fn: PruningFunction, name: str, description: str) -> Criterion:
    """A criterion scoring with ``fn`` (data criterion when it reads activations)."""
    return Criterion(name, fn.score, description, needs_data=fn.needs_data,
                     n_images=fn.settings.images)


@lru_cache(maxsize=64)
def _cached(path: str, mtime_ns: int, size: int) -> PruningFunction:
    return load_function(path)


def file_criterion(name: str) -> Criterion:
    """The criterion ``gp:<file>``: the function saved in ``<file>`` (reloaded if changed)."""
    path = Path(name[len(GP_PREFIX):]).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"criterion {name!r}: no file {str(path)!r}; write one with "
                                "`moprune evolve ... --out DIR` (DIR/best.gp.json)")
    stat = path.stat()
    fn = _cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    return function_criterion(fn, name, f"evolved: {fn.formula}")


CRITERIA.add_prefix(GP_PREFIX, file_criterion)
for _name, _expr in SEEDS.items():
    if _name in DESCRIPTIONS:
        CRITERIA.register(_name, function_criterion(PruningFunction(_expr, name=_name), _name,
                                                    DESCRIPTIONS[_name]))
CRITERIA.register("gp_published", function_criterion(
    PruningFunction(PUBLISHED, name="gp_published"), "gp_published",
    "the best evolved function of Liu et al. (GECCO 2022): per class, v_P/(v_Q+0.05) + "
    "v_Q/(v_P+0.05) + (std(mX) v_Q mX + v_P - mQ)^2/(v_P+v_Q+0.05)"))
