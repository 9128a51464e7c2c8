"""Criteria compared at equal per-layer ratios on ResNet-56 with its published weights.

Every registered criterion ranks the channels of the 27 internal groups; each group then
drops the same fraction of its channels (30, 50 and 70 %), and the pruned network's top-1
accuracy is measured *before any fine-tuning* on hold-out images of the CIFAR-10 JPEG copy.
Data criteria score one seeded batch of 128 training images (never the hold-out images); the
``grad_*`` criteria are also run on a re-initialised copy (``+reinit``, EvoFC's setting).
``random`` is averaged over three seeds. Run from the repository root::

    .venv/bin/python analysis/benchmark_criteria.py --out docs/benchmarks-criteria.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from benchmark_evaluator import ensure_weights, git_commit, machine_info, prepare_data

from moprune.core.cost import CostModel
from moprune.core.encoding import RatioEncoding
from moprune.core.space import PruningSpace
from moprune.criteria import CRITERIA, ScoreContext, rank_channels
from moprune.evaluation.evaluator import Evaluator
from moprune.fronts import format_table
from moprune.tasks.task import DataRequest, TaskOptions, load_problem_file

REPO = Path(__file__).resolve().parents[1]
RATIOS = (0.3, 0.5, 0.7)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--eval-images", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    ensure_weights()
    root = prepare_data(args.data_root)
    task = load_problem_file(REPO / "problems" / "resnet56_cifar10.py", TaskOptions())
    data = task.load_data(DataRequest(root=root, seed=args.seed, eval_images=args.eval_images,
                                      load_train=True, train_images=5000))
    space = PruningSpace.from_model(task.model, task.input_shape, task.policy)
    evaluator = Evaluator(task.model, space, data.val, data.normalization, device=args.device)
    cost = CostModel(space, task.model)
    base = float(evaluator.baseline().accuracy[0])
    variants: list[tuple[str, str, ScoreContext]] = []
    for name in CRITERIA.names():
        crit = CRITERIA.get(name)
        if name == "random":
            for seed in range(3):
                variants.append(("random", name, ScoreContext(seed=seed)))
            continue
        ctx = ScoreContext.from_split(data.train, data.normalization, args.seed,
                                      device=args.device) if crit.needs_data else ScoreContext()
        variants.append((name, name, ctx))
        if name.startswith("grad_"):
            variants.append((f"{name}+reinit", name, ScoreContext(
                images=ctx.images, labels=ctx.labels, seed=args.seed, reinit=True)))
    results: dict[str, dict[float, list[float]]] = {}
    seconds: dict[str, float] = {}
    macs: dict[float, float] = {}
    for label, name, ctx in variants:
        t0 = time.perf_counter()
        scores = CRITERIA.get(name).score(task.model, space, ctx)
        seconds[label] = time.perf_counter() - t0
        encoding = RatioEncoding(space, rank_channels(space, scores), 1, 0.9)
        masks = encoding.decode_masks(np.array([[r] * space.n_groups for r in RATIOS]))
        acc = evaluator.evaluate_masks(masks).accuracy
        for r, a, m in zip(RATIOS, acc, masks, strict=True):
            results.setdefault(label, {}).setdefault(r, []).append(float(a))
            macs[r] = float(cost.cost_of_masks(m[None]).macs[0] / cost.base.macs[0])
        print(f"{label}: " + ", ".join(f"{int(100 * r)} % -> {a:.2%}"
                                        for r, a in zip(RATIOS, acc, strict=True)), flush=True)
    rows = [{"criterion": label, **{f"r{int(100 * r)}": float(np.mean(v))
                                    for r, v in per.items()}, "s": seconds[label]}
            for label, per in results.items()]
    rows.sort(key=lambda row: -row["r50"])
    columns = [("criterion", "criterion", "")]
    columns += [(f"r{int(100 * r)}", f"{int(100 * r)} % removed ({1 - macs[r]:.0%} MACs)", ".2%")
                for r in RATIOS]
    columns += [("s", "scoring s", ".2f")]
    table = format_table(rows, columns, markdown=True)
    info = machine_info(torch.device(args.device))
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])
    text = "\n".join([
        "# Criteria at equal per-layer ratios (ResNet-56, published weights, no fine-tuning)",
        "",
        f"- Command: `{command}`",
        f"- Git commit: {git_commit()}",
        f"- Machine: {info['cpu']}; {info['cores']}; device {info['device']}; "
        f"torch {torch.__version__}",
        f"- Every one of the 27 internal groups drops the same fraction of its channels, ranked by "
        f"the criterion; top-1 accuracy on {len(data.val)} hold-out images of the CIFAR-10 JPEG "
        f"copy, before any fine-tuning (unpruned: {base:.2%}). Data criteria score 128 seeded "
        "training images; `+reinit`: on a copy with Xavier-normal re-initialised weights "
        "(EvoFC); `random`: mean of 3 seeds.",
        "",
        table,
        "",
        "Sorted by the 50 % column. Without fine-tuning the numbers rank criteria by how much "
        "of the network's function they keep; they are not final accuracies.",
        "",
    ])
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
