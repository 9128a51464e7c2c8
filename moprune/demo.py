"""The demo: a small CNN on the embedded digits data, trained, searched, picked and exported.

This file is also a problem file (it defines ``build_task``), so everything the demo does
is what ``moprune search/pick/export`` do on any other problem.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from moprune.runs import RunDir, RunDirError
from moprune.space import SpacePolicy
from moprune.task import DataRequest, PruningTask, TaskOptions, load_weights
from moprune.training import FinetuneConfig, evaluate_accuracy, finetune
from moprune.zoo.data import DataBundle, load_dataset
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


def _prepare(out: Path) -> None:
    run = RunDir(out)
    if run.exists():
        problem = Path(run.config()["identity"].get("problem", ""))
        if problem.name not in ("demo.py", "digits_demo.py"):
            raise RunDirError(f"{str(out)!r} holds a run that is not a demo; choose another --out")
        for p in sorted(out.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
    elif out.exists() and any(out.iterdir()):
        raise RunDirError(f"{str(out)!r} is not empty; choose another --out")
    out.mkdir(parents=True, exist_ok=True)


def run_demo(out: Path, seed: int = 0, progress: bool = True) -> int:
    """Train, search (NSGA-II on filter masks), pick the knee, export it; print a summary."""
    from moprune.cli import main

    start = time.perf_counter()
    out = Path(out)
    _prepare(out)
    weights = out / "baseline_weights.pt"
    print("1/4 training the digits CNN (embedded data, CPU) ...")
    acc = train_baseline(weights, seed, progress)
    print(f"    hold-out accuracy {acc:.2%}; saved {weights}")
    quiet = [] if progress else ["--quiet"]
    print("2/4 NSGA-II filter-mask search ...")
    status = main(["search", __file__, "--weights", str(weights), "--pop-size", "24",
                   "--generations", "25", "--seed", str(seed), "--eval-images", "288",
                   "--out", str(out), "--force", *quiet])
    if status:
        return status
    from moprune.analysis import PickRule, pick

    run = RunDir(out)
    knee = pick(run.front(), run.baseline(), PickRule("knee"),
                tuple(run.config()["identity"]["objectives"]))
    print(f"3/4 knee of the front: candidate {knee['id']}")
    print("4/4 exporting the knee as a physically pruned network (5 fine-tuning epochs) ...")
    status = main(["export", str(out), "--id", str(knee["id"]), "--out",
                   str(out / "knee.pt"), "--finetune-epochs", "5", *quiet])
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; front plot: "
          f"{out / 'plots' / 'front.png'}, model: {out / 'knee.pt'}")
    return status
