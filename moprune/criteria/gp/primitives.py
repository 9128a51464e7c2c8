"""The 21 shape-safe, protected operators of evolved pruning functions, and their interpreter.

A pruning function is an expression tree (a DEAP ``PrimitiveTree``) over the terminals of
:mod:`moprune.criteria.gp.terminals`. It is evaluated for many channels and classes at once: every
value is a tensor whose first two dimensions are the *batch* (channel, class) and whose
remaining zero, one or two dimensions are the *item* (a scalar, a vector or a matrix).

Every operator accepts items of any rank and shape and returns a finite-size item:

- element-wise operators (``add sub mul div``) broadcast the items when their shapes allow
  it (aligned on the right, like numpy); otherwise both operands are first reduced to their
  global means;
- ``matmul`` is the matrix/vector product when the inner sizes agree, a product with a
  scalar when either operand is a scalar, and the product of the global means otherwise;
- ``div`` returns 0 where ``|b| <= 1e-12``; ``sqrt`` is ``sqrt(|a|)``; ``inv`` is the ridge
  inverse ``(A + 1e-3 I)^-1`` (ridge pseudo-inverse for non-square matrices,
  ``a / (a^2 + 1e-3)`` for vectors and scalars).

Operators that ignore the batch (a tensor expanded along a batch dimension, such as the
layer's filters ``W``) are computed once per distinct batch entry and expanded again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from deap import gp

from moprune.errors import ConfigError

NB = 2  # batch dimensions: (channel, class)
RIDGE = 1e-3
DIV_EPS = 1e-12
GM_ITERATIONS = 25


class TreeError(ValueError):
    """A tree cannot be evaluated within the limits (time, memory)."""


def rank(t: torch.Tensor) -> int:
    """Rank of the item (0 scalar, 1 vector, 2 matrix)."""
    return t.dim() - NB


def _item_dims(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(NB, t.dim()))


def gmean(t: torch.Tensor) -> torch.Tensor:
    """Global mean of each item (a scalar item)."""
    return t.mean(dim=_item_dims(t)) if rank(t) else t


def gsum(t: torch.Tensor) -> torch.Tensor:
    return t.sum(dim=_item_dims(t)) if rank(t) else t


def gvar(t: torch.Tensor) -> torch.Tensor:
    """Population variance of each item's entries (0 for a scalar)."""
    if rank(t) == 0:
        return torch.zeros_like(t)
    return torch.var(t, dim=_item_dims(t), correction=0)


def gstd(t: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(gvar(t))


def _align(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both operands with broadcastable items, or both reduced to their global means."""
    ia, ib = a.shape[NB:], b.shape[NB:]
    try:
        torch.broadcast_shapes(ia, ib)
    except RuntimeError:
        return gmean(a), gmean(b)
    r = max(len(ia), len(ib))
    a = a.reshape(a.shape[:NB] + (1,) * (r - len(ia)) + ia)
    b = b.reshape(b.shape[:NB] + (1,) * (r - len(ib)) + ib)
    return a, b


def add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = _align(a, b)
    return a + b


def sub(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = _align(a, b)
    return a - b


def mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = _align(a, b)
    return a * b


def div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Protected division: ``a / b``, and 0 where ``|b| <= 1e-12``."""
    a, b = _align(a, b)
    ok = b.abs() > DIV_EPS
    return torch.where(ok, a / torch.where(ok, b, torch.ones_like(b)), torch.zeros_like(a + b))


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Matrix, matrix-vector or dot product; see the module docstring for the fallbacks."""
    ra, rb = rank(a), rank(b)
    if ra == 0 or rb == 0:
        return mul(a, b)
    if ra == 2 and rb == 2 and a.shape[-1] == b.shape[-2]:
        return a @ b
    if ra == 2 and rb == 1 and a.shape[-1] == b.shape[-1]:
        return (a @ b.unsqueeze(-1)).squeeze(-1)
    if ra == 1 and rb == 2 and a.shape[-1] == b.shape[-2]:
        return (a.unsqueeze(-2) @ b).squeeze(-2)
    if ra == 1 and rb == 1 and a.shape[-1] == b.shape[-1]:
        return (a * b).sum(-1)
    return gmean(a) * gmean(b)


def outer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Outer product of two vectors; element-wise product (``mul``) otherwise."""
    if rank(a) == 1 and rank(b) == 1:
        return a.unsqueeze(-1) * b.unsqueeze(-2)
    return mul(a, b)


def _ridge_inverse(m: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
    inv, info = torch.linalg.inv_ex(m + RIDGE * eye)
    return torch.where((info == 0)[..., None, None], inv, torch.zeros_like(inv))


def inv(a: torch.Tensor) -> torch.Tensor:
    """Ridge-regularised inverse (pseudo-inverse for non-square matrices)."""
    if rank(a) < 2:
        return a / (a * a + RIDGE)
    n, m = a.shape[-2:]
    at = a.transpose(-1, -2)
    if n == m:
        return _ridge_inverse(a)
    if n > m:
        return _ridge_inverse(at @ a) @ at
    return at @ _ridge_inverse(a @ at)


def transpose(a: torch.Tensor) -> torch.Tensor:
    return a.transpose(-1, -2) if rank(a) == 2 else a


def trace(a: torch.Tensor) -> torch.Tensor:
    """Sum of the diagonal (of ``diag(a)`` for a vector: its sum)."""
    r = rank(a)
    if r == 2:
        return torch.diagonal(a, dim1=-2, dim2=-1).sum(-1)
    return a.sum(-1) if r == 1 else a


def mean_rows(a: torch.Tensor) -> torch.Tensor:
    """Mean along the first item axis (over samples for a feature-map matrix)."""
    return a.mean(dim=NB) if rank(a) else a


def count(a: torch.Tensor) -> torch.Tensor:
    """Number of rows (samples) of a matrix, length of a vector, 1 for a scalar."""
    n = a.shape[NB] if rank(a) else 1
    return torch.full(a.shape[:NB], float(n), dtype=a.dtype, device=a.device)


def psqrt(a: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(a.abs())


def square(a: torch.Tensor) -> torch.Tensor:
    return a * a


def plus_1e4(a: torch.Tensor) -> torch.Tensor:
    return a + 1e-4


def plus_005(a: torch.Tensor) -> torch.Tensor:
    return a + 0.05


def geometric_median(a: torch.Tensor) -> torch.Tensor:
    """Geometric median of a matrix's rows (Weiszfeld, 25 steps from the mean)."""
    if rank(a) < 2:
        return a
    y = a.mean(dim=-2)
    for _ in range(GM_ITERATIONS):
        d = (a - y.unsqueeze(-2)).norm(dim=-1).clamp_min(1e-8)
        w = 1.0 / d
        y = (w.unsqueeze(-1) * a).sum(-2) / w.sum(-1, keepdim=True)
    return y


@dataclass(frozen=True)
class Op:
    """One operator: its function, arity and how the formula shows it."""

    fn: Callable[..., torch.Tensor]
    arity: int
    template: str  # str.format template over the rendered arguments
    precedence: int  # binding strength of the rendered result (higher binds tighter)


OPERATORS: dict[str, Op] = {
    "tr": Op(trace, 1, "tr({0})", 9),
    "matmul": Op(matmul, 2, "{0} @ {1}", 2),
    "inv": Op(inv, 1, "inv({0})", 9),
    "add": Op(add, 2, "{0} + {1}", 1),
    "sub": Op(sub, 2, "{0} - {1}", 1),
    "mul": Op(mul, 2, "{0} * {1}", 2),
    "outer": Op(outer, 2, "outer({0}, {1})", 9),
    "transpose": Op(transpose, 1, "{0}^T", 3),
    "mean": Op(gmean, 1, "mean({0})", 9),
    "mean0": Op(mean_rows, 1, "mean_0({0})", 9),
    "sum": Op(gsum, 1, "sum({0})", 9),
    "std": Op(gstd, 1, "std({0})", 9),
    "var": Op(gvar, 1, "var({0})", 9),
    "div": Op(div, 2, "{0} / {1}", 2),
    "abs": Op(torch.abs, 1, "|{0}|", 9),
    "square": Op(square, 1, "{0}^2", 3),
    "count": Op(count, 1, "count({0})", 9),
    "sqrt": Op(psqrt, 1, "sqrt({0})", 9),
    "plus_1e4": Op(plus_1e4, 1, "{0} + 1e-4", 1),
    "plus_005": Op(plus_005, 1, "{0} + 0.05", 1),
    "gm": Op(geometric_median, 1, "gm({0})", 9),
}

# Terminal name -> item rank (see moprune.criteria.gp.terminals for their meaning).
TERMINALS: dict[str, int] = {"P": 2, "Q": 2, "N": 0, "X": 2, "mX": 1, "mP": 1, "mQ": 1,
                             "WI": 1, "W": 2}


def make_pset() -> gp.PrimitiveSet:
    """The DEAP primitive set: 21 operators and 9 terminals (loosely typed)."""
    pset = gp.PrimitiveSet("pruning", 0)
    for name, op in OPERATORS.items():
        pset.addPrimitive(op.fn, op.arity, name=name)
    for name in TERMINALS:
        pset.addTerminal(name, name=name)
    return pset


PSET = make_pset()


def parse(expression: str) -> gp.PrimitiveTree:
    """Parse a prefix expression such as ``div(var(P), plus_005(var(Q)))``."""
    help_ = f"operators: {', '.join(OPERATORS)}; terminals: {', '.join(TERMINALS)}"
    try:
        tree = gp.PrimitiveTree.from_string(expression, PSET)
    except (TypeError, KeyError, IndexError, ValueError, SyntaxError) as exc:
        raise ConfigError(f"not a pruning-function expression: {expression!r} ({exc}); "
                         f"{help_}") from None
    for node in tree:
        if node.name not in OPERATORS and node.name not in TERMINALS:
            raise ConfigError(f"{expression!r}: {node.name!r} is neither an operator nor a "
                             f"terminal (no numeric constants); {help_}")
    need = 1
    for i, node in enumerate(tree):
        need += node.arity - 1
        if need == 0 and i != len(tree) - 1:
            raise ConfigError(f"{expression!r} has tokens after a complete expression")
    if need != 0:
        raise ConfigError(f"not a complete expression: {expression!r}")
    return tree


def _dedup(args: list[torch.Tensor]) -> tuple[list[torch.Tensor], tuple[int, ...]]:
    """Narrow batch dims along which every argument is expanded (stride 0) to size 1."""
    shape = args[0].shape[:NB]
    shared = tuple(d for d in range(NB) if shape[d] > 1 and all(
        a.shape[d] == shape[d] and a.stride(d) == 0 for a in args))
    if not shared:
        return args, ()
    return [_narrow(a, shared) for a in args], shared


def _narrow(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    for d in dims:
        t = t.narrow(d, 0, 1)
    return t


def _expand(t: torch.Tensor, batch: torch.Size) -> torch.Tensor:
    return t.expand(tuple(batch) + tuple(t.shape[NB:]))


class Interpreter:
    """Evaluates trees on one set of terminals, with a deadline and an element budget.

    Args:
        terminals: Name -> tensor (batch dims first) or a callable building it lazily.
        deadline: ``time.perf_counter()`` value after which evaluation stops.
        max_elements: Largest intermediate tensor allowed (elements actually stored).

    """

    def __init__(self, terminals: Mapping[str, Callable[[], torch.Tensor]],
                 deadline: float = float("inf"), max_elements: int = 1 << 26,
                 channels: int = 1, layer_memo: dict[str, torch.Tensor] | None = None) -> None:
        self.terminals = terminals
        self.deadline = deadline
        self.max_elements = max_elements
        self.channels = channels
        self.layer_memo = {} if layer_memo is None else layer_memo
        self.peak = 0
        self._cache: dict[str, torch.Tensor] = {}
        self._memo: dict[str, torch.Tensor] = {}

    def terminal(self, name: str) -> torch.Tensor:
        if name not in self._cache:
            self._cache[name] = self.terminals[name]()
        return self._cache[name]

    def _check(self, elements: int) -> None:
        self.peak = max(self.peak, elements)
        if elements > self.max_elements:
            raise TreeError(f"a value of {elements} elements exceeds the limit of "
                            f"{self.max_elements}")

    def __call__(self, tree: gp.PrimitiveTree) -> torch.Tensor:
        """The tree's value (batch dims first); raises :class:`TreeError` past the limits.

        Scalar and vector results of subtrees are remembered (by their expression) for the
        later trees evaluated by this interpreter: a population shares many subtrees.
        """
        keys, ends, independent = _subtrees(tree)

        def value(i: int) -> torch.Tensor:
            key = keys[i]
            if key in self._memo:
                return self._memo[key]
            if independent[i] and key in self.layer_memo:  # the same for every channel
                kept = self.layer_memo[key]
                return kept.expand(self.channels, *kept.shape[1:])
            node = tree[i]
            if isinstance(node, gp.Terminal):
                out = self.terminal(node.name)
                self._check(_stored(out))
                return out
            args, j = [], i + 1
            for _ in range(node.arity):
                args.append(value(j))
                j = ends[j]
            batch = torch.broadcast_shapes(*(a.shape[:NB] for a in args))
            args = [_expand(a, batch) for a in args]
            small, shared = _dedup(args)
            self._check(_predicted(node.name, small))
            out = OPERATORS[node.name].fn(*small)
            if shared:
                out = _expand(out, batch)
            if independent[i] and _stored(out.narrow(0, 0, 1)) <= MEMO_ELEMENTS:
                self.layer_memo[key] = out.narrow(0, 0, 1)
            if time.perf_counter() > self.deadline:
                raise TreeError("time limit exceeded")
            if rank(out) <= 1 and _stored(out) <= MEMO_ELEMENTS:
                self._memo[key] = out
            return out

        return value(0)


MEMO_ELEMENTS = 1 << 20


CHANNEL_FREE = frozenset({"W", "N"})  # terminals that are the same for every channel


def _subtrees(tree: gp.PrimitiveTree) -> tuple[list[str], list[int], list[bool]]:
    """Per node: the subtree's expression, the index after it, and whether it is channel-free.

    A channel-free subtree reads only terminals that are the same for every channel of a
    layer. One reversed pass over the prefix list.
    """
    keys: list[str] = [""] * len(tree)
    ends: list[int] = [0] * len(tree)
    independent: list[bool] = [False] * len(tree)
    stack: list[int] = []
    for i in range(len(tree) - 1, -1, -1):
        node = tree[i]
        kids = [stack.pop() for _ in range(node.arity)]
        keys[i] = node.name if not kids else f"{node.name}({', '.join(keys[k] for k in kids)})"
        ends[i] = ends[kids[-1]] if kids else i + 1
        independent[i] = all(independent[k] for k in kids) if kids else \
            node.name in CHANNEL_FREE
        stack.append(i)
    return keys, ends, independent


def _predicted(name: str, args: list[torch.Tensor]) -> int:
    """Upper bound of the elements an operator stores for these arguments (before running it)."""
    batch = max(_stored(a) // max(_item_numel(a), 1) for a in args)
    items = [tuple(a.shape[NB:]) for a in args]
    if len(items) == 2:
        (ia, ib) = items
        if name == "outer" and len(ia) == 1 and len(ib) == 1:
            return batch * ia[0] * ib[0]
        if name == "matmul" and len(ia) == 2 and len(ib) == 2:
            return batch * ia[0] * ib[1]
        try:
            shape = torch.broadcast_shapes(ia, ib)
        except RuntimeError:
            return batch
        return batch * _numel(shape)
    if name == "inv" and len(items[0]) == 2:
        n, m = items[0]
        return batch * (n * m + min(n, m) ** 2)
    return batch * _numel(items[0])


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _item_numel(t: torch.Tensor) -> int:
    return _numel(tuple(t.shape[NB:]))


def _stored(t: torch.Tensor) -> int:
    n = 1
    for size, stride in zip(t.shape, t.stride(), strict=True):
        if stride:
            n *= size
    return n


def item_rank(tree: gp.PrimitiveTree, start: int = 0) -> tuple[int | None, int]:
    """Static item rank of the subtree at ``start`` (None if it depends on sizes) and its end."""
    node = tree[start]
    if isinstance(node, gp.Terminal):
        return TERMINALS[node.name], start + 1
    ranks = []
    end = start + 1
    for _ in range(node.arity):
        r, end = item_rank(tree, end)
        ranks.append(r)
    return _rank_rule(node.name, ranks), end


def _rank_rule(name: str, ranks: list[int | None]) -> int | None:
    if name in ("mean", "sum", "std", "var", "count", "tr"):
        return 0
    r = ranks[0]
    if name in ("abs", "square", "sqrt", "plus_1e4", "plus_005", "transpose", "inv"):
        return r
    if name == "mean0":
        return None if r is None else max(r - 1, 0)
    if name == "gm":
        return None if r is None else (1 if r == 2 else r)
    a, b = ranks
    if a == 0 and b == 0:
        return 0
    if name == "outer" and a == 1 and b == 1:
        return 2
    if name == "matmul" and a == 1 and b == 1:
        return 0  # a dot product, or the product of the means
    if a == 0:
        return b
    if b == 0:
        return a
    return None


__all__ = ["NB", "OPERATORS", "PSET", "TERMINALS", "Interpreter", "Op", "TreeError",
           "item_rank", "make_pset", "parse", "rank"]
