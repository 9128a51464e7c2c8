"""Speed benchmark suite: where the time of a pruning search goes (ResNet-56, CIFAR-10).

Five parts, each timed with warm-up and repeats (``torch.cuda.synchronize`` around every
timed call on CUDA), reported as medians with min - max and the number of samples:

1. candidate evaluations per second: naive copy + surgery + evaluate against the slice and
   gate evaluators (precisions, channels-last, populations, ``torch.compile``), with the
   GPU's physical floor (MACs computed / peak dense throughput);
2. the analytic cost model against thop on physically pruned networks (exactness, speed);
3. real latency of physically pruned against unpruned ResNet-56 at 30 / 50 / 65 % fewer
   MACs (uniform per-group ratios, channels ranked by L1);
4. scaling of the evaluation time with the population size and with the network depth
   (plots in ``<out dir>/img/benchmark-scaling-<device>.{png,svg}``);
5. one fine-tuning epoch with the fast recipe (triangle schedule), and a profile of it.

Run from the repository root::

    .venv/bin/python analysis/benchmark_speed.py --device cuda --shared .shared_copy
    .venv/bin/python analysis/benchmark_speed.py --device cpu --parts 2,3

The report goes into ``--out`` (default ``docs/benchmarks.md``) between the markers
``<!-- benchmark_speed:KEY:begin -->`` and ``<!-- benchmark_speed:KEY:end -->`` (KEY is
``cpu`` or ``cuda``). That device section is rewritten as a whole with the parts of this
run; everything else in the file is kept. ``--quick`` runs every part on tiny settings
(ResNet-20 with random weights, synthetic images) in well under a minute, for the tests.

Weights: the published ResNet-56 (Yerlan Idelbayev's pytorch_resnet_cifar10, BSD-2-Clause),
through ``torch.hub`` with its hash check; the shared copy seeds the hub cache.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import math
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import thop
import torch
from benchmark_evaluator import (
    CACHE_DATA,
    SHARED,
    distinct_population,
    draw_plans,
    git_commit,
    machine_info,
    pkg_version,
    sync,
    timed,
)
from common import seed_hub_cache, unpack_zips
from torch import nn

from moprune.core.cost import CostModel
from moprune.core.encoding import RatioEncoding
from moprune.core.execution import Execution, normalize
from moprune.core.plan import PruningPlan
from moprune.core.space import PruningSpace, SpacePolicy
from moprune.core.surgery import prune_model
from moprune.criteria import CRITERIA, rank_channels
from moprune.data.datasets import IMAGENET_NORMALIZATION_VALUES, Normalization, Split, load_dataset
from moprune.evaluation.evaluator import Evaluator
from moprune.training.finetune import (
    FinetuneConfig,
    evaluate_accuracy,
    fast_recipe,
    finetune,
    norm_tensors,
)
from moprune.zoo.cifar_resnet import PUBLISHED_WEIGHTS, cifar_resnet

PARTS = (1, 2, 3, 4, 5)
PART_TITLES = {
    1: "Part 1: candidate evaluations per second",
    2: "Part 2: cost model against thop",
    3: "Part 3: real latency of pruned networks",
    4: "Part 4: scaling with population size and depth",
    5: "Part 5: one fine-tuning epoch",
}
MARKER = "<!-- benchmark_speed:{key}:{end} -->"
TITLE = "# Benchmarks\n"
TARGET_EVALS_PER_MIN = 2000  # H100 target: ResNet-56 evaluations per minute on 2000 images
TARGET_IMAGES = 2000
TARGET_EPOCH_S = 4.0  # H100 target: seconds per 50,000-image fine-tuning epoch
FULL_EPOCH = 50_000  # CIFAR-10 training images
PLAN_MACS = 0.5  # part 1 plans: 50 % of the MACs
LATENCY_REDUCTIONS = (0.30, 0.50, 0.65)
NAIVE_BATCH = 500
# Peak dense throughput in TFLOPS by GPU name substring (first match wins): bf16/fp16 tensor
# cores, tf32 tensor cores, fp32 without tensor cores. NVIDIA data sheets, dense (no 2:4
# sparsity); a MAC is 2 FLOPs.
GPU_PEAKS: tuple[tuple[str, str, float, float, float], ...] = (
    ("H200", "H200 SXM", 989.4, 494.7, 66.9),
    ("H100 PCIe", "H100 PCIe", 756.0, 378.0, 51.2),
    ("H100 NVL", "H100 NVL", 835.0, 417.5, 60.0),
    ("H100", "H100 SXM / HBM3", 989.4, 494.7, 66.9),
    ("A100", "A100", 312.0, 156.0, 19.5),
    ("L4", "L4", 121.0, 60.0, 30.3),
)
PEAK_SOURCE = ("NVIDIA data sheets, dense tensor-core peaks: H100 SXM / H200 989 TFLOPS "
               "bf16, 495 tf32, 67 fp32 without tensor cores; H100 PCIe 756 / 378 / 51; "
               "H100 NVL 835 / 418 / 60; A100 312 / 156 / 19.5; L4 121 / 60 / 30")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """Every size and count of one run, resolved from the options, device and mode."""

    device: torch.device
    quick: bool
    parts: tuple[int, ...]
    depth: int
    pretrained: bool
    images: int
    scaling_images: int
    train_images: int | None
    populations: tuple[int, ...]
    depths: tuple[int, ...]
    scaling_population: int
    population: int  # part 1's population P
    big_population: int | None  # part 1's extra population on CUDA (256)
    repeats: int
    scaling_repeats: int
    latency_repeats: int
    latency_batches: tuple[int, ...]
    cost_plans: int
    compile: bool
    finetune_batch: int
    profile_steps: int
    pool_plans: int
    seed: int

    @property
    def key(self) -> str:
        return "cuda" if self.device.type == "cuda" else "cpu"


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}"
                                         ) from err
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmark_speed.py", description=__doc__.split("\n\n")[0],
        epilog="The device's section of --out (marked benchmark_speed:cpu or "
               "benchmark_speed:cuda) is rewritten as a whole with the parts of this run: "
               "parts left out of --parts disappear from it. Other sections and any other "
               "text in the file are kept. Run from the repository root.")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--parts", type=int_list, default=PARTS,
                        help="comma-separated parts to run (default 1,2,3,4,5)")
    parser.add_argument("--images", type=int, default=2000,
                        help="hold-out images per candidate in part 1 (default 2000)")
    parser.add_argument("--scaling-images", type=int, default=None,
                        help="images per candidate in part 4 (default: 256 on the CPU, "
                             "--images on CUDA)")
    parser.add_argument("--train-images", type=int, default=None,
                        help="cap of the fine-tuning images in part 5 (default: 5000 on the "
                             "CPU, all 50,000 on CUDA); a capped epoch is also extrapolated")
    parser.add_argument("--populations", type=int_list, default=None,
                        help="part 4 populations (default 8,16,32,64,128,256)")
    parser.add_argument("--depths", type=int_list, default=None,
                        help="part 4 ResNet depths (default 20,32,44,56,110)")
    parser.add_argument("--scaling-population", type=int, default=None,
                        help="part 4 population of the depth sweep (default 32 on CUDA, 8 on "
                             "the CPU)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per row after the warm-up (default 5 on CUDA, 3 on "
                             "the CPU)")
    parser.add_argument("--latency-repeats", type=int, default=None,
                        help="timed forward passes per network and batch in part 3 (default "
                             "20)")
    parser.add_argument("--cost-plans", type=int, default=50, help="plans in part 2")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the torch.compile rows (parts 1 and 5)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/benchmarks.md",
                        help="Markdown file to write the device's section into; plots go to "
                             "img/ beside it")
    parser.add_argument("--shared", default=None,
                        help=f"shared data folder with cifar10-jpeg/{{train,test}}.zip and "
                             f"weights/ (default {SHARED})")
    parser.add_argument("--data-root", default=None,
                        help="an unzipped CIFAR-10 JPEG ImageFolder root (train/, test/); "
                             f"default: the shared zips unzipped once into {CACHE_DATA}")
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings for the tests: ResNet-20 with random weights, 32 "
                             "synthetic images, populations 2,4, depths 20,32, no compile")
    return parser


def resolve_settings(args: argparse.Namespace) -> Settings:
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    parts = tuple(sorted(set(args.parts)))
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise SystemExit(f"--parts: unknown part(s) {bad}; valid: 1,2,3,4,5")
    if args.quick:
        return Settings(
            device=device, quick=True, parts=parts, depth=20, pretrained=False, images=32,
            scaling_images=32, train_images=128, populations=(2, 4), depths=(20, 32),
            scaling_population=2, population=4, big_population=None, repeats=2,
            scaling_repeats=1, latency_repeats=2, latency_batches=(1, 64),
            cost_plans=min(args.cost_plans, 8), compile=False, finetune_batch=64,
            profile_steps=2, pool_plans=4, seed=args.seed)
    repeats = args.repeats or (5 if cuda else 3)
    return Settings(
        device=device, quick=False, parts=parts, depth=56, pretrained=True,
        images=args.images,
        scaling_images=args.scaling_images or (args.images if cuda else 256),
        train_images=args.train_images if args.train_images or cuda else 5000,
        populations=args.populations or (8, 16, 32, 64, 128, 256),
        depths=args.depths or (20, 32, 44, 56, 110),
        scaling_population=args.scaling_population or (32 if cuda else 8),
        population=64 if cuda else 8, big_population=256 if cuda else None,
        repeats=repeats, scaling_repeats=repeats if cuda else 1,
        latency_repeats=args.latency_repeats or 20,
        latency_batches=(256,) if cuda else (1, 64), cost_plans=args.cost_plans,
        compile=not args.no_compile, finetune_batch=1024 if cuda else 256,
        profile_steps=10 if cuda else 3, pool_plans=32, seed=args.seed)


# --------------------------------------------------------------------------- data and model


@dataclass
class Context:
    """The network, its space and the data every part uses."""

    settings: Settings
    model: nn.Module  # on the CPU, eval mode
    space: PruningSpace
    cost: CostModel
    eval_split: Split
    train_split: Split | None
    normalization: Normalization
    model_note: str
    data_note: str
    train_note: str


def seeded_resnet(depth: int, seed: int) -> nn.Module:
    """A randomly initialised CIFAR ResNet, its weights drawn from ``seed`` (global RNG kept)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cifar_resnet(depth).eval()


def synthetic_split(n: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return Split(images, torch.randint(0, 10, (n,), generator=g, dtype=torch.int64))


def cifar_root(shared: Path, data_root: str | None) -> Path:
    """An unzipped CIFAR-10 JPEG root: ``data_root``, or the shared zips unzipped once."""
    if data_root is not None:
        return Path(data_root).expanduser()
    zips = [shared / "cifar10-jpeg" / f"{s}.zip" for s in ("train", "test")]
    print(f"using {zips[0].parent}, unzipped once into {CACHE_DATA}", flush=True)
    return unpack_zips(zips, CACHE_DATA)


def load_context(st: Settings, shared: Path, data_root: str | None) -> Context:
    if st.quick:
        model = seeded_resnet(st.depth, st.seed)
        n_train = st.train_images or 128
        train = synthetic_split(n_train, st.seed + 1) if 5 in st.parts else None
        evals = synthetic_split(st.images, st.seed)
        norm = Normalization(*IMAGENET_NORMALIZATION_VALUES)
        model_note = f"ResNet-{st.depth}, random weights (seed {st.seed}; --quick)"
        data_note = (f"{st.images} synthetic uint8 images (torch.randint, seed {st.seed}; "
                     "--quick)")
        train_note = f"{n_train} synthetic images (--quick)"
    else:
        weights = shared / "weights" / PUBLISHED_WEIGHTS[st.depth]
        if weights.is_file():
            seed_hub_cache([weights])
        model = cifar_resnet(st.depth, pretrained=True)
        root = cifar_root(shared, data_root)
        need_train = 5 in st.parts
        cap = st.train_images
        bundle = load_dataset(
            "imagefolder", root=root, seed=st.seed,
            max_val=None if need_train else max(st.images, st.scaling_images),
            load_train=need_train, max_train=cap, max_test=1,
            num_workers=max(1, min(8, os.cpu_count() or 1)))
        norm = bundle.normalization
        n_eval = max(st.images, st.scaling_images)
        evals = bundle.val.subset(n_eval)
        model_note = (f"ResNet-{st.depth} with the published CIFAR-10 weights (Yerlan "
                      "Idelbayev, pytorch_resnet_cifar10, BSD-2-Clause)")
        data_note = (f"the first {len(evals)} images of the seeded CIFAR-10 JPEG hold-out "
                     f"(`load_dataset(\"imagefolder\", seed={st.seed})`, 20 % of the training "
                     "files)")
        train, train_note = None, ""
        if need_train:
            both = Split(torch.cat([bundle.train.images, bundle.val.images]),
                         torch.cat([bundle.train.labels, bundle.val.labels]))
            train = both.subset(cap)
            train_note = (f"{len(train)} CIFAR-10 JPEG training images ("
                          + ("a seeded random subset of the training part, capped by "
                             "--train-images" if cap is not None and cap <= len(bundle.train)
                             else "the training part plus the hold-out") + ")")
    space = PruningSpace.from_model(model, (3, 32, 32), SpacePolicy())
    return Context(st, model, space, CostModel(space, model), evals, train, norm, model_note,
                   data_note, train_note)


# --------------------------------------------------------------------------- helpers


@dataclass
class PartOut:
    """What a part contributes to the report."""

    lines: list[str] = field(default_factory=list)
    meaning: list[str] = field(default_factory=list)


def med(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: Sequence[float], scale: float = 1.0, fmt: str = ".4g") -> str:
    return f"{min(xs) * scale:{fmt}} - {max(xs) * scale:{fmt}}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]],
             numeric: Sequence[bool] | None = None) -> list[str]:
    align = ["---:" if n else "---" for n in (numeric or [False] * len(header))]
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def say(msg: str) -> None:
    print(msg, flush=True)


def wall(device: torch.device, fn: Callable[..., object], *args: object
         ) -> tuple[float, object]:
    """Wall seconds of ``fn(*args)`` (synchronised on CUDA) and its result."""
    sample, out = timed(device, fn, *args)
    return sample.wall, out


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return None


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def too_big(err: BaseException) -> bool:
    """True for the errors of a batch too large for the GPU (memory, 32-bit indexing)."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    msg = str(err).lower()
    return any(s in msg for s in ("out of memory", "cudnn_status", "32-bit", "int_max",
                                  "canuse32bitindexmath", "cublas_status_alloc"))


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:160]


def peak_of_name(name: str) -> tuple[str, float, float, float] | None:
    """(label, bf16, tf32, fp32 TFLOPS) of the GPU called ``name``, or None if unknown.

    Table entries match as whole words ("L4" is not "L40S"); the first match wins.
    """
    for sub, label, bf16, tf32, fp32 in GPU_PEAKS:
        if re.search(rf"(?<![\w-]){re.escape(sub)}(?![\w])", name, flags=re.IGNORECASE):
            return label, bf16, tf32, fp32
    return None


def gpu_peak(device: torch.device) -> tuple[str, float, float, float] | None:
    """(label, bf16, tf32, fp32 TFLOPS) of this GPU, or None (CPU or unknown GPU)."""
    if device.type != "cuda":
        return None
    return peak_of_name(torch.cuda.get_device_name(device))


def peak_macs_per_s(device: torch.device, precision: str) -> float | None:
    """Peak MACs/s for a row's precision (fp32 convolutions use TF32 when cuDNN allows it)."""
    peak = gpu_peak(device)
    if peak is None:
        return None
    _, bf16, tf32, fp32 = peak
    if precision in ("bf16", "fp16"):
        tflops = bf16
    else:
        tflops = tf32 if torch.backends.cudnn.allow_tf32 else fp32
    return tflops * 1e12 / 2


def uniform_plan(space: PruningSpace, cost: CostModel, encoding: RatioEncoding,
                 reduction: float) -> tuple[PruningPlan, float, float]:
    """The uniform-ratio plan whose MACs reduction is closest to ``reduction``.

    Returns the plan, its ratio and its MACs reduction (bisection on the cost model; the
    reduction grows with the ratio in steps, as channel counts are integers).
    """
    base = float(cost.base.macs[0])

    def red(r: float) -> float:
        plan = encoding.decode(np.full(space.n_groups, r))
        return 1.0 - float(cost.cost([plan]).macs[0]) / base

    lo, hi = 0.0, encoding.max_ratio
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if red(mid) < reduction else (lo, mid)
    r = min((lo, hi), key=lambda v: abs(red(v) - reduction))
    return encoding.decode(np.full(space.n_groups, r)), r, red(r)


def l1_encoding(model: nn.Module, space: PruningSpace) -> RatioEncoding:
    ranking = rank_channels(space, CRITERIA.get("l1").score(model, space))
    return RatioEncoding(space, ranking, space.policy.min_channels, max_ratio=0.95)


# --------------------------------------------------------------------------- part 1


@dataclass(frozen=True)
class Net:
    """A network (on the CPU), its pruning space and cost model."""

    model: nn.Module
    space: PruningSpace
    cost: CostModel


@dataclass
class Row:
    """Timings of one way of evaluating candidates."""

    name: str
    settings: str
    precision: str
    per_call: list[float] = field(default_factory=list)  # wall seconds per timed call
    candidates: int = 1  # per call
    macs: float = 0.0  # MACs computed per candidate (all images)
    note: str = ""
    first_call: float | None = None
    peak: float | None = None
    error: str = ""

    def per_candidate(self) -> list[float]:
        return [t / self.candidates for t in self.per_call]


def time_naive(ctx: Context, model_dev: nn.Module, masks: np.ndarray, row: Row) -> None:
    dev, st = ctx.settings.device, ctx.settings
    split = ctx.eval_split.subset(st.images)
    run = Execution(precision="fp32", channels_last=False)

    def naive(mask: np.ndarray) -> float:
        pruned = prune_model(model_dev, ctx.space, PruningPlan.from_mask(ctx.space, mask))
        return evaluate_accuracy(pruned, split, ctx.normalization, device=dev,
                                 batch_size=NAIVE_BATCH, execution=run)[0]

    for i in range(st.repeats + 1):
        t, _ = wall(dev, naive, masks[i])
        if i:  # call 0 is the warm-up
            row.per_call.append(t)
    row.macs = float(ctx.cost.cost_of_masks(masks[1:st.repeats + 1]).macs.mean()) * len(split)


def time_evaluator(ctx: Context, net: Net, masks: np.ndarray, row: Row, mode: str,
                   execution: Execution, pop: int, split: Split, repeats: int,
                   warm_candidates: int | None = None) -> int:
    """Time ``repeats`` calls of ``evaluate_masks`` on ``pop`` distinct new masks each.

    Gate mode runs the population as one pass (``batch_size = pop x images``); on CUDA a
    population too large for the GPU is halved until it fits (noted in the row). Call 0 is
    the warm-up (for a compiled evaluator: the compiling call, kept as ``first_call``).
    Slice mode uses the evaluator's default batch size. Returns the candidates per pass.
    """
    dev = ctx.settings.device
    n = len(split)
    per = pop
    while True:
        ev = Evaluator(net.model, net.space, split, ctx.normalization, device=dev, mode=mode,
                       batch_size=per * n if mode == "gate" else None, execution=execution)
        warm = masks[:warm_candidates or pop]
        failure = ""
        try:
            t0, _ = wall(dev, ev.evaluate_masks, warm)
        except RuntimeError as err:
            if dev.type != "cuda" or mode != "gate" or per == 1 or not too_big(err):
                raise
            failure = first_line(err)
        if not failure:
            break
        del ev  # outside the except block: the traceback no longer holds the activations
        free_memory(dev)
        per = max(1, per // 2)
        row.note = f"{pop} candidates do not fit one pass ({failure}); {per} per pass"
        say(f"    {row.note}")
    if execution.compile:
        row.first_call = t0
    used = len(warm)
    for _ in range(repeats):
        batch = masks[used:used + pop]
        used += pop
        if len(batch) < pop:
            raise ValueError(f"not enough distinct masks: {len(masks)}")
        t, _ = wall(dev, ev.evaluate_masks, batch)
        row.per_call.append(t)
    if ev.stats.cache_hits:
        raise RuntimeError(f"{row.name}: {ev.stats.cache_hits} cache hits; the masks repeat")
    row.candidates = pop
    if mode == "gate":
        row.macs = float(net.cost.base.macs[0]) * n
        if per < pop:
            row.settings += f", {per} candidates per pass"
    else:
        row.macs = float(net.cost.cost_of_masks(masks[len(warm):used]).macs.mean()) * n
    return per


def part1(ctx: Context) -> PartOut:
    st, dev = ctx.settings, ctx.settings.device
    split = ctx.eval_split.subset(st.images)
    n = len(split)
    cuda = dev.type == "cuda"
    pops = [st.population] + ([st.big_population] if st.big_population else [])
    most = max(pops) * (st.repeats + 1)
    pool, _, _ = draw_plans(ctx.space, ctx.cost, st.pool_plans, seed=st.seed + 11,
                            target=PLAN_MACS)
    masks = distinct_population(ctx.space, pool, most, np.random.default_rng(st.seed + 12))
    ratios = ctx.cost.cost_of_masks(masks).macs / float(ctx.cost.base.macs[0])
    auto = Execution().resolve(dev)
    auto_desc = f"{auto.precision}, channels-last" if auto.channels_last else auto.precision
    p = st.population
    rows: list[tuple[Row, Callable[[Row], None]]] = []
    model_dev = copy.deepcopy(ctx.model).to(dev).eval()
    net = Net(ctx.model, ctx.space, ctx.cost)

    def ev_job(mode: str, execution: Execution, pop: int) -> Callable[[Row], None]:
        def job(row: Row) -> None:
            time_evaluator(ctx, net, masks, row, mode, execution, pop, split, st.repeats)
        return job

    rows.append((Row("naive", f"copy.deepcopy + prune_model (Torch-Pruning) + fp32 evaluate, "
                              f"batch {NAIVE_BATCH}", "fp32"),
                 lambda row: time_naive(ctx, model_dev, masks, row)))
    for label, ex in (("slice fp32", Execution("fp32", channels_last=False)),
                      ("slice fp32 channels-last", Execution("fp32", channels_last=True)),
                      ("slice bf16 channels-last", Execution("bf16", channels_last=True))):
        rows.append((Row(label, 'mode="slice", one candidate at a time, default batch',
                         ex.precision),
                     ev_job("slice", ex, 1)))
    rows.append((Row("gate, population 1", f'mode="gate", Execution() = {auto_desc}',
                     auto.precision), ev_job("gate", Execution(), 1)))
    for pop in pops:
        rows.append((Row(f"gate, population {pop}", f'mode="gate", Execution() = {auto_desc},'
                                                    f" batch {pop} x {n} images",
                         auto.precision), ev_job("gate", Execution(), pop)))
    if cuda:
        rows.append((Row(f"gate fp32, population {p}", 'mode="gate", precision="fp32", '
                                                       "channels-last", "fp32"),
                     ev_job("gate", Execution(precision="fp32"), p)))
    if st.compile:
        rows.append((Row(f"gate compiled, population {p}",
                         f'mode="gate", Execution(compile=True) = {auto_desc}, compiled',
                         auto.precision), ev_job("gate", Execution(compile=True), p)))

    done: list[Row] = []
    for row, job in rows:
        say(f"[part 1] {row.name}")
        reset_peak(dev)
        try:
            job(row)
        except Exception as err:  # a failing row is reported, the others still run
            traceback.print_exc()
            row.error = first_line(err)
        row.peak = peak_gib(dev)
        free_memory(dev)
        done.append(row)

    naive = next(r for r in done if r.name == "naive")
    naive_s = med(naive.per_candidate()) if naive.per_call else float("nan")
    header = ["row", "settings", "s / candidate, median (min - max)", "calls x candidates",
              "candidates / s", "candidates / min", "speed-up vs naive",
              "GMACs computed / candidate", "GPU floor s / candidate", "measured / floor"]
    numeric = [False, False] + [True] * 8
    if cuda:
        header.append("peak GPU memory (GiB)")
        numeric.append(True)
    table = []
    for r in done:
        if r.error:
            table.append([r.name, r.settings, f"failed: {r.error}"] + ["-"] * (len(header) - 3))
            continue
        pc = r.per_candidate()
        s = med(pc)
        rate = peak_macs_per_s(dev, r.precision)
        floor = r.macs / rate if rate else None
        cells = [r.name + (f" ({r.note})" if r.note else ""), r.settings,
                 f"{s:.4g} ({spread(pc)})", f"{len(r.per_call)} x {r.candidates}",
                 f"{1 / s:.3g}", f"{60 / s:.4g}", f"{naive_s / s:.2f}x",
                 f"{r.macs / 1e9:.4g}",
                 "n/a (GPU only)" if not cuda else (f"{floor:.3g}" if floor else "unknown GPU"),
                 "n/a (GPU only)" if not cuda else (f"{s / floor:.1f}x" if floor else "-")]
        if cuda:
            cells.append(f"{r.peak:.2f}" if r.peak is not None else "-")
        table.append(cells)
    out = PartOut()
    out.lines += [
        f"Images per candidate: {n}. Plans: {len(masks)} distinct random keep-masks "
        f"(`draw_plans` at {PLAN_MACS:.0%} of the MACs, then one bit flipped per mask to make "
        f"them distinct), MACs ratios {ratios.min():.3f} - {ratios.max():.3f}. Every row gets "
        "its own evaluator and new masks in every call (no cache hits); call 0 is an untimed "
        f"warm-up, then {st.repeats} timed calls"
        + (" with `torch.cuda.synchronize()` before and after each." if cuda else ".")
        + " Gate rows with a population run it as one batch; their seconds per candidate are "
          "the call time divided by the population.", "",
        *md_table(header, table, numeric), ""]
    compiled = [r for r in done if r.first_call is not None and not r.error]
    if not st.compile:
        out.lines.append("- The `torch.compile` row was skipped ("
                         + ("--quick" if st.quick else "--no-compile") + ").")
    for r in compiled:
        steady = med(r.per_call)
        out.lines.append(f"- {r.name}: the first call (compilation included) took "
                         f"{r.first_call:.1f} s for {r.candidates} candidates; steady calls "
                         f"{steady:.3g} s.")
    if cuda:
        peak = gpu_peak(dev)
        out.lines.append(
            "- GPU floor: the MACs the row computes per candidate (gate: the full network's "
            "MACs x images, as gated channels are still computed; naive and slice: the pruned "
            "plan's MACs x images, from `CostModel`) divided by the peak dense throughput "
            "(MACs/s = FLOPS / 2) of "
            + (f"the {peak[0]}: {peak[1]:g} TFLOPS bf16/fp16, {peak[2]:g} TFLOPS tf32, "
               f"{peak[3]:g} TFLOPS fp32. fp32 rows use the "
               + ("tf32 peak, as `torch.backends.cudnn.allow_tf32` is True (PyTorch's default: "
                  "fp32 convolutions run on TF32 tensor cores)"
                  if torch.backends.cudnn.allow_tf32 else "fp32 peak (cuDNN TF32 is off)")
               if peak else "this GPU: unknown (no entry in the table)")
            + f". Source: {PEAK_SOURCE}.")
    out.lines.append("")

    ok = [r for r in done if not r.error and r.per_call]
    if not ok:
        return out
    best = min(ok, key=lambda r: med(r.per_candidate()))
    best_s = med(best.per_candidate())
    per_min = 60 / best_s
    per_min_2000 = per_min * n / TARGET_IMAGES
    name = torch.cuda.get_device_name(dev) if cuda else "the CPU"
    meets = per_min_2000 >= TARGET_EVALS_PER_MIN
    target = (f"The H100 target is >= {TARGET_EVALS_PER_MIN:,} ResNet-56 evaluations per "
              f"minute on {TARGET_IMAGES:,} images; ")
    if cuda and "H100" in name:
        target += f"the best row {'meets' if meets else 'misses'} it on this {name}"
    else:
        target += (f"this run is on {name}, not an H100, so it cannot settle it (the best row "
                   f"would {'meet' if meets else 'miss'} it here)")
    if n != TARGET_IMAGES:
        target += (f"; scaled linearly from {n} to {TARGET_IMAGES:,} images the best row "
                   f"reaches {per_min_2000:,.0f} evaluations per minute")
    out.meaning.append(
        f"Part 1: the fastest row is *{best.name}* at {best_s:.3g} s per candidate, "
        f"{per_min:,.0f} candidates per minute, {naive_s / best_s:.2f}x the naive "
        f"copy-surgery-evaluate path ({naive_s:.3g} s). {target}.")
    rowd = {r.name: med(r.per_candidate()) for r in ok}
    extra = []
    if "gate, population 1" in rowd and f"gate, population {p}" in rowd:
        g1, gp = rowd["gate, population 1"], rowd[f"gate, population {p}"]
        extra.append(f"batching {p} candidates into one gate pass changes the time per "
                     f"candidate by {g1 / gp:.2f}x ({g1:.3g} -> {gp:.3g} s)")
    if "slice fp32" in rowd and "slice fp32 channels-last" in rowd:
        extra.append(f"channels-last makes the slice evaluator {rowd['slice fp32'] / rowd['slice fp32 channels-last']:.2f}x "  # noqa: E501
                     "as fast")
    if "slice fp32 channels-last" in rowd and "slice bf16 channels-last" in rowd:
        extra.append(f"bf16 autocast another {rowd['slice fp32 channels-last'] / rowd['slice bf16 channels-last']:.2f}x")  # noqa: E501
    if "slice fp32 channels-last" in rowd and "gate, population 1" in rowd and not cuda:
        extra.append("on the CPU the gate evaluator computes every gated channel, so at "
                     f"population 1 it costs {rowd['gate, population 1'] / rowd['slice fp32 channels-last']:.2f}x "  # noqa: E501
                     "the slice evaluator at the same precision")
    if cuda and f"gate fp32, population {p}" in rowd and f"gate, population {p}" in rowd:
        extra.append(f"bf16 autocast makes the gate pass {rowd[f'gate fp32, population {p}'] / rowd[f'gate, population {p}']:.2f}x "  # noqa: E501
                     "as fast as fp32")
    for r in compiled:
        eager = rowd.get(f"gate, population {r.candidates}")
        steady = med(r.per_candidate())
        if eager:
            gain = eager - steady
            cost = r.first_call - med(r.per_call)
            be = (f"; it pays for its compilation after about {math.ceil(cost / gain):,} "
                  "candidates" if gain > 0 else "; it is not faster than eager here")
            extra.append(f"compilation makes the population pass {eager / steady:.2f}x as fast "
                         f"(first call {r.first_call:.1f} s){be}")
    if cuda:
        floors = [(r, med(r.per_candidate()) / (r.macs / peak_macs_per_s(dev, r.precision)))
                  for r in ok if peak_macs_per_s(dev, r.precision)]
        if floors:
            fb = min(floors, key=lambda x: x[1])
            extra.append(f"the closest row to the GPU's physical floor is *{fb[0].name}*, "
                         f"{fb[1]:.1f}x the time the MACs it computes would take at peak "
                         "throughput (the rest is what memory traffic, kernel launches and the "
                         "thin 16-64-channel layers cost beyond the arithmetic)")
    if extra:
        out.meaning.append("Also: " + "; ".join(extra) + ".")
    return out


# --------------------------------------------------------------------------- part 2


def thop_count(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """thop's (MACs, params) of ``model`` on the input ``x`` (raw floats)."""
    macs, params = thop.profile(model, (x,), verbose=False)
    return float(macs), float(params)


def part2(ctx: Context) -> PartOut:
    st = ctx.settings
    cpu = torch.device("cpu")
    space, cost, model = ctx.space, ctx.cost, ctx.model
    targets = np.linspace(0.3, 0.9, st.cost_plans)
    masks = np.stack([draw_plans(space, cost, 1, seed=st.seed + 100 + i, target=float(t))[0][0]
                      for i, t in enumerate(targets)])
    say(f"[part 2] {len(masks)} plans: cost model vs thop")
    base = float(cost.base.macs[0])
    # cost model, vectorised and one plan per call
    cost.cost_of_masks(masks)  # warm-up
    vec = [wall(cpu, cost.cost_of_masks, masks)[0] / len(masks) for _ in range(20)]
    one = [wall(cpu, cost.cost_of_masks, m[None])[0] for m in masks]
    predicted = cost.cost_of_masks(masks)
    x = torch.zeros((1, *space.input_shape))
    surgery, tracer, d_macs, d_params, equal, non_integral = [], [], [], [], 0, 0
    for i, m in enumerate(masks):
        t_s, pruned = wall(cpu, prune_model, model, space, PruningPlan.from_mask(space, m))
        t_t, (macs, params) = wall(cpu, thop_count, pruned, x)
        surgery.append(t_s)
        tracer.append(t_t)
        non_integral += int(macs != round(macs)) + int(params != round(params))
        dm = abs(int(round(macs)) - int(predicted.macs[i]))
        dp = abs(int(round(params)) - int(predicted.params[i]))
        d_macs.append(dm)
        d_params.append(dp)
        equal += int(dm == 0 and dp == 0)
    ratios = predicted.macs / base
    v = med(vec)
    out = PartOut()
    out.lines += md_table(["quantity", "value"], [
        ["plans", f"{len(masks)} (`draw_plans` targets {targets[0]:.2f} - {targets[-1]:.2f} "
                  "of the MACs)"],
        ["MACs ratios of the plans", f"{ratios.min():.3f} - {ratios.max():.3f}"],
        ["max abs difference, MACs (CostModel - thop)", f"{max(d_macs)}"],
        ["max abs difference, params", f"{max(d_params)}"],
        ["plans with MACs and params exactly equal", f"{equal} of {len(masks)}"],
        ["thop counts that were not whole numbers", f"{non_integral}"],
    ], [False, True]) + [""]
    rows = [
        ("CostModel.cost_of_masks, all plans in one call", vec),
        ("CostModel.cost_of_masks, one plan per call", one),
        ("thop.profile of the physically pruned network", tracer),
        ("prune_model surgery (needed before thop)", surgery),
        ("surgery + thop", [a + b for a, b in zip(surgery, tracer)]),
    ]
    out.lines += md_table(
        ["method", "s / plan, median (min - max)", "n", "plans / s", "time vs vectorised"],
        [[name, f"{med(xs):.3g} ({spread(xs, fmt='.3g')})", str(len(xs)), f"{1 / med(xs):,.0f}",
          f"{med(xs) / v:,.0f}x"] for name, xs in rows],
        [False, True, True, True, True]) + [
        "", "thop traces the pruned network on one 1 x 3 x 32 x 32 input on the CPU; the "
        "vectorised timing is one call over all plans, divided by the plan count (median of "
        "20 calls).", ""]
    tt = med([a + b for a, b in zip(surgery, tracer)])
    out.meaning.append(
        f"Part 2: the cost model {'agrees exactly with' if equal == len(masks) else 'DIFFERS from'}"
        f" thop on {equal} of {len(masks)} plans (largest MACs difference {max(d_macs)}, params "
        f"{max(d_params)}), at {1 / v:,.0f} plans/s vectorised against {1 / tt:,.1f} plans/s "
        f"for surgery + thop, {tt / v:,.0f}x faster; one plan per call it is still "
        f"{tt / med(one):,.0f}x faster.")
    return out


# --------------------------------------------------------------------------- part 3


def part3(ctx: Context) -> PartOut:
    st, dev = ctx.settings, ctx.settings.device
    run = Execution().resolve(dev)
    enc = l1_encoding(ctx.model, ctx.space)
    base = float(ctx.cost.base.macs[0])
    model_dev = copy.deepcopy(ctx.model).to(dev).eval()
    nets: list[tuple[str, float, float, float, nn.Module]] = [
        ("unpruned", 0.0, 0.0, base, run.prepare(copy.deepcopy(model_dev)).eval())]
    for target in LATENCY_REDUCTIONS:
        plan, r, red = uniform_plan(ctx.space, ctx.cost, enc, target)
        macs = float(ctx.cost.cost([plan]).macs[0])
        pruned = run.prepare(prune_model(model_dev, ctx.space, plan)).eval()
        nets.append((f"pruned, target -{target:.0%} MACs", r, red, macs, pruned))
    mean, std = norm_tensors(ctx.normalization, 3, dev)
    imgs = ctx.eval_split.images
    times: dict[tuple[int, int], list[float]] = {}
    for b in st.latency_batches:
        reps = math.ceil(b / len(imgs))
        xb = imgs.repeat(reps, 1, 1, 1)[:b].to(dev)
        x = normalize(xb, mean, std, run.memory_format)

        @torch.inference_mode()
        def forward(net: nn.Module, x: torch.Tensor = x) -> torch.Tensor:
            with run.autocast(dev):
                return net(x)

        say(f"[part 3] batch {b}: {len(nets)} networks x {st.latency_repeats} passes")
        for _, _, _, _, net in nets:
            for _ in range(3):
                forward(net)
        for _ in range(st.latency_repeats):  # interleaved: drifts hit every network alike
            for k, (_, _, _, _, net) in enumerate(nets):
                times.setdefault((b, k), []).append(wall(dev, forward, net)[0])
    rows = []
    eff: dict[tuple[int, int], tuple[float, float]] = {}
    for b in st.latency_batches:
        t_full = med(times[(b, 0)])
        for k, (name, r, red, macs, _) in enumerate(nets):
            ts = times[(b, k)]
            t = med(ts)
            meas, ideal = t_full / t, base / macs
            eff[(b, k)] = (meas, ideal)
            rows.append([str(b), name, "-" if k == 0 else f"{r:.3f}", f"{red:.1%}",
                         f"{macs / 1e6:.1f}", f"{t * 1e3:.3g} ({spread(ts, 1e3, '.3g')})",
                         f"{b / t:,.0f}", f"{meas:.2f}x", f"{ideal:.2f}x",
                         f"{meas / ideal:.0%}"])
    out = PartOut()
    out.lines += [
        f"Execution: {run.precision}" + (" autocast" if run.precision != "fp32" else "")
        + (", channels-last" if run.channels_last else "")
        + f" (`Execution()` resolved on {dev.type}, as the evaluator runs), eval mode under "
          f"`torch.inference_mode()`; {st.latency_repeats} timed forward passes per network "
          "and batch after 3 warm-up passes, the networks interleaved. Plans: one pruning "
          "ratio for all groups, bisected on the cost model to the MACs reduction closest to "
          "the target, channels ranked by the `l1` criterion (as `RatioEncoding` decodes "
          "them).", "",
        *md_table(["batch", "network", "uniform ratio", "MACs reduction", "MMACs / image",
                   "ms / batch, median (min - max)", "images / s", "measured speed-up",
                   "MACs speed-up", "efficiency"], rows,
                  [True, False] + [True] * 8), "",
        "Measured speed-up = t(unpruned) / t(pruned); MACs speed-up = MACs(unpruned) / "
        "MACs(pruned); efficiency = their ratio.", ""]
    parts = []
    for b in st.latency_batches:
        k = 1 + LATENCY_REDUCTIONS.index(0.50)
        meas, ideal = eff[(b, k)]
        effs = [eff[(b, j)][0] / eff[(b, j)][1] for j in range(1, len(nets))]
        parts.append(f"at batch {b} the ~50 % plan runs {meas:.2f}x as fast as the unpruned "
                     f"network where its MACs promise {ideal:.2f}x (efficiency {min(effs):.0%}"
                     f" - {max(effs):.0%} over the three plans)")
    out.meaning.append("Part 3: " + "; ".join(parts) + ". An efficiency well below 100 % "
                       "means fixed per-layer costs (kernel launches, memory traffic of thin "
                       "layers) that pruning channels does not remove.")
    return out


# --------------------------------------------------------------------------- part 4


@dataclass
class Point:
    """One point of a scaling curve."""

    label: str
    pop: int
    per_pass: int
    macs: float
    depth: int
    channels: int
    per_call: list[float]
    error: str = ""


def time_point(model: nn.Module, space: PruningSpace, cost: CostModel, ctx: Context,
               split: Split, pop: int, seed: int) -> tuple[list[float], int]:
    """Seconds per generation of ``pop`` new distinct masks; candidates per pass used."""
    st, dev = ctx.settings, ctx.settings.device
    gate = dev.type == "cuda"
    pool, _, _ = draw_plans(space, cost, min(8, st.pool_plans), seed=seed, target=PLAN_MACS)
    warm = pop if gate else min(pop, 2)
    masks = distinct_population(space, pool, warm + pop * st.scaling_repeats,
                                np.random.default_rng(seed + 1))
    row = Row("scaling", "", "")
    per = time_evaluator(ctx, Net(model, space, cost), masks, row, "gate" if gate else "slice",
                         Execution(), pop, split, st.scaling_repeats, warm_candidates=warm)
    return row.per_call, per


def part4(ctx: Context, img_dir: Path) -> PartOut:
    st, dev = ctx.settings, ctx.settings.device
    split = ctx.eval_split.subset(st.scaling_images)
    n = len(split)
    mode = "gate" if dev.type == "cuda" else "slice"
    base = float(ctx.cost.base.macs[0])
    pop_points: list[Point] = []
    for pop in st.populations:
        say(f"[part 4] population {pop} ({mode}, {n} images)")
        pt = Point(str(pop), pop, pop, base, st.depth, ctx.space.n_channels, [])
        try:
            pt.per_call, pt.per_pass = time_point(ctx.model, ctx.space, ctx.cost, ctx, split,
                                                  pop, st.seed + 200 + pop)
        except Exception as err:
            traceback.print_exc()
            pt.error = first_line(err)
        free_memory(dev)
        pop_points.append(pt)
    depth_points: list[Point] = []
    dpop = st.scaling_population
    for depth in st.depths:
        say(f"[part 4] ResNet-{depth}, population {dpop}")
        model = seeded_resnet(depth, st.seed + depth)
        space = PruningSpace.from_model(model, (3, 32, 32), SpacePolicy())
        cost = CostModel(space, model)
        pt = Point(f"ResNet-{depth}", dpop, dpop, float(cost.base.macs[0]), depth,
                   space.n_channels, [])
        try:
            pt.per_call, pt.per_pass = time_point(model, space, cost, ctx, split, dpop,
                                                  st.seed + 300 + depth)
        except Exception as err:
            traceback.print_exc()
            pt.error = first_line(err)
        free_memory(dev)
        depth_points.append(pt)

    out = PartOut()
    try:
        png, svg = plot_scaling(pop_points, depth_points, img_dir, st.key, mode, n)
        plot_line = (f"![evaluation time against population and depth]({png.parent.name}/"
                     f"{png.name}) ([SVG]({svg.parent.name}/{svg.name}))")
    except ImportError as err:  # a bare GPU image may lack matplotlib: keep the tables
        plot_line = f"No plot: `{first_line(err)}`."
    how = (f'`Evaluator(mode="gate")` with `batch_size = population x {n}` (one pass per '
           "population when it fits; the candidates per pass are listed)" if mode == "gate"
           else '`Evaluator(mode="slice")`, one candidate after the other')
    out.lines += [
        f"Images per candidate: {n} ({'--images' if n == st.images else '--scaling-images'}"
        f"). Evaluation: {how}, `Execution()` defaults. Masks: new, distinct random plans "
        f"at ~{PLAN_MACS:.0%} of the MACs for every call; one untimed warm-up call, then "
        f"{st.scaling_repeats} timed call(s) per point. The depth sweep uses randomly "
        "initialised networks (the weights do not change the time).", "",
        plot_line, ""]

    def cells(p: Point) -> list[str]:
        if p.error:
            return [f"failed: {p.error}", "-", "-", "-"]
        s = med(p.per_call)
        return [f"{s:.4g} ({spread(p.per_call)})", f"{s / p.pop:.4g}", f"{p.pop / s:.3g}",
                str(p.per_pass)]

    out.lines += md_table(
        ["population", "s / generation, median (min - max)", "s / candidate", "candidates / s",
         "candidates per pass"],
        [[str(p.pop), *cells(p)] for p in pop_points], [True] * 5) + [""]
    out.lines += md_table(
        ["network", "GMACs / image", "channels in the space", "population",
         "s / generation, median (min - max)", "s / candidate", "candidates / s",
         "candidates per pass"],
        [[p.label, f"{p.macs / 1e9:.3f}", str(p.channels), str(p.pop), *cells(p)]
         for p in depth_points], [False] + [True] * 7) + [""]
    good = [p for p in pop_points if not p.error]
    if len(good) >= 2:
        a, b = good[0], good[-1]
        sa, sb = med(a.per_call) / a.pop, med(b.per_call) / b.pop
        msg = (f"Part 4: from population {a.pop} to {b.pop} the time per candidate goes from "
               f"{sa:.3g} to {sb:.3g} s (the larger population evaluates {sa / sb:.2f}x as "
               "many candidates per second)")
        gd = [p for p in depth_points if not p.error]
        if len(gd) >= 2:
            lo, hi = gd[0], gd[-1]
            per_lo = med(lo.per_call) / lo.pop
            per_hi = med(hi.per_call) / hi.pop
            msg += (f"; from {lo.label} to {hi.label} the MACs grow {hi.macs / lo.macs:.2f}x and "
                    f"the time per candidate {per_hi / per_lo:.2f}x")
        out.meaning.append(msg + ".")
    return out


def plot_scaling(pop_points: list[Point], depth_points: list[Point], img_dir: Path, key: str,
                 mode: str, n: int) -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    pp = [p for p in pop_points if not p.error]
    dp = [p for p in depth_points if not p.error]
    for ax, per_cand in ((axes[0, 0], False), (axes[0, 1], True)):
        if pp:
            xs = [p.pop for p in pp]
            ys = [med(p.per_call) / (p.pop if per_cand else 1) for p in pp]
            lo = [min(p.per_call) / (p.pop if per_cand else 1) for p in pp]
            hi = [max(p.per_call) / (p.pop if per_cand else 1) for p in pp]
            ax.plot(xs, ys, "o-")
            ax.fill_between(xs, lo, hi, alpha=0.25)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
        ax.set_xlabel("population size")
        ax.set_ylabel("seconds per candidate" if per_cand else "seconds per generation")
        ax.grid(True, which="both", alpha=0.3)
    for ax, per_cand in ((axes[1, 0], False), (axes[1, 1], True)):
        if dp:
            xs = [p.macs / 1e6 for p in dp]
            ys = [med(p.per_call) / (p.pop if per_cand else 1) for p in dp]
            ax.plot(xs, ys, "s-")
            for p, x, y in zip(dp, xs, ys):
                ax.annotate(p.label, (x, y), textcoords="offset points", xytext=(4, 4),
                            fontsize=8)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("MMACs per image of the full network")
        ax.set_ylabel("seconds per candidate" if per_cand else "seconds per generation")
        ax.grid(True, alpha=0.3)
    pop_d = depth_points[0].pop if depth_points else 0
    axes[0, 0].set_title("population sweep (s / generation)")
    axes[0, 1].set_title("population sweep (s / candidate)")
    axes[1, 0].set_title(f"depth sweep, population {pop_d}")
    axes[1, 1].set_title(f"depth sweep, population {pop_d} (s / candidate)")
    fig.suptitle(f"Evaluation time, {key}, {mode} mode, {n} images per candidate")
    fig.tight_layout()
    png = img_dir / f"benchmark-scaling-{key}.png"
    svg = img_dir / f"benchmark-scaling-{key}.svg"
    fig.savefig(png, dpi=120)
    fig.savefig(svg)
    plt.close(fig)
    return png, svg


# --------------------------------------------------------------------------- part 5


def recipe(batch: int, epochs: int = 1) -> FinetuneConfig:
    """moprune's fast recipe (``export --recipe fast``) at ``batch``."""
    return fast_recipe(FinetuneConfig(weight_decay=5e-4), epochs, batch_size=batch)


def part5(ctx: Context) -> PartOut:
    st, dev = ctx.settings, ctx.settings.device
    cuda = dev.type == "cuda"
    train = ctx.train_split
    if train is None:
        raise ValueError("part 5 needs the training split (load_context loads it)")
    n = len(train)
    config = recipe(st.finetune_batch)
    timed_config = recipe(st.finetune_batch, epochs=2)  # epoch 1: warm-up; epoch 2: steady
    enc = l1_encoding(ctx.model, ctx.space)
    plan, _, red = uniform_plan(ctx.space, ctx.cost, enc, 0.5)
    pruned = prune_model(ctx.model, ctx.space, plan)
    nets = [(f"pruned (-{red:.0%} MACs)", pruned)]
    if cuda:
        nets.append(("unpruned", ctx.model))
    execs = [("Execution() auto", Execution())]
    if cuda and st.compile:
        execs.append(("Execution(compile=True)", Execution(compile=True)))
    auto = Execution().resolve(dev)
    auto_desc = f"{auto.precision}" + (", channels-last" if auto.channels_last else "")
    rows = []
    results: list[tuple[str, str, float, float]] = []
    for net_name, net in nets:
        for ex_name, ex in execs:
            say(f"[part 5] {net_name}, {ex_name}: 2 epochs of {n} images")
            work = copy.deepcopy(net)
            gen = torch.Generator().manual_seed(st.seed + 500)
            try:
                hist = finetune(work, train, ctx.normalization, timed_config, generator=gen,
                                device=dev, progress=False, execution=ex)
                secs = [float(h["seconds"]) for h in hist.history]
            except Exception as err:
                traceback.print_exc()
                rows.append([net_name, ex_name, "-", "-", f"failed: {first_line(err)}", "-",
                             "-", "-"])
                continue
            for epoch, s in enumerate(secs, 1):
                full = s * FULL_EPOCH / n
                if epoch == 1:
                    label = "first (warm-up" + (", compilation" if ex.compile else "") + ")"
                else:
                    label = "second (steady)"
                target = "-" if epoch == 1 else ("yes" if full <= TARGET_EPOCH_S else "no")
                rows.append([net_name, ex_name, label, str(n), f"{s:.3g}",
                             f"{full:.3g}" + ("" if n == FULL_EPOCH else " (extrapolated)"),
                             f"{n / s:,.0f}", target])
            results.append((net_name, ex_name, secs[0], secs[1]))
            free_memory(dev)
    out = PartOut()
    out.lines += [
        f"Recipe: `fast_recipe` (`export --recipe fast`) at batch {st.finetune_batch}: "
        f"lr {config.lr}, `schedule=\"triangle\"`, warm-up {config.warmup}, label smoothing "
        f"{config.label_smoothing}, Nesterov, weight decay {config.weight_decay}, "
        f"augmentation (crop + flip) on the device; `Execution()` = {auto_desc} on {dev.type}. "
        f"Images: {ctx.train_note}. Each row is one `finetune` call with `epochs=2` (the "
        "work per epoch is that of `epochs=1`; only the learning-rate curve is stretched) on "
        "a fresh copy of the network, and reports the `seconds` of both epochs from its "
        "history: the first pays the warm-up (and compilation), the second is steady"
        + (f"; the 50,000-image times are extrapolated linearly from {n} images"
           if n != FULL_EPOCH else "") + ".", "",
        *md_table(["network", "execution", "epoch", "images", "seconds",
                   "s per 50,000 images", "images / s", f"<= {TARGET_EPOCH_S:g} s (H100 target)"],
                  rows, [False, False, False, True, True, True, True, False]), ""]
    steps = st.profile_steps
    say(f"[part 5] profiling {steps} steps")
    try:
        lines, top_share = profile_training(ctx, pruned, config, train.subset(
            steps * st.finetune_batch))
    except Exception as err:
        traceback.print_exc()
        lines, top_share = [f"Profile failed: `{first_line(err)}`", ""], None
    out.lines += lines
    if results:
        net_name, ex_name, _, steady = min(results, key=lambda r: r[3])
        full = steady * FULL_EPOCH / n
        name = torch.cuda.get_device_name(dev) if cuda else "the CPU"
        verdict = "meets" if full <= TARGET_EPOCH_S else "misses"
        where = (f"it {verdict} the H100 target of <= {TARGET_EPOCH_S:g} s" if "H100" in name
                 else f"the H100 target of <= {TARGET_EPOCH_S:g} s cannot be judged on {name} "
                      f"(it would be {'met' if verdict == 'meets' else 'missed'} here)")
        out.meaning.append(
            f"Part 5: the fastest steady epoch ({net_name}, {ex_name}) takes {steady:.3g} s "
            f"for {n:,} images, {full:.3g} s per 50,000"
            + (" (extrapolated)" if n != FULL_EPOCH else "") + f"; {where}."
            + (f" The three heaviest operators take {top_share:.0%} of the profiled time."
               if top_share is not None else ""))
    return out


def short(text: str, width: int = 70) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def profile_training(ctx: Context, net: nn.Module, config: FinetuneConfig, sub: Split
                     ) -> tuple[list[str], float]:
    """Top-8 operator table of a profiled ``finetune`` call on ``sub``; top-3 share.

    One unprofiled call first (warm-up). On CUDA the operators (CPU-side events) are ranked
    by the device time of the kernels they launch themselves, and the shares are of the
    total kernel time; on the CPU by self CPU time.
    """
    dev = ctx.settings.device
    cuda = dev.type == "cuda"
    work = copy.deepcopy(net)
    gen = torch.Generator().manual_seed(ctx.settings.seed + 501)
    finetune(work, sub, ctx.normalization, config, generator=gen, device=dev, progress=False)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        finetune(work, sub, ctx.normalization, config, generator=gen, device=dev,
                 progress=False)
        sync(dev)
    events = list(prof.key_averages())

    def device_time(e: object) -> float:
        value = getattr(e, "self_device_time_total", None)
        if value is None:
            value = getattr(e, "self_cuda_time_total", 0.0)
        return float(value)

    def is_cpu(e: object) -> bool:
        return str(getattr(e, "device_type", "DeviceType.CPU")).endswith("CPU")

    if cuda:
        ops = [e for e in events if is_cpu(e)]
        total = sum(device_time(e) for e in events if not is_cpu(e))
        total = total or sum(device_time(e) for e in ops)
        timing, clock = device_time, "self CUDA time"
    else:
        ops = events
        total = sum(float(e.self_cpu_time_total) for e in ops)
        timing, clock = (lambda e: float(e.self_cpu_time_total)), "self CPU time"
    total = total or 1.0
    top = sorted(ops, key=timing, reverse=True)[:8]
    lines = [
        f"Profile (`torch.profiler`) of {math.ceil(len(sub) / config.batch_size)} training "
        f"steps of the pruned network ({len(sub)} images, `Execution()` auto, after one "
        f"warm-up call): top 8 operators by {clock}"
        + (" (kernel time of the kernels each operator launches itself; shares of the total "
           "kernel time)" if cuda else "") + ".", "",
        *md_table(["operator", f"{clock} (ms)", "share", "calls"],
                  [[f"`{short(e.key)}`", f"{timing(e) / 1e3:.2f}", f"{timing(e) / total:.1%}",
                    str(e.count)] for e in top], [False, True, True, True]), ""]
    return lines, sum(timing(e) for e in top[:3]) / total


# --------------------------------------------------------------------------- report


def section_marker(key: str, end: bool) -> str:
    return MARKER.format(key=key, end="end" if end else "begin")


def write_section(out: Path, key: str, body: str) -> None:
    """Replace (or append) the ``key`` section of ``out``, keeping the rest; atomic."""
    begin, end = section_marker(key, False), section_marker(key, True)
    block = f"{begin}\n{body.rstrip()}\n{end}\n"
    text = out.read_text() if out.exists() else TITLE
    i = text.find(begin)
    if i >= 0:
        j = text.find(end, i)
        if j < 0:
            raise ValueError(f"{out} has {begin} but no {end}; fix the file by hand")
        j += len(end)
        if text[j:j + 1] == "\n":
            j += 1
        text = text[:i] + block + text[j:]
    else:
        if text.find(end) >= 0:
            raise ValueError(f"{out} has {end} but no {begin}; fix the file by hand")
        text = text.rstrip("\n") + "\n\n" + block
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(handle, "w") as f:
            f.write(text)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def describe_device(st: Settings) -> str:
    info = machine_info(st.device)
    if st.device.type == "cuda":
        text = f"Speed benchmark on {info['gpu']} (CUDA)"
    else:
        text = f"Speed benchmark on the CPU ({info['cpu']}, {torch.get_num_threads()} threads)"
    return text + (" - quick mode, tiny settings: the numbers are not meaningful"
                   if st.quick else "")


def loadavg() -> str:
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> Path:
    """Run the selected parts and write the device's section; returns the report path."""
    args = build_parser().parse_args(argv)
    st = resolve_settings(args)
    if st.device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but CUDA is not available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    command = ".venv/bin/python " + shlex.join(
        sys.argv if argv is None else ["analysis/benchmark_speed.py", *argv])
    began, load0 = time.perf_counter(), loadavg()
    out = Path(args.out)
    shared = Path(args.shared).expanduser() if args.shared else SHARED
    say(f"benchmark_speed: device {st.device}, parts {','.join(map(str, st.parts))}"
        + (" (quick)" if st.quick else ""))
    ctx = load_context(st, shared, args.data_root)
    say(f"model: {ctx.model_note}; space: {ctx.space}")
    bodies: dict[int, PartOut] = {}
    seconds: dict[int, float] = {}
    for part in st.parts:
        t0 = time.perf_counter()
        try:
            if part == 1:
                bodies[part] = part1(ctx)
            elif part == 2:
                bodies[part] = part2(ctx)
            elif part == 3:
                bodies[part] = part3(ctx)
            elif part == 4:
                bodies[part] = part4(ctx, out.parent / "img")
            else:
                bodies[part] = part5(ctx)
        except Exception as err:  # report the failure, keep the other parts
            traceback.print_exc()
            bodies[part] = PartOut([f"**Part failed**: `{first_line(err)}`", ""])
        seconds[part] = time.perf_counter() - t0
        free_memory(st.device)
        say(f"[part {part}] done in {seconds[part]:.1f} s")
    elapsed = time.perf_counter() - began
    body = report(st, ctx, command, bodies, seconds, elapsed, load0)
    write_section(out, st.key, body)
    say(f"wrote the {st.key} section of {out} ({elapsed:.0f} s)")
    return out


def report(st: Settings, ctx: Context, command: str, bodies: dict[int, PartOut],
           seconds: dict[int, float], elapsed: float, load0: str) -> str:
    info = machine_info(st.device)
    versions = ", ".join(f"{name} {pkg_version(pkg)}" for name, pkg in (
        ("torch", "torch"), ("torchvision", "torchvision"), ("pymoo", "pymoo"),
        ("torch_pruning", "torch-pruning"), ("thop", "ultralytics-thop")))
    lines = [
        f"## {describe_device(st)}", "",
        f"Generated by `analysis/benchmark_speed.py` on "
        f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')} in {elapsed:.0f} s ("
        + ", ".join(f"part {p}: {s:.0f} s" for p, s in seconds.items()) + ").", "",
        f"- Command: `{command}`",
        f"- Git commit: {git_commit()}",
        f"- Machine: {info['cpu']}; {info['cores']}; torch threads {info['torch threads']}; "
        f"device {info['device']}" + (f" ({info['gpu']})" if "gpu" in info else "")
        + f"; load average (1 / 5 / 15 min) {load0} at the start, {loadavg()} at the end",
        f"- Versions: Python {platform.python_version()}, {versions}",
        f"- Model: {ctx.model_note}; pruning space `SpacePolicy()` (internal groups): "
        f"{ctx.space.n_groups} groups, {ctx.space.n_channels} channels, "
        f"{float(ctx.cost.base.macs[0]) / 1e6:.1f} MMACs per image unpruned",
        f"- Evaluation images: {ctx.data_note}",
        "- Timings are wall-clock seconds; medians with (min - max) over the repeats.", ""]
    for part in st.parts:
        lines += [f"### {PART_TITLES[part]}", "", *bodies[part].lines]
    meaning = [m for p in st.parts for m in bodies[p].meaning]
    if meaning:
        lines += ["### What the numbers mean", ""]
        for m in meaning:
            lines += [m, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
