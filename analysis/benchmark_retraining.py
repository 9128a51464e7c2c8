"""Benchmark of DeepPruningES's partial retraining per candidate, on ResNet-56.

Measures side by side, on the same plans (random keep-masks of the residual-stage encoding at
about 50 % of the MACs) and the same training images, the seconds per candidate of:

1. moprune: ``RetrainingEvaluator`` - Torch-Pruning surgery of a copy already on the device,
   training on uint8 images moved to the device once (augmented and normalised there), then
   scoring on the hold-out images on the device;
2. full width: the same training and scoring of the unpruned network - what training with
   masks (zeroed channels in full-size tensors) would cost instead of the pruned network;
3. from disk: the same pruned network, trained and scored through torchvision's
   ``ImageFolder`` + ``DataLoader`` (JPEG decoding and transforms every epoch), the usual
   training loop of pruning code.

Also the strategy's own work per generation (elite selection, mutation, repair). Ratios are
paired: each path divided by the moprune path on the same plan, measured right after it.

Run from the repository root::

    .venv/bin/python analysis/benchmark_retraining.py --out docs/benchmarks-deeppruninges.md
    .venv/bin/python analysis/benchmark_retraining.py --device cuda --train-images 5000 \
        --epochs 3 --out docs/benchmarks-deeppruninges-gpu.md
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from benchmark_evaluator import (
    draw_plans,
    ensure_weights,
    git_commit,
    machine_info,
    prepare_data,
    sync,
)
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import ImageFolder

from moprune.algorithms.deeppruninges import DeepPruningESConfig
from moprune.core.cost import CostModel
from moprune.core.plan import PruningPlan
from moprune.core.surgery import prune_model
from moprune.evaluation.retraining import RetrainingEvaluator, partial_recipe
from moprune.fronts import select_elites
from moprune.problems.mask import FilterMaskProblem
from moprune.tasks.setup import make_problem
from moprune.tasks.task import DataRequest, TaskOptions, load_problem_file

REPO = Path(__file__).resolve().parents[1]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--plans", type=int, default=3)
    p.add_argument("--train-images", type=int, default=512)
    p.add_argument("--eval-images", type=int, default=256)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="markdown report to write")
    return p.parse_args(argv)


def loader_of(dataset, indices: list[int], batch: int, shuffle: bool,
              generator: torch.Generator) -> DataLoader:
    return DataLoader(Subset(dataset, indices), batch_size=batch, shuffle=shuffle,
                      num_workers=0, generator=generator)


def train_from_disk(model: torch.nn.Module, train: DataLoader, val: DataLoader, epochs: int,
                    lr: float, device: torch.device) -> float:
    """The usual loop: decode JPEGs and transform on the host every epoch, then score."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    for _ in range(epochs):
        model.train()
        for x, y in train:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for x, y in val:
            correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
            total += len(y)
    return correct / total


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = torch.device(args.device)
    ensure_weights()
    root = prepare_data(args.data_root)
    task = load_problem_file(REPO / "problems" / "resnet56_cifar10.py", TaskOptions())
    data = task.load_data(DataRequest(root=root, seed=args.seed, eval_images=args.eval_images,
                                      load_train=True, train_images=args.train_images))
    recipe = partial_recipe(task.finetune, args.epochs)
    setup = make_problem(task, data, device=args.device, residual=True, retrain=recipe,
                         seed=args.seed)
    space, ev = setup.space, setup.evaluator
    assert isinstance(ev, RetrainingEvaluator)
    cost = CostModel(space, task.model)
    masks, _, ratios = draw_plans(space, cost, args.plans, args.seed)
    masks = np.array([setup.problem.encoding.repair(m) for m in masks])

    # the same images, as files: the hold-out and training parts are drawn from train/
    norm = data.normalization
    normalize = T.Normalize(norm.mean, norm.std)
    train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                          normalize])
    folder_train = ImageFolder(str(root / "train"), transform=train_tf)
    folder_val = ImageFolder(str(root / "train"), transform=T.Compose([T.ToTensor(), normalize]))
    gen = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(folder_train), generator=gen).tolist()
    train_idx = order[: args.train_images]
    val_idx = order[args.train_images: args.train_images + args.eval_images]

    rows: dict[str, list[float]] = {"moprune": [], "full width": [], "from disk": []}
    paired: dict[str, list[float]] = {"full width": [], "from disk": []}
    model_dev = task.model.to(device)
    full = np.ones(space.n_channels, dtype=bool)
    for i, mask in enumerate(masks):
        ev._cache.clear()  # noqa: SLF001 - measure the work, not the cache
        sync(device)
        t0 = time.perf_counter()
        acc = ev.evaluate_masks(mask[None]).accuracy[0]
        sync(device)
        mine = time.perf_counter() - t0
        rows["moprune"].append(mine)

        ev._cache.clear()  # noqa: SLF001
        sync(device)
        t0 = time.perf_counter()
        ev.evaluate_masks(full[None])
        sync(device)
        rows["full width"].append(time.perf_counter() - t0)
        paired["full width"].append(rows["full width"][-1] / mine)

        sync(device)
        t0 = time.perf_counter()
        pruned = prune_model(model_dev, space, PruningPlan.from_mask(space, mask))
        disk_acc = train_from_disk(
            pruned, loader_of(folder_train, train_idx, recipe.batch_size, True, gen),
            loader_of(folder_val, val_idx, 500, False, gen), args.epochs, recipe.lr, device)
        sync(device)
        rows["from disk"].append(time.perf_counter() - t0)
        paired["from disk"].append(rows["from disk"][-1] / mine)
        print(f"plan {i}: MACs ratio {ratios[i]:.3f}; moprune {mine:.2f} s (acc {acc:.3f}), "
              f"full width {rows['full width'][-1]:.2f} s, from disk "
              f"{rows['from disk'][-1]:.2f} s (acc {disk_acc:.3f})", flush=True)

    # the strategy's own work per generation: select 3 elites of 30, 27 mutants + repair
    es = DeepPruningESConfig()
    problem: FilterMaskProblem = setup.problem  # type: ignore[assignment]
    rng = np.random.default_rng(args.seed)
    F_pop = rng.random((es.pop_size, 2))
    t0 = time.perf_counter()
    reps = 20
    for _ in range(reps):
        select_elites(F_pop)
        X = rng.random((es.pop_size - 3, space.n_channels)) < 0.5
        X ^= rng.random(X.shape) < es.mutation_rate
        np.array([problem.encoding.repair(x) for x in X])
    es_ms = 1000 * (time.perf_counter() - t0) / reps

    table = ["| path | s / candidate (median) | vs moprune (paired median) |", "|---|---:|---:|"]
    for name, vals in rows.items():
        ratio = statistics.median(paired[name]) if name in paired else 1.0
        table.append(f"| {name} | {statistics.median(vals):.2f} | {ratio:.2f}x |")
    info = machine_info(device)
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])
    text = "\n".join([
        "# DeepPruningES: partial retraining per candidate (ResNet-56, CIFAR-10 JPEG copy)",
        "",
        f"- Command: `{command}`",
        f"- Git commit: {git_commit()}",
        f"- Machine: {info['cpu']}; {info['cores']}; torch threads {info['torch threads']}; "
        f"device {info['device']}{'; ' + info['gpu'] if 'gpu' in info else ''}; "
        f"torch {torch.__version__}",
        f"- Work per candidate: {args.epochs} epoch(s) on {args.train_images} training images "
        f"(SGD lr {recipe.lr}, Nesterov, batch {recipe.batch_size}, crop + flip), then "
        f"{args.eval_images} hold-out images; {args.plans} plans of the residual-stage "
        f"encoding ({space.n_groups} groups, {space.n_channels} channels) at MACs ratio "
        f"{np.mean(ratios):.2f} on average.",
        "",
        *table,
        "",
        f"The strategy's own work per generation (3 elites of {es.pop_size}, "
        f"{es.pop_size - 3} mutants with repair): {es_ms:.1f} ms.",
        "",
        "- *full width*: the cost of training with masks on full-size tensors instead of the "
        "physically pruned network.",
        "- *from disk*: the pruned network fed by `ImageFolder` + `DataLoader` (JPEG decoding "
        "and transforms on the host every epoch, `num_workers=0`).",
        "",
    ])
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
