"""VGG-16 with BatchNorm on CIFAR-10: one mask bit per filter of every conv layer.

Needs a trained checkpoint: `moprune finetune problems/vgg16_cifar10.py --data-root DIR
--epochs 30 --out vgg16.pt`, then `moprune search problems/vgg16_cifar10.py --weights vgg16.pt
--data-root DIR --out RUN`.
"""

from moprune.core.space import SpacePolicy
from moprune.tasks.catalog import vgg16_task
from moprune.tasks.task import PruningTask, TaskOptions


def build_task(options: TaskOptions) -> PruningTask:
    return vgg16_task(options, SpacePolicy(min_channels=4))
