"""Channel gates on a shared network: a whole population of plans in one forward pass.

For each layer with a prunable *input* dimension, a forward pre-hook multiplies its input by
the candidate's 0/1 gate over those channels. Zeroing an input channel of a consumer is the
same as removing it, and every pruned channel reaches the rest of the network only through
such consumers, so the gated logits equal those of the physically pruned model. The batch is
``n_candidates x n_images`` (candidate-major); shapes never change, which suits GPUs and
compilation. On a CPU every candidate costs a full forward pass: see ``moprune.sliced``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from moprune.space import PruningSpace


class GatedModel:
    """Evaluate many plans on one shared network with channel gates.

    Args:
        model: The full network (not modified, apart from temporary hooks).
        space: Its pruning space.

    """

    def __init__(self, model: nn.Module, space: PruningSpace) -> None:
        self.model = model
        self.space = space
        device = next(model.parameters()).device
        n = space.n_channels
        self._index: dict[str, torch.Tensor] = {}
        for (name, dim), own in space.owner.items():
            if dim == "in" and (own >= 0).any():
                idx = torch.as_tensor(own, dtype=torch.long).clone()
                idx[idx < 0] = n  # the always-open extra gate
                self._index[name] = idx.to(device)

    @contextmanager
    def _gates(self, masks: torch.Tensor) -> Iterator[None]:
        n_pop = masks.shape[0]
        ext = torch.cat([masks, masks.new_ones((n_pop, 1))], dim=1)
        handles = []
        for name, idx in self._index.items():
            gate = ext[:, idx]  # (n_pop, C_in)

            def pre_hook(module: nn.Module, args: tuple, gate: torch.Tensor = gate) -> tuple:
                x = args[0]
                c = gate.shape[1]
                shape = (n_pop, 1, c) + (1,) * (x.dim() - 2)
                xg = x.view(n_pop, x.shape[0] // n_pop, *x.shape[1:]) * gate.view(shape)
                return (xg.view_as(x), *args[1:])

            handles.append(self.model.get_submodule(name).register_forward_pre_hook(pre_hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def forward(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Logits of every plan on every image.

        Args:
            x: Images, (B, C, H, W), normalised, on the model's device.
            masks: Keep-masks, (P, n_channels), any dtype (cast to ``x``'s).

        Returns:
            Logits, (P, B, n_classes).

        """
        n_pop, b = masks.shape[0], x.shape[0]
        masks = masks.to(device=x.device, dtype=x.dtype)
        xb = x.unsqueeze(0).expand(n_pop, *x.shape).reshape(n_pop * b, *x.shape[1:])
        with self._gates(masks):
            out = self.model(xb)
        return out.view(n_pop, b, -1)
