"""Tests for moprune.training.finetune: fine-tuning, evaluation, augmentation, checkpoints."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from moprune.data.datasets import Normalization, Split
from moprune.errors import NonFiniteError
from moprune.training import finetune as training
from moprune.training.finetune import (
    FinetuneConfig,
    _augment,
    _batch_bounds,
    evaluate_accuracy,
    finetune,
)

NORM = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
FAST = FinetuneConfig(epochs=2, lr=0.05, batch_size=16, weight_decay=0.0)


def quadrant_split(n: int, seed: int) -> Split:
    """Class = which 8x8 quadrant of a noisy 3x16x16 image is bright."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 80, (n, 3, 16, 16), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 4, (n,), generator=gen)
    for i, label in enumerate(labels.tolist()):
        r, c = divmod(label, 2)
        images[i, :, r * 8 : r * 8 + 8, c * 8 : c * 8 + 8] += 160
    return Split(images, labels)


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # test-only: reproducible initial weights
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 4),
    )


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def data() -> tuple[Split, Split]:
    return quadrant_split(64, 1), quadrant_split(64, 2)


def test_finetune_learns(data):
    train, val = data
    model = tiny_cnn()
    acc0, loss0 = evaluate_accuracy(model, val, NORM)
    config = dataclasses.replace(FAST, epochs=4, augment=False)
    result = finetune(model, train, NORM, config, generator=gen(0), val=val, progress=False)
    acc1, loss1 = evaluate_accuracy(model, val, NORM)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert acc1 > acc0 and loss1 < loss0
    assert not model.training
    assert set(result.history[0]) == {
        "epoch",
        "train_loss",
        "train_accuracy",
        "val_accuracy",
        "lr",
        "seconds",
    }
    # cosine: lr falls every epoch and is near 0 at the last step
    lrs = [h["lr"] for h in result.history]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.01 * config.lr


def test_evaluate_restores_training_flag_and_ranges(data):
    _, val = data
    model = tiny_cnn().train()
    acc, loss = evaluate_accuracy(model, val, NORM, batch_size=7)
    assert model.training and 0.0 <= acc <= 1.0 and math.isfinite(loss)
    model.eval()
    evaluate_accuracy(model, val, NORM)
    assert not model.training


def test_determinism(data):
    train, _ = data
    a, b, c = tiny_cnn(), tiny_cnn(), tiny_cnn()
    for model, seed in ((a, 7), (b, 7), (c, 8)):
        finetune(model, train, NORM, FAST, generator=gen(seed), progress=False)
    assert same_state(a, b)
    assert not same_state(a, c)


def test_augment_crop_and_flip():
    batch = torch.arange(16, dtype=torch.uint8).repeat(32, 3, 16, 1)  # column index pattern
    assert batch.shape == (32, 3, 16, 16)
    center = torch.full((32, 2), 4)
    assert torch.equal(_augment(batch, center, None), batch)
    shifted = _augment(batch, torch.tensor([[4, 6]] * 32), None)
    assert shifted.shape == batch.shape and shifted.dtype == torch.uint8
    assert torch.equal(shifted[..., :14], batch[..., 2:])
    assert (shifted[..., 14:] == 0).all()  # zero padding
    down = _augment(batch, torch.tensor([[0, 4]] * 32), None)
    assert (down[:, :, :4] == 0).all() and torch.equal(down[:, :, 4:], batch[:, :, :12])
    mask = torch.rand(32, generator=gen(0)) < 0.5
    assert 0 < int(mask.sum()) < 32
    flipped = _augment(batch, None, mask)
    assert torch.equal(flipped[mask], batch[mask].flip(3))
    assert torch.equal(flipped[~mask], batch[~mask])


def test_no_crop_below_16_pixels_and_batches_drop_nothing():
    assert _batch_bounds(33, 16) == [(0, 16), (16, 33)]  # single leftover joins the last
    assert _batch_bounds(34, 16) == [(0, 16), (16, 32), (32, 34)]
    assert _batch_bounds(1, 16) == [(0, 1)]
    small = Split(torch.zeros(10, 3, 8, 8, dtype=torch.uint8), torch.zeros(10, dtype=torch.int64))
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 4))
    result = finetune(model, small, NORM, FAST, generator=gen(0), progress=False)
    assert len(result.history) == 2


def test_checkpoint_resume_matches_uninterrupted(data, tmp_path, monkeypatch):
    train, val = data
    full = tiny_cnn()
    ref = finetune(full, train, NORM, FAST, generator=gen(3), val=val, progress=False)

    path = tmp_path / "ck.pt"
    real_save = training._save_checkpoint

    def save_then_die(p, state):
        real_save(p, state)
        raise KeyboardInterrupt  # simulate a run killed after epoch 1

    monkeypatch.setattr(training, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        finetune(
            tiny_cnn(),
            train,
            NORM,
            FAST,
            generator=gen(3),
            val=val,
            progress=False,
            checkpoint_path=path,
        )
    monkeypatch.setattr(training, "_save_checkpoint", real_save)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name != "ck.pt"]  # no tmp files left

    resumed = tiny_cnn(seed=99)  # weights come from the checkpoint
    res = finetune(
        resumed,
        train,
        NORM,
        FAST,
        generator=gen(12345),
        val=val,
        progress=False,
        checkpoint_path=path,
    )
    assert same_state(full, resumed)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in res.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in ref.history]
    assert torch.load(path, weights_only=True)["epoch"] == 2

    other = dataclasses.replace(FAST, lr=0.1)
    with pytest.raises(ValueError, match="different fine-tuning settings.*lr"):
        finetune(
            tiny_cnn(),
            train,
            NORM,
            other,
            generator=gen(3),
            val=val,
            progress=False,
            checkpoint_path=path,
        )


def test_keep_best_restores_best_epoch(data):
    train, val = data
    # constant lr: the first k epochs of a longer run equal a k-epoch run, so they can be replayed
    config = dataclasses.replace(FAST, epochs=4, lr=0.5, schedule="constant", augment=False)
    kept = tiny_cnn()
    result = finetune(
        kept, train, NORM, config, generator=gen(5), val=val, progress=False, keep_best=True
    )
    accs = [h["val_accuracy"] for h in result.history]
    assert result.best_epoch == accs.index(max(accs)) + 1  # earliest of ties
    assert result.best_epoch < config.epochs  # the easy task peaks early: restoring matters
    assert evaluate_accuracy(kept, val, NORM)[0] == max(accs)

    replay = tiny_cnn()
    finetune(
        replay,
        train,
        NORM,
        dataclasses.replace(config, epochs=result.best_epoch),
        generator=gen(5),
        progress=False,
    )
    assert same_state(replay, kept)
    last = tiny_cnn()
    finetune(last, train, NORM, config, generator=gen(5), val=val, progress=False)
    assert not same_state(last, kept)

    with pytest.raises(ValueError, match="keep_best=True needs a val split"):
        finetune(tiny_cnn(), train, NORM, config, generator=gen(0), keep_best=True)


def test_epochs_zero_returns_immediately(data):
    train, _ = data
    model = tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = finetune(
        model, train, NORM, dataclasses.replace(FAST, epochs=0), generator=gen(0), progress=False
    )
    assert result.history == [] and result.best_epoch is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epochs", -1, "epochs"),
        ("lr", 0.0, "lr"),
        ("lr", float("nan"), "lr"),
        ("momentum", 1.0, "momentum"),
        ("weight_decay", -1e-4, "weight_decay"),
        ("batch_size", 0, "batch_size"),
        ("schedule", "linear", "'cosine', 'constant', 'step'"),
        ("label_smoothing", 1.0, "label_smoothing"),
        ("augment", 1, "augment"),
    ],
)
def test_bad_config(field, value, message):
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(**{field: value})


def test_nesterov_without_momentum_rejected():
    with pytest.raises(ValueError, match="nesterov"):
        FinetuneConfig(momentum=0.0)
    FinetuneConfig(momentum=0.0, nesterov=False)


def test_empty_split_errors(data):
    empty = Split(torch.zeros(0, 3, 16, 16, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="empty split"):
        evaluate_accuracy(tiny_cnn(), empty, NORM)
    with pytest.raises(ValueError, match="empty training split"):
        finetune(tiny_cnn(), empty, NORM, FAST, generator=gen(0), progress=False)


def test_nan_weights_raise_non_finite(data):
    train, val = data
    model = tiny_cnn()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="evaluation batch 0.*checkpoint"):
        evaluate_accuracy(model, val, NORM)
    with pytest.raises(NonFiniteError, match="epoch 1, step 0.*lower the learning rate"):
        finetune(model, train, NORM, FAST, generator=gen(0), progress=False)
    assert issubclass(NonFiniteError, ValueError)


def test_channel_mismatch_is_clear(data):
    train, _ = data
    with pytest.raises(ValueError, match="3 channels but the normalization has 1"):
        evaluate_accuracy(tiny_cnn(), train, Normalization((0.5,), (0.2,)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_runs(data):
    train, val = data
    model = tiny_cnn()
    result = finetune(
        model, train, NORM, FAST, generator=gen(0), device="cuda", val=val, progress=False
    )
    assert len(result.history) == 2 and next(model.parameters()).is_cuda
