"""The analytic cost model equals thop on the physically pruned model, for every zoo model."""

from __future__ import annotations

import copy
import zlib

import numpy as np
import pytest
import thop
import torch
from helpers import (
    FlattenLinearCNN,
    model_and_space,
    one_torch_thread,
    random_plan,
    tiny_model_ids,
    tiny_sequential,
)
from torch import nn

from moprune.core.cost import CostModel
from moprune.core.plan import PruningPlan, masks_matrix
from moprune.core.space import PruningSpace, SpacePolicy
from moprune.core.surgery import prune_model
from moprune.errors import UnsupportedLayerError


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    yield from one_torch_thread()


def thop_cost(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    """(MACs, params) that thop counts for one image (on a copy: thop adds buffers)."""
    macs, params = thop.profile(copy.deepcopy(model).eval(), (torch.randn(1, *shape),),
                                verbose=False)
    return int(round(macs)), int(round(params))


@pytest.mark.parametrize("residual", [False, True], ids=["internal", "residual"])
@pytest.mark.parametrize("model_id", tiny_model_ids())
def test_cost_equals_thop(model_id: str, residual: bool) -> None:
    model, space, shape = model_and_space(model_id, residual)
    cost_model = CostModel(space, model)

    # the unpruned network
    base_macs, base_params = thop_cost(model, shape)
    assert int(cost_model.base.macs[0]) == base_macs
    assert int(cost_model.base.params[0]) == base_params
    assert base_params == sum(p.numel() for p in model.parameters())
    full = cost_model.cost([PruningPlan.full(space)])
    assert full.macs.tolist() == [base_macs] and full.params.tolist() == [base_params]

    # random plans
    rng = np.random.default_rng(zlib.crc32(f"cost/{model_id}/{residual}".encode()))
    plans = [random_plan(space, rng, p) for p in (0.25, 0.5, 0.85)]
    cost = cost_model.cost(plans)
    assert cost.macs.dtype == np.int64 and cost.params.dtype == np.int64
    for i, plan in enumerate(plans):
        macs, params = thop_cost(prune_model(model, space, plan), shape)
        assert (int(cost.macs[i]), int(cost.params[i])) == (macs, params), f"plan {i}"
        assert macs < base_macs and params < base_params
    np.testing.assert_array_equal(cost.flops, 2 * cost.macs)


def test_flops_are_twice_macs() -> None:
    model, space, _ = model_and_space("cifar_resnet20", True)
    cost_model = CostModel(space, model)
    rng = np.random.default_rng(0)
    cost = cost_model.cost([random_plan(space, rng, 0.5) for _ in range(4)])
    np.testing.assert_array_equal(cost.flops, 2 * cost.macs)
    assert cost.flops.dtype == np.int64


@pytest.mark.parametrize("model_id", ["cifar_resnet20", "tv:mobilenet_v2", "flatten_linear_cnn"])
def test_vectorised_cost_equals_per_plan(model_id: str) -> None:
    model, space, _ = model_and_space(model_id, True)
    cost_model = CostModel(space, model)
    rng = np.random.default_rng(1)
    plans = [random_plan(space, rng, float(p)) for p in rng.uniform(0.05, 1.0, 50)]
    batch = cost_model.cost(plans)
    assert batch.macs.shape == (50,) and batch.params.shape == (50,)
    one_by_one = [cost_model.cost([p]) for p in plans]
    np.testing.assert_array_equal(batch.macs, [c.macs[0] for c in one_by_one])
    np.testing.assert_array_equal(batch.params, [c.params[0] for c in one_by_one])
    by_masks = cost_model.cost_of_masks(masks_matrix(space, plans))
    np.testing.assert_array_equal(by_masks.macs, batch.macs)
    # a single mask vector is accepted as a population of one
    single = cost_model.cost_of_masks(plans[0].mask(space))
    assert single.macs.tolist() == [batch.macs[0]]


def test_cost_is_monotone_in_kept_channels() -> None:
    model, space, _ = model_and_space("cifar_resnet20", True)
    cost_model = CostModel(space, model)
    rng = np.random.default_rng(2)
    mask = random_plan(space, rng, 0.6).mask(space)
    more = mask.copy()
    more[np.flatnonzero(~mask)[:5]] = True
    c = cost_model.cost_of_masks(np.stack([mask, more]))
    assert c.macs[0] < c.macs[1] and c.params[0] < c.params[1]


def test_wrong_mask_width_raises() -> None:
    model, space, _ = model_and_space("digits_cnn", False)
    with pytest.raises(ValueError, match=str(space.n_channels)):
        CostModel(space, model).cost_of_masks(np.ones((2, space.n_channels + 1), dtype=bool))


@pytest.mark.parametrize("model_id", ["cifar_resnet20", "vgg16_bn_cifar", "tv:mobilenet_v2"])
@pytest.mark.parametrize("residual", [False, True], ids=["internal", "residual"])
def test_share_of_macs_in_unit_interval(model_id: str, residual: bool) -> None:
    model, space, _ = model_and_space(model_id, residual)
    shares = CostModel(space, model).share_of_macs()
    assert shares.shape == (space.n_groups,)
    assert np.all(np.isfinite(shares))
    assert np.all(shares >= 0.0) and np.all(shares <= 1.0)
    assert np.all(shares > 0.0)  # every prunable group touches some counted layer


def _instancenorm_model() -> nn.Module:
    return tiny_sequential(nn.Conv2d(3, 4, 3, padding=1), nn.InstanceNorm2d(4, affine=True),
                           nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def test_unsupported_layer_names_layer_lists_supported_and_offers_exclude() -> None:
    with pytest.raises(UnsupportedLayerError) as info:
        PruningSpace.from_model(_instancenorm_model(), (3, 6, 6))
    message = str(info.value)
    assert "'l1'" in message and "InstanceNorm2d" in message
    for supported in ("Conv2d", "Linear", "BatchNorm", "AvgPool2d", "ReLU", "GroupNorm",
                      "LayerNorm"):
        assert supported in message
    assert "SpacePolicy(exclude=('l1',))" in message


def test_layernorm_over_more_than_the_channels_is_refused() -> None:
    model = tiny_sequential(nn.Conv2d(3, 4, 3, padding=1), nn.LayerNorm([4, 6, 6]), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(UnsupportedLayerError, match=r"'l1' is a LayerNorm over \(4, 6, 6\)"):
        PruningSpace.from_model(model, (3, 6, 6))


class _StrayParameter(nn.Module):
    """A learnable scale that no supported layer owns: the cost model cannot count it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = FlattenLinearCNN()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_parameters_outside_supported_layers_raise() -> None:
    model = _StrayParameter().eval()
    space = PruningSpace.from_model(model, (3, 8, 8), SpacePolicy())
    with pytest.raises(UnsupportedLayerError, match="scale"):
        CostModel(space, model)
