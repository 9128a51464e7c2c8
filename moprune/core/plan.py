"""Pruning plans: the kept channel indices of every group, independent of any genome."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from moprune.core.space import PruningSpace
from moprune.errors import ConfigError


@dataclass(frozen=True)
class PruningPlan:
    """Kept channel indices per prunable group (sorted, never empty).

    Attributes:
        keep: One sorted int64 array per group of the space.

    """

    keep: tuple[np.ndarray, ...]

    @classmethod
    def full(cls, space: PruningSpace) -> PruningPlan:
        """The unpruned plan."""
        return cls(tuple(np.arange(n, dtype=np.int64) for n in space.sizes))

    @classmethod
    def from_mask(cls, space: PruningSpace, mask: np.ndarray) -> PruningPlan:
        """Plan from a flat boolean keep-mask over all channels of the space."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (space.n_channels,):
            raise ConfigError(f"mask must have shape ({space.n_channels},), got {mask.shape}")
        return cls(tuple(np.flatnonzero(mask[space.group_slice(g)]).astype(np.int64)
                         for g in range(space.n_groups)))

    def validate(self, space: PruningSpace) -> PruningPlan:
        """Check the plan against ``space``: one entry per group, valid, non-empty indices."""
        if len(self.keep) != space.n_groups:
            raise ConfigError(f"plan has {len(self.keep)} groups, the space has {space.n_groups}")
        for g, (idx, group) in enumerate(zip(self.keep, space.groups)):
            if len(idx) == 0:
                raise ConfigError(f"plan keeps no channel of group {g} ({group.name}); every "
                                 "group must keep at least one channel")
            if idx.min() < 0 or idx.max() >= group.size or len(np.unique(idx)) != len(idx):
                raise ConfigError(f"plan indices of group {g} ({group.name}) must be distinct "
                                 f"integers in [0, {group.size}); got {idx.tolist()}")
        return self

    def mask(self, space: PruningSpace) -> np.ndarray:
        """Flat boolean keep-mask over all channels of ``space``."""
        out = np.zeros(space.n_channels, dtype=bool)
        for g, idx in enumerate(self.keep):
            out[space.offsets[g] + idx] = True
        return out

    def n_kept(self) -> np.ndarray:
        """Kept channels per group."""
        return np.array([len(k) for k in self.keep], dtype=np.int64)

    def to_dict(self, space: PruningSpace) -> dict:
        """JSON-ready form naming each group."""
        return {g.name: self.keep[i].tolist() for i, g in enumerate(space.groups)}

    @classmethod
    def from_dict(cls, space: PruningSpace, data: dict) -> PruningPlan:
        """Inverse of :meth:`to_dict`; raises if the group names do not match the space."""
        names = [g.name for g in space.groups]
        if sorted(data) != sorted(names):
            raise ConfigError(f"plan groups {sorted(data)} do not match the space's "
                              f"{sorted(names)}")
        return cls(tuple(np.asarray(data[n], dtype=np.int64) for n in names)).validate(space)

    def to_json(self, space: PruningSpace) -> str:
        return json.dumps(self.to_dict(space))


def masks_matrix(space: PruningSpace, plans: list[PruningPlan]) -> np.ndarray:
    """Stack plans into a ``(n_plans, n_channels)`` boolean matrix."""
    out = np.zeros((len(plans), space.n_channels), dtype=bool)
    for i, p in enumerate(plans):
        out[i] = p.mask(space)
    return out
