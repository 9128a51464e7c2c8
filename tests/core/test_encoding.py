"""Genome encodings (mask, ratio) and the channel-importance criteria."""

from __future__ import annotations

import functools
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from helpers import FlattenLinearCNN, one_torch_thread
from torch import nn

from moprune.core.encoding import MaskEncoding, RatioEncoding
from moprune.core.space import PruningSpace, SpacePolicy
from moprune.criteria import CRITERIA, l1_norm, l2_norm, rank_channels
from moprune.errors import GenomeError, UnknownNameError
from moprune.zoo.cifar_resnet import cifar_resnet


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    yield from one_torch_thread()


@functools.cache
def _resnet_space() -> tuple[nn.Module, PruningSpace]:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = cifar_resnet(20).eval()
    return model, PruningSpace.from_model(model, (3, 8, 8), SpacePolicy(residual=True))


def resnet_space() -> PruningSpace:
    return _resnet_space()[1]


def random_ranking(space: PruningSpace, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.permutation(int(n)).astype(np.int64) for n in space.sizes]


# --- MaskEncoding -----------------------------------------------------------------------------


@pytest.mark.parametrize("min_channels", [1, 3, 16])
def test_mask_repair_keeps_min_channels(min_channels: int) -> None:
    space = resnet_space()
    ranking = random_ranking(space)
    enc = MaskEncoding(space, ranking, min_channels)
    rng = np.random.default_rng(1)
    genomes = [np.zeros(space.n_channels, dtype=bool), np.ones(space.n_channels, dtype=bool)]
    genomes += [rng.random(space.n_channels) < p for p in (0.01, 0.05, 0.2, 0.5)]
    for x in genomes:
        repaired = enc.repair(x)
        assert repaired.dtype == bool and repaired.shape == x.shape
        for g in range(space.n_groups):
            seg, orig = repaired[space.group_slice(g)], x[space.group_slice(g)]
            assert seg.sum() >= min(min_channels, space.sizes[g])
            assert np.all(seg[orig])  # kept bits stay kept
            if orig.sum() >= min_channels:
                np.testing.assert_array_equal(seg, orig)  # nothing added when not needed
            else:
                assert seg.sum() == min_channels  # only as many as needed are restored
        plan = enc.decode(x)
        plan.validate(space)
        assert all(len(k) >= min_channels for k in plan.keep)


def test_mask_repair_restores_highest_ranked_channels() -> None:
    space = resnet_space()
    ranking = random_ranking(space, seed=3)
    enc = MaskEncoding(space, ranking, min_channels=3)
    # an all-zero genome gets back exactly the three best channels of every group
    plan = enc.decode(np.zeros(space.n_channels, dtype=bool))
    for g in range(space.n_groups):
        np.testing.assert_array_equal(plan.keep[g], np.sort(ranking[g][:3]))
    # a group that keeps its 2nd-best channel gets back the best and the 3rd-best dropped ones
    x = np.zeros(space.n_channels, dtype=bool)
    x[space.offsets[0] + ranking[0][1]] = True
    kept = enc.decode(x).keep[0]
    np.testing.assert_array_equal(kept, np.sort(ranking[0][[0, 1, 2]]))
    # a group that keeps its worst channel keeps it and gets back the two best
    x = np.zeros(space.n_channels, dtype=bool)
    x[space.offsets[1] + ranking[1][-1]] = True
    kept = enc.decode(x).keep[1]
    np.testing.assert_array_equal(kept, np.sort(ranking[1][[0, 1, -1]]))


def test_mask_encode_decode_round_trip() -> None:
    space = resnet_space()
    enc = MaskEncoding(space, random_ranking(space), 1)
    x = np.random.default_rng(4).random(space.n_channels) < 0.5
    x = enc.repair(x)
    np.testing.assert_array_equal(enc.encode(enc.decode(x)), x)
    assert enc.n_var == space.n_channels


@pytest.mark.parametrize("shape", [(5,), (448 + 1,), (2, 448)])
def test_mask_wrong_genome_length(shape) -> None:
    space = resnet_space()
    assert space.n_channels == 448
    enc = MaskEncoding(space, random_ranking(space), 1)
    with pytest.raises(GenomeError, match="448"):
        enc.decode(np.ones(shape, dtype=bool))
    with pytest.raises(ValueError):  # GenomeError is a ValueError
        enc.repair(np.ones(shape, dtype=bool))


def test_mask_decode_is_pure() -> None:
    space = resnet_space()
    enc = MaskEncoding(space, random_ranking(space), 4)
    x = np.random.default_rng(5).random(space.n_channels) < 0.05
    copy = x.copy()
    a, b = enc.decode(x), enc.decode(x)
    np.testing.assert_array_equal(x, copy)
    assert all(np.array_equal(p, q) for p, q in zip(a.keep, b.keep))
    # an integer 0/1 genome (as pymoo may hand over) decodes the same and is not modified
    xi = x.astype(np.int64)
    c = enc.decode(xi)
    np.testing.assert_array_equal(xi, copy.astype(np.int64))
    assert all(np.array_equal(p, q) for p, q in zip(a.keep, c.keep))


def test_mask_ranking_length_checked() -> None:
    space = resnet_space()
    with pytest.raises(ValueError, match="ranking"):
        MaskEncoding(space, random_ranking(space)[:-1], 1)


# --- RatioEncoding ----------------------------------------------------------------------------


def test_ratio_zero_keeps_everything() -> None:
    space = resnet_space()
    enc = RatioEncoding(space, random_ranking(space), 1, max_ratio=0.9)
    assert enc.n_var == space.n_groups
    plan = enc.decode(np.zeros(space.n_groups))
    np.testing.assert_array_equal(plan.mask(space), np.ones(space.n_channels, dtype=bool))


@pytest.mark.parametrize("r", [0.1, 0.25, 0.3, 0.5, 0.7, 0.9])
def test_ratio_keeps_ceil_highest_ranked(r: float) -> None:
    space = resnet_space()
    ranking = random_ranking(space, seed=7)
    enc = RatioEncoding(space, ranking, 1, max_ratio=0.9)
    plan = enc.decode(np.full(space.n_groups, r))
    for g, n in enumerate(space.sizes):
        n_keep = math.ceil(round(int(n) * (1 - r), 9))
        assert len(plan.keep[g]) == n_keep
        np.testing.assert_array_equal(plan.keep[g], np.sort(ranking[g][:n_keep]))
    if r == 0.25:
        assert len(plan.keep[0]) == 12 and len(plan.keep[-1]) == 48
    if r == 0.5:
        np.testing.assert_array_equal(plan.n_kept(), space.sizes // 2)


def test_ratio_rounding_is_exact() -> None:
    # 10 * (1 - 0.7) == 3.0000000000000004 in floating point: must keep 3, not 4
    model = FlattenLinearCNN().eval()
    space = PruningSpace.from_model(model, (3, 8, 8), SpacePolicy())
    assert 10 in space.sizes.tolist()
    enc = RatioEncoding(space, [np.arange(int(n)) for n in space.sizes], 1, max_ratio=0.9)
    counts = enc.n_keep(np.full(space.n_groups, 0.7))
    for n, k in zip(space.sizes.tolist(), counts.tolist()):
        assert k == {8: 3, 10: 3, 12: 4}[n]


def test_ratio_respects_min_channels() -> None:
    space = resnet_space()
    enc = RatioEncoding(space, random_ranking(space), min_channels=10, max_ratio=0.95)
    plan = enc.decode(np.full(space.n_groups, 0.95))
    for g, n in enumerate(space.sizes):
        assert len(plan.keep[g]) == max(10, math.ceil(int(n) * 0.05 - 1e-9))


@pytest.mark.parametrize("bad", [-0.1, 0.96, 1.0, np.nan, np.inf])
def test_ratio_out_of_range_names_the_group(bad: float) -> None:
    space = resnet_space()
    enc = RatioEncoding(space, random_ranking(space), 1, max_ratio=0.95)
    r = np.zeros(space.n_groups)
    r[4] = bad
    with pytest.raises(GenomeError) as info:
        enc.decode(r)
    message = str(info.value)
    assert "group 4" in message and space.groups[4].name in message


def test_ratio_wrong_genome_length() -> None:
    space = resnet_space()
    enc = RatioEncoding(space, random_ranking(space), 1)
    with pytest.raises(GenomeError, match=str(space.n_groups)):
        enc.decode(np.zeros(space.n_groups + 2))


@pytest.mark.parametrize("max_ratio", [0.0, 1.0, -0.5, 1.5])
def test_ratio_max_ratio_checked(max_ratio: float) -> None:
    space = resnet_space()
    with pytest.raises(ValueError, match="max_ratio"):
        RatioEncoding(space, random_ranking(space), 1, max_ratio=max_ratio)


def test_ratio_decode_is_pure() -> None:
    space = resnet_space()
    enc = RatioEncoding(space, random_ranking(space), 1, max_ratio=0.9)
    r = np.random.default_rng(8).uniform(0, 0.9, space.n_groups)
    copy = r.copy()
    a, b = enc.decode(r), enc.decode(r)
    np.testing.assert_array_equal(r, copy)
    assert all(np.array_equal(p, q) for p, q in zip(a.keep, b.keep))
    a.validate(space)


# --- criteria ---------------------------------------------------------------------------------


def _hand_made() -> tuple[nn.Module, PruningSpace]:
    """conv1 (1 -> 3 filters of 4 weights) -> BN -> ReLU -> conv2 -> pool -> linear."""
    model = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 3, 2, bias=False)),
        ("bn1", nn.BatchNorm2d(3)),
        ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(3, 2, 1, bias=False)),
        ("relu2", nn.ReLU()),
        ("pool", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(2, 2)),
    ]))
    with torch.no_grad():
        model.conv1.weight.copy_(torch.tensor([
            [[[3.0, 0.0], [0.0, 0.0]]],    # l1 3, l2 3
            [[[1.0, -1.0], [1.0, -1.0]]],  # l1 4, l2 2
            [[[0.5, 0.5], [0.0, 0.0]]],    # l1 1, l2 0.707
        ]))
        model.conv2.weight.copy_(torch.tensor([[[[2.0]], [[0.0]], [[0.0]]],     # l1 2, l2 2
                                               [[[-1.0]], [[1.0]], [[1.0]]]]))  # l1 3, l2 1.73
    space = PruningSpace.from_model(model.eval(), (1, 4, 4), SpacePolicy())
    return model, space


def test_criteria_on_hand_made_weights() -> None:
    model, space = _hand_made()
    assert [(g.name, g.size) for g in space.groups] == [("conv1", 3), ("conv2", 2)]
    l1, l2 = l1_norm(model, space), l2_norm(model, space)
    np.testing.assert_allclose(l1, [3.0, 4.0, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(l2, [3.0, 2.0, math.sqrt(0.5), 2.0, math.sqrt(3.0)])
    assert [r.tolist() for r in rank_channels(space, l1)] == [[1, 0, 2], [1, 0]]
    assert [r.tolist() for r in rank_channels(space, l2)] == [[0, 1, 2], [0, 1]]
    np.testing.assert_allclose(CRITERIA.get("l1").score(model, space), l1)
    np.testing.assert_allclose(CRITERIA.get("l2").score(model, space), l2)


def test_rank_channels_is_stable_and_checked() -> None:
    _, space = _hand_made()
    assert [r.tolist() for r in rank_channels(space, np.ones(5))] == [[0, 1, 2], [0, 1]]
    with pytest.raises(ValueError, match="shape"):
        rank_channels(space, np.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        rank_channels(space, np.array([1.0, np.nan, 0.0, 1.0, 2.0]))


def test_criteria_on_residual_groups_sum_all_writers() -> None:
    model, space = _resnet_space()
    scores = l1_norm(model, space)
    assert scores.shape == (space.n_channels,) and np.all(scores > 0)
    stage = next(g for g in space.groups if g.residual)
    writers = [n for n in ("conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2")]
    expected = sum(model.get_submodule(n).weight.detach().abs().flatten(1).sum(1).double()
                   for n in writers)
    np.testing.assert_allclose(scores[space.group_slice(stage.index)], expected.numpy())


def test_unknown_criterion_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        CRITERIA.get("nope")
    message = str(info.value)
    assert "'nope'" in message and "l1" in message and "l2" in message
    assert {"l1", "l2"} <= set(CRITERIA.names())
