"""Population evaluation spread over a Dask cluster.

:class:`DaskEvaluator` is a drop-in for the evaluators a pruning problem uses
(:class:`~moprune.evaluation.scorer.Scorer`). Every worker builds the run's scorer once,
from a picklable factory shipped in a worker plugin (the model and the evaluation data are loaded
once per run, and again only on a worker that joins later, e.g. one restarted by its nanny).
A population travels as keep-mask rows (the decoded genomes, one bit per channel: 126
bytes for ResNet-56) and comes back as two small float arrays per task; the driver keeps
the cache of results, so duplicates never travel.

Faults: a worker that dies mid-generation loses its tasks to the scheduler, which runs them
on the other workers; the call still returns every result, and ``on_event`` is told which
workers left (the CLI writes it to the run directory's ``events.jsonl``). A scheduler that
goes away raises :class:`SchedulerLostError`; the run directory keeps every finished
generation, so ``--resume`` continues.

Results equal single-process evaluation exactly when every candidate is evaluated on its
own (slice mode, the CPU default, and partial retraining): a candidate's result does not
depend on the worker or on its neighbours. In gate mode the tasks hold as many candidates
as one pass of the local evaluator would, but a population split differently can round
differently in the last bits.

Needs ``pip install 'moprune[distributed]'`` (``dask[distributed]``; ``dask-cuda`` for one
worker per local GPU).
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from moprune.core.execution import Execution
from moprune.core.space import PruningSpace
from moprune.data.datasets import DataBundle, Split
from moprune.errors import (
    ClusterError,
    ConfigError,
    DistributedUnavailableError,
    SchedulerLostError,
)
from moprune.evaluation.evaluator import Evaluator
from moprune.evaluation.scorer import EvalResult, EvalStats, MaskCache, Scorer, evaluate_cached

try:  # optional: only the distributed extra installs it
    from distributed import WorkerPlugin
except ImportError:  # pragma: no cover - exercised without the extra
    WorkerPlugin = object  # type: ignore[assignment,misc]

INSTALL_HINT = "pip install 'moprune[distributed]'"
PLUGIN_PREFIX = "moprune-evaluator-"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def require_distributed() -> Any:
    """The ``distributed`` module, or an ImportError that says how to install it."""
    try:
        import distributed
    except ImportError as exc:
        raise DistributedUnavailableError(
            "distributed evaluation needs dask.distributed, which is not installed; install "
            f"it with {INSTALL_HINT}") from exc
    return distributed


class EvaluatorPlugin(WorkerPlugin):
    """Builds the run's scorer once on every worker (and on workers that join later).

    Args:
        key: Identifies the run; the plugin is registered as ``moprune-evaluator-<key>``.
        factory: A picklable callable with no arguments that returns the scorer.
        torch_threads: Torch threads of the tasks on the worker (None: the worker's default,
            1 under a Dask nanny, which sets ``OMP_NUM_THREADS=1``).

    """

    def __init__(self, key: str, factory: Callable[[], Scorer],
                 torch_threads: int | None = None) -> None:
        self.name = PLUGIN_PREFIX + key
        self.factory = factory
        self.torch_threads = torch_threads
        self.scorer: Scorer | None = None
        self.lock: threading.Lock | None = None

    def setup(self, worker: Any) -> None:
        relax_malloc()
        # a worker with several threads runs tasks at once; a scorer is not thread-safe
        # (gates, sliced weights and seeds are per-model state): one evaluation at a time
        self.lock = threading.Lock()
        self.scorer = self.factory()

    def teardown(self, worker: Any) -> None:
        self.scorer = None


def relax_malloc() -> bool:
    """Undo the Dask nanny's ``MALLOC_TRIM_THRESHOLD_=65536`` for this process (glibc).

    That setting also fixes glibc's mmap threshold at 128 KiB, so every activation tensor is
    a fresh ``mmap`` with page faults: torch forward passes ran 2-3x slower on the workers
    than in one process. Raising both thresholds restores the one-process speed. Returns
    whether it applied (False off glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # 64 MiB keeps batches of 512 CIFAR activations off mmap; older glibc refuses more
    # than 32 MiB on 64-bit, so fall back to that; both thresholds are set either way
    mmap_ok = libc.mallopt(M_MMAP_THRESHOLD, 64 * 2**20) or libc.mallopt(M_MMAP_THRESHOLD,
                                                                         32 * 2**20)
    trim_ok = libc.mallopt(M_TRIM_THRESHOLD, 256 * 2**20)
    return bool(mmap_ok and trim_ok)


def evaluate_on_worker(plugin_name: str, packed: np.ndarray, n_channels: int
                       ) -> tuple[np.ndarray, np.ndarray, str, int]:
    """The task: accuracy and loss of keep-masks by this worker's scorer, its address and pid.

    ``packed`` holds the masks as ``np.packbits`` rows (one bit per channel).
    """
    from distributed import get_worker

    worker = get_worker()
    plugin = cast(EvaluatorPlugin, worker.plugins[plugin_name])
    scorer = plugin.scorer
    if scorer is None:
        raise ClusterError(f"the worker {worker.address} has no moprune scorer; its plugin "
                           "setup failed (see the worker's log)")
    if plugin.torch_threads and torch.get_num_threads() != plugin.torch_threads:
        # per task thread: set_num_threads in the plugin's setup (the event loop's thread)
        # does not reach the executor threads that run the tasks
        torch.set_num_threads(plugin.torch_threads)
    masks = np.unpackbits(packed, axis=1, count=n_channels).astype(bool)
    assert plugin.lock is not None  # set up with the plugin
    with plugin.lock:
        result = scorer.evaluate_masks(masks)
    return result.accuracy, result.loss, worker.address, os.getpid()


class DaskEvaluator:
    """Evaluate populations on a Dask cluster; the driver's ``local`` scorer does the rest.

    Args:
        client: A connected ``distributed.Client``.
        local: The scorer the driver built (baseline, attributes, the run's final test
            evaluation); the workers build an equal one with ``factory``.
        factory: Picklable, no arguments, returns the scorer on a worker.
        chunk_size: Candidates per task (default: one; gate mode: one pass of ``local``).
        torch_threads: Torch threads per worker (default: the worker's own).
        on_event: Called with a dict when workers leave or join during an evaluation.
        key: Name of the run's plugin (default: random).

    """

    def __init__(self, client: Any, local: Scorer, factory: Callable[[], Scorer],
                 chunk_size: int | None = None, torch_threads: int | None = None,
                 on_event: Callable[[dict], None] | None = None, key: str | None = None) -> None:
        require_distributed()
        self.client = client
        self.local = local
        self.on_event = on_event
        self.stats = EvalStats()
        self.calls = 0
        self._cache: MaskCache = {}
        if chunk_size is None:
            chunk_size = local.candidates_per_pass
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1; got {chunk_size}")
        self.chunk_size = chunk_size
        self.plugin = EvaluatorPlugin(key or uuid.uuid4().hex[:12], factory, torch_threads)
        self._register()

    @classmethod
    def from_evaluator(cls, client: Any, evaluator: Evaluator, chunk_size: int | None = None,
                       torch_threads: int | None = None,
                       on_event: Callable[[dict], None] | None = None) -> DaskEvaluator:
        """Spread an :class:`Evaluator`: its model, data and settings are shipped once."""
        factory = functools.partial(Evaluator, evaluator.model, evaluator.space,
                                    evaluator.data, evaluator.normalization,
                                    device=str(evaluator.device), mode=evaluator.mode,
                                    batch_size=evaluator.batch_size,
                                    execution=evaluator.execution)
        return cls(client, evaluator, factory, chunk_size, torch_threads, on_event)

    def _register(self) -> None:
        try:
            self.client.register_plugin(self.plugin)
        except Exception as exc:
            raise ClusterError(f"the Dask workers could not build the evaluator ({exc}); "
                               "every worker needs moprune, the problem file and the data at "
                               "the same paths as here") from exc

    # ---- the scorer contract (moprune.evaluation.scorer.Scorer), the rest from ``local`` ---

    @property
    def model(self) -> nn.Module:
        return self.local.model

    @property
    def space(self) -> PruningSpace:
        return self.local.space

    @property
    def device(self) -> torch.device:
        return self.local.device

    @property
    def mode(self) -> str:
        return self.local.mode

    @property
    def execution(self) -> Execution:
        return self.local.execution

    @property
    def data(self) -> Split:
        return self.local.data

    @property
    def candidates_per_pass(self) -> int:
        return self.local.candidates_per_pass

    @property
    def n_images(self) -> int:
        return len(self.local.data)

    def baseline(self) -> EvalResult:
        return self.local.baseline()

    def evaluate_on(self, masks: np.ndarray, split: Split, progress: bool = False
                    ) -> EvalResult:
        """The candidates on another split, measured by the driver's local scorer."""
        return self.local.evaluate_on(masks, split, progress)

    def reference_evaluator(self, split: Split, progress: bool = False) -> Evaluator:
        return self.local.reference_evaluator(split, progress)

    def candidate_model(self, mask: np.ndarray) -> nn.Module | None:
        return self.local.candidate_model(mask)

    def report(self, data: DataBundle) -> dict:
        return self.local.report(data)

    def state_dict(self) -> dict:
        return self.local.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.local.load_state_dict(state)

    def workers(self) -> dict[str, int]:
        """``{address: pid}`` of the cluster's workers now."""
        return self.client.run(os.getpid)

    def evaluate_masks(self, masks: np.ndarray) -> EvalResult:
        """Accuracy and loss of each row of a keep-mask matrix, computed on the cluster."""
        return evaluate_cached(masks, self.space.n_channels, self._cache, self.stats, self._run,
                               self.n_images)

    def score(self, masks: np.ndarray) -> EvalResult:
        """Accuracy and loss of each row, computed now on the cluster (no cache)."""
        acc, loss = self._run(np.atleast_2d(np.asarray(masks, dtype=bool)))
        return EvalResult(accuracy=acc, loss=loss)

    def _run(self, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        before = self._addresses()
        began = time.time()
        chunks = [masks[i:i + self.chunk_size] for i in range(0, len(masks), self.chunk_size)]
        tag = uuid.uuid4().hex[:8]
        try:
            futures = [self.client.submit(evaluate_on_worker, self.plugin.name,
                                          np.packbits(chunk, axis=1), chunk.shape[1],
                                          key=f"moprune-eval-{tag}-{i}", pure=False)
                       for i, chunk in enumerate(chunks)]
            results = self.client.gather(futures)
        except Exception as exc:
            self._raise_lost(exc)
            raise
        after = self._addresses()
        used = sorted({addr for _, _, addr, _ in results})
        left, joined = sorted(before - after), sorted(after - before)
        if (left or joined) and self.on_event is not None:
            self.on_event({
                "event": "workers changed during an evaluation", "call": self.calls,
                "candidates": len(masks), "tasks": len(chunks), "workers_left": left,
                "workers_joined": joined, "computed_on": used,
                "seconds": round(time.time() - began, 3),
                "note": "tasks of the workers that left were run on the others; no result "
                        "was lost",
            })
        return (np.concatenate([a for a, _, _, _ in results]),
                np.concatenate([lo for _, lo, _, _ in results]))

    def _addresses(self) -> set[str]:
        try:
            return set(self.client.scheduler_info()["workers"])
        except Exception as exc:  # the scheduler is gone
            self._raise_lost(exc)
            raise

    def _raise_lost(self, exc: BaseException) -> None:
        if type(exc).__name__ == "KilledWorker":
            raise ClusterError(f"a task killed every worker that ran it ({exc}); the "
                               "evaluation itself crashes the workers (out of memory?)") from exc
        if getattr(self.client, "status", "running") != "running" or type(exc).__name__ in (
                "CommClosedError", "CancelledError", "FutureCancelledError"):
            address = getattr(self.client, "scheduler", None)
            address = getattr(address, "address", address)
            raise SchedulerLostError(
                f"lost the Dask scheduler ({address}) during evaluation call {self.calls}: "
                f"{type(exc).__name__}: {exc}. Every finished generation is in the run "
                "directory: start a scheduler (or use --workers N) and rerun the search with "
                "--resume.") from exc

    def close(self) -> None:
        """Remove the plugin from the workers (frees their models and data)."""
        try:
            self.client.unregister_worker_plugin(self.plugin.name)
        except Exception:  # noqa: BLE001 - best effort at shutdown
            pass


def local_cluster(n_workers: int, device: str = "cpu") -> Any:
    """A local cluster of ``n_workers`` worker processes (one thread each).

    On CUDA with ``dask-cuda`` installed, a ``LocalCUDACluster`` (one worker per GPU).
    """
    distributed = require_distributed()
    if n_workers < 1:
        raise ConfigError(f"--workers must be >= 1; got {n_workers}")
    if torch.device(device).type == "cuda":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            pass
        else:
            return LocalCUDACluster(n_workers=n_workers, threads_per_worker=1)
    return distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                    dashboard_address=":0")


def torch_threads_per_worker(n_workers: int) -> int:
    """The cores of this machine shared among ``n_workers`` local workers (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // n_workers)


__all__ = ["DaskEvaluator", "DistributedUnavailableError", "EvaluatorPlugin",
           "SchedulerLostError", "local_cluster",
           "require_distributed", "torch_threads_per_worker"]
