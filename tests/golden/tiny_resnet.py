"""Golden-file problem: a seeded random CIFAR ResNet-8 on seeded random 16x16 images.

Used only by the golden-file test (``tests/test_golden.py``): small enough that every method
runs in seconds, deterministic, offline.
"""

import torch

from moprune.core.space import SpacePolicy
from moprune.data.datasets import DataBundle, Normalization, Split
from moprune.tasks.task import DataRequest, PruningTask, TaskOptions
from moprune.training.finetune import FinetuneConfig
from moprune.zoo.cifar_resnet import cifar_resnet

CLASSES = 4
SHAPE = (3, 16, 16)


def _split(n: int, seed: int) -> Split:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *SHAPE), generator=gen, dtype=torch.uint8)
    # labels follow the mean brightness of a quarter of the image, so a network can learn them
    score = images[:, 0, :8, :8].float().mean((1, 2))
    labels = torch.bucketize(score, torch.tensor([121.3, 127.5, 133.7]))
    return Split(images, labels.to(torch.int64))


def load_data(request: DataRequest) -> DataBundle:
    train = _split(160, 1) if request.load_train else Split(
        torch.zeros((0, *SHAPE), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))
    val = _split(request.eval_images or 64, 2)
    test = _split(request.test_images or 64, 3)
    return DataBundle(name="tiny", train=train, val=val, test=test, num_classes=CLASSES,
                      class_names=tuple(str(i) for i in range(CLASSES)),
                      normalization=Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
                      input_shape=SHAPE)


def build_task(options: TaskOptions) -> PruningTask:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = cifar_resnet(8, num_classes=CLASSES)
    return PruningTask(name="tiny_resnet8", model=model.eval(), input_shape=SHAPE,
                       load_data=load_data, policy=SpacePolicy(min_channels=2),
                       finetune=FinetuneConfig(epochs=1, lr=0.01, batch_size=32),
                       description="seeded random CIFAR ResNet-8 on random 16x16 images")
