"""Evolved pruning functions (moprune.criteria.gp): operators, terminals, seeds, formulas and files.

Every reference value is computed here with numpy from activations worked out by hand
(tiny 1x1 convolutions and linear layers with small dyadic weights and integer inputs, so
float32 activations are exact); the GP code is only ever compared against them.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from deap import gp
from helpers import (
    assert_state_equal,
    model_and_space,
    one_torch_thread,
    state_snapshot,
    tiny_model_ids,
    tiny_sequential,
)
from torch import nn

import moprune.criteria.gp.function as gp_function
from moprune.core.space import PruningSpace, SpacePolicy
from moprune.criteria import CRITERIA, ScoreContext
from moprune.criteria.gp.function import (
    PruningFunction,
    ScoreSettings,
    capture,
    load_function,
    render,
    score_trees,
    simplify,
)
from moprune.criteria.gp.library import PUBLISHED, SEEDS
from moprune.criteria.gp.primitives import (
    OPERATORS,
    PSET,
    TERMINALS,
    Interpreter,
    Op,
    TreeError,
    item_rank,
    parse,
    rank,
)
from moprune.criteria.gp.terminals import Activations, balanced_indices

BATCH = (3, 2)  # (channel, class) batch dims used for direct operator calls
DATA_SEEDS = ("snr", "fisher", "symmetric_divergence", "t_statistic")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    yield from one_torch_thread()


# --------------------------------------------------------------------------- helpers


@contextmanager
def seeded_deap(seed: int) -> Iterator[None]:
    """Route DEAP's draws to a seeded ``random.Random`` (restored afterwards)."""
    previous = gp.random
    gp.random = random.Random(seed)
    try:
        yield
    finally:
        gp.random = previous


@functools.cache
def random_expressions(seed: int, count: int) -> tuple[str, ...]:
    with seeded_deap(seed):
        return tuple(str(gp.PrimitiveTree(gp.genHalfAndHalf(PSET, 1, 4)))
                     for _ in range(count))


def dyadic(rng: np.random.Generator, shape: tuple[int, ...], scale: int = 2) -> np.ndarray:
    """Small multiples of 1/scale (exact in float32, and their products and sums too)."""
    return rng.integers(-4, 5, size=shape) / scale


def linear_model(out_features: int = 3, seed: int = 0) -> tuple[nn.Module, PruningSpace]:
    """flatten -> l1 Linear(2, out) -> ReLU -> Linear(out, 2): one writer, maps of D = 1."""
    rng = np.random.default_rng(seed)
    model = tiny_sequential(nn.Flatten(), nn.Linear(2, out_features), nn.ReLU(),
                            nn.Linear(out_features, 2)).eval()
    with torch.no_grad():
        model.l1.weight.copy_(torch.from_numpy(dyadic(rng, (out_features, 2))))
        model.l1.bias.copy_(torch.from_numpy(dyadic(rng, (out_features,), 4)))
    space = PruningSpace.from_model(model, (2, 1, 1), SpacePolicy())
    assert [(g.name, g.size) for g in space.groups] == [("l1", out_features)]
    return model, space


def conv_model(seed: int = 0) -> tuple[nn.Module, PruningSpace]:
    """l0 1x1 conv 2->3 -> ReLU -> l2 1x1 conv 3->2 -> pool -> linear (two writers)."""
    rng = np.random.default_rng(seed)
    model = tiny_sequential(nn.Conv2d(2, 3, 1), nn.ReLU(), nn.Conv2d(3, 2, 1),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2)).eval()
    with torch.no_grad():
        model.l0.weight.copy_(torch.from_numpy(dyadic(rng, (3, 2, 1, 1))))
        model.l0.bias.copy_(torch.from_numpy(dyadic(rng, (3,), 4)))
        model.l2.weight.copy_(torch.from_numpy(dyadic(rng, (2, 3, 1, 1))))
        model.l2.bias.copy_(torch.from_numpy(dyadic(rng, (2,), 4)))
    space = PruningSpace.from_model(model, (2, 2, 2), SpacePolicy())
    assert [(g.name, g.size) for g in space.groups] == [("l0", 3), ("l2", 2)]
    return model, space


def hand_maps(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    """Writer outputs by hand, ``(B, n_channels, D)`` in the space's channel order."""
    x = images.double().numpy()
    if isinstance(model.l1, nn.Linear):  # linear_model
        w, b = model.l1.weight.detach().double().numpy(), model.l1.bias.detach().double().numpy()
        return (x.reshape(len(x), -1) @ w.T + b)[:, :, None]
    w0 = model.l0.weight.detach().double().numpy()[:, :, 0, 0]
    b0 = model.l0.bias.detach().double().numpy()
    w2 = model.l2.weight.detach().double().numpy()[:, :, 0, 0]
    b2 = model.l2.bias.detach().double().numpy()
    a0 = np.einsum("oi,bihw->bohw", w0, x) + b0[:, None, None]
    a2 = np.einsum("oi,bihw->bohw", w2, np.maximum(a0, 0.0)) + b2[:, None, None]
    return np.concatenate([a0, a2], axis=1).reshape(len(x), 5, -1)


def integer_batch(shape: tuple[int, ...], labels: list[int], seed: int = 0) -> ScoreContext:
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(-3, 4, size=(len(labels), *shape)).astype(np.float32))
    return ScoreContext(images=images, labels=torch.tensor(labels))


# 3 classes x 4 samples, interleaved (balanced: every sample is used)
LABELS = [2, 0, 1, 1, 0, 2, 0, 2, 1, 1, 0, 2]


def per_class(maps: np.ndarray, labels: list[int], fn) -> np.ndarray:
    """Sum over classes (one-vs-rest) of ``fn(P, Q, X)`` per channel (P, Q, X: (rows, D))."""
    labels_np = np.asarray(labels)
    out = np.zeros(maps.shape[1])
    for c in np.unique(labels_np):
        p, q = maps[labels_np == c], maps[labels_np != c]
        for k in range(maps.shape[1]):
            out[k] += fn(p[:, k], q[:, k], maps[:, k])
    return out


def _kl(mp: float, vp: float, mq: float, vq: float) -> float:
    """KL(N(mp, vp) || N(mq, vq)) of two univariate Gaussians."""
    return 0.5 * math.log(vq / vp) + (vp + (mp - mq) ** 2) / (2 * vq) - 0.5


def _symmetric_divergence(p, q, x) -> float:
    mp, vp, mq, vq = p.mean(), p.var(), q.mean(), q.var()
    d = _kl(mp, vp, mq, vq) + _kl(mq, vq, mp, vp)
    # the closed form quoted in the brief, as a cross-check of the KL sum
    closed = 0.5 * (vp / vq + vq / vp) + 0.5 * (mp - mq) ** 2 * (1 / vp + 1 / vq) - 1
    assert d == pytest.approx(closed, rel=1e-12)
    return 2 * d + 2


def _published(p, q, x) -> float:
    vp, vq = p.var(), q.var()
    mx, mq = x.mean(0), q.mean(0)
    tail = (mx.std() * vq * mx + vp - mq) ** 2 / (vp + vq + 0.05)
    return vp / (vq + 0.05) + vq / (vp + 0.05) + tail.mean()


TEXTBOOK = {
    "snr": lambda p, q, x: abs(p.mean() - q.mean()) / (p.std() + q.std()),
    "fisher": lambda p, q, x: (p.mean() - q.mean()) ** 2 / (p.var() + q.var()),
    "symmetric_divergence": _symmetric_divergence,
    "t_statistic": lambda p, q, x: abs(p.mean() - q.mean()) / math.sqrt(
        p.var() / len(p) + q.var() / len(q)),
}


def weiszfeld(rows: np.ndarray, iterations: int) -> np.ndarray:
    y = rows.mean(0)
    for _ in range(iterations):
        w = 1.0 / np.maximum(np.linalg.norm(rows - y, axis=1), 1e-8)
        y = (w[:, None] * rows).sum(0) / w.sum()
    return y


def batched(item: np.ndarray | float) -> torch.Tensor:
    """An item repeated over the (3, 2) batch (contiguous)."""
    t = torch.as_tensor(np.asarray(item, dtype=np.float64))
    return t.expand(*BATCH, *t.shape).contiguous()


def item(t: torch.Tensor) -> np.ndarray:
    """The item of a batched operator result (all batch entries must agree)."""
    assert t.shape[:2] == BATCH
    first = t[0, 0]
    assert torch.equal(t, first.expand_as(t)), "batch entries differ"
    return first.numpy()


# --------------------------------------------------------------------------- 1. operators

SHAPES = [(), (1,), (3,), (4,), (1, 1), (1, 3), (3, 1), (3, 3), (3, 4), (4, 3), (1, 4)]
KINDS = ("zeros", "constant", "normal", "large", "large_constant")


def values(kind: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    full = (*BATCH, *shape)
    if kind == "zeros":
        return torch.zeros(full, dtype=torch.float64)
    if kind == "constant":
        return torch.full(full, 2.5, dtype=torch.float64)
    if kind == "large_constant":
        return torch.full(full, -1e3, dtype=torch.float64)
    scale = 1e3 if kind == "large" else 1.0
    return torch.randn(full, generator=gen, dtype=torch.float64) * scale


@pytest.mark.parametrize("name", list(OPERATORS))
def test_operator_is_shape_safe_and_finite(name: str) -> None:
    op = OPERATORS[name]
    gen = torch.Generator().manual_seed(7)
    combos = [(s,) for s in SHAPES] if op.arity == 1 else [(a, b) for a in SHAPES for b in SHAPES]
    for shapes in combos:
        for kind in KINDS:
            args = [values(kind, s, gen) for s in shapes]
            out = op.fn(*args)
            assert out.shape[:2] == BATCH, (name, shapes, kind, out.shape)
            assert 0 <= rank(out) <= 2, (name, shapes, kind, out.shape)
            assert torch.isfinite(out).all(), (name, shapes, kind)


@pytest.mark.parametrize("name", list(OPERATORS))
def test_interpreter_matches_direct_calls_with_shared_batch_dims(name: str) -> None:
    """Through the interpreter, with terminals expanded (stride 0) along batch dims as the
    real terminals are (WI, W, X, mX), the result equals the direct call."""
    op = OPERATORS[name]
    gen = torch.Generator().manual_seed(11)
    combos = [(s,) for s in SHAPES] if op.arity == 1 else [(a, b) for a in SHAPES for b in SHAPES]
    expr = parse(f"{name}(P)" if op.arity == 1 else f"{name}(P, Q)")
    for shapes in combos:
        # P: expanded along both batch dims (like W), Q: along the class dim (like WI)
        p = torch.randn(shapes[0], generator=gen, dtype=torch.float64).expand(*BATCH, *shapes[0])
        args = [p]
        if op.arity == 2:
            q = torch.randn((BATCH[0], 1, *shapes[1]), generator=gen, dtype=torch.float64)
            args.append(q.expand(*BATCH, *shapes[1]))
        terminals = {"P": lambda a=args[0]: a, "Q": lambda a=args[-1]: a}
        got = Interpreter(terminals)(expr)
        want = op.fn(*(a.contiguous() for a in args))
        assert got.shape == want.shape, (name, shapes)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_protected_division() -> None:
    out = OPERATORS["div"].fn(batched([1.0, 2.0, 3.0, -4.0]), batched([0.0, 2.0, 1e-13, -0.0]))
    np.testing.assert_array_equal(item(out), [0.0, 1.0, 0.0, 0.0])
    # a zero scalar denominator against a matrix numerator: all zeros, the matrix's shape
    out = OPERATORS["div"].fn(batched(np.ones((2, 3))), batched(0.0))
    np.testing.assert_array_equal(item(out), np.zeros((2, 3)))


def test_sqrt_is_of_the_absolute_value() -> None:
    out = OPERATORS["sqrt"].fn(batched([-4.0, 9.0, 0.0, -0.25]))
    np.testing.assert_array_equal(item(out), [2.0, 3.0, 0.0, 0.5])


def test_inverse_is_a_finite_ridge_inverse() -> None:
    inv = OPERATORS["inv"].fn
    # zero vectors / scalars / non-square matrices invert to zero
    np.testing.assert_array_equal(item(inv(batched(0.0))), 0.0)
    np.testing.assert_array_equal(item(inv(batched(np.zeros(3)))), np.zeros(3))
    np.testing.assert_array_equal(item(inv(batched(np.zeros((2, 3))))), np.zeros((3, 2)))
    np.testing.assert_array_equal(item(inv(batched(np.zeros((3, 2))))), np.zeros((2, 3)))
    # a zero square matrix: (0 + 1e-3 I)^-1 = 1000 I (finite, as documented)
    np.testing.assert_allclose(item(inv(batched(np.zeros((3, 3))))), 1e3 * np.eye(3))
    # exactly singular after the ridge: zeros, not inf/nan
    np.testing.assert_array_equal(item(inv(batched([[-1e-3]]))), [[0.0]])
    # singular (rank one) matrix: finite
    assert np.isfinite(item(inv(batched(np.ones((3, 3)))))).all()
    # regular matrices and the ridge pseudo-inverse
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3))
    np.testing.assert_allclose(item(inv(batched(a))), np.linalg.inv(a + 1e-3 * np.eye(3)),
                               rtol=1e-10)
    tall = rng.normal(size=(4, 2))
    np.testing.assert_allclose(item(inv(batched(tall))),
                               np.linalg.inv(tall.T @ tall + 1e-3 * np.eye(2)) @ tall.T,
                               rtol=1e-10)
    wide = tall.T
    np.testing.assert_allclose(item(inv(batched(wide))),
                               wide.T @ np.linalg.inv(wide @ wide.T + 1e-3 * np.eye(2)),
                               rtol=1e-10)
    np.testing.assert_allclose(item(inv(batched([2.0, 0.5]))), np.array([2.0, 0.5]) / (
        np.array([4.0, 0.25]) + 1e-3))


def test_matmul_products_and_fallbacks() -> None:
    mm = OPERATORS["matmul"].fn
    rng = np.random.default_rng(1)
    a, b, v, w = (rng.normal(size=(2, 3)), rng.normal(size=(3, 4)), rng.normal(size=3),
                  rng.normal(size=4))
    np.testing.assert_allclose(item(mm(batched(a), batched(b))), a @ b)
    np.testing.assert_allclose(item(mm(batched(a), batched(v))), a @ v)
    np.testing.assert_allclose(item(mm(batched(v), batched(b))), v @ b)
    np.testing.assert_allclose(item(mm(batched(v), batched(v))), v @ v)
    np.testing.assert_allclose(item(mm(batched(2.0), batched(a))), 2.0 * a)
    np.testing.assert_allclose(item(mm(batched(a), batched(-1.5))), -1.5 * a)
    # mismatched shapes: product of the global means (a scalar)
    for x, y in [(a, a), (v, w), (a, w), (w, b), (b, a)]:
        out = mm(batched(x), batched(y))
        assert rank(out) == 0
        np.testing.assert_allclose(item(out), x.mean() * y.mean())


def test_elementwise_broadcast_or_means() -> None:
    rng = np.random.default_rng(2)
    m, col, row, v4 = (rng.normal(size=(2, 3)), rng.normal(size=(2, 1)), rng.normal(size=3),
                       rng.normal(size=4))
    for name, f in [("add", np.add), ("sub", np.subtract), ("mul", np.multiply)]:
        fn = OPERATORS[name].fn
        np.testing.assert_allclose(item(fn(batched(m), batched(row))), f(m, row))
        np.testing.assert_allclose(item(fn(batched(m), batched(col))), f(m, col))
        np.testing.assert_allclose(item(fn(batched(col), batched(row))), f(col, row))
        np.testing.assert_allclose(item(fn(batched(2.0), batched(m))), f(2.0, m))
        # not broadcastable: the global means
        out = fn(batched(m), batched(v4))
        assert rank(out) == 0
        np.testing.assert_allclose(item(out), f(m.mean(), v4.mean()))


def test_outer_transpose_trace_and_reductions() -> None:
    rng = np.random.default_rng(3)
    a, b, m = rng.normal(size=3), rng.normal(size=4), rng.normal(size=(3, 4))
    out = OPERATORS["outer"].fn(batched(a), batched(b))
    assert out.shape == (*BATCH, 3, 4)
    np.testing.assert_allclose(item(out), np.outer(a, b))
    np.testing.assert_allclose(item(OPERATORS["outer"].fn(batched(m), batched(b))), m * b)
    assert item(OPERATORS["transpose"].fn(batched(m))).shape == (4, 3)
    np.testing.assert_array_equal(item(OPERATORS["transpose"].fn(batched(a))), a)
    np.testing.assert_allclose(item(OPERATORS["tr"].fn(batched(m))), np.trace(m))
    np.testing.assert_allclose(item(OPERATORS["tr"].fn(batched(a))), a.sum())
    np.testing.assert_allclose(item(OPERATORS["mean"].fn(batched(m))), m.mean())
    np.testing.assert_allclose(item(OPERATORS["sum"].fn(batched(m))), m.sum())
    np.testing.assert_allclose(item(OPERATORS["var"].fn(batched(m))), m.var())
    np.testing.assert_allclose(item(OPERATORS["std"].fn(batched(m))), m.std())
    np.testing.assert_array_equal(item(OPERATORS["var"].fn(batched(3.0))), 0.0)
    np.testing.assert_allclose(item(OPERATORS["mean0"].fn(batched(m))), m.mean(0))
    np.testing.assert_allclose(item(OPERATORS["mean0"].fn(batched(a))), a.mean())
    assert item(OPERATORS["count"].fn(batched(m))) == 3
    assert item(OPERATORS["count"].fn(batched(b))) == 4
    assert item(OPERATORS["count"].fn(batched(7.0))) == 1
    np.testing.assert_allclose(item(OPERATORS["plus_005"].fn(batched(a))), a + 0.05)
    np.testing.assert_allclose(item(OPERATORS["plus_1e4"].fn(batched(a))), a + 1e-4)
    np.testing.assert_allclose(item(OPERATORS["square"].fn(batched(a))), a * a)
    np.testing.assert_allclose(item(OPERATORS["abs"].fn(batched(a))), np.abs(a))
    pts = rng.normal(size=(5, 3))
    np.testing.assert_allclose(item(OPERATORS["gm"].fn(batched(pts))), weiszfeld(pts, 25),
                               rtol=1e-10)
    np.testing.assert_array_equal(item(OPERATORS["gm"].fn(batched(a))), a)
    # identical rows (all distances zero): the row itself, finite
    np.testing.assert_allclose(item(OPERATORS["gm"].fn(batched(np.ones((4, 2))))), [1.0, 1.0])


# --------------------------------------------------------------------------- 2. item_rank


def made_up_terminals(k: int, c: int, n: int, d: int, f: int, c_out: int,
                      gen: torch.Generator) -> dict:
    def r(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float64)

    x = r(k, c * n, d)
    filters, layer = r(k, f), r(c_out, f)
    t = {"P": r(k, c, n, d), "Q": r(k, c, (c - 1) * n, d),
         "N": torch.full((k, c), float(n), dtype=torch.float64),
         "X": x.unsqueeze(1).expand(k, c, c * n, d), "mX": x.mean(1).unsqueeze(1).expand(k, c, d),
         "mP": r(k, c, d), "mQ": r(k, c, d), "WI": filters.unsqueeze(1).expand(k, c, f),
         "W": layer.expand(k, c, c_out, f)}
    return {name: (lambda v=v: v) for name, v in t.items()}


# (n, D, F, C_out): mismatched sizes, square sizes, one sample and one position
TERMINAL_SIZES = [(2, 3, 5, 4), (3, 3, 3, 3), (1, 1, 2, 1), (4, 1, 1, 4)]


def test_static_item_rank_agrees_with_evaluated_rank() -> None:
    gen = torch.Generator().manual_seed(5)
    expressions = random_expressions(seed=1, count=300)
    checked = 0
    for sizes in TERMINAL_SIZES:
        terminals = made_up_terminals(2, 3, *sizes, gen=gen)
        for expr in expressions:
            tree = parse(expr)
            static, end = item_rank(tree)
            assert end == len(tree)
            value = Interpreter(terminals)(tree)
            assert value.shape[:2] == (2, 3), expr
            assert 0 <= rank(value) <= 2, expr
            assert torch.isfinite(value).all(), (expr, sizes)
            if static is not None:
                checked += 1
                assert rank(value) == static, (expr, sizes, static, value.shape)
    assert checked > 500  # most random trees have a static rank
    # the terminals themselves
    for name, r in TERMINALS.items():
        assert item_rank(parse(name)) == (r, 1)


# --------------------------------------------------------------------------- 3. terminals


def test_balanced_indices_keeps_the_largest_classes_first_samples() -> None:
    labels = torch.tensor([3, 1, 1, 2, 2, 2, 0, 1, 2])
    idx, c, n = balanced_indices(labels, max_classes=2)
    assert (idx.tolist(), c, n) == ([3, 4, 5, 1, 2, 7], 2, 3)
    # ties (classes 0 and 3 both once): the smaller label
    idx, c, n = balanced_indices(labels, max_classes=3)
    assert (idx.tolist(), c, n) == ([3, 1, 6], 3, 1)
    idx, c, n = balanced_indices(labels, max_classes=10)
    assert (idx.tolist(), c, n) == ([3, 1, 6, 0], 4, 1)
    with pytest.raises(ValueError, match="at least two"):
        balanced_indices(torch.tensor([5, 5, 5]), max_classes=10)


def _check_terminals(acts: Activations, maps: np.ndarray, weights: list[np.ndarray],
                     classes: list[list[int]]) -> None:
    """Compare every terminal with ``maps`` (B, channels, D) and the per-class sample ids."""
    c, n = len(classes), len(classes[0])
    assert (acts.n_classes, acts.per_class) == (c, n)
    order = [i for cls in classes for i in cls]
    offset = 0
    for layer, w in zip(acts.layers, weights, strict=True):
        k = layer.n_channels
        np.testing.assert_array_equal(layer.ids, np.arange(offset, offset + k))
        t = {name: fn().numpy() for name, fn in layer.terminals(0, k, torch.float64).items()}
        m = maps[:, offset:offset + k]  # (B, k, D)
        for j, cls in enumerate(classes):
            rest = [i for jj, other in enumerate(classes) if jj != j for i in other]
            p, q, x = m[cls].transpose(1, 0, 2), m[rest].transpose(1, 0, 2), m[order]
            np.testing.assert_array_equal(t["P"][:, j], p)
            np.testing.assert_array_equal(t["Q"][:, j], q)
            np.testing.assert_array_equal(t["X"][:, j], x.transpose(1, 0, 2))
            np.testing.assert_allclose(t["mP"][:, j], p.mean(1), rtol=1e-15)
            np.testing.assert_allclose(t["mQ"][:, j], q.mean(1), rtol=1e-15)
            np.testing.assert_allclose(t["mX"][:, j], x.mean(0), rtol=1e-15)
            np.testing.assert_array_equal(t["N"][:, j], n)
            np.testing.assert_array_equal(t["WI"][:, j], w.reshape(len(w), -1)[:k])
            np.testing.assert_array_equal(t["W"][:, j], np.broadcast_to(
                w.reshape(len(w), -1), (k, *w.reshape(len(w), -1).shape)))
        offset += k


def test_terminals_of_a_linear_layer_by_hand() -> None:
    model, space = linear_model()
    # class 0 has 4 samples, 1 and 2 have 3: class 0 comes first and loses its 4th sample
    labels = [2, 0, 1, 0, 2, 1, 0, 1, 2, 0]
    ctx = integer_batch((2, 1, 1), labels)
    acts = Activations.capture(model, space, ctx.images, ctx.labels)
    classes = [[1, 3, 6], [2, 5, 7], [0, 4, 8]]
    _check_terminals(acts, hand_maps(model, ctx.images),
                     [model.l1.weight.detach().double().numpy()], classes)
    # max_classes keeps the most frequent classes (ties: smaller label)
    acts = Activations.capture(model, space, ctx.images, ctx.labels, max_classes=2)
    _check_terminals(acts, hand_maps(model, ctx.images),
                     [model.l1.weight.detach().double().numpy()], classes[:2])


def test_terminals_of_conv_layers_with_spatial_maps_by_hand() -> None:
    model, space = conv_model()
    labels = [1, 0, 0, 1, 1, 0]
    ctx = integer_batch((2, 2, 2), labels, seed=1)
    acts = Activations.capture(model, space, ctx.images, ctx.labels)
    maps = hand_maps(model, ctx.images)
    assert maps.shape == (6, 5, 4)
    weights = [model.l0.weight.detach().double().numpy(),
               model.l2.weight.detach().double().numpy()]
    _check_terminals(acts, maps, weights, [[1, 2, 5], [0, 3, 4]])
    # spatial=1 averages the 2x2 maps to one number
    acts = Activations.capture(model, space, ctx.images, ctx.labels, spatial=1)
    _check_terminals(acts, maps.mean(2, keepdims=True), weights, [[1, 2, 5], [0, 3, 4]])


def test_terminals_of_4x4_maps_pooled_to_2x2() -> None:
    model, _ = conv_model()
    space = PruningSpace.from_model(model, (2, 4, 4), SpacePolicy())
    ctx = integer_batch((2, 4, 4), [0, 1, 0, 1], seed=2)
    acts = Activations.capture(model, space, ctx.images, ctx.labels, spatial=2)
    maps = hand_maps(model, ctx.images).reshape(4, 5, 2, 2, 2, 2).mean((3, 5)).reshape(4, 5, 4)
    weights = [model.l0.weight.detach().double().numpy(),
               model.l2.weight.detach().double().numpy()]
    _check_terminals(acts, maps, weights, [[0, 2], [1, 3]])


def test_a_batch_of_one_class_is_refused() -> None:
    model, space = linear_model()
    ctx = integer_batch((2, 1, 1), [4, 4, 4])
    with pytest.raises(ValueError, match="at least two classes"):
        Activations.capture(model, space, ctx.images, ctx.labels)
    with pytest.raises(ValueError, match="at least two classes"):
        CRITERIA.get("fisher").score(model, space, ctx)


def test_data_functions_need_a_labelled_batch() -> None:
    model, space = linear_model()
    with pytest.raises(ValueError, match="labelled batch"):
        PruningFunction(SEEDS["fisher"]).score(model, space, ScoreContext())
    with pytest.raises(ValueError, match="needs a batch of training images"):
        CRITERIA.get("gp_published").score(model, space, ScoreContext())
    assert CRITERIA.get("gp_published").needs_data
    assert not PruningFunction(SEEDS["filter_l1"]).needs_data
    assert CRITERIA.get("snr").n_images == ScoreSettings().images


# --------------------------------------------------------------------------- 4. the seeds


@pytest.mark.parametrize("builder", [linear_model, conv_model], ids=["linear_D1", "conv_D4"])
@pytest.mark.parametrize("name", DATA_SEEDS)
def test_class_separation_seeds_follow_their_textbook_formulas(builder, name: str) -> None:
    model, space = builder()
    shape = (2, 1, 1) if builder is linear_model else (2, 2, 2)
    ctx = integer_batch(shape, LABELS)
    maps = hand_maps(model, ctx.images)
    # the hand-made batch has no zero variance anywhere (the formulas are unprotected)
    assert per_class(maps, LABELS, lambda p, q, x: min(p.var(), q.var())).min() > 0
    want = per_class(maps, LABELS, TEXTBOOK[name])
    got = PruningFunction(SEEDS[name]).score(model, space, ctx)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    np.testing.assert_allclose(CRITERIA.get(name).score(model, space, ctx), want, rtol=1e-10)


def test_filter_norm_seeds_equal_the_l1_l2_criteria() -> None:
    model, space = conv_model()
    l1 = CRITERIA.get("l1").score(model, space)
    l2 = CRITERIA.get("l2").score(model, space)
    # weights only: one "class"
    np.testing.assert_allclose(PruningFunction(SEEDS["filter_l1"]).score(model, space), l1,
                               rtol=1e-12)
    np.testing.assert_allclose(PruningFunction(SEEDS["filter_l2"]).score(model, space), l2,
                               rtol=1e-12)
    # scored with activations (as in a GP population): summed over the 3 classes
    ctx = integer_batch((2, 2, 2), LABELS)
    acts = capture(model, space, ctx.images, ctx.labels, ScoreSettings())
    got = score_trees([parse(SEEDS["filter_l1"]), parse(SEEDS["filter_l2"])], acts,
                      ScoreSettings())
    np.testing.assert_allclose(got[0], 3 * l1, rtol=1e-12)
    np.testing.assert_allclose(got[1], 3 * l2, rtol=1e-12)


def test_filter_l1_adds_the_layers_of_shared_residual_channels() -> None:
    model, space, _ = model_and_space("cifar_resnet20", True)
    np.testing.assert_allclose(PruningFunction(SEEDS["filter_l1"]).score(model, space),
                               CRITERIA.get("l1").score(model, space), rtol=1e-6)


@pytest.mark.parametrize("builder", [linear_model, conv_model], ids=["linear", "conv"])
def test_geometric_median_seed_is_the_distance_to_the_weiszfeld_median(builder) -> None:
    model, space = builder()
    want = []
    for layer in ("l1",) if builder is linear_model else ("l0", "l2"):
        w = model.get_submodule(layer).weight.detach().double().numpy()
        w = w.reshape(len(w), -1)
        want.append(np.linalg.norm(w - weiszfeld(w, 25), axis=1))
        # 25 steps from the mean are close to the converged median too
        converged = np.linalg.norm(w - weiszfeld(w, 5000), axis=1)
        np.testing.assert_allclose(want[-1], converged, atol=2e-2 * np.abs(w).max())
    got = PruningFunction(SEEDS["geometric_median"]).score(model, space)
    np.testing.assert_allclose(got, np.concatenate(want), rtol=1e-6)


# --------------------------------------------------------------------------- 5. published


def test_published_function_matches_its_formula_in_words() -> None:
    model, space = conv_model()
    ctx = integer_batch((2, 2, 2), LABELS, seed=3)
    maps = hand_maps(model, ctx.images)
    assert maps.shape[2] == 4  # 2x2 maps: the last term is a map averaged over positions
    want = per_class(maps, LABELS, _published)
    np.testing.assert_allclose(PruningFunction(PUBLISHED).score(model, space, ctx), want,
                               rtol=1e-10)
    np.testing.assert_allclose(CRITERIA.get("gp_published").score(model, space, ctx), want,
                               rtol=1e-10)


# --------------------------------------------------------------------------- 6. edge cases

_RESIDUAL_TOO = {"digits_cnn", "cifar_resnet20", "tv:resnet18", "depthwise_avgpool_cnn",
                 "dense_concat_cnn", "flatten_linear_cnn"}
EDGE_CASES = [(mid, False) for mid in tiny_model_ids()] + [
    (mid, True) for mid in tiny_model_ids() if mid in _RESIDUAL_TOO]


def _finite_scores(scores, space: PruningSpace, what) -> None:
    assert not isinstance(scores, str), (what, scores)
    assert scores.shape == (space.n_channels,), what
    assert np.isfinite(scores).all(), what


@pytest.mark.parametrize(("model_id", "residual"), EDGE_CASES)
def test_seeds_and_published_are_finite_on_degenerate_batches(model_id: str,
                                                              residual: bool) -> None:
    model, space, shape = model_and_space(model_id, residual)
    gen = torch.Generator().manual_seed(0)
    one_image = torch.randn((1, *shape), generator=gen)
    batches = {
        "one sample per class": (torch.randn((3, *shape), generator=gen), [0, 1, 2]),
        "all-zero images": (torch.zeros((4, *shape)), [0, 1, 0, 1]),
        "identical images": (one_image.expand(4, *shape).clone(), [1, 0, 1, 0]),
    }
    names = [n for n in SEEDS if n != "geometric_median"]
    trees = [parse(SEEDS[n]) for n in names] + [parse(PUBLISHED)]
    for case, (images, labels) in batches.items():
        acts = capture(model, space, images, torch.tensor(labels), ScoreSettings())
        for name, scores in zip([*names, "published"], score_trees(trees, acts, ScoreSettings()),
                                strict=True):
            _finite_scores(scores, space, (case, name))
    # the registered criteria, through Criterion.score
    images, labels = batches["one sample per class"]
    ctx = ScoreContext(images=images, labels=torch.tensor(labels))
    for name in ("fisher", "gp_published"):
        _finite_scores(CRITERIA.get(name).score(model, space, ctx), space, name)
    # filters only (independent of the batch; gm(W) is computed once per layer)
    scores = PruningFunction(SEEDS["geometric_median"]).score(model, space)
    _finite_scores(scores, space, "geometric_median")


def test_zero_variance_gives_zero_for_the_protected_seeds() -> None:
    model, space = linear_model()
    ctx = ScoreContext(images=torch.zeros(4, 2, 1, 1), labels=torch.tensor([0, 1, 0, 1]))
    for name in DATA_SEEDS:
        np.testing.assert_array_equal(CRITERIA.get(name).score(model, space, ctx), 0.0)
    # published: v = 0, mX = mQ = bias: per class (0 + 0 + bias^2 / 0.05), two classes
    bias = model.l1.bias.detach().double().numpy()
    np.testing.assert_allclose(CRITERIA.get("gp_published").score(model, space, ctx),
                               2 * bias ** 2 / 0.05, rtol=1e-12)


# --------------------------------------------------------------------------- 7. simplify


def test_simplify_specific_rewrites() -> None:
    assert simplify("transpose(transpose(P))") == "P"
    assert simplify("abs(var(P))") == "var(P)"
    assert simplify("sqrt(abs(X))") == "sqrt(X)"
    assert simplify("square(abs(Q))") == "square(Q)"
    # a root mean is dropped (the score takes the mean anyway), and reductions of scalars
    assert simplify("mean(P)") == "P"
    assert simplify("mean(mean(P))") == "P"
    assert simplify("sum(var(P))") == "var(P)"
    assert simplify("tr(mean(X))") == "X"
    assert simplify("add(tr(mean(X)), N)") == "add(mean(X), N)"
    assert simplify("transpose(mX)") == "mX"
    assert simplify("gm(mX)") == "mX"
    assert simplify("abs(transpose(var(P)))") == "var(P)"
    # not rewritten: abs of a signed value, a non-root mean, sum of a matrix
    for expr in ("abs(mean(P))", "div(mean(P), abs(mean(Q)))", "sum(P)", "transpose(P)",
                 "add(mean(P), N)", "gm(W)"):
        assert simplify(expr) == expr
    for expr in SEEDS.values():
        assert simplify(expr) == expr
    assert simplify(PUBLISHED) == PUBLISHED


@functools.cache
def _conv_activations() -> tuple[Activations, ScoreSettings]:
    model, space = conv_model()
    ctx = integer_batch((2, 2, 2), LABELS, seed=4)
    settings = ScoreSettings()
    return capture(model, space, ctx.images, ctx.labels, settings), settings


def _same(a: np.ndarray | str, b: np.ndarray | str, what: str) -> None:
    assert isinstance(a, str) == isinstance(b, str), what
    if not isinstance(a, str):
        np.testing.assert_array_equal(a, b, err_msg=what)


def test_simplify_is_exact_and_never_longer_on_random_trees() -> None:
    acts, settings = _conv_activations()
    expressions = random_expressions(seed=2, count=300)
    changed = 0
    for expr in expressions:
        short = simplify(expr)
        assert len(parse(short)) <= len(parse(expr)), (expr, short)
        assert simplify(short) == short, (expr, short)
        if short == expr:
            continue
        changed += 1
        (a,) = score_trees([parse(expr)], acts, settings)
        (b,) = score_trees([parse(short)], acts, settings)
        _same(a, b, f"{expr} -> {short}")
    assert changed > 30


def test_scoring_trees_together_equals_scoring_them_alone() -> None:
    """Trees of one population share subtrees (and their cached values)."""
    acts, settings = _conv_activations()
    expressions = [*random_expressions(seed=3, count=80), *SEEDS.values(), PUBLISHED]
    together = score_trees([parse(e) for e in expressions], acts, settings)
    for expr, joint in zip(expressions, together, strict=True):
        (alone,) = score_trees([parse(expr)], acts, settings)
        _same(joint, alone, expr)


# --------------------------------------------------------------------------- 8. render


def test_render_gives_readable_infix() -> None:
    assert render(SEEDS["fisher"]) == "(mean(P) - mean(Q))^2 / (var(P) + var(Q))"
    assert render(SEEDS["snr"]) == "|(mean(P) - mean(Q)) / (std(P) + std(Q))|"
    assert render(SEEDS["filter_l2"]) == "sqrt(sum(WI^2))"
    assert render(SEEDS["geometric_median"]) == "sqrt(sum((WI - gm(W))^2))"
    assert render(PUBLISHED) == (
        "var(P) / (var(Q) + 0.05) + var(Q) / (var(P) + 0.05) + "
        "(std(mX) * var(Q) * mX + (var(P) - mQ))^2 / (var(P) + var(Q) + 0.05)")
    cases = {
        "sub(P, sub(Q, X))": "P - (Q - X)",
        "sub(sub(P, Q), X)": "P - Q - X",
        "div(P, mul(Q, X))": "P / (Q * X)",
        "mul(div(P, Q), X)": "P / Q * X",
        "mul(add(P, Q), X)": "(P + Q) * X",
        "transpose(add(P, Q))": "(P + Q)^T",
        "mul(plus_005(P), Q)": "(P + 0.05) * Q",
        "sub(P, plus_1e4(Q))": "P - (Q + 1e-4)",
        "matmul(P, outer(mP, mQ))": "P @ outer(mP, mQ)",
        "mean0(inv(W))": "mean_0(inv(W))",
    }
    for expr, text in cases.items():
        assert render(expr) == text, expr
    assert PruningFunction(SEEDS["fisher"]).formula == render(SEEDS["fisher"])


class _Scalar:
    """Python-side scalar semantics of the operators, to evaluate a rendered formula."""

    def __init__(self, v: float) -> None:
        self.v = float(v)

    @staticmethod
    def of(x) -> float:
        return x.v if isinstance(x, _Scalar) else float(x)

    def __add__(self, o):
        return _Scalar(self.v + self.of(o))

    def __sub__(self, o):
        return _Scalar(self.v - self.of(o))

    def __mul__(self, o):
        return _Scalar(self.v * self.of(o))

    __matmul__ = __mul__

    def __truediv__(self, o):
        b = self.of(o)
        return _Scalar(self.v / b if abs(b) > 1e-12 else 0.0)

    def __pow__(self, e):  # x^2^2 renders as x**2**2 = x**4: repeated squares
        v = self.v
        while e > 1:
            assert e % 2 == 0
            v, e = v * v, e // 2
        return _Scalar(v)

    def __abs__(self):
        return _Scalar(abs(self.v))


_SCALAR_FUNCS = {
    "tr": lambda a: a, "mean": lambda a: a, "mean_0": lambda a: a, "sum": lambda a: a,
    "gm": lambda a: a, "std": lambda a: _Scalar(0.0), "var": lambda a: _Scalar(0.0),
    "count": lambda a: _Scalar(1.0), "sqrt": lambda a: _Scalar(math.sqrt(abs(a.v))),
    "inv": lambda a: _Scalar(a.v / (a.v * a.v + 1e-3)), "outer": lambda a, b: a * b,
    "abs": abs,
}


def test_rendered_formulas_evaluate_like_their_trees(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parenthesisation check: with scalar terminals, evaluating the infix text (Python
    precedence) gives the interpreter's value for every random tree."""
    # |x| cannot be parsed back; abs(x) renders with the same precedence (9)
    monkeypatch.setitem(OPERATORS, "abs", Op(OPERATORS["abs"].fn, 1, "abs({0})", 9))
    rng = np.random.default_rng(6)
    scalars = {name: float(v) for name, v in zip(TERMINALS, rng.uniform(0.5, 3.0, 9),
                                                 strict=True)}
    terminals = {name: (lambda v=v: torch.full((1, 1), v, dtype=torch.float64))
                 for name, v in scalars.items()}
    names = {**_SCALAR_FUNCS, **{k: _Scalar(v) for k, v in scalars.items()}}
    for expr in random_expressions(seed=4, count=300):
        text = render(expr).replace("^T", "").replace("^2", "**2")
        got = eval(text, {"__builtins__": {}}, dict(names))  # noqa: S307
        want = Interpreter(terminals)(parse(expr)).item()
        assert _Scalar.of(got) == pytest.approx(want, rel=1e-12, abs=1e-300,
                                                nan_ok=True), (expr, render(expr))


# --------------------------------------------------------------------------- 9. files


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model, space = conv_model()
    ctx = integer_batch((2, 2, 2), LABELS)
    fn = PruningFunction(PUBLISHED, ScoreSettings(spatial=4, max_classes=5, images=64),
                         name="pub", info={"fitness": [0.5, 1.0]})
    path = fn.save(tmp_path / "pub.gp.json")
    assert not list(tmp_path.glob("*.tmp"))
    data = json.loads(path.read_text())
    assert data["expression"] == PUBLISHED and data["version"] == 1
    assert render(PUBLISHED) in data["formula"]
    back = load_function(path)
    assert back == fn
    assert back.info == {"fitness": [0.5, 1.0]} and back.name == "pub"
    np.testing.assert_array_equal(back.score(model, space, ctx), fn.score(model, space, ctx))
    crit = CRITERIA.get("gp:" + str(path))
    assert crit.needs_data and crit.n_images == 64
    assert render(PUBLISHED) in crit.description
    np.testing.assert_array_equal(crit.score(model, space, ctx), fn.score(model, space, ctx))
    assert ("gp:" + str(path)) in CRITERIA


def test_gp_criterion_reloads_a_modified_file(tmp_path: Path) -> None:
    model, space = conv_model()
    ctx = integer_batch((2, 2, 2), LABELS)
    path = tmp_path / "f.gp.json"
    name = "gp:" + str(path)
    PruningFunction(SEEDS["fisher"]).save(path)
    np.testing.assert_array_equal(CRITERIA.get(name).score(model, space, ctx),
                                  CRITERIA.get("fisher").score(model, space, ctx))
    # a different size
    PruningFunction(SEEDS["snr"]).save(path)
    np.testing.assert_array_equal(CRITERIA.get(name).score(model, space, ctx),
                                  CRITERIA.get("snr").score(model, space, ctx))
    # the same size, a new modification time
    PruningFunction("var(P)").save(path)
    np.testing.assert_array_equal(CRITERIA.get(name).score(model, space, ctx),
                                  PruningFunction("var(P)").score(model, space, ctx))
    size = path.stat().st_size
    PruningFunction("var(Q)").save(path)
    assert path.stat().st_size == size
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    np.testing.assert_array_equal(CRITERIA.get(name).score(model, space, ctx),
                                  PruningFunction("var(Q)").score(model, space, ctx))
    # a weights-only function from a file needs no data
    PruningFunction(SEEDS["filter_l1"]).save(path)
    crit = CRITERIA.get(name)
    assert not crit.needs_data
    np.testing.assert_array_equal(crit.score(model, space),
                                  PruningFunction(SEEDS["filter_l1"]).score(model, space))


def _write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _valid(**changes) -> dict:
    return {**PruningFunction("var(P)").to_dict(), **changes}


def test_load_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no pruning-function file"):
        load_function(tmp_path / "missing.gp.json")
    with pytest.raises(FileNotFoundError, match="no file"):
        CRITERIA.get("gp:" + str(tmp_path / "missing.gp.json"))
    assert "gp:/missing" not in CRITERIA
    assert ("gp:" + str(tmp_path / "missing.gp.json")) not in CRITERIA
    bad = {
        "not JSON": ("{not json", "is not JSON"),
        "a list": ([1, 2], "not a pruning-function file"),
        "wrong format": (_valid(format="something-else"), "not a pruning-function file"),
        "wrong version": (_valid(version=2), "has version 2"),
        "no version": ({k: v for k, v in _valid().items() if k != "version"}, "has version"),
        "incomplete": (_valid(expression="add(P)"), "not a complete expression"),
        "unknown op": (_valid(expression="foo(P)"), "not a pruning-function expression"),
        "empty": (_valid(expression=""), "not a complete expression"),
        "not a string": (_valid(expression=5), "needs an \"expression\" string"),
        "unknown setting": (_valid(settings={"colour": 1}), "bad settings"),
        "bad setting": (_valid(settings={"spatial": 0}), "spatial must be"),
    }
    for case, (data, message) in bad.items():
        path = _write(tmp_path / f"{case.replace(' ', '_')}.gp.json", data)
        with pytest.raises(ValueError, match=message):
            load_function(path)
        with pytest.raises(ValueError, match=message):
            CRITERIA.get("gp:" + str(path))
        assert ("gp:" + str(path)) not in CRITERIA, case


def test_expression_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="not a complete expression"):
        PruningFunction("add(P)")
    with pytest.raises(ValueError, match="not a complete expression"):
        parse("div(var(P))")
    with pytest.raises(ValueError, match=r"not a pruning-function expression.*terminals: P"):
        PruningFunction("foo(P)")
    with pytest.raises(ValueError, match="not a pruning-function expression"):
        render("mean(x)")
    with pytest.raises(ValueError, match="not a pruning-function expression"):
        simplify("ARG0")


@pytest.mark.parametrize("field", ["spatial", "images", "max_elements"])
@pytest.mark.parametrize("value", [0, -1])
def test_score_settings_reject_non_positive_values(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=f"ScoreSettings.{field} must be a positive integer"):
        ScoreSettings(**{field: value})


def test_score_settings_need_two_classes() -> None:
    with pytest.raises(ValueError, match=r"max_classes must be .*>= 2"):
        ScoreSettings(max_classes=1)
    assert ScoreSettings(max_classes=2).max_classes == 2


def test_score_settings_reject_non_integers() -> None:
    with pytest.raises(ValueError, match="spatial"):
        ScoreSettings(spatial=2.5)


def test_trailing_tokens_are_refused() -> None:
    with pytest.raises(ValueError):
        PruningFunction("add(P, Q) N")


def test_numeric_constants_are_refused() -> None:
    with pytest.raises(ValueError, match="neither an operator nor a terminal"):
        PruningFunction("add(P, 3)")


def test_a_file_without_an_expression_is_a_clear_error(tmp_path: Path) -> None:
    data = {k: v for k, v in _valid().items() if k != "expression"}
    path = _write(tmp_path / "noexpr.gp.json", data)
    assert ("gp:" + str(path)) not in CRITERIA
    with pytest.raises(ValueError, match="expression"):
        load_function(path)


# --------------------------------------------------------------------------- 10. determinism


def test_scoring_is_deterministic_and_leaves_the_model_alone() -> None:
    torch.manual_seed(0)  # only for the layers' initial weights; the data is explicit
    model = tiny_sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                            nn.Conv2d(4, 3, 1), nn.BatchNorm2d(3), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3))
    space = PruningSpace.from_model(model, (2, 4, 4), SpacePolicy())
    model.train()
    before = state_snapshot(model)
    gen = torch.Generator().manual_seed(0)
    ctx = ScoreContext(images=torch.randn(9, 2, 4, 4, generator=gen),
                       labels=torch.tensor([0, 1, 2] * 3))
    for name in (*DATA_SEEDS, "gp_published"):
        first = CRITERIA.get(name).score(model, space, ctx)
        np.testing.assert_array_equal(first, CRITERIA.get(name).score(model, space, ctx))
    for expr in SEEDS.values():
        fn = PruningFunction(expr)
        np.testing.assert_array_equal(fn.score(model, space, ctx), fn.score(model, space, ctx))
    assert all(m.training for m in model.modules())
    assert_state_equal(before, model)
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    CRITERIA.get("gp_published").score(model, space, ctx)
    assert not any(m.training for m in model.modules())


# --------------------------------------------------------------------------- 11. limits


def test_time_limit_yields_an_error_message() -> None:
    acts, settings = _conv_activations()
    out = score_trees([parse(PUBLISHED), parse(SEEDS["fisher"])], acts, settings,
                      time_limit=1e-9)
    for o in out:
        assert isinstance(o, str) and "time limit" in o
    (ok,) = score_trees([parse(PUBLISHED)], acts, settings, time_limit=60.0)
    assert not isinstance(ok, str)


def test_element_limit_rejects_big_values() -> None:
    model, space = linear_model(out_features=12)
    ctx = integer_batch((2, 1, 1), LABELS)
    settings = ScoreSettings(max_elements=3)  # outer(WI, WI) of a 2-input filter: 4 elements
    acts = capture(model, space, None, None, settings, needs_data=False)
    out = score_trees([parse("outer(WI, WI)"), parse("sum(WI)")], acts, settings)
    assert isinstance(out[0], str) and "exceeds the limit of 3" in out[0]
    assert not isinstance(out[1], str)
    with pytest.raises(ValueError, match="exceeds the limit"):
        PruningFunction("outer(WI, WI)", settings).score(model, space, ctx)
    with pytest.raises(TreeError, match="exceeds the limit"):
        Interpreter(acts.layers[0].terminals(0, 1, torch.float64), max_elements=3)(
            parse("outer(WI, WI)"))


def test_chunked_scores_equal_unchunked_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    model, space = linear_model(out_features=12, seed=1)
    ctx = integer_batch((2, 1, 1), LABELS)
    expressions = [*SEEDS.values(), PUBLISHED, "outer(WI, WI)", "matmul(X, transpose(X))",
                   *random_expressions(seed=5, count=40)]
    trees = [parse(e) for e in expressions]
    acts = capture(model, space, ctx.images, ctx.labels, ScoreSettings())
    layer = acts.layers[0]
    peak = 0
    for tree in trees:
        interp = Interpreter(layer.terminals(0, 1, torch.float64))
        interp(tree)
        peak = max(peak, interp.peak)

    sizes: list[int] = []

    class Counting(Interpreter):
        def __init__(self, terminals, *args, **kwargs) -> None:
            sizes.append(terminals["N"]().shape[0])
            super().__init__(terminals, *args, **kwargs)

    monkeypatch.setattr(gp_function, "Interpreter", Counting)
    whole = score_trees(trees, acts, ScoreSettings(max_elements=1 << 30))
    assert sizes == [1, 11]
    sizes.clear()
    chunked = score_trees(trees, acts, ScoreSettings(max_elements=peak + 1))
    assert len(sizes) > 2 and sum(sizes) == 12  # several chunks
    for expr, a, b in zip(expressions, whole, chunked, strict=True):
        assert not isinstance(a, str) and not isinstance(b, str), expr
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-300, err_msg=expr)
