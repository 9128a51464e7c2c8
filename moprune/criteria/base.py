"""The criteria registry, the context criteria score in, and shared helpers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from moprune.core.layers import LAYER_RULES
from moprune.core.registry import Registry
from moprune.core.space import PruningSpace
from moprune.data.datasets import Normalization, Split
from moprune.errors import ConfigError

DEFAULT_BATCH = 128  # EvoFC: one batch of 128 training images


@dataclass(frozen=True)
class ScoreContext:
    """What data-dependent and random criteria need besides the model.

    Attributes:
        images: One batch of *normalised* float images ``(N, C, H, W)`` from the training
            part (never the hold-out or test split), or None for weight-only criteria.
        labels: Their labels ``(N,)``.
        seed: Seed of ``random`` and of the re-initialisation.
        reinit: Score the ``grad_*`` criteria on a copy with re-initialised (Xavier normal)
            conv and linear weights (EvoFC's setting for randomly initialised networks).

    """

    images: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    seed: int = 0
    reinit: bool = False

    @classmethod
    def from_split(cls, split: Split, normalization: Normalization, seed: int,
                   n_images: int = DEFAULT_BATCH, reinit: bool = False,
                   device: str | torch.device = "cpu") -> ScoreContext:
        """A seeded random batch of ``n_images`` from ``split`` (use the training part)."""
        if len(split) == 0:
            raise ConfigError("data criteria need training images, but the split is empty; "
                             "load the training data (load_train=True)")
        batch = split.subset(n_images, generator=torch.Generator().manual_seed(seed))
        return cls(images=normalization.apply(batch.images.to(device)),
                   labels=batch.labels.to(device), seed=seed, reinit=reinit)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and labels; raises if the context holds none."""
        if self.images is None or self.labels is None:
            raise ConfigError("this criterion ranks channels with a batch of training images, "
                              "but its context has none; build it with ScoreContext.from_split")
        return self.images, self.labels


ScoreFn = Callable[[nn.Module, PruningSpace, ScoreContext], np.ndarray]


@dataclass(frozen=True)
class Criterion:
    """A registered importance criterion.

    Attributes:
        name: Registry name.
        fn: ``(model, space, context) -> (n_channels,)`` float64 scores.
        description: Formula and source, shown in docs and ``--help``.
        needs_data: True when the context must hold a batch of training images.
        n_images: Training images it wants in that batch.

    """

    name: str
    fn: ScoreFn
    description: str
    needs_data: bool = False
    n_images: int = DEFAULT_BATCH

    def score(self, model: nn.Module, space: PruningSpace,
              context: ScoreContext | None = None) -> np.ndarray:
        """Scores of every channel of ``space`` (higher = more important)."""
        context = context or ScoreContext()
        if self.needs_data and (context.images is None or context.labels is None):
            raise ConfigError(
                f"criterion {self.name!r} needs a batch of training images: pass "
                f"ScoreContext.from_split(data.train, data.normalization, seed) (and load the "
                f"training data), or choose a weight criterion such as 'l1'")
        scores = np.asarray(self.fn(model, space, context), dtype=np.float64)
        if scores.shape != (space.n_channels,):
            raise ConfigError(f"criterion {self.name!r} returned shape {scores.shape}, expected "
                             f"({space.n_channels},)")
        return scores


GP_PREFIX = "gp:"


class CriterionRegistry(Registry[Criterion]):
    """The criteria registry; ``PREFIX<file>`` names resolve through a prefix resolver.

    ``gp:<file>`` names a function saved by ``moprune evolve`` (the resolver is registered by
    :mod:`moprune.criteria.evolved`).
    """

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self._prefixes: dict[str, Callable[[str], Criterion]] = {}

    def add_prefix(self, prefix: str, resolve: Callable[[str], Criterion]) -> None:
        """Resolve names starting with ``prefix`` (e.g. ``gp:``) with ``resolve(name)``."""
        if prefix in self._prefixes:
            raise ConfigError(f"criterion prefix {prefix!r} is already registered")
        self._prefixes[prefix] = resolve

    def _resolver(self, name: str) -> Callable[[str], Criterion] | None:
        return next((r for p, r in self._prefixes.items() if name.startswith(p)), None)

    def get(self, name: str) -> Criterion:
        resolve = self._resolver(name)
        if resolve is not None:
            return resolve(name)
        return super().get(name)

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and self._resolver(name) is not None:
            try:
                self.get(name)
            except (OSError, ValueError):
                return False
            return True
        return super().__contains__(name)


CRITERIA: CriterionRegistry = CriterionRegistry("criterion")


def criterion_name(name: str) -> str:
    """``name`` checked against the registry; a ``gp:`` file path made absolute.

    Raises:
        UnknownNameError: Not a registered criterion (the message lists them).
        FileNotFoundError, ValueError: A ``gp:`` file that is missing or unreadable.

    """
    if name.startswith(GP_PREFIX):
        name = GP_PREFIX + str(Path(name[len(GP_PREFIX):]).expanduser().resolve())
    CRITERIA.get(name)
    return name


# --------------------------------------------------------------------------- helpers


def writer_rows(space: PruningSpace, tensors: dict[str, torch.Tensor]
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(global channel ids, rows)`` per layer that writes prunable channels.

    ``tensors[name]`` is indexed like the layer's weight (output channels first); ``rows``
    holds its flattened rows (float64) for the layer's prunable output channels.
    """
    out = []
    for (name, dim), own in space.owner.items():
        if dim != "out" or not LAYER_RULES.get(space.layers[name].kind).filters:
            continue
        sel = own >= 0
        if not sel.any() or name not in tensors:
            continue
        rows = tensors[name].detach().double().flatten(1).cpu().numpy()
        out.append((own[sel], rows[sel]))
    return out


def channels_first(space: PruningSpace, name: str, t: torch.Tensor) -> torch.Tensor:
    """Layer ``name``'s output with its channel axis moved to dimension 1.

    Layers over the last axis (``LayerRule.channel_axis == -1``: a Linear on NHWC maps in
    ConvNeXt's blocks) put their channels last.
    """
    axis = LAYER_RULES.get(space.layers[name].kind).channel_axis
    return t.movedim(axis, 1) if t.dim() > 2 and axis % t.dim() != 1 else t


def _weights(model: nn.Module, space: PruningSpace) -> dict[str, torch.Tensor]:
    return {name: cast(torch.Tensor, model.get_submodule(name).weight)
            for (name, dim) in space.owner
            if dim == "out" and LAYER_RULES.get(space.layers[name].kind).filters}


def _accumulate(space: PruningSpace, per_layer: list[tuple[np.ndarray, np.ndarray]]
                ) -> np.ndarray:
    total = np.zeros(space.n_channels, dtype=np.float64)
    for ids, values in per_layer:
        np.add.at(total, ids, values)
    return total


def _group_distance_sums(space: PruningSpace, rows: list[tuple[np.ndarray, np.ndarray]]
                         ) -> np.ndarray:
    """``sum_j ||v_c - v_j||_2`` within each group, ``v_c`` = the unit's rows concatenated.

    A unit of tied channels (grouped convolutions) contributes the rows of all its channels.
    """
    parts: dict[int, list[np.ndarray]] = {}
    for ids, block in rows:
        groups = np.searchsorted(space.offsets, ids, side="right") - 1
        order = np.argsort(ids, kind="stable")
        # occurrence of each id among the layer's rows: the k-th channel of a tied unit
        occurrence = np.empty(len(ids), dtype=np.int64)
        sorted_ids = ids[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sorted_ids)) + 1]
        counts = np.diff(np.r_[starts, len(ids)])
        occurrence[order] = np.arange(len(ids)) - np.repeat(starts, counts)
        for g in np.unique(groups):
            size = space.sizes[g]
            for k in np.unique(occurrence[groups == g]):
                full = np.zeros((size, block.shape[1]))
                pick = (groups == g) & (occurrence == k)
                full[ids[pick] - space.offsets[g]] = block[pick]
                parts.setdefault(int(g), []).append(full)
    out = np.zeros(space.n_channels, dtype=np.float64)
    for g, blocks in parts.items():
        v = np.concatenate(blocks, axis=1)
        sq = (v * v).sum(1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * v @ v.T, 0.0)
        out[space.group_slice(g)] = np.sqrt(d2).sum(1)
    return out


def rank_channels(space: PruningSpace, scores: np.ndarray) -> list[np.ndarray]:
    """Per group, channel indices from most to least important (stable: ties by index)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (space.n_channels,):
        raise ConfigError(f"scores must have shape ({space.n_channels},), got {scores.shape}")
    if not np.isfinite(scores).all():
        raise ConfigError("criterion scores contain NaN or infinity")
    return [np.argsort(-scores[space.group_slice(g)], kind="stable").astype(np.int64)
            for g in range(space.n_groups)]




__all__ = ["CRITERIA", "DEFAULT_BATCH", "GP_PREFIX", "Criterion", "CriterionRegistry",
           "ScoreContext", "ScoreFn", "channels_first", "criterion_name", "rank_channels",
           "writer_rows"]
