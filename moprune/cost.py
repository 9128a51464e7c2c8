"""Analytic cost model: MACs, FLOPs and parameters of pruning plans, vectorised over a population.

Every supported layer's cost is a formula in its kept input/output channel counts, and each
count is ``fixed + masks @ incidence`` (one matrix product for a whole population). The
formulas follow thop's counting rules (the reference tracer), so for any plan the MACs and
parameters equal thop's on the physically pruned model; a test checks that on every zoo
model. Units: MACs are multiply-accumulates per image (batch 1); FLOPs = 2 x MACs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from torch import nn

from moprune.plan import PruningPlan, masks_matrix
from moprune.space import (
    ADAPTIVE_AVGPOOL,
    AVGPOOL,
    BATCHNORM,
    CONV,
    DEPTHWISE,
    FREE,
    LINEAR,
    OPTION_A,
    PruningSpace,
    UnsupportedLayerError,
    spatial,
)


@dataclass(frozen=True)
class Cost:
    """Costs of a population of plans (per image).

    Attributes:
        macs: Multiply-accumulates, shape (n,).
        params: Parameters, shape (n,).

    """

    macs: np.ndarray
    params: np.ndarray

    @property
    def flops(self) -> np.ndarray:
        """FLOPs = 2 x MACs."""
        return 2 * self.macs


def _avgpool_windows(module: nn.AvgPool2d, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> int:
    """Input elements summed per channel by AvgPool2d (thop's count_avgpool)."""
    k = module.kernel_size if isinstance(module.kernel_size, tuple) else (module.kernel_size,) * 2
    s = module.stride if isinstance(module.stride, tuple) else (module.stride,) * 2
    p = module.padding if isinstance(module.padding, tuple) else (module.padding,) * 2
    windows = 1
    for size, out, kk, ss, pp in zip(in_hw, out_hw, k, s, p):
        lower, upper = (-pp, size + pp) if module.count_include_pad else (0, size)
        windows *= sum(max(min(i * ss - pp + kk, upper) - max(i * ss - pp, lower), 0)
                       for i in range(out))
    return windows


def _adaptive_windows(in_hw: tuple[int, ...], out_hw: tuple[int, ...]) -> int:
    """Input elements summed per channel by AdaptiveAvgPool (thop's count_adap_avgpool)."""
    total = 1
    for i, o in zip(in_hw, out_hw):
        total *= o if i == o else sum(-(-(j + 1) * i // o) - j * i // o for j in range(o))
    return total


class CostModel:
    """MACs and parameters of any plan of a pruning space, from per-layer formulas.

    Args:
        space: The pruning space.
        model: The model the space was built from (for kernel sizes, biases, affine flags).

    Raises:
        UnsupportedLayerError: A layer has no formula (the space refuses those already).

    """

    def __init__(self, space: PruningSpace, model: nn.Module) -> None:
        self.space = space
        cols: list[tuple[str, str]] = sorted(space.owner)
        self._col = {key: i for i, key in enumerate(cols)}
        n = space.n_channels
        self._incidence = np.zeros((n, len(cols)), dtype=np.float64)
        self._fixed = np.zeros(len(cols), dtype=np.float64)
        for key, own in space.owner.items():
            c = self._col[key]
            self._fixed[c] = float((own < 0).sum())
            np.add.at(self._incidence[:, c], own[own >= 0], 1.0)
        # Terms: macs/params = const + sum coef * K[a] (* K[b])
        self._lin: list[tuple[int, float, float]] = []  # (col, macs coef, params coef)
        self._bil: list[tuple[int, int, float, float]] = []  # (col_a, col_b, macs, params)
        self._const_params = 0.0
        self._const_macs = 0.0
        covered: set[nn.Parameter] = set()
        for info in space.layers.values():
            module = model.get_submodule(info.name)
            covered.update(module.parameters(recurse=False))
            self._add_layer(info, module)
        stray = [name for name, p in model.named_parameters() if p not in covered]
        if stray:
            raise UnsupportedLayerError(
                f"parameters {stray[:5]} are not owned by a supported layer the forward pass "
                "runs; the cost model cannot count them."
            )
        self.base = self.cost_of_masks(np.ones((1, n), dtype=bool))

    def _add_layer(self, info, module: nn.Module) -> None:
        kind = info.kind
        if kind in (FREE, OPTION_A):
            return
        o = self._col[(info.name, "out")]
        if kind == CONV:
            i = self._col[(info.name, "in")]
            kk = math.prod(module.kernel_size)
            macs = sum(spatial(s) for s in info.out_shapes) * kk
            self._bil.append((i, o, float(macs), float(kk)))
            if module.bias is not None:
                self._lin.append((o, 0.0, 1.0))
        elif kind == DEPTHWISE:
            kk = math.prod(module.kernel_size)
            macs = sum(spatial(s) for s in info.out_shapes) * kk
            self._lin.append((o, float(macs), float(kk + (module.bias is not None))))
        elif kind == LINEAR:
            i = self._col[(info.name, "in")]
            rows = sum(math.prod(s[:-1]) for s in info.out_shapes)
            self._bil.append((i, o, float(rows), 1.0))
            if module.bias is not None:
                self._lin.append((o, 0.0, 1.0))
        elif kind == BATCHNORM:
            per = 4 if module.affine else 2
            macs = sum(per * spatial(s) for s in info.in_shapes)
            self._lin.append((o, float(macs), 2.0 if module.affine else 0.0))
        elif kind == AVGPOOL:
            macs = sum(_avgpool_windows(module, a[-2:], b[-2:]) + spatial(b)
                       for a, b in zip(info.in_shapes, info.out_shapes))
            self._lin.append((o, float(macs), 0.0))
        elif kind == ADAPTIVE_AVGPOOL:
            macs = sum(_adaptive_windows(a[2:], b[2:]) + spatial(b)
                       for a, b in zip(info.in_shapes, info.out_shapes))
            self._lin.append((o, float(macs), 0.0))
        else:  # pragma: no cover - the space only produces the kinds above
            raise UnsupportedLayerError(f"no cost formula for layer kind {kind!r}")

    def kept_counts(self, masks: np.ndarray) -> np.ndarray:
        """Kept size of every layer dimension, ``(n_plans, n_dims)``."""
        return self._fixed + masks.astype(np.float64) @ self._incidence

    def cost_of_masks(self, masks: np.ndarray) -> Cost:
        """Costs of a ``(n_plans, n_channels)`` boolean keep-mask matrix."""
        masks = np.atleast_2d(np.asarray(masks))
        if masks.shape[1] != self.space.n_channels:
            raise ValueError(f"masks must have {self.space.n_channels} columns (channels of the "
                             f"space); got shape {masks.shape}")
        k = self.kept_counts(masks)  # (n_plans, n_dims)
        macs = np.full(k.shape[0], self._const_macs)
        params = np.full(k.shape[0], self._const_params)
        if self._lin:
            cols, cm, cp = (np.array(v) for v in zip(*self._lin))
            macs += k[:, cols.astype(int)] @ cm
            params += k[:, cols.astype(int)] @ cp
        if self._bil:
            a, b, cm, cp = (np.array(v) for v in zip(*self._bil))
            prod = k[:, a.astype(int)] * k[:, b.astype(int)]
            macs += prod @ cm
            params += prod @ cp
        return Cost(macs=np.rint(macs).astype(np.int64), params=np.rint(params).astype(np.int64))

    def cost(self, plans: list[PruningPlan]) -> Cost:
        """Costs of a list of plans."""
        return self.cost_of_masks(masks_matrix(self.space, plans))

    def share_of_macs(self) -> np.ndarray:
        """Per group: the share of the network's MACs in layers the group touches."""
        total = float(self.base.macs[0])
        shares = np.zeros(self.space.n_groups)
        ones = np.ones((1, self.space.n_channels), dtype=bool)
        for g in range(self.space.n_groups):
            masks = ones.copy()
            masks[0, self.space.group_slice(g)] = False
            # Costs linear in the group's count fall to zero; what is left is the rest.
            shares[g] = 1.0 - float(self.cost_of_masks(masks).macs[0]) / total
        return shares
