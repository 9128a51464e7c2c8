"""Channel gates on a shared network: a whole population of plans in one forward pass.

For each layer with a prunable *input* dimension, a forward pre-hook multiplies its input by
the candidate's 0/1 gate over those channels. Zeroing an input channel of a consumer is the
same as removing it, and every pruned channel reaches the rest of the network only through
such consumers, so the gated logits equal those of the physically pruned model. The batch is
``n_candidates x n_images`` (candidate-major); shapes never change, which suits GPUs and
compilation. On a CPU every candidate costs a full forward pass: see ``moprune.core.sliced``.

The hooks read the gates of the call in progress from the ``GatedModel``; outside a call
they pass inputs through unchanged. With ``persistent=True`` they stay on the model (one
registration, and ``torch.compile`` traces them into a single graph with no recompilation
between populations); otherwise they are added and removed around every call, leaving a
caller's model as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from moprune.core.layers import LAYER_RULES

if TYPE_CHECKING:
    from moprune.core.space import PruningSpace


class GatedModel:
    """Evaluate many plans on one shared network with channel gates.

    Args:
        model: The full network (not modified, apart from the hooks).
        space: Its pruning space.
        persistent: Keep the (pass-through when idle) hooks on ``model`` for good; for
            a model the caller owns, e.g. an evaluator's private copy.

    """

    def __init__(self, model: nn.Module, space: PruningSpace, persistent: bool = False) -> None:
        self.model = model
        self.space = space
        self.persistent = persistent
        device = next(model.parameters()).device
        n = space.n_channels
        self._index: dict[str, torch.Tensor] = {}
        self._norm_index: dict[str, torch.Tensor] = {}
        for (name, dim), own in space.owner.items():
            if not (own >= 0).any():
                continue
            rule = LAYER_RULES.get(space.layers[name].kind)
            idx = torch.as_tensor(own, dtype=torch.long).clone()
            idx[idx < 0] = n  # the always-open extra gate
            if dim == "in":
                self._index[name] = idx.to(device)
            elif rule.normalizes and space.layers[name].n_in is None:
                self._norm_index[name] = idx.to(device)
        self._ext: torch.Tensor | None = None  # (n_pop, n_channels + 1) while a call runs
        self._handles = self._register_all() if persistent else []

    def _hook(self, name: str) -> Callable[[nn.Module, tuple], tuple | None]:
        idx = self._index[name]
        axis = LAYER_RULES.get(self.space.layers[name].kind).channel_axis

        def pre_hook(module: nn.Module, args: tuple) -> tuple | None:
            ext = self._ext
            if ext is None:
                return None
            x = args[0]
            n_pop = ext.shape[0]
            gate = ext[:, idx].to(x.dtype)  # (n_pop, C_in)
            shape = [n_pop] + [1] * x.dim()
            shape[axis % x.dim() + 1] = gate.shape[1]
            xg = x.view(n_pop, x.shape[0] // n_pop, *x.shape[1:]) * gate.view(shape)
            return (xg.view_as(x), *args[1:])

        return pre_hook

    def _norm_hook(self, name: str) -> Callable[[nn.Module, tuple, torch.Tensor],
                                                torch.Tensor | None]:
        """Statistics over the kept channels only, for layers that normalise over channels."""
        idx = self._norm_index[name]
        rule = LAYER_RULES.get(self.space.layers[name].kind)

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            ext = self._ext
            if ext is None:
                return None
            return rule.gated_forward(module, args[0], ext[:, idx])

        return hook

    def _register_all(self) -> list[torch.utils.hooks.RemovableHandle]:
        handles = [self.model.get_submodule(name).register_forward_pre_hook(self._hook(name))
                   for name in self._index]
        handles += [self.model.get_submodule(name).register_forward_hook(self._norm_hook(name))
                    for name in self._norm_index]
        return handles

    def forward(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Logits of every plan on every image.

        Args:
            x: Images, (B, C, H, W), normalised, on the model's device.
            masks: Keep-masks, (P, n_channels), any dtype (cast to ``x``'s).

        Returns:
            Logits, (P, B, n_classes).

        """
        handles = [] if self.persistent else self._register_all()
        try:
            return self.run(x, masks.to(device=x.device, dtype=x.dtype))
        finally:
            self.reset()
            for h in handles:
                h.remove()

    def run(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` for persistent hooks, without a context manager (traceable).

        ``x`` is (B, ...) images, ``masks`` (P, n_channels) float; returns (P, B, classes).
        The caller resets the gates with :meth:`reset` if the call raises.
        """
        n_pop, b = masks.shape[0], x.shape[0]
        self._ext = torch.cat([masks, masks.new_ones((n_pop, 1))], dim=1)
        out = self.model(tile(x, n_pop))
        self._ext = None
        return out.view(n_pop, b, -1)

    def reset(self) -> None:
        """Clear the gates of an interrupted :meth:`run` (the model is ungated again)."""
        self._ext = None

    def close(self) -> None:
        """Remove persistent hooks (the model runs ungated afterwards)."""
        for h in self._handles:
            h.remove()
        self._handles = []


def tile(x: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` copies of the batch ``x`` stacked along the batch dimension (candidate-major).

    A channels-last batch stays channels-last; one copy either way.
    """
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1:
        nhwc = x.permute(0, 2, 3, 1)
        out = nhwc.unsqueeze(0).expand(n, *nhwc.shape).reshape(n * x.shape[0], *nhwc.shape[1:])
        return out.permute(0, 3, 1, 2)
    return x.unsqueeze(0).expand(n, *x.shape).reshape(n * x.shape[0], *x.shape[1:])
