"""Evolved pruning functions: scoring, readable formulas, simplification, files, criteria.

A :class:`PruningFunction` is an expression over the terminals of
:mod:`moprune.criteria.gp.terminals` and the operators of
:mod:`moprune.criteria.gp.primitives`. The score of a channel is, summed over the classes
``c`` (one-vs-rest), the global mean of the expression's value (a scalar, vector or
matrix); channels written by several layers (shared residual channels) add their layers'
scores. Higher scores are more important.

Saved as JSON (``*.gp.json``) with the prefix expression (what is loaded), the readable
formula and the scoring settings; ``gp:<file>`` is the criterion that scores with it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from deap import gp
from torch import nn

from moprune.core.space import PruningSpace
from moprune.criteria.gp.primitives import (
    OPERATORS,
    TERMINALS,
    Interpreter,
    TreeError,
    _rank_rule,
    gmean,
    parse,
)
from moprune.criteria.gp.terminals import Activations, LayerActivations
from moprune.errors import ConfigError

FORMAT = "moprune-gp-function"
VERSION = 1
DATA_TERMINALS = frozenset(TERMINALS) - {"WI", "W"}


@dataclass(frozen=True)
class ScoreSettings:
    """How a function is evaluated on a network (part of the function's definition).

    Attributes:
        spatial: Feature maps are average-pooled to at most ``spatial x spatial``.
        max_classes: Classes compared (one-vs-rest), those with most samples in the batch.
        images: Training images in the batch of a criterion that uses this function.
        max_elements: Largest intermediate tensor (elements); channels are processed in
            chunks small enough for it.

    """

    spatial: int = 8
    max_classes: int = 10
    images: int = 320
    max_elements: int = 1 << 24

    def __post_init__(self) -> None:
        for name in ("spatial", "max_classes", "images", "max_elements"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or \
                    value < (2 if name == "max_classes" else 1):
                raise ConfigError(f"ScoreSettings.{name} must be a positive integer "
                                 f"(max_classes >= 2), got {getattr(self, name)!r}")


def reads_activations(tree: gp.PrimitiveTree) -> bool:
    """Whether the tree reads any terminal besides the filters (needs a forward pass)."""
    return any(isinstance(n, gp.Terminal) and n.name in DATA_TERMINALS for n in tree)


def capture(model: nn.Module, space: PruningSpace, images: torch.Tensor | None,
            labels: torch.Tensor | None, settings: ScoreSettings,
            needs_data: bool = True) -> Activations:
    """The activations every function of a population needs (one forward pass)."""
    if not needs_data:
        return Activations.weights_only(model, space)
    if images is None or labels is None:
        raise ConfigError("an evolved function that reads activations needs a labelled batch "
                         "of training images (ScoreContext.from_split)")
    return Activations.capture(model, space, images, labels, settings.spatial,
                               settings.max_classes)


def score_trees(trees: Sequence[gp.PrimitiveTree], acts: Activations,
                settings: ScoreSettings, time_limit: float | None = None,
                dtype: torch.dtype = torch.float64) -> list[np.ndarray | str]:
    """Scores of every channel for each tree, or why the tree failed.

    Layers are the outer loop so that the terminals of one layer are built once for all trees.
    ``time_limit`` (seconds) bounds each tree's total time; a tree over it, or one needing an
    intermediate value larger than ``settings.max_elements``, yields its error message.
    """
    out: list[np.ndarray | str] = [np.zeros(acts.n_channels) for _ in trees]
    spent = [0.0] * len(trees)

    def run(interp: Interpreter, layer: LayerActivations, start: int, stop: int) -> int:
        """Evaluate the live trees on channels [start, stop); the largest per-tree peak."""
        peak = 0
        for i, tree in enumerate(trees):
            if isinstance(out[i], str):
                continue
            t0 = time.perf_counter()
            interp.deadline = (t0 + time_limit - spent[i]) if time_limit else math.inf
            interp.peak = 0
            try:
                value = gmean(interp(tree)).sum(1)
            except TreeError as exc:
                out[i] = str(exc)
                continue
            finally:
                spent[i] += time.perf_counter() - t0
            peak = max(peak, interp.peak)
            np.add.at(out[i], layer.ids[start:stop],  # type: ignore[arg-type]
                      value.double().cpu().numpy())
        return peak

    for layer in acts.layers:
        shared: dict[str, torch.Tensor] = {}  # values that are the same for every channel
        # One channel first: its peak sizes the chunks of the others (all have equal shapes).
        peak = run(Interpreter(layer.terminals(0, 1, dtype), max_elements=settings.max_elements,
                               channels=1, layer_memo=shared), layer, 0, 1)
        chunk = max(1, settings.max_elements // max(peak, 1))
        for start in range(1, layer.n_channels, chunk):
            stop = min(start + chunk, layer.n_channels)
            run(Interpreter(layer.terminals(start, stop, dtype),
                            max_elements=settings.max_elements, channels=stop - start,
                            layer_memo=shared), layer, start, stop)
    return out


# --------------------------------------------------------------------------- formula


def _nested(tree: gp.PrimitiveTree, start: int = 0) -> tuple[tuple, int]:
    node = tree[start]
    if isinstance(node, gp.Terminal):
        return (node.name,), start + 1
    kids = []
    end = start + 1
    for _ in range(node.arity):
        kid, end = _nested(tree, end)
        kids.append(kid)
    return (node.name, *kids), end


def _prefix(node: tuple) -> str:
    if len(node) == 1:
        return node[0]
    return f"{node[0]}({', '.join(_prefix(k) for k in node[1:])})"


def _render(node: tuple) -> tuple[str, int]:
    if len(node) == 1:
        return node[0], 10
    op = OPERATORS[node[0]]
    parts = [_render(k) for k in node[1:]]
    if op.precedence >= 9 or op.template.startswith("|"):
        return op.template.format(*(p for p, _ in parts)), 9
    args = []
    for i, (text, prec) in enumerate(parts):
        tight = prec < op.precedence or (i > 0 and prec <= op.precedence and op.arity == 2)
        args.append(f"({text})" if tight and prec < 9 else text)
    return op.template.format(*args), op.precedence


def render(expression: str) -> str:
    """Readable infix formula of a prefix expression (per channel and class)."""
    text, _ = _render(_nested(parse(expression))[0])
    return text


NONNEGATIVE = frozenset({"abs", "square", "sqrt", "std", "var", "count"})
SCALAR_IDENTITY = frozenset({"mean", "sum", "tr", "transpose", "mean0", "gm"})


def _rank(node: tuple) -> int | None:
    if len(node) == 1:
        return TERMINALS[node[0]]
    return _rank_rule(node[0], [_rank(k) for k in node[1:]])


def _simplify(node: tuple) -> tuple:
    if len(node) == 1:
        return node
    node = (node[0], *(_simplify(k) for k in node[1:]))
    name, kid = node[0], node[1]
    if len(node) == 2:
        r = _rank(kid)
        if name == "transpose" and (kid[0] == "transpose" or r in (0, 1)):
            return kid[1] if kid[0] == "transpose" else kid
        if name == "abs" and kid[0] in NONNEGATIVE:
            return kid
        if name in ("sqrt", "square") and kid[0] == "abs":
            return (name, kid[1])
        if name in SCALAR_IDENTITY and r == 0:
            return kid
        if name == "gm" and r == 1:
            return kid
    return node


def simplify(expression: str) -> str:
    """An equivalent, shorter expression: the same scores on every input (exact rewrites).

    Removes double transposes, ``abs`` of non-negative values, ``abs`` under ``sqrt``
    and ``square``, reductions of values that are already scalars, and a global mean at the
    root (the score takes the global mean anyway).
    """
    node = _simplify(_nested(parse(expression))[0])
    while node[0] == "mean":
        node = node[1]
    return _prefix(node)


# --------------------------------------------------------------------------- the function


@dataclass(frozen=True)
class PruningFunction:
    """A channel-importance function given as an expression tree.

    Attributes:
        expression: Prefix expression over the operators and terminals.
        settings: How it is evaluated (pooling, classes, batch size).
        name: A short label (shown in docs and plots).
        info: Free metadata saved with it (fitness, origin).

    """

    expression: str
    settings: ScoreSettings = field(default_factory=ScoreSettings)
    name: str = "evolved"
    info: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        parse(self.expression)  # fail early with a clear message

    @property
    def tree(self) -> gp.PrimitiveTree:
        return parse(self.expression)

    @property
    def formula(self) -> str:
        return render(self.expression)

    @property
    def needs_data(self) -> bool:
        return reads_activations(self.tree)

    def simplified(self) -> PruningFunction:
        return replace(self, expression=simplify(self.expression))

    def score(self, model: nn.Module, space: PruningSpace, context=None) -> np.ndarray:
        """Scores of every channel of ``space`` (a criterion function)."""
        images = None if context is None else context.images
        labels = None if context is None else context.labels
        acts = capture(model, space, images, labels, self.settings, self.needs_data)
        (scores,) = score_trees([self.tree], acts, self.settings)
        if isinstance(scores, str):
            raise ConfigError(f"pruning function {self.name!r} failed on this network: {scores}")
        return scores

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "name": self.name,
                "expression": self.expression,
                "formula": f"score(channel) = sum over classes c of mean[ {self.formula} ]",
                "settings": asdict(self.settings), "info": self.info}

    def save(self, path: str | Path) -> Path:
        """Write the function as JSON (a temporary file renamed into place)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(path)
        return path


def load_function(path: str | Path) -> PruningFunction:
    """Read a function saved by :meth:`PruningFunction.save`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no pruning-function file {str(path)!r}; write one with "
                                "`moprune evolve` or PruningFunction.save")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{str(path)!r} is not JSON ({exc}); expected a file written by "
                         "`moprune evolve`") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{str(path)!r} is not a pruning-function file (expected "
                         f"\"format\": {FORMAT!r})")
    if data.get("version") != VERSION:
        raise ConfigError(f"{str(path)!r} has version {data.get('version')!r}; this moprune "
                         f"reads version {VERSION}")
    expression, info = data.get("expression"), data.get("info", {})
    if not isinstance(expression, str) or not isinstance(info, dict):
        raise ConfigError(f"{str(path)!r} needs an \"expression\" string (and \"info\", if "
                         "given, must be an object)")
    try:
        settings = ScoreSettings(**data.get("settings", {}))
    except TypeError as exc:
        raise ConfigError(f"{str(path)!r}: bad settings ({exc})") from None
    return PruningFunction(expression, settings, str(data.get("name", path.stem)), info)


__all__ = ["PruningFunction", "ScoreSettings", "capture", "load_function", "render",
           "score_trees", "simplify"]
