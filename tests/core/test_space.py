"""Pruning spaces (groups found with Torch-Pruning) and pruning plans."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from helpers import model_and_space, one_torch_thread, random_plan, tiny_model_ids
from torch import nn

from moprune.core.layers import BatchNormRule, ConvRule, DepthwiseRule, LinearRule
from moprune.core.plan import PruningPlan, masks_matrix
from moprune.core.space import PruningSpace, SpacePolicy
from moprune.errors import UnsupportedLayerError
from moprune.zoo.cifar_resnet import cifar_resnet

CONV, DEPTHWISE, LINEAR, BATCHNORM = (r.kind for r in (ConvRule, DepthwiseRule, LinearRule,
                                                      BatchNormRule))


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    yield from one_torch_thread()


SHAPE = (3, 8, 8)


@functools.cache
def _resnet(depth: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return cifar_resnet(depth)


def resnet_space(depth: int = 20, **policy) -> PruningSpace:
    return PruningSpace.from_model(_resnet(depth), SHAPE, SpacePolicy(**policy))


@pytest.mark.parametrize("depth, n_internal", [(20, 9), (56, 27)])
def test_internal_groups_of_cifar_resnets(depth: int, n_internal: int) -> None:
    space = resnet_space(depth)
    assert space.n_groups == n_internal
    blocks = (depth - 2) // 6
    expected = [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(blocks)]
    assert [g.name for g in space.groups] == expected
    assert [g.size for g in space.groups] == [w for w in (16, 32, 64) for _ in range(blocks)]
    assert [g.index for g in space.groups] == list(range(n_internal))


@pytest.mark.parametrize("model_id", tiny_model_ids())
def test_internal_policy_has_no_residual_groups_and_never_prunes_the_output(model_id) -> None:
    model, space, _ = model_and_space(model_id, False)
    assert space.n_groups > 0
    assert not any(g.residual for g in space.groups)
    assert space.policy.residual is False
    out = space.output_layer
    assert space.layers[out].kind in (CONV, LINEAR)
    assert not (space.owner[(out, "out")] >= 0).any()
    assert all(g.name != out for g in space.groups)
    # the classifier's output size is that of the model's output
    with torch.no_grad():
        logits = model(torch.zeros(1, *space.input_shape))
    assert space.layers[out].n_out == logits.shape[1]


@pytest.mark.parametrize("model_id", tiny_model_ids())
@pytest.mark.parametrize("residual", [False, True], ids=["internal", "residual"])
def test_space_invariants(model_id: str, residual: bool) -> None:
    _, space, _ = model_and_space(model_id, residual)
    assert space.n_channels == int(space.sizes.sum()) == sum(g.size for g in space.groups)
    assert space.offsets[0] == 0 and space.offsets[-1] == space.n_channels
    for g, group in enumerate(space.groups):
        assert group.index == g
        sl = space.group_slice(g)
        assert sl.stop - sl.start == group.size
        assert group.name in group.layers
    # every channel id of the flat vector is used by some layer dimension, none out of range
    used = np.zeros(space.n_channels, dtype=bool)
    for (name, dim), own in space.owner.items():
        assert dim in ("in", "out")
        assert name in space.layers
        assert own.min(initial=-1) >= -1 and own.max(initial=-1) < space.n_channels
        used[own[own >= 0]] = True
    assert used.all()
    # every group has a writer conv whose filters it prunes
    for g, group in enumerate(space.groups):
        ids = np.arange(space.offsets[g], space.offsets[g + 1])
        writers = [name for (name, dim), own in space.owner.items()
                   if dim == "out"
                   and space.layers[name].kind in (CONV, DEPTHWISE, LINEAR, "grouped_conv")
                   and np.isin(ids, own).all()]
        assert writers, group.name


def test_residual_policy_adds_three_stage_groups() -> None:
    internal = resnet_space(20)
    residual = resnet_space(20, residual=True)
    assert residual.n_groups == internal.n_groups + 3
    stage = [g for g in residual.groups if g.residual]
    assert [g.size for g in stage] == [16, 32, 64]
    internal_names = {g.name for g in internal.groups}
    assert {g.name for g in residual.groups if not g.residual} == internal_names
    # a stage group spans every block of its stage (all conv2 outputs, the conv1 inputs of
    # the stage's later blocks and of the next stage's first block and shortcut)
    for s, group in enumerate(stage, start=1):
        for b in range(3):
            assert f"layer{s}.{b}.conv2" in group.layers
            assert f"layer{s}.{b}.bn2" in group.layers
        assert f"layer{s}.1.conv1" in group.layers and f"layer{s}.2.conv1" in group.layers
        if s < 3:
            assert f"layer{s + 1}.0.conv1" in group.layers
            assert f"layer{s + 1}.0.shortcut" in group.layers
    assert "conv1" in stage[0].layers and "bn1" in stage[0].layers
    assert "linear" in stage[2].layers  # the classifier reads the last stage
    assert residual.all_groups == internal.all_groups


def test_group_layers_include_following_batchnorm() -> None:
    space = resnet_space(20, residual=True)
    for group in space.groups:
        if group.residual:
            continue
        block = group.name.removesuffix(".conv1")
        assert group.layers[:3] == (f"{block}.conv1", f"{block}.bn1", f"{block}.conv2")
        bn = f"{block}.bn1"
        assert space.layers[bn].kind == BATCHNORM
        np.testing.assert_array_equal(space.owner[(bn, "out")],
                                      np.arange(space.offsets[group.index],
                                                space.offsets[group.index + 1]))


@pytest.mark.parametrize("model_id", ["vgg16_bn_cifar", "digits_cnn", "tv:mobilenet_v2"])
def test_every_pruned_conv_output_is_followed_by_its_batchnorm(model_id: str) -> None:
    _, space, _ = model_and_space(model_id, True)
    for group in space.groups:
        convs = [n for n in group.layers if space.layers[n].kind in (CONV, DEPTHWISE)]
        bns = [n for n in group.layers if space.layers[n].kind == BATCHNORM]
        assert convs and bns, group


def test_min_channels_excludes_small_groups() -> None:
    space = resnet_space(20, min_channels=16)
    assert space.n_groups == 6
    assert all(g.size > 16 for g in space.groups)
    assert space.policy.min_channels == 16
    assert resnet_space(20, min_channels=32).n_groups == 3
    assert resnet_space(20, min_channels=64).n_groups == 0


@pytest.mark.parametrize("bad", [0, -1])
def test_min_channels_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError, match="min_channels"):
        SpacePolicy(min_channels=bad)


def test_exclude_removes_the_groups_of_named_layers() -> None:
    space = resnet_space(20, exclude=("layer1.0.conv1", "layer3.2.conv2"))
    names = [g.name for g in space.groups]
    assert "layer1.0.conv1" not in names and "layer3.2.conv1" not in names
    assert space.n_groups == 7
    # excluding the classifier removes the stage group it reads from
    residual = resnet_space(20, residual=True, exclude=("linear",))
    assert [g.size for g in residual.groups if g.residual] == [16, 32]


def test_exclude_refuses_unknown_names_and_plain_strings() -> None:
    with pytest.raises(ValueError, match="layer9.conv1"):
        resnet_space(20, exclude=("layer9.conv1",))
    with pytest.raises(TypeError, match="tuple of layer names"):
        SpacePolicy(exclude="linear")


def test_space_build_does_not_change_the_model() -> None:
    model = cifar_resnet(20).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    PruningSpace.from_model(model, SHAPE, SpacePolicy(residual=True))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- plans ------------------------------------------------------------------------------------


def test_plan_validate_errors() -> None:
    space = resnet_space(20)
    full = PruningPlan.full(space)
    assert full.validate(space) is full
    keep = list(full.keep)

    empty = PruningPlan(tuple([np.array([], dtype=np.int64)] + keep[1:]))
    with pytest.raises(ValueError, match="no channel of group 0 .*layer1.0.conv1"):
        empty.validate(space)

    out_of_range = PruningPlan(tuple(keep[:1] + [np.array([0, 16])] + keep[2:]))
    with pytest.raises(ValueError, match=r"group 1 .*\[0, 16\)"):
        out_of_range.validate(space)

    negative = PruningPlan(tuple(keep[:1] + [np.array([-1, 3])] + keep[2:]))
    with pytest.raises(ValueError, match="group 1"):
        negative.validate(space)

    duplicate = PruningPlan(tuple(keep[:2] + [np.array([2, 2])] + keep[3:]))
    with pytest.raises(ValueError, match="distinct"):
        duplicate.validate(space)

    with pytest.raises(ValueError, match="8 groups, the space has 9"):
        PruningPlan(tuple(keep[:-1])).validate(space)


def test_plan_mask_round_trip() -> None:
    space = resnet_space(20, residual=True)
    rng = np.random.default_rng(0)
    for p in (0.1, 0.5, 0.9):
        plan = random_plan(space, rng, p)
        mask = plan.mask(space)
        assert mask.dtype == bool and mask.shape == (space.n_channels,)
        back = PruningPlan.from_mask(space, mask)
        assert all(np.array_equal(a, b) for a, b in zip(plan.keep, back.keep))
        np.testing.assert_array_equal(back.n_kept(), [len(k) for k in plan.keep])
    assert PruningPlan.full(space).mask(space).all()
    with pytest.raises(ValueError, match=str(space.n_channels)):
        PruningPlan.from_mask(space, np.ones(space.n_channels - 1, dtype=bool))
    plans = [random_plan(space, rng, 0.5) for _ in range(3)]
    matrix = masks_matrix(space, plans)
    assert matrix.shape == (3, space.n_channels)
    for row, plan in zip(matrix, plans):
        np.testing.assert_array_equal(row, plan.mask(space))


def test_plan_dict_round_trip() -> None:
    space = resnet_space(20, residual=True)
    plan = random_plan(space, np.random.default_rng(1), 0.5)
    data = plan.to_dict(space)
    assert list(data) == [g.name for g in space.groups]
    back = PruningPlan.from_dict(space, json.loads(plan.to_json(space)))
    assert all(np.array_equal(a, b) and b.dtype == np.int64 for a, b in zip(plan.keep, back.keep))
    # key order in the dict does not matter
    shuffled = dict(reversed(list(data.items())))
    back2 = PruningPlan.from_dict(space, shuffled)
    assert all(np.array_equal(a, b) for a, b in zip(plan.keep, back2.keep))
    # the group names must match the space
    with pytest.raises(ValueError, match="do not match"):
        PruningPlan.from_dict(space, {**data, "bogus": [0]})
    missing = dict(data)
    missing.pop(space.groups[0].name)
    with pytest.raises(ValueError, match="do not match"):
        PruningPlan.from_dict(space, missing)
    # and the indices are validated
    bad = {**data, space.groups[0].name: []}
    with pytest.raises(ValueError, match="no channel"):
        PruningPlan.from_dict(space, bad)


# --- architectures the space cannot represent must be refused, not mis-modelled ---------------


class _ChannelShuffle(nn.Module):
    """conv1 -> channel shuffle (view / transpose / reshape, as in ShuffleNet) -> conv2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 1)
        self.conv2 = nn.Conv2d(8, 8, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        b, c, h, w = x.shape
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.fc(self.flatten(self.gap(self.conv2(x))))


def test_channel_shuffle_is_refused_or_exact() -> None:
    from moprune.core.gated import GatedModel

    torch.manual_seed(0)
    model = _ChannelShuffle().eval()
    try:
        space = PruningSpace.from_model(model, (3, 4, 4))
    except UnsupportedLayerError:
        return  # refused: fine
    mask = np.ones(space.n_channels, dtype=bool)
    mask[1] = False  # drop conv1's output channel 1
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        gated = GatedModel(model, space).forward(x, torch.as_tensor(mask)[None])[0]
        model.conv1.weight[1] = 0.0  # the same network with that channel removed
        model.conv1.bias[1] = 0.0
        truth = model(x)
    torch.testing.assert_close(gated, truth, atol=1e-4, rtol=0)


def test_torchvision_shufflenet_is_refused_clearly() -> None:
    from moprune.zoo.models import build_model

    model = build_model("tv:shufflenet_v2_x0_5", num_classes=5).eval()
    with pytest.raises(UnsupportedLayerError):
        PruningSpace.from_model(model, (3, 32, 32))
