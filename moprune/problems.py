"""Pruning as pymoo problems: binary filter masks and per-group pruning ratios.

Both follow pymoo's contract exactly: a vectorised ``_evaluate`` writing ``out["F"]`` of
shape (n, n_obj), everything minimised, constraints ``out["G"] <= 0``. Any pymoo algorithm,
termination, callback or indicator works with them. Besides F and G, ``out`` carries
``accuracy``, ``loss``, ``macs`` and ``params`` per candidate (pymoo stores them on the
individuals).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from pymoo.core.problem import Problem

from moprune.cost import CostModel
from moprune.criteria import CRITERIA, ScoreContext, rank_channels
from moprune.encoding import CriterionRatioEncoding, MaskEncoding, RatioEncoding
from moprune.evaluator import MaskScorer

OBJECTIVES = ("error", "macs_ratio", "params_ratio")

Recorder = Callable[[list[dict]], None]
Encoding = MaskEncoding | RatioEncoding | CriterionRatioEncoding


def _check_objectives(objectives: Sequence[str]) -> tuple[str, ...]:
    objectives = tuple(objectives)
    bad = [o for o in objectives if o not in OBJECTIVES]
    if bad or not objectives or len(set(objectives)) != len(objectives):
        raise ValueError(f"objectives must be distinct names from {OBJECTIVES}; got {objectives}")
    return objectives


class PruningProblem(Problem):
    """Common part of the pruning problems: decode, evaluate, cost, record.

    Args:
        evaluator: Accuracy of plans on the hold-out split.
        encoding: Genome -> plan decoder (``decode``, ``n_var``).
        objectives: Names from ``OBJECTIVES``, all minimised.
        max_macs_ratio: Constraint ``macs / baseline macs <= max_macs_ratio``.
        max_accuracy_drop: Constraint ``baseline accuracy - accuracy <= max_accuracy_drop``
            (a fraction: 0.01 = one point).
        xl: Lower bounds.
        xu: Upper bounds.
        vtype: Variable type (bool or float).
        vars: pymoo mixed variables by name (``xl``/``xu`` then come from them).

    """

    def __init__(self, evaluator: MaskScorer, encoding: Encoding,
                 objectives: Sequence[str], max_macs_ratio: float | None,
                 max_accuracy_drop: float | None, xl: float | np.ndarray,
                 xu: float | np.ndarray, vtype: type, vars: dict | None = None) -> None:
        self.objectives = _check_objectives(objectives)
        if max_macs_ratio is not None and not 0.0 < max_macs_ratio <= 1.0:
            raise ValueError(f"max_macs_ratio must be in (0, 1]; got {max_macs_ratio}")
        if max_accuracy_drop is not None and not 0.0 <= max_accuracy_drop <= 1.0:
            raise ValueError(f"max_accuracy_drop is a fraction in [0, 1] (0.01 = 1 point); got "
                             f"{max_accuracy_drop}")
        self.evaluator = evaluator
        self.space = evaluator.space
        self.encoding = encoding
        self.cost_model = CostModel(self.space, evaluator.model)
        self.max_macs_ratio = max_macs_ratio
        self.max_accuracy_drop = max_accuracy_drop
        base = evaluator.baseline()
        self.baseline = {
            "val_accuracy": float(base.accuracy[0]),
            "val_loss": float(base.loss[0]),
            "macs": int(self.cost_model.base.macs[0]),
            "params": int(self.cost_model.base.params[0]),
            "groups": [{"name": g.name, "size": g.size, "residual": g.residual}
                       for g in self.space.groups],
        }
        self.recorder: Recorder | None = None
        n_constr = (max_macs_ratio is not None) + (max_accuracy_drop is not None)
        n_var = encoding.n_var
        if vars is not None:
            n_var, xl, xu = -1, None, None  # pymoo takes them from the variables
        super().__init__(n_var=n_var, n_obj=len(self.objectives), n_ieq_constr=n_constr,
                         xl=xl, xu=xu, vtype=vtype, vars=vars)

    def decode_masks(self, X: np.ndarray) -> np.ndarray:
        """Keep-masks ``(n, n_channels)`` of a genome matrix."""
        return self.encoding.decode_masks(X)

    def _kept_per_group(self, masks: np.ndarray) -> np.ndarray:
        """Kept channels per group, ``(n, n_groups)``."""
        return np.add.reduceat(masks.astype(np.int64), self.space.offsets[:-1], axis=1)

    def genome_key(self, x: np.ndarray) -> str:
        """A compact, exact string form of one genome (for run records)."""
        raise NotImplementedError

    def _evaluate(self, x, out, *args, **kwargs):
        X = np.atleast_2d(x)
        masks = self.decode_masks(X)
        res = self.evaluator.evaluate_masks(masks)
        cost = self.cost_model.cost_of_masks(masks)
        macs_ratio = cost.macs / self.baseline["macs"]
        params_ratio = cost.params / self.baseline["params"]
        columns = {"error": 1.0 - res.accuracy, "macs_ratio": macs_ratio,
                   "params_ratio": params_ratio}
        out["F"] = np.column_stack([columns[o] for o in self.objectives])
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
            self.recorder([
                {"genome": self.genome_key(X[i]), "val_accuracy": float(res.accuracy[i]),
                 "val_loss": float(res.loss[i]), "macs": int(cost.macs[i]),
                 "params": int(cost.params[i]), "macs_ratio": float(macs_ratio[i]),
                 "params_ratio": float(params_ratio[i]),
                 "kept": kept[i].tolist()}
                for i in range(len(X))
            ])


class FilterMaskProblem(PruningProblem):
    """One bit per channel of every prunable group (1 = keep).

    Args:
        evaluator: Accuracy of plans on the hold-out split.
        objectives: Names from ``OBJECTIVES``; default error and MACs ratio.
        max_macs_ratio: Optional constraint on MACs / baseline MACs.
        max_accuracy_drop: Optional constraint on the accuracy drop (fraction).
        repair_criterion: Criterion that decides which channels a group gets back when a
            genome keeps fewer than the space's ``min_channels``.
        score_context: Batch of training images and seed for data or random criteria.

    """

    def __init__(self, evaluator: MaskScorer, objectives: Sequence[str] = ("error", "macs_ratio"),
                 max_macs_ratio: float | None = None, max_accuracy_drop: float | None = None,
                 repair_criterion: str = "l1", score_context: ScoreContext | None = None) -> None:
        space = evaluator.space
        scores = CRITERIA.get(repair_criterion).score(evaluator.model, space, score_context)
        ranking = rank_channels(space, scores)
        encoding = MaskEncoding(space, ranking, space.policy.min_channels)
        super().__init__(evaluator, encoding, objectives, max_macs_ratio, max_accuracy_drop,
                         xl=0, xu=1, vtype=bool)

    def genome_key(self, x: np.ndarray) -> str:
        return np.packbits(np.asarray(x, dtype=bool)).tobytes().hex()

    def genome_from_key(self, key: str) -> np.ndarray:
        """Inverse of :meth:`genome_key`."""
        bits = np.unpackbits(np.frombuffer(bytes.fromhex(key), dtype=np.uint8))
        return bits[: self.n_var].astype(bool)


class LayerRatioProblem(PruningProblem):
    """One pruning ratio per prunable group; channels ranked by a criterion.

    Args:
        evaluator: Accuracy of plans on the hold-out split.
        criterion: Registered criterion name ranking channels within a group.
        max_ratio: Upper bound of every ratio (< 1).
        objectives: Names from ``OBJECTIVES``.
        max_macs_ratio: Optional constraint on MACs / baseline MACs.
        max_accuracy_drop: Optional constraint on the accuracy drop (fraction).
        score_context: Batch of training images and seed for data or random criteria.

    """

    def __init__(self, evaluator: MaskScorer, criterion: str = "l1", max_ratio: float = 0.9,
                 objectives: Sequence[str] = ("error", "macs_ratio"),
                 max_macs_ratio: float | None = None,
                 max_accuracy_drop: float | None = None,
                 score_context: ScoreContext | None = None) -> None:
        space = evaluator.space
        self.criterion = criterion
        scores = CRITERIA.get(criterion).score(evaluator.model, space, score_context)
        ranking = rank_channels(space, scores)
        encoding = RatioEncoding(space, ranking, space.policy.min_channels, max_ratio)
        super().__init__(evaluator, encoding, objectives, max_macs_ratio, max_accuracy_drop,
                         xl=0.0, xu=max_ratio, vtype=float)

    def genome_key(self, x: np.ndarray) -> str:
        return ",".join(repr(float(v)) for v in np.asarray(x, dtype=np.float64))

    def genome_from_key(self, key: str) -> np.ndarray:
        """Inverse of :meth:`genome_key`."""
        return np.array([float(v) for v in key.split(",")], dtype=np.float64)
