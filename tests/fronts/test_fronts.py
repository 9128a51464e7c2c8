"""Tests for moprune.fronts: fronts, knees, hypervolume, picking, plots and tables."""

from __future__ import annotations

import numpy as np
import pytest

from moprune.errors import UnknownNameError
from moprune.fronts import (
    KNEE_METHODS,
    NoPickError,
    PickRule,
    format_table,
    front_records,
    hypervolume,
    hypervolume_history,
    knee_index,
    non_dominated,
    objective_values,
    pick,
    plot_front,
    plot_hypervolume,
    plot_kept_channels,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASELINE = {"val_accuracy": 0.93, "test_accuracy": 0.92, "macs": 1000, "params": 100}


def rec(id_, acc, macs, gen=0, test=None):
    r = {
        "id": id_, "generation": gen, "genome": f"g{id_}", "val_accuracy": acc,
        "macs": macs, "params": macs // 10, "macs_ratio": macs / 1000, "params_ratio": macs / 1000,
    }
    if test is not None:
        r["test_accuracy"] = test
    return r


@pytest.fixture
def records():
    return [
        rec(0, 0.90, 500),
        rec(1, 0.92, 700),  # dominated by 2
        rec(2, 0.92, 600),
        rec(3, 0.85, 300),
        rec(4, 0.92, 600),  # duplicate of 2, higher id
    ]


# --------------------------------------------------------------------------- fronts


def test_non_dominated_five_points():
    F = np.array([[4, 1], [3, 4], [2, 3], [1, 5], [2, 3]], dtype=float)
    # [3,4] is dominated by [2,3]; row 4 duplicates row 2 and is dropped
    assert non_dominated(F).tolist() == [3, 2, 0]


def test_non_dominated_sorts_ties_by_second_objective():
    F = np.array([[1, 2], [0, 3], [1, 2], [2, 0]], dtype=float)
    assert non_dominated(F).tolist() == [1, 0, 3]


def test_non_dominated_empty_and_nan():
    assert non_dominated(np.empty((0, 2))).tolist() == []
    with pytest.raises(ValueError, match="NaN"):
        non_dominated(np.array([[0.0, np.nan]]))


def test_front_records_sorted_by_macs(records):
    front = front_records(records)
    assert [r["id"] for r in front] == [3, 0, 2]


def test_objective_values(records):
    F = objective_values(records[:2], ["error", "macs_ratio", "params_ratio"])
    np.testing.assert_allclose(F, [[0.10, 0.5, 0.5], [0.08, 0.7, 0.7]])


def test_objective_values_unknown_name_lists_valid(records):
    # (other tests' problem files may have registered more objectives in between)
    with pytest.raises(UnknownNameError, match="names: error, .*macs_ratio, .*params_ratio"):
        objective_values(records, ["error", "latency"])
    assert isinstance(UnknownNameError("x"), KeyError)


def test_objective_values_missing_field():
    with pytest.raises(ValueError, match="has no field 'macs_ratio'"):
        objective_values([{"id": 7, "val_accuracy": 0.5}], ["macs_ratio"])


# --------------------------------------------------------------------------- knees


def test_knee_distance_obvious_and_weighted():
    F = np.array([[0.0, 1.0], [0.1, 0.1], [1.0, 0.0]])
    assert knee_index(F) == 1  # L1 to ideal: 1, 0.2, 1
    assert knee_index(F, weights=[10.0, 1.0]) == 0  # 1, 1.1, 10
    assert knee_index(F, weights=[1.0, 10.0]) == 2  # 10, 1.1, 1


def test_knee_distance_is_scale_free():
    F = np.array([[0.0, 1000.0], [0.1, 100.0], [1.0, 0.0]])
    assert knee_index(F) == 1


def test_knee_line_convex_front():
    F = np.array([[0.0, 1.0], [0.2, 0.4], [0.5, 0.15], [1.0, 0.0]])
    # distance to x + y = 1 is proportional to |x + y - 1|: 0, 0.4, 0.35, 0
    assert knee_index(F, method="line") == 1


def test_knee_line_needs_two_objectives():
    with pytest.raises(ValueError, match="exactly 2 objectives"):
        knee_index(np.array([[0, 1, 2], [1, 0, 2]], dtype=float), method="line")


def test_knee_tradeoff_returns_the_sharp_knee():
    x = np.linspace(0, 1, 21)
    F = np.column_stack([x, np.where(x <= 0.3, 1 - 3 * x, 0.1 - 0.1 * (x - 0.3) / 0.7)])
    assert knee_index(F, method="tradeoff") == 6  # x = 0.3, the corner
    small = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert knee_index(small, method="tradeoff") == knee_index(small, method="distance")


def test_knee_edge_cases():
    assert knee_index(np.array([[0.3, 0.4]])) == 0
    with pytest.raises(ValueError, match="at least one point"):
        knee_index(np.empty((0, 2)))
    with pytest.raises(ValueError, match="NaN"):
        knee_index(np.array([[0.1, np.nan], [0.2, 0.3]]))
    with pytest.raises(UnknownNameError, match="distance, line, tradeoff"):
        knee_index(np.array([[0.0, 1.0], [1.0, 0.0]]), method="elbow")
    with pytest.raises(ValueError, match="weights"):
        knee_index(np.array([[0.0, 1.0], [1.0, 0.0]]), weights=[1.0])
    assert set(KNEE_METHODS) == {"distance", "line", "tradeoff"}


# --------------------------------------------------------------------------- hypervolume


def test_hypervolume_two_points():
    F = np.array([[1.0, 3.0], [2.0, 1.0]])
    # 3 * 1 + 2 * 3 - overlap 2 * 1 = 7
    assert hypervolume(F, [4.0, 4.0]) == pytest.approx(7.0)
    # a point that does not dominate the reference is ignored
    assert hypervolume(np.vstack([F, [5.0, 0.0]]), [4.0, 4.0]) == pytest.approx(7.0)
    assert hypervolume(np.array([[5.0, 5.0]]), [4.0, 4.0]) == 0.0
    assert hypervolume(np.empty((0, 2)), [4.0, 4.0]) == 0.0


def test_hypervolume_history_cumulative():
    records = [rec(0, 0.8, 500, gen=0), rec(1, 0.9, 800, gen=1), rec(2, 0.5, 900, gen=2)]
    hist = hypervolume_history(records, ["error", "macs_ratio"], [1.0, 1.0], BASELINE)
    assert [g for g, _ in hist] == [0, 1, 2]
    # gen 0: 0.8 * 0.5; gen 1: + 0.9 * 0.2 - 0.8 * 0.2; gen 2 adds a dominated point
    assert [hv for _, hv in hist] == pytest.approx([0.40, 0.42, 0.42])


def test_hypervolume_history_fills_missing_ratios():
    r = rec(0, 0.8, 500)
    del r["macs_ratio"]
    hist = hypervolume_history([r], ["error", "macs_ratio"], None, BASELINE)
    assert hist == [(0, pytest.approx(0.4))]


# --------------------------------------------------------------------------- picking


def test_pick_knee(records):
    # front: id3 (err .15, .3), id0 (.10, .5), id2 (.08, .6); normalised L1: 1, .95, 1
    assert pick(records, BASELINE, PickRule("knee"))["id"] == 0


def test_pick_max_macs_ratio_with_ties(records):
    # ids 1, 2, 4 share the best accuracy; 2 and 4 have fewer MACs; 2 has the lower id
    assert pick(records, BASELINE, PickRule("max_macs_ratio", 0.7))["id"] == 2
    assert pick(records, BASELINE, PickRule("max_macs_ratio", 0.5))["id"] == 0


def test_pick_max_macs_ratio_none(records):
    with pytest.raises(NoPickError, match=r"smallest macs_ratio in this run is 0\.3.*--max-macs"):
        pick(records, BASELINE, PickRule("max_macs_ratio", 0.2))


def test_pick_max_accuracy_drop_with_ties(records):
    # floor 0.92: ids 1, 2, 4; fewest MACs 2 and 4 (same accuracy) -> lower id
    assert pick(records, BASELINE, PickRule("max_accuracy_drop", 0.01))["id"] == 2
    more = [*records, rec(5, 0.925, 600)]  # same MACs, higher accuracy wins
    assert pick(more, BASELINE, PickRule("max_accuracy_drop", 0.01))["id"] == 5
    assert pick(records, BASELINE, PickRule("max_accuracy_drop", 0.03))["id"] == 0


def test_pick_max_accuracy_drop_none(records):
    with pytest.raises(NoPickError, match=r"highest val_accuracy in this run is 0\.9200"):
        pick(records, BASELINE, PickRule("max_accuracy_drop", 0.001))


def test_pick_ignores_test_accuracy():
    recs = [rec(0, 0.90, 500, test=0.99), rec(1, 0.91, 500, test=0.50)]
    assert pick(recs, BASELINE, PickRule("max_macs_ratio", 1.0))["id"] == 1


def test_pick_rule_validation():
    with pytest.raises(ValueError, match="valid kinds"):
        PickRule("smallest")
    with pytest.raises(ValueError, match="needs a finite non-negative value"):
        PickRule("max_macs_ratio")
    with pytest.raises(UnknownNameError):
        PickRule("knee", knee_method="elbow")
    assert PickRule("max_macs_ratio", 0.5).label == "macs<=0.5"
    assert PickRule("max_accuracy_drop", 0.01).label == "drop<=1pt"
    with pytest.raises(NoPickError, match="no candidate records"):
        pick([], BASELINE, PickRule("knee"))


# --------------------------------------------------------------------------- plots


def _check_files(paths):
    assert [p.suffix for p in paths] == [".png", ".svg"]
    for p in paths:
        assert p.exists() and p.stat().st_size > 0
    assert paths[0].read_bytes()[:8] == PNG_MAGIC
    assert b"<svg" in paths[1].read_bytes()[:2000]


def test_plot_front(tmp_path, records):
    records = [*records, rec(9, 0.80, 200, test=0.79)]
    picks = {"knee": records[0], "macs<=0.7": records[2]}
    _check_files(plot_front(records, BASELINE, tmp_path / "out" / "front", picks, title="t"))


def test_plot_hypervolume(tmp_path):
    _check_files(plot_hypervolume([(0, 0.4), (1, 0.42), (2, 0.5)], tmp_path / "hv"))


def test_plot_kept_channels(tmp_path):
    names = [f"layer{i}.conv" for i in range(60)]
    total = [16 * (1 + i // 20) for i in range(60)]
    kept = [t // 2 for t in total]
    _check_files(plot_kept_channels(names, kept, total, tmp_path / "kept.v1", title="r110"))
    with pytest.raises(ValueError, match="one kept and one total"):
        plot_kept_channels(names, kept[:3], total, tmp_path / "bad")


def test_format_table():
    rows = [{"name": "knee", "acc": 0.9123, "macs": 1234}, {"name": "baseline", "acc": None}]
    text = format_table(rows, [("name", "pick", "s"), ("acc", "val acc", ".2%"),
                               ("macs", "MACs", ",d")])
    assert text.splitlines() == [
        "pick      val acc   MACs",
        "--------  -------  -----",
        "knee       91.23%  1,234",
        "baseline        -      -",
    ]
