"""The pruning space of a model: its prunable channel groups, found with Torch-Pruning.

A *channel group* is a set of channel dimensions that must be pruned together (a conv's
filters, its BatchNorm, the next conv's input channels; for a residual stage every layer
that writes into or reads from the stream). Groups come from Torch-Pruning's
DependencyGraph, never from per-architecture rules. The space also records, for every layer
the forward pass runs, which channels of its input/output dimensions belong to which group
(``owner`` arrays): the masked evaluator, the sliced evaluator and the cost model all work
from that one table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from moprune.core.layers import LAYER_RULES, free, spatial
from moprune.errors import ConfigError, UnsupportedLayerError


@dataclass(frozen=True)
class SpacePolicy:
    """Which channel groups a search may prune.

    Args:
        residual: Also prune residual-stage groups (channels shared through additions, as in
            DeepPruningES); False keeps only internal groups (CCEP, EvoFC).
        min_channels: Channels a group always keeps; groups this small or smaller are fixed.
        exclude: Names of layers whose groups are never pruned.

    """

    residual: bool = False
    min_channels: int = 1
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.min_channels < 1:
            raise ConfigError(f"min_channels must be >= 1 (a group never drops to zero); got "
                             f"{self.min_channels}")
        if isinstance(self.exclude, str):
            raise TypeError(f"exclude must be a tuple of layer names, not the string "
                            f"{self.exclude!r}; write exclude=({self.exclude!r},)")


@dataclass(frozen=True)
class ChannelGroup:
    """One prunable channel group.

    Attributes:
        index: Position in the space.
        name: Name of the group's root layer (the first layer whose filters it prunes).
        size: Number of channels.
        residual: True when several layers write into these channels (a residual stream).
        layers: Names of every layer with a dimension in the group.

    """

    index: int
    name: str
    size: int
    residual: bool
    layers: tuple[str, ...]


@dataclass
class LayerInfo:
    """One layer as the forward pass runs it (shapes for a batch of one).

    Attributes:
        name: Qualified module name.
        kind: One of the kinds above.
        in_shape: Input shape of each call, batch 1.
        out_shape: Output shape of each call, batch 1.
        n_in: Size of the input channel dimension (``None`` for per-channel kinds).
        n_out: Size of the output (or the only) channel dimension.

    """

    name: str
    kind: str
    in_shapes: list[tuple[int, ...]] = field(default_factory=list)
    out_shapes: list[tuple[int, ...]] = field(default_factory=list)
    n_in: int | None = None
    n_out: int = 0


class PruningSpace:
    """Prunable channel groups of a model plus the layer table derived from them.

    Build with :meth:`from_model`. The space holds no reference to the model's tensors, only
    names and index arrays, so it is cheap to keep and to pickle.

    Attributes:
        groups: The prunable groups, in the order of the genome.
        layers: Every executed leaf layer, by name, in execution order.
        owner: ``(layer, dim) -> int64 array``; entry ``j`` is the global channel id (see
            ``offsets``) that index ``j`` of that dimension belongs to, or -1 when fixed.
            ``dim`` is ``"in"`` or ``"out"`` (per-channel layers only have ``"out"``).
        offsets: Start of each group in the flat channel vector; ``offsets[-1]`` is the total.
        output_layer: The layer producing the model output (never pruned).
        input_shape: ``(C, H, W)`` used for tracing.

    """

    def __init__(
        self,
        groups: list[ChannelGroup],
        layers: dict[str, LayerInfo],
        owner: dict[tuple[str, str], np.ndarray],
        output_layer: str,
        input_shape: tuple[int, ...],
        policy: SpacePolicy,
        all_groups: list[ChannelGroup],
    ) -> None:
        self.groups = groups
        self.layers = layers
        self.owner = owner
        self.output_layer = output_layer
        self.input_shape = input_shape
        self.policy = policy
        self.all_groups = all_groups
        self.sizes = np.array([g.size for g in groups], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

    @property
    def n_channels(self) -> int:
        """Total channels over all prunable groups (the length of a mask genome)."""
        return int(self.offsets[-1])

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    def group_slice(self, g: int) -> slice:
        """Slice of group ``g`` in the flat channel vector."""
        return slice(int(self.offsets[g]), int(self.offsets[g + 1]))

    def consumers(self) -> list[str]:
        """Layers with a prunable input dimension (where the masked evaluator puts gates)."""
        return [name for (name, dim), own in self.owner.items() if dim == "in" and (own >= 0).any()]

    def __repr__(self) -> str:
        return (f"PruningSpace({self.n_groups} groups, {self.n_channels} channels, "
                f"residual={self.policy.residual}, min_channels={self.policy.min_channels})")

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        input_shape: tuple[int, ...],
        policy: SpacePolicy | None = None,
    ) -> PruningSpace:
        """Trace ``model`` on a zero input of ``input_shape`` (C, H, W) and find its groups.

        Args:
            model: The network; it is traced, not modified (its mode is restored).
            input_shape: Shape of one input without the batch dimension.
            policy: Which groups may be pruned; default internal groups, 1 channel minimum.

        Returns:
            The pruning space.

        Raises:
            UnsupportedLayerError: A layer the cost model or evaluators cannot handle exactly.

        """
        policy = policy or SpacePolicy()
        was_training = model.training
        model.eval()
        try:
            return _build(model, tuple(input_shape), policy)
        finally:
            model.train(was_training)


def _build(model: nn.Module, input_shape: tuple[int, ...], policy: SpacePolicy) -> PruningSpace:
    layers: dict[str, LayerInfo] = {}
    gradfn_to_name: dict[object, str] = {}
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if name and LAYER_RULES.is_leaf(module):
            LAYER_RULES.classify(module, name)  # fail fast on unsupported layers

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        name = names[module]
        if name not in layers:
            layers[name] = LayerInfo(name=name, kind=LAYER_RULES.classify(module, name).kind)
        info = layers[name]
        info.in_shapes.append(tuple(inputs[0].shape))
        info.out_shapes.append(tuple(output.shape))
        if output.grad_fn is not None:
            gradfn_to_name[output.grad_fn] = name

    names = {m: n for n, m in modules.items()}
    handles = [m.register_forward_hook(hook) for n, m in modules.items()
               if n and LAYER_RULES.is_leaf(m)]
    captured: dict[str, torch.Tensor] = {}

    def forward_fn(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = m(x)
        captured["out"] = out
        return out

    param = next(model.parameters())
    example = torch.zeros((1, *input_shape), dtype=param.dtype, device=param.device)
    try:
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(
                model, example, forward_fn=forward_fn,
                customized_pruners=LAYER_RULES.pruners(), verbose=False,
            )
    except (ArithmeticError, IndexError, KeyError, AssertionError) as exc:
        raise UnsupportedLayerError(
            f"Torch-Pruning could not trace the channel dependencies of {type(model).__name__} "
            f"({type(exc).__name__}: {exc}); reshapes that mix channels (e.g. channel shuffles) "
            "are not supported."
        ) from exc
    finally:
        for h in handles:
            h.remove()
    out = captured["out"]
    output_layer = gradfn_to_name.get(out.grad_fn)
    if output_layer is None or not LAYER_RULES.get(layers[output_layer].kind).output:
        raise UnsupportedLayerError(
            "could not find the layer that produces the model output (expected the output to be "
            "returned directly by a Linear or Conv2d layer, e.g. the classifier)."
        )
    for info in layers.values():
        module = modules[info.name]
        info.n_out, info.n_in = LAYER_RULES.get(info.kind).dims(module, info)

    all_groups, owner = _collect_groups(dg, modules, names, gradfn_to_name, layers, output_layer)
    unknown = [name for name in policy.exclude if name not in layers]
    if unknown:
        raise ConfigError(f"SpacePolicy.exclude names layers the model does not run: {unknown}; "
                         f"valid names include {list(layers)[:8]} (see `moprune inspect`)")
    order = {name: i for i, name in enumerate(layers)}
    all_groups.sort(key=lambda entry: order.get(entry[0].name, len(order)))
    keep = [g for g in all_groups if _allowed(g, policy)]
    space = _finalise(keep, all_groups, owner, layers, output_layer, input_shape, policy)
    _verify(model, space, example)
    return space


def _verify(model: nn.Module, space: PruningSpace, example: torch.Tensor) -> None:
    """Check that gating and slicing agree on a random plan (they share the channel map).

    Reshapes that permute channels (a channel shuffle) are mapped wrongly by the dependency
    graph; the two evaluators then disagree or the sliced network fails to run.
    """
    if space.n_channels == 0:
        return
    from moprune.core.gated import GatedModel
    from moprune.core.sliced import SlicedModel

    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(space.n_channels, generator=gen) < 0.6
    for g in range(space.n_groups):  # keep at least one channel per group
        mask[int(space.offsets[g])] = True
    x = torch.randn(example.shape, generator=gen).to(example)
    try:
        with torch.no_grad():
            gated = GatedModel(model, space).forward(x, mask.unsqueeze(0))[0]
            sliced = SlicedModel(model, space).forward(x, mask)
        ok = torch.allclose(gated, sliced, rtol=1e-3, atol=1e-4 * (1 + float(gated.abs().max())))
    except RuntimeError:
        ok = False
    if not ok:
        raise UnsupportedLayerError(
            f"{type(model).__name__} couples channels in a way the dependency graph does not map "
            "exactly (e.g. a channel shuffle or a reshape across the channel dimension); its "
            "masked and sliced evaluations disagree. Exclude those layers with "
            "SpacePolicy(exclude=...) or use a model without such reshapes."
        )


def _collect_groups(dg, modules, names, gradfn_to_name, layers, output_layer):
    """Turn Torch-Pruning groups into ChannelGroups and per-dimension owner tables."""
    raw: list[tuple[ChannelGroup, list[tuple[str, str, np.ndarray, np.ndarray]]]] = []
    output_module = modules[output_layer]
    for tg in dg.get_all_groups(ignored_layers=[output_module],
                                root_module_types=LAYER_RULES.root_types()):
        bindings: list[tuple[str, str, np.ndarray, np.ndarray]] = []
        writers = set()
        for item in tg.items:
            dep = item.dep
            target = dep.target
            module = target.module
            if isinstance(module, nn.Module) and module in names and names[module] in layers:
                name = names[module]
            elif target.grad_fn in gradfn_to_name:  # parameter-free layer seen as element-wise
                name = gradfn_to_name[target.grad_fn]
            else:
                continue
            rule = LAYER_RULES.get(layers[name].kind)
            if not rule.channels:
                continue
            is_out = dg.is_out_channel_pruning_fn(dep.handler)
            dim = "out" if (is_out or layers[name].n_in is None) else "in"
            if is_out and rule.writer:
                writers.add(name)
            idxs = np.asarray(item.idxs, dtype=np.int64)
            roots = np.asarray(item.root_idxs, dtype=np.int64)
            bindings.append((name, dim, idxs, roots))
        root_name = names[tg[0].dep.target.module]
        size = len(tg[0].idxs)
        layer_names = tuple(dict.fromkeys(b[0] for b in bindings))
        group = ChannelGroup(index=-1, name=root_name, size=size, residual=len(writers) > 1,
                             layers=layer_names)
        raw.append((group, bindings))
    return raw, None


def _allowed(entry, policy: SpacePolicy) -> bool:
    group, _ = entry
    if group.residual and not policy.residual:
        return False
    if group.size <= policy.min_channels:
        return False
    return not any(layer in policy.exclude for layer in group.layers)


def _finalise(keep, all_raw, _owner, layers, output_layer, input_shape, policy) -> PruningSpace:
    groups: list[ChannelGroup] = []
    owner: dict[tuple[str, str], np.ndarray] = {}
    for info in layers.values():
        if free(info.kind):
            continue
        if info.n_in is not None:
            owner[(info.name, "in")] = np.full(info.n_in, -1, dtype=np.int64)
        owner[(info.name, "out")] = np.full(info.n_out, -1, dtype=np.int64)
    offset = 0
    for i, (group, bindings) in enumerate(keep):
        groups.append(ChannelGroup(index=i, name=group.name, size=group.size,
                                   residual=group.residual, layers=group.layers))
        for name, dim, idxs, roots in bindings:
            table = owner[(name, dim)]
            clash = table[idxs] >= 0
            ids = offset + roots
            if clash.any() and not np.array_equal(table[idxs][clash], ids[clash]):
                raise UnsupportedLayerError(
                    f"channels of layer {name!r} ({dim}) belong to two pruning groups; this "
                    "coupling is not supported."
                )
            table[idxs] = ids
        offset += group.size
    all_groups = [
        ChannelGroup(index=i, name=g.name, size=g.size, residual=g.residual, layers=g.layers)
        for i, (g, _) in enumerate(all_raw)
    ]
    return PruningSpace(groups, layers, owner, output_layer, input_shape, policy, all_groups)


__all__ = [
    "ChannelGroup", "LayerInfo", "PruningSpace", "SpacePolicy", "UnsupportedLayerError", "spatial",
]
