"""The evaluator: gate and slice modes agree, results are cached, bad input is refused."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import make_digits_cnn_model, model_and_space, one_torch_thread, random_plan

from moprune.core.plan import PruningPlan, masks_matrix
from moprune.core.space import PruningSpace, SpacePolicy
from moprune.core.surgery import prune_model
from moprune.data.datasets import Normalization, Split, load_dataset
from moprune.errors import NonFiniteError
from moprune.evaluation.evaluator import Evaluator


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    yield from one_torch_thread()


@functools.cache
def digits_bundle():
    return load_dataset("digits", root=None, seed=0, load_train=False)


def digits_setup(n_images: int = 96):
    bundle = digits_bundle()
    model = make_digits_cnn_model(0)
    space = PruningSpace.from_model(model, bundle.input_shape, SpacePolicy(residual=True))
    return model, space, bundle.val.subset(n_images), bundle.normalization


def resnet_setup(n_images: int = 24):
    model, space, shape = model_and_space("cifar_resnet20", True)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n_images, *shape), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n_images,), generator=g)
    norm = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return model, space, Split(images, labels), norm


SETUPS = {"digits_cnn": digits_setup, "cifar_resnet20": resnet_setup}


@pytest.mark.parametrize("name", list(SETUPS))
def test_gate_and_slice_agree_with_the_pruned_model(name: str) -> None:
    model, space, split, norm = SETUPS[name]()
    rng = np.random.default_rng(0)
    plans = [PruningPlan.full(space)] + [random_plan(space, rng, p)
                                         for p in rng.uniform(0.2, 0.95, 7)]
    # small batches force several chunks in both modes
    gate = Evaluator(model, space, split, norm, device="cpu", mode="gate", batch_size=16)
    slc = Evaluator(model, space, split, norm, device="cpu", mode="slice", batch_size=10)
    a, b = gate.evaluate(plans), slc.evaluate(plans)
    np.testing.assert_array_equal(a.accuracy, b.accuracy)
    np.testing.assert_allclose(a.loss, b.loss, rtol=0, atol=1e-5)
    assert a.accuracy.shape == a.loss.shape == (len(plans),)
    assert np.all((a.accuracy >= 0) & (a.accuracy <= 1)) and np.all(a.loss > 0)
    # ... and both equal the physically pruned network
    x = norm.apply(split.images)
    for i in (0, 3, 7):
        with torch.no_grad():
            logits = prune_model(model, space, plans[i])(x)
        acc = (logits.argmax(1) == split.labels).double().mean().item()
        loss = F.cross_entropy(logits, split.labels).item()
        assert a.accuracy[i] == pytest.approx(acc, abs=1e-12)
        assert a.loss[i] == pytest.approx(loss, abs=1e-5)
    # the baseline is the full plan, and auto mode on a CPU slices
    np.testing.assert_array_equal(gate.baseline().accuracy, a.accuracy[:1])
    auto = Evaluator(model, space, split, norm)
    assert auto.mode == "slice" and auto.device == torch.device("cpu")
    np.testing.assert_array_equal(auto.evaluate(plans[:3]).accuracy, a.accuracy[:3])


def test_evaluator_does_not_change_the_model() -> None:
    model, space, split, norm = digits_setup(32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    ev = Evaluator(model, space, split, norm, mode="gate")
    ev.evaluate([random_plan(space, np.random.default_rng(0), 0.5)])
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("mode", ["gate", "slice"])
def test_cache_counts_hits_not_evaluations(mode: str) -> None:
    model, space, split, norm = digits_setup(32)
    ev = Evaluator(model, space, split, norm, mode=mode)
    rng = np.random.default_rng(1)
    masks = masks_matrix(space, [random_plan(space, rng, 0.5) for _ in range(4)])
    first = ev.evaluate_masks(masks)
    assert (ev.stats.evaluations, ev.stats.cache_hits) == (4, 0)
    assert ev.stats.images == 4 * 32
    second = ev.evaluate_masks(masks)
    assert (ev.stats.evaluations, ev.stats.cache_hits) == (4, 4)
    np.testing.assert_array_equal(first.accuracy, second.accuracy)
    np.testing.assert_array_equal(first.loss, second.loss)
    # duplicate rows in one call are evaluated once; the results are in row order
    new = masks_matrix(space, [random_plan(space, rng, 0.3)])[0]
    batch = np.stack([new, masks[0], new, new, masks[2]])
    res = ev.evaluate_masks(batch)
    assert ev.stats.evaluations == 5
    assert ev.stats.cache_hits == 4 + 4
    assert res.accuracy[0] == res.accuracy[2] == res.accuracy[3]
    assert res.accuracy[1] == first.accuracy[0] and res.accuracy[4] == first.accuracy[2]
    # the same plans through evaluate() hit the cache too
    ev.evaluate([PruningPlan.from_mask(space, masks[1])])
    assert ev.stats.evaluations == 5


def test_duplicates_within_first_call() -> None:
    model, space, split, norm = digits_setup(16)
    ev = Evaluator(model, space, split, norm, mode="gate")
    mask = random_plan(space, np.random.default_rng(2), 0.5).mask(space)
    res = ev.evaluate_masks(np.stack([mask, mask, mask]))
    assert ev.stats.evaluations == 1 and ev.stats.cache_hits == 2
    assert len(set(res.loss.tolist())) == 1


@pytest.mark.parametrize("mode", ["gate", "slice"])
def test_nan_weights_raise(mode: str) -> None:
    model, space, split, norm = digits_setup(16)
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    ev = Evaluator(model, space, split, norm, mode=mode)
    with pytest.raises(NonFiniteError, match="NaN"):
        ev.baseline()
    assert ev.stats.evaluations == 0  # nothing was cached


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_says_use_cpu() -> None:
    model, space, split, norm = digits_setup(8)
    # DeviceError (a ValueError) in the current library; RuntimeError in the original brief
    with pytest.raises((RuntimeError, ValueError), match="--device cpu"):
        Evaluator(model, space, split, norm, device="cuda")


def test_bad_device_mode_split_and_masks() -> None:
    model, space, split, norm = digits_setup(8)
    with pytest.raises(ValueError, match="bogus"):
        Evaluator(model, space, split, norm, mode="bogus")
    with pytest.raises(ValueError, match="device"):
        Evaluator(model, space, split, norm, device="meta")
    with pytest.raises(ValueError, match="batch_size"):
        Evaluator(model, space, split, norm, batch_size=0)
    empty = Split(split.images[:0], split.labels[:0])
    with pytest.raises(ValueError, match="empty"):
        Evaluator(model, space, empty, norm)
    ev = Evaluator(model, space, split, norm)
    with pytest.raises(ValueError, match=str(space.n_channels)):
        ev.evaluate_masks(np.ones((2, space.n_channels - 1), dtype=bool))
    with pytest.raises(ValueError, match=str(space.n_channels)):
        ev.evaluate_masks(np.ones(space.n_channels + 3, dtype=bool))
    assert ev.stats.evaluations == 0
