r"""A problem file that extends moprune: a new layer kind, a new objective, a new algorithm.

Nothing in the library is edited. Importing this file (``moprune search`` does it before it
reads ``--algorithm``) registers:

- a **layer rule** for ``ChannelScale``, a learnable per-channel gain that moprune does not
  know: its channel dimension, its cost, how its weight is sliced to kept channels, its
  Torch-Pruning pruner and its thop counter. Gates, slices, surgery and the cost model then
  handle it exactly like BatchNorm;
- an **objective**, ``kept_channels``: the fraction of prunable channels a candidate keeps
  (searched, stored in every candidate record, plotted and picked like MACs);
- a **pymoo algorithm**, ``nsga2_wide``: NSGA-II whose first masks keep 20-100 % of the
  channels instead of 60-100 %.

Run it (CPU, seconds; the network is trained on the embedded digits first):

    moprune finetune docs/examples/plugin_problem.py --epochs 20 --lr 0.05 --out scaled.pt
    moprune search docs/examples/plugin_problem.py --weights scaled.pt \
        --algorithm nsga2_wide --pop-size 12 --generations 5 --out runs/plugin
    moprune pick runs/plugin --max kept_channels=0.6
    moprune export runs/plugin --id knee --out runs/plugin/knee.pt

``tests/docs/test_plugin_example.py`` runs these steps (and the fifth method,
``--algorithm random``) on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch_pruning as tp
from pymoo.algorithms.moo.nsga2 import NSGA2
from torch import nn

from moprune.algorithms import ALGORITHMS
from moprune.core.layers import LAYER_RULES, OUT, CostTerm, LayerRule, spatial
from moprune.core.objectives import Metrics, Objective, register
from moprune.core.space import LayerInfo, SpacePolicy
from moprune.problems.base import PruningProblem
from moprune.tasks.digits import load_digits
from moprune.tasks.task import PruningTask, TaskOptions, load_weights
from moprune.training.finetune import FinetuneConfig

# ---- a layer moprune does not know -----------------------------------------------------


class ChannelScale(nn.Module):
    """``y[:, c] = weight[c] * x[:, c]``: a learnable gain per channel (as in LayerScale)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, *([1] * (x.dim() - 2)))


class ChannelScalePruner(tp.pruner.BasePruningFunc):
    """Torch-Pruning's surgery of a ChannelScale: drop entries of its weight."""

    def prune_out_channels(self, layer: ChannelScale, idxs: Sequence[int]) -> ChannelScale:
        keep = sorted(set(range(layer.weight.shape[0])) - set(idxs))
        layer.weight = nn.Parameter(layer.weight.data[keep].clone())
        return layer

    prune_in_channels = prune_out_channels  # one channel dimension: input and output coupled

    def get_out_channels(self, layer: ChannelScale) -> int:
        return layer.weight.shape[0]

    def get_in_channels(self, layer: ChannelScale) -> int:
        return layer.weight.shape[0]


def count_channel_scale(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
    """Thop's count: one multiplication per output element."""
    module.total_ops += torch.DoubleTensor([output.numel() // output.shape[0]])


class ChannelScaleRule(LayerRule):
    """ChannelScale as a per-channel layer kind (like BatchNorm)."""

    kind = "channel_scale"
    types = (ChannelScale,)
    trained = True  # weight inheritance trains its sliced weight
    tensors = {"weight": (OUT,)}  # sliced along the kept output channels

    def dims(self, module: nn.Module, info: LayerInfo) -> tuple[int, int | None]:
        return int(module.weight.shape[0]), None  # per channel: no separate input dimension

    def cost(self, module: nn.Module, info: LayerInfo) -> list[CostTerm]:
        macs = sum(spatial(s) for s in info.out_shapes)  # per kept channel
        return [CostTerm((OUT,), float(macs), 1.0)]

    def pruner(self) -> tp.pruner.BasePruningFunc:
        return ChannelScalePruner()

    def thop_op(self):  # noqa: ANN201 - thop's hook signature
        return count_channel_scale


LAYER_RULES.register(ChannelScaleRule())

# ---- an objective ----------------------------------------------------------------------


def kept_channels(metrics: Metrics) -> np.ndarray:
    """Fraction of the prunable channels each candidate keeps."""
    return metrics.masks.mean(axis=1)


register(Objective("kept_channels", "kept channels / prunable", "fraction of channels",
                   compute=kept_channels))

# ---- a pymoo algorithm -----------------------------------------------------------------


def nsga2_wide(problem: PruningProblem, pop_size: int) -> NSGA2:
    """NSGA-II whose initial masks keep 20-100 % of the channels."""
    return NSGA2(pop_size=pop_size, **problem.operators(keep_range=(0.2, 1.0)))


ALGORITHMS.register("nsga2_wide", nsga2_wide)

# ---- the task --------------------------------------------------------------------------


class ScaledCNN(nn.Module):
    """Three conv layers on 8x8 digits, each followed by a ChannelScale."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), ChannelScale(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), ChannelScale(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), ChannelScale(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_task(options: TaskOptions) -> PruningTask:
    with torch.random.fork_rng():  # seeded initialisation, global RNG untouched
        torch.manual_seed(0)
        model = ScaledCNN()
    if options.weights is not None:
        load_weights(model, options.weights)
    return PruningTask(
        name="scaled_cnn", model=model.eval(), input_shape=(1, 8, 8), load_data=load_digits,
        policy=SpacePolicy(min_channels=2), objectives=("error", "macs_ratio", "kept_channels"),
        finetune=FinetuneConfig(epochs=5, lr=0.01, batch_size=64, augment=False,
                                augment_flip=False),
        description="3-conv CNN with per-channel gains (a custom layer) on the embedded digits",
    )
