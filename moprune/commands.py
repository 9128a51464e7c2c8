"""Implementations of the ``moprune`` sub-commands (argument parsing lives in ``cli``)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import math
import time
from pathlib import Path

import torch

from moprune.analysis import (
    PickRule,
    format_table,
    front_records,
    pick,
)
from moprune.ccep import OBJECTIVES as ccep_objectives
from moprune.ccep import CCEPConfig, rounds_table_rows, run_ccep
from moprune.coevolution import CoevolutionConfig
from moprune.cost import CostModel
from moprune.criteria import CRITERIA, GP_PREFIX, criterion_name
from moprune.deeppruninges import DeepPruningES, DeepPruningESConfig
from moprune.evaluator import MaskScorer, resolve_device
from moprune.evofc import EVOFC_CRITERIA, EvoFCConfig, EvoFCOptions, evofc_nsga2
from moprune.execution import Execution
from moprune.export import export_candidate
from moprune.gp.command import cmd_evolve  # noqa: F401  (the `evolve` sub-command)
from moprune.inheritance import InheritanceEvaluator
from moprune.retraining import final_recipe, partial_recipe
from moprune.runs import EVENTS, PROGRESS, RunDir, RunDirError, git_hash, versions
from moprune.search import (
    SearchConfig,
    load_supernet,
    run_knee,
    run_search,
    run_trade_offs,
    write_plots,
)
from moprune.space import PruningSpace
from moprune.task import (
    DataRequest,
    PruningTask,
    SearchSetup,
    TaskOptions,
    file_sha256,
    load_problem_file,
    make_problem,
)
from moprune.tradeoffs import export_trade_offs, resolve_role, start_model, trade_offs_table
from moprune.training import FinetuneConfig, evaluate_accuracy, fast_recipe, finetune

MEMBER_COLUMNS = (
    ("name", "model", ""), ("id", "id", "d"), ("val_accuracy", "val acc", ".2%"),
    ("test_accuracy", "test acc", ".2%"), ("macs", "MACs", ",d"),
    ("macs_reduction", "MACs red.", ".1%"), ("params", "params", ",d"),
    ("params_reduction", "params red.", ".1%"),
)


def _options(weights: Path | None, pretrained: bool = True) -> TaskOptions:
    return TaskOptions(weights=weights.resolve() if weights else None, pretrained=pretrained)


DEFAULT_SIZES = {"nsga2": (40, 20), "ccep": (5, 10), "deeppruninges": (30, 11),
                 "evofc": (10, 20)}
DEFAULT_MUTATION = {"ccep": 0.1, "deeppruninges": 0.2}
ES = "deeppruninges"
EVOFC = "evofc"
EVOFC_ARGS = ("criteria", "lower_bounds", "max_ratio", "variables", "offspring", "init",
              "training", "search_epochs", "search_lr", "reinit_criteria")


def evofc_config(args: argparse.Namespace) -> EvoFCConfig:
    """The NSGA-II settings of ``moprune search --algorithm evofc``."""
    return EvoFCConfig(pop_size=args.pop_size, n_offsprings=args.offspring or args.pop_size)


def evofc_options(args: argparse.Namespace, task: PruningTask) -> EvoFCOptions:
    """The search space and scoring of ``moprune search --algorithm evofc``."""
    init = args.init or "random"
    lr = args.search_lr
    if lr is None:
        lr = 0.1 if init == "random" else task.finetune.lr
    epochs = task.finetune.epochs if args.search_epochs is None else args.search_epochs
    training = args.training or "inherit"
    if training != "none" and epochs == 0:
        raise ValueError(f"--training {training} needs --search-epochs > 0 (or --training none "
                         "to score candidates as they are)")
    return EvoFCOptions(
        criteria=tuple(map(criterion_name, args.criteria or EVOFC_CRITERIA)),
        lower=args.lower_bounds or "0",
        max_ratio=0.99 if args.max_ratio is None else args.max_ratio,
        variables=args.variables or "pairs",
        reinit_criteria=True if args.reinit_criteria is None else args.reinit_criteria,
        init=init, training=training, epochs=epochs, lr=lr,
        planned=evofc_config(args).evaluations(args.generations))


def es_config(args: argparse.Namespace) -> DeepPruningESConfig:
    """The DeepPruningES settings of ``moprune search --algorithm deeppruninges``."""
    return DeepPruningESConfig(pop_size=args.pop_size, mutation_rate=args.mutation_rate,
                               knee_method=args.knee_method, knee_weights=args.knee_weights)


def ccep_config(args: argparse.Namespace) -> CCEPConfig:
    """The CCEP settings of ``moprune search --algorithm ccep``."""
    coevolution = CoevolutionConfig(
        pop_size=args.pop_size, generations=args.generations, keep_prob=args.keep_prob,
        mutation_rate=args.mutation_rate, prune_bound=args.prune_bound,
        objectives=args.group_objectives, batch_groups=not args.sequential_groups)
    return CCEPConfig(rounds=args.rounds, coevolution=coevolution,
                      finetune_epochs=args.finetune_epochs, recipe=args.finetune_recipe,
                      target_macs_ratio=args.max_macs_ratio,
                      max_accuracy_drop=args.max_accuracy_drop, seed=args.seed)


def _resolve_defaults(args: argparse.Namespace) -> None:
    """Fill the per-algorithm defaults and refuse options the algorithm does not use."""
    algo = args.algorithm
    pop, gens = DEFAULT_SIZES.get(algo, DEFAULT_SIZES["nsga2"])
    args.pop_size = pop if args.pop_size is None else args.pop_size
    args.generations = gens if args.generations is None else args.generations
    if args.mutation_rate is None:
        args.mutation_rate = DEFAULT_MUTATION.get(algo)
    elif algo not in DEFAULT_MUTATION:
        raise ValueError(f"--mutation-rate is an option of {' and '.join(DEFAULT_MUTATION)}, "
                         f"not of --algorithm {algo}")
    if args.partial_epochs is None:
        args.partial_epochs = 3 if algo == ES else 0
    if algo == "ccep" and args.partial_epochs > 0:
        raise ValueError("--partial-epochs does not apply to ccep (it fine-tunes after every "
                         "round instead: --finetune-epochs)")
    if algo == "ccep" and args.residual is not None:
        raise ValueError("ccep searches the problem file's pruning space (its policy decides "
                         "about residual stages); drop --residual / --no-residual")
    if args.residual is None and algo == ES:
        args.residual = True
    if args.criterion is not None:
        if algo == EVOFC:
            raise ValueError("--criterion does not apply to evofc, which searches a criterion "
                             "per layer: give the candidates with --criteria")
        args.criterion = criterion_name(args.criterion)
    given = [a for a in EVOFC_ARGS if getattr(args, a) is not None]
    if algo != EVOFC and given:
        flag = "--" + given[0].replace("_", "-")
        raise ValueError(f"{flag} is an option of --algorithm evofc, not of {algo}")
    if algo == EVOFC and args.max_accuracy_drop is not None and args.init in (None, "random"):
        raise ValueError("--max-accuracy-drop compares with the starting network, which is "
                         "untrained with --init random; use it with --init pretrained, or "
                         "constrain MACs (--max-macs-ratio) instead")
    if algo == EVOFC and args.training == "none" and args.init in (None, "random"):
        raise ValueError("--training none scores candidates as they are, which from a random "
                         "initialisation is chance; add --init pretrained, or train them "
                         "(--training inherit or scratch)")
    if algo == EVOFC and args.partial_epochs > 0:
        raise ValueError("--partial-epochs does not apply to evofc; its candidates train by "
                         "--training inherit|scratch with --search-epochs")
    if algo != ES and (args.knee_weights is not None or args.knee_method != "distance"):
        raise ValueError(f"--knee-method and --knee-weights choose DeepPruningES's elites; "
                         f"for --algorithm {algo} choose the knee afterwards with `moprune pick "
                         "RUN --knee --knee-method M`")
    if args.partial_lr is not None and args.partial_epochs == 0:
        raise ValueError("--partial-lr needs --partial-epochs > 0 (there is no partial "
                         "retraining to apply it to)")
    args.partial_lr = 1e-3 if args.partial_lr is None else args.partial_lr
    if not math.isfinite(args.partial_lr) or args.partial_lr <= 0:
        raise ValueError(f"--partial-lr must be a finite number > 0; got {args.partial_lr}")


def _needs_data(task: PruningTask, evofc: EvoFCOptions | None = None) -> bool:
    """Whether the run trains, or a criterion ranks channels with training images."""
    if evofc is not None:
        return evofc.training != "none" or any(CRITERIA.get(c).needs_data
                                               for c in evofc.criteria)
    return CRITERIA.get(task.criterion).needs_data


def _partial(identity: dict, task: PruningTask) -> FinetuneConfig | None:
    """The partial-retraining recipe of a run identity (None: candidates are not retrained)."""
    partial = identity.get("partial")
    if not partial:
        return None
    return partial_recipe(task.finetune, partial["epochs"], partial["lr"])


def run_config(args: argparse.Namespace, task_objectives: tuple[str, ...],
               title: str, evofc: EvoFCOptions | None = None) -> dict:
    """The config.json of a search; ``identity`` must match for ``--resume``."""
    problem = args.problem.resolve()
    ccep = args.algorithm == "ccep"
    identity = {
        "problem": str(problem), "problem_sha256": file_sha256(problem),
        "data_root": str(args.data_root.resolve()) if args.data_root else None,
        "weights": str(args.weights.resolve()) if args.weights else None,
        "weights_sha256": file_sha256(args.weights) if args.weights else None,
        "eval_images": args.eval_images, "test_images": args.test_images, "seed": args.seed,
        "train_images": args.train_images,
        "pop_size": args.pop_size, "generations": args.generations,
        "algorithm": args.algorithm,
        "objectives": list(ccep_objectives if ccep else task_objectives),
        # for CCEP the MACs ratio is a stopping target, not a constraint on the records
        "max_macs_ratio": None if ccep else args.max_macs_ratio,
        "max_accuracy_drop": args.max_accuracy_drop,
        "residual": args.residual,
        "criterion": args.criterion, "criterion_sha256": _criterion_sha(args.criterion),
        "partial": ({"epochs": args.partial_epochs, "lr": args.partial_lr}
                    if args.partial_epochs > 0 else None),
        # resolved on the device: bf16 and fp32 scores must not mix in one run
        "precision": Execution(precision=args.precision).resolve(args.device).precision,
    }
    if ccep:
        identity["ccep"] = ccep_config(args).to_dict()
    if args.algorithm == ES:
        identity[ES] = es_config(args).to_dict()
    if evofc is not None:
        identity[EVOFC] = {**evofc.to_dict(), "nsga2": evofc_config(args).to_dict()}
    return {"identity": identity, "device": args.device, "mode": args.mode,
            "execution": execution_of(args).to_dict(),
            "cluster": {"workers": args.workers, "scheduler": args.scheduler},
            "download": args.download, "versions": versions(), "git": git_hash(),
            "title": f"{title} (seed {args.seed})"}


def execution_of(args: argparse.Namespace) -> Execution:
    """The ``--precision`` / ``--compile`` settings of a command."""
    return Execution(precision=args.precision, compile=args.compile)


def _stored_execution(cfg: dict) -> Execution:
    """A run's execution settings (runs made before they were recorded ran fp32, NCHW)."""
    if "execution" not in cfg:
        return Execution("fp32", channels_last=False)
    return Execution(**cfg["execution"])


def _criterion_sha(name: str | None) -> str | None:
    """Hash of a ``gp:`` criterion's file (None for registered criteria)."""
    if name is None or not name.startswith(GP_PREFIX):
        return None
    return file_sha256(Path(name[len(GP_PREFIX):]))


def with_criterion(task: PruningTask, identity: dict) -> PruningTask:
    """The task with the run's ``--criterion`` (warns if its gp: file changed since)."""
    name = identity.get("criterion")
    if name is None:
        return task
    if name.startswith(GP_PREFIX) and Path(name[len(GP_PREFIX):]).is_file() and \
            _criterion_sha(name) != identity.get("criterion_sha256"):
        print(f"warning: {name[len(GP_PREFIX):]} changed since the run was made; results may "
              "differ")
    return dataclasses.replace(task, criterion=name)


def setup_from_run(run: RunDir, device: str | None = None, load_train: bool = False,
                   progress: bool = True) -> SearchSetup:
    """Rebuild the problem setup of a run from its config.json."""
    setup = setup_from_config(run.config(), device, load_train, progress)
    if isinstance(setup.evaluator, InheritanceEvaluator):
        load_supernet(run, setup.evaluator)  # refuses an unfinished run
    return setup


def setup_from_config(cfg: dict, device: str | None = None, load_train: bool = False,
                      progress: bool = True) -> SearchSetup:
    """The problem setup a run's config describes (problem file, weights, data, options)."""
    ident = cfg["identity"]
    ccep = ident.get("algorithm") == "ccep"
    masks_only = ccep or ident.get("algorithm") == ES
    problem = Path(ident["problem"])
    if problem.is_file() and file_sha256(problem) != ident["problem_sha256"]:
        print(f"warning: {problem} changed since the run was made; results may differ")
    weights = Path(ident["weights"]) if ident["weights"] else None
    if weights is not None and weights.is_file() and \
            file_sha256(weights) != ident.get("weights_sha256"):
        print(f"warning: {weights} changed since the run was made; results may differ")
    evofc = _evofc_from(ident)
    random_start = evofc is not None and evofc.init == "random"
    task = load_problem_file(problem, TaskOptions(weights=weights, pretrained=not random_start))
    task = with_criterion(task, ident)
    retrain = _partial(ident, task)
    data = task.load_data(DataRequest(
        root=Path(ident["data_root"]) if ident["data_root"] else None, seed=ident["seed"],
        eval_images=ident["eval_images"], test_images=ident["test_images"],
        load_train=load_train or retrain is not None or _needs_data(task, evofc),
        download=cfg.get("download", False),
        train_images=ident.get("train_images")))
    setup = make_problem(task, data, device=device or cfg["device"], mode=cfg["mode"],
                         progress=progress, max_macs_ratio=ident["max_macs_ratio"],
                         max_accuracy_drop=None if ccep else ident["max_accuracy_drop"],
                         encoding="mask" if masks_only else None,
                         objectives=tuple(ident["objectives"]) if ccep else None,
                         residual=ident.get("residual"), retrain=retrain, seed=ident["seed"],
                         evofc=evofc, execution=_stored_execution(cfg))
    return setup


def worker_scorer(cfg: dict, device: str) -> MaskScorer:
    """What a Dask worker evaluates with: the run's evaluator, built from its config."""
    return setup_from_config(cfg, device, progress=False).evaluator


def _evofc_from(identity: dict) -> EvoFCOptions | None:
    """The EvoFC options stored in a run identity (None for other algorithms)."""
    stored = identity.get(EVOFC)
    if stored is None:
        return None
    fields = {k: v for k, v in stored.items() if k != "nsga2"}
    return EvoFCOptions(**{**fields, "criteria": tuple(fields["criteria"])})


def _open_run(args: argparse.Namespace) -> tuple[PruningTask, RunDir, dict, bool]:
    """Load the problem file and check the run directory (nothing is written yet)."""
    random_start = args.algorithm == EVOFC and (args.init or "random") == "random"
    task = load_problem_file(args.problem, _options(args.weights, pretrained=not random_start))
    run = RunDir(args.out)
    evofc = evofc_options(args, task) if args.algorithm == EVOFC else None
    config_dict = run_config(args, task.objectives, task.name, evofc)
    task = with_criterion(task, config_dict["identity"])
    resume = run.check(config_dict, resume=args.resume, force=args.force)
    if args.resume and not resume:
        print(f"note: {args.out} has no checkpoint yet; starting from the beginning")
    return task, run, config_dict, resume


def cmd_search(args: argparse.Namespace) -> int:
    resolve_device(args.device)
    _resolve_defaults(args)
    if args.algorithm == "ccep":
        return _search_ccep(args)
    config = SearchConfig(pop_size=args.pop_size, generations=args.generations, seed=args.seed,
                          algorithm=args.algorithm)
    algorithm = DeepPruningES(es_config(args)) if args.algorithm == ES else None
    task, run, config_dict, resume = _open_run(args)
    n_obj = len(task.objectives)
    if args.algorithm == ES and n_obj < 2:
        raise ValueError(f"DeepPruningES needs two or more objectives (error and MACs); the "
                         f"problem file has {list(task.objectives)}")
    if args.knee_weights is not None and len(args.knee_weights) != n_obj:
        raise ValueError(f"--knee-weights has {len(args.knee_weights)} values; the problem has "
                         f"{n_obj} objectives ({', '.join(task.objectives)}): give one each")
    retrain = _partial(config_dict["identity"], task)
    evofc = _evofc_from(config_dict["identity"])
    data = task.load_data(DataRequest(root=args.data_root, seed=args.seed,
                                      eval_images=args.eval_images,
                                      test_images=args.test_images, download=args.download,
                                      load_train=retrain is not None or _needs_data(task, evofc),
                                      train_images=args.train_images))
    setup = make_problem(task, data, device=args.device, mode=args.mode,
                         progress=not args.quiet, max_macs_ratio=args.max_macs_ratio,
                         max_accuracy_drop=args.max_accuracy_drop, residual=args.residual,
                         retrain=retrain, seed=args.seed,
                         encoding="mask" if args.algorithm == ES else None, evofc=evofc,
                         execution=execution_of(args))
    if evofc is not None:
        algorithm = evofc_nsga2(setup.problem, evofc_config(args))  # type: ignore[arg-type]
    with contextlib.ExitStack() as stack:
        if _cluster_asked(args):
            setup = _distribute(args, setup, config_dict, run, resume, stack)
        elif not resume:
            run.create(config_dict)
        return _search_setup(args, setup, run, config, resume, algorithm, retrain, evofc)


def _search_setup(args: argparse.Namespace, setup: SearchSetup, run: RunDir,
                  config: SearchConfig, resume: bool, algorithm: object | None,
                  retrain: FinetuneConfig | None, evofc: EvoFCOptions | None) -> int:
    task, data = setup.task, setup.data
    scoring = (f"each candidate retrained {retrain.epochs} epochs on {len(data.train)} "
               f"training images (lr {retrain.lr}), then scored" if retrain else
               f"evaluation mode {setup.evaluator.mode}")
    if evofc is not None:
        scoring = evofc_scoring(evofc, setup, len(data.train))
    print(f"{task.name}: {setup.space}; {len(data.val)} hold-out images, "
          f"{len(data.test)} test images; {scoring} on {setup.evaluator.device}")
    front = run_search(setup, run, config, resume=resume, progress=not args.quiet,
                       algorithm=algorithm)  # type: ignore[arg-type]
    print(summary_table(run))
    print(f"\n{len(run.candidates())} candidates evaluated, {len(front)} on the front. "
          f"Run directory: {run.path}  (plots in {run.path / 'plots'})")
    return 0


def _cluster_asked(args: argparse.Namespace) -> bool:
    return args.workers is not None or args.scheduler is not None


def _distribute(args: argparse.Namespace, setup: SearchSetup, config_dict: dict, run: RunDir,
                resume: bool, stack: contextlib.ExitStack) -> SearchSetup:
    """The setup with its evaluator spread over a Dask cluster (local or joined)."""
    from moprune.distributed import (
        DaskEvaluator,
        local_cluster,
        require_distributed,
        torch_threads_per_worker,
    )

    if isinstance(setup.evaluator, InheritanceEvaluator):
        raise ValueError("--workers/--scheduler cannot spread EvoFC's weight inheritance: its "
                         "candidates train one shared supernet in order; use --training "
                         "scratch or none, or leave the cluster options out")
    distributed = require_distributed()
    if args.scheduler is not None:
        client = stack.enter_context(distributed.Client(args.scheduler, timeout="20s"))
        threads = None
        where = f"the Dask scheduler at {args.scheduler}"
    else:
        cluster = stack.enter_context(local_cluster(args.workers, args.device))
        client = stack.enter_context(distributed.Client(cluster))
        threads = torch_threads_per_worker(args.workers)
        where = f"a local Dask cluster of {args.workers} worker process(es)"
    if not resume:
        run.create(config_dict)

    def on_event(record: dict) -> None:
        done = 0
        if (run.path / PROGRESS).exists():
            done = int(run.read(PROGRESS).get("generations_done", 0))  # type: ignore[union-attr]
        run.append_jsonl(EVENTS, [{**record, "generation": done + 1,
                                   "time": time.strftime("%Y-%m-%dT%H:%M:%S")}])
        print(f"note: Dask workers changed in generation {done + 1} (left: "
              f"{', '.join(record['workers_left']) or 'none'}); their tasks ran elsewhere, "
              f"see {run.path / EVENTS}")

    try:
        client.wait_for_workers(1, timeout=60)
    except TimeoutError as exc:
        raise ValueError(f"{where} has no workers (none connected within 60 s); start some "
                         "with `dask worker ADDRESS`") from exc
    factory = functools.partial(worker_scorer, config_dict, args.device)
    scorer = DaskEvaluator(client, setup.evaluator, factory, torch_threads=threads,
                           on_event=on_event)
    stack.callback(scorer.close)
    n = len(client.scheduler_info()["workers"])
    print(f"evaluating on {where}: {n} worker(s), {scorer.chunk_size} candidate(s) per task")
    setup.problem.evaluator = scorer  # type: ignore[attr-defined]
    return dataclasses.replace(setup, evaluator=scorer)  # type: ignore[arg-type]


def evofc_scoring(evofc: EvoFCOptions, setup: SearchSetup, n_train: int) -> str:
    """One line on how an EvoFC search scores its candidates."""
    start = ("a random initialisation" if evofc.init == "random"
             else "the problem file's weights")
    if isinstance(setup.evaluator, InheritanceEvaluator):
        ev = setup.evaluator
        how = (f"weight inheritance: one supernet, a global schedule of {evofc.epochs} epoch(s) "
               f"on {n_train} training images (lr {evofc.lr}, {ev.total_steps} steps shared "
               f"by {evofc.planned} candidates, about {ev.total_steps / evofc.planned:.1f} "
               "each), then scored")
    elif evofc.training == "scratch":
        how = (f"every candidate re-initialised and trained {evofc.epochs} epoch(s) on "
               f"{n_train} training images (lr {evofc.lr}), then scored")
    else:
        how = "scored as is (no training)"
    line = (f"EvoFC from {start}; criteria {', '.join(evofc.criteria)}; ratio lower bounds "
            f"{evofc.lower}, upper bound {evofc.max_ratio}; {how}")
    if isinstance(setup.evaluator, InheritanceEvaluator) and \
            setup.evaluator.total_steps < evofc.planned:
        line += (f"\nwarning: the schedule has fewer steps ({setup.evaluator.total_steps}) than "
                 f"candidates ({evofc.planned}): most candidates train no step; raise "
                 "--search-epochs or --train-images")
    return line


def _search_ccep(args: argparse.Namespace) -> int:
    if _cluster_asked(args):
        raise ValueError("--workers/--scheduler are not available with --algorithm ccep (its "
                         "rounds evaluate every group's sub-populations in one local call); "
                         "leave them out")
    config = ccep_config(args)
    task, run, config_dict, resume = _open_run(args)
    recipe = config.recipe_for(task.finetune)
    data = task.load_data(DataRequest(root=args.data_root, seed=args.seed,
                                      eval_images=args.eval_images, test_images=args.test_images,
                                      load_train=recipe.epochs > 0 or _needs_data(task),
                                      download=args.download,
                                      train_images=args.train_images))
    setup = make_problem(task, data, device=args.device, mode=args.mode,
                         progress=False, encoding="mask", objectives=ccep_objectives,
                         seed=args.seed, execution=execution_of(args))
    if not resume:
        run.create(config_dict)
    cc = config.coevolution
    print(f"{task.name}: {setup.space}; {len(data.val)} hold-out images, {len(data.test)} test "
          f"images, {len(data.train)} training images; evaluation mode {setup.evaluator.mode} "
          f"on {setup.evaluator.device}")
    print(f"CCEP: up to {config.rounds} rounds of {cc.generations} generations x {cc.pop_size} "
          f"masks per group, then {recipe.epochs} fine-tuning epochs (lr {recipe.lr}, "
          f"{recipe.schedule} schedule)")
    run_ccep(setup, run, config, resume=resume, progress=not args.quiet)
    print(rounds_summary(run))
    print(f"\nRun directory: {run.path}  (plots in {run.path / 'plots'}; "
          f"`moprune export {run.path} --id ROUND --out FILE` exports a round)")
    return 0


ROUND_COLUMNS = (
    ("round", "round", "d"), ("val_accuracy", "val acc", ".2%"),
    ("test_accuracy", "test acc", ".2%"), ("spliced", "pruned, before FT", ".2%"),
    ("macs_reduction", "MACs red.", ".1%"), ("params_reduction", "params red.", ".1%"),
    ("groups", "groups pruned", "d"),
)


def rounds_summary(run: RunDir) -> str:
    """Table of a CCEP run's rounds and the knee of its front over rounds."""
    rows = rounds_table_rows(run)
    knee = pick(run.front(), run.baseline(), PickRule("knee"), ccep_objectives)
    return (format_table(rows, ROUND_COLUMNS)
            + f"\nknee of the front over rounds: round {knee['id']} (hold-out accuracy "
              "selects; test accuracy is reported only)")


def _member_row(name: str, record: dict, baseline: dict) -> dict:
    return {"name": name, "id": record.get("id"), "val_accuracy": record["val_accuracy"],
            "test_accuracy": record.get("test_accuracy"), "macs": record["macs"],
            "macs_reduction": 1 - record["macs"] / baseline["macs"], "params": record["params"],
            "params_reduction": 1 - record["params"] / baseline["params"]}


ROLE_LABELS = {"heavy": "heavy (most accurate)", "knee": "knee",
               "light": "light (cheapest)"}


def summary_table(run: RunDir) -> str:
    """Baseline vs the heavy, knee and light members of the front, as a text table."""
    baseline = run.baseline()
    models = run_trade_offs(run)
    rows = [_member_row("baseline", {**baseline, "id": None}, baseline)]
    rows += [_member_row(ROLE_LABELS[role], models[role], baseline)
             for role in ("heavy", "knee", "light")]
    note = "(MACs per image; FLOPs = 2 x MACs"
    evofc = run.config()["identity"].get(EVOFC)
    if evofc is not None and evofc["training"] == "scratch":
        note += "; accuracies after each candidate's training from scratch"
    elif baseline.get("scored_after_retraining"):
        note += "; accuracies after each candidate's partial retraining"
    if "inheritance" in baseline:
        note += ("; hold-out accuracies as scored during the search, test accuracies with the "
                 "supernet's final weights, BatchNorm re-estimated per plan; the full-width "
                 f"supernet reaches {baseline['supernet_test_accuracy']:.2%} test")
    return format_table(rows, MEMBER_COLUMNS) + f"\n{note})"


def cmd_plot(args: argparse.Namespace) -> int:
    run = RunDir(args.run)
    run.config()
    paths = write_plots(run, args.ids)
    for p in paths:
        print(p)
    return 0


def cmd_pick(args: argparse.Namespace) -> int:
    from moprune.cli import print_json

    if not args.knee and (args.knee_method is not None or args.knee_weights is not None):
        raise ValueError("--knee-method and --knee-weights define the knee: use them with --knee")
    run = RunDir(args.run)
    front, baseline = run.front(), run.baseline()
    objectives = tuple(run.config()["identity"]["objectives"])
    if args.list:
        rows = [_member_row("front", r, baseline) for r in front_records(front, objectives)]
        if args.json:
            print_json(front)
        else:
            print(format_table(rows, MEMBER_COLUMNS))
        return 0
    if args.knee:
        method, weights = run_knee(run.config())
        if args.knee_method is not None or args.knee_weights is not None:
            method, weights = args.knee_method or "distance", args.knee_weights
        rule = PickRule("knee", knee_method=method, knee_weights=weights)
    elif args.max_macs_ratio is not None:
        rule = PickRule("max_macs_ratio", args.max_macs_ratio)
    else:
        evofc = run.config()["identity"].get(EVOFC)
        if evofc is not None and evofc["init"] == "random":
            raise ValueError("--max-accuracy-drop compares with the starting network, which this "
                             "EvoFC run initialised at random; use --max-macs-ratio or --knee")
        rule = PickRule("max_accuracy_drop", args.max_accuracy_drop)
    chosen = pick(front, baseline, rule, objectives)
    if args.json:
        out = {k: chosen[k] for k in ("id", "macs", "params", "val_accuracy", "macs_ratio",
                                      "params_ratio", "generation", "genome")}
        out["test_accuracy"] = chosen.get("test_accuracy")
        out["flops"] = 2 * chosen["macs"]
        out["rule"] = rule.label
        out["units"] = "MACs and FLOPs per image; accuracies are fractions"
        print_json(out)
    else:
        print(format_table([_member_row("baseline", {**baseline, "id": None}, baseline),
                            _member_row(rule.label, chosen, baseline)], MEMBER_COLUMNS))
    return 0


def _export_recipe(args: argparse.Namespace, task: PruningTask) -> FinetuneConfig:
    if args.recipe == ES:
        cfg = final_recipe(task.finetune, args.finetune_epochs)
    elif args.recipe == "fast":
        cfg = fast_recipe(task.finetune, args.finetune_epochs)
    else:
        cfg = dataclasses.replace(task.finetune, epochs=args.finetune_epochs)
    return cfg if args.lr is None else dataclasses.replace(cfg, lr=args.lr)


def cmd_export(args: argparse.Namespace) -> int:
    run = RunDir(args.run)
    config = run.config()
    if args.start == "scratch" and args.finetune_epochs == 0:
        raise ValueError("--start scratch re-initialises the network: give --finetune-epochs "
                         "N > 0 to train it")
    if args.recipe == ES and args.finetune_epochs == 0:
        raise ValueError("--recipe deeppruninges is a fine-tuning recipe: give --finetune-epochs "
                         "N > 0 (published: 200)")
    if args.recipe == "fast" and args.finetune_epochs == 0:
        raise ValueError("--recipe fast is a fine-tuning recipe: give --finetune-epochs N > 0")
    if args.elites:
        if args.out.exists() and not args.out.is_dir():
            raise ValueError(f"--elites writes three models and a table into a folder; "
                             f"{str(args.out)!r} is a file: pass a folder")
        run.front()  # an interrupted run fails here, before any data is loaded
    record = None if args.elites else (
        resolve_role(run, args.id) if isinstance(args.id, str) else run.record(args.id))
    device = args.device or config["device"]
    resolve_device(device)
    seed = config["identity"]["seed"]
    setup = setup_from_run(run, device=device, load_train=args.finetune_epochs > 0,
                           progress=not args.quiet)
    recipe = _export_recipe(args, setup.task)
    if args.elites:
        exported = export_trade_offs(setup, run, args.out, args.finetune_epochs, recipe, seed,
                                     device, progress=not args.quiet, start=args.start,
                                     execution=execution_of(args))
        print(trade_offs_table(exported, run.baseline()))
        print(f"\nexported heavy, knee and light to {args.out} (elites.md: the table; "
              f"elites.png: the plot)")
        return 0
    assert record is not None
    metrics = export_candidate(setup, record, args.out, finetune_epochs=args.finetune_epochs,
                               seed=seed, device=device, progress=not args.quiet,
                               finetune_config=recipe,
                               model=start_model(setup, run, record, args.start, seed),
                               start=args.start, execution=execution_of(args))
    baseline = metrics["baseline"]
    print(f"exported candidate {record['id']} to {args.out}")
    print(f"  MACs {metrics['macs']:,} ({1 - metrics['macs_ratio']:.1%} fewer than "
          f"{baseline['macs']:,}), params {metrics['params']:,} "
          f"({1 - metrics['params_ratio']:.1%} fewer)")
    print(f"  hold-out accuracy {metrics['val_accuracy']:.2%} (search: "
          f"{metrics['search_val_accuracy']:.2%}), test accuracy {metrics['test_accuracy']:.2%}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    task = load_problem_file(args.problem, _options(args.weights))
    policy = task.policy
    if args.residual:
        policy = dataclasses.replace(policy, residual=True)
    space = PruningSpace.from_model(task.model, task.input_shape, policy)
    cost = CostModel(space, task.model)
    shares = cost.share_of_macs()
    rows = [{"i": g.index, "name": g.name, "channels": g.size,
             "kind": "residual" if g.residual else "internal", "share": shares[g.index]}
            for g in space.groups]
    print(f"{task.name}: {task.description}")
    print(f"input {task.input_shape}; {space}; MACs {int(cost.base.macs[0]):,} per image "
          f"(FLOPs = 2 x MACs), params {int(cost.base.params[0]):,}")
    print(format_table(rows, (("i", "#", "d"), ("name", "group (root layer)", ""),
                              ("channels", "channels", "d"), ("kind", "kind", ""),
                              ("share", "share of MACs", ".2%"))))
    print("share of MACs: the part of the network's MACs that scales with the group's width")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    task = load_problem_file(args.problem, _options(args.weights))
    data = task.load_data(DataRequest(root=args.data_root, seed=args.seed, load_train=True,
                                      download=args.download))
    cfg = dataclasses.replace(task.finetune, epochs=args.epochs)
    if args.lr is not None:
        cfg = dataclasses.replace(cfg, lr=args.lr)
    model = task.model.to(device)
    before, _ = evaluate_accuracy(model, data.val, data.normalization, device=device)
    finetune(model, data.train, data.normalization, cfg,
             generator=torch.Generator().manual_seed(args.seed), device=device, val=data.val,
             progress=not args.quiet, execution=execution_of(args))
    after, _ = evaluate_accuracy(model, data.val, data.normalization, device=device)
    test, _ = evaluate_accuracy(model, data.test, data.normalization, device=device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.cpu().state_dict(), "val_accuracy": after,
                "test_accuracy": test, "seed": args.seed,
                "finetune_config": dataclasses.asdict(cfg)}, args.out)
    print(f"hold-out accuracy {before:.2%} -> {after:.2%}; test accuracy {test:.2%}; "
          f"saved {args.out} (use it with --weights)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from moprune.demo import run_demo

    return run_demo(args.out, seed=args.seed, progress=not args.quiet)


__all__ = ["RunDirError", "setup_from_run", "summary_table"]
