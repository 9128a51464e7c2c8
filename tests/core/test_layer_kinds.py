"""Layer kinds beyond plain convolutions: tied channels, data-flow grouping, identities, exclusion.

The exactness and cost contracts over the tiny models in tests/helpers.py (test_exactness,
test_cost, test_criteria, ...) cover these kinds too; here are their specific rules.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import model_and_space, randomize_bn
from torch import nn

from moprune.core.cost import CostModel
from moprune.core.gated import GatedModel
from moprune.core.plan import PruningPlan
from moprune.core.space import PruningSpace, SpacePolicy
from moprune.core.surgery import prune_model
from moprune.errors import ConfigError, UnsupportedLayerError
from moprune.runs.export import thop_cost


def _group(space: PruningSpace, name: str):
    return next(g for g in space.groups if g.name == name)


def _check_exact(model: nn.Module, space: PruningSpace, shape: tuple[int, ...],
                 seed: int = 0) -> nn.Module:
    """A random plan: gated == pruned and analytic cost == thop; returns the pruned model."""
    rng = np.random.default_rng(seed)
    mask = rng.random(space.n_channels) < 0.5
    mask[space.offsets[:-1]] = True
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(seed))
    pruned = prune_model(model, space, PruningPlan.from_mask(space, mask))
    with torch.no_grad():
        gated = GatedModel(model, space).forward(x, torch.as_tensor(mask)[None])[0]
        torch.testing.assert_close(gated, pruned(x), rtol=1e-4, atol=1e-5)
    cost = CostModel(space, model).cost_of_masks(mask[None])
    assert thop_cost(pruned, shape) == (int(cost.macs[0]), int(cost.params[0]))
    return pruned


# ---- grouping follows data flow -----------------------------------------------------------


def test_squeeze_and_excite_channels_are_internal_and_additions_make_streams() -> None:
    _, internal, _ = model_and_space("squeeze_excite_cnn", residual=False)
    _, residual, _ = model_and_space("squeeze_excite_cnn", residual=True)
    # the expanded channels: written by the expand conv and (multiplied) by the SE gate's fc2
    expanded = next(g for g in internal.groups if "expand" in g.layers)
    assert expanded.size == 32 and not expanded.residual
    assert {"expand", "dw", "se.fc1", "se.fc2", "project"} <= set(expanded.layers)
    assert _group(internal, "se.fc1").size == 8  # the squeeze channels
    assert len(internal.groups) == 2
    stream = [g for g in residual.groups if g.residual]  # the stem output, added to the block's
    assert len(stream) == 1 and {"stem", "project", "classifier.1"} <= set(stream[0].layers)
    assert residual.output_layer == "classifier.1"  # through ReLU, pooling and flatten


# ---- tied channels: grouped convolutions and GroupNorm -------------------------------------


def test_grouped_convolution_channels_are_pruned_at_one_position_in_every_group() -> None:
    model, space, shape = model_and_space("grouped_bottleneck_cnn", residual=False)
    reduce, grouped = _group(space, "reduce"), _group(space, "grouped")
    # 8 input channels in 4 groups of 2: 2 units {0, 2, 4, 6} and {1, 3, 5, 7}
    assert reduce.size == 2 and reduce.channels == 8
    assert reduce.units == ((0, 2, 4, 6), (1, 3, 5, 7))
    assert grouped.size == 3 and grouped.units[0] == (0, 3, 6, 9)  # 12 outputs, 4 groups of 3
    keep = [np.array([1]) if g.name == "reduce" else np.array([0, 2]) if g.name == "grouped"
            else np.arange(g.size) for g in space.groups]
    pruned = prune_model(model, space, PruningPlan(tuple(keep)))
    conv = pruned.grouped
    assert (conv.groups, conv.in_channels, conv.out_channels) == (4, 4, 8)
    assert conv.weight.shape == (8, 1, 3, 3)
    _check_exact(model, space, shape)


def test_groupnorm_ties_channels_at_positions_shared_by_all_its_grouped_neighbours() -> None:
    model, space, shape = model_and_space("groupnorm_cnn", residual=False)
    conv1, conv2 = _group(space, "conv1"), _group(space, "conv2")
    assert (conv1.size, conv1.channels) == (8, 16)  # GroupNorm(2, 16), conv2 in 2 groups of 8
    # conv2 out: 2 groups of 12, GroupNorm(4, 24) groups of 6: positions modulo 6 tie
    assert (conv2.size, conv2.channels) == (6, 24)
    assert conv2.units[1] == (1, 7, 13, 19)
    _check_exact(model, space, shape)


class _ConcatIntoGroupedConv(nn.Module):
    """Two convs concatenated into a grouped conv: each feeds one of its two groups only."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.g(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)))
        return self.fc(self.pool(x).flatten(1))


def test_ties_a_group_cannot_honour_leave_the_group_whole() -> None:
    torch.manual_seed(0)
    model = _ConcatIntoGroupedConv().eval()
    space = PruningSpace.from_model(model, (3, 6, 6))
    names = [g.name for g in space.groups]
    # pruning a alone would shrink one group of g and not the other: a and b stay whole
    assert "a" not in names and "b" not in names and names == ["g"]
    assert {g.name for g in space.all_groups} >= {"a", "b"}
    _check_exact(model, space, (3, 6, 6))


def test_criteria_score_a_unit_by_all_its_channels() -> None:
    from moprune.criteria import CRITERIA

    model, space, _ = model_and_space("grouped_bottleneck_cnn", residual=False)
    reduce = _group(space, "reduce")
    l1 = CRITERIA.get("l1").score(model, space)
    w = model.reduce.weight.detach().double().abs().flatten(1).sum(1).numpy()
    sl = space.group_slice(reduce.index)
    np.testing.assert_allclose(l1[sl], [w[list(u)].sum() for u in reduce.units])
    fpgm = CRITERIA.get("fpgm").score(model, space)
    assert np.isfinite(fpgm).all() and (fpgm[sl] > 0).all()


# ---- layers without rules: identities, exclusion -----------------------------------------


class _EvalIdentity(nn.Module):
    """A custom regulariser: scales in training, the identity in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.5 if self.training else x


class _Doubler(nn.Module):
    """Parameter-free but not an identity: moprune has no rule for it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0


class _Scale(nn.Module):
    """A per-channel learnable scale moprune has no rule for."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1)


def _net(middle: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), middle,
        nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
        nn.Conv2d(12, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    return randomize_bn(net, torch.Generator().manual_seed(1)).eval()


def test_parameter_free_identities_need_no_rule() -> None:
    model = _net(_EvalIdentity())
    space = PruningSpace.from_model(model, (3, 6, 6))
    assert space.layers["3"].kind == "identity"
    assert [g.name for g in space.groups] == ["0", "4", "7"]
    _check_exact(model, space, (3, 6, 6))


@pytest.mark.parametrize("middle", [_Doubler, lambda: _Scale(8)], ids=["free", "parameters"])
def test_an_unsupported_layer_can_be_excluded_and_the_rest_pruned(middle) -> None:
    model = _net(middle())
    with pytest.raises(UnsupportedLayerError, match=r"SpacePolicy\(exclude=\('3',\)\)"):
        PruningSpace.from_model(model, (3, 6, 6))
    space = PruningSpace.from_model(model, (3, 6, 6), SpacePolicy(exclude=("3",)))
    assert space.layers["3"].kind == "opaque"
    assert [g.name for g in space.groups] == ["4", "7"]  # conv 0's channels pass through it
    _check_exact(model, space, (3, 6, 6))


def test_exclude_may_name_a_module_that_contains_layers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)),
        nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).eval()
    space = PruningSpace.from_model(model, (3, 6, 6), SpacePolicy(exclude=("0",)))
    assert [g.name for g in space.groups] == ["2"]
    with pytest.raises(ConfigError, match="does not have.*'nope'"):
        PruningSpace.from_model(model, (3, 6, 6), SpacePolicy(exclude=("nope",)))


class _BlockWithScale(nn.Module):
    """A block owning a parameter besides its child layers (like ConvNeXt's layer scale)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.gain = nn.Parameter(torch.ones(8, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.gain


def test_a_block_with_parameters_of_its_own_needs_a_holder_rule_or_exclusion() -> None:
    model = _net(_BlockWithScale())
    with pytest.raises(UnsupportedLayerError, match=r"'3'.*\['gain'\].*holder=True"):
        PruningSpace.from_model(model, (3, 6, 6))
    space = PruningSpace.from_model(model, (3, 6, 6), SpacePolicy(exclude=("3",)))
    assert "3.conv" not in {layer for g in space.groups for layer in g.layers}
    _check_exact(model, space, (3, 6, 6))


# ---- the model output -----------------------------------------------------------------------


class _Head(nn.Module):
    def __init__(self, post: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)
        self.post = post

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(torch.relu(self.conv(x)).mean((2, 3)))
        return y.log_softmax(1) * 2.0 if self.post == "scaled" else y.sum(1, keepdim=True)


def test_the_output_layer_is_found_through_per_class_operations_only() -> None:
    space = PruningSpace.from_model(_Head("scaled").eval(), (3, 6, 6))
    assert space.output_layer == "fc"
    with pytest.raises(UnsupportedLayerError, match="produces the model output"):
        PruningSpace.from_model(_Head("summed").eval(), (3, 6, 6))
