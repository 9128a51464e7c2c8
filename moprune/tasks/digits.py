"""The digits task: a 3-conv CNN on the embedded 8x8 digits (what ``moprune demo`` runs).

This module is also a problem file (it defines ``build_task``): ``moprune search
moprune/tasks/digits.py`` (or ``problems/digits_demo.py``, which re-exports it) searches it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from moprune.core.space import SpacePolicy
from moprune.data.datasets import DataBundle, load_dataset
from moprune.tasks.task import DataRequest, PruningTask, TaskOptions, load_weights
from moprune.training.finetune import FinetuneConfig, evaluate_accuracy, finetune
from moprune.zoo.models import build_model

# Recipe for the digits CNN: 8x8 images, no crops or flips (a flipped 2 is no 2).
RECIPE = FinetuneConfig(epochs=40, lr=0.05, batch_size=64, weight_decay=5e-4, augment=False,
                        augment_flip=False)


def load_digits(request: DataRequest) -> DataBundle:
    """The embedded digits data with a seeded hold-out split."""
    return load_dataset("digits", root=None, seed=request.seed, max_val=request.eval_images,
                        max_test=request.test_images, load_train=request.load_train,
                        max_train=request.train_images)


def build_task(options: TaskOptions) -> PruningTask:
    """The demo problem: filter masks of a 3-conv CNN on 8x8 digits."""
    model = build_model("digits_cnn", num_classes=10)
    if options.weights is not None:
        load_weights(model, options.weights)
    return PruningTask(
        name="digits_cnn", model=model.eval(), input_shape=(1, 8, 8), load_data=load_digits,
        policy=SpacePolicy(min_channels=2), encoding="mask",
        finetune=FinetuneConfig(epochs=5, lr=0.01, batch_size=64, augment=False,
                                augment_flip=False),
        description="3-conv CNN on scikit-learn's 8x8 digits (embedded, offline)",
    )


def train_baseline(out: Path, seed: int, progress: bool) -> float:
    """Train the digits CNN from scratch and save its state_dict; returns hold-out accuracy."""
    data = load_digits(DataRequest(root=None, seed=seed, load_train=True))
    with torch.random.fork_rng():  # seeded initialisation without touching the global RNG
        torch.manual_seed(seed)
        model = build_model("digits_cnn", num_classes=10)
    gen = torch.Generator().manual_seed(seed)
    finetune(model, data.train, data.normalization, RECIPE, generator=gen, progress=progress)
    acc, _ = evaluate_accuracy(model, data.val, data.normalization)
    torch.save({"state_dict": model.state_dict(), "val_accuracy": acc}, out)
    return acc


__all__ = ["RECIPE", "build_task", "load_digits", "train_baseline"]
