"""Pareto fronts, knees, hypervolume and model picking over a search's candidate records."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from pymoo.core.decision_making import NeighborFinder
from pymoo.indicators.hv import HV
from pymoo.mcdm.high_tradeoff import HighTradeoffPoints
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from moprune.core.objectives import OBJECTIVES
from moprune.core.registry import Registry
from moprune.errors import ConfigError, NoPickError

DEFAULT_OBJECTIVES: tuple[str, ...] = ("error", "macs_ratio")

# --------------------------------------------------------------------------- objectives


def objective_values(records: list[dict], objectives: Sequence[str]) -> np.ndarray:
    """Objective matrix of candidate records (all objectives minimised).

    Args:
        records: Candidate records (dicts with ``val_accuracy``, ``macs_ratio``, ...).
        objectives: Names in :data:`moprune.core.objectives.OBJECTIVES`, e.g. ``"error"``
            (1 - val_accuracy), ``"macs_ratio"``, ``"params_ratio"``.

    Returns:
        Array of shape ``(len(records), len(objectives))``.

    Raises:
        UnknownNameError: An objective name is not registered (the message lists valid ones).
        ValueError: No objectives were given, or a record lacks a field an objective needs.

    """
    if len(objectives) == 0:
        raise ConfigError(
            f"expected at least one objective name, got none; valid names: {OBJECTIVES.names()}"
        )
    funcs = [OBJECTIVES.get(name) for name in objectives]
    F = np.empty((len(records), len(funcs)), dtype=float)
    for i, record in enumerate(records):
        for j, (name, objective) in enumerate(zip(objectives, funcs, strict=True)):
            try:
                F[i, j] = objective.value(record)
            except KeyError as err:
                raise ConfigError(
                    f"candidate record {record.get('id', i)!r} has no field {err.args[0]!r} "
                    f"needed by objective {name!r}; present fields: {sorted(record)}. "
                    "Fix the candidates file or choose other objectives."
                ) from None
    return F


# --------------------------------------------------------------------------- fronts


def _check_matrix(F: np.ndarray, what: str) -> np.ndarray:
    F = np.asarray(F, dtype=float)
    if F.ndim != 2:
        raise ConfigError(f"{what}: expected a 2-D array (n_points, n_objectives), got {F.shape}")
    if len(F) == 0:
        raise ConfigError(f"{what}: expected at least one point, got an empty array {F.shape}")
    if not np.all(np.isfinite(F)):
        rows = np.unique(np.nonzero(~np.isfinite(F))[0]).tolist()
        raise ConfigError(f"{what}: rows {rows} contain NaN or inf; drop or fix them first")
    return F


def non_dominated(F: np.ndarray) -> np.ndarray:
    """Return the indices of the first non-dominated front of ``F``.

    Args:
        F: Objective matrix ``(n, m)``, minimised.

    Returns:
        Indices into ``F``, sorted by the first objective, then the second (and so on); of
        several identical rows only the first (lowest index) is kept. Empty for an empty ``F``.

    """
    F = np.asarray(F, dtype=float)
    if F.ndim == 2 and len(F) == 0:
        return np.empty(0, dtype=int)
    F = _check_matrix(F, "non_dominated")
    front = NonDominatedSorting().do(F, only_non_dominated_front=True)
    front = np.asarray(front, dtype=int)
    # lexsort: last key is primary; the index is the final tie-break (keeps the first duplicate)
    keys = [front] + [F[front, j] for j in reversed(range(F.shape[1]))]
    front = front[np.lexsort(keys)]
    same_as_prev = [np.array_equal(F[front[k]], F[front[k - 1]]) for k in range(1, len(front))]
    keep = [0] + [k for k, same in enumerate(same_as_prev, start=1) if not same]
    return front[keep]


def front_records(
    records: list[dict], objectives: Sequence[str] = DEFAULT_OBJECTIVES
) -> list[dict]:
    """Non-dominated candidate records, sorted by MACs ascending (ties: higher accuracy, id)."""
    if not records:
        return []
    idx = non_dominated(objective_values(records, objectives))
    front = [records[i] for i in idx]
    return sorted(front, key=lambda r: (r["macs"], -r["val_accuracy"], r.get("id", 0)))


# --------------------------------------------------------------------------- knees


def _normalise(F: np.ndarray) -> np.ndarray:
    """Scale each objective to [0, 1] by the set's min/max (constant objectives become 0)."""
    lo, hi = F.min(axis=0), F.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return (F - lo) / span


def _knee_distance(F: np.ndarray, weights: Sequence[float] | None) -> int:
    """Weighted L1 distance to the ideal point of the normalised set (as in DeepPruningES)."""
    m = F.shape[1]
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (m,) or not np.all(np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
        raise ConfigError(
            f"knee weights: expected {m} finite non-negative numbers, not all zero (one per "
            f"objective), got {list(np.atleast_1d(w))}"
        )
    # after normalisation the ideal point is the origin, so the distance is sum(w * f)
    return int(np.argmin(_normalise(F) @ w))


def _tradeoff_values(F: np.ndarray) -> np.ndarray:
    """Per-point trade-off (least improvement per unit deterioration), as in pymoo's HTP."""
    finder = NeighborFinder(F, epsilon=0.125, n_min_neigbors="auto", consider_2d=False)
    mu = np.full(len(F), -np.inf)
    for i in range(len(F)):
        diff = F[finder.find(i)] - F[i]
        sacrifice = np.maximum(0, diff).sum(axis=1)
        gain = np.maximum(0, -diff).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = sacrifice / gain
        if np.any(~np.isnan(ratio)):
            mu[i] = np.nanmin(ratio)
    return mu


def _knee_tradeoff(F: np.ndarray, weights: Sequence[float] | None) -> int:
    """Pymoo ``HighTradeoffPoints``; the highest trade-off wins; falls back to "distance"."""
    Fn = _normalise(F)
    if len(F) < 3 or len(np.unique(Fn, axis=0)) < 3:
        return _knee_distance(F, weights)
    # HighTradeoffPoints calls warnings.filterwarnings("ignore"); keep that change local
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        try:
            found = HighTradeoffPoints().do(Fn)
        except ValueError:  # pymoo fails on degenerate sets (no finite trade-off)
            found = None
    if found is None or len(found) == 0:
        return _knee_distance(F, weights)
    found = np.asarray(found, dtype=int)
    if len(found) == 1:
        return int(found[0])
    mu = _tradeoff_values(Fn)
    return int(found[np.argmax(mu[found])])


def _knee_line(F: np.ndarray, weights: Sequence[float] | None) -> int:
    """Largest perpendicular distance to the line through the two extreme points (2-D only)."""
    if F.shape[1] != 2:
        raise ConfigError(
            f"knee method 'line' needs exactly 2 objectives, got {F.shape[1]}; "
            "use method 'distance' or 'tradeoff' for more objectives"
        )
    Fn = _normalise(F)
    a = Fn[np.lexsort((Fn[:, 1], Fn[:, 0]))[0]]  # best first objective
    b = Fn[np.lexsort((Fn[:, 0], Fn[:, 1]))[0]]  # best second objective
    d = b - a
    length = float(np.hypot(d[0], d[1]))
    if length == 0.0:
        return 0
    dist = np.abs(d[0] * (Fn[:, 1] - a[1]) - d[1] * (Fn[:, 0] - a[0])) / length
    return int(np.argmax(dist))


KNEE_METHODS: Registry[Callable[[np.ndarray, Sequence[float] | None], int]] = Registry(
    "knee method"
)
KNEE_METHODS.register("distance", _knee_distance)
KNEE_METHODS.register("tradeoff", _knee_tradeoff)
KNEE_METHODS.register("line", _knee_line)


def knee_index(
    F: np.ndarray, method: str = "distance", weights: Sequence[float] | None = None
) -> int:
    """Index into ``F`` of the knee of a (non-dominated) set.

    Methods (all scale-free: each objective is first normalised to [0, 1] by the set's
    min/max):

    * ``"distance"``: the point with the smallest weighted L1 (Manhattan) distance to the
      ideal point, ``sum_i w_i * f_i``, as in DeepPruningES; ``weights`` default to equal.
    * ``"tradeoff"``: pymoo's ``HighTradeoffPoints``; if it returns several, the one with the
      highest trade-off; if it returns none (or the set is too small), ``"distance"``.
    * ``"line"``: the point farthest from the line through the two extreme points
      (2 objectives only).

    Args:
        F: Objective matrix ``(n, m)``, minimised; normally a non-dominated set.
        method: A name in ``KNEE_METHODS``.
        weights: Per-objective weights for ``"distance"`` (and the ``"tradeoff"`` fallback).

    Returns:
        The knee's row index; 0 for a single point. Ties go to the lowest index.

    Raises:
        UnknownNameError: ``method`` is unknown (the message lists valid methods).
        ValueError: ``F`` is empty, not 2-D, or contains NaN/inf; bad weights; ``"line"`` with
            other than 2 objectives.

    """
    fn = KNEE_METHODS.get(method)
    F = _check_matrix(F, "knee_index")
    if len(F) == 1:
        return 0
    return fn(F, weights)


# --------------------------------------------------------------------------- elites

ROLES = ("heavy", "light", "knee")


@dataclass(frozen=True)
class Elites:
    """Indices (into the population) of the three elites; they may coincide."""

    heavy: int
    light: int
    knee: int

    def indices(self) -> list[int]:
        return [self.heavy, self.light, self.knee]


def _argmin_lex(F: np.ndarray, rows: np.ndarray, primary: int) -> int:
    """Row with the smallest ``primary`` objective; ties by the others in order, then index."""
    keys = [rows] + [F[rows, j] for j in reversed(range(F.shape[1])) if j != primary]
    keys.append(F[rows, primary])
    return int(rows[np.lexsort(keys)[0]])


def select_elites(F: np.ndarray, CV: np.ndarray | None = None, knee_method: str = "distance",
                  knee_weights: Sequence[float] | None = None, heavy_objective: int = 0,
                  light_objective: int = 1) -> Elites:
    """The heavy, light and knee members of the non-dominated set of ``F``.

    Feasible rows (``CV <= 0``) are preferred; when none is feasible, the rows of least
    constraint violation are used. Of identical rows the first counts.

    Args:
        F: Objectives ``(n, m)``, minimised, ``m >= 2``.
        CV: Constraint violation per row (None: all feasible).
        knee_method: A name in ``KNEE_METHODS``; the knee is computed on the non-dominated
            set, ordered by the first objective (so ties go to the member best in it), and
            ``moprune pick --knee`` applies this same function to a run's front.
        knee_weights: Weights of the ``"distance"`` knee (None = equal).
        heavy_objective: Objective column minimised by the heavy elite.
        light_objective: Objective column minimised by the light elite.

    Returns:
        Indices into ``F``.

    """
    F = np.asarray(F, dtype=float)
    if F.ndim != 2 or F.shape[1] < 2 or len(F) == 0:
        raise ConfigError(f"select_elites needs a non-empty (n, m>=2) objective matrix; got "
                         f"shape {F.shape}")
    for name, col in (("heavy_objective", heavy_objective), ("light_objective", light_objective)):
        if not 0 <= col < F.shape[1]:
            raise ConfigError(f"{name}={col} is not a column of the {F.shape[1]} objectives")
    rows = np.arange(len(F))
    if CV is not None:
        cv = np.asarray(CV, dtype=float).reshape(-1)
        rows = rows[cv <= 0] if np.any(cv <= 0) else rows[cv == cv.min()]
    nd = rows[non_dominated(F[rows])]
    heavy = _argmin_lex(F, nd, heavy_objective)
    light = _argmin_lex(F, nd, light_objective)
    knee = int(nd[knee_index(F[nd], knee_method, knee_weights)])
    return Elites(heavy=heavy, light=light, knee=knee)


# --------------------------------------------------------------------------- hypervolume


def hypervolume(F: np.ndarray, ref_point: Sequence[float]) -> float:
    """Hypervolume of ``F`` (minimised) with respect to ``ref_point`` (pymoo ``HV``).

    Points that do not strictly dominate ``ref_point`` in every objective are ignored; an
    empty set (or one with no such point) has hypervolume 0.
    """
    ref = np.asarray(ref_point, dtype=float)
    F = np.asarray(F, dtype=float)
    if F.ndim == 2 and len(F) == 0:
        return 0.0
    F = _check_matrix(F, "hypervolume")
    if ref.shape != (F.shape[1],) or not np.all(np.isfinite(ref)):
        raise ConfigError(
            f"hypervolume: expected a finite reference point with {F.shape[1]} values (one per "
            f"objective), got {ref.tolist()}"
        )
    inside = F[np.all(F < ref, axis=1)]
    if len(inside) == 0:
        return 0.0
    return float(HV(ref_point=ref, norm_ref_point=False)(inside))


def _with_ratios(record: dict, baseline: dict) -> dict:
    """Return the record with missing ``macs_ratio``/``params_ratio`` filled from baseline."""
    if "macs_ratio" in record and "params_ratio" in record:
        return record
    filled = dict(record)
    for key in ("macs", "params"):
        if f"{key}_ratio" not in filled and key in filled and baseline.get(key):
            filled[f"{key}_ratio"] = float(filled[key]) / float(baseline[key])
    return filled


def hypervolume_history(
    records: list[dict],
    objectives: Sequence[str],
    ref_point: Sequence[float] | None,
    baseline: dict,
) -> list[tuple[int, float]]:
    """Hypervolume of the cumulative archive after each generation.

    Args:
        records: Candidate records with a ``generation`` field.
        objectives: Objective names (see :func:`objective_values`).
        ref_point: Reference point, one value per objective; ``None`` means 1.0 for every
            objective (an always-wrong classifier / the unpruned model's size).
        baseline: The unpruned model; used to derive ``macs_ratio``/``params_ratio`` for
            records that lack them.

    Returns:
        ``[(g, hv), ...]`` for every generation ``g`` present, ascending, where ``hv`` is the
        hypervolume of all records with ``generation <= g``.

    """
    if not records:
        return []
    ref = [1.0] * len(objectives) if ref_point is None else list(ref_point)
    full = [_with_ratios(r, baseline) for r in records]
    F = objective_values(full, objectives)
    gens = np.array([int(r["generation"]) for r in full])
    return [(int(g), hypervolume(F[gens <= g], ref)) for g in np.unique(gens)]


# --------------------------------------------------------------------------- picking

PICK_KINDS: tuple[str, ...] = ("knee", "max_macs_ratio", "max_accuracy_drop", "max_objective")


@dataclass(frozen=True)
class PickRule:
    """How to choose one model from a search's candidates.

    Attributes:
        kind: ``"knee"``, ``"max_macs_ratio"`` (value: the largest allowed MACs ratio),
            ``"max_accuracy_drop"`` (value: the largest allowed drop in validation accuracy
            below the baseline, as a fraction: 0.01 = 1 point) or ``"max_objective"``
            (value: the largest allowed value of ``objective``).
        value: The rule's bound (``None`` for ``"knee"``).
        knee_method: Knee method for ``"knee"`` (a name in ``KNEE_METHODS``).
        knee_weights: Per-objective weights of the ``"distance"`` knee (None = equal).
        objective: The objective bounded by ``"max_objective"`` (a registered name).

    """

    kind: str
    value: float | None = None
    knee_method: str = "distance"
    knee_weights: tuple[float, ...] | None = None
    objective: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in PICK_KINDS:
            raise ConfigError(f"unknown pick rule {self.kind!r}; valid kinds: {list(PICK_KINDS)}")
        if (self.kind == "max_objective") != (self.objective is not None):
            raise ConfigError("pick rule 'max_objective' names its objective (objective=...); "
                              "the other rules take none")
        if self.objective is not None:
            OBJECTIVES.get(self.objective)
        if self.kind == "knee":
            KNEE_METHODS.get(self.knee_method)
            if self.value is not None:
                raise ConfigError(f"pick rule 'knee' takes no value, got {self.value!r}")
            return
        if self.value is None or not np.isfinite(self.value) or self.value < 0:
            raise ConfigError(
                f"pick rule {self.kind!r} needs a finite non-negative value, got {self.value!r}"
            )

    @property
    def label(self) -> str:
        """Short name for plots and tables, e.g. ``"knee"``, ``"macs<=0.5"``, ``"drop<=1pt"``."""
        if self.kind == "knee" or self.value is None:
            return "knee"
        if self.kind == "max_macs_ratio":
            return f"macs<={self.value:g}"
        if self.kind == "max_objective":
            return f"{self.objective}<={self.value:g}"
        return f"drop<={100 * self.value:g}pt"


def pick(
    records: list[dict],
    baseline: dict,
    rule: PickRule,
    objectives: Sequence[str] = DEFAULT_OBJECTIVES,
) -> dict:
    """Choose one candidate record by ``rule`` (selection uses ``val_accuracy`` only).

    * ``knee``: the knee (``rule.knee_method``) of the non-dominated front over ``objectives``.
    * ``max_macs_ratio`` R: among records with ``macs_ratio <= R`` the highest val accuracy
      (ties: fewer MACs, then lower id).
    * ``max_accuracy_drop`` D: among records with ``val_accuracy >= baseline - D`` the fewest
      MACs (ties: higher val accuracy, then lower id).

    Raises:
        NoPickError: No record satisfies the rule (or there are no records).

    """
    if not records:
        raise NoPickError("no candidate records to pick from; run or resume the search first")
    if rule.kind == "knee":  # the same rule (and tie-break) as the heavy/light/knee trio
        return trade_off_models(records, objectives, rule.knee_method,
                                rule.knee_weights)["knee"]
    if rule.kind == "max_macs_ratio":
        R = float(rule.value)  # type: ignore[arg-type]
        ok = [r for r in records if r["macs_ratio"] <= R]
        if not ok:
            best = min(r["macs_ratio"] for r in records)
            raise NoPickError(
                f"no candidate has macs_ratio <= {R:g}; the smallest macs_ratio in this run is "
                f"{best:.4g}; relax --max-macs-ratio"
            )
        return min(ok, key=lambda r: (-r["val_accuracy"], r["macs"], r.get("id", 0)))
    if rule.kind == "max_objective":
        objective = OBJECTIVES.get(rule.objective)  # type: ignore[arg-type]
        bound = float(rule.value)  # type: ignore[arg-type]
        ok = [r for r in records if objective.value(r) <= bound]
        if not ok:
            best = min(objective.value(r) for r in records)
            raise NoPickError(
                f"no candidate has {rule.objective} <= {bound:g}; the smallest {rule.objective} "
                f"in this run is {best:.4g}; relax --max")
        return min(ok, key=lambda r: (-r["val_accuracy"], r["macs"], r.get("id", 0)))
    D = float(rule.value)  # type: ignore[arg-type]
    base = float(baseline["val_accuracy"])
    floor = base - D
    ok = [r for r in records if r["val_accuracy"] >= floor - 1e-9]
    if not ok:
        best = max(r["val_accuracy"] for r in records)
        raise NoPickError(
            f"no candidate has val_accuracy >= {floor:.4f} (baseline {base:.4f} - {D:g}); the "
            f"highest val_accuracy in this run is {best:.4f} (a drop of {base - best:.4f}); "
            "relax --max-accuracy-drop"
        )
    return min(ok, key=lambda r: (r["macs"], -r["val_accuracy"], r.get("id", 0)))


def role_columns(objectives: Sequence[str]) -> tuple[int, int]:
    """Objective columns of the heavy and light roles: ``"error"`` and ``"macs_ratio"``.

    Without ``"error"`` the first column is heavy's; without ``"macs_ratio"`` light takes the
    first other column. A single objective gives ``(0, 0)``.
    """
    objectives = tuple(objectives)
    heavy = objectives.index("error") if "error" in objectives else 0
    if "macs_ratio" in objectives and objectives.index("macs_ratio") != heavy:
        return heavy, objectives.index("macs_ratio")
    others = [j for j in range(len(objectives)) if j != heavy]
    return heavy, others[0] if others else heavy


def _is_unpruned(record: dict) -> bool:
    return float(record.get("macs_ratio", 0.0)) >= 1.0


def trade_off_models(
    records: list[dict],
    objectives: Sequence[str] = DEFAULT_OBJECTIVES,
    knee_method: str = "distance",
    knee_weights: Sequence[float] | None = None,
) -> dict[str, dict]:
    """The three DeepPruningES models of a set of records: heavy, light and knee.

    Heavy is the most accurate member of the non-dominated set (lowest ``"error"``), light
    the cheapest (lowest ``"macs_ratio"``; the second objective when MACs is not one), and
    the knee as :func:`knee_index` defines it - the rule the strategy applies to its
    population each generation (:func:`select_elites`); ``moprune pick --knee`` uses this
    function. The unpruned network (``macs_ratio >= 1``) is the baseline, not a returned
    model: it is left out whenever any pruned record exists. With a single objective all
    three are its best record.

    Returns:
        ``{"heavy": record, "light": record, "knee": record}`` (they may coincide).

    """
    if not records:
        raise NoPickError("no candidate records to choose from; run or resume the search first")
    pruned = [r for r in records if not _is_unpruned(r)]
    records = pruned or records
    objectives = tuple(objectives)
    F = objective_values(records, objectives)
    if F.shape[1] == 1:
        best = records[int(np.argmin(F[:, 0]))]
        return dict.fromkeys(ROLES, best)
    heavy, light = role_columns(objectives)
    elites = select_elites(F, None, knee_method, knee_weights, heavy, light)
    return {role: records[getattr(elites, role)] for role in ROLES}
