"""Shared tiny models and helpers for the pruning-space / cost / evaluator tests."""

from __future__ import annotations

import copy
import functools
from collections import OrderedDict
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from torch import nn

from moprune.core.plan import PruningPlan
from moprune.core.space import PruningSpace, SpacePolicy
from moprune.zoo.cifar_resnet import cifar_resnet
from moprune.zoo.models import MODELS, build_model

ModelFactory = Callable[[], nn.Module]

# Smallest convenient input per registered model (None in the entry = any size works).
SMALL_INPUTS: dict[str, tuple[int, int, int]] = {
    "digits_cnn": (1, 8, 8),
    "vgg16_bn_cifar": (3, 32, 32),  # five 2x2 max-pools: 32 is the smallest size
}
TORCHVISION_MODELS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("tv:resnet18", (3, 32, 32)),
    ("tv:mobilenet_v2", (3, 32, 32)),
    ("tv:vgg11_bn", (3, 32, 32)),
)


class FlattenLinearCNN(nn.Module):
    """Plain CNN whose classifier reads a flattened 2x2 map (in_features = 4 x channels)."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.AdaptiveAvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(12 * 2 * 2, 10)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(10, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.flatten(self.pool2(self.relu2(self.bn2(self.conv2(x)))))
        return self.fc2(self.relu3(self.fc1(x)))


class DepthwiseAvgPoolCNN(nn.Module):
    """Conv -> depthwise conv -> AvgPool2d -> pointwise conv -> global pool -> linear."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=True)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU6()
        self.avg = nn.AvgPool2d(3, stride=2, padding=1)
        self.pw = nn.Conv2d(8, 10, 1)
        self.bn3 = nn.BatchNorm2d(10)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(10, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.avg(self.relu(self.bn2(self.dw(x))))
        x = self.relu(self.bn3(self.pw(x)))
        return self.fc(self.flatten(self.gap(x)))


class DenseConcatCNN(nn.Module):
    """DenseNet-style block: each layer reads the concatenation of all earlier outputs."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c1, self.b1 = nn.Conv2d(8, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.c2, self.b2 = nn.Conv2d(14, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.trans, self.bt = nn.Conv2d(20, 10, 1, bias=False), nn.BatchNorm2d(10)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(10, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.cat([x, torch.relu(self.b1(self.c1(x)))], 1)
        x = torch.cat([x, torch.relu(self.b2(self.c2(x)))], 1)
        x = torch.relu(self.bt(self.trans(x)))
        return self.fc(self.pool(x).flatten(1))


def digits_cnn() -> nn.Module:
    return build_model("digits_cnn", num_classes=10)


def small_vgg11_bn() -> nn.Module:
    """torchvision's vgg11_bn with a narrow classifier (its 25088 x 4096 layer is slow to
    build); the Linear still reads the flattened 7x7 map, i.e. 49 inputs per channel."""
    model = build_model("tv:vgg11_bn", num_classes=7)
    model.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 16), nn.ReLU(True), nn.Dropout(), nn.Linear(16, 7)
    )
    return model


class GroupedBottleneckCNN(nn.Module):
    """ResNeXt-style bottleneck: 1x1 conv, grouped 3x3 conv (4 groups), 1x1 conv, addition."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.reduce, self.bn1 = nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 12, 3, padding=1, groups=4, bias=True)
        self.bn2 = nn.BatchNorm2d(12)
        self.expand, self.bn3 = nn.Conv2d(12, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.bn1(self.reduce(x)))
        y = torch.relu(self.bn2(self.grouped(y)))
        x = torch.relu(x + self.bn3(self.expand(y)))
        return self.fc(self.pool(x).flatten(1))


class GroupNormCNN(nn.Module):
    """Convolutions normalised by GroupNorm, the second one grouped (2 groups) and followed
    by a GroupNorm of 4 groups: its channels tie at positions modulo 12 and 6."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv1, self.gn1 = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(2, 16)
        self.conv2, self.gn2 = nn.Conv2d(16, 24, 3, padding=1, groups=2), nn.GroupNorm(4, 24)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.gn1(self.conv1(x)))
        x = torch.relu(self.gn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


class ConvNeXtBlockCNN(nn.Module):
    """torchvision's ConvNeXt parts: LayerNorm2d stem, a CNBlock (depthwise conv, Permute,
    LayerNorm over the last axis, Linear layers on NHWC, layer scale, StochasticDepth)."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        from torchvision.models.convnext import CNBlock, LayerNorm2d

        self.stem = nn.Sequential(nn.Conv2d(3, 8, 2, stride=2), LayerNorm2d(8, eps=1e-6))
        self.block = CNBlock(8, layer_scale=0.5, stochastic_depth_prob=0.1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(LayerNorm2d(8, eps=1e-6), nn.Flatten(1),
                                  nn.Linear(8, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.block(self.stem(x))))


class SqueezeExciteCNN(nn.Module):
    """An inverted residual block with squeeze-and-excitation and a SqueezeNet-style head
    (a 1x1 conv classifier followed by ReLU, global pooling and flatten)."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        from torchvision.ops import SqueezeExcitation

        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.expand, self.bn1 = nn.Conv2d(8, 32, 1, bias=False), nn.BatchNorm2d(32)
        self.dw, self.bn2 = nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32)
        self.se = SqueezeExcitation(32, 8)
        self.project, self.bn3 = nn.Conv2d(32, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(8, num_classes, 1),
                                        nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.bn1(self.expand(x)))
        y = self.se(torch.relu(self.bn2(self.dw(y))))
        x = x + self.bn3(self.project(y))
        return torch.flatten(self.classifier(x), 1)


def tiny_models() -> list[tuple[str, ModelFactory, tuple[int, int, int]]]:
    """(id, factory, input_shape) for every registered model plus a few extra architectures."""
    out: list[tuple[str, ModelFactory, tuple[int, int, int]]] = []
    for name in MODELS.names():
        entry = MODELS.get(name)
        shape = SMALL_INPUTS.get(name, entry.input_shape or (3, 32, 32))
        out.append((name, lambda name=name: build_model(name, num_classes=10), shape))
    out.append(("cifar_resnet20", lambda: cifar_resnet(20, num_classes=10), (3, 16, 16)))
    for name, shape in TORCHVISION_MODELS:
        factory = small_vgg11_bn if name == "tv:vgg11_bn" else (
            lambda name=name: build_model(name, num_classes=7))
        out.append((name, factory, shape))
    out.append(("flatten_linear_cnn", FlattenLinearCNN, (3, 8, 8)))
    out.append(("depthwise_avgpool_cnn", DepthwiseAvgPoolCNN, (3, 12, 12)))
    out.append(("dense_concat_cnn", DenseConcatCNN, (3, 8, 8)))
    out.append(("grouped_bottleneck_cnn", GroupedBottleneckCNN, (3, 8, 8)))
    out.append(("groupnorm_cnn", GroupNormCNN, (3, 8, 8)))
    out.append(("convnext_block_cnn", ConvNeXtBlockCNN, (3, 8, 8)))
    out.append(("squeeze_excite_cnn", SqueezeExciteCNN, (3, 8, 8)))
    return out


def run_main(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``moprune ARGV`` in-process: (exit status, stdout, stderr) of that call alone."""
    from moprune.cli.main import main

    capsys.readouterr()
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def tiny_model_ids() -> list[str]:
    return [mid for mid, _, _ in tiny_models()]


@functools.cache
def _built(model_id: str) -> tuple[nn.Module, tuple[int, int, int]]:
    factories = {mid: (factory, shape) for mid, factory, shape in tiny_models()}
    factory, shape = factories[model_id]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = factory()
    randomize_bn(model, torch.Generator().manual_seed(1))
    return model.eval(), shape


def built_model(model_id: str) -> tuple[nn.Module, tuple[int, int, int]]:
    """A fresh copy of the (seeded, BN-randomised, eval-mode) model and its input shape."""
    model, shape = _built(model_id)
    return copy.deepcopy(model), shape


@functools.cache
def _space(model_id: str, residual: bool) -> PruningSpace:
    model, shape = _built(model_id)
    return PruningSpace.from_model(model, shape, SpacePolicy(residual=residual))


def model_and_space(model_id: str, residual: bool):
    """(fresh model copy, its pruning space, input shape); the space is cached per session."""
    model, shape = built_model(model_id)
    return model, _space(model_id, residual), shape


def one_torch_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, then restore the setting (use as a fixture body).

    These models are tiny: threads do not pay off, and on a busy 2-core machine the spinning
    OpenMP workers make the tests several times slower.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def randomize_bn(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Give every BatchNorm random running statistics and affine parameters, and every
    GroupNorm / LayerNorm / ConvNeXt layer scale random affine parameters (in place)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) * 1.5 + 0.25)
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.5)
            scale = getattr(m, "layer_scale", None)
            if isinstance(scale, nn.Parameter):
                scale.copy_(torch.rand(scale.shape, generator=generator) + 0.5)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
                    m.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=generator) * 1.5 + 0.25)
                    m.bias.copy_(torch.randn(n, generator=generator) * 0.5)
    return model


def random_plan(space: PruningSpace, rng: np.random.Generator, keep_prob: float) -> PruningPlan:
    """A random plan keeping each channel with ``keep_prob`` (at least one per group)."""
    keep = []
    for size in space.sizes:
        size = int(size)
        mask = rng.random(size) < keep_prob
        if not mask.any():
            mask[rng.integers(size)] = True
        keep.append(np.flatnonzero(mask).astype(np.int64))
    return PruningPlan(tuple(keep))


def state_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A deep copy of the model's state dict (to check it is left unchanged)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_equal(before: dict[str, torch.Tensor], model: nn.Module) -> None:
    after = model.state_dict()
    assert list(before) == list(after)
    for key, value in before.items():
        assert value.shape == after[key].shape, key
        assert torch.equal(value, after[key]), key


def make_digits_cnn_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = digits_cnn()
    randomize_bn(model, torch.Generator().manual_seed(seed))
    return model.eval()


def tiny_sequential(*layers: nn.Module) -> nn.Module:
    """A Sequential with numbered names (for the unsupported-layer tests)."""
    return nn.Sequential(OrderedDict((f"l{i}", m) for i, m in enumerate(layers)))


@functools.cache
def digits_eval_setup(min_channels: int = 2, n_images: int = 64):
    """The seeded digits CNN, its space, a small hold-out split and the normalisation."""
    from moprune.data.datasets import load_dataset

    bundle = load_dataset("digits", root=None, seed=0, load_train=False)
    model = make_digits_cnn_model(0)
    space = PruningSpace.from_model(model, bundle.input_shape,
                                    SpacePolicy(min_channels=min_channels))
    return model, space, bundle.val.subset(n_images), bundle.normalization


@functools.cache
def digits_bundle():
    """The embedded digits data with its training part (loaded once per session)."""
    from moprune.data.datasets import load_dataset

    return load_dataset("digits", root=None, seed=0, load_train=True)
