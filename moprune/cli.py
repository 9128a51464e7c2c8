"""The ``moprune`` command line: search, plot, pick, export, inspect, finetune, demo, evolve."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from moprune.distributed import DistributedUnavailableError, SchedulerLostError
from moprune.execution import PRECISIONS
from moprune.gp.command import add_evolve_parser
from moprune.registry import UnknownNameError
from moprune.space import UnsupportedLayerError

EPILOG = "Run `moprune COMMAND --help` for the options of each command."


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _nonneg(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def _candidate(text: str) -> int | str:
    if text in ("heavy", "light", "knee"):
        return text
    try:
        return _nonneg(text)
    except ValueError:
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


def _add_ccep_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("CCEP (--algorithm ccep; defaults are the published settings)")
    g.add_argument("--rounds", type=_positive, default=20,
                   help="rounds of coevolution + fine-tuning (default: 20)")
    g.add_argument("--finetune-epochs", type=_nonneg, default=100,
                   help="fine-tuning epochs after each round (default: 100; 0 = none)")
    g.add_argument("--finetune-recipe", choices=("published", "task"), default="published",
                   help="published: SGD lr 0.1, momentum 0.9, wd 1e-4, batch 128, lr x0.1 at "
                        "half; task: the problem file's recipe (default: published)")
    g.add_argument("--keep-prob", type=_fraction, default=0.95,
                   help="keep probability of the initial masks (default: 0.95)")
    g.add_argument("--mutation-rate", type=_fraction, default=None,
                   help="per-bit flip probability (default: 0.1 for ccep, 0.2 for "
                        "deeppruninges)")
    g.add_argument("--prune-bound", type=_fraction, default=0.9,
                   help="prunes only while a mask keeps this fraction of the group's channels "
                        "(default: 0.9; 0.85 for ImageNet-scale)")
    g.add_argument("--group-objectives", choices=("single", "multi"), default="single",
                   help="single: accuracy, ties to fewer channels; multi: accuracy and the "
                        "group's channels with NSGA-II survival (default: single)")
    g.add_argument("--sequential-groups", action="store_true",
                   help="evaluate group after group instead of all groups together (same "
                        "results, slower; for comparison)")


def _weights(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 2,1; got {text!r}") from None
    if any(v < 0 or v != v for v in values) or not any(v > 0 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected non-negative weights, not all zero, e.g. 2,1; got {text!r}")
    return values


KNEE_HELP = ("knee definition: distance (min weighted normalised L1 distance to the ideal "
             "point), tradeoff (pymoo high trade-off points) or line (max distance to the line "
             "between the extremes)")
WEIGHTS_HELP = ("weights of the distance knee, one per objective in the run's order (error, "
                "MACs), e.g. 2,1 as in the authors' later code (default: equal = min Manhattan "
                "distance)")


def _add_es_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("DeepPruningES (--algorithm deeppruninges; defaults are the "
                             "published settings)")
    g.add_argument("--partial-epochs", type=_nonneg, default=None,
                   help="partial retraining of every candidate before it is scored, in epochs "
                        "on the training part (default: 3 for deeppruninges, 0 = none "
                        "otherwise; not for ccep)")
    g.add_argument("--partial-lr", type=float, default=None,
                   help="learning rate of the partial retraining (SGD, momentum 0.9, Nesterov, "
                        "constant; default: 1e-3); the problem's batch size, weight decay and "
                        "augmentation")
    g.add_argument("--knee-method", default="distance", help=KNEE_HELP + " (default: distance)")
    g.add_argument("--knee-weights", type=_weights, default=None, help=WEIGHTS_HELP)
    g.add_argument("--residual", action=argparse.BooleanOptionalAction, default=None,
                   help="also search the residual stages: one shared mask per stage that the "
                        "stem, shortcuts and classifier follow (default: on for deeppruninges, "
                        "otherwise the problem file's policy)")


def _names(text: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names; got {text!r}")
    return names


def _add_evofc_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("EvoFC (--algorithm evofc; defaults are the published settings)")
    g.add_argument("--criteria", type=_names, default=None,
                   help="criteria a group can choose, in bin order (default: grad_l1,grad_l2,"
                        "grad_es,grad_gm; any registered criterion, see docs/criteria.md)")
    g.add_argument("--lower-bounds", default=None,
                   help="lower bounds of the pruning ratios: a number, 'stages:A,B,C' (one "
                        "per feature-map resolution, e.g. stages:0.2,0.4,0.6 for ResNet-56) or "
                        "'cosine:LOW,HIGH' over depth (default: 0)")
    g.add_argument("--max-ratio", type=float, default=None,
                   help="upper bound of the pruning ratios, < 1 (default: 0.99)")
    g.add_argument("--variables", choices=("pairs", "mixed"), default=None,
                   help="pairs: real-coded (ratio, criterion) pairs, criterion by equal-width "
                        "bins (the paper); mixed: pymoo Real + Choice variables (default: pairs)")
    g.add_argument("--offspring", type=_positive, default=None,
                   help="offspring per generation (default: the population size; published "
                        "10, ImageNet-scale 40)")
    g.add_argument("--init", choices=("random", "pretrained"), default=None,
                   help="start from a random initialisation (the paper) or from the problem "
                        "file's weights (default: random)")
    g.add_argument("--training", choices=("inherit", "scratch", "none"), default=None,
                   help="inherit: weight inheritance through one supernet trained by one "
                        "global schedule; scratch: every candidate re-initialised and trained "
                        "on its own; none: scored as is (with --init pretrained) "
                        "(default: inherit)")
    g.add_argument("--search-epochs", type=_nonneg, default=None,
                   help="inherit: epochs of the global schedule over the whole search (one "
                        "normal training run); scratch: epochs per candidate (default: the "
                        "problem file's fine-tuning epochs)")
    g.add_argument("--search-lr", type=float, default=None,
                   help="initial learning rate of that training, with the problem's schedule "
                        "(default: 0.1 from random init, the problem's from pretrained)")
    g.add_argument("--reinit-criteria", action=argparse.BooleanOptionalAction, default=None,
                   help="compute the gradient criteria on a Xavier re-initialised copy (the "
                        "paper; default: on)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``moprune`` command."""
    parser = argparse.ArgumentParser(
        prog="moprune",
        description="Evolutionary multi-objective filter pruning of CNNs (pymoo + PyTorch).",
        epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("search",
                       help="search a pruning problem file (NSGA-II, CCEP, DeepPruningES or "
                            "EvoFC)",
                       description="Search the Pareto front of accuracy vs. cost for a problem "
                                   "file and write a run directory.")
    p.add_argument("problem", type=Path, help="problem file defining build_task(options)")
    _add_data_args(p)
    p.add_argument("--eval-images", type=_positive, default=2000,
                   help="hold-out images (from the TRAINING split) used to rank candidates "
                        "(default: 2000)")
    p.add_argument("--test-images", type=_positive, default=None,
                   help="test images for reporting the front's accuracy (default: all); the "
                        "test split is never used for selection")
    p.add_argument("--train-images", type=_positive, default=None,
                   help="train on a seeded random part of the training part only (default: "
                        "all of it); for reduced budgets: ccep's fine-tuning, the partial "
                        "retraining, and `export` of the run")
    p.add_argument("--pop-size", type=_positive, default=None,
                   help="population size (default: 40 for nsga2, 30 for deeppruninges, 10 for "
                        "evofc; for ccep the population of each group, default 5)")
    p.add_argument("--generations", type=_positive, default=None,
                   help="number of generations, the first being the initial population "
                        "(default: 20 for nsga2 and evofc, 11 for deeppruninges; for ccep the "
                        "generations per group and round, default 10)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the search and of the hold-out split (default: 0)")
    p.add_argument("--algorithm", default="nsga2",
                   help="nsga2 (NSGA-II over the problem's encoding), ccep (cooperative "
                        "coevolution, rounds with fine-tuning), deeppruninges (the (3+27) "
                        "evolution strategy with heavy/light/knee elites) or evofc (NSGA-II "
                        "over a ratio and a criterion per layer, with weight inheritance); "
                        "see the options of each below")
    p.add_argument("--mode", default="auto", choices=("auto", "gate", "slice"),
                   help="evaluation: gate (population batched with channel gates), slice "
                        "(weights sliced per candidate) or auto (gate on CUDA or with --compile, "
                        "slice on CPU)")
    p.add_argument("--max-macs-ratio", type=_fraction, default=None,
                   help="constraint: MACs of a candidate / baseline MACs <= R (ccep: the "
                        "target - stop once the network reaches it)")
    p.add_argument("--max-accuracy-drop", type=_fraction, default=None,
                   help="constraint: baseline accuracy - accuracy <= D (fraction, 0.01 = 1 "
                        "point; ccep: stop after a round that drops more)")
    p.add_argument("--criterion", default=None,
                   help="criterion that orders channels (ratio encoding) or repairs masks, "
                        "instead of the problem file's: a registered name (l1, fpgm, snr, "
                        "gp_published, ...; see docs/criteria.md) or gp:FILE, a function "
                        "saved by `moprune evolve`; EvoFC takes --criteria instead")
    p.add_argument("--out", type=Path, required=True, help="run directory to write")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out (same options required)")
    p.add_argument("--force", action="store_true",
                   help="overwrite a different run already in --out")
    _add_execution_args(p, "the evaluation (and of any training during the search)",
                        "the evaluation's population pass, gate mode only (--mode auto then "
                        "picks gate)")
    cluster = p.add_mutually_exclusive_group()
    cluster.add_argument("--workers", type=_positive, default=None,
                         help="evaluate each population on a local Dask cluster of N worker "
                              "processes (one per GPU with dask-cuda on CUDA); needs pip "
                              "install 'moprune[distributed]'; not with ccep or EvoFC's weight "
                              "inheritance")
    cluster.add_argument("--scheduler", default=None, metavar="ADDRESS",
                         help="evaluate on an existing Dask cluster (tcp://host:8786); its "
                              "workers need moprune, the problem file and the data at the "
                              "same paths")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_ccep_args(p)
    _add_es_args(p)
    _add_evofc_args(p)

    p = sub.add_parser("plot", help="(re)draw a run's plots",
                       description="Draw the front and hypervolume plots of a run (PNG + SVG) "
                                   "into RUN/plots.")
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--id", type=_nonneg, action="append", default=None, dest="ids",
                   help="also plot the kept channels per group of this candidate (repeatable; "
                        "default: the knee)")

    p = sub.add_parser("pick", help="choose a trade-off model from a run's front",
                       description="Choose a front member: the knee, the most accurate under a "
                                   "MACs budget, or the smallest within an accuracy drop. "
                                   "Selection uses hold-out accuracy only.")
    p.add_argument("run", type=Path, help="run directory")
    rule = p.add_mutually_exclusive_group(required=True)
    rule.add_argument("--knee", action="store_true", help="the knee of the front")
    rule.add_argument("--max-macs-ratio", type=_fraction, metavar="R",
                      help="most accurate member with MACs / baseline MACs <= R")
    rule.add_argument("--max-accuracy-drop", type=_fraction, metavar="D",
                      help="fewest MACs with hold-out accuracy >= baseline - D (0.01 = 1 point)")
    rule.add_argument("--list", action="store_true", help="list all front members")
    p.add_argument("--knee-method", default=None,
                   help=KNEE_HELP + " (default: the run's, distance unless the search set one)")
    p.add_argument("--knee-weights", type=_weights, default=None,
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
    p.add_argument("--finetune-epochs", type=_nonneg, default=0,
                   help="epochs of fine-tuning on the training part (default: 0; published "
                        "DeepPruningES: 200 with --recipe deeppruninges)")
    p.add_argument("--recipe", choices=("task", "deeppruninges", "fast"), default="task",
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
    p.add_argument("--epochs", type=_positive, default=5, help="epochs (default: 5)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: recipe's)")
    p.add_argument("--seed", type=int, default=0, help="seed of split and shuffles (default: 0)")
    p.add_argument("--out", type=Path, required=True, help="output state_dict file (.pt)")
    _add_execution_args(p, "the fine-tuning")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("demo", help="train, search, pick and export on embedded digits data",
                       description="The end-to-end demo: offline, CPU, about a minute.")
    p.add_argument("--out", type=Path, default=Path("runs/demo"),
                   help="run directory (default: runs/demo; a previous demo there is replaced)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    add_evolve_parser(sub, _positive, _nonneg, _fraction)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``moprune`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    from moprune import commands

    handler = getattr(commands, f"cmd_{args.command}")
    try:
        return handler(args)
    except BrokenPipeError:  # e.g. `moprune pick RUN --list | head`
        sys.stderr.close()
        return 0
    except (UnknownNameError, UnsupportedLayerError, ValueError, OSError,
            SchedulerLostError, DistributedUnavailableError) as exc:
        hint = ""
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
            hint = (" (offline? published weights load through torch.hub: copy the .th files "
                    "into $TORCH_HOME/hub/checkpoints/, or pass --weights)")
        print(f"moprune {args.command}: error: {exc}{hint}", file=sys.stderr)
        return 2


def print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


if __name__ == "__main__":
    raise SystemExit(main())
