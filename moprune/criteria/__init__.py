"""Channel importance criteria behind one strict registry (higher score = more important).

Every criterion maps ``(model, space, context)`` to one float64 score per channel of the
space's flat channel vector; :func:`rank_channels` turns scores into a ranking per group.
Weight criteria (``l1``, ``l2``, ``fpgm``, ``bn_scale``) read only the weights; ``random``
reads the context's seed; data criteria (``taylor`` and the four SNIP-style ``grad_*``
criteria of EvoFC) need one batch of training images in the :class:`ScoreContext`.
No criterion changes the model it scores.

=============  =======================================================================
name           score of channel ``c`` (sums run over the layers that write the group)
=============  =======================================================================
l1             ``sum |W_c|`` (Li et al., ICLR 2017)
l2             ``sqrt(sum W_c^2)`` (He et al., IJCAI 2018)
fpgm           ``sum_j ||W_c - W_j||_2`` over the group's channels ``j``: filters near the
               geometric median are redundant (He et al., CVPR 2019)
bn_scale       ``sum |gamma_c|`` of the BatchNorms on the channel (Liu et al., ICCV 2017)
taylor         ``sum | mean_n sum_hw a * dL/da |`` of the channel's output activations
               (Molchanov et al., ICLR 2017)
grad_l1        ``sum |G_c|`` with ``G = W * dL/dW`` (SNIP mask gradient, Lee et al., ICLR
               2019; EvoFC, Neurocomputing 2024)
grad_l2        ``||G_c||_2 / ||G_layer||_2`` (EvoFC)
grad_es        ``max |G_c| / sum |G_layer|``, empirical sensitivity (EvoFC)
grad_gm        ``sum_j ||G_c - G_j||_2``, geometric median of the gradients (EvoFC)
random         uniform random scores from ``context.seed``
snr, fisher,   class-separation metrics of the channel's feature maps, one class against
symmetric_     the rest, summed over classes (see :mod:`moprune.gp.library`)
divergence,
t_statistic
gp_published   the best evolved function of Liu et al. (GECCO 2022)
gp:<file>      a function evolved with ``moprune evolve`` (a ``*.gp.json`` file)
=============  =======================================================================

The ``grad_*`` criteria are computed on a copy of the network; with ``context.reinit`` its
conv weights are first re-initialised (Xavier normal, seeded from
``context.seed``), as EvoFC does for randomly initialised networks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from moprune.registry import Registry
from moprune.space import CONV, DEPTHWISE, LINEAR, PruningSpace
from moprune.zoo.data import Normalization, Split

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
            raise ValueError("data criteria need training images, but the split is empty; "
                             "load the training data (load_train=True)")
        batch = split.subset(n_images, generator=torch.Generator().manual_seed(seed))
        return cls(images=normalization.apply(batch.images.to(device)),
                   labels=batch.labels.to(device), seed=seed, reinit=reinit)


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
            raise ValueError(
                f"criterion {self.name!r} needs a batch of training images: pass "
                f"ScoreContext.from_split(data.train, data.normalization, seed) (and load the "
                f"training data), or choose a weight criterion such as 'l1'")
        scores = np.asarray(self.fn(model, space, context), dtype=np.float64)
        if scores.shape != (space.n_channels,):
            raise ValueError(f"criterion {self.name!r} returned shape {scores.shape}, expected "
                             f"({space.n_channels},)")
        return scores


GP_PREFIX = "gp:"


class CriterionRegistry(Registry[Criterion]):
    """The criteria registry; ``gp:<file>`` names a function saved by ``moprune evolve``."""

    def get(self, name: str) -> Criterion:
        if name.startswith(GP_PREFIX):
            from moprune.criteria.evolved import file_criterion

            return file_criterion(name)
        return super().get(name)

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and name.startswith(GP_PREFIX):
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
        from pathlib import Path

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
        if dim != "out" or space.layers[name].kind not in (CONV, DEPTHWISE, LINEAR):
            continue
        sel = own >= 0
        if not sel.any() or name not in tensors:
            continue
        rows = tensors[name].detach().double().flatten(1).cpu().numpy()
        out.append((own[sel], rows[sel]))
    return out


def _weights(model: nn.Module, space: PruningSpace) -> dict[str, torch.Tensor]:
    return {name: model.get_submodule(name).weight for (name, dim) in space.owner
            if dim == "out" and space.layers[name].kind in (CONV, DEPTHWISE, LINEAR)}


def _accumulate(space: PruningSpace, per_layer: list[tuple[np.ndarray, np.ndarray]]
                ) -> np.ndarray:
    total = np.zeros(space.n_channels, dtype=np.float64)
    for ids, values in per_layer:
        np.add.at(total, ids, values)
    return total


def _group_distance_sums(space: PruningSpace, rows: list[tuple[np.ndarray, np.ndarray]]
                         ) -> np.ndarray:
    """``sum_j ||v_c - v_j||_2`` within each group, ``v_c`` = the channel's rows concatenated."""
    parts: dict[int, list[np.ndarray]] = {}
    for ids, block in rows:
        groups = np.searchsorted(space.offsets, ids, side="right") - 1
        for g in np.unique(groups):
            size = space.sizes[g]
            full = np.zeros((size, block.shape[1]))
            pick = groups == g
            full[ids[pick] - space.offsets[g]] = block[pick]
            parts.setdefault(int(g), []).append(full)
    out = np.zeros(space.n_channels, dtype=np.float64)
    for g, blocks in parts.items():
        v = np.concatenate(blocks, axis=1)
        sq = (v * v).sum(1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * v @ v.T, 0.0)
        out[space.group_slice(g)] = np.sqrt(d2).sum(1)
    return out


# --------------------------------------------------------------------------- weight criteria


def _filter_norm(model: nn.Module, space: PruningSpace, p: int) -> np.ndarray:
    """Per channel: (sum over the group's writer layers of ||filter||_p^p)^(1/p)."""
    with torch.no_grad():
        rows = writer_rows(space, _weights(model, space))
    total = _accumulate(space, [(ids, (np.abs(r) ** p).sum(1)) for ids, r in rows])
    return total ** (1.0 / p)


def l1_norm(model: nn.Module, space: PruningSpace,
            context: ScoreContext | None = None) -> np.ndarray:
    """L1 norm of each channel's filters (Li et al., ICLR 2017)."""
    return _filter_norm(model, space, 1)


def l2_norm(model: nn.Module, space: PruningSpace,
            context: ScoreContext | None = None) -> np.ndarray:
    """L2 norm of each channel's filters (He et al., 2018, soft filter pruning)."""
    return _filter_norm(model, space, 2)


def fpgm(model: nn.Module, space: PruningSpace,
         context: ScoreContext | None = None) -> np.ndarray:
    """Sum of distances to the group's other filters (He et al., CVPR 2019).

    A filter close to the geometric median of its layer is replaceable by the others, so it
    scores low.
    """
    with torch.no_grad():
        return _group_distance_sums(space, writer_rows(space, _weights(model, space)))


def bn_scale(model: nn.Module, space: PruningSpace,
             context: ScoreContext | None = None) -> np.ndarray:
    """Sum of ``|gamma|`` of the BatchNorms on each channel (network slimming).

    Channels of groups without a BatchNorm score their filters' L1 norm instead.
    """
    total = np.zeros(space.n_channels, dtype=np.float64)
    covered = np.zeros(space.n_channels, dtype=bool)
    for (name, dim), own in space.owner.items():
        module = model.get_submodule(name)
        if dim != "out" or not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        if module.weight is None:
            continue
        sel = own >= 0
        gamma = module.weight.detach().double().abs().cpu().numpy()
        np.add.at(total, own[sel], gamma[sel])
        covered[own[sel]] = True
    l1 = None
    for g in range(space.n_groups):
        sl = space.group_slice(g)
        if not covered[sl].any():
            l1 = l1_norm(model, space) if l1 is None else l1
            total[sl] = l1[sl]
    return total


def random_scores(model: nn.Module, space: PruningSpace,
                  context: ScoreContext | None = None) -> np.ndarray:
    """Uniform random scores from ``context.seed`` (the baseline every criterion must beat)."""
    seed = 0 if context is None else context.seed
    return np.random.default_rng(seed).random(space.n_channels)


CRITERIA.register("l1", Criterion("l1", l1_norm, "sum_k |W[c,k]| over the group's filters "
                                   "(Li et al., ICLR 2017)"))
CRITERIA.register("l2", Criterion("l2", l2_norm, "sqrt(sum_k W[c,k]^2) over the group's filters "
                                   "(He et al., IJCAI 2018)"))
CRITERIA.register("fpgm", Criterion("fpgm", fpgm, "sum_j ||W_c - W_j||_2 over the group's "
                                    "filters: near the geometric median = redundant (He et al., "
                                    "CVPR 2019)"))
CRITERIA.register("bn_scale", Criterion("bn_scale", bn_scale, "sum |gamma_c| of the channel's "
                                        "BatchNorms (Liu et al., ICCV 2017); L1 without BN"))
CRITERIA.register("random", Criterion("random", random_scores, "uniform random scores from the "
                                      "context's seed"))

from moprune.criteria import evolved as _evolved  # noqa: E402,F401  (registers GP criteria)
from moprune.criteria import gradients as _gradients  # noqa: E402  (registers the data criteria)

taylor = _gradients.taylor


def rank_channels(space: PruningSpace, scores: np.ndarray) -> list[np.ndarray]:
    """Per group, channel indices from most to least important (stable: ties by index)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (space.n_channels,):
        raise ValueError(f"scores must have shape ({space.n_channels},), got {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("criterion scores contain NaN or infinity")
    return [np.argsort(-scores[space.group_slice(g)], kind="stable").astype(np.int64)
            for g in range(space.n_groups)]


__all__ = ["CRITERIA", "GP_PREFIX", "Criterion", "CriterionRegistry", "ScoreContext", "bn_scale",
           "criterion_name", "fpgm", "l1_norm", "l2_norm", "random_scores", "rank_channels",
           "taylor", "writer_rows"]
