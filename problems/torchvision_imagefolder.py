"""Any torchvision classifier on any ImageFolder data set (DIR/train/<class>/, DIR/test/<class>/).

Set the four options below (or copy this file and set them there; a run records the file's
hash, so keep one file per configuration), then train a baseline and search:

    moprune finetune problems/torchvision_imagefolder.py --data-root DIR --epochs 10 --out base.pt
    moprune search problems/torchvision_imagefolder.py --data-root DIR --weights base.pt --out RUN

Images of any size are resized to cover INPUT_SIZE x INPUT_SIZE and centre-cropped. Supported
families (exact masked evaluation and cost): docs/models.md.
"""

from moprune.core.space import SpacePolicy
from moprune.tasks.catalog import torchvision_imagefolder_task
from moprune.tasks.task import PruningTask, TaskOptions

MODEL = "resnet18"  # any name in torchvision.models.list_models(module=torchvision.models)
NUM_CLASSES = 10  # class folders of the data set
INPUT_SIZE = 64  # side of the square inputs, in pixels
WEIGHTS = None  # None (random init: run `moprune finetune`), a checkpoint path, or "imagenet"
POLICY = SpacePolicy(residual=False, min_channels=4)  # residual=True also prunes the streams


def build_task(options: TaskOptions) -> PruningTask:
    return torchvision_imagefolder_task(options, MODEL, NUM_CLASSES, INPUT_SIZE, WEIGHTS, POLICY)
