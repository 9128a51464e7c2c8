"""Model registry: built-in CNNs by name, plus any torchvision classifier as ``tv:<name>``."""

from __future__ import annotations

import difflib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision
from torch import nn

from moprune.core.registry import Registry
from moprune.errors import ConfigError, UnknownNameError

TORCHVISION_PREFIX = "tv:"
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


@dataclass(frozen=True)
class ModelEntry:
    """A buildable model.

    Attributes:
        name: Registry name.
        build: ``(num_classes, pretrained) -> model``.
        input_shape: Natural input (C, H, W); ``None`` means any size works.
        description: One line for listings.

    """

    name: str
    build: Callable[[int, bool], nn.Module]
    input_shape: tuple[int, int, int] | None
    description: str


MODELS: Registry[ModelEntry] = Registry("model")


def build_model(name: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    """Build a registered model, or a torchvision classifier named ``tv:<name>``.

    Args:
        name: A name in ``MODELS`` or ``"tv:<torchvision model name>"``.
        num_classes: Number of outputs of the classifier.
        pretrained: Load published weights (where this model has them).

    Raises:
        UnknownNameError: The name is neither registered nor a torchvision classifier.
        ValueError: ``num_classes`` is not positive, or no pretrained weights fit the request.

    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer; got {num_classes!r}.")
    return model_entry(name).build(num_classes, pretrained)


def model_entry(name: str) -> ModelEntry:
    """Look up the entry for ``name``; ``tv:<name>`` entries are made on the fly."""
    if not name.startswith(TORCHVISION_PREFIX):
        return MODELS.get(name)
    tv_name = name[len(TORCHVISION_PREFIX) :]
    valid = torchvision.models.list_models(module=torchvision.models)
    if tv_name not in valid:
        close = difflib.get_close_matches(tv_name, valid, n=5)
        shown = ", ".join(valid[:20])
        raise UnknownNameError(
            f"unknown torchvision classification model {tv_name!r}"
            + (f"; did you mean {', '.join(close)}?" if close else "")
            + f" Valid names ({len(valid)}): {shown}, ... (see "
            "torchvision.models.list_models(module=torchvision.models)); registered model "
            f"names: {', '.join(MODELS.names())}"
        )
    return ModelEntry(
        name=name,
        build=lambda num_classes, pretrained: _build_torchvision(tv_name, num_classes, pretrained),
        input_shape=None,
        description=f"torchvision.models.{tv_name}",
    )


def model_names() -> list[str]:
    """List the registered model names plus the ``tv:<torchvision name>`` hint."""
    return [*MODELS.names(), f"{TORCHVISION_PREFIX}<torchvision name>"]


# Builder options for families whose defaults add layers the eval forward never runs
# (auxiliary classifiers train with the network but are not part of the pruned model).
_TORCHVISION_OPTIONS: dict[str, dict[str, bool]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def _build_torchvision(tv_name: str, num_classes: int, pretrained: bool) -> nn.Module:
    if not pretrained:
        return torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes,
                                            **_TORCHVISION_OPTIONS.get(tv_name, {}))
    if num_classes != 1000:
        raise ConfigError(
            f"torchvision's pretrained weights for {tv_name!r} have 1000 ImageNet outputs but "
            f"num_classes={num_classes} was asked for; build with pretrained=False, or with "
            "num_classes=1000 and replace the classifier head yourself."
        )
    return torchvision.models.get_model(tv_name, weights="DEFAULT")


def _no_pretrained(name: str) -> None:
    raise ConfigError(
        f"no pretrained weights are published here for {name!r}; build it with "
        "pretrained=False and load a trained checkpoint instead."
    )


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    # conv bias kept (as in common CIFAR VGG code) so their state dicts load unchanged
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class VGGCifar(nn.Module):
    """VGG with BatchNorm for 32x32 inputs: conv features, flatten, one linear classifier.

    Args:
        cfg: Output channels of each 3x3 conv, ``"M"`` for a 2x2 max-pool.
        num_classes: Number of outputs.
        in_channels: Input channels.

    """

    def __init__(self, cfg: tuple[int | str, ...], num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers.extend(_conv_bn_relu(channels, int(item)))
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


def build_vgg16_bn_cifar(num_classes: int, pretrained: bool) -> nn.Module:
    """VGG-16-BN for 32x32 inputs (no pretrained weights here)."""
    if pretrained:
        _no_pretrained("vgg16_bn_cifar")
    return VGGCifar(VGG16_CFG, num_classes)


def build_digits_cnn(num_classes: int, pretrained: bool) -> nn.Module:
    """Build a small CNN for 1x8x8 digit images (no pretrained weights here)."""
    if pretrained:
        _no_pretrained("digits_cnn")
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(1, 16, kernel_size=3, padding=1, bias=False)),
                ("bn1", nn.BatchNorm2d(16)),
                ("relu1", nn.ReLU(inplace=True)),
                ("conv2", nn.Conv2d(16, 32, kernel_size=3, padding=1, bias=False)),
                ("bn2", nn.BatchNorm2d(32)),
                ("relu2", nn.ReLU(inplace=True)),
                ("pool", nn.MaxPool2d(2)),
                ("conv3", nn.Conv2d(32, 32, kernel_size=3, padding=1, bias=False)),
                ("bn3", nn.BatchNorm2d(32)),
                ("relu3", nn.ReLU(inplace=True)),
                ("gap", nn.AdaptiveAvgPool2d(1)),
                ("flatten", nn.Flatten()),
                ("fc", nn.Linear(32, num_classes)),
            ]
        )
    )


MODELS.register(
    "vgg16_bn_cifar",
    ModelEntry(
        name="vgg16_bn_cifar",
        build=build_vgg16_bn_cifar,
        input_shape=(3, 32, 32),
        description="VGG-16 with BatchNorm for 32x32 images (CIFAR), linear classifier",
    ),
)
MODELS.register(
    "digits_cnn",
    ModelEntry(
        name="digits_cnn",
        build=build_digits_cnn,
        input_shape=(1, 8, 8),
        description="small 3-conv CNN for 1x8x8 digit images",
    ),
)
