"""EvoFC: keep counts, the criterion-ratio encoding, lower-bound schedules by stage and depth,
the criterion-ratio problem (pair and mixed variables) and the published NSGA-II preset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import (
    digits_bundle,
    digits_eval_setup,
    model_and_space,
    one_torch_thread,
    tiny_model_ids,
)
from pymoo.algorithms.moo.nsga2 import NSGA2, binary_tournament
from pymoo.core.duplicate import DefaultDuplicateElimination
from pymoo.core.mixed import MixedVariableDuplicateElimination, MixedVariableMating
from pymoo.core.variable import Choice, Real
from pymoo.operators.crossover.pntx import TwoPointCrossover
from pymoo.operators.crossover.ux import UX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.mutation.rm import ChoiceRandomMutation
from pymoo.operators.sampling.rnd import FloatRandomSampling
from pymoo.operators.selection.tournament import TournamentSelection
from pymoo.optimize import minimize

from moprune.algorithms import ALGORITHMS
from moprune.algorithms.evofc import EvoFCConfig, MixedNSGA2, evofc_nsga2
from moprune.core.cost import CostModel
from moprune.core.encoding import CriterionRatioEncoding, keep_counts
from moprune.core.plan import PruningPlan, masks_matrix
from moprune.core.space import PruningSpace
from moprune.criteria import CRITERIA, ScoreContext, rank_channels
from moprune.data.datasets import Normalization, Split
from moprune.errors import GenomeError, UnknownNameError
from moprune.evaluation.evaluator import Evaluator
from moprune.methods.evofc import EvoFCOptions, evofc_setup
from moprune.problems.criterion_ratio import (
    EVOFC_CRITERIA,
    CriterionRatioProblem,
    group_stages,
    lower_bounds,
)
from moprune.problems.mask import FilterMaskProblem

WEIGHT_CRITERIA = ("l1", "fpgm", "random")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    yield from one_torch_thread()




def digits_evaluator() -> Evaluator:
    model, space, val, norm = digits_eval_setup()
    return Evaluator(model, space, val, norm)


def digits_space() -> PruningSpace:
    return digits_eval_setup()[1]  # conv1 (16), conv2 (32), conv3 (32); min_channels 2


def resnet20_space() -> PruningSpace:
    return model_and_space("cifar_resnet20", False)[1]


def hand_rankings(space: PruningSpace) -> dict[str, list[np.ndarray]]:
    """Three criteria with known orders: ascending index, descending, a fixed shuffle."""
    rng = np.random.default_rng(7)
    return {
        "ascending": [np.arange(n, dtype=np.int64) for n in space.sizes],
        "descending": [np.arange(n, dtype=np.int64)[::-1].copy() for n in space.sizes],
        "shuffled": [rng.permutation(int(n)).astype(np.int64) for n in space.sizes],
    }


def pairs(ratios, genes) -> np.ndarray:
    return np.column_stack([ratios, genes]).ravel().astype(np.float64)


# ---------------------------------------------------------------------------- keep_counts


def test_keep_counts_exact_values() -> None:
    sizes = np.array([16, 16, 16, 16, 10, 7, 32], dtype=np.int64)
    ratios = np.array([0.0, 0.25, 0.26, 0.2, 0.7, 0.3, 0.5])
    # 16*0.75 = 12 (integer), 16*0.74 = 11.84 -> 12, 16*0.8 = 12.8 -> 13,
    # 10*0.3 = 3.0000000000000004 in floats -> still 3, 7*0.7 = 4.8999999999999995 -> 5
    assert 10 * (1 - 0.7) > 3.0  # the float error the rounding must absorb
    got = keep_counts(sizes, ratios, 1)
    assert got.dtype == np.int64
    assert got.tolist() == [16, 12, 12, 13, 3, 5, 16]


def test_keep_counts_is_n_minus_k_at_every_ratio_k_over_n() -> None:
    for n in range(1, 65):
        k = np.arange(n)
        got = keep_counts(np.full(n, n), k / n, 1)
        np.testing.assert_array_equal(got, n - k, err_msg=f"n={n}")
        # the same ratios written as 1 - (n - k) / n
        got = keep_counts(np.full(n, n), 1.0 - (n - k) / n, 1)
        np.testing.assert_array_equal(got, n - k, err_msg=f"n={n}")


def test_keep_counts_min_channels_and_never_more_than_n() -> None:
    sizes = np.array([16, 32, 2, 1, 5], dtype=np.int64)
    r = np.full(5, 0.99)
    assert keep_counts(sizes, r, 1).tolist() == [1, 1, 1, 1, 1]  # ceil(0.16), ceil(0.32), ...
    assert keep_counts(sizes, r, 3).tolist() == [3, 3, 2, 1, 3]  # min_channels, at most n
    assert keep_counts(sizes, np.zeros(5), 3).tolist() == [16, 32, 2, 1, 5]
    assert keep_counts(sizes, np.full(5, 0.5), 100).tolist() == [16, 32, 2, 1, 5]
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = rng.integers(1, 200, size=8)
        ratios = rng.random(8) * 0.999
        m = int(rng.integers(1, 20))
        got = keep_counts(n, ratios, m)
        assert (got <= n).all() and (got >= np.minimum(m, n)).all() and (got >= 1).all()
        np.testing.assert_array_equal(
            got, np.minimum(n, np.maximum(np.minimum(m, n), np.ceil(n * (1 - ratios) - 1e-9))))


# ---------------------------------------------------------------------------- the encoding


def make_encoding(min_channels: int = 1, max_ratio: float = 0.99, lower=None,
                  space: PruningSpace | None = None) -> CriterionRatioEncoding:
    space = space or digits_space()
    lower = np.zeros(space.n_groups) if lower is None else lower
    return CriterionRatioEncoding(space, hand_rankings(space), lower, min_channels, max_ratio)


def test_criterion_bins() -> None:
    enc = make_encoding()  # K = 3
    below = np.nextafter
    c = np.array([0.0, below(1 / 3, 0), 1 / 3, 0.5, below(2 / 3, 0), 2 / 3, 0.9, below(1, 0),
                  1.0])
    assert enc.criterion_index(c).tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 2]
    np.testing.assert_allclose(enc.criterion_gene(np.arange(3)), [1 / 6, 0.5, 5 / 6])
    assert enc.criterion_index(enc.criterion_gene(np.arange(3))).tolist() == [0, 1, 2]
    # K = 4 (EvoFC's four criteria)
    space = digits_space()
    rankings = {f"c{i}": hand_rankings(space)["ascending"] for i in range(4)}
    enc4 = CriterionRatioEncoding(space, rankings, np.zeros(3))
    c = np.array([0.0, below(0.25, 0), 0.25, below(0.5, 0), 0.5, 0.75, 1.0])
    assert enc4.criterion_index(c).tolist() == [0, 0, 1, 1, 2, 3, 3]
    np.testing.assert_array_equal(enc4.criterion_gene(np.arange(4)), [0.125, 0.375, 0.625,
                                                                       0.875])


def test_decode_keeps_the_top_k_of_the_chosen_criterion() -> None:
    space = digits_space()
    rankings = hand_rankings(space)
    enc = make_encoding(min_channels=2)
    assert enc.criteria == ("ascending", "descending", "shuffled")
    # bins through decode: c = 0 and c just below 1/3 -> ascending, 1/3 -> descending, 1 -> last
    x = pairs([0.25, 0.5, 0.5], [0.0, np.nextafter(1 / 3, 0), 1 / 3])
    plan = enc.decode(x)
    assert plan.keep[0].tolist() == list(range(12))  # 16 * 0.75 = 12, ascending
    assert plan.keep[1].tolist() == list(range(16))  # ascending, 16 of 32
    assert plan.keep[2].tolist() == list(range(16, 32))  # descending keeps the last 16
    x = pairs([0.25, 0.5, 0.0], [1.0, 0.99, 0.7])
    plan = enc.decode(x)
    np.testing.assert_array_equal(plan.keep[0], np.sort(rankings["shuffled"][0][:12]))
    np.testing.assert_array_equal(plan.keep[1], np.sort(rankings["shuffled"][1][:16]))
    assert plan.keep[2].tolist() == list(range(32))
    # random genomes: every group keeps exactly keep_counts of its criterion's top channels
    rng = np.random.default_rng(1)
    names = list(rankings)
    for _ in range(40):
        r = rng.random(3) * 0.99
        c = rng.random(3)
        plan = enc.decode(pairs(r, c))
        plan.validate(space)
        counts = keep_counts(space.sizes, r, 2)
        crit = np.minimum(np.floor(c * 3), 2).astype(int)
        for g in range(3):
            want = np.sort(rankings[names[crit[g]]][g][: counts[g]])
            np.testing.assert_array_equal(plan.keep[g], want)
            assert plan.keep[g].dtype == np.int64
        np.testing.assert_array_equal(enc.n_keep(pairs(r, c)), counts)
    # decode_masks: one row per genome, the plans' masks
    X = np.stack([pairs(rng.random(3) * 0.9, rng.random(3)) for _ in range(5)])
    masks = enc.decode_masks(X)
    assert masks.shape == (5, space.n_channels) and masks.dtype == bool
    np.testing.assert_array_equal(masks, masks_matrix(space, [enc.decode(x) for x in X]))


@pytest.mark.parametrize("min_channels", [1, 3])
def test_max_ratio_keeps_at_least_min_channels(min_channels: int) -> None:
    space = digits_space()
    enc = make_encoding(min_channels=min_channels, max_ratio=0.99)
    for gene in (0.0, 0.5, 1.0):
        plan = enc.decode(pairs([0.99] * 3, [gene] * 3))
        # ceil(16 * 0.01) = ceil(32 * 0.01) = 1 channel, unless min_channels asks for more
        assert plan.n_kept().tolist() == [min_channels] * 3
        plan.validate(space)
    # a smaller max_ratio: ceil(16 * 0.5) = 8, ceil(32 * 0.5) = 16
    assert make_encoding(max_ratio=0.5).decode(pairs([0.5] * 3, [0] * 3)).n_kept().tolist() \
        == [8, 16, 16]


def test_ratios_at_the_lower_bound() -> None:
    space = digits_space()
    lower = np.array([0.25, 0.5, 0.75])
    enc = make_encoding(lower=lower, max_ratio=0.9)
    np.testing.assert_array_equal(enc.xl, [0.25, 0.0, 0.5, 0.0, 0.75, 0.0])
    np.testing.assert_array_equal(enc.xu, [0.9, 1.0, 0.9, 1.0, 0.9, 1.0])
    assert enc.n_var == 2 * space.n_groups
    plan = enc.decode(pairs(lower, [0.0] * 3))
    assert plan.n_kept().tolist() == [12, 16, 8]
    assert [k.tolist() for k in plan.keep] == [list(range(12)), list(range(16)), list(range(8))]
    described = enc.describe(pairs(lower, [0.0, 0.5, 1.0]))
    assert described == [
        {"group": "conv1", "size": 16, "ratio": 0.25, "criterion": "ascending", "kept": 12},
        {"group": "conv2", "size": 32, "ratio": 0.5, "criterion": "descending", "kept": 16},
        {"group": "conv3", "size": 32, "ratio": 0.75, "criterion": "shuffled", "kept": 8},
    ]


def test_genome_errors_name_the_group() -> None:
    enc = make_encoding(lower=np.array([0.1, 0.2, 0.3]), max_ratio=0.9)
    good = pairs([0.1, 0.2, 0.3], [0.0, 0.5, 1.0])
    enc.decode(good)
    with pytest.raises(GenomeError, match=r"vector of 6 values .* 3 groups.*shape \(5,\)"):
        enc.decode(good[:5])
    with pytest.raises(GenomeError, match=r"shape \(1, 6\)"):
        enc.decode(good[None])
    cases = [
        (2, np.nan, r"group 1 \(conv2\): ratio .*nan.* is outside \[0\.2, 0\.9\]"),
        (3, np.nan, r"group 1 \(conv2\): criterion gene .*nan"),
        (4, 0.29, r"group 2 \(conv3\): ratio .*0\.29.* is outside \[0\.3, 0\.9\]"),
        (0, 0.95, r"group 0 \(conv1\): ratio .*0\.95.* is outside \[0\.1, 0\.9\]"),
        (5, 1.01, r"group 2 \(conv3\): criterion gene .*1\.01.* is outside \[0\.0, 1\.0\]"),
        (1, -0.5, r"group 0 \(conv1\): criterion gene .*-0\.5"),
        (0, np.inf, r"group 0 \(conv1\): ratio .*inf"),
    ]
    for i, value, message in cases:
        x = good.copy()
        x[i] = value
        with pytest.raises(GenomeError, match=message):
            enc.decode(x)
        with pytest.raises(GenomeError, match=message):
            enc.describe(x)
        with pytest.raises(GenomeError, match=message):
            enc.decode_masks(np.stack([good, x]))
    assert issubclass(GenomeError, ValueError)


def test_encoding_constructor_errors() -> None:
    space = digits_space()
    rankings = hand_rankings(space)
    z = np.zeros(3)
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"max_ratio must be in \(0, 1\)"):
            CriterionRatioEncoding(space, rankings, z, 1, bad)
    with pytest.raises(ValueError, match="at least one criterion"):
        CriterionRatioEncoding(space, {}, z)
    with pytest.raises(ValueError, match=r"ranking 'descending' has 2 groups, the space has 3"):
        CriterionRatioEncoding(space, {**rankings, "descending": rankings["descending"][:2]}, z)
    with pytest.raises(ValueError, match=r"one bound per group \(3\)"):
        CriterionRatioEncoding(space, rankings, np.zeros(2))
    with pytest.raises(ValueError, match=r"group 1 \(conv2\) has .*0\.9"):
        CriterionRatioEncoding(space, rankings, np.array([0.0, 0.9, 0.0]), max_ratio=0.9)
    with pytest.raises(ValueError, match=r"group 2 \(conv3\) has .*0\.95"):
        CriterionRatioEncoding(space, rankings, np.array([0.0, 0.5, 0.95]), max_ratio=0.9)
    with pytest.raises(ValueError, match=r"group 0 \(conv1\) has .*-0\.1"):
        CriterionRatioEncoding(space, rankings, np.array([-0.1, 0.0, 0.0]))
    with pytest.raises(ValueError, match=r"group 0 \(conv1\) has .*nan"):
        CriterionRatioEncoding(space, rankings, np.array([np.nan, 0.0, 0.0]))
    # just below max_ratio is fine
    CriterionRatioEncoding(space, rankings, np.full(3, 0.89), max_ratio=0.9)


def test_criterion_gene_just_below_zero_is_the_first_criterion() -> None:
    enc = make_encoding()
    x = pairs([0.5] * 3, [-1e-13, 0.0, 0.0])
    enc.split(x)  # accepted: within the bounds' tolerance
    assert enc.criterion_index(np.array([-1e-13])).tolist() == [0]
    assert enc.describe(x)[0]["criterion"] == "ascending"
    np.testing.assert_array_equal(enc.decode(x).keep[0], np.arange(8))


# ---------------------------------------------------------------------------- stages, bounds


def test_group_stages_of_resnet20() -> None:
    space = resnet20_space()  # 16x16 input: stages at 16x16, 8x8, 4x4
    assert space.n_groups == 9
    stages = group_stages(space)
    assert stages.dtype == np.int64
    assert stages.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    names = [g.name for g in space.groups]
    assert [n.split(".")[0] for n in names] == ["layer1"] * 3 + ["layer2"] * 3 + ["layer3"] * 3
    assert np.bincount(stages).tolist() == [3, 3, 3]
    # with the residual streams: the stem and the three stage streams join their stages
    res_space = model_and_space("cifar_resnet20", True)[1]
    res_stages = group_stages(res_space)
    assert sorted(set(res_stages.tolist())) == [0, 1, 2]
    assert (np.diff(res_stages) >= 0).all()  # in order of depth
    for g, s in zip(res_space.groups, res_stages):
        hw = res_space.layers[g.name].out_shapes[0][2]
        assert hw == 16 >> int(s), g.name


def test_group_stages_put_linear_roots_in_the_last_stage() -> None:
    space = model_and_space("flatten_linear_cnn", False)[1]
    assert [(g.name, space.layers[g.name].kind) for g in space.groups] == [
        ("conv1", "conv"), ("conv2", "conv"), ("fc1", "linear")]
    assert group_stages(space).tolist() == [0, 1, 1]  # 8x8, 4x4, linear -> last


def test_lower_bounds_schedules() -> None:
    space = resnet20_space()
    np.testing.assert_array_equal(lower_bounds(space, 0.3), np.full(9, 0.3))
    np.testing.assert_array_equal(lower_bounds(space, 0), np.zeros(9))
    np.testing.assert_array_equal(lower_bounds(space, "0.25"), np.full(9, 0.25))
    np.testing.assert_array_equal(lower_bounds(space, "stages:0.1,0.2,0.4"),
                                  [0.1] * 3 + [0.2] * 3 + [0.4] * 3)
    np.testing.assert_array_equal(lower_bounds(space, "stages:0.5,0,0.25"),
                                  [0.5] * 3 + [0.0] * 3 + [0.25] * 3)
    cos = lower_bounds(space, "cosine:0.1,0.5")
    assert cos.shape == (9,)
    assert cos[0] == 0.1 and cos[-1] == 0.5
    assert (np.diff(cos) > 0).all()
    d = np.arange(9) / 8
    np.testing.assert_allclose(cos, 0.1 + 0.4 * (1 - np.cos(np.pi * d)) / 2, rtol=0, atol=1e-15)
    assert cos[4] == pytest.approx(0.3)  # the middle of the cosine
    assert lower_bounds(space, "cosine:0.25,0.75")[[0, -1]].tolist() == [0.25, 0.75]
    down = lower_bounds(space, "cosine:0.5,0")
    assert down[0] == 0.5 and down[-1] == 0.0 and (np.diff(down) < 0).all()
    flat = lower_bounds(space, "cosine:0.2,0.2")
    np.testing.assert_allclose(flat, 0.2)
    seq = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    np.testing.assert_array_equal(lower_bounds(space, seq), seq)
    np.testing.assert_array_equal(lower_bounds(space, np.array(seq)), seq)
    assert lower_bounds(space, seq).dtype == np.float64


def test_lower_bounds_errors() -> None:
    space = resnet20_space()
    with pytest.raises(ValueError, match=r"gives? 2 values, but the model has 3 stages"):
        lower_bounds(space, "stages:0.1,0.2")
    with pytest.raises(ValueError, match=r"4 values, but the model has 3 stages"):
        lower_bounds(space, "stages:0.1,0.2,0.3,0.4")
    with pytest.raises(ValueError, match="comma-separated numbers"):
        lower_bounds(space, "stages:0.1,x,0.3")
    with pytest.raises(ValueError, match="comma-separated numbers"):
        lower_bounds(space, "stages:")
    with pytest.raises(ValueError, match="finite"):
        lower_bounds(space, "stages:0.1,nan,0.3")
    with pytest.raises(ValueError, match="need two values"):
        lower_bounds(space, "cosine:0.1")
    with pytest.raises(ValueError, match="need two values"):
        lower_bounds(space, "cosine:0.1,0.2,0.3")
    with pytest.raises(ValueError, match="unknown lower-bound schedule 'linear:0.1,0.2'"):
        lower_bounds(space, "linear:0.1,0.2")
    with pytest.raises(ValueError, match="comma-separated numbers"):
        lower_bounds(space, "half")
    with pytest.raises(ValueError, match=">= 0"):
        lower_bounds(space, -0.1)
    with pytest.raises(ValueError, match=">= 0"):
        lower_bounds(space, "cosine:-0.2,0.5")
    with pytest.raises(ValueError, match=">= 0"):
        lower_bounds(space, "stages:0.1,-0.1,0.3")
    with pytest.raises(ValueError, match="finite"):
        lower_bounds(space, float("inf"))
    with pytest.raises(ValueError, match=r"need 9 values \(one per group\); got 8"):
        lower_bounds(space, [0.1] * 8)
    with pytest.raises(ValueError, match=r"need 9 values"):
        lower_bounds(space, np.zeros((3, 3)))


def test_lower_bounds_refuses_a_bare_list_of_numbers() -> None:
    space = resnet20_space()
    with pytest.raises(ValueError):
        lower_bounds(space, "0.1,0.2,0.3")


def test_cosine_endpoints_are_exact_for_any_values() -> None:
    space = resnet20_space()
    for lo, hi in ((0.3, 0.9), (0.2, 0.85), (0.1, 0.45), (0.3, 0.05)):
        b = lower_bounds(space, f"cosine:{lo},{hi}")
        assert (b[0], b[-1]) == (lo, hi)


# ---------------------------------------------------------------------------- the problem


def test_problem_ranks_with_each_criterion_in_bin_order() -> None:
    ev = digits_evaluator()
    problem = CriterionRatioProblem(ev, criteria=("fpgm", "random", "l1"), lower=0.1,
                                    max_ratio=0.9)
    enc = problem.encoding
    assert isinstance(enc, CriterionRatioEncoding)
    assert enc.criteria == problem.criteria == ("fpgm", "random", "l1")
    for name, ranking in zip(enc.criteria, enc.rankings, strict=True):
        want = rank_channels(ev.space, CRITERIA.get(name).score(ev.model, ev.space, None))
        for got, w in zip(ranking, want, strict=True):
            np.testing.assert_array_equal(got, w)
    assert enc.min_channels == ev.space.policy.min_channels == 2
    assert problem.n_var == 6 and not getattr(problem, "vars", None)
    np.testing.assert_array_equal(problem.xl, [0.1, 0, 0.1, 0, 0.1, 0])
    np.testing.assert_array_equal(problem.xu, [0.9, 1, 0.9, 1, 0.9, 1])


def test_problem_with_evofc_data_criteria() -> None:
    ev = digits_evaluator()
    b = digits_bundle()
    ctx = ScoreContext.from_split(b.train, b.normalization, seed=3, n_images=32, reinit=True)
    problem = CriterionRatioProblem(ev, score_context=ctx)
    assert problem.criteria == EVOFC_CRITERIA
    for name, ranking in zip(EVOFC_CRITERIA, problem.encoding.rankings, strict=True):
        want = rank_channels(ev.space, CRITERIA.get(name).score(ev.model, ev.space, ctx))
        for got, w in zip(ranking, want, strict=True):
            np.testing.assert_array_equal(got, w)
    # without images the data criteria refuse
    with pytest.raises(ValueError, match="needs a batch of training images"):
        CriterionRatioProblem(ev)


def mixed_genome(ratios, names) -> dict:
    x = {}
    for g, (r, c) in enumerate(zip(ratios, names, strict=True)):
        x[f"r{g}"], x[f"c{g}"] = float(r), c
    return x


def test_pairs_and_mixed_decode_alike() -> None:
    ev = digits_evaluator()
    p = CriterionRatioProblem(ev, criteria=WEIGHT_CRITERIA, lower="cosine:0.1,0.3",
                              max_ratio=0.9)
    m = CriterionRatioProblem(ev, criteria=WEIGHT_CRITERIA, lower="cosine:0.1,0.3",
                              max_ratio=0.9, variables="mixed")
    assert m.variables == "mixed" and p.variables == "pairs"
    assert list(m.vars) == ["r0", "c0", "r1", "c1", "r2", "c2"]
    for g in range(3):
        r, c = m.vars[f"r{g}"], m.vars[f"c{g}"]
        assert isinstance(r, Real) and isinstance(c, Choice)
        assert r.bounds == (float(p.encoding.lower[g]), 0.9)
        assert list(c.options) == list(WEIGHT_CRITERIA)
    rng = np.random.default_rng(5)
    dicts, vectors = [], []
    for _ in range(12):
        lo = p.encoding.lower
        ratios = lo + rng.random(3) * (0.9 - lo)
        idx = rng.integers(0, 3, size=3)
        dicts.append(mixed_genome(ratios, [WEIGHT_CRITERIA[i] for i in idx]))
        vectors.append(pairs(ratios, (idx + 0.5) / 3))
    X_mixed = np.array(dicts, dtype=object)
    X_pairs = np.array(vectors)
    np.testing.assert_array_equal(m.to_genome(X_mixed), X_pairs)
    masks = m.decode_masks(X_mixed)
    np.testing.assert_array_equal(masks, p.decode_masks(X_pairs))
    np.testing.assert_array_equal(masks, p.encoding.decode_masks(m.to_genome(X_mixed)))
    # np.str_ choices (as pymoo's operators produce them) map to the same criterion
    d = dict(dicts[0])
    d["c1"] = np.str_(d["c1"])
    np.testing.assert_array_equal(m.to_genome(np.array([d], dtype=object)), X_pairs[:1])
    # pair vectors pass through unchanged (also for the mixed problem)
    np.testing.assert_array_equal(m.to_genome(X_pairs), X_pairs)
    np.testing.assert_array_equal(p.to_genome(X_pairs[0]), X_pairs[:1])
    with pytest.raises(TypeError, match="dicts"):
        m.to_genome(np.array([X_pairs[0], "x"], dtype=object))
    # evaluation through pymoo gives identical objectives
    fm = m.evaluate(X_mixed, return_as_dictionary=True)
    fp = p.evaluate(X_pairs, return_as_dictionary=True)
    np.testing.assert_array_equal(fm["F"], fp["F"])
    np.testing.assert_array_equal(fm["macs"], fp["macs"])


def test_genome_key_round_trip() -> None:
    ev = digits_evaluator()
    p = CriterionRatioProblem(ev, criteria=WEIGHT_CRITERIA, lower=0.05)
    m = CriterionRatioProblem(ev, criteria=WEIGHT_CRITERIA, lower=0.05, variables="mixed")
    rng = np.random.default_rng(2)
    for _ in range(10):
        x = pairs(0.05 + rng.random(3) * 0.94, rng.random(3))
        key = p.genome_key(x)
        back = p.genome_from_key(key)
        assert back.dtype == np.float64
        np.testing.assert_array_equal(back, x)  # exact, bit for bit
        assert p.describe(key) == p.encoding.describe(x)
    d = mixed_genome([0.05, 0.5, 0.98], ["random", "l1", "fpgm"])
    key = m.genome_key(d)
    np.testing.assert_array_equal(m.genome_from_key(key),
                                  pairs([0.05, 0.5, 0.98], [5 / 6, 1 / 6, 0.5]))
    assert [row["criterion"] for row in m.describe(key)] == ["random", "l1", "fpgm"]
    assert [row["ratio"] for row in m.describe(key)] == [0.05, 0.5, 0.98]


def test_problem_evaluation_matches_the_evaluator_and_the_cost_model() -> None:
    ev = digits_evaluator()
    problem = CriterionRatioProblem(ev, criteria=WEIGHT_CRITERIA, lower=0.1, max_ratio=0.95,
                                    objectives=("error", "macs_ratio", "params_ratio"),
                                    max_macs_ratio=0.5)
    rec: list[dict] = []
    problem.recorder = rec.extend
    rng = np.random.default_rng(4)
    X = np.stack([pairs(0.1 + rng.random(3) * 0.85, rng.random(3)) for _ in range(6)])
    X[0] = pairs([0.1] * 3, [0.0] * 3)
    out = problem.evaluate(X, return_as_dictionary=True)
    assert out["F"].shape == (6, 3) and out["G"].shape == (6, 1)
    masks = problem.encoding.decode_masks(X)
    model, space, val, norm = digits_eval_setup()
    ref = Evaluator(model, space, val, norm).evaluate_masks(masks)
    np.testing.assert_array_equal(out["accuracy"], ref.accuracy)
    np.testing.assert_array_equal(out["F"][:, 0], 1.0 - ref.accuracy)
    cost = CostModel(space, model)
    c = cost.cost_of_masks(masks)
    np.testing.assert_allclose(out["F"][:, 1], c.macs / cost.base.macs[0], rtol=1e-12)
    np.testing.assert_allclose(out["F"][:, 2], c.params / cost.base.params[0], rtol=1e-12)
    np.testing.assert_allclose(out["G"][:, 0], c.macs / cost.base.macs[0] - 0.5, rtol=1e-12)
    assert (out["F"][:, 1] < 1).all()  # lower bound 0.1 prunes every group
    # the recorder sees each genome's key and kept channels per group
    assert len(rec) == 6
    for row, x, mask in zip(rec, X, masks, strict=True):
        np.testing.assert_array_equal(problem.genome_from_key(row["genome"]), x)
        assert row["kept"] == [int(mask[space.group_slice(g)].sum()) for g in range(3)]
        assert row["kept"] == keep_counts(space.sizes, x[0::2], 2).tolist()
    assert problem.baseline["val_accuracy"] == ev.baseline().accuracy[0]


def test_problem_argument_errors() -> None:
    ev = digits_evaluator()
    with pytest.raises(ValueError, match=r"variables must be one of \('pairs', 'mixed'\)"):
        CriterionRatioProblem(ev, criteria=WEIGHT_CRITERIA, variables="binary")
    with pytest.raises(ValueError, match="distinct"):
        CriterionRatioProblem(ev, criteria=("l1", "fpgm", "l1"))
    with pytest.raises(ValueError, match="distinct"):
        CriterionRatioProblem(ev, criteria=())
    with pytest.raises(UnknownNameError):
        CriterionRatioProblem(ev, criteria=("l1", "nope"))
    with pytest.raises(ValueError, match="max_ratio"):
        CriterionRatioProblem(ev, criteria=WEIGHT_CRITERIA, max_ratio=1.0)
    with pytest.raises(ValueError, match=r"lower bounds must be in \[0, max_ratio=0\.5\)"):
        CriterionRatioProblem(ev, criteria=WEIGHT_CRITERIA, lower=0.5, max_ratio=0.5)
    with pytest.raises(ValueError, match="stages"):
        CriterionRatioProblem(ev, criteria=WEIGHT_CRITERIA, lower="stages:0.1,0.2,0.3")
    with pytest.raises(ValueError, match="objectives"):
        CriterionRatioProblem(ev, criteria=WEIGHT_CRITERIA, objectives=("error", "speed"))
    # digits: conv1 at 8x8, conv2 at 8x8, conv3 at 4x4 -> two stages
    assert group_stages(ev.space).tolist() == [0, 0, 1]
    problem = CriterionRatioProblem(ev, criteria=WEIGHT_CRITERIA, lower="stages:0.2,0.4")
    np.testing.assert_array_equal(problem.encoding.lower, [0.2, 0.2, 0.4])


# ---------------------------------------------------------------------------- the algorithm


def run_search(variables: str, seed: int, n_gen: int = 4, config: EvoFCConfig | None = None):
    ev = digits_evaluator()
    problem = CriterionRatioProblem(ev, criteria=WEIGHT_CRITERIA, lower="cosine:0.1,0.5",
                                    max_ratio=0.9, variables=variables)
    rec: list[dict] = []
    problem.recorder = rec.extend
    config = config or EvoFCConfig(pop_size=6, n_offsprings=4)
    res = minimize(problem, evofc_nsga2(problem, config), ("n_gen", n_gen), seed=seed)
    return problem, res, rec


@pytest.mark.parametrize("variables", ["pairs", "mixed"])
def test_evofc_search_runs_within_bounds_and_is_deterministic(variables: str) -> None:
    config = EvoFCConfig(pop_size=6, n_offsprings=4)
    problem, res, rec = run_search(variables, seed=3, config=config)
    assert res.algorithm.evaluator.n_eval == config.evaluations(4) == 18
    assert len(rec) == 18
    genomes = np.array([problem.genome_from_key(r["genome"]) for r in rec])
    enc = problem.encoding
    assert ((genomes >= enc.xl) & (genomes <= enc.xu)).all()
    assert len({r["genome"] for r in rec}) == len(rec)  # duplicates are eliminated
    pop = res.pop
    assert len(pop) == 6
    F = pop.get("F")
    assert F.shape == (6, 2) and np.isfinite(F).all()
    np.testing.assert_array_equal(F[:, 0], 1.0 - pop.get("accuracy"))
    # same seed: the same search, genome for genome
    problem2, res2, rec2 = run_search(variables, seed=3, config=config)
    assert [r["genome"] for r in rec2] == [r["genome"] for r in rec]
    np.testing.assert_array_equal(res2.pop.get("F"), F)
    np.testing.assert_array_equal(problem2.to_genome(res2.pop.get("X")),
                                  problem.to_genome(pop.get("X")))
    np.testing.assert_array_equal(res2.F, res.F)
    np.testing.assert_array_equal(problem2.to_genome(res2.X), problem.to_genome(res.X))
    # another seed: another search
    _, _, rec3 = run_search(variables, seed=4, config=config)
    assert [r["genome"] for r in rec3] != [r["genome"] for r in rec]


def test_evofc_preset_pairs_uses_the_published_operators() -> None:
    ev = digits_evaluator()
    problem = CriterionRatioProblem(ev, criteria=WEIGHT_CRITERIA)
    algo = evofc_nsga2(problem)
    assert isinstance(algo, NSGA2)
    assert algo.pop_size == 10 and algo.n_offsprings == 10
    assert isinstance(algo.initialization.sampling, FloatRandomSampling)
    sel = algo.mating.selection
    assert isinstance(sel, TournamentSelection)
    assert sel.func_comp is binary_tournament and sel.pressure == 2
    assert isinstance(algo.mating.crossover, TwoPointCrossover)
    assert algo.mating.crossover.prob.value == 0.9
    mut = algo.mating.mutation
    assert isinstance(mut, PM) and mut.eta.value == 3.0 and mut.prob_var is None
    assert isinstance(algo.eliminate_duplicates, DefaultDuplicateElimination)
    custom = evofc_nsga2(problem, EvoFCConfig(pop_size=4, n_offsprings=2, crossover_prob=0.5,
                                              mutation_eta=7.0, mutation_prob_var=0.25))
    assert custom.pop_size == 4 and custom.n_offsprings == 2
    assert custom.mating.crossover.prob.value == 0.5
    assert custom.mating.mutation.eta.value == 7.0
    assert custom.mating.mutation.prob_var.value == 0.25


def test_evofc_preset_mixed_uses_the_same_operators_on_ratios() -> None:
    ev = digits_evaluator()
    problem = CriterionRatioProblem(ev, criteria=WEIGHT_CRITERIA, variables="mixed")
    algo = evofc_nsga2(problem, EvoFCConfig(pop_size=6, n_offsprings=3))
    assert isinstance(algo, MixedNSGA2)
    assert algo.pop_size == 6 and algo.n_offsprings == 3
    mating = algo.mating
    assert isinstance(mating, MixedVariableMating)
    assert isinstance(mating.selection, TournamentSelection)
    assert mating.selection.func_comp is binary_tournament
    assert isinstance(mating.crossover[Real], TwoPointCrossover)
    assert isinstance(mating.crossover[Choice], UX)
    pm = mating.mutation[Real]
    assert isinstance(pm, PM) and pm.eta.value == 3.0
    assert pm.prob_var.value == pytest.approx(1 / 6)  # 1 / genes of the pair form
    assert isinstance(mating.mutation[Choice], ChoiceRandomMutation)
    assert isinstance(algo.eliminate_duplicates, MixedVariableDuplicateElimination)
    assert isinstance(mating.eliminate_duplicates, MixedVariableDuplicateElimination)


def test_mixed_preset_honours_a_zero_mutation_probability() -> None:
    ev = digits_evaluator()
    config = EvoFCConfig(mutation_prob_var=0.0)
    pairs_algo = evofc_nsga2(CriterionRatioProblem(ev, criteria=WEIGHT_CRITERIA), config)
    assert pairs_algo.mating.mutation.prob_var.value == 0.0
    mixed = CriterionRatioProblem(ev, criteria=WEIGHT_CRITERIA, variables="mixed")
    mating = evofc_nsga2(mixed, config).mating
    assert mating.mutation[Real].prob_var.value == 0.0
    assert mating.mutation[Choice].prob_var.value == 0.0


def test_evofc_config_validates_the_mutation_probability() -> None:
    for bad in (1.5, -0.5, float("nan")):
        with pytest.raises(ValueError, match="mutation_prob_var"):
            EvoFCConfig(mutation_prob_var=bad)


def test_algorithm_registry_has_evofc() -> None:
    ev = digits_evaluator()
    problem = CriterionRatioProblem(ev, criteria=WEIGHT_CRITERIA)
    algo = ALGORITHMS.get("evofc")(problem, 8)
    assert isinstance(algo, NSGA2)
    assert algo.pop_size == 8 and algo.n_offsprings == 8
    assert algo.mating.mutation.eta.value == 3.0
    nsga = ALGORITHMS.get("nsga2")(problem, 6)  # the plain preset also picks EvoFC's
    assert isinstance(nsga.mating.crossover, TwoPointCrossover) and nsga.pop_size == 6
    mask_problem = FilterMaskProblem(ev)
    with pytest.raises(TypeError, match="criterion-ratio problem"):
        ALGORITHMS.get("evofc")(mask_problem, 8)


def test_evofc_config() -> None:
    c = EvoFCConfig()
    assert (c.pop_size, c.n_offsprings, c.crossover_prob, c.mutation_eta) == (10, 10, 0.9, 3.0)
    assert c.evaluations(20) == 200  # the published CIFAR budget: 10 + 10 * 19
    assert c.evaluations(1) == 10
    assert EvoFCConfig(pop_size=40, n_offsprings=40).evaluations(30) == 1200
    assert EvoFCConfig(pop_size=6, n_offsprings=4).evaluations(4) == 18
    assert c.to_dict() == {"pop_size": 10, "n_offsprings": 10, "crossover_prob": 0.9,
                           "mutation_eta": 3.0, "mutation_prob_var": None}
    for kwargs, message in (({"pop_size": 1}, "pop_size >= 2"),
                            ({"n_offsprings": 0}, "n_offsprings >= 1"),
                            ({"crossover_prob": 1.5}, "crossover_prob"),
                            ({"crossover_prob": -0.1}, "crossover_prob"),
                            ({"mutation_eta": 0.0}, "mutation_eta"),
                            ({"mutation_eta": float("nan")}, "mutation_eta")):
        with pytest.raises(ValueError, match=message):
            EvoFCConfig(**kwargs)


def test_evofc_options_validation() -> None:
    o = EvoFCOptions()
    assert o.criteria == EVOFC_CRITERIA and o.variables == "pairs" and o.init == "random"
    d = o.to_dict()
    assert d["criteria"] == list(EVOFC_CRITERIA) and d["planned"] == 200
    EvoFCOptions(training="none", epochs=0)  # no training, no epochs needed
    cases = [
        ({"variables": "bits"}, "variables must be one of"),
        ({"init": "xavier"}, "init must be one of"),
        ({"training": "finetune"}, "training must be one of"),
        ({"criteria": ("l1", "nope")}, "unknown criterion 'nope'"),
        ({"max_ratio": 1.0}, r"max_ratio must be in \(0, 1\)"),
        ({"max_ratio": 0.0}, r"max_ratio must be in \(0, 1\)"),
        ({"epochs": 0}, "needs epochs >= 1"),
        ({"training": "scratch", "epochs": 0}, "training 'scratch' needs epochs >= 1"),
        ({"lr": 0.0}, "lr must be"),
        ({"lr": float("inf")}, "lr must be"),
        ({"planned": 0}, "planned must be >= 1"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=f"invalid EvoFC options: .*{message}"):
            EvoFCOptions(**kwargs)
    # several problems are reported together
    with pytest.raises(ValueError, match="variables must be .*; .*planned must be"):
        EvoFCOptions(variables="bits", planned=0)


# ---------------------------------------------------------------------------- evofc_setup


def test_evofc_setup_with_evofc_options() -> None:
    import dataclasses

    from moprune.core.space import SpacePolicy
    from moprune.evaluation.inheritance import InheritanceEvaluator
    from moprune.evaluation.retraining import RetrainingEvaluator
    from moprune.tasks.task import PruningTask
    from moprune.training.finetune import FinetuneConfig
    from moprune.training.init import random_init

    model = digits_eval_setup()[0]
    b = digits_bundle()
    data = dataclasses.replace(b, train=b.train.subset(64), val=b.val.subset(32),
                               test=b.test.subset(32))
    task = PruningTask(name="digits", model=model, input_shape=(1, 8, 8),
                       load_data=lambda request: data, policy=SpacePolicy(min_channels=2),
                       finetune=FinetuneConfig(epochs=3, lr=0.05, batch_size=32,
                                               augment=False, augment_flip=False))
    opts = EvoFCOptions(criteria=WEIGHT_CRITERIA, lower="stages:0.1,0.3", max_ratio=0.8,
                        variables="mixed", init="random", training="inherit", epochs=2,
                        lr=0.02, planned=7)
    setup = evofc_setup(task, data, opts, seed=11)
    problem, ev = setup.problem, setup.evaluator
    assert isinstance(problem, CriterionRatioProblem) and problem.variables == "mixed"
    assert isinstance(ev, InheritanceEvaluator)
    assert ev.planned == 7 and ev.seed == 11
    assert (ev.recipe.epochs, ev.recipe.lr, ev.recipe.batch_size) == (2, 0.02, 32)
    np.testing.assert_array_equal(problem.encoding.lower, [0.1, 0.1, 0.3])
    assert problem.encoding.max_ratio == 0.8 and problem.criteria == WEIGHT_CRITERIA
    # init "random": the search starts from random_init(model, seed)
    start = random_init(model, 11)
    for k, v in start.state_dict().items():
        assert torch.equal(setup.task.model.state_dict()[k], v), k
    scratch = evofc_setup(task, data,
                          dataclasses.replace(opts, training="scratch", init="pretrained"),
                          seed=11)
    assert isinstance(scratch.evaluator, RetrainingEvaluator) and scratch.evaluator.from_scratch
    assert scratch.evaluator.config.epochs == 2 and scratch.evaluator.config.lr == 0.02
    assert scratch.task.model is model
    plain = evofc_setup(task, data,
                        dataclasses.replace(opts, training="none", init="pretrained"), seed=11)
    assert type(plain.evaluator) is Evaluator


# ---------------------------------------------------------------------------- contract


CONTRACT_CRITERIA = ("l1", "l2", "fpgm", "random")


@pytest.mark.parametrize("model_id", tiny_model_ids())
def test_every_model_decodes_random_genomes(model_id: str) -> None:
    model, space, shape = model_and_space(model_id, False)
    if space.n_groups == 0:
        pytest.skip(f"{model_id} has no prunable group under the internal policy")
    channels = shape[0]
    val = Split(torch.zeros((2, *shape), dtype=torch.uint8), torch.zeros(2, dtype=torch.int64))
    ev = Evaluator(model, space, val, Normalization((0.5,) * channels, (0.25,) * channels))
    problem = CriterionRatioProblem(ev, criteria=CONTRACT_CRITERIA, lower=0.05, max_ratio=0.99)
    enc = problem.encoding
    m = space.policy.min_channels
    rng = np.random.default_rng(0)
    X = enc.xl + rng.random((6, problem.n_var)) * (enc.xu - enc.xl)
    X = np.vstack([X, enc.xl, enc.xu])  # the corners: least and most pruning
    masks = problem.decode_masks(X)
    assert masks.shape == (len(X), space.n_channels) and masks.dtype == bool
    for x, mask in zip(X, masks, strict=True):
        plan = PruningPlan.from_mask(space, mask).validate(space)
        kept = plan.n_kept()
        assert (kept >= np.minimum(m, space.sizes)).all() and (kept >= 1).all()
        np.testing.assert_array_equal(kept, keep_counts(space.sizes, x[0::2], m))
        crit = enc.criterion_index(x[1::2])
        for g in range(space.n_groups):
            top = np.sort(enc.rankings[crit[g]][g][: kept[g]])
            np.testing.assert_array_equal(plan.keep[g], top)
    # the most pruned corner keeps ceil(1% of n) channels per group
    kept_most = masks[-1].astype(np.int64)
    kept_most = [int(kept_most[space.group_slice(g)].sum()) for g in range(space.n_groups)]
    want = np.minimum(space.sizes, np.maximum(m, np.ceil(np.round(space.sizes * 0.01, 9))))
    assert kept_most == want.astype(int).tolist()
