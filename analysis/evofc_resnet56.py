"""The EvoFC ResNet-56 / CIFAR-10 study: random initialisation + weight inheritance.

Runs ``moprune search problems/resnet56_cifar10.py --algorithm evofc`` (per layer a pruning
ratio and one of EvoFC's four mask-gradient criteria; NSGA-II 10/10; one supernet trained by a
single global schedule shared by all candidates, from a random initialisation), exports the
front's heavy, knee and light members with ``moprune export --elites`` (final retraining from
their inherited weights), and writes a report (markdown): commands, budget, machine, the three
models, the supernet, the per-layer criteria and ratios of the knee, and the front plot. The
search is resumable: rerun the same command (it adds ``--resume``).

CPU, reduced (about 15 minutes on 2 cores)::

    .venv/bin/python analysis/evofc_resnet56.py --generations 5 --search-epochs 8 \
        --train-images 5000 --eval-images 500 --test-images 2000 --final-epochs 2 \
        --out runs/evofc_r56_cpu --report docs/evofc-resnet56-cpu.md

GPU (the published search budget of 10 / 10 / 20 with a 30-epoch global schedule on the
whole training part, 30 epochs of final retraining; repeat until it reports 'finished')::

    timeout 570 .venv/bin/python analysis/evofc_resnet56.py --device cuda --generations 20 \
        --search-epochs 30 --eval-images 2500 --final-epochs 30 \
        --out runs/evofc_r56_gpu --report docs/evofc-resnet56-gpu.md

Published (Neurocomputing 2024): the global schedule is one normal CIFAR training run
(160-200 epochs) and the chosen networks are retrained in full; validation is 1/20 of the
training set (2,500 images). Reduced budgets give lower absolute accuracies.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import shutil
import sys
from collections import Counter
from pathlib import Path

import torch
from benchmark_evaluator import ensure_weights, git_commit, machine_info, prepare_data
from moprune.cli.commands import setup_from_run
from study import ROLES, search_export_report

from moprune.fronts import format_table
from moprune.runs.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=None,
                   help="CIFAR-10 ImageFolder root (default: the shared zips, unzipped once)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--pop-size", type=int, default=10)
    p.add_argument("--generations", type=int, default=6)
    p.add_argument("--search-epochs", type=int, default=10,
                   help="epochs of the global schedule over the whole search")
    p.add_argument("--search-lr", type=float, default=0.1)
    p.add_argument("--init", choices=("random", "pretrained"), default="random")
    p.add_argument("--lower-bounds", default="0",
                   help="e.g. stages:0.2,0.4,0.6 (default: 0)")
    p.add_argument("--train-images", type=int, default=None,
                   help="training images of the global schedule and the final retraining "
                        "(default: all)")
    p.add_argument("--eval-images", type=int, default=500)
    p.add_argument("--test-images", type=int, default=None)
    p.add_argument("--final-epochs", type=int, default=0,
                   help="final retraining of the three models from their inherited weights")
    p.add_argument("--final-lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/evofc_r56"))
    p.add_argument("--report", type=Path, default=Path("docs/evofc-resnet56.md"))
    return p.parse_args(argv)


def search_argv(args: argparse.Namespace, root: Path) -> list[str]:
    argv = ["search", str(REPO / "problems" / "resnet56_cifar10.py"), "--data-root", str(root),
            "--algorithm", "evofc", "--pop-size", str(args.pop_size), "--generations",
            str(args.generations), "--search-epochs", str(args.search_epochs),
            "--search-lr", str(args.search_lr), "--init", args.init,
            "--lower-bounds", args.lower_bounds, "--eval-images", str(args.eval_images),
            "--device", args.device, "--seed", str(args.seed), "--out", str(args.out)]
    if args.train_images:
        argv += ["--train-images", str(args.train_images)]
    if args.test_images:
        argv += ["--test-images", str(args.test_images)]
    if (args.out / "config.json").exists():
        argv.append("--resume")
    return argv


def export_argv(args: argparse.Namespace) -> list[str]:
    return ["export", str(args.out), "--elites", "--out", str(args.out / "elites"),
            "--finetune-epochs", str(args.final_epochs), "--lr", str(args.final_lr),
            "--device", args.device]


def knee_layers(run: RunDir, knee: dict) -> tuple[str, str]:
    """Per-layer table of the knee (ratio, criterion, kept) and the criteria counts."""
    setup = setup_from_run(run, device="cpu", progress=False)
    rows = setup.problem.describe(knee["genome"])  # type: ignore[attr-defined]
    table = format_table(rows, (("group", "layer", ""), ("size", "channels", "d"),
                                ("ratio", "ratio", ".2f"), ("criterion", "criterion", ""),
                                ("kept", "kept", "d")), markdown=True)
    counts = Counter(r["criterion"] for r in rows)
    return table, ", ".join(f"{c}: {n}" for c, n in counts.most_common())


def report(args: argparse.Namespace, run: RunDir, summary: dict, seconds: float) -> str:
    base = run.baseline()
    ident = run.config()["identity"]
    inh = base["inheritance"]
    rows = [{"model": "starting network (unpruned)", "macs_red": 0.0, "params_red": 0.0,
             "val": base["val_accuracy"], "test": base["test_accuracy"]},
            {"model": "supernet after the search (full width)", "macs_red": 0.0,
             "params_red": 0.0, "val": base["supernet_val_accuracy"],
             "test": base["supernet_test_accuracy"]}]
    for role in ROLES:
        rec, met = summary["models"][role]["record"], summary["models"][role]["metrics"]
        rows.append({"model": role, "id": rec["id"], "macs_red": 1 - rec["macs_ratio"],
                     "params_red": 1 - rec["params_ratio"], "val": rec["val_accuracy"],
                     "test": rec["test_accuracy"],
                     "final": met["test_accuracy"] if args.final_epochs else None})
    table = format_table(rows, (
        ("model", "model", ""), ("id", "id", "d"), ("macs_red", "MACs (FLOPs) red.", ".2%"),
        ("params_red", "params red.", ".2%"), ("val", "hold-out (as scored)", ".2%"),
        ("test", "test (final supernet)", ".2%"),
        ("final", "test after final retraining", ".2%")), markdown=True)
    knee = summary["models"]["knee"]["record"]
    layers, counts = knee_layers(run, knee)
    img = args.report.parent / "img"
    img.mkdir(parents=True, exist_ok=True)
    stem = args.report.stem
    shutil.copyfile(args.out / "elites" / "elites.png", img / f"{stem}_models.png")
    shutil.copyfile(args.out / "plots" / "front.png", img / f"{stem}_front.png")
    info = machine_info(torch.device(args.device))
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])
    search = " ".join(shlex.quote(a) for a in search_argv(args, Path("DATA"))
                      if a != "--resume")
    evofc = ident["evofc"]
    text = "\n".join([
        "# EvoFC on ResNet-56 / CIFAR-10 (reduced budget)",
        "",
        f"Generated by `analysis/evofc_resnet56.py` on {dt.datetime.now():%Y-%m-%d %H:%M}; "
        f"finished; this invocation ran {seconds:.0f} s.",
        "",
        f"- Command: `{command}`",
        f"- Search command it ran: `moprune {search}` (DATA: the unzipped JPEG copy), then "
        f"`moprune {' '.join(export_argv(args))}`",
        f"- Git commit: {git_commit()}",
        f"- Machine: {info['cpu']}; {info['cores']}; device {info['device']}"
        f"{'; ' + info['gpu'] if 'gpu' in info else ''}; torch {torch.__version__}",
        f"- Budget: population {ident['pop_size']}, {evofc['nsga2']['n_offsprings']} offspring, "
        f"{ident['generations']} generations = {evofc['planned']} candidates; start: "
        f"{evofc['init']} initialisation; weight inheritance with a global schedule of "
        f"{inh['epochs']} epoch(s) (lr {inh['lr']}, {inh['schedule']}, {inh['total_steps']} "
        f"steps, about {inh['total_steps'] / evofc['planned']:.1f} per candidate) on "
        f"{ident.get('train_images') or 'all'} training images; criteria "
        f"{', '.join(evofc['criteria'])} (on a re-initialised copy: "
        f"{evofc['reinit_criteria']}); ratio bounds {evofc['lower']} to {evofc['max_ratio']}; "
        f"scored on {ident['eval_images']} hold-out training images; final retraining "
        f"{args.final_epochs} epoch(s) from the inherited weights (lr {args.final_lr}, the "
        f"problem's cosine recipe); test: {base.get('test_images', 'all')} images.",
        "- Published (EvoFC, Neurocomputing 2024): population 10, 10 offspring, 20 generations; "
        "the global schedule is one normal training run; the chosen networks are retrained "
        "in full.",
        "",
        table,
        "",
        "Hold-out accuracy is the candidate's score right after its slice of the schedule (what "
        "selection used). The test column evaluates the front on the supernet's weights at the "
        "end of the search: other candidates trained the shared weights since, so it can be "
        "lower or higher than the score. The final retraining starts from those inherited "
        "weights.",
        "",
        f"![the three models against the front](img/{stem}_models.png)",
        "",
        f"![the front](img/{stem}_front.png)",
        "",
        f"Knee (candidate {knee['id']}), per layer; criteria chosen: {counts}.",
        "",
        layers,
        "",
    ])
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    ensure_weights()  # needed with --init pretrained
    root = prepare_data(args.data_root)
    return search_export_report(
        args.out, args.final_epochs, search_argv(args, root), export_argv(args),
        lambda summary, seconds: report(args, RunDir(args.out), summary, seconds))


if __name__ == "__main__":
    raise SystemExit(main())
