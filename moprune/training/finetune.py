"""Fine-tuning and evaluation of (pruned) CNNs on uint8 tensor data sets, all on one device."""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from moprune.core.execution import Execution, normalize
from moprune.data.datasets import Normalization, Split
from moprune.errors import (
    ConfigError,
    NonFiniteError,  # noqa: F401 (re-exported)
)

SCHEDULES = ("cosine", "constant", "step", "triangle")
CROP_PADDING = 4  # torchvision's RandomCrop(size, padding=4) with zero fill
CROP_MIN_SIZE = 16  # images smaller than this (height or width) are never cropped
POSTFIX_EVERY = 20  # steps between progress-bar updates (the only host syncs inside an epoch)


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters of :func:`finetune`.

    Attributes:
        epochs: Passes over the training split; 0 trains nothing.
        lr: Initial learning rate of SGD.
        momentum: SGD momentum in [0, 1).
        nesterov: Use Nesterov momentum (needs ``momentum > 0``).
        weight_decay: L2 penalty applied by SGD to all parameters.
        batch_size: Examples per step; the last, smaller batch is used too.
        schedule: ``"cosine"`` (per-step cosine decay from ``lr`` to 0), ``"constant"``,
            ``"step"`` (``lr`` times ``gamma`` at each milestone, like ``MultiStepLR``), or
            ``"triangle"`` (linear decay from ``lr`` to 0 after the warm-up; with
            ``warmup=0.2`` the one-cycle shape of fast CIFAR training, e.g. airbench).
        warmup: Fraction of the steps, in [0, 1), over which the learning rate first rises
            linearly from 0 to the schedule's value (any schedule; 0 = none).
        milestones: Fractions of training (in (0, 1), increasing) at which ``"step"``
            multiplies the learning rate by ``gamma``; (0.5,) with 100 epochs = epoch 50.
        gamma: Factor of ``"step"`` at each milestone, in (0, 1].
        augment: Random crop with zero padding 4 (only for images of at least 16x16) and,
            if ``augment_flip``, a random horizontal flip.
        augment_flip: Flip horizontally in augmentation; set False for digits or text.
        label_smoothing: Label smoothing of the training cross-entropy, in [0, 1).

    """

    epochs: int = 10
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    batch_size: int = 128
    schedule: str = "cosine"
    augment: bool = True
    augment_flip: bool = True
    label_smoothing: float = 0.0
    milestones: tuple[float, ...] = (0.5,)
    gamma: float = 0.1
    warmup: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if not _is_int(self.epochs) or self.epochs < 0:
            problems.append(f"epochs must be an int >= 0; got {self.epochs!r}")
        if not _is_real(self.lr) or not math.isfinite(self.lr) or self.lr <= 0:
            problems.append(f"lr must be a finite number > 0; got {self.lr!r}")
        if not _is_real(self.momentum) or not 0 <= self.momentum < 1:
            problems.append(f"momentum must be a number in [0, 1); got {self.momentum!r}")
        if not isinstance(self.nesterov, bool):
            problems.append(f"nesterov must be a bool; got {self.nesterov!r}")
        elif self.nesterov and _is_real(self.momentum) and self.momentum == 0:
            problems.append("nesterov=True needs momentum > 0; set nesterov=False or momentum > 0")
        if (
            not _is_real(self.weight_decay)
            or not math.isfinite(self.weight_decay)
            or self.weight_decay < 0
        ):
            problems.append(f"weight_decay must be a finite number >= 0; got {self.weight_decay!r}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            problems.append(f"batch_size must be an int >= 1; got {self.batch_size!r}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {SCHEDULES}; got {self.schedule!r}")
        if not isinstance(self.augment, bool):
            problems.append(f"augment must be a bool; got {self.augment!r}")
        if not isinstance(self.augment_flip, bool):
            problems.append(f"augment_flip must be a bool; got {self.augment_flip!r}")
        if not _is_real(self.label_smoothing) or not 0 <= self.label_smoothing < 1:
            problems.append(
                f"label_smoothing must be a number in [0, 1); got {self.label_smoothing!r}"
            )
        ms = tuple(self.milestones) if isinstance(self.milestones, (tuple, list)) else None
        if ms is None or not all(_is_real(m) and 0 < m < 1 for m in ms) or list(ms) != sorted(ms):
            problems.append(f"milestones must be increasing fractions in (0, 1); got "
                            f"{self.milestones!r}")
        if not _is_real(self.gamma) or not 0 < self.gamma <= 1:
            problems.append(f"gamma must be a number in (0, 1]; got {self.gamma!r}")
        if not _is_real(self.warmup) or not 0 <= self.warmup < 1:
            problems.append(f"warmup must be a fraction in [0, 1); got {self.warmup!r}")
        if problems:
            raise ConfigError("invalid FinetuneConfig: " + "; ".join(problems) + ".")


def fast_recipe(base: FinetuneConfig, epochs: int, batch_size: int = 1024,
                lr: float = 0.2) -> FinetuneConfig:
    """Large-batch one-cycle fine-tuning for GPUs (the shape of airbench's CIFAR-10 recipe).

    Nesterov SGD at batch ``batch_size`` with a linear warm-up over the first 20 % of the
    steps to ``lr`` and a linear decay to 0 (``schedule="triangle"``), label smoothing 0.1;
    weight decay and augmentation from ``base``. Few, large steps: with data and
    augmentation on the device it keeps a GPU busy where batch 128 cannot.
    """
    return dataclasses.replace(base, epochs=epochs, lr=lr, batch_size=batch_size,
                               momentum=0.9, nesterov=True, schedule="triangle", warmup=0.2,
                               label_smoothing=0.1)


@dataclass
class FinetuneResult:
    """What :func:`finetune` did.

    Attributes:
        history: One dict per epoch with keys ``epoch`` (1-based), ``train_loss`` and
            ``train_accuracy`` (over the augmented training batches, as trained),
            ``val_accuracy`` (only if a val split was given), ``lr`` (of the epoch's last
            step) and ``seconds`` (wall time of the epoch, validation included).
        best_epoch: 1-based epoch with the highest val accuracy (earliest on ties), or None
            when no val split was given or no epoch ran.

    """

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def norm_tensors(
    normalization: Normalization, channels: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return mean and std as (1, C, 1, 1) float32 tensors on ``device``, checking C."""
    if channels != len(normalization.mean):
        raise ConfigError(
            f"the images have {channels} channels but the normalization has "
            f"{len(normalization.mean)}; pass the normalization of the data set the split "
            "comes from."
        )
    mean = torch.tensor(normalization.mean, dtype=torch.float32, device=device)
    std = torch.tensor(normalization.std, dtype=torch.float32, device=device)
    return mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)


def _augment(
    images: torch.Tensor,
    offsets: torch.Tensor | None,
    flip: torch.Tensor | None,
    padding: int = CROP_PADDING,
) -> torch.Tensor:
    """Randomly crop and flip a batch, vectorised, on the batch's device.

    Args:
        images: Tensor of shape (B, C, H, W) (any dtype; uint8 in training).
        offsets: int64 tensor (B, 2) of per-sample (row, column) crop offsets in
            ``[0, 2 * padding]`` into the zero-padded batch, or None for no crop.
        flip: bool tensor (B,), True where the sample is flipped horizontally, or None.
        padding: Zero padding added on each side before cropping.

    Returns:
        A tensor of the same shape, dtype and device as ``images``.

    """
    batch, _, height, width = images.shape
    if offsets is not None:
        padded = F.pad(images, (padding, padding, padding, padding))  # zeros
        rows = offsets[:, 0:1] + torch.arange(height, device=images.device)  # (B, H)
        cols = offsets[:, 1:2] + torch.arange(width, device=images.device)  # (B, W)
        batch_index = torch.arange(batch, device=images.device).view(batch, 1, 1, 1)
        channel_index = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
        rows = rows.view(batch, 1, height, 1)
        cols = cols.view(batch, 1, 1, width)
        images = padded[batch_index, channel_index, rows, cols]
    if flip is not None:
        images = torch.where(flip.view(batch, 1, 1, 1), images.flip(3), images)
    return images


def evaluate_accuracy(
    model: nn.Module,
    split: Split,
    normalization: Normalization,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 500,
    execution: Execution | None = None,
) -> tuple[float, float]:
    """Return the top-1 accuracy and mean cross-entropy of ``model`` on ``split``.

    The model is moved to ``device`` (in place, in the execution's memory format:
    channels-last by default) and run in eval mode under ``torch.inference_mode``; its
    training flag is restored afterwards.

    Args:
        model: A classifier returning logits of shape (N, num_classes).
        split: uint8 images and int64 labels (on any device).
        normalization: Mean/std of the data set.
        device: Where to evaluate.
        batch_size: Images per forward pass.
        execution: Precision and memory format (default: fp32, so reported accuracies do
            not depend on the device's autocast choice; ``compile`` is ignored).

    Returns:
        ``(accuracy in [0, 1], mean cross-entropy loss)``.

    Raises:
        ValueError: If the split is empty or ``batch_size < 1``.
        NonFiniteError: If the logits of some batch contain NaN or infinity.

    """
    if len(split) == 0:
        raise ConfigError(
            "evaluate_accuracy got an empty split (0 images); pass a split with at least one "
            "example (check the subset size or the hold-out fraction)."
        )
    if not _is_int(batch_size) or batch_size < 1:
        raise ConfigError(f"batch_size must be an int >= 1; got {batch_size!r}.")
    device = torch.device(device)
    run = (execution or Execution(precision="fp32")).resolve(device)
    mean, std = norm_tensors(normalization, split.images.shape[1], device)
    was_training = model.training
    run.prepare(model.to(device))
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    try:
        with torch.inference_mode():
            for number, start in enumerate(range(0, len(split), batch_size)):
                images = split.images[start : start + batch_size].to(device, non_blocking=True)
                labels = split.labels[start : start + batch_size].to(device, non_blocking=True)
                with run.autocast(device):
                    logits = model(normalize(images, mean, std, run.memory_format)).float()
                bad = ~torch.isfinite(logits).all()
                first_bad = torch.where(bad & (first_bad < 0), number, first_bad)
                loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").double()
                correct += (logits.argmax(dim=1) == labels).sum()
    finally:
        model.train(was_training)
    bad_batch = int(first_bad.item())
    if bad_batch >= 0:
        raise NonFiniteError(
            f"the model's logits contain NaN or infinity in evaluation batch {bad_batch} "
            f"(images {bad_batch * batch_size} to {min((bad_batch + 1) * batch_size, len(split))}"
            " - 1); check the checkpoint for NaN weights, or lower the learning rate if it "
            "came out of fine-tuning."
        )
    return int(correct.item()) / len(split), float(loss_sum.item()) / len(split)


def _batch_bounds(size: int, batch_size: int) -> list[tuple[int, int]]:
    """Return ``(start, end)`` of each batch; a last batch of 1 joins the one before.

    Nothing is dropped; merging a single leftover example avoids BatchNorm's error on
    batches of one example.
    """
    bounds = [(start, min(start + batch_size, size)) for start in range(0, size, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2] = (bounds[-2][0], size)
        bounds.pop()
    return bounds


def _lr_at(config: FinetuneConfig, step: int, total_steps: int) -> float:
    warm = round(config.warmup * total_steps)
    if step < warm:
        return config.lr * (step + 1) / warm
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "step":
        passed = sum(step >= round(m * total_steps) for m in config.milestones)
        return config.lr * config.gamma**passed
    if config.schedule == "triangle":
        return config.lr * (total_steps - step) / (total_steps - warm)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / (total_steps - warm)))


def _settings(config: FinetuneConfig, train_size: int, has_val: bool, keep_best: bool,
              key: dict | None = None) -> dict:
    """Everything a checkpoint must agree on to be resumed."""
    settings = {
        "config": dataclasses.asdict(config),
        "train_size": train_size,
        "has_val": has_val,
        "keep_best": keep_best,
    }
    if key is not None:
        settings["key"] = key
    return settings


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        torch.save(state, tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _load_checkpoint(path: Path, settings: dict) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ConfigError(
            f"could not read the fine-tuning checkpoint {path} ({error}); delete it to start "
            "fresh or pass another checkpoint_path."
        ) from error
    stored = state.get("settings") if isinstance(state, dict) else None
    if stored != settings:
        if isinstance(stored, dict):
            diff = [
                f"{key}: stored {stored.get(key)!r}, now {value!r}"
                for key, value in settings.items()
                if stored.get(key) != value
            ]
        else:
            diff = ["the file has no stored settings"]
        raise ConfigError(
            f"the checkpoint {path} was written with different fine-tuning settings ("
            + "; ".join(diff)
            + "); pass the same config, train split, val and keep_best to resume, or delete "
            "the checkpoint (or use another checkpoint_path) to start fresh."
        )
    return state


def finetune(
    model: nn.Module,
    train: Split,
    normalization: Normalization,
    config: FinetuneConfig,
    *,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    val: Split | None = None,
    progress: bool = True,
    checkpoint_path: Path | None = None,
    keep_best: bool = False,
    checkpoint_key: dict | None = None,
    execution: Execution | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` in place with SGD on ``train``.

    The whole uint8 training set is moved to ``device`` once; each epoch draws a
    permutation and the augmentation (crop offsets, flips) from ``generator`` on the CPU,
    moves them to the device once, and then slices, augments (uint8, zero padding like
    torchvision's ``RandomCrop``) and normalises each batch on the device. Runs with the
    same generator state give identical weights on the CPU. The step runs under
    ``execution`` (autocast, channels-last, optionally ``torch.compile``; fp16 with a
    gradient scaler) with a fused SGD on CUDA; the only host synchronisations are the
    non-finite check and progress update every ``POSTFIX_EVERY`` steps.

    ``val`` is used for selection (``keep_best``) and must be held-out *training* data;
    never pass the test split here, or the reported test accuracy is no longer unbiased.

    Args:
        model: The network to train (the caller's pruned copy); moved to ``device``, left
            in eval mode at the end.
        train: Training images and labels.
        normalization: Mean/std of the data set.
        config: Hyper-parameters.
        generator: CPU generator all randomness comes from; advanced in place.
        device: Where to train.
        val: Held-out training data evaluated after every epoch (not the test split).
        progress: Show a tqdm bar per epoch with loss and learning rate.
        checkpoint_path: If given, a checkpoint is written atomically after every epoch;
            if the file exists at the start and was written with the same settings
            (config, train size, whether val is given, keep_best), training resumes from
            it (model, optimizer and generator state, history).
        keep_best: Restore at the end the weights of the epoch with the best val accuracy
            (needs ``val``).
        checkpoint_key: What else the checkpoint must agree on to be resumed (e.g. which
            network is trained, from which start); stored with the settings.
        execution: Precision, memory format and compilation (default ``Execution()``,
            resolved on ``device``: bf16 channels-last on CUDA, fp32 on the CPU).

    Returns:
        The per-epoch history and the best epoch.

    Raises:
        ValueError: On an empty training split, ``keep_best`` without ``val``, a
            non-CPU generator, or a checkpoint written with other settings.
        NonFiniteError: If the training loss or the val logits become NaN or infinite.

    """
    if not isinstance(config, FinetuneConfig):
        raise TypeError(f"config must be a FinetuneConfig; got {type(config).__name__}.")
    if keep_best and val is None:
        raise ConfigError(
            "keep_best=True needs a val split to choose the best epoch; pass val (held-out "
            "training data, never the test split) or set keep_best=False."
        )
    if generator.device.type != "cpu":
        raise ConfigError(
            f"the generator must live on the CPU; got one on {generator.device}. Create it "
            "with torch.Generator() (random numbers are drawn on the CPU and then moved)."
        )
    if config.epochs == 0:
        return FinetuneResult(history=[], best_epoch=None)
    if len(train) == 0:
        raise ConfigError(
            "finetune got an empty training split (0 images); pass a split with examples."
        )
    device = torch.device(device)
    run = (execution or Execution()).resolve(device)
    channels, height, width = train.images.shape[1:]
    mean, std = norm_tensors(normalization, channels, device)
    run.prepare(model.to(device))
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
        fused=True if device.type == "cuda" else None,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=run.precision == "fp16")
    net = torch.compile(model) if run.compile else model
    size = len(train)
    bounds = _batch_bounds(size, config.batch_size)
    total_steps = config.epochs * len(bounds)
    crop = config.augment and height >= CROP_MIN_SIZE and width >= CROP_MIN_SIZE
    flip = config.augment and config.augment_flip

    history: list[dict[str, Any]] = []
    best_epoch: int | None = None
    best_accuracy = -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    settings = _settings(config, size, val is not None, keep_best, checkpoint_key)
    settings["execution"] = {"precision": run.precision, "channels_last": run.channels_last}
    if checkpoint_path is not None:
        checkpoint_path = Path(checkpoint_path)
        if checkpoint_path.exists():
            state = _load_checkpoint(checkpoint_path, settings)
            model.load_state_dict(state["model_state"])
            optimizer.load_state_dict(state["optimizer_state"])
            if state.get("scaler_state"):
                scaler.load_state_dict(state["scaler_state"])
            generator.set_state(state["generator_state"])
            history = list(state["history"])
            best_epoch = state["best_epoch"]
            if best_epoch is not None:
                best_accuracy = history[best_epoch - 1]["val_accuracy"]
            if state.get("best_state") is not None:
                best_state = {k: v.to(device) for k, v in state["best_state"].items()}

    images = train.images.to(device)
    labels = train.labels.to(device)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    for epoch in range(len(history) + 1, config.epochs + 1):
        began = time.perf_counter()
        # All of the epoch's randomness, drawn on the CPU in a fixed order, moved once.
        order = torch.randperm(size, generator=generator).to(device)
        offsets = (
            torch.randint(0, 2 * CROP_PADDING + 1, (size, 2), generator=generator).to(device)
            if crop
            else None
        )
        flips = (torch.rand(size, generator=generator) < 0.5).to(device) if flip else None

        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        lr = config.lr
        bar = tqdm(
            total=len(bounds),
            desc=f"epoch {epoch}/{config.epochs}",
            disable=not progress,
            leave=False,
        )
        try:
            for step, (start, end) in enumerate(bounds):
                index = order[start:end]
                batch = _augment(
                    images[index],
                    None if offsets is None else offsets[start:end],
                    None if flips is None else flips[start:end],
                )
                inputs = normalize(batch, mean, std, run.memory_format)
                targets = labels[index]
                lr = _lr_at(config, (epoch - 1) * len(bounds) + step, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with run.autocast(device):
                    logits = net(inputs)
                    loss = loss_fn(logits, targets)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()

                detached = loss.detach()
                first_bad = torch.where(
                    ~torch.isfinite(detached) & (first_bad < 0), step, first_bad
                )
                loss_sum += detached.double() * (end - start)
                correct += (logits.detach().argmax(dim=1) == targets).sum()
                bar.update(1)
                if (step + 1) % POSTFIX_EVERY == 0 or step + 1 == len(bounds):
                    _check_finite(first_bad, epoch, lr)  # host sync, every POSTFIX_EVERY steps
                    bar.set_postfix(loss=f"{loss_sum.item() / end:.4f}", lr=f"{lr:.3g}")
        finally:
            bar.close()

        record: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": float(loss_sum.item()) / size,
            "train_accuracy": int(correct.item()) / size,
        }
        if val is not None:
            accuracy, _ = evaluate_accuracy(model, val, normalization, device=device,
                                            execution=run)
            record["val_accuracy"] = accuracy
            if accuracy > best_accuracy:
                best_accuracy, best_epoch = accuracy, epoch
                if keep_best:
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        record["lr"] = lr
        record["seconds"] = time.perf_counter() - began
        history.append(record)
        if checkpoint_path is not None:
            _save_checkpoint(
                checkpoint_path,
                {
                    "settings": settings,
                    "epoch": epoch,
                    "model_state": model.state_dict(),
                    "optimizer_state": optimizer.state_dict(),
                    "scaler_state": scaler.state_dict() if scaler.is_enabled() else None,
                    "history": history,
                    "generator_state": generator.get_state(),
                    "best_epoch": best_epoch,
                    "best_state": best_state,
                },
            )

    if keep_best and best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FinetuneResult(history=history, best_epoch=best_epoch)


def _check_finite(first_bad: torch.Tensor, epoch: int, lr: float) -> None:
    bad_step = int(first_bad.item())
    if bad_step >= 0:
        raise NonFiniteError(
            f"the training loss became NaN or infinite in epoch {epoch}, step {bad_step} "
            f"(learning rate {lr:.3g} at the last step checked); lower the learning rate, "
            "and check the starting weights for NaN."
        )
