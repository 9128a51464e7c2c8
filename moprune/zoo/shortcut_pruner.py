"""Torch-Pruning support for the option-A shortcut of the CIFAR ResNets."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch_pruning as tp

from moprune.zoo.cifar_resnet import OptionAShortcut, slice_option_a


class OptionAShortcutPruner(tp.pruner.BasePruningFunc):
    """Prunes the index buffers of ``OptionAShortcut``; input and output are independent."""

    def _apply(self, layer: OptionAShortcut, drop_in: Sequence[int],
               drop_out: Sequence[int]) -> None:
        dev = layer.in_sel.device
        keep_in = torch.tensor(
            sorted(set(range(layer.in_channels)) - set(drop_in)), dtype=torch.long, device=dev
        )
        keep_out = torch.tensor(
            sorted(set(range(layer.out_channels)) - set(drop_out)), dtype=torch.long, device=dev
        )
        layer.in_sel, layer.out_pos = slice_option_a(
            layer.in_sel, layer.out_pos, keep_in, keep_out, layer.in_channels, layer.out_channels
        )
        layer.in_channels, layer.out_channels = len(keep_in), len(keep_out)
        layer.out_slots = layer.out_slots[: len(keep_out)].clone()

    def prune_out_channels(self, layer: OptionAShortcut, idxs: Sequence[int]) -> OptionAShortcut:
        self._apply(layer, (), idxs)
        return layer

    def prune_in_channels(self, layer: OptionAShortcut, idxs: Sequence[int]) -> OptionAShortcut:
        self._apply(layer, idxs, ())
        return layer

    def get_out_channels(self, layer: OptionAShortcut) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: OptionAShortcut) -> int:
        return layer.in_channels


def customized_pruners() -> dict[type, tp.pruner.BasePruningFunc]:
    """The Torch-Pruning pruners for moprune's own layer types (a fresh dict each call)."""
    return {OptionAShortcut: OptionAShortcutPruner()}
