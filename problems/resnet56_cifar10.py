"""ResNet-56 on CIFAR-10: one mask bit per filter of the 27 internal groups.

Run: moprune search problems/resnet56_cifar10.py --data-root DIR --out RUN
(DIR: the unzipped CIFAR-10 JPEG copy with train/ and test/, or torchvision's CIFAR-10).
Weights: the published ones (torch.hub, hash-checked) unless --weights gives a checkpoint,
e.g. one adapted to the JPEG copy with `moprune finetune`.
"""

from moprune.core.space import SpacePolicy
from moprune.tasks.catalog import cifar_resnet_task
from moprune.tasks.task import PruningTask, TaskOptions


def build_task(options: TaskOptions) -> PruningTask:
    # Internal groups only (CCEP / EvoFC style); SpacePolicy(residual=True) adds the
    # residual stages (DeepPruningES style).
    return cifar_resnet_task(56, options, SpacePolicy(residual=False, min_channels=1))
