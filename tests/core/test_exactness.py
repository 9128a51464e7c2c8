"""Gated and sliced evaluation equal the physically pruned network; nothing mutates the model."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import (
    assert_state_equal,
    model_and_space,
    one_torch_thread,
    random_plan,
    state_snapshot,
    tiny_model_ids,
)

from moprune.core.gated import GatedModel
from moprune.core.plan import PruningPlan, masks_matrix
from moprune.core.sliced import SlicedModel
from moprune.core.surgery import prune_model


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    yield from one_torch_thread()


ATOL = 1e-4
KEEP_PROBS = (0.3, 0.6, 0.9)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("residual", [False, True], ids=["internal", "residual"])
@pytest.mark.parametrize("model_id", tiny_model_ids())
def test_gated_and_sliced_equal_pruned(model_id: str, residual: bool) -> None:
    model, space, shape = model_and_space(model_id, residual)
    assert space.n_groups > 0
    rng = np.random.default_rng(zlib.crc32(f"{model_id}/{residual}".encode()))
    plans = [random_plan(space, rng, p) for p in KEEP_PROBS]
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(2))
    before = state_snapshot(model)
    structure = repr(model)
    full_params = n_params(model)

    with torch.no_grad():
        full = model(x)
        gated_all = GatedModel(model, space).forward(
            x, torch.as_tensor(masks_matrix(space, plans)))
    assert gated_all.shape == (len(plans), x.shape[0], full.shape[1])
    sliced = SlicedModel(model, space)
    changed = []
    for i, plan in enumerate(plans):
        pruned = prune_model(model, space, plan)
        assert not pruned.training
        with torch.no_grad():
            ref = pruned(x)
            got_sliced = sliced.forward(x, torch.as_tensor(plan.mask(space)))
        assert ref.shape == full.shape
        torch.testing.assert_close(gated_all[i], ref, atol=ATOL, rtol=0)
        torch.testing.assert_close(got_sliced, ref, atol=ATOL, rtol=0)
        if not plan.mask(space).all():
            assert n_params(pruned) < full_params
        changed.append(not torch.allclose(ref, full, atol=ATOL))

        # the pruned copy trains: a backward pass reaches every parameter
        pruned.train()
        loss = F.cross_entropy(pruned(x), torch.zeros(x.shape[0], dtype=torch.long))
        loss.backward()
        assert all(p.grad is not None for p in pruned.parameters())

    # the plans are not all no-ops (a single one may only drop dead channels)
    assert any(changed)

    # the caller's model is untouched: same tensors, same shapes, same structure and mode
    assert_state_equal(before, model)
    assert repr(model) == structure
    assert not model.training
    assert not model._forward_pre_hooks
    assert all(not m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(x), full, atol=0, rtol=0)


@pytest.mark.parametrize("model_id", ["cifar_resnet20", "depthwise_avgpool_cnn"])
def test_full_plan_is_identity(model_id: str) -> None:
    model, space, shape = model_and_space(model_id, True)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(3))
    plan = PruningPlan.full(space)
    mask = torch.as_tensor(plan.mask(space))
    with torch.no_grad():
        full = model(x)
        pruned = prune_model(model, space, plan)(x)
        gated = GatedModel(model, space).forward(x, mask[None])[0]
        sliced = SlicedModel(model, space).forward(x, mask)
    for out in (pruned, gated, sliced):
        torch.testing.assert_close(out, full, atol=ATOL, rtol=0)


def test_gated_accepts_float_masks_and_many_candidates() -> None:
    model, space, shape = model_and_space("cifar_resnet20", True)
    rng = np.random.default_rng(5)
    plans = [random_plan(space, rng, 0.5) for _ in range(6)]
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(4))
    masks = masks_matrix(space, plans)
    with torch.no_grad():
        as_bool = GatedModel(model, space).forward(x, torch.as_tensor(masks))
        as_float = GatedModel(model, space).forward(x, torch.as_tensor(masks, dtype=torch.float32))
        sliced = SlicedModel(model, space)
        for i in range(len(plans)):
            torch.testing.assert_close(as_bool[i], sliced.forward(x, torch.as_tensor(masks[i])),
                                       atol=ATOL, rtol=0)
    torch.testing.assert_close(as_bool, as_float)
