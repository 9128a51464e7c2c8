"""Data criteria: first-order Taylor and EvoFC's four SNIP-style mask-gradient criteria.

All run one forward and backward pass of a *copy* of the model (eval mode, so BatchNorm
statistics are neither used from the batch nor updated) on the context's batch of training
images; the caller's model, its gradients and the global random state are left as they were.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from moprune.core.space import PruningSpace
from moprune.criteria.base import (
    CRITERIA,
    Criterion,
    ScoreContext,
    _accumulate,
    _group_distance_sums,
    _weights,
    channels_first,
    writer_rows,
)
from moprune.errors import ConfigError


def _copy_for(model: nn.Module, context: ScoreContext) -> nn.Module:
    assert context.images is not None
    net = copy.deepcopy(model).to(device=context.images.device, dtype=torch.float32).eval()
    for p in net.parameters():
        p.requires_grad_(True)
        p.grad = None
    return net


def _loss(net: nn.Module, context: ScoreContext) -> torch.Tensor:
    images, labels = context.batch()
    return F.cross_entropy(net(images), labels)


def taylor(model: nn.Module, space: PruningSpace, context: ScoreContext) -> np.ndarray:
    """``sum_layers | mean_n sum_hw a * dL/da |`` over the layers writing each channel.

    First-order Taylor estimate of the loss change when the channel's output is zeroed
    (Molchanov et al., ICLR 2017), from the writer layers' outputs (before BatchNorm).
    """
    net = _copy_for(model, context)
    writers = list(_weights(net, space))
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_module, _inputs, output):
            output.retain_grad()
            outputs[name] = output
        return hook

    handles = [net.get_submodule(n).register_forward_hook(keep(n)) for n in writers]
    try:
        _loss(net, context).backward()
    finally:
        for h in handles:
            h.remove()
    n = context.batch()[0].shape[0]
    per_channel = {}
    for name, a in outputs.items():
        assert a.grad is not None
        prod = channels_first(space, name, (a * a.grad).detach())
        summed = prod.sum(dim=tuple(range(2, prod.dim()))) if prod.dim() > 2 else prod
        per_channel[name] = (summed.sum(0) / n).abs().unsqueeze(1)
    rows = writer_rows(space, per_channel)
    return _accumulate(space, [(ids, r[:, 0]) for ids, r in rows])


def mask_gradients(model: nn.Module, space: PruningSpace, context: ScoreContext
                   ) -> dict[str, torch.Tensor]:
    """``G = W * dL/dW`` of every writer layer (the SNIP mask gradient).

    The gradient with respect to a multiplicative mask on the weights, at 1, computed on a
    copy of the model, re-initialised first when ``context.reinit``.
    """
    net = _copy_for(model, context)
    if context.reinit:
        gen = torch.Generator(device="cpu").manual_seed(context.seed)
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, nn.Conv2d):  # EvoFC: the conv weights only
                    w = torch.empty(m.weight.shape)
                    nn.init.xavier_normal_(w, generator=gen)
                    m.weight.copy_(w)
    _loss(net, context).backward()
    out = {}
    for name, w in _weights(net, space).items():
        if w.grad is None:
            raise ConfigError(f"layer {name!r} got no gradient; is it used in the forward pass?")
        out[name] = (w * w.grad).detach()
    return out


def _grad_rows(model, space, context):
    return writer_rows(space, mask_gradients(model, space, context))


def grad_l1(model: nn.Module, space: PruningSpace, context: ScoreContext) -> np.ndarray:
    """``sum |G_c|`` over the channel's filters (EvoFC)."""
    return _accumulate(space, [(ids, np.abs(r).sum(1)) for ids, r in
                               _grad_rows(model, space, context)])


def grad_l2(model: nn.Module, space: PruningSpace, context: ScoreContext) -> np.ndarray:
    """``||G_c||_2 / ||G_layer||_2`` per writer layer, summed over layers (EvoFC)."""
    parts = []
    for ids, r in _grad_rows(model, space, context):
        norm = float(np.sqrt((r * r).sum()))
        parts.append((ids, np.sqrt((r * r).sum(1)) / norm if norm > 0 else np.zeros(len(r))))
    return _accumulate(space, parts)


def grad_es(model: nn.Module, space: PruningSpace, context: ScoreContext) -> np.ndarray:
    """Empirical sensitivity: ``max |G_c| / sum |G_layer|`` per layer, summed (EvoFC)."""
    parts = []
    for ids, r in _grad_rows(model, space, context):
        total = float(np.abs(r).sum())
        parts.append((ids, np.abs(r).max(1) / total if total > 0 else np.zeros(len(r))))
    return _accumulate(space, parts)


def grad_gm(model: nn.Module, space: PruningSpace, context: ScoreContext) -> np.ndarray:
    """``sum_j ||G_c - G_j||_2``: FPGM on the mask gradients (EvoFC)."""
    return _group_distance_sums(space, _grad_rows(model, space, context))


CRITERIA.register("taylor", Criterion(
    "taylor", taylor, "sum over writer layers of |mean_n sum_hw a * dL/da| (Molchanov et al., "
    "ICLR 2017); one batch of training images", needs_data=True))
CRITERIA.register("grad_l1", Criterion(
    "grad_l1", grad_l1, "sum |W * dL/dW| over the filter, SNIP mask gradient (EvoFC)",
    needs_data=True))
CRITERIA.register("grad_l2", Criterion(
    "grad_l2", grad_l2, "||G_c||_2 / ||G_layer||_2 with G = W * dL/dW (EvoFC)",
    needs_data=True))
CRITERIA.register("grad_es", Criterion(
    "grad_es", grad_es, "max |G_c| / sum |G_layer|, empirical sensitivity (EvoFC)",
    needs_data=True))
CRITERIA.register("grad_gm", Criterion(
    "grad_gm", grad_gm, "sum_j ||G_c - G_j||_2, geometric median of the mask gradients "
    "(EvoFC)", needs_data=True))

__all__ = ["grad_es", "grad_gm", "grad_l1", "grad_l2", "mask_gradients", "taylor"]
