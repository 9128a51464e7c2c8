"""``moprune evolve``: search a pruning function on proxy tasks (GP), save it as ``gp:<file>``."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path

from moprune.algorithms.gp import GPConfig
from moprune.core.execution import resolve_device
from moprune.criteria.gp.function import ScoreSettings, load_function
from moprune.criteria.gp.library import SEEDS
from moprune.errors import ConfigError
from moprune.methods.gp_evolve.evolve import BEST, GENERATIONS, evolve
from moprune.methods.gp_evolve.proxy import TaskRequest, load_proxy_task
from moprune.problems.function import FunctionProblem
from moprune.runs.rundir import RunDir, git_hash, run_files, versions
from moprune.tasks import digits
from moprune.tasks.task import file_sha256

DIGITS = "digits"


def parse_task(text: str) -> tuple[str, Path | None]:
    """``FILE`` or ``FILE=WEIGHTS`` (or ``digits``): the problem file and optional weights."""
    name, _, weights = text.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"expected FILE or FILE=WEIGHTS, got {text!r}")
    return name, Path(weights) if weights else None


def _ratios(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ratios, got {text!r}") \
            from None
    if not values or any(not 0.0 < v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"ratios must lie in (0, 1), got {text!r}")
    return values


def add_evolve_parser(sub: argparse._SubParsersAction, positive, nonneg, fraction) -> None:
    """The ``evolve`` sub-command's options."""
    p = sub.add_parser(
        "evolve", help="evolve a pruning function on proxy tasks (genetic programming)",
        description="Search an expression-tree channel-importance function (Liu et al., GECCO "
                    "2022) whose pruned proxy networks keep the most accuracy. The best "
                    "function is written to OUT/best.gp.json; use it anywhere a criterion is "
                    "accepted as gp:OUT/best.gp.json.")
    p.add_argument("tasks", nargs="*", type=parse_task, metavar="TASK",
                   help="proxy tasks: problem files, each optionally FILE=WEIGHTS, or 'digits' "
                        "(the embedded digits CNN, trained first into OUT) (default: digits)")
    p.add_argument("--out", type=Path, required=True, help="run directory to write")
    p.add_argument("--data-root", type=Path, default=None,
                   help="dataset folder of the tasks that need one (e.g. the CIFAR-10 copy)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of search and data (default: 0)")
    p.add_argument("--ratios", type=_ratios, default=(0.5,),
                   help="per-layer pruning ratios of the fitness, comma-separated; a task's "
                        "accuracy is the mean over them (default: 0.5)")
    p.add_argument("--eval-images", type=positive, default=500,
                   help="hold-out images each pruned network is scored on (default: 500)")
    p.add_argument("--train-images", type=positive, default=2000,
                   help="training images loaded per task: the terminals' batch and the "
                        "fine-tuning (default: 2000)")
    p.add_argument("--finetune-epochs", type=nonneg, default=0,
                   help="fine-tune every pruned proxy network this many epochs before scoring "
                        "(default: 0)")
    p.add_argument("--objectives", choices=("geomean", "tasks"), default="geomean",
                   help="geomean: maximise the geometric mean of the tasks' accuracies "
                        "(elitist GP); tasks: one objective per task (NSGA-II) "
                        "(default: geomean)")
    p.add_argument("--pop-size", type=positive, default=20, help="population (default: 20)")
    p.add_argument("--generations", type=positive, default=10,
                   help="generations, the first being the initial population (default: 10)")
    p.add_argument("--elites", type=nonneg, default=6,
                   help="best functions kept unchanged per generation (default: 6)")
    p.add_argument("--crossover", type=fraction, default=0.75,
                   help="one-point crossover probability (default: 0.75)")
    p.add_argument("--mutation", type=fraction, default=0.75,
                   help="uniform subtree mutation probability (default: 0.75)")
    p.add_argument("--max-height", type=positive, default=10,
                   help="largest tree height (default: 10)")
    p.add_argument("--time-limit", type=float, default=2.0,
                   help="seconds a function may take to score one task's channels; slower "
                        "ones are invalid (default: 2)")
    p.add_argument("--no-seeds", action="store_true",
                   help="start from random trees only (default: the seven seeded metrics "
                        "plus random trees)")
    p.add_argument("--spatial", type=positive, default=8,
                   help="feature maps are average-pooled to at most SxS (default: 8)")
    p.add_argument("--batch-images", type=positive, default=320,
                   help="training images (class-balanced) the terminals are computed on "
                        "(default: 320)")
    p.add_argument("--max-classes", type=positive, default=10,
                   help="classes compared one-vs-rest (default: 10)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--force", action="store_true", help="overwrite a different run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _task_files(args: argparse.Namespace, out: Path) -> list[tuple[Path, Path | None]]:
    tasks = args.tasks or [(DIGITS, None)]
    resolved = []
    for name, weights in tasks:
        if weights is not None and not weights.is_file():
            raise FileNotFoundError(f"no weights file {str(weights)!r} for task {name!r}")
        if name == DIGITS:
            resolved.append((Path(digits.__file__).resolve(),
                             weights.resolve() if weights else out.resolve() / "digits.pt"))
            continue
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"no problem file {name!r}; give problem files (such as "
                                    "problems/resnet20_cifar10.py) or 'digits'")
        resolved.append((path.resolve(), weights.resolve() if weights else None))
    return resolved


def _identity(args: argparse.Namespace, files: list[tuple[Path, Path | None]],
              settings: ScoreSettings, config: GPConfig) -> dict:
    return json.loads(json.dumps({  # tuples as lists, as stored in config.json
        "kind": "gp",
        "tasks": [{"problem": str(p), "problem_sha256": file_sha256(p),
                   "weights": str(w) if w else None} for p, w in files],
        "data_root": str(args.data_root.resolve()) if args.data_root else None,
        "seed": args.seed, "ratios": list(args.ratios), "eval_images": args.eval_images,
        "train_images": args.train_images, "finetune_epochs": args.finetune_epochs,
        "objectives": args.objectives, "time_limit": args.time_limit,
        "settings": asdict(settings), "gp": asdict(config),
    }))


def cmd_evolve(args: argparse.Namespace) -> int:
    resolve_device(args.device)
    if args.time_limit <= 0:
        raise ConfigError(f"--time-limit must be > 0 seconds, got {args.time_limit}")
    if args.max_classes < 2:
        raise ConfigError("--max-classes must be >= 2 (functions compare a class with the rest)")
    config = GPConfig(pop_size=args.pop_size, generations=args.generations, elites=args.elites,
                      crossover=args.crossover, mutation=args.mutation,
                      max_height=args.max_height,
                      seeds=() if args.no_seeds else tuple(SEEDS.values()))
    settings = ScoreSettings(spatial=args.spatial, max_classes=args.max_classes,
                             images=args.batch_images)
    run = RunDir(args.out)
    files = _task_files(args, run.path)
    cfg = {"identity": _identity(args, files, settings, config), "device": args.device,
           "versions": versions(), "git": git_hash(), "title": "GP pruning-function search",
           "files": run_files((GENERATIONS, BEST, "digits.pt"))}
    with run.lock("moprune evolve"):
        return _evolve(args, run, cfg, files, config, settings)


def _evolve(args: argparse.Namespace, run: RunDir, cfg: dict,
            files: list[tuple[Path, Path | None]], config: GPConfig,
            settings: ScoreSettings) -> int:
    resume = run.check(cfg, resume=args.resume, force=args.force)
    if not resume:
        removed = run.create(cfg)
        if removed:
            print(f"replaced the run in {run.path}: removed {len(removed)} of its files")
    digits_weights = run.path.resolve() / "digits.pt"
    if any(w == digits_weights for _, w in files) and not digits_weights.is_file():
        print("training the digits CNN for the digits proxy task ...")
        digits.train_baseline(digits_weights, args.seed, progress=not args.quiet)
    request = TaskRequest(ratios=tuple(args.ratios), eval_images=args.eval_images,
                          train_images=args.train_images,
                          finetune_epochs=args.finetune_epochs,
                          data_root=str(args.data_root) if args.data_root else None,
                          seed=args.seed, device=args.device)
    tasks = [load_proxy_task(p, replace(request, weights=str(w) if w else None), settings)
             for p, w in files]
    problem = FunctionProblem(tasks, settings, args.objectives, args.time_limit)
    for task, acc in problem.baseline().items():
        print(f"proxy task {task}: unpruned hold-out accuracy {acc:.2%}")
    rows = evolve(problem, config, run, args.seed, resume=resume, progress=not args.quiet)
    best = load_function(run.path / BEST)
    last = rows[-1]
    print(f"\nbest fitness {last['best_fitness']:.4f} (best seeded metric "
          f"{last['seeds_best']:.4f}); per task: " + ", ".join(
              f"{k} {v:.2%}" for k, v in best.info["accuracies"].items()))
    print(f"score(channel) = sum over classes of mean[ {best.formula} ]")
    print(f"saved {run.path / BEST}; use it as a criterion: gp:{run.path / BEST}")
    return 0


__all__ = ["add_evolve_parser", "cmd_evolve", "parse_task"]
