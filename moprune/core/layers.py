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
        filters: Its weight rows are output filters, which criteria score.
        trained: Weight inheritance trains its sliced tensors.
        output: It may produce the model output (the classifier).
        atomic: Traced as one layer even when it has child modules.
        holder: The rule covers only the module's own parameters (e.g. a block's layer scale);
            its child modules are traced as layers of their own.
        opaque: Not matched by type: the space assigns the rule to layers it does not look
            into (eval-time identities, excluded unsupported layers).
        channel_axis: Axis of the channel dimension in the layer's input and output: 1 for
            NCHW layers, -1 for layers over the last axis (``nn.Linear``, ``nn.LayerNorm``).
        normalizes: The layer's statistics run over its channels (``nn.LayerNorm``,
            ``nn.GroupNorm``): the masked evaluator recomputes them over the kept channels
            with :meth:`gated_forward`.
        tensors: ``{attribute: dimension per axis}`` of the tensors sliced to kept channels,
            e.g. ``{"weight": ("out", "in"), "bias": ("out",)}``; the default slicing and
            weight inheritance's write-back follow it.

    """

    kind: ClassVar[str] = ""
    types: ClassVar[tuple[type[nn.Module], ...]] = ()
    channels: ClassVar[bool] = True
    root: ClassVar[bool] = False
    filters: ClassVar[bool] = False
    trained: ClassVar[bool] = False
    output: ClassVar[bool] = False
    atomic: ClassVar[bool] = False
    holder: ClassVar[bool] = False
    opaque: ClassVar[bool] = False
    channel_axis: ClassVar[int] = 1
    normalizes: ClassVar[bool] = False
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
        """Cost terms of the layer as traced (``info`` holds its input/output shapes).

        A term with no dimensions (``dims=()``) is a constant.
        """
        return []

    def channel_groups(self, module: nn.Module, dim: str) -> int:
        """Channel groups ``G`` of a dimension whose channels are pruned in step across groups.

        A grouped convolution (or a GroupNorm) with ``G`` groups stays a layer of ``G`` equal
        groups only when every group loses the channels at the same positions; the space ties
        those channels into one unit of its genome (Torch-Pruning's rule). Default 1.
        """
        return 1

    def kept(self, module: nn.Module, attr: str, axis: int, k_in: torch.Tensor | None,
             k_out: torch.Tensor | None) -> torch.Tensor | None:
        """Indices kept along ``axis`` of tensor ``attr`` (None: the axis stays whole).

        The default reads :attr:`tensors`: the kept output or input channels.
        """
        return k_out if self.tensors[attr][axis] == OUT else k_in

    def slice(self, module: nn.Module, k_in: torch.Tensor | None, k_out: torch.Tensor | None
              ) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
        """Tensors sliced to the kept channels, and module attributes to patch while they run.

        The default slices every entry of :attr:`tensors` along its axes (:meth:`kept`;
        keeping a channels-last weight channels-last) and patches :meth:`patch`.
        """
        out: dict[str, torch.Tensor] = {}
        for attr, axes in self.tensors.items():
            value = getattr(module, attr)
            if value is None:
                continue
            sliced = value
            for axis in range(len(axes)):
                keep = self.kept(module, attr, axis, k_in, k_out)
                if keep is not None:
                    sliced = sliced.index_select(axis, keep)
            if sliced.dim() == 4 and value.is_contiguous(memory_format=torch.channels_last):
                sliced = sliced.contiguous(memory_format=torch.channels_last)  # the model's layout
            out[attr] = sliced
        return out, self.patch(module, k_in, k_out)

    def patch(self, module: nn.Module, k_in: torch.Tensor | None,
              k_out: torch.Tensor | None) -> dict[str, object]:
        """Module attributes to set while the sliced tensors run (default: none)."""
        return {}

    def gated_forward(self, module: nn.Module, x: torch.Tensor, gate: torch.Tensor
                      ) -> torch.Tensor:
        """Output of a :attr:`normalizes` layer with statistics over the gated-on channels.

        ``x`` is the tiled input ``(P * B, ...)``, ``gate`` the 0/1 gates ``(P, C)`` of its
        channels; the result must equal, on kept channels, the layer pruned to them.
        """
        raise NotImplementedError(f"layer kind {self.kind!r} normalizes over channels but "
                                  "defines no gated_forward")

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
        if not rule.types and not rule.opaque:
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
    root = filters = trained = output = True
    tensors = {"weight": (OUT, IN), "bias": (OUT,)}

    def accepts(self, module: nn.Module) -> bool:
        return bool(module.groups == 1)

    def describe(self) -> str:
        return "Conv2d"

    def dims(self, module: nn.Module, info: LayerInfo) -> tuple[int, int | None]:
        return module.out_channels, module.in_channels  # type: ignore[return-value]

    def cost(self, module: nn.Module, info: LayerInfo) -> list[CostTerm]:
        kk = math.prod(module.kernel_size)  # type: ignore[arg-type]
        macs = sum(spatial(s) for s in info.out_shapes) * kk
        terms = [CostTerm((IN, OUT), float(macs), float(kk))]
        if module.bias is not None:
            terms.append(CostTerm((OUT,), 0.0, 1.0))
        return terms


class GroupedConvRule(LayerRule):
    """A grouped ``nn.Conv2d`` (``1 < groups``, not depthwise): ResNeXt, RegNet.

    It keeps its ``G`` groups: input and output channels are pruned at the same positions
    in every group (:meth:`channel_groups`), so the kept weight is ``(K_out, K_in / G, k, k)``.
    """

    kind = "grouped_conv"
    types = (nn.Conv2d,)
    root = filters = trained = output = True
    tensors = {"weight": (OUT, IN), "bias": (OUT,)}

    def accepts(self, module: nn.Module) -> bool:
        assert isinstance(module, nn.Conv2d)
        m = module
        return bool(m.groups > 1 and not m.groups == m.in_channels == m.out_channels)

    def describe(self) -> str:
        return "grouped Conv2d"

    def dims(self, module: nn.Module, info: LayerInfo) -> tuple[int, int | None]:
        assert isinstance(module, nn.Conv2d)
        return module.out_channels, module.in_channels

    def channel_groups(self, module: nn.Module, dim: str) -> int:
        assert isinstance(module, nn.Conv2d)
        return module.groups

    def kept(self, module: nn.Module, attr: str, axis: int, k_in: torch.Tensor | None,
             k_out: torch.Tensor | None) -> torch.Tensor | None:
        assert isinstance(module, nn.Conv2d)
        if attr == "weight" and axis == 1:  # positions within a group: those of group 0
            return None if k_in is None else k_in[: len(k_in) // module.groups]
        return super().kept(module, attr, axis, k_in, k_out)

    def cost(self, module: nn.Module, info: LayerInfo) -> list[CostTerm]:
        assert isinstance(module, nn.Conv2d)
        kk = math.prod(module.kernel_size)
        g = module.groups
        macs = sum(spatial(s) for s in info.out_shapes) * kk
        terms = [CostTerm((IN, OUT), macs / g, kk / g)]
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
              k_out: torch.Tensor | None) -> dict[str, object]:
        return {"groups": len(k_out)} if k_out is not None else {}


class LinearRule(LayerRule):
    """``nn.Linear``."""

    kind = "linear"
    types = (nn.Linear,)
    root = filters = trained = output = True
    channel_axis = -1
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


def _normalization_cost(module: nn.Module, info: LayerInfo, affine: bool) -> list[CostTerm]:
    """Thop's count for a normalisation: 2 (4 with an affine map) per input element."""
    per = 4 if affine else 2
    axis = LAYER_RULES.get(info.kind).channel_axis
    channels = info.in_shapes[0][axis]
    macs = sum(per * math.prod(s) // channels for s in info.in_shapes)
    return [CostTerm((OUT,), float(macs), 2.0 if affine else 0.0)]


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
        return _normalization_cost(module, info, bool(module.affine))


def _masked_moments(x: torch.Tensor, gate: torch.Tensor, dims: tuple[int, ...]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance of ``x`` over ``dims``, counting only gated-on channels."""
    count = gate.expand_as(x).sum(dims, keepdim=True)
    mean = (x * gate).sum(dims, keepdim=True) / count
    var = ((x - mean) ** 2 * gate).sum(dims, keepdim=True) / count
    return mean, var


class LayerNormRule(LayerRule):
    """``nn.LayerNorm`` over the channels, the last axis (ConvNeXt's blocks run NHWC).

    Its statistics run over the channels: pruned channels leave them, so the masked
    evaluator recomputes them over the kept channels (:meth:`gated_forward`).
    """

    kind = "layernorm"
    types = (nn.LayerNorm,)
    trained = normalizes = True
    channel_axis = -1
    tensors = {"weight": (OUT,), "bias": (OUT,)}

    def accepts(self, module: nn.Module) -> bool:
        return len(module.normalized_shape) == 1  # type: ignore[arg-type]

    def rejection(self, module: nn.Module) -> str:
        return (f"a LayerNorm over {tuple(module.normalized_shape)}; only a LayerNorm over "  # type: ignore[arg-type]
                "the channel axis alone (normalized_shape of length 1) is supported")

    def describe(self) -> str:
        return "LayerNorm (over channels)"

    def dims(self, module: nn.Module, info: LayerInfo) -> tuple[int, int | None]:
        return int(module.normalized_shape[0]), None  # type: ignore[index]

    def cost(self, module: nn.Module, info: LayerInfo) -> list[CostTerm]:
        return _normalization_cost(module, info, bool(module.elementwise_affine))

    def patch(self, module: nn.Module, k_in: torch.Tensor | None,
              k_out: torch.Tensor | None) -> dict[str, object]:
        return {"normalized_shape": (len(k_out),)} if k_out is not None else {}

    def gated_forward(self, module: nn.Module, x: torch.Tensor, gate: torch.Tensor
                      ) -> torch.Tensor:
        assert isinstance(module, nn.LayerNorm)
        axis = self.channel_axis % x.dim()
        n_pop = gate.shape[0]
        xv = x.view(n_pop, x.shape[0] // n_pop, *x.shape[1:])
        shape = [n_pop] + [1] * x.dim()
        shape[axis + 1] = gate.shape[1]
        g = gate.to(x.dtype).view(shape)
        mean, var = _masked_moments(xv, g, (axis + 1,))
        y = (xv - mean) * torch.rsqrt(var + module.eps)
        wshape = [1] * (x.dim() + 1)
        wshape[axis + 1] = gate.shape[1]
        if module.weight is not None:
            y = y * module.weight.view(wshape)
        if module.bias is not None:
            y = y + module.bias.view(wshape)
        return y.view_as(x)


class GroupNormRule(LayerRule):
    """``nn.GroupNorm``: its ``G`` groups lose channels at the same positions.

    Statistics run per group over the group's channels: the masked evaluator recomputes them
    over the kept ones (:meth:`gated_forward`).
    """

    kind = "groupnorm"
    types = (nn.GroupNorm,)
    trained = normalizes = True
    tensors = {"weight": (OUT,), "bias": (OUT,)}

    def describe(self) -> str:
        return "GroupNorm"

    def dims(self, module: nn.Module, info: LayerInfo) -> tuple[int, int | None]:
        return int(module.num_channels), None  # type: ignore[arg-type]

    def channel_groups(self, module: nn.Module, dim: str) -> int:
        return int(module.num_groups)  # type: ignore[arg-type]

    def cost(self, module: nn.Module, info: LayerInfo) -> list[CostTerm]:
        return _normalization_cost(module, info, bool(module.affine))

    def patch(self, module: nn.Module, k_in: torch.Tensor | None,
              k_out: torch.Tensor | None) -> dict[str, object]:
        return {"num_channels": len(k_out)} if k_out is not None else {}

    def gated_forward(self, module: nn.Module, x: torch.Tensor, gate: torch.Tensor
                      ) -> torch.Tensor:
        assert isinstance(module, nn.GroupNorm)
        n_pop, c, g = gate.shape[0], x.shape[1], module.num_groups
        rest = x.shape[2:]
        xv = x.view(n_pop, x.shape[0] // n_pop, g, c // g, *rest)
        gv = gate.to(x.dtype).view(n_pop, 1, g, c // g, *([1] * len(rest)))
        mean, var = _masked_moments(xv, gv, tuple(range(3, xv.dim())))
        y = ((xv - mean) * torch.rsqrt(var + module.eps)).view(n_pop, -1, c, *rest)
        if module.affine:
            wshape = (1, 1, c) + (1,) * len(rest)
            y = y * module.weight.view(wshape) + module.bias.view(wshape)
        return y.view_as(x)


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


class IdentityRule(LayerRule):
    """A parameter-free module without a rule that is an identity in eval mode.

    ``StochasticDepth`` and custom dropouts return their input unchanged when traced in eval
    mode; the space assigns them this kind.
    """

    kind = "identity"
    channels = False
    opaque = True

    def describe(self) -> str:
        return "any parameter-free module that is an identity in eval mode"


class OpaqueRule(LayerRule):
    """A layer without a rule that the user excluded (``SpacePolicy(exclude=...)``).

    The space keeps every channel group it touches whole, so it runs unchanged in every
    plan: its cost is a constant, counted by thop on its traced inputs.
    """

    kind = "opaque"
    channels = False
    opaque = True

    def describe(self) -> str:
        return "any layer named in SpacePolicy.exclude (kept whole, cost counted by thop)"

    def cost(self, module: nn.Module, info: LayerInfo) -> list[CostTerm]:
        if list(module.children()):  # a block's own parameters; its layers count themselves
            return [CostTerm((), 0.0, float(sum(p.numel()
                                                for p in module.parameters(recurse=False))))]
        import thop  # noqa: PLC0415 - only spaces with excluded unsupported layers need it

        macs = 0.0
        param = next(module.parameters(), None)
        for shape in info.in_shapes:
            x = torch.zeros(shape, dtype=param.dtype if param is not None else torch.float32,
                            device=param.device if param is not None else "cpu")
            ops, _ = thop.profile(module, (x,), custom_ops=LAYER_RULES.thop_ops(),
                                  verbose=False)
            macs += float(ops)
        params = float(sum(p.numel() for p in module.parameters()))
        return [CostTerm((), macs, params)]


LAYER_RULES = LayerRules()
for _rule in (ConvRule(), GroupedConvRule(), DepthwiseRule(), LinearRule(), BatchNormRule(),
              LayerNormRule(), GroupNormRule(), AvgPoolRule(), AdaptiveAvgPoolRule(), FreeRule(),
              IdentityRule(), OpaqueRule()):
    LAYER_RULES.register(_rule)


def free(kind: str) -> bool:
    """Whether layers of ``kind`` are parameter-free pass-throughs without channels."""
    return not LAYER_RULES.get(kind).channels


__all__ = [
    "FREE_TYPES", "IN", "LAYER_RULES", "OUT", "CostTerm", "LayerRule", "LayerRules", "free",
    "spatial",
]
