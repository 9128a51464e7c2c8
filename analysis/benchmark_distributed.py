"""Dask benchmark: population evaluation on 1 and 2 local workers, and the overhead per generation.

Rows, measured side by side in one run on the same candidates (ResNet-56 with the published
weights, slice mode, fp32, distinct random ~50 %-MACs keep-masks, every generation new):

1. one process, the plain ``Evaluator`` with all torch threads (the reference);
2. ``DaskEvaluator`` on a local cluster of 1 worker process (all torch threads);
3. ``DaskEvaluator`` on a local cluster of 2 worker processes (threads shared out);
4. the overhead alone: 2 workers whose scorer returns at once (submit, schedule, gather and
   the driver's cache, per generation and per task).

Cluster start-up and the workers' one-time build of the evaluator are reported apart. The
section goes into ``--out`` between ``<!-- benchmark_speed:dask-cpu:begin/end -->``::

    .venv/bin/python analysis/benchmark_distributed.py --out docs/benchmarks.md
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
from benchmark_evaluator import (
    SHARED,
    distinct_population,
    draw_plans,
    git_commit,
    machine_info,
    pkg_version,
)
from benchmark_speed import cifar_root, seeded_resnet, synthetic_split, write_section
from common import seed_hub_cache

from moprune.core.cost import CostModel
from moprune.core.execution import Execution
from moprune.core.space import PruningSpace, SpacePolicy
from moprune.data.datasets import IMAGENET_NORMALIZATION_VALUES, Normalization, load_dataset
from moprune.evaluation.distributed import (
    DaskEvaluator,
    require_distributed,
    torch_threads_per_worker,
)
from moprune.evaluation.evaluator import Evaluator
from moprune.evaluation.scorer import EvalResult, EvalStats
from moprune.zoo.cifar_resnet import PUBLISHED_WEIGHTS, cifar_resnet

KEY = "dask-cpu"


class NullScorer:
    """Answers at once: what is left of a generation's time is Dask's overhead."""

    def evaluate_masks(self, masks: np.ndarray) -> EvalResult:
        n = len(masks)
        return EvalResult(accuracy=np.zeros(n), loss=np.zeros(n))


def null_factory() -> NullScorer:
    return NullScorer()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=500, help="images per candidate (500)")
    p.add_argument("--pop-size", type=int, default=16, help="candidates per generation (16)")
    p.add_argument("--generations", type=int, default=3, help="timed generations (3)")
    p.add_argument("--depth", type=int, default=56, help="CIFAR ResNet depth (56)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/benchmarks.md")
    p.add_argument("--shared", default=None, help=f"shared data folder (default {SHARED})")
    p.add_argument("--data-root", default=None, help="an unzipped CIFAR-10 JPEG root")
    p.add_argument("--quick", action="store_true",
                   help="ResNet-20, random weights, 16 synthetic images (for the tests)")
    return p


def timed_generations(evaluate, masks: np.ndarray, pop: int, generations: int) -> list[float]:
    """Seconds of each generation after an untimed warm-up generation."""
    times = []
    for g in range(generations + 1):
        batch = masks[g * pop:(g + 1) * pop]
        t0 = time.perf_counter()
        evaluate(batch)
        if g:
            times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    distributed = require_distributed()
    command = ".venv/bin/python " + shlex.join(
        sys.argv if argv is None else ["analysis/benchmark_distributed.py", *argv])
    shared = Path(args.shared).expanduser() if args.shared else SHARED
    if args.quick:
        depth, n_images = 20, min(args.images, 16)
        model = seeded_resnet(depth, args.seed)
        val = synthetic_split(n_images, args.seed)
        norm = Normalization(*IMAGENET_NORMALIZATION_VALUES)
        data_note = f"{n_images} synthetic images (--quick)"
    else:
        depth, n_images = args.depth, args.images
        weights = shared / "weights" / PUBLISHED_WEIGHTS[depth]
        if weights.is_file():
            seed_hub_cache([weights])
        model = cifar_resnet(depth, pretrained=True)
        bundle = load_dataset("imagefolder", root=cifar_root(shared, args.data_root),
                              seed=args.seed, max_val=n_images, max_test=1)
        val, norm = bundle.val.subset(n_images), bundle.normalization
        data_note = f"{len(val)} CIFAR-10 JPEG hold-out images"
    space = PruningSpace.from_model(model, (3, 32, 32), SpacePolicy())
    cost = CostModel(space, model)
    pop, gens = args.pop_size, args.generations
    pool, _, _ = draw_plans(space, cost, 64, seed=args.seed + 1, target=0.5)
    per_row = pop * (gens + 1)
    masks = distinct_population(space, pool, 4 * per_row, np.random.default_rng(args.seed + 2))
    execution = Execution("fp32")
    cores = torch.get_num_threads()
    rows: list[dict] = []

    def add(name: str, times: list[float], setup_s: float | None, note: str) -> None:
        med = statistics.median(times)
        rows.append({"name": name, "gen": med, "lo": min(times), "hi": max(times),
                     "rate": pop / med, "setup": setup_s, "note": note})
        print(f"{name}: {med:.3f} s per generation", flush=True)

    # 1. one process
    local = Evaluator(model, space, val, norm, mode="slice", execution=execution)
    add("one process, `Evaluator`", timed_generations(local.evaluate_masks,
                                                       masks[:per_row], pop, gens),
        None, f"{cores} torch threads")
    # 2-4. local clusters
    for i, (workers, scorer) in enumerate(((1, "evaluator"), (2, "evaluator"), (2, "null"))):
        threads = torch_threads_per_worker(workers)
        t0 = time.perf_counter()
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                      dashboard_address=":0") as cluster, \
                distributed.Client(cluster) as client:
            started = time.perf_counter() - t0
            t1 = time.perf_counter()
            if scorer == "null":
                dask_ev = DaskEvaluator(client, local, null_factory)
            else:
                dask_ev = DaskEvaluator.from_evaluator(client, local, torch_threads=threads)
            built = time.perf_counter() - t1
            dask_ev._cache = {}  # noqa: SLF001 - every row computes every candidate
            dask_ev.stats = EvalStats()
            rows_masks = masks[(i + 1) * per_row:(i + 2) * per_row]
            times = timed_generations(dask_ev.evaluate_masks, rows_masks, pop, gens)
            dask_ev.close()
        name = (f"Dask, {workers} worker{'s' if workers > 1 else ''}"
                + (", scorer that returns at once (overhead only)" if scorer == "null" else ""))
        add(name, times, started + built,
            f"{threads} torch thread(s) per worker; cluster start {started:.1f} s, evaluator "
            f"built on the workers in {built:.1f} s")

    one, w1, w2, null = rows
    overhead_gen = null["gen"]
    lines = [
        f"## Distributed evaluation (Dask) on the CPU ({machine_info(torch.device('cpu'))['cpu']},"
        f" {cores} threads)" + (" - quick mode, not meaningful" if args.quick else ""), "",
        f"- Command: `{command}`",
        f"- Date: {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}; git commit: {git_commit()}",
        f"- Versions: torch {torch.__version__}, dask {pkg_version('dask')}, distributed "
        f"{pkg_version('distributed')}",
        f"- Work: ResNet-{depth}, {space}; {data_note}; slice mode, fp32; {pop} distinct "
        f"~50 %-MACs candidates per generation, an untimed warm-up generation, then {gens} "
        "timed ones, new candidates in every generation and row (no cache hits). Workers are "
        "local processes on loopback (`LocalCluster`, one Dask thread each).", "",
        "| row | s / generation, median (min - max) | candidates / s | one-time setup (s) | "
        "notes |", "|---|---:|---:|---:|---|"]
    for r in rows:
        setup = "-" if r["setup"] is None else f"{r['setup']:.1f}"
        lines.append(f"| {r['name']} | {r['gen']:.3f} ({r['lo']:.3f} - {r['hi']:.3f}) | "
                     f"{r['rate']:.2f} | {setup} | {r['note']} |")
    lines += ["", "What the numbers mean: 2 workers evaluate "
              f"{w2['rate'] / w1['rate']:.2f}x as many candidates per second as 1 worker "
              f"({w2['rate']:.2f} against {w1['rate']:.2f}, same run); 1 worker runs at "
              f"{w1['rate'] / one['rate']:.2f}x the single process. Dask's own overhead, "
              f"measured with a scorer that returns at once, is {overhead_gen * 1e3:.0f} ms per "
              f"generation of {pop} tasks ({overhead_gen / pop * 1e3:.1f} ms per task), "
              f"{overhead_gen / w2['gen']:.1%} of a 2-worker generation here. On {cores} cores "
              "the two workers share the same cores the single process uses, so the gain "
              "comes only from running two candidates' forward passes side by side (better use "
              "of the cores than one process's intra-op threads), not from more hardware; "
              "with one worker per GPU or per machine the throughput adds up.", ""]
    out = Path(args.out)
    write_section(out, KEY, "\n".join(lines))
    print(f"wrote the {KEY} section of {out}", flush=True)
    return out


if __name__ == "__main__":
    main()
