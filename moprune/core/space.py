"""The pruning space of a model: its prunable channel groups, found with Torch-Pruning.

A *channel group* is a set of channel dimensions that must be pruned together (a conv's
filters, its BatchNorm, the next conv's input channels; for a residual stage every layer
that writes into or reads from the stream). Groups come from Torch-Pruning's
DependencyGraph, never from per-architecture rules; a group is residual when an addition
joins two branches carrying its channels (data flow, not the number of writers: a
squeeze-and-excitation gate multiplies a block's own channels, which stay internal). A
group's genome has one gene per *unit*: a channel, or the channels a grouped convolution or
GroupNorm ties across its groups. The space also records, for every layer the forward pass
runs, which unit each channel of its input/output dimensions belongs to (``owner`` arrays):
the masked evaluator, the sliced evaluator and the cost model all work from that one table.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

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
        exclude: Names of layers (or of modules containing them) whose groups are never
            pruned. A layer moprune has no rule for may be excluded: it then runs unchanged
            in every plan and its cost is a constant, counted by thop.

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
        size: Number of units a plan keeps or drops: channels, or, where a grouped
            convolution or a GroupNorm ties channels across its groups, sets of tied channels.
        residual: True when an addition joins two branches carrying these channels (a
            residual stream); concatenations and multiplications (squeeze-and-excitation
            gates) do not make a group residual.
        layers: Names of every layer with a dimension in the group.
        units: Root-layer channel indices of each unit when channels are tied; empty when
            every unit is one channel (unit ``i`` = channel ``i``).

    """

    index: int
    name: str
    size: int
    residual: bool
    layers: tuple[str, ...]
    units: tuple[tuple[int, ...], ...] = ()

    @property
    def channels(self) -> int:
        """Channels of the root layer in the group (``size`` unless channels are tied)."""
        return sum(len(u) for u in self.units) if self.units else self.size

    def root_channels(self, units: np.ndarray) -> np.ndarray:
        """Root-layer channel indices of the given units."""
        units = np.asarray(units, dtype=np.int64)
        if not self.units or len(units) == 0:
            return units
        return np.sort(np.concatenate([np.asarray(self.units[u], dtype=np.int64)
                                       for u in units]))


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


def _excluded(name: str, exclude: tuple[str, ...]) -> bool:
    """Whether layer ``name`` is named in ``exclude`` or lies inside a module named there."""
    return any(name == e or name.startswith(e + ".") for e in exclude)


def _assign_rules(modules: dict[str, nn.Module], policy: SpacePolicy) -> dict[str, str]:
    """The layer kind of every traced module; ``"?"`` for parameter-free ones to decide.

    Traced: leaves, atomic modules, and modules with parameters of their own (a holder rule
    covers those, e.g. ConvNeXt's layer scale). A module without a rule is refused here,
    before any tracing, unless the policy excludes it (then it is opaque) or it has no
    parameters (then the trace decides whether it is an identity).
    """
    unknown = [e for e in policy.exclude if e not in modules]
    if unknown:
        raise ConfigError(f"SpacePolicy.exclude names modules the model does not have: "
                          f"{unknown}; valid names include {[n for n in modules if n][:8]} "
                          "(see `moprune inspect`)")
    kinds: dict[str, str] = {}
    for name, module in modules.items():
        if not name:
            continue
        own = list(module.parameters(recurse=False))
        leaf = LAYER_RULES.is_leaf(module)
        if not leaf and not own:
            continue
        rule = LAYER_RULES.rule_for(module)
        if rule is not None and (leaf or rule.holder or rule.atomic):
            kinds[name] = rule.kind
        elif _excluded(name, policy.exclude):
            kinds[name] = "opaque"
        elif leaf and not own:
            kinds[name] = "?"
        elif not leaf:
            raise UnsupportedLayerError(
                f"module {name!r} ({type(module).__name__}) has parameters of its own "
                f"({[n for n, _ in module.named_parameters(recurse=False)]}) besides its "
                "child layers, and no layer rule covers them. Register a "
                "moprune.core.layers.LayerRule with holder=True for its type, or leave it "
                f"out with SpacePolicy(exclude=({name!r},)).")
        else:
            _refuse(module, name)
    return kinds


def _refuse(module: nn.Module, name: str, why: str = "") -> None:
    """Raise the registry's refusal of a layer without a rule, offering to exclude it."""
    try:
        LAYER_RULES.classify(module, name)
    except UnsupportedLayerError as exc:
        raise UnsupportedLayerError(
            f"{exc}{why} To prune the rest of the model, leave it out with "
            f"SpacePolicy(exclude=({name!r},)) in the problem file's policy.") from None


def _build(model: nn.Module, input_shape: tuple[int, ...], policy: SpacePolicy) -> PruningSpace:
    layers: dict[str, LayerInfo] = {}
    gradfn_to_name: dict[object, str] = {}
    modules = dict(model.named_modules())
    kinds = _assign_rules(modules, policy)
    not_identity: set[str] = set()

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        name = names[module]
        if kinds[name] == "?" and not (inputs and output is inputs[0]):
            not_identity.add(name)
        if name not in layers:
            layers[name] = LayerInfo(name=name, kind=kinds[name])
        info = layers[name]
        info.in_shapes.append(tuple(inputs[0].shape) if inputs else ())
        info.out_shapes.append(tuple(output.shape))
        if output.grad_fn is not None and not _is_holder(kinds[name]):
            gradfn_to_name[output.grad_fn] = name

    names = {m: n for n, m in modules.items()}
    handles = [modules[n].register_forward_hook(hook) for n in kinds]
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
    _settle_identities(layers, modules, not_identity)
    out = captured["out"]
    output_layer = _output_layer(out, gradfn_to_name, layers)
    for info in layers.values():
        module = modules[info.name]
        info.n_out, info.n_in = LAYER_RULES.get(info.kind).dims(module, info)

    all_groups = _collect_groups(dg, modules, names, gradfn_to_name, layers, output_layer)
    order = {name: i for i, name in enumerate(layers)}
    all_groups.sort(key=lambda entry: order.get(entry.group.name, len(order)))
    keep = [g for g in all_groups if _allowed(g, policy)]
    space = _finalise(keep, all_groups, layers, output_layer, input_shape, policy)
    _verify(model, space, example)
    return space


def _is_holder(kind: str) -> bool:
    """Whether ``kind`` covers only a module's own parameters (its output is its children's)."""
    return kind != "?" and LAYER_RULES.get(kind).holder


def _settle_identities(layers: dict[str, LayerInfo], modules: dict[str, nn.Module],
                       not_identity: set[str]) -> None:
    """Parameter-free modules without a rule: identities in eval mode, or refused."""
    for name, info in layers.items():
        if info.kind != "?":
            continue
        if name in not_identity:
            _refuse(modules[name], name, " (It has no parameters but changed its input when "
                                         "traced in eval mode.)")
        info.kind = "identity"


def _output_layer(out: torch.Tensor, gradfn_to_name: dict[object, str],
                  layers: dict[str, LayerInfo]) -> str:
    """The layer whose output channels are the model's outputs (the classifier).

    Followed back from the model output through operations with one input (activations,
    pooling, flattening; SqueezeNet's head is a convolution, a ReLU, a pooling and a
    flatten) until a layer that may produce the output.
    """
    node = out.grad_fn
    for _ in range(64):
        if node is None:
            break
        name = gradfn_to_name.get(node)
        if name is not None:
            rule = LAYER_RULES.get(layers[name].kind)
            if rule.output:
                if out.dim() >= 1 and layers[name].out_shapes[-1][rule.channel_axis] == \
                        out.shape[-1]:
                    return name
                break
            if rule.root:
                break  # a layer that mixes channels but may not produce outputs
        inputs = [n for n, _ in node.next_functions
                  if n is not None and type(n).__name__ != "AccumulateGrad"]
        if len(inputs) != 1:
            break
        node = inputs[0]
    raise UnsupportedLayerError(
        "could not find the layer that produces the model output (expected a Linear or "
        "Conv2d layer whose output channels are the classes, followed at most by "
        "per-channel operations such as activations, pooling and flattening)."
    )


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


_JOINS = ("AddBackward0", "SubBackward0")


def _joins_branches(node) -> bool:
    """Whether a dependency-graph node adds (or subtracts) two branches: a residual join."""
    return type(node.grad_fn).__name__ in _JOINS and len(node.inputs) >= 2


@dataclass
class _RawGroup:
    """A Torch-Pruning group as the space reads it, before the policy picks groups."""

    group: ChannelGroup
    bindings: list[tuple[str, str, np.ndarray, np.ndarray]]
    unit_of: np.ndarray  # root channel index -> unit index
    tied_apart: bool = False  # ties cannot keep a grouped layer's groups equal: left whole


def _collect_groups(dg, modules, names, gradfn_to_name, layers, output_layer
                    ) -> list[_RawGroup]:
    """Turn Torch-Pruning groups into ChannelGroups with their per-layer bindings."""
    raw: list[_RawGroup] = []
    output_module = modules[output_layer]
    param_owner = {id(p): n for n, info in layers.items() if _is_holder(info.kind)
                   for p in modules[n].parameters(recurse=False)}
    for tg in dg.get_all_groups(ignored_layers=[output_module],
                                root_module_types=LAYER_RULES.root_types()):
        bindings: list[tuple[str, str, np.ndarray, np.ndarray]] = []
        members: list[str] = []
        residual = False
        for item in tg.items:
            dep = item.dep
            target = dep.target
            module = target.module
            residual = residual or _joins_branches(target)
            if isinstance(module, torch.Tensor):  # a parameter outside any layer (layer scale)
                name = param_owner.get(id(module))
            elif isinstance(module, nn.Module) and module in names and names[module] in layers:
                name = names[module]
            else:  # parameter-free layer seen as element-wise
                name = gradfn_to_name.get(target.grad_fn)
            if name is None:
                continue
            rule = LAYER_RULES.get(layers[name].kind)
            if rule.channels or layers[name].kind == "opaque":
                members.append(name)
            if not rule.channels:
                continue
            is_out = dg.is_out_channel_pruning_fn(dep.handler)
            dim = "out" if (is_out or layers[name].n_in is None) else "in"
            idxs = np.asarray(item.idxs, dtype=np.int64)
            roots = np.asarray(item.root_idxs, dtype=np.int64)
            bindings.append((name, dim, idxs, roots))
        root_name = names[tg[0].dep.target.module]
        n_root = len(tg[0].idxs)
        unit_of, units, tied_apart = _tie(bindings, modules, layers, n_root)
        group = ChannelGroup(index=-1, name=root_name, size=len(units) if units else n_root,
                             residual=residual, layers=tuple(dict.fromkeys(members)),
                             units=units)
        raw.append(_RawGroup(group, bindings, unit_of, tied_apart))
    return raw


def _tie(bindings, modules, layers, n_root: int
         ) -> tuple[np.ndarray, tuple[tuple[int, ...], ...], bool]:
    """Units of a group: root channels tied across the groups of grouped layers.

    A layer with ``G`` channel groups (a grouped convolution, a GroupNorm) keeps ``G`` equal
    groups only when each loses the channels at the same positions, so the channels at one
    position of every group form one unit (Torch-Pruning prunes them so too). Returns the
    unit of each root channel, the units (empty when no channel is tied) and whether the ties
    fail to give every grouped layer equal groups (then the group cannot be pruned).
    """
    parent = np.arange(n_root)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    grouped = []
    for name, dim, idxs, roots in bindings:
        g = LAYER_RULES.get(layers[name].kind).channel_groups(modules[name], dim)
        if g <= 1:
            continue
        n = layers[name].n_in if dim == "in" else layers[name].n_out
        width = n // g
        grouped.append((name, dim, idxs, roots, g, width))
        for p in np.unique(idxs % width):
            tied = roots[idxs % width == p]
            first = find(int(tied[0]))
            for r in tied[1:]:
                parent[find(int(r))] = first
    if not grouped:
        return np.arange(n_root, dtype=np.int64), (), False
    comps = np.array([find(i) for i in range(n_root)])
    _, starts, inverse = np.unique(comps, return_index=True, return_inverse=True)
    rank = np.empty(len(starts), dtype=np.int64)
    rank[np.argsort(starts)] = np.arange(len(starts))  # units numbered by their first channel
    unit_of = rank[inverse]
    units = tuple(tuple(int(r) for r in np.flatnonzero(unit_of == u))
                  for u in range(len(starts)))
    for _name, _dim, idxs, roots, g, width in grouped:
        for u in np.unique(unit_of[roots]):
            in_unit = idxs[unit_of[roots] == u]  # whole positions: one channel per group each
            if len(in_unit) != g * len(np.unique(in_unit % width)):
                return unit_of, units, True
    return unit_of, units, False


def _allowed(entry: _RawGroup, policy: SpacePolicy) -> bool:
    group = entry.group
    if entry.tied_apart:
        return False
    if group.residual and not policy.residual:
        return False
    if group.size <= policy.min_channels:
        return False
    return not any(_excluded(layer, policy.exclude) for layer in group.layers)


def _finalise(keep: list[_RawGroup], all_raw: list[_RawGroup], layers, output_layer,
              input_shape, policy) -> PruningSpace:
    groups: list[ChannelGroup] = []
    owner: dict[tuple[str, str], np.ndarray] = {}
    for info in layers.values():
        if free(info.kind):
            continue
        if info.n_in is not None:
            owner[(info.name, "in")] = np.full(info.n_in, -1, dtype=np.int64)
        owner[(info.name, "out")] = np.full(info.n_out, -1, dtype=np.int64)
    offset = 0
    for i, entry in enumerate(keep):
        group = entry.group
        groups.append(replace(group, index=i))
        for name, dim, idxs, roots in entry.bindings:
            table = owner[(name, dim)]
            clash = table[idxs] >= 0
            ids = offset + entry.unit_of[roots]
            if clash.any() and not np.array_equal(table[idxs][clash], ids[clash]):
                raise UnsupportedLayerError(
                    f"channels of layer {name!r} ({dim}) belong to two pruning groups; this "
                    "coupling is not supported."
                )
            table[idxs] = ids
        offset += group.size
    all_groups = [replace(entry.group, index=i) for i, entry in enumerate(all_raw)]
    return PruningSpace(groups, layers, owner, output_layer, input_shape, policy, all_groups)


__all__ = [
    "ChannelGroup", "LayerInfo", "PruningSpace", "SpacePolicy", "UnsupportedLayerError", "spatial",
]
