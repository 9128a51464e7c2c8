"""The CCEP ResNet-56 / CIFAR-10 study at a chosen budget, reported next to the published result.

Runs ``moprune search problems/resnet56_cifar10.py --algorithm ccep`` (published weights,
the CIFAR-10 JPEG copy) with the given budget, then writes a report (markdown) with the
command, the budget, the machine, accuracy vs MACs per round and the published 63.42 %
fewer FLOPs at +0.24 points, plus a plot. The run is resumable: rerun with ``--resume`` (e.g.
after a time limit) and the report is rewritten from the run directory.

CPU, reduced (about 15 minutes on 2 cores)::

    .venv/bin/python analysis/ccep_resnet56.py --rounds 3 --generations 2 --eval-images 256 \
        --train-images 5000 --finetune-epochs 1 --out runs/ccep_r56_cpu \
        --report docs/ccep-resnet56-cpu.md

GPU (chunks of at most 10 minutes: repeat with --resume until it reports 'finished')::

    timeout 570 .venv/bin/python analysis/ccep_resnet56.py --device cuda --rounds 12 \
        --generations 10 --eval-images 2000 --finetune-epochs 10 --finetune-recipe published \
        --out runs/ccep_r56_gpu --report docs/ccep-resnet56-gpu.md [--resume]

The published numbers come from 20 rounds with 100 fine-tuning epochs each on the original
CIFAR-10; the JPEG copy and the shorter fine-tuning make absolute accuracies lower, so compare
the change in test accuracy against the starting network and the MACs reduction.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
import time
from pathlib import Path

import torch
from benchmark_evaluator import ensure_weights, git_commit, machine_info, prepare_data

from moprune.cli.main import main as moprune
from moprune.fronts import format_table, plot_rounds
from moprune.runs.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = (63.42, 0.24)  # ResNet-56 / CIFAR-10: FLOPs reduction %, accuracy change (points)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=None,
                   help="CIFAR-10 ImageFolder root (default: the shared zips, unzipped once)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--generations", type=int, default=2)
    p.add_argument("--pop-size", type=int, default=5)
    p.add_argument("--eval-images", type=int, default=256)
    p.add_argument("--test-images", type=int, default=None)
    p.add_argument("--train-images", type=int, default=5000)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--finetune-recipe", default="task", choices=("task", "published"))
    p.add_argument("--max-macs-ratio", type=float, default=None,
                   help="stop at this MACs ratio (the published point: 0.3658)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/ccep_r56"))
    p.add_argument("--report", type=Path, default=Path("docs/ccep-resnet56.md"))
    p.add_argument("--resume", action="store_true")
    return p.parse_args(argv)


def search_argv(args: argparse.Namespace, root: Path) -> list[str]:
    argv = ["search", str(REPO / "problems" / "resnet56_cifar10.py"), "--data-root", str(root),
            "--algorithm", "ccep", "--rounds", str(args.rounds), "--generations",
            str(args.generations), "--pop-size", str(args.pop_size), "--eval-images",
            str(args.eval_images), "--finetune-epochs", str(args.finetune_epochs),
            "--finetune-recipe", args.finetune_recipe, "--device", args.device, "--seed",
            str(args.seed), "--out", str(args.out)]
    if args.train_images:
        argv += ["--train-images", str(args.train_images)]
    if args.test_images:
        argv += ["--test-images", str(args.test_images)]
    if args.max_macs_ratio is not None:
        argv += ["--max-macs-ratio", str(args.max_macs_ratio)]
    if args.resume or (args.out / "config.json").exists():
        argv.append("--resume")
    return argv


def report(args: argparse.Namespace, run: RunDir, seconds: float, finished: bool) -> str:
    rounds, base = run.candidates(), run.baseline()
    base_test = rounds[0]["test_accuracy"]
    rows = [{"round": r["round"], "macs_red": 1 - r["macs_ratio"],
             "params_red": 1 - r["params_ratio"], "val": r["val_accuracy"],
             "test": r["test_accuracy"], "delta": 100 * (r["test_accuracy"] - base_test),
             "spliced": r.get("spliced_val_accuracy"), "search_s": r.get("search_seconds"),
             "ft_s": r.get("finetune_seconds")} for r in rounds]
    table = format_table(rows, (
        ("round", "round", "d"), ("macs_red", "MACs (FLOPs) red.", ".2%"),
        ("params_red", "params red.", ".2%"), ("val", "hold-out acc", ".2%"),
        ("test", "test acc", ".2%"), ("delta", "test change (points)", "+.2f"),
        ("spliced", "hold-out right after pruning", ".2%"),
        ("search_s", "coevolution s", ".0f"), ("ft_s", "fine-tune s", ".0f")))
    plot = args.report.parent / "img" / f"{args.report.stem}_rounds"
    plot_rounds(rounds, {**base, "test_accuracy": base_test}, plot, reference=PUBLISHED,
                title="CCEP, ResNet-56 on the CIFAR-10 JPEG copy")
    cfg = run.config()
    ident = cfg["identity"]
    info = machine_info(torch.device(args.device))
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])
    search = " ".join(shlex.quote(a) for a in search_argv(args, Path("DATA")))
    last = rounds[-1]
    text = "\n".join([
        "# CCEP on ResNet-56 / CIFAR-10 (reduced budget)",
        "",
        f"Generated by `analysis/ccep_resnet56.py` on {dt.datetime.now():%Y-%m-%d %H:%M}; "
        f"{'finished' if finished else 'NOT finished (resume it)'}; this invocation ran "
        f"{seconds:.0f} s.",
        "",
        f"- Command: `{command}`",
        f"- Search command it ran: `moprune {search}` (DATA: the unzipped JPEG copy)",
        f"- Git commit: {git_commit()}",
        f"- Machine: {info['cpu']}; {info['cores']}; device {info['device']}"
        f"{'; ' + info['gpu'] if 'gpu' in info else ''}; torch {torch.__version__}",
        f"- Budget: {ident['ccep']['rounds']} rounds; per group {ident['pop_size']} masks, "
        f"{ident['generations']} generations after the initial one; fitness on "
        f"{ident['eval_images']} hold-out training images; fine-tuning "
        f"{ident['ccep']['finetune_epochs']} epoch(s) ({ident['ccep']['recipe']} recipe) on "
        f"{ident.get('train_images') or 'all'} training images; test: "
        f"{base.get('test_images', 'all')} images.",
        "- Published (CCEP, IJCAI 2022): 20 rounds, 10 generations, 100 fine-tuning epochs per "
        f"round: {PUBLISHED[0]:.2f} % fewer FLOPs, {PUBLISHED[1]:+.2f} points of accuracy.",
        "",
        "```",
        table,
        "```",
        "",
        f"Last round: {1 - last['macs_ratio']:.2%} fewer MACs at "
        f"{100 * (last['test_accuracy'] - base_test):+.2f} points of test accuracy "
        f"(published: {PUBLISHED[0]:.2f} % at {PUBLISHED[1]:+.2f}).",
        "",
        f"![accuracy vs MACs reduction per round](img/{plot.name}.png)",
        "",
        "Hold-out accuracy selects (fitness and the fine-tuning epoch); test accuracy is only "
        "reported. The published weights were trained on all 50,000 training images, so the "
        "hold-out split is not unseen by the starting network and its accuracy is optimistic.",
        "",
    ])
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    ensure_weights()
    root = prepare_data(args.data_root)
    start = time.perf_counter()
    status = moprune(search_argv(args, root))
    run = RunDir(args.out)
    finished = status == 0 and (args.out / "front.json").exists()
    if run.exists() and run.candidates():
        print(report(args, run, time.perf_counter() - start, finished))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
