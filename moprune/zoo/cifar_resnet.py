"""CIFAR ResNets of He et al. (2016) with option-A shortcuts, loading the published weights.

The architecture and state_dict keys follow Yerlan Idelbayev's ``pytorch_resnet_cifar10``
(BSD-2-Clause), whose pretrained weights these models load: ``conv1``, ``bn1``,
``layer{1,2,3}.{i}.conv{1,2}``, ``layer{1,2,3}.{i}.bn{1,2}``, ``linear``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from moprune.core.layers import LAYER_RULES, LayerRule
from moprune.core.space import LayerInfo
from moprune.errors import ConfigError

WEIGHTS_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
# File names carry the first 8 hex digits of their sha256 (torch.hub's check_hash convention).
PUBLISHED_WEIGHTS = {
    20: "resnet20-12fca82f.th",
    32: "resnet32-d509ac18.th",
    44: "resnet44-014dd654.th",
    56: "resnet56-4bfd9763.th",
    110: "resnet110-1d1ed7c2.th",
}


class OptionAShortcut(nn.Module):
    """Parameter-free shortcut: stride-``s`` subsampling plus zero channel padding (option A).

    Input channel ``in_sel[k]`` is written to output channel ``out_pos[k]``; the other output
    channels are zero. Pruning either side only edits these index buffers, so the input and
    output channel dimensions can be pruned independently (see ``OptionAShortcutPruner``, and
    ``OptionARule``, which registers the shortcut as a layer kind of the pruning engine).

    Args:
        in_channels: Channels of the block input.
        out_channels: Channels of the block output.
        stride: Spatial subsampling step.

    """

    in_sel: torch.Tensor
    out_pos: torch.Tensor
    out_slots: torch.Tensor

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        pad = (out_channels - in_channels) // 2
        self.stride = stride
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.register_buffer("in_sel", torch.arange(in_channels), persistent=False)
        self.register_buffer("out_pos", torch.arange(in_channels) + pad, persistent=False)
        # Only its length is used: the output width, as a tensor so a functional call can slice it.
        self.register_buffer("out_slots", torch.zeros(out_channels), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        out = x.new_zeros((x.shape[0], self.out_slots.shape[0], x.shape[2], x.shape[3]))
        return out.index_copy(1, self.out_pos, x.index_select(1, self.in_sel))


def slice_option_a(
    in_sel: torch.Tensor,
    out_pos: torch.Tensor,
    keep_in: torch.Tensor,
    keep_out: torch.Tensor,
    n_in: int,
    n_out: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index buffers of an ``OptionAShortcut`` after keeping ``keep_in`` / ``keep_out`` channels.

    Args:
        in_sel: Current input selection.
        out_pos: Current output positions.
        keep_in: Sorted kept input channel indices.
        keep_out: Sorted kept output channel indices.
        n_in: Current number of input channels.
        n_out: Current number of output channels.

    Returns:
        The new ``(in_sel, out_pos)``, renumbered to the kept channels.

    """
    device = in_sel.device
    new_in = torch.full((n_in,), -1, dtype=torch.long, device=device)
    new_in[keep_in] = torch.arange(len(keep_in), device=device)
    new_out = torch.full((n_out,), -1, dtype=torch.long, device=device)
    new_out[keep_out] = torch.arange(len(keep_out), device=device)
    a, b = new_in[in_sel], new_out[out_pos]
    alive = (a >= 0) & (b >= 0)
    return a[alive], b[alive]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or option-A shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = OptionAShortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: 3 stages of ``n`` basic blocks with 16/32/64 channels.

    Args:
        num_blocks: Blocks per stage; depth = 6n + 2.
        num_classes: Classifier outputs.
        widths: Channels of the three stages.

    """

    def __init__(
        self,
        num_blocks: Sequence[int],
        num_classes: int = 10,
        widths: Sequence[int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        self.in_planes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._make_layer(widths[0], num_blocks[0], 1)
        self.layer2 = self._make_layer(widths[1], num_blocks[1], 2)
        self.layer3 = self._make_layer(widths[2], num_blocks[2], 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(widths[2], num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(self.flatten(self.pool(out)))


def cifar_resnet(depth: int, num_classes: int = 10, pretrained: bool = False) -> CifarResNet:
    """Build a CIFAR ResNet of the given depth, optionally with the published CIFAR-10 weights.

    The weights are fetched with ``torch.hub.load_state_dict_from_url(..., check_hash=True)``;
    offline, copy the ``.th`` files into ``$TORCH_HOME/hub/checkpoints/`` first.

    Args:
        depth: 20, 32, 44, 56 or 110 (any 6n + 2 without weights).
        num_classes: Classifier outputs (10 when pretrained).
        pretrained: Load the published CIFAR-10 weights.

    Returns:
        The model in eval mode.

    """
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ConfigError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110); got {depth}")
    n = (depth - 2) // 6
    model = CifarResNet([n, n, n], num_classes=num_classes)
    if pretrained:
        if depth not in PUBLISHED_WEIGHTS:
            raise ConfigError(
                f"no published weights for ResNet-{depth}; available: "
                f"{sorted(PUBLISHED_WEIGHTS)}. Pass pretrained=False and load a checkpoint."
            )
        if num_classes != 10:
            raise ConfigError(
                f"the published weights are for CIFAR-10 (10 classes), not {num_classes}; "
                "use pretrained=False for other datasets."
            )
        url = WEIGHTS_URL + PUBLISHED_WEIGHTS[depth]
        checkpoint = torch.hub.load_state_dict_from_url(
            url, map_location="cpu", check_hash=True, weights_only=True
        )
        state = checkpoint.get("state_dict", checkpoint)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        model.load_state_dict(state)
    return model.eval()


# ---- the option-A shortcut as a prunable layer kind ------------------------------------


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


class OptionARule(LayerRule):
    """The option-A shortcut: parameter-free, its input and output channels pruned apart."""

    kind = "option_a"
    types = (OptionAShortcut,)
    root = True

    def describe(self) -> str:
        return "OptionAShortcut"

    def dims(self, module: nn.Module, info: LayerInfo) -> tuple[int, int | None]:
        return module.out_channels, module.in_channels  # type: ignore[return-value]

    def slices(self) -> bool:
        return True

    def slice(self, module: nn.Module, k_in: torch.Tensor | None, k_out: torch.Tensor | None
              ) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
        assert isinstance(module, OptionAShortcut) and k_in is not None and k_out is not None
        in_sel, out_pos = slice_option_a(module.in_sel, module.out_pos, k_in, k_out,
                                         module.in_channels, module.out_channels)
        return {"in_sel": in_sel, "out_pos": out_pos,
                "out_slots": module.out_slots[: len(k_out)]}, {}

    def pruner(self) -> tp.pruner.BasePruningFunc:
        return OptionAShortcutPruner()


LAYER_RULES.register(OptionARule())
