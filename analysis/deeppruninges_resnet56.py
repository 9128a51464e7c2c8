"""The DeepPruningES ResNet-56 / CIFAR-10 study at a chosen budget: knee, heavy and light.

Runs ``moprune search problems/resnet56_cifar10.py --algorithm deeppruninges`` (published
weights, the CIFAR-10 JPEG copy, residual-stage encoding), exports the three returned models
with ``moprune export --elites`` (optionally retrained with the published final recipe), and
writes a report (markdown): the command, the budget, the machine, the three models against the
baseline and the published anchors at similar FLOPs reductions, the front plot and the elites
per generation. The search is resumable: rerun with the same options (it adds ``--resume``).

CPU, reduced (no partial retraining; about 10 minutes on 2 cores)::

    .venv/bin/python analysis/deeppruninges_resnet56.py --pop-size 12 --generations 6 \
        --partial-epochs 0 --eval-images 256 --test-images 2000 --out runs/es_r56_cpu \
        --report docs/deeppruninges-resnet56-cpu.md

GPU, with partial retraining (3 epochs on 5,000 training images per candidate) and 20 epochs of
final retraining; chunks of at most 10 minutes (repeat the same command until it reports
'finished')::

    timeout 570 .venv/bin/python analysis/deeppruninges_resnet56.py --device cuda \
        --pop-size 30 --generations 11 --partial-epochs 3 --train-images 5000 \
        --eval-images 2000 --final-epochs 20 --out runs/es_r56_gpu \
        --report docs/deeppruninges-resnet56-gpu.md

Published budget: population 30, 11 generations, 3 epochs of partial retraining on the whole
training part (80 %), 200 epochs of final retraining. The JPEG copy and shorter budgets make
absolute accuracies lower; compare changes against the starting network at the same MACs
reduction.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import shutil
import sys
from pathlib import Path

import torch
from benchmark_evaluator import ensure_weights, git_commit, machine_info, prepare_data
from study import ROLES, search_export_report

from moprune.fronts import format_table
from moprune.runs.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
# ResNet-56 / CIFAR-10 anchors (project METHODS.md): (method, accuracy change, FLOPs removed %)
ANCHORS = (("CCEP", 0.24, 63.4), ("DepGraph", 0.11, 61.1), ("C-SGD", 0.05, 60.8),
           ("GReg-2", 0.00, 60.8), ("DepGraph", 0.24, 53.1), ("ResRep", 0.00, 52.9),
           ("HRank", -0.09, 50.0), ("HRank (aggressive)", -2.54, 74.1))


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=None,
                   help="CIFAR-10 ImageFolder root (default: the shared zips, unzipped once)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--pop-size", type=int, default=12)
    p.add_argument("--generations", type=int, default=6)
    p.add_argument("--partial-epochs", type=int, default=0)
    p.add_argument("--mutation-rate", type=float, default=0.2)
    p.add_argument("--train-images", type=int, default=None,
                   help="training images of the partial and final retraining (default: all)")
    p.add_argument("--eval-images", type=int, default=256)
    p.add_argument("--test-images", type=int, default=None)
    p.add_argument("--final-epochs", type=int, default=0,
                   help="final retraining of the three models (published: 200)")
    p.add_argument("--knee-weights", default=None, help="e.g. 2,1 (default: equal)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/es_r56"))
    p.add_argument("--report", type=Path, default=Path("docs/deeppruninges-resnet56.md"))
    return p.parse_args(argv)


def search_argv(args: argparse.Namespace, root: Path) -> list[str]:
    argv = ["search", str(REPO / "problems" / "resnet56_cifar10.py"), "--data-root", str(root),
            "--algorithm", "deeppruninges", "--pop-size", str(args.pop_size), "--generations",
            str(args.generations), "--partial-epochs", str(args.partial_epochs),
            "--mutation-rate", str(args.mutation_rate),
            "--eval-images", str(args.eval_images), "--device", args.device, "--seed",
            str(args.seed), "--out", str(args.out)]
    if args.train_images:
        argv += ["--train-images", str(args.train_images)]
    if args.test_images:
        argv += ["--test-images", str(args.test_images)]
    if args.knee_weights:
        argv += ["--knee-weights", args.knee_weights]
    if (args.out / "config.json").exists():
        argv.append("--resume")
    return argv


def export_argv(args: argparse.Namespace) -> list[str]:
    return ["export", str(args.out), "--elites", "--out", str(args.out / "elites"),
            "--finetune-epochs", str(args.final_epochs), "--recipe", "deeppruninges",
            "--device", args.device]


def report(args: argparse.Namespace, run: RunDir, summary: dict, seconds: float) -> str:
    base = run.baseline()
    ident = run.config()["identity"]
    base_test = base["test_accuracy"]
    rows = [{"model": "baseline", "macs_red": 0.0, "params_red": 0.0,
             "val": base["val_accuracy"], "test": base_test, "final": None, "delta": 0.0}]
    for role in ROLES:
        rec, met = summary["models"][role]["record"], summary["models"][role]["metrics"]
        rows.append({"model": role, "id": rec["id"], "macs_red": 1 - rec["macs_ratio"],
                     "params_red": 1 - rec["params_ratio"], "val": rec["val_accuracy"],
                     "test": rec["test_accuracy"],
                     "final": met["test_accuracy"] if args.final_epochs else None,
                     "delta": 100 * (met["test_accuracy"] - base_test)})
    table = format_table(rows, (
        ("model", "model", ""), ("id", "id", "d"), ("macs_red", "MACs (FLOPs) red.", ".2%"),
        ("params_red", "params red.", ".2%"), ("val", "hold-out (search)", ".2%"),
        ("test", "test (search)", ".2%"), ("final", "test after final retraining", ".2%"),
        ("delta", "test change (points)", "+.2f")), markdown=True)
    anchors = format_table([{"m": m, "d": d, "f": f / 100} for m, d, f in ANCHORS], (
        ("m", "published method", ""), ("d", "accuracy change (points)", "+.2f"),
        ("f", "FLOPs removed", ".1%")), markdown=True)
    img = args.report.parent / "img"
    img.mkdir(parents=True, exist_ok=True)
    stem = args.report.stem
    shutil.copyfile(args.out / "elites" / "elites.png", img / f"{stem}_models.png")
    shutil.copyfile(args.out / "plots" / "elites.png", img / f"{stem}_generations.png")
    info = machine_info(torch.device(args.device))
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])
    search = " ".join(shlex.quote(a) for a in search_argv(args, Path("DATA"))
                      if a != "--resume")
    partial = ident.get("partial")
    n_cand = len(run.candidates())
    text = "\n".join([
        "# DeepPruningES on ResNet-56 / CIFAR-10 (reduced budget)",
        "",
        f"Generated by `analysis/deeppruninges_resnet56.py` on "
        f"{dt.datetime.now():%Y-%m-%d %H:%M}; finished; this invocation ran {seconds:.0f} s.",
        "",
        f"- Command: `{command}`",
        f"- Search command it ran: `moprune {search}` (DATA: the unzipped JPEG copy), then "
        f"`moprune {' '.join(export_argv(args))}`",
        f"- Git commit: {git_commit()}",
        f"- Machine: {info['cpu']}; {info['cores']}; device {info['device']}"
        f"{'; ' + info['gpu'] if 'gpu' in info else ''}; torch {torch.__version__}",
        f"- Budget: population {ident['pop_size']}, {ident['generations']} generations "
        f"(generation 0 unpruned), {n_cand} distinct candidates; encoding: "
        f"{len(base['groups'])} groups ({sum(g['residual'] for g in base['groups'])} residual "
        f"stages); scored on {ident['eval_images']} hold-out training images "
        + (f"after {partial['epochs']} epoch(s) of partial retraining (lr {partial['lr']}) on "
           f"{ident.get('train_images') or 'all'} training images" if partial else
           "without partial retraining")
        + f"; final retraining: {args.final_epochs} epoch(s) (SGD lr 1e-4, Nesterov); test: "
        f"{base.get('test_images', 'all')} images.",
        "- Published (DeepPruningES, Information Sciences 2021): population 30, 11 generations, "
        "3 epochs of partial retraining, 200 epochs of final retraining; three models.",
        "",
        table,
        "",
        "Selection uses hold-out accuracy only; test accuracy is reported. `test change` is the "
        "exported model's test accuracy against the starting network's.",
        "",
        f"![the three models against the front](img/{stem}_models.png)",
        "",
        f"![the elites per generation](img/{stem}_generations.png)",
        "",
        "Published anchors for ResNet-56 / CIFAR-10 (after full retraining; not comparable "
        "with a reduced budget):",
        "",
        anchors,
        "",
    ])
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    ensure_weights()
    root = prepare_data(args.data_root)
    return search_export_report(
        args.out, args.final_epochs, search_argv(args, root), export_argv(args),
        lambda summary, seconds: report(args, RunDir(args.out), summary, seconds))


if __name__ == "__main__":
    raise SystemExit(main())
