"""EvoFC's search space: per prunable group a pruning ratio and a ranking criterion.

:class:`CriterionRatioProblem` is the pymoo problem (Li et al., *Evolving filter criteria
for randomly initialized network pruning in image classification*, Neurocomputing 2024):
per prunable group a ratio in ``[lower bound, max_ratio]`` and one of several criteria
(EvoFC's four mask-gradient criteria by default) that ranks the group's channels. Two
encodings of the same search space:

- ``variables="pairs"`` (the paper): ``2 x groups`` real genes ``[r_0, c_0, r_1, c_1, ...]``,
  the criterion gene mapped to a criterion by equal-width bins;
- ``variables="mixed"``: pymoo mixed variables, a ``Real`` ratio and a ``Choice`` criterion
  per group (searched with :class:`~moprune.algorithms.evofc.MixedNSGA2`).

Lower bounds can follow a schedule (:func:`lower_bounds`): a constant, one value per stage
(stages are the feature-map resolutions, e.g. ``stages:0.2,0.4,0.6`` for ResNet-56), or a
cosine over depth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from pymoo.algorithms.moo.nsga2 import binary_tournament
from pymoo.core.variable import Choice, Real
from pymoo.operators.crossover.pntx import TwoPointCrossover
from pymoo.operators.mutation.pm import PM
from pymoo.operators.sampling.rnd import FloatRandomSampling
from pymoo.operators.selection.tournament import TournamentSelection

from moprune.core.encoding import CriterionRatioEncoding
from moprune.core.layers import spatial
from moprune.core.plan import PruningPlan
from moprune.core.space import PruningSpace
from moprune.criteria import CRITERIA, ScoreContext, rank_channels
from moprune.errors import ConfigError
from moprune.evaluation.scorer import Scorer
from moprune.problems.base import PruningProblem

EVOFC_CRITERIA = ("grad_l1", "grad_l2", "grad_es", "grad_gm")
VARIABLES = ("pairs", "mixed")
LOWER_BOUNDS_HELP = ("a number (every group), 'stages:A,B,C' (one per feature-map "
                     "resolution, first to last) or 'cosine:LOW,HIGH' (over depth)")


def group_stages(space: PruningSpace) -> np.ndarray:
    """Stage of each group: the index of its root layer's output resolution, first to last.

    Resolutions are numbered in order of first appearance over the groups (ResNet-56:
    32x32 -> 0, 16x16 -> 1, 8x8 -> 2). A group whose root is a linear layer belongs to the
    last stage.
    """
    seen: dict[int, int] = {}
    raw: list[int | None] = []
    for g in space.groups:
        shape = space.layers[g.name].out_shapes[0]
        if len(shape) <= 2:
            raw.append(None)
            continue
        hw = spatial(shape)
        raw.append(seen.setdefault(hw, len(seen)))
    last = max(seen.values(), default=0)
    return np.array([last if s is None else s for s in raw], dtype=np.int64)


def _floats(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"{what}: expected comma-separated numbers; got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{what}: expected finite numbers; got {text!r}")
    return values


def parse_lower_bounds(spec: str) -> tuple[str, list[float]]:
    """``(kind, values)`` of a lower-bound schedule string, checked for syntax.

    Kinds: ``"constant"`` (one number), ``"stages"`` (one or more) and ``"cosine"`` (two).
    """
    kind, _, rest = spec.partition(":")
    if kind == "stages":
        return kind, _floats(rest, "lower bounds 'stages:...'")
    if kind == "cosine":
        values = _floats(rest, "lower bounds 'cosine:LOW,HIGH'")
        if len(values) != 2:
            raise ConfigError(f"lower bounds 'cosine:LOW,HIGH' need two values; got {spec!r}")
        return kind, values
    if rest:
        raise ConfigError(f"unknown lower-bound schedule {spec!r}; use {LOWER_BOUNDS_HELP}")
    values = _floats(spec, "lower bound")
    if len(values) != 1:
        raise ConfigError(f"lower bound {spec!r}: one number applies to every group; for "
                         "one value per stage write 'stages:A,B,C'")
    if values[0] < 0:
        raise ConfigError(f"lower bounds must be finite and >= 0; got {spec!r}")
    return "constant", values


def lower_bounds(space: PruningSpace, spec: str | float | Sequence[float]) -> np.ndarray:
    """Per group lower bound of the pruning ratio, from a schedule.

    Args:
        space: The pruning space.
        spec: A number (every group); ``"stages:A,B,C"`` (one value per stage, see
            :func:`group_stages`); ``"cosine:LOW,HIGH"`` (``LOW + (HIGH - LOW) * (1 -
            cos(pi * d)) / 2`` at depth ``d = g / (groups - 1)``); or one value per group.

    Raises:
        ValueError: A malformed spec, or a stage count that does not match the model.

    """
    n = space.n_groups
    if isinstance(spec, str):
        kind, values = parse_lower_bounds(spec)
        if kind == "stages":
            stages = group_stages(space)
            n_stages = int(stages.max()) + 1 if n else 0
            if len(values) != n_stages:
                raise ConfigError(f"lower bounds {spec!r} give {len(values)} values, but the model "
                                 f"has {n_stages} stages (feature-map resolutions) among its "
                                 f"prunable groups: give one value per stage")
            out = np.array(values)[stages]
        elif kind == "cosine":
            lo, hi = values
            w = (1.0 - np.cos(np.pi * np.arange(n) / max(n - 1, 1))) / 2.0
            if n > 1:
                w[-1] = 1.0  # exactly HIGH at the last group
            out = lo * (1.0 - w) + hi * w
        else:
            out = np.full(n, values[0])
    elif isinstance(spec, (int, float)):
        out = np.full(n, float(spec))
    else:
        out = np.asarray(spec, dtype=np.float64)
        if out.shape != (n,):
            raise ConfigError(f"per-group lower bounds need {n} values (one per group); got "
                             f"{out.shape[0] if out.ndim == 1 else out.shape}")
    if (out < 0).any() or not np.isfinite(out).all():
        raise ConfigError(f"lower bounds must be finite and >= 0; {spec!r} gives {out.tolist()}")
    return out


class CriterionRatioProblem(PruningProblem):
    """Per prunable group a pruning ratio and a ranking criterion (EvoFC).

    Channel rankings are computed once, for every criterion, on the network the search
    starts from (``evaluator.model``); a genome picks, per group, how many channels to keep
    and whose ranking decides which.

    Args:
        evaluator: Accuracy of plans on the hold-out split (e.g. an
            :class:`~moprune.evaluation.inheritance.InheritanceEvaluator`).
        criteria: Registered criterion names, in bin order (default: EvoFC's four).
        lower: Lower-bound schedule of the ratios (see :func:`lower_bounds`).
        max_ratio: Upper bound of every ratio (< 1; 0.99 keeps ``ceil(0.01 n)`` channels).
        variables: ``"pairs"`` (real-coded pairs, the paper) or ``"mixed"`` (pymoo ``Real``
            and ``Choice`` variables).
        objectives: Names from ``moprune.problems.base.OBJECTIVES``.
        max_macs_ratio: Optional constraint on MACs / baseline MACs.
        max_accuracy_drop: Optional constraint on the accuracy drop (fraction).
        score_context: Batch of training images, seed and ``reinit`` for the criteria.

    """

    def __init__(self, evaluator: Scorer, criteria: Sequence[str] = EVOFC_CRITERIA,
                 lower: str | float | Sequence[float] = 0.0, max_ratio: float = 0.99,
                 variables: str = "pairs",
                 objectives: Sequence[str] = ("error", "macs_ratio"),
                 max_macs_ratio: float | None = None, max_accuracy_drop: float | None = None,
                 score_context: ScoreContext | None = None) -> None:
        if variables not in VARIABLES:
            raise ConfigError(f"variables must be one of {VARIABLES}; got {variables!r}")
        criteria = tuple(criteria)
        if not criteria or len(set(criteria)) != len(criteria):
            raise ConfigError(f"criteria must be distinct registered names; got {criteria}")
        space = evaluator.space
        rankings = {c: rank_channels(space, CRITERIA.get(c).score(evaluator.model, space,
                                                                  score_context))
                    for c in criteria}
        encoding = CriterionRatioEncoding(space, rankings, lower_bounds(space, lower),
                                          space.policy.min_channels, max_ratio)
        self.criteria = criteria
        self.variables = variables
        vars_ = None
        if variables == "mixed":
            vars_ = {}
            for g in range(space.n_groups):
                vars_[f"r{g}"] = Real(bounds=(float(encoding.lower[g]), max_ratio))
                vars_[f"c{g}"] = Choice(options=list(criteria))
        super().__init__(evaluator, encoding, objectives, max_macs_ratio, max_accuracy_drop,
                         xl=encoding.xl, xu=encoding.xu, vtype=float, vars=vars_)

    def to_genome(self, X: np.ndarray) -> np.ndarray:
        """Pair vectors ``(n, 2 x groups)`` of a population's X (pairs, or mixed dicts)."""
        X = np.asarray(X)
        if X.dtype != object:
            return np.atleast_2d(X).astype(np.float64)
        enc: CriterionRatioEncoding = self.encoding  # type: ignore[assignment]
        index = {c: i for i, c in enumerate(self.criteria)}
        rows = []
        for x in np.atleast_1d(X):
            if not isinstance(x, dict):
                raise TypeError(f"mixed-variable genomes are dicts {{'r0': ratio, 'c0': "
                                f"criterion, ...}}; got {type(x).__name__}")
            g = np.arange(self.space.n_groups)
            ratios = [float(x[f"r{i}"]) for i in g]
            genes = enc.criterion_gene(np.array([index[x[f"c{i}"]] for i in g]))
            rows.append(np.column_stack([ratios, genes]).ravel())
        return np.array(rows, dtype=np.float64)

    def decode_masks(self, X: np.ndarray) -> np.ndarray:
        return self.encoding.decode_masks(self.to_genome(X))

    def operators(self, crossover_prob: float = 0.9, mutation_eta: float = 3.0,
                  mutation_prob_var: float | None = None) -> dict[str, Any]:
        """EvoFC's operators for the pair genes (real-coded pairs only).

        Random sampling, binary tournament, two-point crossover, polynomial mutation (eta 3),
        duplicate elimination. Mixed variables need :class:`~moprune.algorithms.evofc.
        MixedNSGA2` (``evofc_nsga2``).
        """
        if self.variables != "pairs":
            raise ConfigError("mixed-variable EvoFC problems search with evofc_nsga2 (pymoo's "
                              "mixed-variable operators); operators() is for variables='pairs'")
        return {"sampling": FloatRandomSampling(),
                "selection": TournamentSelection(func_comp=binary_tournament),
                "crossover": TwoPointCrossover(prob=crossover_prob),
                "mutation": PM(eta=mutation_eta, prob_var=mutation_prob_var),
                "eliminate_duplicates": True}

    def _evaluate(self, x, out, *args, **kwargs):
        super()._evaluate(self.to_genome(x), out, *args, **kwargs)

    def genome_key(self, x: np.ndarray) -> str:
        return ",".join(repr(float(v)) for v in self.to_genome(np.asarray(x))[0])

    def genome_from_key(self, key: str) -> np.ndarray:
        """Inverse of :meth:`genome_key` (always the pair vector, also for mixed variables)."""
        return np.array([float(v) for v in key.split(",")], dtype=np.float64)

    @property
    def n_genes(self) -> int:
        """Real genes of the pair form (2 per group), whatever the variables."""
        return 2 * self.space.n_groups

    def describe(self, x: str | dict | np.ndarray) -> list[dict]:
        """Per group ratio, criterion and kept channels of a genome.

        ``x``: a recorded key (``candidates.jsonl``), a mixed-variable dict or a pair vector.
        """
        genome = self.genome_from_key(x) if isinstance(x, str) else self.to_genome(
            np.array([x], dtype=object) if isinstance(x, dict) else x)[0]
        return self.encoding.describe(genome)  # type: ignore[attr-defined]

    def decode(self, x: dict | np.ndarray) -> PruningPlan:
        """The plan of one genome (a pair vector or a mixed-variable dict)."""
        genome = self.to_genome(np.array([x], dtype=object) if isinstance(x, dict) else x)[0]
        return self.encoding.decode(genome)


__all__ = ["EVOFC_CRITERIA", "LOWER_BOUNDS_HELP", "VARIABLES", "CriterionRatioProblem",
           "group_stages", "lower_bounds", "parse_lower_bounds"]
