"""Analytic cost model: MACs, FLOPs and parameters of pruning plans, vectorised over a population.

Every supported layer's cost is a formula in its kept input/output channel counts, and each
count is ``fixed + masks @ incidence`` (one matrix product for a whole population). The
formulas follow thop's counting rules (the reference tracer), so for any plan the MACs and
parameters equal thop's on the physically pruned model; a test checks that on every zoo
model. Units: MACs are multiply-accumulates per image (batch 1); FLOPs = 2 x MACs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from moprune.core.layers import LAYER_RULES
from moprune.core.plan import PruningPlan, masks_matrix
from moprune.core.space import PruningSpace
from moprune.errors import ConfigError, UnsupportedLayerError


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
        for term in LAYER_RULES.get(info.kind).cost(module, info):
            cols = [self._col[(info.name, dim)] for dim in term.dims]
            if not cols:
                self._const_macs += term.macs
                self._const_params += term.params
            elif len(cols) == 1:
                self._lin.append((cols[0], term.macs, term.params))
            elif len(cols) == 2:
                self._bil.append((cols[0], cols[1], term.macs, term.params))
            else:
                raise UnsupportedLayerError(
                    f"cost term of layer {info.name!r} ({info.kind}) multiplies {len(cols)} "
                    "channel dimensions; terms are linear or bilinear in the kept channels")

    def kept_counts(self, masks: np.ndarray) -> np.ndarray:
        """Kept size of every layer dimension, ``(n_plans, n_dims)``."""
        return self._fixed + masks.astype(np.float64) @ self._incidence

    def cost_of_masks(self, masks: np.ndarray) -> Cost:
        """Costs of a ``(n_plans, n_channels)`` boolean keep-mask matrix."""
        masks = np.atleast_2d(np.asarray(masks))
        if masks.shape[1] != self.space.n_channels:
            raise ConfigError(f"masks must have {self.space.n_channels} columns (channels of the "
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
