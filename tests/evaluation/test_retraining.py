"""Partial retraining of every candidate (DeepPruningES's objective): scores, seeding, cache,
recipes, and how make_problem wires it in."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch
from helpers import (
    assert_state_equal,
    digits_bundle,
    make_digits_cnn_model,
    one_torch_thread,
    state_snapshot,
    tiny_sequential,
)
from torch import nn

from moprune.core.plan import PruningPlan, masks_matrix
from moprune.core.space import PruningSpace, SpacePolicy
from moprune.core.surgery import prune_model
from moprune.data.datasets import DataBundle, Split, load_dataset
from moprune.evaluation.evaluator import Evaluator
from moprune.evaluation.retraining import (
    Retraining,
    RetrainingEvaluator,
    final_recipe,
    partial_recipe,
)
from moprune.problems.mask import FilterMaskProblem
from moprune.problems.ratio import LayerRatioProblem
from moprune.tasks.setup import make_problem
from moprune.tasks.task import PruningTask
from moprune.training.finetune import FinetuneConfig, evaluate_accuracy

MIN_CHANNELS = 2
N_TRAIN, N_VAL, N_TEST = 128, 96, 64
BASE = FinetuneConfig(epochs=5, lr=0.05, batch_size=32, weight_decay=1e-4, augment=False,
                      augment_flip=False)
RECIPE = partial_recipe(BASE, 1, lr=0.01)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    yield from one_torch_thread()




@functools.cache
def digits_data() -> tuple[Split, Split, Split]:
    b = digits_bundle()
    return b.train.subset(N_TRAIN), b.val.subset(N_VAL), b.test.subset(N_TEST)


@functools.cache
def digits_space() -> PruningSpace:
    return PruningSpace.from_model(make_digits_cnn_model(0), digits_bundle().input_shape,
                                   SpacePolicy(min_channels=MIN_CHANNELS))


def retrainer(seed: int = 0, config: FinetuneConfig = RECIPE, model: nn.Module | None = None,
              train: Split | None = None) -> RetrainingEvaluator:
    tr, val, _ = digits_data()
    return RetrainingEvaluator(make_digits_cnn_model(0) if model is None else model,
                               digits_space(), tr if train is None else train, val,
                               digits_bundle().normalization, config, seed=seed, device="cpu")


def random_masks(n: int, seed: int = 0, keep: float = 0.7) -> np.ndarray:
    """Random keep-masks (row 0 unpruned), every group keeping at least one channel."""
    space = digits_space()
    X = np.random.default_rng(seed).random((n, space.n_channels)) < keep
    X[0] = True
    for g in range(space.n_groups):
        X[~X[:, space.group_slice(g)].any(axis=1), space.offsets[g]] = True
    return X


MASKS = random_masks(4)


def weights_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------- the scores


def test_scores_are_the_accuracy_of_the_retrained_candidates() -> None:
    ev = retrainer()
    res = ev.evaluate_masks(MASKS)
    assert res.accuracy.shape == res.loss.shape == (len(MASKS),)
    _, val, _ = digits_data()
    norm = digits_bundle().normalization
    for mask, acc, loss in zip(MASKS, res.accuracy, res.loss):
        net = ev.trained(mask)
        assert not net.training
        assert (acc, loss) == evaluate_accuracy(net, val, norm)  # exactly
    # evaluate(plans) is evaluate_masks of the plans' masks
    plans = [PruningPlan.from_mask(digits_space(), m) for m in MASKS]
    np.testing.assert_array_equal(ev.evaluate(plans).accuracy, res.accuracy)
    np.testing.assert_array_equal(masks_matrix(digits_space(), plans), MASKS)
    assert ev.mode == "retrain" and ev.n_images == N_VAL


def test_same_mask_same_score_in_any_batch_and_evaluator() -> None:
    a = retrainer(seed=7).evaluate_masks(MASKS)
    # another order, another batch composition, one by one, a fresh evaluator each time
    perm = [2, 0, 3, 1]
    b = retrainer(seed=7).evaluate_masks(MASKS[perm])
    np.testing.assert_array_equal(b.accuracy, a.accuracy[perm])
    np.testing.assert_array_equal(b.loss, a.loss[perm])
    c = retrainer(seed=7)
    for i in (3, 1):
        r = c.evaluate_masks(MASKS[i])
        assert (r.accuracy[0], r.loss[0]) == (a.accuracy[i], a.loss[i])
    # the global torch RNG does not matter
    torch.manual_seed(12345)
    d = retrainer(seed=7).evaluate_masks(MASKS[1:2])
    assert (d.accuracy[0], d.loss[0]) == (a.accuracy[1], a.loss[1])


def test_seed_and_mask_determine_the_trained_weights() -> None:
    mask = MASKS[1]
    a, b, other = retrainer(seed=3), retrainer(seed=3), retrainer(seed=4)
    assert a.candidate_seed(mask) == b.candidate_seed(mask) != other.candidate_seed(mask)
    assert a.candidate_seed(mask) != a.candidate_seed(MASKS[2])
    assert 0 <= a.candidate_seed(mask) < 2**63
    assert weights_equal(a.trained(mask), b.trained(mask))
    assert weights_equal(a.trained(mask), a.trained(mask))  # repeatable on one evaluator
    assert not weights_equal(a.trained(mask), other.trained(mask))
    # another seed gives another model, and (here) another loss
    assert a.evaluate_masks(mask).loss[0] != other.evaluate_masks(mask).loss[0]


def test_the_callers_model_is_unchanged() -> None:
    model = make_digits_cnn_model(0)
    before = state_snapshot(model)
    ev = retrainer(model=model)
    ev.evaluate_masks(MASKS)
    ev.trained(MASKS[2])
    ev.evaluate_on(MASKS[:1], digits_data()[2])
    assert_state_equal(before, model)
    assert not model.training


def test_duplicates_are_cache_hits() -> None:
    ev = retrainer()
    masks = MASKS[[0, 1, 1, 2, 0]]
    res = ev.evaluate_masks(masks)
    assert (ev.stats.evaluations, ev.stats.cache_hits) == (3, 2)
    assert res.accuracy[1] == res.accuracy[2] and res.loss[0] == res.loss[4]
    again = ev.evaluate_masks(MASKS[[2, 3]])  # 2 is cached, 3 is new
    assert (ev.stats.evaluations, ev.stats.cache_hits) == (4, 3)
    assert again.loss[0] == res.loss[3]
    # images counted: the val split per candidate plus its training epochs
    assert ev.stats.images == 4 * (N_VAL + RECIPE.epochs * N_TRAIN)


def test_baseline_is_the_unretrained_network() -> None:
    model = make_digits_cnn_model(0)
    _, val, _ = digits_data()
    norm = digits_bundle().normalization
    plain = Evaluator(model, digits_space(), val, norm, device="cpu")
    ev = retrainer(model=model)
    base, ref = ev.baseline(), plain.baseline()
    np.testing.assert_array_equal(base.accuracy, ref.accuracy)
    np.testing.assert_allclose(base.loss, ref.loss, rtol=0, atol=1e-12)
    assert base.accuracy[0] == evaluate_accuracy(model, val, norm)[0]
    # ... while the unpruned mask is scored after its retraining
    full = ev.evaluate_masks(np.ones(digits_space().n_channels, dtype=bool))
    assert full.loss[0] != base.loss[0]
    assert ev.stats.evaluations == 1  # the baseline is not counted as a retrained candidate


def test_retraining_changes_the_pruned_weights() -> None:
    model = make_digits_cnn_model(0)
    ev = retrainer(model=model)
    space = digits_space()
    mask = MASKS[1]
    plan = PruningPlan.from_mask(space, mask)
    plain = prune_model(model, space, plan)
    trained = ev.trained(mask)
    sp, st = plain.state_dict(), trained.state_dict()
    assert list(sp) == list(st)
    assert all(sp[k].shape == st[k].shape for k in sp)  # the same architecture ...
    changed = [k for k in sp if k.endswith("weight") and not torch.equal(sp[k], st[k])]
    assert {"conv1.weight", "conv2.weight", "conv3.weight", "fc.weight"} <= set(changed)
    # the architecture is the plan's
    kept = plan.n_kept()
    assert trained.conv1.out_channels == kept[0] and trained.fc.in_features == kept[-1]
    # and the score is that of the retrained network, not of the plainly pruned one
    _, val, _ = digits_data()
    norm = digits_bundle().normalization
    assert ev.evaluate_masks(mask).loss[0] != evaluate_accuracy(plain, val, norm)[1]


def test_evaluate_on_another_split() -> None:
    ev = retrainer()
    _, val, test = digits_data()
    norm = digits_bundle().normalization
    res = ev.evaluate_on(MASKS[:3], test)
    assert res.accuracy.shape == (3,)
    for mask, acc, loss in zip(MASKS[:3], res.accuracy, res.loss):
        assert (acc, loss) == evaluate_accuracy(ev.trained(mask), test, norm)
    # on the CPU the weights are the scored ones: evaluate_on the val split is the score
    on_val = ev.evaluate_on(MASKS[:3], val)
    scored = ev.evaluate_masks(MASKS[:3])
    np.testing.assert_array_equal(on_val.accuracy, scored.accuracy)
    np.testing.assert_array_equal(on_val.loss, scored.loss)


def test_bad_configuration_and_input() -> None:
    with pytest.raises(ValueError, match=r"epochs >= 1 \(got 0\)"):
        retrainer(config=dataclasses.replace(RECIPE, epochs=0))
    empty = Split(torch.zeros((0, 1, 8, 8), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="training split is empty.*load_train=True"):
        retrainer(train=empty)
    no_train = load_dataset("digits", root=None, seed=0, load_train=False).train
    assert len(no_train) == 0
    with pytest.raises(ValueError, match="training split is empty"):
        retrainer(train=no_train)
    with pytest.raises(ValueError, match=f"{digits_space().n_channels} columns"):
        retrainer().evaluate_masks(np.ones((2, 5), dtype=bool))


def test_recipes() -> None:
    base = FinetuneConfig(epochs=40, lr=0.1, momentum=0.5, nesterov=False, schedule="cosine",
                          batch_size=64, weight_decay=3e-4, augment=True, augment_flip=False,
                          label_smoothing=0.1)
    p = partial_recipe(base, 3)
    assert (p.epochs, p.lr, p.momentum, p.nesterov, p.schedule) == \
        (3, 1e-3, 0.9, True, "constant")
    # augmentation, batch size, weight decay (and the rest) come from the base recipe
    assert dataclasses.replace(p, epochs=40, lr=0.1, momentum=0.5, nesterov=False,
                               schedule="cosine") == base
    assert partial_recipe(base, 2, lr=0.02).lr == 0.02
    f = final_recipe(base, 200)
    assert (f.epochs, f.lr, f.momentum, f.nesterov, f.schedule) == \
        (200, 1e-4, 0.9, True, "constant")
    assert (f.batch_size, f.weight_decay, f.augment, f.augment_flip, f.label_smoothing) == \
        (64, 3e-4, True, False, 0.1)
    assert base.epochs == 40 and base.lr == 0.1  # the base is not changed
    with pytest.raises(ValueError, match="epochs"):
        partial_recipe(base, -1)


# ---------------------------------------------------------------------------- make_problem


@functools.cache
def digits_task() -> PruningTask:
    b = digits_bundle()
    train, val, test = digits_data()
    data = dataclasses.replace(b, train=train, val=val, test=test)
    return PruningTask(name="digits", model=make_digits_cnn_model(0), input_shape=(1, 8, 8),
                       load_data=lambda request: data,
                       policy=SpacePolicy(min_channels=MIN_CHANNELS), finetune=BASE)


def task_data() -> DataBundle:
    return digits_task().load_data(None)


def test_make_problem_with_retraining() -> None:
    task, data = digits_task(), task_data()
    recipe = partial_recipe(task.finetune, 1)
    setup = make_problem(task, data, scoring=Retraining(recipe), seed=5)
    ev = setup.evaluator
    assert isinstance(ev, RetrainingEvaluator)
    assert ev.config == recipe and ev.seed == 5
    assert isinstance(setup.problem, FilterMaskProblem)
    plain = make_problem(task, data)
    assert isinstance(plain.evaluator, Evaluator)
    # the baseline is the unretrained network's
    assert setup.problem.baseline["val_accuracy"] == plain.problem.baseline["val_accuracy"]
    assert setup.problem.baseline["val_accuracy"] == \
        evaluate_accuracy(task.model, data.val, data.normalization)[0]
    # the problem's error objective is 1 - the retrained accuracy
    X = MASKS[:2]
    F = setup.problem.evaluate(X, return_values_of=["F"])
    np.testing.assert_array_equal(F[:, 0], 1.0 - ev.evaluate_masks(X).accuracy)
    assert ev.stats.cache_hits == 2  # scored once, by the problem
    # the cost objective does not depend on the scorer
    F_plain = plain.problem.evaluate(X, return_values_of=["F"])
    np.testing.assert_array_equal(F[:, 1], F_plain[:, 1])
    # epochs 0 means no retraining: the plain evaluator
    none = make_problem(task, data, scoring=Retraining(dataclasses.replace(recipe, epochs=0)))
    assert isinstance(none.evaluator, Evaluator)
    # the seed reaches the evaluator: another seed, other weights
    other = make_problem(task, data, scoring=Retraining(recipe), seed=6).evaluator
    assert not weights_equal(ev.trained(MASKS[1]), other.trained(MASKS[1]))
    # ratio encoding works with retraining too
    ratio = make_problem(task, data, scoring=Retraining(recipe), encoding="ratio")
    assert isinstance(ratio.problem, LayerRatioProblem)
    assert isinstance(ratio.evaluator, RetrainingEvaluator)


def test_make_problem_residual_option() -> None:
    task, data = digits_task(), task_data()
    assert not task.policy.residual
    setup = make_problem(task, data, residual=True)
    assert setup.space.policy.residual
    assert setup.space.policy.min_channels == MIN_CHANNELS  # the rest of the policy is kept
    assert not make_problem(task, data).space.policy.residual
    assert not make_problem(task, data, residual=False).space.policy.residual
    both = make_problem(task, data, residual=True, scoring=Retraining(partial_recipe(BASE, 1)))
    assert both.evaluator.space is both.space and both.space.policy.residual


# ---------------------------------------------------------------------------- dropout


def test_scores_do_not_depend_on_the_global_rng_with_dropout() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = tiny_sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(8, 10)).eval()
    tr, val, _ = digits_data()
    space = PruningSpace.from_model(model, (1, 8, 8), SpacePolicy())
    mask = np.ones(space.n_channels, dtype=bool)
    mask[:3] = False
    scores = []
    for global_seed in (1, 2):
        ev = RetrainingEvaluator(model, space, tr, val, digits_bundle().normalization, RECIPE,
                                 seed=0)
        with torch.random.fork_rng():
            torch.manual_seed(global_seed)
            scores.append(ev.evaluate_masks(mask).loss[0])
    assert scores[0] == scores[1]
