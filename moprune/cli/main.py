"""The ``moprune`` command line: the parser, and the error contract of every command.

Sub-commands: search, plot, pick, export, repair, inspect, finetune, demo, evolve. A method's search
options come from its options class (``moprune.methods``). Errors a user can fix
(:class:`~moprune.errors.MopruneError`) and operating-system errors (a missing or unwritable
file) print as ``moprune COMMAND: error: ...`` with exit status 2; anything else is a bug in
moprune and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from moprune.algorithms import ALGORITHMS
from moprune.cli import results, search, tools
from moprune.cli.common import preload_problem_file
from moprune.cli.demo import run_demo
from moprune.cli.evolve import add_evolve_parser, cmd_evolve
from moprune.core.execution import PRECISIONS
from moprune.errors import MopruneError
from moprune.methods import METHODS, all_methods
from moprune.methods.base import add_method_arguments
from moprune.methods.deeppruninges import KNEE_HELP, WEIGHTS_HELP
from moprune.methods.parsers import fraction, nonneg, positive, seed, weights
from moprune.training.recipes import RECIPES
from moprune.version import __version__

EPILOG = "Run `moprune COMMAND --help` for the options of each command."
ISSUES = "https://github.com/moprune/moprune/issues"


def _candidate(text: str) -> int | str:
    if text in ("heavy", "light", "knee"):
        return text
    try:
        return nonneg(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a candidate id (an integer >= 0) or heavy, light or knee; got {text!r}"
        ) from None


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", type=Path, default=None,
                   help="dataset folder: an ImageFolder root with train/ and test/ (detected "
                        "automatically), or torchvision's CIFAR folder. Not needed for the "
                        "embedded digits data.")
    p.add_argument("--download", action="store_true",
                   help="let torchvision download CIFAR-10/100 into --data-root (needs internet)")
    p.add_argument("--weights", type=Path, default=None,
                   help="checkpoint of the full network to start from (a state_dict, e.g. "
                        "written by `moprune finetune`); default: the problem file's weights")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")


def _add_execution_args(p: argparse.ArgumentParser, what: str,
                        compiled: str | None = None) -> None:
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help=f"autocast precision of {what}: auto (bf16 on CUDA, fp16 on GPUs "
                        "without bf16, fp32 on the CPU), fp32, bf16 or fp16 (default: auto; "
                        "bf16 is about 3x faster on CPUs with AVX512-BF16 or AMX)")
    p.add_argument("--compile", action="store_true",
                   help=f"torch.compile {compiled or what} (the first call compiles for tens "
                        "of seconds; worth it for long runs)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``moprune`` command."""
    methods = all_methods()
    parser = argparse.ArgumentParser(
        prog="moprune",
        description="Evolutionary multi-objective filter pruning of CNNs (pymoo + PyTorch).",
        epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"moprune {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of every error (a problem file's too)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("search",
                       help="search a pruning problem file (NSGA-II, CCEP, DeepPruningES, "
                            "EvoFC, random search or any registered pymoo algorithm)",
                       description="Search the Pareto front of accuracy vs. cost for a problem "
                                   "file and write a run directory.")
    p.add_argument("problem", type=Path, help="problem file defining build_task(options)")
    _add_data_args(p)
    p.add_argument("--eval-images", type=positive, default=2000,
                   help="hold-out images (from the TRAINING split) used to rank candidates "
                        "(default: 2000)")
    p.add_argument("--test-images", type=positive, default=None,
                   help="test images for reporting the front's accuracy (default: all); the "
                        "test split is never used for selection")
    p.add_argument("--train-images", type=positive, default=None,
                   help="train on a seeded random part of the training part only (default: "
                        "all of it); for reduced budgets: ccep's fine-tuning, the partial "
                        "retraining, and `export` of the run")
    p.add_argument("--seed", type=seed, default=0,
                   help="seed of the search and of the hold-out split (default: 0)")
    p.add_argument("--algorithm", default="nsga2",
                   help="; ".join(f"{m.name}: {m.summary}" for m in methods) + "; or any "
                        "pymoo algorithm registered in moprune.algorithms.ALGORITHMS (here: "
                        + ", ".join(n for n in ALGORITHMS.names() if n not in METHODS)
                        + ") or by the problem file (default: nsga2; see the options of each "
                        "method below)")
    p.add_argument("--mode", default="auto", choices=("auto", "gate", "slice"),
                   help="evaluation: gate (population batched with channel gates), slice "
                        "(weights sliced per candidate) or auto (gate on CUDA or with --compile, "
                        "slice on CPU)")
    p.add_argument("--max-macs-ratio", type=fraction, default=None,
                   help="constraint: MACs of a candidate / baseline MACs <= R (ccep: the "
                        "target - stop once the network reaches it)")
    p.add_argument("--max-accuracy-drop", type=fraction, default=None,
                   help="constraint: baseline accuracy - accuracy <= D (fraction, 0.01 = 1 "
                        "point; ccep: stop after a round that drops more)")
    p.add_argument("--out", type=Path, required=True, help="run directory to write")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out (same options required)")
    p.add_argument("--force", action="store_true",
                   help="overwrite a different run already in --out")
    add_method_arguments(p, methods)
    _add_execution_args(p, "the evaluation (and of any training during the search)",
                        "the evaluation's population pass, gate mode only (--mode auto then "
                        "picks gate)")
    cluster = p.add_mutually_exclusive_group()
    cluster.add_argument("--workers", type=positive, default=None,
                         help="evaluate each population on a local Dask cluster of N worker "
                              "processes (one per GPU with dask-cuda on CUDA); needs pip "
                              "install 'moprune[distributed]'; not with ccep or EvoFC's weight "
                              "inheritance")
    cluster.add_argument("--scheduler", default=None, metavar="ADDRESS",
                         help="evaluate on an existing Dask cluster (tcp://host:8786); its "
                              "workers need moprune, the problem file and the data at the "
                              "same paths")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("plot", help="(re)draw a run's plots",
                       description="Draw the front and hypervolume plots of a run (PNG + SVG) "
                                   "into RUN/plots.")
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--id", type=nonneg, action="append", default=None, dest="ids",
                   help="also plot the kept channels per group of this candidate (repeatable; "
                        "default: the knee)")

    p = sub.add_parser("pick", help="choose a trade-off model from a run's front",
                       description="Choose a front member: the knee, the most accurate under a "
                                   "MACs budget, or the smallest within an accuracy drop. "
                                   "Selection uses hold-out accuracy only.")
    p.add_argument("run", type=Path, help="run directory")
    rule = p.add_mutually_exclusive_group(required=True)
    rule.add_argument("--knee", action="store_true", help="the knee of the front")
    rule.add_argument("--max-macs-ratio", type=fraction, metavar="R",
                      help="most accurate member with MACs / baseline MACs <= R")
    rule.add_argument("--max-accuracy-drop", type=fraction, metavar="D",
                      help="fewest MACs with hold-out accuracy >= baseline - D (0.01 = 1 point)")
    rule.add_argument("--max", metavar="OBJECTIVE=VALUE",
                      help="most accurate member with the run's objective OBJECTIVE <= VALUE "
                           "(any objective of the run, e.g. params_ratio=0.5)")
    rule.add_argument("--list", action="store_true", help="list all front members")
    p.add_argument("--knee-method", default=None,
                   help=KNEE_HELP + " (default: the run's, distance unless the search set one)")
    p.add_argument("--knee-weights", type=weights, default=None,
                   help=WEIGHTS_HELP.replace("(default: equal", "(default: the run's, or equal"))
    p.add_argument("--json", action="store_true", help="print the chosen member as JSON")

    p = sub.add_parser("export", help="export a candidate as a physically pruned network",
                       description="Prune the full network to candidate ID (Torch-Pruning "
                                   "surgery; for runs scored after partial retraining, the "
                                   "same seeded retraining follows; for EvoFC runs, the "
                                   "supernet's inherited weights), optionally fine-tune it "
                                   "(checkpointed every epoch in OUT.ckpt; rerun to resume), "
                                   "measure it and save it. --elites exports the heavy, knee "
                                   "and light members together, with a table and a plot.")
    p.add_argument("run", type=Path, help="run directory")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=_candidate, default=None,
                       help="candidate id (see `moprune pick`), or heavy, light or knee (the "
                            "front's most accurate, cheapest and knee member)")
    which.add_argument("--elites", action="store_true",
                       help="export heavy, knee and light into --out (a folder), with "
                            "elites.md, elites.json and elites.png/svg")
    p.add_argument("--out", type=Path, required=True,
                   help="output file (.pt), or folder with --elites")
    p.add_argument("--finetune-epochs", type=nonneg, default=0,
                   help="epochs of fine-tuning on the training part (default: 0; published "
                        "DeepPruningES: 200 with --recipe deeppruninges)")
    p.add_argument("--recipe", choices=RECIPES.names(), default="task",
                   help="task: the problem file's recipe; deeppruninges: SGD lr 1e-4, momentum "
                        "0.9, Nesterov, constant; fast: batch 1024, lr 0.2 with a linear "
                        "warm-up (20 %%) and decay, label smoothing 0.1, for GPUs (default: "
                        "task)")
    p.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate "
                   "(default: the recipe's)")
    p.add_argument("--start", choices=("scored", "scratch"), default="scored",
                   help="weights the exported network starts from: scored (as the search "
                        "scored it: the full network pruned, the retrained candidate, the CCEP "
                        "round, or an EvoFC run's inherited supernet weights) or scratch "
                        "(re-initialised, then trained --finetune-epochs) (default: scored)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the run's device)")
    _add_execution_args(p, "the fine-tuning")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("repair", help="check a run's files and rebuild what is damaged",
                       description="Check every file of a run against what the run recorded "
                                   "(the ledger of its candidate lines in the checkpoint and in "
                                   "finished.json). Lines written after the last checkpoint are "
                                   "trimmed; a damaged candidates file, checkpoint or front is "
                                   "rebuilt by replaying the search with its seed, taking the "
                                   "recorded scores of intact candidates (the damaged files are "
                                   "kept in RUN/repair-backup/).")
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the run's device)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("inspect", help="list the prunable channel groups of a problem",
                       description="Print the prunable groups of a problem file's model: name, "
                                   "channels, kind and share of the network's MACs.")
    p.add_argument("problem", type=Path, help="problem file")
    p.add_argument("--weights", type=Path, default=None, help="checkpoint of the full network")
    p.add_argument("--residual", action="store_true",
                   help="show the residual-stage policy (also prune residual streams)")

    p = sub.add_parser("finetune", help="fine-tune a problem's full network (adapt a baseline)",
                       description="Train the problem's unpruned network on the training part "
                                   "(hold-out excluded) and save its state_dict for --weights.")
    p.add_argument("problem", type=Path, help="problem file")
    _add_data_args(p)
    p.add_argument("--epochs", type=positive, default=5, help="epochs (default: 5)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: recipe's)")
    p.add_argument("--seed", type=seed, default=0, help="seed of split and shuffles (default: 0)")
    p.add_argument("--out", type=Path, required=True, help="output state_dict file (.pt)")
    _add_execution_args(p, "the fine-tuning")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("demo", help="train, search, pick and export on embedded digits data",
                       description="The end-to-end demo: offline, CPU, well under 2 minutes.")
    p.add_argument("--out", type=Path, default=Path("runs/demo"),
                   help="run directory (default: runs/demo; a previous demo there is replaced)")
    p.add_argument("--seed", type=seed, default=0, help="seed (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    add_evolve_parser(sub, positive, nonneg, fraction)
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "search": search.cmd_search, "plot": results.cmd_plot, "pick": results.cmd_pick,
    "export": results.cmd_export, "repair": results.cmd_repair, "inspect": tools.cmd_inspect,
    "finetune": tools.cmd_finetune,
    "demo": lambda args: run_demo(args.out, main, seed=args.seed, progress=not args.quiet),
    "evolve": cmd_evolve,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``moprune`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    preload_problem_file(argv)  # a problem file's methods and options join the parser
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:  # e.g. `moprune pick RUN --list | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        resume = (" (rerun the same command with --resume to continue)"
                  if args.command in ("search", "evolve") else "")
        print(f"moprune {args.command}: interrupted{resume}", file=sys.stderr)
        return 130
    except MopruneError as exc:
        if args.debug:
            traceback.print_exception(exc)
        print(f"moprune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if args.debug:
            traceback.print_exception(exc)
        print(f"moprune {args.command}: error: {_os_error(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: say so, and keep the traceback (raised on)
        print(f"moprune {args.command}: internal error {type(exc).__name__}: this is a bug in "
              f"moprune {__version__}; please report it with the traceback below at "
              f"{ISSUES}", file=sys.stderr)
        raise


def _os_error(exc: OSError) -> str:
    """An operating-system error with its file and what failed."""
    what = exc.strerror or str(exc) or type(exc).__name__
    where = " ".join(repr(str(f)) for f in (exc.filename, exc.filename2) if f is not None)
    return f"{what}: {where}" if where else str(exc)


if __name__ == "__main__":
    raise SystemExit(main())
