"""Transfer study: a pruning function evolved on small tasks, used on ResNet-56 / CIFAR-10.

1. ``moprune evolve`` searches a function on the proxy tasks (default: the embedded digits
   CNN and ResNet-20 on the CIFAR-10 JPEG copy, both with their trained weights), resumable.
2. The evolved function, the published one (``gp_published``), L1 and FPGM (and the SNR
   seed) each rank the channels of ResNet-56's 27 internal groups (published weights); every
   group drops the same fraction of its channels, so every criterion has exactly the same
   MACs at a ratio. The pruned networks are measured on test images before and after a short
   fine-tuning (same seeded recipe and data for all).

Run from the repository root (CPU defaults, about 20 min)::

    .venv/bin/python analysis/gp_transfer_resnet56.py --out runs/gp_transfer \\
        --report docs/gp-transfer-resnet56-cpu.md

GPU (more search, a longer fine-tuning)::

    .venv/bin/python analysis/gp_transfer_resnet56.py --device cuda --pop-size 30 \\
        --generations 12 --train-images 20000 --finetune-epochs 5 --test-images 10000 \\
        --out runs/gp_transfer_gpu --report docs/gp-transfer-resnet56-gpu.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from benchmark_evaluator import SHARED, git_commit, machine_info, prepare_data
from common import seed_hub_cache

from moprune.cli.main import main as moprune
from moprune.core.cost import CostModel
from moprune.core.encoding import RatioEncoding
from moprune.core.plan import PruningPlan
from moprune.core.space import PruningSpace
from moprune.core.surgery import prune_model
from moprune.criteria import CRITERIA, ScoreContext, rank_channels
from moprune.criteria.gp.function import load_function
from moprune.evaluation.evaluator import Evaluator
from moprune.fronts import format_table
from moprune.methods.gp_evolve.evolve import BEST, GENERATIONS
from moprune.runs.rundir import RunDir
from moprune.tasks.task import DataRequest, TaskOptions, load_problem_file
from moprune.training.finetune import FinetuneConfig, evaluate_accuracy, finetune
from moprune.zoo.cifar_resnet import PUBLISHED_WEIGHTS

REPO = Path(__file__).resolve().parents[1]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pop-size", type=int, default=16)
    p.add_argument("--generations", type=int, default=6)
    p.add_argument("--proxy-ratio", default="0.4", help="per-layer ratio(s) of the fitness")
    p.add_argument("--proxy-eval-images", type=int, default=500)
    p.add_argument("--ratios", default="0.3,0.5", help="per-layer ratios on ResNet-56")
    p.add_argument("--train-images", type=int, default=5000)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--criteria", default="l1,fpgm,snr,gp_published")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--report", type=Path, default=None)
    return p.parse_args(argv)


def evolve(args: argparse.Namespace, root: Path) -> Path:
    run = args.out / "evolve"
    done = len(RunDir(run).read_jsonl(GENERATIONS)) if (run / GENERATIONS).exists() else 0
    if done >= args.generations and (run / BEST).is_file():
        print(f"evolution in {run} is finished; reusing it", flush=True)
        return run / BEST
    command = ["evolve", "digits", str(REPO / "problems" / "resnet20_cifar10.py"),
               "--data-root", str(root), "--out", str(run), "--device", args.device,
               "--seed", str(args.seed), "--pop-size", str(args.pop_size),
               "--generations", str(args.generations), "--ratios", args.proxy_ratio,
               "--eval-images", str(args.proxy_eval_images), "--quiet"]
    if (run / "config.json").exists():
        command.append("--resume")
    if moprune(command):
        raise SystemExit("the evolution failed")
    return run / BEST


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    seed_hub_cache([SHARED / "weights" / PUBLISHED_WEIGHTS[d] for d in (20, 56)
                    if (SHARED / "weights" / PUBLISHED_WEIGHTS[d]).is_file()])
    root = prepare_data(args.data_root)
    t0 = time.perf_counter()
    best = evolve(args, root)
    evolve_s = time.perf_counter() - t0
    fn = load_function(best)
    criteria = [f"gp:{best.resolve()}", *args.criteria.split(",")]
    labels = {criteria[0]: "evolved (ours)"}

    task = load_problem_file(REPO / "problems" / "resnet56_cifar10.py", TaskOptions())
    data = task.load_data(DataRequest(root=root, seed=args.seed, eval_images=500,
                                      test_images=args.test_images, load_train=True,
                                      train_images=args.train_images))
    model = task.model.to(args.device)
    space = PruningSpace.from_model(model, task.input_shape, task.policy)
    cost = CostModel(space, model)
    ratios = [float(r) for r in args.ratios.split(",")]
    test_eval = Evaluator(model, space, data.test, data.normalization, device=args.device)
    base = float(test_eval.baseline().accuracy[0])
    recipe = FinetuneConfig(epochs=args.finetune_epochs, lr=0.01, batch_size=128)
    rows, macs = [], {}
    for name in criteria:
        crit = CRITERIA.get(name)
        ctx = (ScoreContext.from_split(data.train, data.normalization, args.seed,
                                       n_images=crit.n_images, device=args.device)
               if crit.needs_data else ScoreContext(seed=args.seed))
        s0 = time.perf_counter()
        scores = crit.score(model, space, ctx)
        score_s = time.perf_counter() - s0
        encoding = RatioEncoding(space, rank_channels(space, scores), task.policy.min_channels,
                                 max(ratios))
        masks = encoding.decode_masks(np.array([[r] * space.n_groups for r in ratios]))
        before = test_eval.evaluate_masks(masks).accuracy
        for r, mask, acc in zip(ratios, masks, before, strict=True):
            m = float(cost.cost_of_masks(mask[None]).macs[0] / cost.base.macs[0])
            assert macs.setdefault(r, m) == m, "criteria must have equal MACs at a ratio"
            pruned = prune_model(model, space, PruningPlan.from_mask(space, mask))
            finetune(pruned, data.train, data.normalization, recipe,
                     generator=torch.Generator().manual_seed(args.seed), device=args.device,
                     progress=False)
            after, _ = evaluate_accuracy(pruned, data.test, data.normalization,
                                         device=args.device)
            rows.append({"criterion": labels.get(name, name), "ratio": r, "before": float(acc),
                         "after": float(after), "score_s": score_s})
            print(f"{labels.get(name, name)} at {r:.0%}: {acc:.2%} -> {after:.2%} after "
                  f"{args.finetune_epochs} epoch(s)", flush=True)
    report(args, rows, ratios, macs, base, fn, evolve_s, len(data.train), len(data.test))
    return 0


def report(args, rows, ratios, macs, base, fn, evolve_s, n_train, n_test) -> None:
    table_rows = []
    for name in dict.fromkeys(r["criterion"] for r in rows):
        row = {"criterion": name}
        for r in rows:
            if r["criterion"] == name:
                row[f"b{r['ratio']}"] = r["before"]
                row[f"a{r['ratio']}"] = r["after"]
                row["s"] = r["score_s"]
        table_rows.append(row)
    columns = [("criterion", "criterion", "")]
    for r in ratios:
        columns += [(f"b{r}", f"{r:.0%} removed ({1 - macs[r]:.1%} MACs): pruned", ".2%"),
                    (f"a{r}", f"after {args.finetune_epochs} FT epoch(s)", ".2%")]
    columns += [("s", "scoring s", ".2f")]
    gens = RunDir(args.out / "evolve").read_jsonl(GENERATIONS)
    evo = format_table([{"generation": g["generation"], "best": g["best_fitness"],
                         "median": g["median_fitness"], "valid": g["valid"],
                         "seeds": g["seeds_best"]} for g in gens],
                       [("generation", "generation", "d"), ("best", "best fitness", ".4f"),
                        ("median", "median (valid)", ".4f"), ("valid", "valid", "d"),
                        ("seeds", "best seed", ".4f")], markdown=True)
    info = machine_info(torch.device(args.device))
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])
    accs = ", ".join(f"{k} {v:.2%}" for k, v in fn.info.get("accuracies", {}).items())
    text = "\n".join([
        "# Transfer of an evolved pruning function to ResNet-56 (CIFAR-10 JPEG copy)",
        "",
        f"- Command: `{command}`",
        f"- Git commit: {git_commit()}",
        f"- Machine: {info['cpu']}; {info['cores']}; device {info['device']}; "
        f"torch {torch.__version__}",
        f"- Evolution ({evolve_s / 60:.1f} min; 0 if reused): `moprune evolve digits "
        f"problems/resnet20_cifar10.py --pop-size {args.pop_size} --generations "
        f"{args.generations} --ratios {args.proxy_ratio} --eval-images "
        f"{args.proxy_eval_images}` (published weights of ResNet-20, the digits CNN trained "
        "first); fitness = geometric mean of the two tasks' hold-out accuracies after "
        "pruning every layer at the ratio, no fine-tuning.",
        "",
        evo,
        "",
        f"Evolved function (fitness {fn.info.get('fitness', float('nan')):.4f}: {accs}):",
        "",
        "```",
        f"score(channel) = sum over classes c of mean[ {fn.formula} ]",
        "```",
        "",
        f"- ResNet-56 (published weights; unpruned {base:.2%} on {n_test} test images): each "
        "criterion ranks the channels of the 27 internal groups and every group drops the "
        "same fraction, so all criteria have equal MACs at a ratio. Data criteria score "
        "seeded training images (never test images). Fine-tuning: SGD lr 0.01, cosine, "
        f"batch 128, {args.finetune_epochs} epoch(s) on {n_train} training images, the same "
        "seed for every criterion.",
        "",
        format_table(table_rows, columns, markdown=True),
        "",
    ])
    print(text)
    if args.report:
        args.report.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
