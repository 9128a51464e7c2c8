"""``moprune search``: run (or resume) a method on a problem file into a run directory.

Everything that can be checked is checked before any data is loaded or any file written: the
option values, the method's options (from its own options class), the problem file, the run
directory. Then the method builds its setup, the run directory is created, and the method
runs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import time

from moprune.cli.common import execution_of
from moprune.core.execution import Execution, resolve_device
from moprune.errors import ConfigError
from moprune.methods import all_methods, resolve_method
from moprune.methods.base import BuildEnv, Method, MethodOptions, options_from_args
from moprune.methods.rebuild import worker_scorer
from moprune.runs.rundir import EVENTS, PROGRESS, RunDir, git_hash, run_files, versions
from moprune.tasks.setup import SearchSetup
from moprune.tasks.task import (
    DataRequest,
    PruningTask,
    TaskOptions,
    file_sha256,
    load_problem_file,
    load_problem_module,
    with_criterion,
)


def run_config(args: argparse.Namespace, method: Method, options: MethodOptions,
               task: PruningTask) -> dict:
    """The config.json of a search; ``identity`` must match for ``--resume``."""
    problem = args.problem.resolve()
    common = {
        "problem": str(problem), "problem_sha256": file_sha256(problem),
        "data_root": str(args.data_root.resolve()) if args.data_root else None,
        "weights": str(args.weights.resolve()) if args.weights else None,
        "weights_sha256": file_sha256(args.weights) if args.weights else None,
        "eval_images": args.eval_images, "test_images": args.test_images, "seed": args.seed,
        "train_images": args.train_images, "algorithm": args.algorithm,
        "max_macs_ratio": args.max_macs_ratio, "max_accuracy_drop": args.max_accuracy_drop,
        # resolved on the device: bf16 and fp32 scores must not mix in one run
        "precision": Execution(precision=args.precision).resolve(args.device).precision,
    }
    identity = {**common, **method.identity(options, task, common)}
    return {"identity": identity, "device": args.device, "mode": args.mode,
            "execution": execution_of(args).to_dict(),
            "cluster": {"workers": args.workers, "scheduler": args.scheduler},
            "download": args.download, "versions": versions(), "git": git_hash(),
            "title": f"{task.name} (seed {args.seed})",
            "files": run_files(method.extra_files)}


def cmd_search(args: argparse.Namespace) -> int:
    resolve_device(args.device)
    if args.problem.is_file():
        load_problem_module(args.problem)  # methods/algorithms/objectives it registers
    method = resolve_method(args.algorithm)
    options = options_from_args(method, args, all_methods())
    # a run that re-initialises the network lets the problem file skip its default weights
    task = load_problem_file(args.problem, TaskOptions(
        weights=args.weights.resolve() if args.weights else None,
        pretrained=options.pretrained()))
    config = run_config(args, method, options, task)
    ident = config["identity"]
    task = with_criterion(task, ident.get("criterion"), ident.get("criterion_sha256"))
    if args.workers is not None or args.scheduler is not None:
        method.check_cluster(ident)
    run = RunDir(args.out)
    run.check(config, resume=args.resume, force=args.force)  # before anything is written
    with run.lock(f"moprune search {args.problem} --algorithm {method.name}"):
        resume = run.check(config, resume=args.resume, force=args.force)  # now it is ours
        if args.resume and not resume:
            print(f"note: {args.out} has no checkpoint yet; starting from the beginning")
        _search(args, method, options, task, run, config, resume)
    print(method.report(run))
    return 0


def _search(args: argparse.Namespace, method: Method, options: MethodOptions,
            task: PruningTask, run: RunDir, config: dict, resume: bool) -> None:
    """Load the data, build the setup, create (or reopen) the run and search."""
    ident = config["identity"]
    data = task.load_data(DataRequest(
        root=args.data_root, seed=args.seed, eval_images=args.eval_images,
        test_images=args.test_images, download=args.download,
        load_train=method.needs_training_data(ident, task, searching=True),
        train_images=args.train_images))
    env = BuildEnv(device=args.device, mode=args.mode, progress=not args.quiet,
                   execution=execution_of(args))
    setup = method.build(task, data, ident, env)
    with contextlib.ExitStack() as stack:
        if args.workers is not None or args.scheduler is not None:
            setup = _distribute(args, setup, config, run, resume, stack)
        elif not resume:
            _create(run, config)
        print(method.describe(setup, ident))
        method.run(setup, run, ident, resume=resume, progress=not args.quiet, options=options)


def _create(run: RunDir, config: dict) -> None:
    removed = run.create(config)
    if removed:
        print(f"replaced the run in {run.path}: removed its {len(removed)} file(s) "
              f"({', '.join(removed[:6])}{', ...' if len(removed) > 6 else ''})")


def _distribute(args: argparse.Namespace, setup: SearchSetup, config: dict, run: RunDir,
                resume: bool, stack: contextlib.ExitStack) -> SearchSetup:
    """The setup with its scorer spread over a Dask cluster (local or joined)."""
    from moprune.evaluation.distributed import (
        DaskEvaluator,
        local_cluster,
        require_distributed,
        torch_threads_per_worker,
    )

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
        _create(run, config)

    def on_event(record: dict) -> None:
        done = 0
        if (run.path / PROGRESS).exists():
            progress = run.read(PROGRESS)
            if isinstance(progress, dict):
                done = int(progress.get("generations_done", 0))
        run.append_jsonl(EVENTS, [{**record, "generation": done + 1,
                                   "time": time.strftime("%Y-%m-%dT%H:%M:%S")}])
        print(f"note: Dask workers changed in generation {done + 1} (left: "
              f"{', '.join(record['workers_left']) or 'none'}); their tasks ran elsewhere, "
              f"see {run.path / EVENTS}")

    try:
        client.wait_for_workers(1, timeout=60)
    except TimeoutError as exc:
        raise ConfigError(f"{where} has no workers (none connected within 60 s); start some "
                          "with `dask worker ADDRESS`") from exc
    factory = functools.partial(worker_scorer, config, args.device)
    scorer = DaskEvaluator(client, setup.evaluator, factory, torch_threads=threads,
                           on_event=on_event)
    stack.callback(scorer.close)
    n = len(client.scheduler_info()["workers"])
    print(f"evaluating on {where}: {n} worker(s), {scorer.chunk_size} candidate(s) per task")
    setup.problem.evaluator = scorer
    return dataclasses.replace(setup, evaluator=scorer)


__all__ = ["cmd_search", "run_config"]
