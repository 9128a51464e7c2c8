"""Tests for the model registry in moprune.zoo.models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moprune.errors import UnknownNameError
from moprune.zoo.models import MODELS, ModelEntry, build_model, model_entry, model_names


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        build_model("resnet9000", num_classes=10)
    message = str(info.value)
    assert "digits_cnn" in message
    assert "vgg16_bn_cifar" in message


def test_unknown_torchvision_name_lists_torchvision_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        build_model("tv:resnet181", num_classes=10)
    message = str(info.value)
    assert "did you mean" in message
    assert "resnet18" in message
    assert "list_models" in message


def test_model_names() -> None:
    names = model_names()
    assert "digits_cnn" in names
    assert "vgg16_bn_cifar" in names
    assert names[-1] == "tv:<torchvision name>"
    assert isinstance(MODELS.get("digits_cnn"), ModelEntry)


def test_torchvision_model_builds_and_runs() -> None:
    model = build_model("tv:resnet18", num_classes=10)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 10)
    assert model_entry("tv:resnet18").input_shape is None


def test_torchvision_pretrained_needs_1000_classes() -> None:
    with pytest.raises(ValueError, match="1000 ImageNet outputs"):
        build_model("tv:resnet18", num_classes=10, pretrained=True)


def test_vgg16_bn_cifar_forward() -> None:
    model = build_model("vgg16_bn_cifar", num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 13
    assert len(bns) == 13
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert MODELS.get("vgg16_bn_cifar").input_shape == (3, 32, 32)


def test_digits_cnn_forward() -> None:
    model = build_model("digits_cnn", num_classes=7)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(3, 1, 8, 8))
    assert out.shape == (3, 7)


@pytest.mark.parametrize("name", ["vgg16_bn_cifar", "digits_cnn"])
def test_no_pretrained_weights(name: str) -> None:
    with pytest.raises(ValueError, match="no pretrained weights are published here"):
        build_model(name, num_classes=10, pretrained=True)


def test_bad_num_classes() -> None:
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        build_model("digits_cnn", num_classes=0)
