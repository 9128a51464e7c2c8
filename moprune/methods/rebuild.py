"""A finished (or interrupted) run's setup, rebuilt from its ``config.json``.

``moprune export`` rebuilds the run to export a candidate; Dask workers rebuild it to score
candidates. The run's method (``identity["algorithm"]``) is resolved first; a method or
algorithm that the run's problem file registered is found by importing that file.
"""

from __future__ import annotations

from pathlib import Path

from moprune.core.execution import Execution
from moprune.data.datasets import DataBundle
from moprune.errors import UnknownNameError
from moprune.evaluation.scorer import Scorer
from moprune.methods import resolve_method
from moprune.methods.base import BuildEnv, Method
from moprune.runs.rundir import RunDir
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


def method_of(config: dict) -> Method:
    """The method of a run's config (importing its problem file if it registered it)."""
    ident = config["identity"]
    name = ident.get("algorithm", "nsga2")
    try:
        return resolve_method(name)
    except UnknownNameError:
        problem = Path(ident["problem"])
        if not problem.is_file():
            raise
        load_problem_module(problem)  # a method or algorithm the problem file registers
        return resolve_method(name)


def stored_execution(config: dict) -> Execution:
    """A run's execution settings (runs made before they were recorded ran fp32, NCHW)."""
    if "execution" not in config:
        return Execution("fp32", channels_last=False)
    return Execution(**config["execution"])


def task_of(config: dict, method: Method) -> PruningTask:
    """The run's task: its problem file (warning if it changed) with the run's criterion."""
    ident = config["identity"]
    problem = Path(ident["problem"])
    if problem.is_file() and file_sha256(problem) != ident["problem_sha256"]:
        print(f"warning: {problem} changed since the run was made; results may differ")
    weights = Path(ident["weights"]) if ident["weights"] else None
    if weights is not None and weights.is_file() and \
            file_sha256(weights) != ident.get("weights_sha256"):
        print(f"warning: {weights} changed since the run was made; results may differ")
    task = load_problem_file(problem, TaskOptions(weights=weights,
                                                  pretrained=method.pretrained(ident)))
    return with_criterion(task, ident.get("criterion"), ident.get("criterion_sha256"))


def load_data(task: PruningTask, config: dict, load_train: bool) -> DataBundle:
    """The run's data: the same seeded hold-out split and test subset."""
    ident = config["identity"]
    return task.load_data(DataRequest(
        root=Path(ident["data_root"]) if ident["data_root"] else None, seed=ident["seed"],
        eval_images=ident["eval_images"], test_images=ident["test_images"],
        load_train=load_train, download=config.get("download", False),
        train_images=ident.get("train_images")))


def setup_from_config(config: dict, device: str | None = None, load_train: bool = False,
                      progress: bool = True) -> SearchSetup:
    """The problem setup a run's config describes (problem file, weights, data, options)."""
    method = method_of(config)
    ident = config["identity"]
    task = task_of(config, method)
    needs = method.needs_training_data(ident, task, searching=False)
    data = load_data(task, config, load_train or needs)
    env = BuildEnv(device=device or config["device"], mode=config["mode"], progress=progress,
                   execution=stored_execution(config))
    return method.build(task, data, ident, env)


def setup_from_run(run: RunDir, device: str | None = None, load_train: bool = False,
                   progress: bool = True) -> SearchSetup:
    """Rebuild the problem setup of a finished run, in its end-of-search state."""
    config = run.config()
    setup = setup_from_config(config, device, load_train, progress)
    method_of(config).rebuild(setup, run)  # e.g. EvoFC's supernet (refuses an unfinished run)
    return setup


def worker_scorer(config: dict, device: str) -> Scorer:
    """What a Dask worker scores with: the run's scorer, built from its config."""
    return setup_from_config(config, device, progress=False).evaluator


__all__ = ["load_data", "method_of", "setup_from_config", "setup_from_run", "stored_execution",
           "task_of", "worker_scorer"]
