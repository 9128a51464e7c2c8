"""Distributed evaluation on a real local Dask cluster (2 worker processes on loopback).

Equality with single-process evaluation (Python API and ``moprune search --workers``), the
evaluator built once per worker, a worker killed mid-generation (its process ended by its
id) with the run completing and saying so, and a resumable run after the scheduler is
stopped.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import digits_eval_setup, one_torch_thread, random_plan

from moprune.cli.main import main
from moprune.core.execution import Execution
from moprune.core.plan import PruningPlan, masks_matrix
from moprune.evaluation.evaluator import Evaluator
from moprune.runs.rundir import EVENTS, RunDir

distributed = pytest.importorskip("distributed")
cloudpickle = pytest.importorskip("cloudpickle")

from moprune.evaluation.distributed import DaskEvaluator  # noqa: E402

# this module's helpers travel to the workers by value (tests/ is not importable there)
cloudpickle.register_pickle_by_value(sys.modules[__name__])

DIGITS = Path(__file__).resolve().parents[2] / "problems" / "digits_demo.py"
SLOW_PROBLEM = '''
import time
from moprune.tasks.digits import build_task as digits_task

DELAY = {delay}


def build_task(options):
    """The digits demo problem, every forward pass {delay} s slower."""
    task = digits_task(options)
    task.model.register_forward_pre_hook(lambda module, args: time.sleep(DELAY))
    return task
'''


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    yield from one_torch_thread()


def new_cluster():
    return distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                    dashboard_address=":0", host="127.0.0.1")


@pytest.fixture(scope="module")
def client():
    with new_cluster() as cluster, distributed.Client(cluster) as c:
        yield c


def masks_of(space, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    plans = [PruningPlan.full(space)] + [random_plan(space, rng, p)
                                         for p in rng.uniform(0.3, 0.95, n - 1)]
    return masks_matrix(space, plans)


# ---------------------------------------------------------------------------- Python API


def test_cluster_results_equal_single_process(client) -> None:
    model, space, val, norm = digits_eval_setup(n_images=64)
    local = Evaluator(model, space, val, norm, mode="slice", execution=Execution("fp32"))
    masks = masks_of(space, 12)
    dask_ev = DaskEvaluator.from_evaluator(client, local, torch_threads=1)
    try:
        remote = dask_ev.evaluate_masks(masks)
        again = dask_ev.evaluate_masks(masks[:4])  # cached on the driver: nothing travels
        ref = Evaluator(model, space, val, norm, mode="slice",
                        execution=Execution("fp32")).evaluate_masks(masks)
        np.testing.assert_array_equal(remote.accuracy, ref.accuracy)
        np.testing.assert_array_equal(remote.loss, ref.loss)
        np.testing.assert_array_equal(again.accuracy, ref.accuracy[:4])
        assert dask_ev.stats.evaluations == 12 and dask_ev.stats.cache_hits == 4
        assert dask_ev.calls == 1
        # attributes a problem reads come from the local evaluator
        assert dask_ev.space is space and dask_ev.mode == "slice" and dask_ev.n_images == 64
        assert dask_ev.baseline().accuracy[0] == ref.accuracy[0]
    finally:
        dask_ev.close()


class CountingFactory:
    """Builds the digits evaluator and appends the worker's pid to a file each time."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def __call__(self) -> Evaluator:
        with self.log.open("a") as f:
            f.write(f"{os.getpid()}\n")
        model, space, val, norm = digits_eval_setup(n_images=32)
        return Evaluator(model, space, val, norm, mode="slice", execution=Execution("fp32"))


def test_each_worker_builds_the_evaluator_once_per_run(client, tmp_path) -> None:
    log = tmp_path / "builds.txt"
    model, space, val, norm = digits_eval_setup(n_images=32)
    local = Evaluator(model, space, val, norm, mode="slice")
    dask_ev = DaskEvaluator(client, local, CountingFactory(log))
    try:
        for seed in range(3):  # three generations
            dask_ev.evaluate_masks(masks_of(space, 8, seed=seed + 1))
        pids = log.read_text().split()
        assert sorted(pids) == sorted(str(p) for p in dask_ev.workers().values())
        assert len(pids) == 2  # one build per worker, not per generation or task
    finally:
        dask_ev.close()


def test_a_factory_that_fails_is_a_clear_error(client) -> None:
    model, space, val, norm = digits_eval_setup(n_images=8)
    local = Evaluator(model, space, val, norm)
    with pytest.raises(RuntimeError, match="the Dask workers could not build the evaluator"):
        DaskEvaluator(client, local, broken_factory)


def broken_factory() -> Evaluator:
    raise FileNotFoundError("no such problem file on this worker")


def test_bad_chunk_size_is_refused(client) -> None:
    model, space, val, norm = digits_eval_setup(n_images=8)
    with pytest.raises(ValueError, match="chunk_size must be >= 1; got 0"):
        DaskEvaluator.from_evaluator(client, Evaluator(model, space, val, norm), chunk_size=0)


# ---------------------------------------------------------------------------- command line


def search_args(problem: Path, out: Path, weights: Path, *extra: str) -> list[str]:
    return ["search", str(problem), "--weights", str(weights), "--pop-size", "8",
            "--generations", "3", "--eval-images", "96", "--test-images", "96",
            "--out", str(out), "--quiet", "--mode", "slice", "--precision", "fp32", *extra]


def records(run: Path) -> list[tuple]:
    return [(r["id"], r["genome"], r["val_accuracy"], r["macs"])
            for r in RunDir(run).candidates()]


def front(run: Path) -> list[tuple]:
    return [(r["id"], r["val_accuracy"], r["test_accuracy"]) for r in RunDir(run).front()]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, digits_weights) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    assert main(search_args(DIGITS, out, digits_weights)) == 0
    return out


def test_search_with_workers_equals_single_process(single_process, tmp_path, digits_weights,
                                                   capsys) -> None:
    out = tmp_path / "run"
    assert main(search_args(DIGITS, out, digits_weights, "--workers", "2")) == 0
    assert "a local Dask cluster of 2 worker process(es)" in capsys.readouterr().out
    assert records(out) == records(single_process)
    assert front(out) == front(single_process)
    config = json.loads((out / "config.json").read_text())
    assert config["cluster"] == {"workers": 2, "scheduler": None}
    assert not (out / EVENTS).exists()  # nothing happened besides the results


def slow_problem(tmp_path: Path, delay: float) -> Path:
    path = tmp_path / "slow_digits.py"
    path.write_text(SLOW_PROBLEM.format(delay=delay))
    return path


def run_in_thread(argv: list[str]) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def target() -> None:
        try:
            result["status"] = main(argv)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def wait_for(condition, timeout: float = 60.0, what: str = "") -> None:
    end = time.time() + timeout
    while not condition():
        if time.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_a_worker_killed_mid_generation(single_process, tmp_path, digits_weights) -> None:
    problem = slow_problem(tmp_path, 0.25)
    out = tmp_path / "run"
    with new_cluster() as cluster, distributed.Client(cluster) as c:
        thread, result = run_in_thread(search_args(problem, out, digits_weights, "--scheduler",
                                                   cluster.scheduler_address))

        def busy_worker() -> str | None:
            processing = c.processing()
            for addr, keys in processing.items():
                if any(str(k).startswith("moprune-eval") for k in keys):
                    return addr
            return None

        # wait until generation 2 is being evaluated, then end a busy worker's process
        wait_for(lambda: (out / "progress.json").exists() and busy_worker() is not None,
                 what="a worker evaluating generation 2")
        victim = busy_worker()
        pid = c.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
        thread.join(timeout=180)
    assert not thread.is_alive()
    assert result.get("status") == 0, result
    events = RunDir(out).read_jsonl(EVENTS)
    assert events and victim in events[0]["workers_left"]
    assert events[0]["generation"] >= 2
    # same results as the single-process run of the (not slowed) digits problem
    assert records(out) == records(single_process)
    assert front(out) == front(single_process)


def test_a_lost_scheduler_is_a_clear_error_and_the_run_resumes(single_process, tmp_path,
                                                               digits_weights, capsys) -> None:
    problem = slow_problem(tmp_path, 0.1)
    out = tmp_path / "run"
    cluster = new_cluster()
    thread, result = run_in_thread(search_args(problem, out, digits_weights, "--scheduler",
                                               cluster.scheduler_address))
    wait_for(lambda: (out / "progress.json").exists(), what="generation 1's checkpoint")
    cluster.close()
    thread.join(timeout=180)
    assert not thread.is_alive()
    assert result.get("status") == 2, result  # the CLI's error exit, with the message below
    assert "lost the Dask scheduler" in capsys.readouterr().err
    assert (out / "checkpoint.pkl").exists()
    done = RunDir(out).read("progress.json")["generations_done"]
    assert 1 <= done < 3
    # resume on a new local cluster: the same run as an uninterrupted single-process one
    assert main(search_args(problem, out, digits_weights, "--workers", "2", "--resume")) == 0
    assert records(out) == records(single_process)
    assert front(out) == front(single_process)


def test_cluster_options_are_refused_with_ccep(tmp_path, digits_weights, capsys) -> None:
    out = tmp_path / "run"
    status = main(["search", str(DIGITS), "--weights", str(digits_weights), "--algorithm",
                   "ccep", "--workers", "2", "--out", str(out), "--quiet"])
    assert status != 0
    assert "--workers/--scheduler are not available with --algorithm ccep" in \
        capsys.readouterr().err
    assert not out.exists()


def test_workers_and_scheduler_are_exclusive(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["search", str(DIGITS), "--workers", "2", "--scheduler", "tcp://x:1", "--out",
              "x"])
    assert "not allowed with argument" in capsys.readouterr().err




class ThreadsScorer:
    """Reports, as its 'accuracy', the torch threads of the thread that runs the task."""

    def evaluate_masks(self, masks):
        import numpy as np
        import torch

        from moprune.evaluation.scorer import EvalResult

        n = len(masks)
        return EvalResult(accuracy=np.full(n, float(torch.get_num_threads())),
                          loss=np.zeros(n))


def test_tasks_run_with_the_workers_torch_threads_and_fast_malloc(client) -> None:
    model, space, val, norm = digits_eval_setup(n_images=8)
    local = Evaluator(model, space, val, norm)
    dask_ev = DaskEvaluator(client, local, ThreadsScorer, torch_threads=2)
    try:
        assert set(dask_ev.score(masks_of(space, 4)).accuracy) == {2.0}
    finally:
        dask_ev.close()
    # the nanny's MALLOC_TRIM_THRESHOLD_ is undone on every worker (glibc)
    from moprune.evaluation.distributed import relax_malloc

    assert all(client.run(relax_malloc).values())


def test_a_worker_with_several_threads_evaluates_one_candidate_at_a_time(tmp_path) -> None:
    """Tasks run concurrently on a 4-thread worker; the shared scorer is used in turn."""
    model, space, val, norm = digits_eval_setup(n_images=32)
    masks = masks_of(space, 16, seed=5)
    for mode in ("gate", "slice"):
        local = Evaluator(model, space, val, norm, mode=mode, execution=Execution("fp32"))
        ref = Evaluator(model, space, val, norm, mode=mode,
                        execution=Execution("fp32")).evaluate_masks(masks)
        with distributed.LocalCluster(n_workers=1, threads_per_worker=4, processes=True,
                                      dashboard_address=":0", host="127.0.0.1") as cluster, \
                distributed.Client(cluster) as c:
            dask_ev = DaskEvaluator.from_evaluator(c, local, chunk_size=1)
            res = dask_ev.evaluate_masks(masks)
        np.testing.assert_array_equal(res.accuracy, ref.accuracy, err_msg=mode)
        np.testing.assert_array_equal(res.loss, ref.loss, err_msg=mode)
