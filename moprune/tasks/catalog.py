"""Building blocks for problem files: data loading and ready-made tasks."""

from __future__ import annotations

from pathlib import Path

from moprune.core.space import SpacePolicy
from moprune.data.datasets import DataBundle, check_num_classes, detect_dataset, load_dataset
from moprune.errors import ConfigError, DataError
from moprune.tasks.task import DataRequest, PruningTask, TaskOptions, load_weights
from moprune.training.finetune import FinetuneConfig
from moprune.zoo.cifar_resnet import cifar_resnet
from moprune.zoo.models import TORCHVISION_PREFIX, build_model

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


# Fine-tuning recipe for torchvision classifiers on an ImageFolder data set.
IMAGEFOLDER_RECIPE = FinetuneConfig(epochs=10, lr=0.01, momentum=0.9, nesterov=True,
                                    weight_decay=1e-4, batch_size=64)
IMAGENET_WEIGHTS = "imagenet"


def load_imagefolder(request: DataRequest, input_size: int, num_classes: int) -> DataBundle:
    """An ImageFolder data set (``ROOT/train/<class>/``, ``ROOT/test/<class>/``) at one size.

    Every image is resized to cover ``input_size`` x ``input_size`` and centre-cropped.
    """
    if request.root is None:
        raise DataError("this problem needs --data-root: a folder with train/<class>/ and "
                        "test/<class>/ image folders")
    bundle = load_dataset("imagefolder", root=request.root, seed=request.seed,
                          max_val=request.eval_images, max_test=request.test_images,
                          load_train=request.load_train, max_train=request.train_images,
                          image_size=(input_size, input_size))
    check_num_classes(bundle, num_classes)
    return bundle


def torchvision_imagefolder_task(options: TaskOptions, model: str, num_classes: int,
                                 input_size: int, weights: str | Path | None = None,
                                 policy: SpacePolicy | None = None,
                                 finetune: FinetuneConfig = IMAGEFOLDER_RECIPE) -> PruningTask:
    """Any torchvision classifier (``torchvision.models.list_models()``) on an ImageFolder.

    Args:
        options: The command line's options (``--weights`` overrides ``weights``).
        model: A torchvision classification model name, e.g. ``"resnet18"``.
        num_classes: Classes of the data set (the classifier's outputs).
        input_size: Side of the square images the model sees (the data are resized to it).
        weights: ``None`` (random initialisation: train it with ``moprune finetune``), a
            checkpoint file, or ``"imagenet"`` (torchvision's published weights, which need
            ``num_classes=1000`` and torch.hub's cache, ``$TORCH_HOME/hub/checkpoints``).
        policy: Which channel groups may be pruned (default: internal groups, at least 4
            channels kept per group).
        finetune: Fine-tuning recipe of exported models.

    """
    if not isinstance(input_size, int) or input_size < 8:
        raise ConfigError(f"input_size must be an integer of at least 8 pixels; got "
                          f"{input_size!r}")
    source = weights if options.weights is None else options.weights
    pretrained = source == IMAGENET_WEIGHTS and options.pretrained
    net = build_model(TORCHVISION_PREFIX + model, num_classes=num_classes, pretrained=pretrained)
    if source is not None and source != IMAGENET_WEIGHTS and options.pretrained:
        load_weights(net, source)
    described = ("torchvision's ImageNet weights" if pretrained else str(source) if source
                 else "random initialisation (train with moprune finetune)")
    return PruningTask(
        name=f"{model}_imagefolder", model=net.eval(), input_shape=(3, input_size, input_size),
        load_data=lambda request: load_imagefolder(request, input_size, num_classes),
        policy=policy or SpacePolicy(min_channels=4), encoding="mask", finetune=finetune,
        description=f"torchvision {model} on an ImageFolder data set ({num_classes} classes, "
                    f"{input_size}x{input_size} inputs); weights: {described}",
    )
