"""The criteria library: hand-made rankings, exact formulas, and a contract over every model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import model_and_space, tiny_model_ids, tiny_sequential
from torch import nn

from moprune.core.space import PruningSpace, SpacePolicy
from moprune.criteria import CRITERIA, ScoreContext, rank_channels
from moprune.criteria.gradients import mask_gradients
from moprune.data.datasets import Normalization, Split


def _model() -> tuple[nn.Module, PruningSpace]:
    """conv1 (1 -> 3 channels, 1x1) -> BN -> ReLU -> conv2 (3 -> 2) -> BN -> pool -> fc."""
    torch.manual_seed(0)
    model = tiny_sequential(nn.Conv2d(1, 3, 1, bias=False), nn.BatchNorm2d(3), nn.ReLU(),
                            nn.Conv2d(3, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 4)).eval()
    space = PruningSpace.from_model(model, (1, 4, 4), SpacePolicy())
    assert [(g.name, g.size) for g in space.groups] == [("l0", 3), ("l3", 2)]
    return model, space


def _context(shape: tuple[int, ...], n_classes: int, n: int = 6, seed: int = 0,
             reinit: bool = False) -> ScoreContext:
    g = torch.Generator().manual_seed(seed)
    return ScoreContext(images=torch.randn((n, *shape), generator=g),
                        labels=torch.randint(0, n_classes, (n,), generator=g), seed=seed,
                        reinit=reinit)


def test_fpgm_scores_filters_near_the_geometric_median_lowest() -> None:
    model, space = _model()
    with torch.no_grad():
        model.l0.weight.copy_(torch.tensor([0.0, 1.0, 10.0]).view(3, 1, 1, 1))
    scores = CRITERIA.get("fpgm").score(model, space)
    # distances: f0 = 1 + 10 = 11, f1 = 1 + 9 = 10, f2 = 10 + 9 = 19
    np.testing.assert_allclose(scores[:3], [11.0, 10.0, 19.0])
    assert rank_channels(space, scores)[0].tolist() == [2, 0, 1]
    # L1 would keep f1 over f0; FPGM prefers the outlier-free order above
    assert rank_channels(space, CRITERIA.get("l1").score(model, space))[0].tolist() == [2, 1, 0]


def test_bn_scale_ranks_by_absolute_gamma() -> None:
    model, space = _model()
    with torch.no_grad():
        model.l1.weight.copy_(torch.tensor([0.5, -3.0, 1.0]))
        model.l4.weight.copy_(torch.tensor([0.1, 0.2]))
    scores = CRITERIA.get("bn_scale").score(model, space)
    np.testing.assert_allclose(scores, [0.5, 3.0, 1.0, 0.1, 0.2])
    assert [r.tolist() for r in rank_channels(space, scores)] == [[1, 2, 0], [1, 0]]


def test_bn_scale_falls_back_to_l1_without_batchnorm() -> None:
    model = tiny_sequential(nn.Conv2d(1, 3, 1), nn.ReLU(), nn.Conv2d(3, 2, 1),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2)).eval()
    space = PruningSpace.from_model(model, (1, 4, 4), SpacePolicy())
    np.testing.assert_allclose(CRITERIA.get("bn_scale").score(model, space),
                               CRITERIA.get("l1").score(model, space))


def test_random_is_seeded_and_explicit() -> None:
    model, space = _model()
    crit = CRITERIA.get("random")
    a = crit.score(model, space, ScoreContext(seed=3))
    np.testing.assert_array_equal(a, crit.score(model, space, ScoreContext(seed=3)))
    assert not np.array_equal(a, crit.score(model, space, ScoreContext(seed=4)))


def test_mask_gradient_criteria_follow_their_formulas() -> None:
    model, space = _model()
    ctx = _context((1, 4, 4), 4)
    # reference: G = W * dL/dW with plain autograd
    ref = tiny_sequential(*[m for m in model.children()])
    ref.zero_grad()
    F.cross_entropy(ref(ctx.images), ctx.labels).backward()
    G = {n: (ref.get_submodule(n).weight * ref.get_submodule(n).weight.grad).detach().double()
         for n in ("l0", "l3")}
    ref.zero_grad(set_to_none=True)
    got = mask_gradients(model, space, ctx)
    for n in G:
        torch.testing.assert_close(got[n].double(), G[n])
    rows = {n: G[n].flatten(1).numpy() for n in G}
    expect = {
        "grad_l1": np.concatenate([np.abs(rows[n]).sum(1) for n in ("l0", "l3")]),
        "grad_l2": np.concatenate([np.linalg.norm(rows[n], axis=1) / np.linalg.norm(rows[n])
                                   for n in ("l0", "l3")]),
        "grad_es": np.concatenate([np.abs(rows[n]).max(1) / np.abs(rows[n]).sum()
                                   for n in ("l0", "l3")]),
        "grad_gm": np.concatenate([
            np.linalg.norm(rows[n][:, None] - rows[n][None], axis=2).sum(1) for n in ("l0", "l3")]),
    }
    for name, values in expect.items():
        np.testing.assert_allclose(CRITERIA.get(name).score(model, space, ctx), values,
                                   rtol=1e-6, atol=1e-12, err_msg=name)


def test_a_dead_filter_ranks_last_by_the_gradient_criteria() -> None:
    model, space = _model()
    with torch.no_grad():
        model.l0.weight[1].zero_()
    ctx = _context((1, 4, 4), 4)
    for name in ("grad_l1", "grad_l2", "grad_es", "taylor"):
        order = rank_channels(space, CRITERIA.get(name).score(model, space, ctx))[0]
        assert order[-1] == 1, name


def test_taylor_equals_activation_times_gradient() -> None:
    model, space = _model()
    ctx = _context((1, 4, 4), 4)
    ref = tiny_sequential(*[m for m in model.children()])
    acts = {}
    x = ctx.images
    for name, module in ref.named_children():
        x = module(x)
        if name in ("l0", "l3"):
            x.retain_grad()
            acts[name] = x
    F.cross_entropy(x, ctx.labels).backward()
    expected = np.concatenate([
        ((acts[n] * acts[n].grad).sum((2, 3)).mean(0)).abs().detach().double().numpy()
        for n in ("l0", "l3")])
    ref.zero_grad(set_to_none=True)
    np.testing.assert_allclose(CRITERIA.get("taylor").score(model, space, ctx), expected,
                               rtol=1e-6)


def test_reinit_scores_a_reinitialised_copy() -> None:
    model, space = _model()
    plain = CRITERIA.get("grad_l1").score(model, space, _context((1, 4, 4), 4))
    re0 = CRITERIA.get("grad_l1").score(model, space, _context((1, 4, 4), 4, reinit=True))
    again = CRITERIA.get("grad_l1").score(model, space, _context((1, 4, 4), 4, reinit=True))
    other = CRITERIA.get("grad_l1").score(model, space,
                                          _context((1, 4, 4), 4, reinit=True, seed=1))
    np.testing.assert_array_equal(re0, again)
    assert not np.allclose(plain, re0) and not np.allclose(re0, other)


@pytest.mark.parametrize("name", [n for n in CRITERIA.names() if CRITERIA.get(n).needs_data])
def test_data_criteria_without_a_batch_are_a_clear_error(name) -> None:
    model, space = _model()
    with pytest.raises(ValueError, match="needs a batch of training images"):
        CRITERIA.get(name).score(model, space)


def test_context_from_split_is_seeded_and_normalised() -> None:
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8, generator=g),
                  torch.randint(0, 3, (50,), generator=g))
    norm = Normalization((0.5,), (0.25,))
    a = ScoreContext.from_split(split, norm, seed=1, n_images=8)
    b = ScoreContext.from_split(split, norm, seed=1, n_images=8)
    c = ScoreContext.from_split(split, norm, seed=2, n_images=8)
    torch.testing.assert_close(a.images, b.images)
    assert a.images.shape == (8, 1, 4, 4) and a.images.dtype == torch.float32
    assert not torch.equal(a.images, c.images)
    assert float(a.images.min()) >= -2.0 and float(a.images.max()) <= 2.0
    with pytest.raises(ValueError, match="split is empty"):
        ScoreContext.from_split(split.subset(0), norm, seed=0)


# ---------------------------------------------------------------------------- contract

CONTRACT_MODELS = [m for m in tiny_model_ids() if m != "tv:vgg11_bn"]  # vgg: slow classifier


@pytest.mark.parametrize("residual", [False, True], ids=["internal", "residual"])
@pytest.mark.parametrize("model_id", CONTRACT_MODELS)
def test_every_criterion_on_every_model(model_id, residual) -> None:
    """Shape, finite, deterministic, and nothing of the model or the global RNG changes."""
    model, space, shape = model_and_space(model_id, residual)
    n_classes = int(model(torch.zeros(1, *shape)).shape[1])
    ctx = _context(shape, n_classes, n=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    for name in CRITERIA.names():
        crit = CRITERIA.get(name)
        scores = crit.score(model, space, ctx)
        assert scores.shape == (space.n_channels,) and scores.dtype == np.float64, name
        assert np.isfinite(scores).all(), name
        np.testing.assert_array_equal(scores, crit.score(model, space, ctx), err_msg=name)
        assert len(rank_channels(space, scores)) == space.n_groups
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


# ---------------------------------------------------------------------------- in problems


def test_ratio_problem_ranks_with_a_data_criterion_from_training_images(digits_weights) -> None:
    import dataclasses

    from moprune.tasks.setup import make_problem
    from moprune.tasks.task import DataRequest, TaskOptions, load_problem_file

    repo = Path(__file__).resolve().parents[2]
    task = load_problem_file(repo / "problems" / "digits_demo.py",
                             TaskOptions(weights=digits_weights))
    task = dataclasses.replace(task, encoding="ratio", criterion="grad_l1")
    with pytest.raises(ValueError, match="ranks channels with a batch of training images"):
        make_problem(task, task.load_data(DataRequest(root=None, seed=0, eval_images=64)))
    data = task.load_data(DataRequest(root=None, seed=0, eval_images=64, load_train=True))
    setup = make_problem(task, data, seed=0)
    expected = rank_channels(setup.space, CRITERIA.get("grad_l1").score(
        task.model, setup.space, ScoreContext.from_split(data.train, data.normalization, 0)))
    for got, want in zip(setup.problem.encoding.ranking, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    res = setup.problem.evaluate(np.full((2, setup.problem.n_var), 0.3), return_as_dictionary=True)
    assert res["F"].shape == (2, 2)
