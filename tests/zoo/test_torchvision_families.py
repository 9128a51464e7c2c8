"""Contract over torchvision's classifier families: every one Torch-Pruning can trace is exact.

For each family (random weights, small inputs) and both space policies: the space builds, the
masked (gated) and sliced evaluations of a random plan equal the physically pruned network,
the analytic cost equals thop's count of that network, and the pruned network survives a save
and reload. ShuffleNet, whose channel shuffle Torch-Pruning cannot trace, is refused clearly.
docs/models.md lists the families and their MACs at 50 % of the channels kept
(analysis/torchvision_families.py).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from moprune.core.cost import CostModel
from moprune.core.gated import GatedModel
from moprune.core.plan import PruningPlan
from moprune.core.sliced import SlicedModel
from moprune.core.space import PruningSpace, SpacePolicy
from moprune.core.surgery import prune_model
from moprune.errors import UnsupportedLayerError
from moprune.runs.export import thop_cost
from moprune.zoo.families import FAMILIES
from moprune.zoo.models import build_model

# Inputs as small as each family's downsampling allows.
SMALL_SIDE = {"alexnet": 64, "googlenet": 48, "squeezenet1_0": 48, "vgg11_bn": 32}


def _randomise_norms(model: nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics, so a wrong channel map changes the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


def _check_plan(model: nn.Module, space: PruningSpace, shape: tuple[int, int, int],
                reload: bool) -> None:
    """A random plan: gated == sliced == pruned, cost == thop, (optionally) save/reload."""
    rng = np.random.default_rng(0)
    mask = rng.random(space.n_channels) < 0.5
    mask[space.offsets[:-1]] = True  # every group keeps a unit
    plan = PruningPlan.from_mask(space, mask)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        gated = GatedModel(model, space).forward(x, torch.as_tensor(mask)[None])[0]
        sliced = SlicedModel(model, space).forward(x, torch.as_tensor(mask))
        pruned = prune_model(model, space, plan)
        expected = pruned(x)
    scale = 1.0 + float(expected.abs().max())
    torch.testing.assert_close(gated, expected, rtol=1e-4, atol=1e-4 * scale)
    torch.testing.assert_close(sliced, expected, rtol=1e-4, atol=1e-4 * scale)

    predicted = CostModel(space, model).cost_of_masks(mask[None])
    assert thop_cost(pruned, shape) == (int(predicted.macs[0]), int(predicted.params[0]))
    if reload:
        buf = io.BytesIO()
        torch.save(pruned, buf)
        buf.seek(0)
        reloaded = torch.load(buf, weights_only=False).eval()
        with torch.no_grad():
            assert torch.equal(reloaded(x), expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_space_is_exact_and_costed_like_thop(family: str) -> None:
    torch.manual_seed(0)
    model = build_model(f"tv:{family}", num_classes=5).eval()
    _randomise_norms(model, seed=1)
    side = SMALL_SIDE.get(family, 32)
    shape = (3, side, side)
    internal = PruningSpace.from_model(model, shape, SpacePolicy(residual=False))
    residual = PruningSpace.from_model(model, shape, SpacePolicy(residual=True))
    assert internal.n_groups > 0 and not any(g.residual for g in internal.groups)
    if any(g.residual for g in residual.all_groups):
        assert residual.n_channels > internal.n_channels
        _check_plan(model, internal, shape, reload=False)
        _check_plan(model, residual, shape, reload=True)
    else:  # no residual streams: both policies give one space
        assert [g.name for g in residual.groups] == [g.name for g in internal.groups]
        _check_plan(model, internal, shape, reload=True)


def test_shufflenet_is_refused_because_torch_pruning_cannot_trace_it() -> None:
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=5).eval()
    with pytest.raises(UnsupportedLayerError, match="Torch-Pruning could not trace"):
        PruningSpace.from_model(model, (3, 32, 32))
