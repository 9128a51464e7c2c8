"""The common part of the pruning problems: decode, score, cost, objectives, record.

Every pruning problem follows pymoo's contract exactly: a vectorised ``_evaluate`` writing
``out["F"]`` of shape (n, n_obj), everything minimised, constraints ``out["G"] <= 0``. Any
pymoo algorithm, termination, callback or indicator works with them; ``operators()`` gives
the genetic operators that fit the genome. Besides F and G, ``out`` carries ``accuracy``,
``loss``, ``macs`` and ``params`` per candidate (pymoo stores them on the individuals).
Objectives come from :data:`moprune.core.objectives.OBJECTIVES`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
from pymoo.core.problem import Problem

from moprune.core.cost import CostModel
from moprune.core.objectives import OBJECTIVES, Metrics, check_objectives
from moprune.core.plan import PruningPlan
from moprune.errors import ConfigError
from moprune.evaluation.scorer import EvalResult, Scorer

Recorder = Callable[[list[dict]], None]


class Encoding(Protocol):
    """What a problem needs from its genome encoding (``moprune.core.encoding``)."""

    n_var: int

    def decode(self, x: np.ndarray) -> PruningPlan: ...

    def decode_masks(self, X: np.ndarray) -> np.ndarray: ...


class PruningProblem(Problem):
    """Common part of the pruning problems: decode, evaluate, cost, record.

    Args:
        evaluator: Accuracy of plans on the hold-out split (any scorer).
        encoding: Genome -> plan decoder (``decode``, ``decode_masks``, ``n_var``).
        objectives: Names from ``moprune.core.objectives.OBJECTIVES``, all minimised.
        max_macs_ratio: Constraint ``macs / baseline macs <= max_macs_ratio``.
        max_accuracy_drop: Constraint ``baseline accuracy - accuracy <= max_accuracy_drop``
            (a fraction: 0.01 = one point).
        xl: Lower bounds.
        xu: Upper bounds.
        vtype: Variable type (bool or float).
        vars: pymoo mixed variables by name (``xl``/``xu`` then come from them).

    """

    def __init__(self, evaluator: Scorer, encoding: Encoding,
                 objectives: Sequence[str], max_macs_ratio: float | None,
                 max_accuracy_drop: float | None, xl: float | np.ndarray | None,
                 xu: float | np.ndarray | None, vtype: type, vars: dict | None = None) -> None:
        self.objectives = check_objectives(tuple(objectives))
        if max_macs_ratio is not None and not 0.0 < max_macs_ratio <= 1.0:
            raise ConfigError(f"max_macs_ratio must be in (0, 1]; got {max_macs_ratio}")
        if max_accuracy_drop is not None and not 0.0 <= max_accuracy_drop <= 1.0:
            raise ConfigError(f"max_accuracy_drop is a fraction in [0, 1] (0.01 = 1 point); got "
                              f"{max_accuracy_drop}")
        self.evaluator = evaluator
        self.space = evaluator.space
        self.encoding = encoding
        self.cost_model = CostModel(self.space, evaluator.model)
        self.max_macs_ratio = max_macs_ratio
        self.max_accuracy_drop = max_accuracy_drop
        base = evaluator.baseline()
        self.baseline: dict[str, Any] = {
            "val_accuracy": float(base.accuracy[0]),
            "val_loss": float(base.loss[0]),
            "macs": int(self.cost_model.base.macs[0]),
            "params": int(self.cost_model.base.params[0]),
            "groups": [{"name": g.name, "size": g.size, "residual": g.residual}
                       for g in self.space.groups],
        }
        self.recorder: Recorder | None = None
        # scores recorded by an earlier run, by genome key (a replay scores these from here)
        self.recorded: dict[str, tuple[float, float]] = {}
        n_constr = (max_macs_ratio is not None) + (max_accuracy_drop is not None)
        n_var = encoding.n_var
        if vars is not None:
            n_var, xl, xu = -1, None, None  # pymoo takes them from the variables
        super().__init__(n_var=n_var, n_obj=len(self.objectives), n_ieq_constr=n_constr,
                         xl=xl, xu=xu, vtype=vtype, vars=vars)

    def decode_masks(self, X: np.ndarray) -> np.ndarray:
        """Keep-masks ``(n, n_channels)`` of a genome matrix."""
        return self.encoding.decode_masks(X)

    def decode(self, x: np.ndarray) -> PruningPlan:
        """The plan of one genome."""
        return self.encoding.decode(x)

    def check_genomes(self, X: np.ndarray) -> np.ndarray:
        """The genome matrix, refused (``GenomeError``) when it does not fit the encoding."""
        return np.atleast_2d(X)

    def operators(self) -> dict[str, Any]:
        """The pymoo operators that fit the genome, as keyword arguments of a genetic algorithm."""
        raise NotImplementedError(f"{type(self).__name__} does not name its operators")

    def _kept_per_group(self, masks: np.ndarray) -> np.ndarray:
        """Kept channels per group, ``(n, n_groups)``."""
        return np.add.reduceat(masks.astype(np.int64), self.space.offsets[:-1], axis=1)

    def genome_key(self, x: np.ndarray) -> str:
        """A compact, exact string form of one genome (for run records)."""
        raise NotImplementedError

    def genome_from_key(self, key: str) -> np.ndarray:
        """Inverse of :meth:`genome_key`."""
        raise NotImplementedError

    def _score(self, X: np.ndarray, masks: np.ndarray) -> EvalResult:
        """Accuracy and loss of the rows: recorded ones from :attr:`recorded`, the rest scored."""
        if not self.recorded:
            return self.evaluator.evaluate_masks(masks)
        keys = [self.genome_key(x) for x in X]
        todo = [i for i, k in enumerate(keys) if k not in self.recorded]
        acc = np.array([self.recorded.get(k, (np.nan, np.nan))[0] for k in keys])
        loss = np.array([self.recorded.get(k, (np.nan, np.nan))[1] for k in keys])
        if todo:
            res = self.evaluator.evaluate_masks(masks[todo])
            acc[todo], loss[todo] = res.accuracy, res.loss
        return EvalResult(accuracy=acc, loss=loss)

    def _evaluate(self, x, out, *args, **kwargs):
        X = self.check_genomes(x)
        masks = self.decode_masks(X)
        res = self._score(X, masks)
        cost = self.cost_model.cost_of_masks(masks)
        macs_ratio = cost.macs / self.baseline["macs"]
        params_ratio = cost.params / self.baseline["params"]
        metrics = Metrics(accuracy=res.accuracy, loss=res.loss, macs=cost.macs,
                          params=cost.params, macs_ratio=macs_ratio, params_ratio=params_ratio,
                          masks=masks, baseline=self.baseline)
        objectives = [OBJECTIVES.get(o) for o in self.objectives]
        columns = [np.asarray(o.compute(metrics), dtype=np.float64) for o in objectives]
        out["F"] = np.column_stack(columns)
        g = []
        if self.max_macs_ratio is not None:
            g.append(macs_ratio - self.max_macs_ratio)
        if self.max_accuracy_drop is not None:
            g.append(self.baseline["val_accuracy"] - self.max_accuracy_drop - res.accuracy)
        if g:
            out["G"] = np.column_stack(g)
        out["accuracy"], out["loss"] = res.accuracy, res.loss
        out["macs"], out["params"] = cost.macs, cost.params
        if self.recorder is not None:
            kept = self._kept_per_group(masks)
            stored = [(o.name, c) for o, c in zip(objectives, columns, strict=True) if o.stored]
            self.recorder([
                {"genome": self.genome_key(X[i]), "val_accuracy": float(res.accuracy[i]),
                 "val_loss": float(res.loss[i]), "macs": int(cost.macs[i]),
                 "params": int(cost.params[i]), "macs_ratio": float(macs_ratio[i]),
                 "params_ratio": float(params_ratio[i]),
                 "kept": kept[i].tolist(), **{name: float(c[i]) for name, c in stored}}
                for i in range(len(X))
            ])


__all__ = ["Encoding", "PruningProblem", "Recorder"]
