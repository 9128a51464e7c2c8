"""Building blocks for problem files: CIFAR-style data loading and ready-made tasks."""

from __future__ import annotations

from moprune.core.space import SpacePolicy
from moprune.data.datasets import DataBundle, detect_dataset, load_dataset
from moprune.errors import DataError
from moprune.tasks.task import DataRequest, PruningTask, TaskOptions, load_weights
from moprune.training.finetune import FinetuneConfig
from moprune.zoo.cifar_resnet import cifar_resnet
from moprune.zoo.models import build_model

# Fine-tuning recipe for CIFAR networks (SGD + Nesterov, cosine, crop + flip).
CIFAR_RECIPE = FinetuneConfig(epochs=10, lr=0.01, momentum=0.9, nesterov=True,
                              weight_decay=5e-4, batch_size=128)


def load_cifar10(request: DataRequest) -> DataBundle:
    """CIFAR-10 from ``request.root``: an ImageFolder copy (train/, test/) or torchvision's."""
    if request.root is None:
        raise DataError("this problem needs --data-root: a folder with train/ and test/ class "
                        "folders (e.g. the unzipped CIFAR-10 JPEG copy) or torchvision's CIFAR-10 "
                        "folder (add --download to fetch it)")
    kind = "cifar10" if request.download else detect_dataset(request.root)
    bundle = load_dataset(kind, root=request.root, seed=request.seed,
                          max_val=request.eval_images, max_test=request.test_images,
                          load_train=request.load_train, download=request.download,
                          max_train=request.train_images)
    if bundle.num_classes != 10:
        raise DataError(f"{str(request.root)!r} has {bundle.num_classes} classes; CIFAR-10 "
                        "problems need 10")
    return bundle


def cifar_resnet_task(depth: int, options: TaskOptions, policy: SpacePolicy) -> PruningTask:
    """ResNet-``depth`` on CIFAR-10: published weights unless ``options.weights`` is given.

    With ``options.pretrained`` False (the run re-initialises it) nothing is loaded.
    """
    model = cifar_resnet(depth, num_classes=10,
                         pretrained=options.weights is None and options.pretrained)
    default = ("published (akamaster/pytorch_resnet_cifar10)" if options.pretrained
               else "not loaded (the run re-initialises the network)")
    if options.weights is not None:
        load_weights(model, options.weights)
    return PruningTask(
        name=f"resnet{depth}_cifar10", model=model, input_shape=(3, 32, 32),
        load_data=load_cifar10, policy=policy, encoding="mask", finetune=CIFAR_RECIPE,
        description=f"CIFAR ResNet-{depth} (He et al. 2016, option-A shortcuts); weights: "
                    f"{options.weights or default}",
    )


def vgg16_task(options: TaskOptions, policy: SpacePolicy) -> PruningTask:
    """VGG-16-BN on CIFAR-10 from a checkpoint (``--weights``); random init otherwise."""
    model = build_model("vgg16_bn_cifar", num_classes=10)
    if options.weights is not None:
        load_weights(model, options.weights)
    return PruningTask(
        name="vgg16_bn_cifar10", model=model.eval(), input_shape=(3, 32, 32),
        load_data=load_cifar10, policy=policy, encoding="mask", finetune=CIFAR_RECIPE,
        description="VGG-16 with BatchNorm for CIFAR-10; weights: "
                    f"{options.weights or 'random initialisation (train with moprune finetune)'}",
    )
