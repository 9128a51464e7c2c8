"""Terminals of evolved pruning functions, from one pass of activations per layer.

For every layer that writes prunable channels, one forward pass over a class-balanced batch
records the channel's output feature maps (average-pooled to at most ``spatial x spatial``
positions and flattened). For channel ``k`` and class ``c`` (one-vs-rest) the terminals are:

====  =====================================================================  ==========
name  meaning                                                                shape
====  =====================================================================  ==========
P     feature maps of the ``n`` class-``c`` samples                          (n, D)
Q     feature maps of the samples of the other classes                       ((C-1)n, D)
N     number of class-``c`` samples ``n``                                    scalar
X     feature maps of all samples                                            (Cn, D)
mX    mean feature map of all samples                                        (D,)
mP    mean feature map of the class-``c`` samples                            (D,)
mQ    mean feature map of the other classes' samples                         (D,)
WI    the channel's incoming filter (the writer layer's weight row)          (F,)
W     all filters of the layer                                               (C_out, F)
====  =====================================================================  ==========

All of them are built with tensor indexing for every channel and class at once (batch
dimensions (channel, class)); nothing loops over samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from moprune.core.layers import LAYER_RULES
from moprune.core.space import PruningSpace
from moprune.criteria.base import channels_first
from moprune.errors import ConfigError


def balanced_indices(labels: torch.Tensor, max_classes: int) -> tuple[torch.Tensor, int, int]:
    """Indices of a class-balanced sample of a labelled batch, ordered class by class.

    The ``max_classes`` classes with most samples (ties: smaller label) are kept, each with
    the first ``n`` of its samples, ``n`` the smallest count among them.

    Returns:
        (indices, number of classes ``C``, samples per class ``n``).

    """
    labels = labels.detach().cpu().long()
    values, counts = torch.unique(labels, return_counts=True)
    if len(values) < 2:
        raise ConfigError(f"evolved pruning functions compare classes, but the batch holds "
                         f"{len(values)} class(es); use a batch with samples of at least two "
                         "classes")
    order = sorted(range(len(values)), key=lambda i: (-int(counts[i]), int(values[i])))
    keep = [int(values[i]) for i in order[:max_classes]]
    n = min(int(counts[order[i]]) for i in range(len(keep)))
    idx = [torch.nonzero(labels == c).flatten()[:n] for c in keep]
    return torch.cat(idx), len(keep), n


def writer_layers(space: PruningSpace) -> list[tuple[str, np.ndarray]]:
    """(layer name, boolean selection of its prunable output channels) of every writer."""
    out = []
    for (name, dim), own in space.owner.items():
        if dim == "out" and LAYER_RULES.get(space.layers[name].kind).filters:
            sel = own >= 0
            if sel.any():
                out.append((name, sel))
    return out


def _weight(model: nn.Module, name: str) -> torch.Tensor:
    """The filters of layer ``name`` as rows, (out, rest), float32, detached."""
    return cast(torch.Tensor, model.get_submodule(name).weight).detach().float().flatten(1)


@dataclass
class LayerActivations:
    """Pooled feature maps and filters of one writer layer's prunable channels.

    Attributes:
        name: Layer name.
        ids: Global channel ids (into the space's flat channel vector), one per channel.
        maps: ``(K, C*n, D)`` feature maps, samples ordered class by class.
        filters: ``(K, F)`` incoming filters of the K channels.
        layer_filters: ``(C_out, F)`` all filters of the layer.
        n_classes: ``C``.
        per_class: ``n``.

    """

    name: str
    ids: np.ndarray
    maps: torch.Tensor
    filters: torch.Tensor
    layer_filters: torch.Tensor
    n_classes: int
    per_class: int

    @property
    def n_channels(self) -> int:
        return len(self.ids)

    def terminals(self, start: int, stop: int, dtype: torch.dtype
                  ) -> dict[str, Callable[[], torch.Tensor]]:
        """Lazy builders of the terminals of channels ``[start, stop)``, batch (K, C)."""
        c, n = self.n_classes, self.per_class
        k = stop - start
        maps = self.maps[start:stop].to(dtype)  # (k, Cn, D)
        d = maps.shape[-1]

        def per_class() -> torch.Tensor:
            return maps.reshape(k, c, n, d)

        def others() -> torch.Tensor:
            idx = torch.arange(c * n, device=maps.device).reshape(c, n)
            rest = torch.stack([torch.cat([idx[:j], idx[j + 1:]]).flatten() for j in range(c)])
            return maps[:, rest]  # (k, C, (C-1)n, D)

        def class_means() -> torch.Tensor:
            return per_class().mean(2)

        def other_means() -> torch.Tensor:
            sums = per_class().sum(2)
            return (sums.sum(1, keepdim=True) - sums) / ((c - 1) * n)

        def spread(t: torch.Tensor) -> torch.Tensor:  # (k, ...) -> (k, C, ...), stride 0
            return t.unsqueeze(1).expand(k, c, *t.shape[1:])

        filters = self.filters[start:stop].to(dtype)
        layer = self.layer_filters.to(dtype)
        return {
            "P": per_class,
            "Q": others,
            "N": lambda: torch.full((k, c), float(n), dtype=dtype, device=maps.device),
            "X": lambda: spread(maps),
            "mX": lambda: spread(maps.mean(1)),
            "mP": class_means,
            "mQ": other_means,
            "WI": lambda: spread(filters),
            "W": lambda: layer.expand(k, c, *layer.shape),
        }


@dataclass
class Activations:
    """What every evolved function needs from one network: its writer layers' activations."""

    layers: list[LayerActivations]
    n_channels: int
    n_classes: int
    per_class: int

    @classmethod
    def capture(cls, model: nn.Module, space: PruningSpace, images: torch.Tensor,
                labels: torch.Tensor, spatial: int = 8, max_classes: int = 10,
                batch_size: int = 256) -> Activations:
        """One forward pass (eval mode, no gradients) over a class-balanced sample.

        Args:
            model: The network (left unchanged, its train/eval mode restored).
            space: Its pruning space.
            images: Normalised images ``(B, C, H, W)`` on the model's device.
            labels: Their labels ``(B,)``.
            spatial: Feature maps are average-pooled to at most ``spatial x spatial``.
            max_classes: Classes used (those with most samples).
            batch_size: Images per forward pass.

        """
        if spatial < 1:
            raise ConfigError(f"spatial must be >= 1, got {spatial}")
        idx, c, n = balanced_indices(labels, max_classes)
        images = images[idx.to(images.device)]
        writers = writer_layers(space)
        rows = {name: torch.from_numpy(np.flatnonzero(sel)) for name, sel in writers}
        store: dict[str, list[torch.Tensor]] = {name: [] for name, _ in writers}

        def hook(name: str):
            def keep(_module, _inputs, output):
                out = channels_first(space, name, output.detach())[:, rows[name].to(output.device)]
                if out.dim() == 4:
                    size = (min(out.shape[2], spatial), min(out.shape[3], spatial))
                    out = F.adaptive_avg_pool2d(out, size)
                out = out.flatten(2) if out.dim() > 2 else out.unsqueeze(-1)
                store[name].append(out.float())
            return keep

        handles = [model.get_submodule(name).register_forward_hook(hook(name))
                   for name, _ in writers]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for s in range(0, len(images), batch_size):
                    model(images[s:s + batch_size])
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        layers = []
        for name, sel in writers:
            weight = _weight(model, name)
            own = space.owner[(name, "out")]
            layers.append(LayerActivations(
                name=name, ids=own[sel], maps=torch.cat(store[name]).transpose(0, 1).contiguous(),
                filters=weight[rows[name].to(weight.device)], layer_filters=weight,
                n_classes=c, per_class=n))
        return cls(layers, space.n_channels, c, n)

    @classmethod
    def weights_only(cls, model: nn.Module, space: PruningSpace) -> Activations:
        """Filters only (no forward pass), for functions that read no activations."""
        layers = []
        for name, sel in writer_layers(space):
            weight = _weight(model, name)
            rows = torch.from_numpy(np.flatnonzero(sel)).to(weight.device)
            layers.append(LayerActivations(
                name=name, ids=space.owner[(name, "out")][sel],
                maps=weight.new_zeros(len(rows), 0, 1), filters=weight[rows],
                layer_filters=weight, n_classes=1, per_class=0))
        return cls(layers, space.n_channels, 1, 0)


__all__ = ["Activations", "LayerActivations", "balanced_indices", "writer_layers"]
