"""Layer rules: how each kind of layer is traced, costed, sliced and pruned.

A :class:`LayerRule` tells the engine everything it needs about one kind of layer: which
module types it covers, the sizes of its channel dimensions, its cost terms (MACs and
parameters as functions of its kept channels, thop's counting rules), how its tensors are
sliced to kept channels (the sliced evaluator, weight inheritance), and the Torch-Pruning
pruner of a custom module type (surgery). The pruning space, the cost model, the gated and
sliced evaluators and the surgery all consult :data:`LAYER_RULES`; none of them names a layer
kind. A new layer kind is one rule registered here, from the module that defines the layer
(as ``moprune.zoo.cifar_resnet`` does for its option-A shortcut) or from a problem file.

Rules are looked up by the module's type, most specific class first (a rule for a subclass of
``nn.Conv2d`` wins over the convolution rule); of several rules for one type, the first whose
:meth:`LayerRule.accepts` is true applies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from moprune.errors import ConfigError, UnsupportedLayerError

if TYPE_CHECKING:
    import torch_pruning as tp

    from moprune.core.space import LayerInfo

IN, OUT = "in", "out"


@dataclass(frozen=True)
class CostTerm:
    """One term of a layer's cost: ``coefficient x`` the product of its kept dimensions.

    Attributes:
        dims: The channel dimensions multiplied: ``("out",)`` (linear in the kept outputs) or
            ``("in", "out")`` (bilinear, e.g. a convolution's weights).
        macs: Multiply-accumulates per unit of that product, per image.
        params: Parameters per unit of that product.

    """

    dims: tuple[str, ...]
    macs: float
    params: float


def spatial(shape: tuple[int, ...]) -> int:
    """Product of the dimensions after the channel dimension (1 for a vector)."""
    return math.prod(shape[2:]) if len(shape) > 2 else 1


class LayerRule:
    """How moprune handles one kind of layer. Subclass it and register an instance.

    Class attributes (all optional):
        kind: Unique name, stored in the pruning space's layer table.
        types: The module types the rule may handle (subclasses included).
        channels: The layer has channel dimensions (False: parameter-free pass-through).
        root: Its output channels start a Torch-Pruning group (convolutions, linear layers).
        writer: It writes its output channels; a group written by several writers is a
            residual stream.
        filters: Its weight rows are output filters, which criteria score.
        trained: Weight inheritance trains its sliced tensors.
        output: It may produce the model output (the classifier).
        atomic: Traced as one layer even when it has child modules.
        tensors: ``{attribute: dimension per axis}`` of the tensors sliced to kept channels,
            e.g. ``{"weight": ("out", "in"), "bias": ("out",)}``; the default slicing and
            weight inheritance's write-back follow it.

    """

    kind: ClassVar[str] = ""
    types: ClassVar[tuple[type[nn.Module], ...]] = ()
    channels: ClassVar[bool] = True
    root: ClassVar[bool] = False
    writer: ClassVar[bool] = False
    filters: ClassVar[bool] = False
    trained: ClassVar[bool] = False
    output: ClassVar[bool] = False
    atomic: ClassVar[bool] = False
    tensors: ClassVar[dict[str, tuple[str, ...]]] = {}

    def accepts(self, module: nn.Module) -> bool:
        """Whether this rule handles ``module`` (one of :attr:`types`)."""
        return True

    def slices(self) -> bool:
        """Whether the layer has tensors to slice to a plan (default: :attr:`tensors`)."""
        return bool(self.tensors)

    def rejection(self, module: nn.Module) -> str:
        """Why a module of one of :attr:`types` is refused (when :meth:`accepts` is false)."""
        return f"a {type(module).__name__} this rule does not handle"

    def dims(self, module: nn.Module, info: LayerInfo) -> tuple[int, int | None]:
        """``(output channels, input channels)``; input ``None`` for per-channel layers."""
        return 0, None

    def cost(self, module: nn.Module, info: LayerInfo) -> list[CostTerm]:
        """Cost terms of the layer as traced (``info`` holds its input/output shapes)."""
        return []

    def slice(self, module: nn.Module, k_in: torch.Tensor | None, k_out: torch.Tensor | None
              ) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """Tensors sliced to the kept channels, and module attributes to patch while they run.

        The default slices every entry of :attr:`tensors` along its axes (keeping a
        channels-last weight channels-last) and patches nothing.
        """
        out: dict[str, torch.Tensor] = {}
        for attr, axes in self.tensors.items():
            value = getattr(module, attr)
            if value is None:
                continue
            sliced = value
            for axis, dim in enumerate(axes):
                keep = k_out if dim == OUT else k_in
                if keep is not None:
                    sliced = sliced.index_select(axis, keep)
            if sliced.dim() == 4 and value.is_contiguous(memory_format=torch.channels_last):
                sliced = sliced.contiguous(memory_format=torch.channels_last)  # the model's layout
            out[attr] = sliced
        return out, self.patch(module, k_in, k_out)

    def patch(self, module: nn.Module, k_in: torch.Tensor | None,
              k_out: torch.Tensor | None) -> dict[str, int]:
        """Module attributes to set while the sliced tensors run (default: none)."""
        return {}

    def pruner(self) -> tp.pruner.BasePruningFunc | None:
        """Torch-Pruning's pruner for a custom module type (None: Torch-Pruning's own)."""
        return None

    def thop_op(self) -> Callable[[nn.Module, tuple, torch.Tensor], None] | None:
        """Thop's counter for a module type thop does not know (None: thop's own).

        Called as ``op(module, inputs, output)``; it adds the layer's MACs to
        ``module.total_ops``. The reference count of an exported model uses it.
        """
        return None

    def describe(self) -> str:
        """Short name for listings of supported layers."""
        return "/".join(t.__name__ for t in self.types)


class LayerRules:
    """The registry of layer rules: strict, looked up by the module's type."""

    def __init__(self) -> None:
        self._by_kind: dict[str, LayerRule] = {}
        self._by_type: dict[type, list[LayerRule]] = {}

    def register(self, rule: LayerRule) -> LayerRule:
        """Register ``rule``; its ``kind`` must be new and it must name its module types."""
        if not rule.kind:
            raise ConfigError(f"{type(rule).__name__} has no kind; set the class attribute kind")
        if rule.kind in self._by_kind:
            raise ConfigError(f"layer kind {rule.kind!r} is already registered; choose another")
        if not rule.types:
            raise ConfigError(f"layer rule {rule.kind!r} names no module types; set types")
        self._by_kind[rule.kind] = rule
        for t in rule.types:
            self._by_type.setdefault(t, []).append(rule)
        return rule

    def get(self, kind: str) -> LayerRule:
        """The rule of a registered kind."""
        try:
            return self._by_kind[kind]
        except KeyError:
            raise UnsupportedLayerError(
                f"no layer rule for kind {kind!r}; registered: {', '.join(self._by_kind)}"
            ) from None

    def __iter__(self) -> Iterator[LayerRule]:
        return iter(self._by_kind.values())

    def rule_for(self, module: nn.Module) -> LayerRule | None:
        """The rule handling ``module``, or None."""
        for cls in type(module).__mro__:
            for rule in self._by_type.get(cls, ()):
                if rule.accepts(module):
                    return rule
        return None

    def classify(self, module: nn.Module, name: str) -> LayerRule:
        """The rule of ``module``; raises :class:`UnsupportedLayerError` naming the layer."""
        rule = self.rule_for(module)
        if rule is not None:
            return rule
        for cls in type(module).__mro__:
            for candidate in self._by_type.get(cls, ()):
                if candidate.channels:
                    raise UnsupportedLayerError(
                        f"layer {name!r} is {candidate.rejection(module)}.")
        raise UnsupportedLayerError(
            f"layer {name!r} of type {type(module).__name__} is not supported by moprune's cost "
            f"model and evaluators. Supported: {', '.join(self.supported())}. Replace the "
            "layer, wrap it in a module of a supported type, or register a "
            "moprune.core.layers.LayerRule for it."
        )

    def supported(self) -> list[str]:
        """Names of the supported layer types (for messages)."""
        named = [r.describe() for r in self if r.channels]
        free = sorted(t.__name__ for r in self if not r.channels for t in r.types)
        return named + free

    def is_leaf(self, module: nn.Module) -> bool:
        """Traced as one layer: no child modules, or an atomic rule covers it."""
        if not list(module.children()):
            return True
        rule = self.rule_for(module)
        return rule is not None and rule.atomic

    def root_types(self) -> tuple[type, ...]:
        """Module types whose output channels start a Torch-Pruning group."""
        return tuple(t for r in self if r.root for t in r.types)

    def thop_ops(self) -> dict[type, Callable[[nn.Module, tuple, torch.Tensor], None]]:
        """Thop counters of module types thop does not know (``thop.profile(custom_ops=)``)."""
        out = {}
        for r in self:
            op = r.thop_op()
            if op is not None:
                out.update(dict.fromkeys(r.types, op))
        return out

    def pruners(self) -> dict[type, tp.pruner.BasePruningFunc]:
        """Torch-Pruning pruners of custom module types (a fresh dict each call)."""
        out = {}
        for r in self:
            pruner = r.pruner()
            if pruner is not None:
                out.update(dict.fromkeys(r.types, pruner))
        return out


# ---------------------------------------------------------------------------------- rules


class ConvRule(LayerRule):
    """A dense ``nn.Conv2d`` (``groups=1``)."""

    kind = "conv"
    types = (nn.Conv2d,)
    root = writer = filters = trained = output = True
    tensors = {"weight": (OUT, IN), "bias": (OUT,)}

    def accepts(self, module: nn.Module) -> bool:
        return bool(module.groups == 1)

    def rejection(self, module: nn.Module) -> str:
        m = module
        return (f"a grouped Conv2d (groups={m.groups}, in={m.in_channels}, "
                f"out={m.out_channels}); only groups=1 and depthwise convolutions are "
                "supported")

    def describe(self) -> str:
        return "Conv2d (groups=1 or depthwise)"

    def dims(self, module: nn.Module, info: LayerInfo) -> tuple[int, int | None]:
        return module.out_channels, module.in_channels  # type: ignore[return-value]

    def cost(self, module: nn.Module, info: LayerInfo) -> list[CostTerm]:
        kk = math.prod(module.kernel_size)  # type: ignore[arg-type]
        macs = sum(spatial(s) for s in info.out_shapes) * kk
        terms = [CostTerm((IN, OUT), float(macs), float(kk))]
        if module.bias is not None:
            terms.append(CostTerm((OUT,), 0.0, 1.0))
        return terms


class DepthwiseRule(LayerRule):
    """A depthwise ``nn.Conv2d`` (``groups == in_channels == out_channels``)."""

    kind = "depthwise"
    types = (nn.Conv2d,)
    filters = trained = True
    tensors = {"weight": (OUT,), "bias": (OUT,)}

    def accepts(self, module: nn.Module) -> bool:
        m = module
        return bool(m.groups == m.in_channels == m.out_channels)

    def describe(self) -> str:
        return "depthwise Conv2d"

    def dims(self, module: nn.Module, info: LayerInfo) -> tuple[int, int | None]:
        return module.out_channels, None  # type: ignore[return-value]

    def cost(self, module: nn.Module, info: LayerInfo) -> list[CostTerm]:
        kk = math.prod(module.kernel_size)  # type: ignore[arg-type]
        macs = sum(spatial(s) for s in info.out_shapes) * kk
        return [CostTerm((OUT,), float(macs), float(kk + (module.bias is not None)))]

    def patch(self, module: nn.Module, k_in: torch.Tensor | None,
              k_out: torch.Tensor | None) -> dict[str, int]:
        return {"groups": len(k_out)} if k_out is not None else {}


class LinearRule(LayerRule):
    """``nn.Linear``."""

    kind = "linear"
    types = (nn.Linear,)
    root = writer = filters = trained = output = True
    tensors = {"weight": (OUT, IN), "bias": (OUT,)}

    def describe(self) -> str:
        return "Linear"

    def dims(self, module: nn.Module, info: LayerInfo) -> tuple[int, int | None]:
        return module.out_features, module.in_features  # type: ignore[return-value]

    def cost(self, module: nn.Module, info: LayerInfo) -> list[CostTerm]:
        rows = sum(math.prod(s[:-1]) for s in info.out_shapes)
        terms = [CostTerm((IN, OUT), float(rows), 1.0)]
        if module.bias is not None:
            terms.append(CostTerm((OUT,), 0.0, 1.0))
        return terms


class BatchNormRule(LayerRule):
    """``nn.BatchNorm1d`` / ``nn.BatchNorm2d``."""

    kind = "batchnorm"
    types = (nn.BatchNorm1d, nn.BatchNorm2d)
    trained = True
    tensors = {"weight": (OUT,), "bias": (OUT,), "running_mean": (OUT,),
               "running_var": (OUT,)}

    def describe(self) -> str:
        return "BatchNorm1d/2d"

    def dims(self, module: nn.Module, info: LayerInfo) -> tuple[int, int | None]:
        return module.num_features, None  # type: ignore[return-value]

    def cost(self, module: nn.Module, info: LayerInfo) -> list[CostTerm]:
        per = 4 if module.affine else 2
        macs = sum(per * spatial(s) for s in info.in_shapes)
        return [CostTerm((OUT,), float(macs), 2.0 if module.affine else 0.0)]


def _pair(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return value if isinstance(value, tuple) else (value,) * 2


def _avgpool_windows(module: nn.AvgPool2d, in_hw: tuple[int, ...], out_hw: tuple[int, ...]
                     ) -> int:
    """Input elements summed per channel by AvgPool2d (thop's count_avgpool)."""
    k, s, p = _pair(module.kernel_size), _pair(module.stride), _pair(module.padding)
    windows = 1
    for size, out, kk, ss, pp in zip(in_hw, out_hw, k, s, p):
        lower, upper = (-pp, size + pp) if module.count_include_pad else (0, size)
        windows *= sum(max(min(i * ss - pp + kk, upper) - max(i * ss - pp, lower), 0)
                       for i in range(out))
    return windows


def _adaptive_windows(in_hw: tuple[int, ...], out_hw: tuple[int, ...]) -> int:
    """Input elements summed per channel by AdaptiveAvgPool (thop's count_adap_avgpool)."""
    total = 1
    for i, o in zip(in_hw, out_hw):
        total *= o if i == o else sum(-(-(j + 1) * i // o) - j * i // o for j in range(o))
    return total


class AvgPoolRule(LayerRule):
    """``nn.AvgPool2d``: per channel, no parameters."""

    kind = "avgpool"
    types = (nn.AvgPool2d,)

    def describe(self) -> str:
        return "AvgPool2d"

    def dims(self, module: nn.Module, info: LayerInfo) -> tuple[int, int | None]:
        return info.in_shapes[0][1], None

    def cost(self, module: nn.Module, info: LayerInfo) -> list[CostTerm]:
        assert isinstance(module, nn.AvgPool2d)
        macs = sum(_avgpool_windows(module, a[-2:], b[-2:]) + spatial(b)
                   for a, b in zip(info.in_shapes, info.out_shapes))
        return [CostTerm((OUT,), float(macs), 0.0)]


class AdaptiveAvgPoolRule(LayerRule):
    """``nn.AdaptiveAvgPool2d``: per channel, no parameters."""

    kind = "adaptive_avgpool"
    types = (nn.AdaptiveAvgPool2d,)

    def describe(self) -> str:
        return "AdaptiveAvgPool2d"

    def dims(self, module: nn.Module, info: LayerInfo) -> tuple[int, int | None]:
        return info.in_shapes[0][1], None

    def cost(self, module: nn.Module, info: LayerInfo) -> list[CostTerm]:
        macs = sum(_adaptive_windows(a[2:], b[2:]) + spatial(b)
                   for a, b in zip(info.in_shapes, info.out_shapes))
        return [CostTerm((OUT,), float(macs), 0.0)]


# Parameter-free modules that thop counts as zero operations (or leaves uncounted).
FREE_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
    nn.Hardsigmoid, nn.Mish, nn.ELU,
    nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Identity, nn.Flatten,
    nn.modules.dropout._DropoutNd, nn.Sequential, nn.ModuleList, nn.ModuleDict,
)


class FreeRule(LayerRule):
    """Parameter-free layers without counted operations (activations, max pooling, ...)."""

    kind = "free"
    types = FREE_TYPES
    channels = False

    def accepts(self, module: nn.Module) -> bool:
        return not list(module.parameters(recurse=False))


LAYER_RULES = LayerRules()
for _rule in (ConvRule(), DepthwiseRule(), LinearRule(), BatchNormRule(), AvgPoolRule(),
              AdaptiveAvgPoolRule(), FreeRule()):
    LAYER_RULES.register(_rule)


def free(kind: str) -> bool:
    """Whether layers of ``kind`` are parameter-free pass-throughs without channels."""
    return not LAYER_RULES.get(kind).channels


__all__ = [
    "FREE_TYPES", "IN", "LAYER_RULES", "OUT", "CostTerm", "LayerRule", "LayerRules", "free",
    "spatial",
]
