"""What batching the groups buys in a CCEP round: all groups' candidates per call vs group by group.

One coevolution round (:class:`moprune.algorithms.coevolution.CoevolutionRound`) on ResNet-56
with the published weights, run twice per evaluation mode with the same seed: ``batch_groups=True``
(each step evaluates every group's offspring in one problem call) and ``batch_groups=False``
(one call per group, as a per-layer EA would). Both see exactly the same candidates (checked),
each on a fresh evaluator (no shared cache). The order of the two alternates per repeat.

    .venv/bin/python analysis/benchmark_ccep.py --out docs/benchmarks-ccep.md

On a GPU add ``--device cuda --modes gate`` (gate mode batches whole populations per pass,
which is where grouping the calls pays).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from benchmark_evaluator import ensure_weights, git_commit, machine_info, prepare_data, sync
from pymoo.optimize import minimize

from moprune.algorithms.coevolution import CoevolutionConfig, CoevolutionRound
from moprune.core.space import PruningSpace, SpacePolicy
from moprune.data.datasets import load_dataset
from moprune.evaluation.evaluator import Evaluator
from moprune.problems.mask import FilterMaskProblem
from moprune.zoo.cifar_resnet import cifar_resnet


def one_round(model, space, data, args, mode: str, batched: bool) -> tuple[float, dict]:
    evaluator = Evaluator(model, space, data.val, data.normalization, device=args.device,
                          mode=mode, batch_size=args.batch_size)
    problem = FilterMaskProblem(evaluator)
    calls: list[int] = []
    inner = problem._evaluate

    def counted(x, out, *a, **k):
        calls.append(len(np.atleast_2d(x)))
        return inner(x, out, *a, **k)

    problem._evaluate = counted
    config = CoevolutionConfig(pop_size=args.pop_size, generations=args.generations,
                               batch_groups=batched)
    device = torch.device(args.device)
    sync(device)
    start = time.perf_counter()
    res = minimize(problem, CoevolutionRound(config), seed=args.seed)
    sync(device)
    seconds = time.perf_counter() - start
    winners = [(w.group, w.keep.tobytes()) for w in res.algorithm.winners()]
    return seconds, {"calls": len(calls), "candidates": sum(calls),
                     "evaluated": evaluator.stats.evaluations,
                     "cache_hits": evaluator.stats.cache_hits, "winners": winners}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None, help="CIFAR-10 ImageFolder root "
                        "(default: the shared JPEG zips, unzipped once)")
    parser.add_argument("--images", type=int, default=128, help="hold-out images per candidate")
    parser.add_argument("--pop-size", type=int, default=5)
    parser.add_argument("--generations", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["slice", "gate"])
    parser.add_argument("--batch-size", type=int, default=None,
                        help="evaluator batch size (default: the evaluator's per device)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/benchmarks-ccep.md")
    args = parser.parse_args(argv)

    began = time.perf_counter()
    ensure_weights()
    root = prepare_data(args.data_root)
    data = load_dataset("imagefolder", root=root, seed=0, max_val=args.images, load_train=False)
    model = cifar_resnet(56, num_classes=10, pretrained=True).eval()
    space = PruningSpace.from_model(model, (3, 32, 32), SpacePolicy())
    device = torch.device(args.device)
    rows = []
    for mode in args.modes:
        times: dict[bool, list[float]] = {True: [], False: []}
        info: dict[bool, dict] = {}
        for rep in range(args.repeats):
            for batched in ((True, False) if rep % 2 == 0 else (False, True)):
                seconds, stats = one_round(model, space, data, args, mode, batched)
                times[batched].append(seconds)
                info[batched] = stats
                print(f"{mode} batched={batched} repeat {rep}: {seconds:.1f} s, "
                      f"{stats['calls']} calls", flush=True)
        same = info[True]["winners"] == info[False]["winners"]
        med = {b: statistics.median(t) for b, t in times.items()}
        rows.append((mode, med, info, same, times))
    write(args, device, rows, time.perf_counter() - began, space, len(data.val))


def write(args, device, rows, runtime, space, n_images) -> None:
    info = machine_info(device)
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])
    lines = [
        "# CCEP benchmark: evaluating all groups together vs group by group",
        "",
        f"Generated by `analysis/benchmark_ccep.py` on {dt.datetime.now():%Y-%m-%d %H:%M} "
        f"(runtime {runtime:.0f} s).",
        "",
        f"- Command: `{command}`",
        f"- Git commit: {git_commit()}",
        f"- Machine: {info['cpu']}; {info['cores']}; torch threads {info['torch threads']}; "
        f"device {info['device']}{'; ' + info['gpu'] if 'gpu' in info else ''}",
        f"- Versions: torch {torch.__version__}",
        f"- Work: one coevolution round on ResNet-56 (published weights), {space.n_groups} "
        f"groups, population {args.pop_size}, {args.generations} generation(s) after the "
        f"initial one; {n_images} hold-out images per candidate; {args.repeats} repeats per "
        "setting, order alternating; a fresh evaluator (empty cache) for every run.",
        "",
        "| evaluation mode | batched: s / round | group by group: s / round | speed-up | "
        "problem calls (batched / by group) | candidates evaluated | same winners |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, med, stats, same, _ in rows:
        lines.append(
            f"| {mode} | {med[True]:.1f} | {med[False]:.1f} | {med[False] / med[True]:.2f}x | "
            f"{stats[True]['calls']} / {stats[False]['calls']} | {stats[True]['evaluated']} | "
            f"{'yes' if same else 'NO'} |")
    lines += [
        "",
        "Speed-up = group-by-group time / batched time (medians). *Candidates evaluated* are "
        "distinct networks (the unpruned network each group starts from is evaluated once).",
        "",
        "Reading: in slice mode each candidate is one forward pass of its own (sliced) "
        "weights, so grouping the calls only saves Python overhead. In gate mode a call runs "
        "as many candidates per forward pass as fit in the evaluator's batch (512 images on "
        "the CPU, 8,192 on CUDA): group by group, a call holds one group's few offspring; "
        "batched, it holds every group's. On a CPU the forward work is the same either way; "
        "on a GPU the larger passes are what fill the device. GPU command: "
        "`.venv/bin/python analysis/benchmark_ccep.py --device cuda --modes gate --images 2000 "
        "--out docs/benchmarks-ccep-cuda.md`.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
