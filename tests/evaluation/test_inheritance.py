"""Weight inheritance through a supernet (EvoFC): taking sliced weights out and writing them
back, the global training schedule, divergence, resume, equality with physically pruned
training, random initialisation, and training from scratch."""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import warnings

import numpy as np
import pytest
import torch
from helpers import (
    assert_state_equal,
    digits_bundle,
    digits_eval_setup,
    model_and_space,
    one_torch_thread,
    random_plan,
    state_snapshot,
)
from torch import nn

from moprune.core.execution import Execution
from moprune.core.layers import LAYER_RULES, ConvRule, LinearRule
from moprune.core.plan import PruningPlan
from moprune.core.sliced import SlicedModel
from moprune.core.space import PruningSpace
from moprune.core.surgery import prune_model
from moprune.data.datasets import Normalization, Split
from moprune.evaluation.evaluator import Evaluator
from moprune.evaluation.inheritance import BatchStream, InheritanceEvaluator, take_out, write_back
from moprune.evaluation.retraining import RetrainingEvaluator
from moprune.training.finetune import FinetuneConfig, _lr_at, evaluate_accuracy
from moprune.training.init import random_init

N_TRAIN = 128  # 4 batches of 32 per epoch
RECIPE = FinetuneConfig(epochs=2, lr=0.05, batch_size=32, weight_decay=5e-4, augment=False,
                        augment_flip=False)  # cosine, momentum 0.9, Nesterov
SLICE_MODELS = [("digits_cnn", False), ("cifar_resnet20", False), ("cifar_resnet20", True),
                ("dense_concat_cnn", False), ("depthwise_avgpool_cnn", False),
                ("flatten_linear_cnn", False)]
SLICE_IDS = [f"{m}-{'residual' if r else 'internal'}" for m, r in SLICE_MODELS]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    yield from one_torch_thread()


# ---------------------------------------------------------------------------- set-ups




def digits() -> tuple[nn.Module, PruningSpace, Split, Split, Normalization]:
    """The seeded digits CNN (no dropout), its space (min 2), train and val splits."""
    model, space, val, norm = digits_eval_setup()
    return copy.deepcopy(model), space, digits_bundle().train.subset(N_TRAIN), val, norm


def synthetic(shape: tuple[int, int, int], n: int, seed: int, classes: int = 10) -> Split:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    return Split(images, torch.randint(0, classes, (n,), generator=g))


def resnet20(residual: bool = False):
    """cifar_resnet20 on random 3x16x16 images (augmented batches: crop and flip)."""
    model, space, shape = model_and_space("cifar_resnet20", residual)
    norm = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return model, space, synthetic(shape, 48, 1), synthetic(shape, 24, 2), norm


RESNET_RECIPE = dataclasses.replace(RECIPE, epochs=1, batch_size=16, augment=True,
                                    augment_flip=True)


def inheritor(planned: int, seed: int = 0, recipe: FinetuneConfig = RECIPE,
              setup=None) -> InheritanceEvaluator:
    model, space, train, val, norm = setup or digits()
    return InheritanceEvaluator(model, space, train, val, norm, recipe, planned=planned,
                                seed=seed)


def digits_masks(n: int, seed: int = 0, keep: float = 0.6) -> np.ndarray:
    space = digits()[1]
    rng = np.random.default_rng(seed)
    return np.array([random_plan(space, rng, keep).mask(space) for _ in range(n)])


def kept_entries(space: PruningSpace, model: nn.Module, mask: np.ndarray
                 ) -> dict[str, torch.Tensor]:
    """Per trained tensor of a layer with a pruned dimension: True at the entries a plan keeps.

    Built from the space's owner arrays (index j of a dimension is kept when it is fixed,
    -1, or its channel is kept), independently of SlicedModel.
    """
    mask = np.asarray(mask, dtype=bool)

    def keep(name: str, dim: str) -> np.ndarray | None:
        own = space.owner.get((name, dim))
        if own is None:
            return None
        return (own < 0) | mask[np.maximum(own, 0)]

    def prunable(name: str) -> bool:
        return any((own >= 0).any() for (n, _), own in space.owner.items() if n == name)

    out = {}
    for name, info in space.layers.items():
        if not LAYER_RULES.get(info.kind).trained or not prunable(name):
            continue  # no prunable dimension: never sliced (trained whole)
        k_out, k_in = keep(name, "out"), keep(name, "in")
        m = model.get_submodule(name)
        for t in ("weight", "bias", "running_mean", "running_var"):
            v = getattr(m, t, None)
            if v is None:
                continue
            if t == "weight" and info.kind in (ConvRule.kind, LinearRule.kind):
                sel = np.logical_and.outer(k_out, k_in)
            else:
                sel = k_out
            sel = sel.reshape(sel.shape + (1,) * (v.dim() - sel.ndim))
            out[f"{name}.{t}"] = torch.as_tensor(np.broadcast_to(sel, v.shape).copy())
    return out


def weights_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------- take_out


@pytest.mark.parametrize(("model_id", "residual"), SLICE_MODELS, ids=SLICE_IDS)
def test_take_out_is_the_pruned_models_weights(model_id: str, residual: bool) -> None:
    model, space, _ = model_and_space(model_id, residual)
    before = state_snapshot(model)
    sliced = SlicedModel(model, space)
    rng = np.random.default_rng(0)
    for keep in (0.3, 0.6, 1.0):
        plan = random_plan(space, rng, keep)
        tensors = take_out(sliced, torch.as_tensor(plan.mask(space)))
        pruned = prune_model(model, space, plan).state_dict()
        full = model.state_dict()
        for key, value in pruned.items():
            want = tensors.get(key, full[key])  # tensors never sliced are the model's own
            assert want.shape == value.shape, key
            assert want.dtype == value.dtype, key
            assert torch.equal(want, value), key
        # the only extras are option-A shortcut index buffers (not in the state dict)
        extra = set(tensors) - set(pruned)
        assert all(k.rsplit(".", 1)[1] in ("in_sel", "out_pos", "out_slots") for k in extra)
        # copies: changing them leaves the model alone
        for v in tensors.values():
            if v.is_floating_point():
                v.add_(1.0)
                assert not v.requires_grad
    assert_state_equal(before, model)


# ---------------------------------------------------------------------------- write_back


@pytest.mark.parametrize(("model_id", "residual"), SLICE_MODELS, ids=SLICE_IDS)
def test_write_back_round_trip(model_id: str, residual: bool) -> None:
    model, space, _ = model_and_space(model_id, residual)
    sliced = SlicedModel(model, space)
    before = state_snapshot(model)
    plan = random_plan(space, np.random.default_rng(3), 0.5)
    mask = plan.mask(space)
    m = torch.as_tensor(mask)
    write_back(sliced, m, take_out(sliced, m))
    assert_state_equal(before, model)  # bit-identical
    # modified tensors land exactly at the kept entries
    kept = kept_entries(space, model, mask)
    tensors = take_out(sliced, m)
    assert set(kept) <= set(tensors)
    modified = {k: (v + 1.0 if k in kept else v) for k, v in tensors.items()}
    write_back(sliced, m, modified)
    again = take_out(sliced, m)
    assert set(again) == set(modified)
    for k, v in modified.items():
        assert torch.equal(again[k], v), k
    after = model.state_dict()
    changed = 0
    for key, old in before.items():
        new = after[key]
        if key in kept:
            sel = kept[key]
            assert torch.equal(new[~sel], old[~sel]), key  # dropped entries: bit-identical
            assert torch.equal(new[sel], old[sel] + 1.0), key
            changed += int(sel.sum())
        else:  # layers with no pruned dimension, num_batches_tracked, option-A buffers
            assert torch.equal(new, old), key
    assert changed == sum(v.numel() for k, v in modified.items() if k in kept)
    assert changed > 0
    # the full plan writes every entry of the sliced tensors
    write_back(sliced, torch.ones(space.n_channels, dtype=torch.bool),
               {k: torch.zeros_like(v) for k, v in before.items() if k in kept})
    for key in kept:
        assert not model.state_dict()[key].any(), key


# ---------------------------------------------------------------------------- the stream


def test_batch_stream_covers_each_epoch_once_and_is_addressable() -> None:
    _, _, train, _, norm = digits()
    train = train.subset(121)
    recipe = dataclasses.replace(RECIPE, batch_size=40)  # 121 = 40 + 40 + 41 (no batch of 1)
    a = BatchStream(train, norm, recipe, seed=5, device=torch.device("cpu"))
    assert a.steps_per_epoch == 3
    epochs = []
    for e in range(2):
        labels = torch.cat([a.batch(e * 3 + b)[1] for b in range(3)])
        assert torch.equal(labels.sort().values, train.labels.sort().values)
        epochs.append(labels)
    assert not torch.equal(epochs[0], epochs[1])  # a new permutation per epoch
    x, y = a.batch(1)
    assert x.dtype == torch.float32 and x.shape == (40, 1, 8, 8) and y.shape == (40,)
    assert a.batch(2)[0].shape[0] == 41
    # random access equals sequential access; the same seed gives the same batches
    b = BatchStream(train, norm, recipe, seed=5, device=torch.device("cpu"))
    for step in (4, 0, 5, 2, 4):
        xa, ya = a.batch(step)
        xb, yb = b.batch(step)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    c = BatchStream(train, norm, recipe, seed=6, device=torch.device("cpu"))
    assert not torch.equal(c.batch(0)[1], b.batch(0)[1])
    # without augmentation a batch is the normalised images of its labels' indices
    x0, y0 = a.batch(0)
    idx = a._order[:40]  # epoch 0's permutation
    assert torch.equal(x0, norm.apply(train.images[idx]))
    assert torch.equal(y0, train.labels[idx])
    empty = Split(torch.zeros((0, 1, 8, 8), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="training split is empty"):
        BatchStream(empty, norm, recipe, seed=0, device=torch.device("cpu"))


# ---------------------------------------------------------------------------- the schedule


@pytest.mark.parametrize(("epochs", "planned"), [(2, 1), (2, 3), (3, 5), (2, 8), (1, 11)])
def test_steps_partition_the_schedule(epochs: int, planned: int) -> None:
    ev = inheritor(planned, recipe=dataclasses.replace(RECIPE, epochs=epochs))
    assert ev.total_steps == epochs * 4
    ranges = [ev.steps_of(k) for k in range(planned)]
    assert [s for r in ranges for s in r] == list(range(ev.total_steps))
    sizes = [len(r) for r in ranges]
    assert max(sizes) - min(sizes) <= 1
    assert all(r.step == 1 for r in ranges)
    for k in (planned, planned + 1, planned + 10):
        assert len(ev.steps_of(k)) == 0


def test_candidates_beyond_planned_train_nothing() -> None:
    ev = inheritor(planned=2)
    masks = digits_masks(4, seed=1)
    _, _, train, val, _ = digits()
    ev.evaluate_masks(masks[:2])
    assert ev.trained == 2
    snap = state_snapshot(ev.supernet)
    res = ev.evaluate_masks(masks[2:])
    assert ev.trained == 4
    assert_state_equal(snap, ev.supernet)  # no steps left: nothing is trained
    ref = Evaluator(ev.supernet, ev.space, val, ev.normalization, mode="slice",
                    execution=Execution("fp32", channels_last=False)).score(masks[2:])
    np.testing.assert_array_equal(res.accuracy, ref.accuracy)
    np.testing.assert_array_equal(res.loss, ref.loss)
    # every candidate is counted, with the images it was trained and scored on
    assert ev.stats.evaluations == 4 and ev.stats.cache_hits == 0
    assert ev.stats.images == 4 * len(val) + RECIPE.epochs * len(train)


# ---------------------------------------------------------------------------- training


@pytest.mark.parametrize("which", ["digits", "resnet20"])
def test_training_changes_only_the_kept_entries(which: str) -> None:
    setup = digits() if which == "digits" else resnet20()
    recipe = RECIPE if which == "digits" else RESNET_RECIPE
    model, space, _, val, _ = setup
    start = state_snapshot(model)
    ev = inheritor(planned=1, recipe=recipe, setup=setup)
    mask = random_plan(space, np.random.default_rng(2), 0.5).mask(space)
    before = state_snapshot(ev.supernet)
    res = ev.evaluate_masks(mask)
    assert ev.trained == 1
    after = ev.supernet.state_dict()
    kept = kept_entries(space, ev.supernet, mask)
    assert kept
    changed_kept = changed_shared = 0
    for key, old in before.items():
        new = after[key]
        if key in kept:
            sel = kept[key]
            assert torch.equal(new[~sel], old[~sel]), key  # dropped channels untouched
            changed_kept += int((new[sel] != old[sel]).sum())
        elif old.is_floating_point() and not torch.equal(new, old):
            changed_shared += 1
    assert changed_kept > 0  # the candidate's tensors were trained and written back
    assert all(p.grad is None for p in ev.supernet.parameters())  # no gradients left behind
    if which == "resnet20":
        # layers with no pruned dimension (stem, stream BatchNorms, fc) train as a whole
        assert changed_shared > 0
        assert not torch.equal(after["conv1.weight"], before["conv1.weight"])
    # the score is that of the weights (and BatchNorm statistics) just written back
    ref = Evaluator(ev.supernet, ev.space, val, ev.normalization, mode="slice",
                    execution=Execution("fp32", channels_last=False)).score(mask)
    assert (res.accuracy[0], res.loss[0]) == (ref.accuracy[0], ref.loss[0])
    assert_state_equal(start, model)  # the caller's model is never modified
    assert not ev.supernet.training


def test_same_seed_same_scores_and_supernet() -> None:
    masks = digits_masks(4, seed=2)
    a, b, c = inheritor(3, seed=4), inheritor(3, seed=4), inheritor(3, seed=5)
    ra, rb, rc = a.evaluate_masks(masks), b.evaluate_masks(masks), c.evaluate_masks(masks)
    np.testing.assert_array_equal(ra.accuracy, rb.accuracy)
    np.testing.assert_array_equal(ra.loss, rb.loss)
    assert weights_equal(a.supernet, b.supernet)
    assert not weights_equal(a.supernet, c.supernet)  # another seed, other batches
    assert not np.array_equal(ra.loss, rc.loss)
    # evaluate(plans) is evaluate_masks of the plans' masks
    space = digits()[1]
    e = inheritor(3, seed=4)
    re = e.evaluate([PruningPlan.from_mask(space, m) for m in masks])
    np.testing.assert_array_equal(re.loss, ra.loss)
    assert weights_equal(e.supernet, a.supernet)
    # no cache: the same genome again trains again (on newer weights)
    d = inheritor(3, seed=4)
    r1 = d.evaluate_masks(masks[0])
    r2 = d.evaluate_masks(masks[0])
    assert r1.loss[0] != r2.loss[0] and d.stats.cache_hits == 0


def test_resume_from_state_dict() -> None:
    masks = digits_masks(6, seed=3)
    whole = inheritor(6, seed=1)
    full = whole.evaluate_masks(masks)
    first = inheritor(6, seed=1)
    head = first.evaluate_masks(masks[:3])
    np.testing.assert_array_equal(head.accuracy, full.accuracy[:3])
    state = first.state_dict()
    assert state["trained"] == 3 and state["planned"] == 6 and state["seed"] == 1
    assert all(v.device.type == "cpu" for v in state["supernet"].values())
    saved = {k: v.clone() for k, v in state["supernet"].items()}
    first.evaluate_masks(masks[3:4])  # the state is a copy: later training does not touch it
    for k, v in saved.items():
        assert torch.equal(state["supernet"][k], v), k
    resumed = inheritor(6, seed=1)
    resumed.load_state_dict(state)
    assert resumed.trained == 3
    tail = resumed.evaluate_masks(masks[3:])
    np.testing.assert_array_equal(tail.accuracy, full.accuracy[3:])
    np.testing.assert_array_equal(tail.loss, full.loss[3:])
    assert weights_equal(resumed.supernet, whole.supernet)
    # the resumed evaluator's baseline is still the starting network's
    assert resumed.baseline().loss[0] == whole.baseline().loss[0]
    # through a file, as a search checkpoint stores it (torch.save, weights_only load)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    from_file = inheritor(6, seed=1)
    from_file.load_state_dict(torch.load(buf, map_location="cpu", weights_only=True))
    tail2 = from_file.evaluate_masks(masks[3:])
    np.testing.assert_array_equal(tail2.loss, full.loss[3:])


def test_load_state_dict_refuses_another_schedule() -> None:
    state = inheritor(6, seed=1).state_dict()
    for other in (inheritor(7, seed=1), inheritor(6, seed=2),
                  inheritor(6, seed=1, recipe=dataclasses.replace(RECIPE, lr=0.01)),
                  inheritor(6, seed=1, recipe=dataclasses.replace(RECIPE, epochs=3))):
        snap = state_snapshot(other.supernet)
        with pytest.raises(ValueError, match="another schedule"):
            other.load_state_dict(state)
        assert other.trained == 0
        assert_state_equal(snap, other.supernet)


@pytest.mark.parametrize("which", ["digits", "resnet20"])
def test_divergence_leaves_the_supernet_unchanged(which: str) -> None:
    setup = digits() if which == "digits" else resnet20()
    base = RECIPE if which == "digits" else RESNET_RECIPE
    recipe = dataclasses.replace(base, lr=1e8, schedule="constant")
    ev = inheritor(planned=1, recipe=recipe, setup=setup)
    space = setup[1]
    mask = random_plan(space, np.random.default_rng(0), 0.6).mask(space)
    snap = state_snapshot(ev.supernet)
    with pytest.warns(RuntimeWarning, match="diverged"):
        res = ev.evaluate_masks(mask)
    assert res.accuracy.tolist() == [0.0] and res.loss.tolist() == [math.inf]
    assert ev.stats.diverged == 1 and ev.stats.evaluations == 1
    assert ev.trained == 1  # the schedule moves on
    assert_state_equal(snap, ev.supernet)  # shared layers and buffers restored too
    # the next candidate (no steps left) is scored on the untouched supernet
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = ev.evaluate_masks(mask)
    assert again.accuracy[0] == ev.evaluate_on(mask, setup[3]).accuracy[0]
    assert np.isfinite(again.loss[0]) and ev.stats.diverged == 1


def test_divergence_leaves_no_gradients_behind() -> None:
    setup = resnet20()  # has layers with no pruned dimension, trained in place
    recipe = dataclasses.replace(RESNET_RECIPE, lr=1e8, schedule="constant")
    ev = inheritor(planned=1, recipe=recipe, setup=setup)
    mask = random_plan(setup[1], np.random.default_rng(0), 0.6).mask(setup[1])
    with pytest.warns(RuntimeWarning, match="diverged"):
        ev.evaluate_masks(mask)
    assert [n for n, p in ev.supernet.named_parameters() if p.grad is not None] == []


def test_baseline_and_evaluate_on() -> None:
    model, space, train, val, norm = digits()
    test = digits_bundle().test.subset(64)
    plain = Evaluator(model, space, val, norm, mode="slice")
    ev = inheritor(2)
    base = ev.baseline()
    np.testing.assert_array_equal(base.accuracy, plain.baseline().accuracy)
    np.testing.assert_array_equal(base.loss, plain.baseline().loss)
    assert base.accuracy[0] == evaluate_accuracy(model, val, norm)[0]
    masks = digits_masks(3, seed=4)
    ev.evaluate_masks(masks[:2])
    again = ev.baseline()  # the starting network's, also after training
    assert (again.accuracy[0], again.loss[0]) == (base.accuracy[0], base.loss[0])
    full = np.ones((1, space.n_channels), dtype=bool)
    assert ev.evaluate_on(full, val).loss[0] != base.loss[0]  # the supernet was trained
    snap = state_snapshot(ev.supernet)
    on_test = ev.evaluate_on(masks, test)
    assert_state_equal(snap, ev.supernet)  # nothing trained
    assert ev.trained == 2 and ev.stats.evaluations == 2
    # each plan is measured as the physically pruned network with the inherited weights and
    # its own BatchNorm statistics, re-estimated on the first training batches
    for mask, acc, loss in zip(masks, on_test.accuracy, on_test.loss, strict=True):
        pruned = ev.pruned(mask)
        assert not pruned.training
        a, lo = evaluate_accuracy(pruned, test, norm)
        assert a == acc and lo == pytest.approx(loss, rel=1e-5)
        sliced = take_out(SlicedModel(ev.supernet, space), torch.as_tensor(mask))
        stats = [k for k in pruned.state_dict() if k.endswith(("running_mean", "running_var"))]
        assert stats
        for k, v in pruned.state_dict().items():
            if k in sliced and k not in stats:
                assert torch.equal(v, sliced[k]), k  # weights: exactly the supernet's
        recal = copy.deepcopy(pruned)
        with torch.no_grad():
            for m in recal.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.reset_running_stats()
                    m.momentum = None
            recal.train()
            for step in range(min(ev.calibration_batches, ev.total_steps)):
                recal(ev._stream.batch(step)[0])
        for k in stats:
            torch.testing.assert_close(pruned.state_dict()[k], recal.state_dict()[k])
    ev.calibration_batches = 0  # without re-estimation: the supernet's own statistics
    ref = Evaluator(copy.deepcopy(ev.supernet), space, test, norm, mode="slice")
    r = ref.evaluate_masks(masks)
    raw = ev.evaluate_on(masks, test)
    np.testing.assert_array_equal(raw.accuracy, r.accuracy)
    np.testing.assert_allclose(raw.loss, r.loss, rtol=1e-5)
    assert_state_equal(snap, ev.supernet)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r">= 1 epoch \(got 0\)"):
        inheritor(3, recipe=dataclasses.replace(RECIPE, epochs=0))
    with pytest.raises(ValueError, match="planned must be >= 1"):
        inheritor(0)
    model, space, _, val, norm = digits()
    empty = Split(torch.zeros((0, 1, 8, 8), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="training split is empty"):
        InheritanceEvaluator(model, space, empty, val, norm, RECIPE, planned=2, seed=0)
    with pytest.raises(ValueError, match=f"{space.n_channels} columns"):
        inheritor(2).evaluate_masks(np.ones((2, 5), dtype=bool))


# ---------------------------------------------------------------------------- sliced = physical


def train_physically(net: nn.Module, stream: BatchStream, recipe: FinetuneConfig,
                     steps: range, total: int) -> nn.Module:
    """A fresh SGD over ``steps`` of the global schedule, the batches of ``stream``."""
    opt = torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    net.train()
    for step in steps:
        x, y = stream.batch(step)
        for group in opt.param_groups:
            group["lr"] = _lr_at(recipe, step, total)
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


def assert_close_states(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        if k.endswith("num_batches_tracked"):
            continue  # the supernet counts every candidate's batches
        assert sa[k].shape == sb[k].shape, k
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("which", ["digits", "resnet20", "resnet20-residual"])
def test_sliced_training_equals_training_the_pruned_network(which: str) -> None:
    setup = digits() if which == "digits" else resnet20(residual=which.endswith("residual"))
    recipe = RECIPE if which == "digits" else RESNET_RECIPE
    model, space, train, val, norm = setup
    plan = random_plan(space, np.random.default_rng(6), 0.5)
    mask = plan.mask(space)
    # one candidate gets the whole schedule
    ev = inheritor(planned=1, seed=9, recipe=recipe, setup=setup)
    ev.calibration_batches = 0  # compare the trained statistics too
    res = ev.evaluate_masks(mask)
    stream = BatchStream(train, norm, recipe, seed=9, device=torch.device("cpu"))
    phys = train_physically(prune_model(model, space, plan), stream, recipe,
                            range(ev.total_steps), ev.total_steps)
    inherited = ev.pruned(mask)
    assert_close_states(inherited, phys)
    acc, loss = evaluate_accuracy(phys, val, norm)
    assert acc == res.accuracy[0] and loss == pytest.approx(res.loss[0], rel=1e-5)
    # two candidates share the schedule: the second starts from the first one's write-back
    # (plain SGD here: with momentum the second also inherits the first one's buffers)
    recipe = dataclasses.replace(recipe, momentum=0.0, nesterov=False)
    masks = np.array([mask, random_plan(space, np.random.default_rng(7), 0.5).mask(space)])
    ev2 = inheritor(planned=2, seed=9, recipe=recipe, setup=setup)
    ev2.calibration_batches = 0
    ev2.evaluate_masks(masks[0])
    start = ev2.pruned(masks[1])  # the second candidate's inherited weights, physically
    ev2.evaluate_masks(masks[1])
    phys2 = train_physically(start, stream, recipe, ev2.steps_of(1), ev2.total_steps)
    assert len(ev2.steps_of(1)) > 0
    assert_close_states(ev2.pruned(masks[1]), phys2)


# ---------------------------------------------------------------------------- random_init


def test_random_init() -> None:
    from helpers import built_model

    model, _ = built_model("cifar_resnet20")
    before = state_snapshot(model)
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    a = random_init(model, 7)
    assert torch.equal(torch.get_rng_state(), rng)  # the global generator is untouched
    torch.manual_seed(999)  # ... and does not matter
    b = random_init(model, 7)
    c = random_init(model, 8)
    assert_state_equal(before, model)  # the original is unchanged
    assert a is not model and weights_equal(a, b) and not weights_equal(a, c)
    sa, sm = a.state_dict(), model.state_dict()
    for name, m in a.named_modules():
        if isinstance(m, nn.Conv2d):
            assert not torch.equal(m.weight, sm[f"{name}.weight"]), name
            assert m.weight.data_ptr() != model.get_submodule(name).weight.data_ptr()
        elif isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)), name
            assert torch.equal(m.bias, torch.zeros_like(m.bias)), name
            assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean)), name
            assert torch.equal(m.running_var, torch.ones_like(m.running_var)), name
            assert int(m.num_batches_tracked) == 0
            assert not torch.equal(sm[f"{name}.running_mean"], m.running_mean)  # was random
    # He normal, fan-out: std sqrt(2 / (out_channels * k * k))
    w = a.get_submodule("layer3.0.conv2").weight.detach()  # 64 x 64 x 3 x 3
    assert float(w.std()) == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.05)
    assert abs(float(w.mean())) < 0.01
    assert list(sa) == list(sm) and all(sa[k].shape == sm[k].shape for k in sa)
    assert a.training == model.training


def test_random_init_of_linear_layers_and_conv_biases() -> None:
    from helpers import built_model

    model, _ = built_model("flatten_linear_cnn")  # conv1 has a bias; fc1 48 -> 10, fc2 10 -> 5
    torch.manual_seed(0)
    net = random_init(model, 3)
    assert not net.conv1.bias.any()
    for fc in (net.fc1, net.fc2):
        bound = 1 / math.sqrt(fc.in_features)
        w, b = fc.weight.detach(), fc.bias.detach()
        assert float(w.abs().max()) <= bound and float(b.abs().max()) <= bound
        assert float(w.abs().max()) > 0.5 * bound  # uniform over the whole range
    assert not torch.equal(net.fc1.weight, model.fc1.weight)
    assert weights_equal(net, random_init(model, 3))


# ---------------------------------------------------------------------------- from scratch


def scratch_evaluator(from_scratch: bool = True, seed: int = 0) -> RetrainingEvaluator:
    model, space, train, val, norm = digits()
    recipe = dataclasses.replace(RECIPE, epochs=1, lr=0.01)
    return RetrainingEvaluator(model, space, train, val, norm, recipe, seed=seed,
                               from_scratch=from_scratch)


def test_retraining_from_scratch_reinitialises_each_candidate(monkeypatch) -> None:
    ev = scratch_evaluator()
    model, space, _, val, norm = digits()
    masks = digits_masks(2, seed=5)
    plan = PruningPlan.from_mask(space, masks[0])
    pretrained = prune_model(model, space, plan)
    trained = ev.trained(masks[0])
    assert weights_equal(trained, ev.trained(masks[0]))  # deterministic per mask
    assert weights_equal(trained, scratch_evaluator().trained(masks[0]))
    assert not weights_equal(trained, scratch_evaluator(seed=1).trained(masks[0]))
    # the same mask retrained from the pruned pretrained weights ends elsewhere
    assert not weights_equal(trained, scratch_evaluator(from_scratch=False).trained(masks[0]))
    res = ev.evaluate_masks(masks)
    assert (res.accuracy[0], res.loss[0]) == evaluate_accuracy(trained, val, norm)
    # before training: random_init of the pruned network, seeded by the candidate seed
    monkeypatch.setattr("moprune.evaluation.retraining.finetune", lambda *args, **kwargs: None)
    start = ev.trained(masks[0])
    want = random_init(pretrained, ev.candidate_seed(masks[0]))
    assert weights_equal(start, want)
    sp, ss = pretrained.state_dict(), start.state_dict()
    for k in ("conv1.weight", "conv2.weight", "conv3.weight", "fc.weight", "bn1.running_mean"):
        assert sp[k].shape == ss[k].shape and not torch.equal(sp[k], ss[k]), k
    assert torch.equal(ss["bn2.weight"], torch.ones_like(ss["bn2.weight"]))
    # without from_scratch the candidate starts from the pretrained weights
    assert weights_equal(scratch_evaluator(from_scratch=False).trained(masks[0]), pretrained)


def test_momentum_is_inherited_like_the_weights() -> None:
    """SGD's momentum buffers are taken out and written back: kept entries only."""
    ev = inheritor(planned=2)
    _, space, _, _, _ = digits()
    masks = digits_masks(2, seed=11)
    ev.evaluate_masks(masks[:1])
    mom = dict(ev._momentum.named_parameters())
    sl = SlicedModel(ev._momentum, space)
    kept = take_out(sl, torch.as_tensor(masks[0]))
    assert any(bool((v != 0).any()) for k, v in kept.items() if k.endswith("weight"))
    # entries of dropped channels were never trained: their momentum is still zero
    dropped = ~masks[0]
    if dropped.any():
        owner = space.owner[(space.groups[0].name, "out")]
        rows = torch.as_tensor(dropped[owner[owner >= 0]])
        assert torch.equal(mom[f"{space.groups[0].name}.weight"][rows],
                           torch.zeros_like(mom[f"{space.groups[0].name}.weight"][rows]))
    state = ev.state_dict()
    assert set(state["momentum"]) == {k for k, _ in ev.supernet.named_parameters()}
