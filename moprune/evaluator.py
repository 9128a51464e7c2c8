"""Accuracy of pruning plans on a held-out split, without copying or cutting the model.

Two exact modes (both equal the physically pruned model's logits):

- ``"gate"``: channel gates on the shared network, a whole population per forward pass
  (fixed shapes; the GPU default);
- ``"slice"``: weights sliced to each plan and run functionally (the pruned network's cost;
  the CPU default).

Results are cached by plan (the repaired keep-mask), so duplicate genomes cost nothing;
``stats`` counts evaluations and cache hits.

Speed: the images stay on the device as uint8 and are normalised there per batch; the
network runs under the :class:`~moprune.execution.Execution` settings (autocast precision,
channels-last, ``torch.compile`` of the gate-mode population pass); correct counts, losses
and a non-finite flag accumulate on the device, so a call synchronises with the host once,
at its end, never per candidate or per batch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from moprune.execution import Execution, normalize
from moprune.gated import GatedModel
from moprune.plan import PruningPlan, masks_matrix
from moprune.sliced import SlicedModel
from moprune.space import PruningSpace
from moprune.training import NonFiniteError, norm_tensors
from moprune.zoo.data import Normalization, Split

MODES = ("auto", "gate", "slice")


class DeviceError(ValueError):
    """The requested device does not exist here."""


# One error type for NaN/inf logits, wherever they are met (evaluation or fine-tuning).
NonFiniteOutputError = NonFiniteError


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device, refusing CUDA where there is none (with a clear message)."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"device {str(device)!r} was requested but CUDA is not available on this machine "
            f"(torch {torch.__version__}); use --device cpu."
        )
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]'; got {str(device)!r}")
    return dev


@dataclass
class EvalStats:
    """Counters of an evaluator."""

    evaluations: int = 0
    cache_hits: int = 0
    images: int = 0
    diverged: int = 0


@dataclass(frozen=True)
class EvalResult:
    """Accuracy and loss of a population of plans.

    Attributes:
        accuracy: Fraction of correct top-1 predictions, (n,).
        loss: Mean cross-entropy, (n,).

    """

    accuracy: np.ndarray
    loss: np.ndarray


MaskCache = dict[bytes, tuple[float, float]]


def uncached(masks: np.ndarray, n_channels: int, cache: MaskCache, stats: EvalStats
             ) -> tuple[np.ndarray, list[bytes], dict[bytes, int]]:
    """Check a keep-mask matrix and find the rows still to evaluate.

    Returns the masks as a bool matrix, every row's cache key, and ``{key: first row}`` of
    the distinct keys not in ``cache``; repeats and cached rows count as ``stats.cache_hits``.
    """
    masks = np.atleast_2d(np.asarray(masks, dtype=bool))
    if masks.shape[1] != n_channels:
        raise ValueError(f"masks must have {n_channels} columns; got {masks.shape}")
    keys = [np.packbits(m).tobytes() for m in masks]
    todo: dict[bytes, int] = {}
    for i, k in enumerate(keys):
        if k in cache or k in todo:
            stats.cache_hits += 1
        else:
            todo[k] = i
    return masks, keys, todo


def evaluate_cached(masks: np.ndarray, n_channels: int, cache: MaskCache, stats: EvalStats,
                    run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                    images: int) -> EvalResult:
    """Results of every row of ``masks``; ``run`` computes the distinct uncached ones at once.

    New results go into ``cache``; ``stats`` counts them (``images`` per candidate).
    """
    masks, keys, todo = uncached(masks, n_channels, cache, stats)
    if todo:
        rows = list(todo.values())
        acc, loss = run(masks[rows])
        for j, k in enumerate(todo):
            cache[k] = (float(acc[j]), float(loss[j]))
        stats.evaluations += len(rows)
        stats.images += len(rows) * images
    return cached_result(cache, keys)


def cached_result(cache: MaskCache, keys: list[bytes]) -> EvalResult:
    """Accuracy and loss of ``keys`` from the cache."""
    return EvalResult(accuracy=np.array([cache[k][0] for k in keys]),
                      loss=np.array([cache[k][1] for k in keys]))


class MaskScorer(Protocol):
    """What a pruning problem needs from its evaluator (``Evaluator``, ``RetrainingEvaluator``)."""

    model: nn.Module
    space: PruningSpace
    stats: EvalStats

    def baseline(self) -> EvalResult: ...

    def evaluate_masks(self, masks: np.ndarray) -> EvalResult: ...


@dataclass
class Evaluator:
    """Evaluate plans of a pruning space on a fixed set of images.

    The model is copied once to ``device`` (the caller's model is never changed); images are
    normalised once and kept on the device.

    Args:
        model: The full network the space was built from.
        space: Its pruning space.
        data: The evaluation images (uint8) and labels, e.g. the hold-out split.
        normalization: Mean/std the model expects.
        device: ``"cpu"`` or ``"cuda"``.
        mode: ``"gate"``, ``"slice"`` or ``"auto"`` (gate on CUDA or when compiled, slice
            on the CPU).
        batch_size: Images per forward pass: per candidate in slice mode; in gate mode the
            total over the candidates batched together (``n_candidates x n_images``), so a
            whole population shares one pass when it fits. Default: 512 on the CPU, 32768 on
            CUDA.
        progress: Show a progress bar over candidates.
        execution: Precision, memory format and compilation (default: ``"auto"``, see
            :class:`~moprune.execution.Execution`); ``compile`` needs gate mode.

    """

    model: nn.Module
    space: PruningSpace
    data: Split
    normalization: Normalization
    device: str | torch.device = "cpu"
    mode: str = "auto"
    batch_size: int | None = None
    progress: bool = False
    execution: Execution = Execution()
    stats: EvalStats = field(default_factory=EvalStats)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown evaluation mode {self.mode!r}; valid: {', '.join(MODES)}")
        if len(self.data) == 0:
            raise ValueError("the evaluation split is empty; pass at least one image")
        self.device = resolve_device(self.device)
        if self.batch_size is None:
            self.batch_size = 32768 if self.device.type == "cuda" else 512
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {self.batch_size}")
        if not isinstance(self.execution, Execution):
            raise TypeError(f"execution must be an Execution; got {type(self.execution).__name__}")
        self.execution = self.execution.resolve(self.device)
        if self.mode == "auto":
            gate = self.device.type == "cuda" or self.execution.compile
            self.mode = "gate" if gate else "slice"
        if self.execution.compile and self.mode != "gate":
            raise ValueError("compile needs gate mode (fixed shapes); slice mode changes the "
                             "layer shapes with every candidate. Use mode 'gate' (--mode gate) "
                             "or leave compilation off (no --compile).")
        self._model = self.execution.prepare(copy.deepcopy(self.model).to(self.device).eval())
        self._x = self.data.images.to(self.device)  # uint8; normalised per batch on the device
        self._y = self.data.labels.to(self.device)
        self._mean, self._std = norm_tensors(self.normalization, self._x.shape[1], self.device)
        self._gated = GatedModel(self._model, self.space, persistent=self.mode == "gate")
        self._sliced = SlicedModel(self._model, self.space)
        self._step = self._gate_step
        if self.execution.compile:
            self._step = torch.compile(self._gate_step, fullgraph=True, dynamic=False)
        self._cache: MaskCache = {}

    @property
    def n_images(self) -> int:
        return len(self.data)

    @property
    def candidates_per_pass(self) -> int:
        """Gate mode: candidates sharing one forward pass (``batch_size // images``, >= 1)."""
        return max(1, self.batch_size // min(self.batch_size, self.n_images))

    def evaluate(self, plans: list[PruningPlan]) -> EvalResult:
        """Accuracy and loss of each plan."""
        return self.evaluate_masks(masks_matrix(self.space, plans))

    def baseline(self) -> EvalResult:
        """Accuracy and loss of the unpruned network."""
        return self.evaluate([PruningPlan.full(self.space)])

    def evaluate_masks(self, masks: np.ndarray) -> EvalResult:
        """Accuracy and loss of each row of a ``(n, n_channels)`` keep-mask matrix."""
        return evaluate_cached(masks, self.space.n_channels, self._cache, self.stats, self._run,
                               self.n_images)

    @property
    def network(self) -> nn.Module:
        """The evaluator's own copy of the model on the device (what it runs)."""
        return self._model

    def score(self, masks: np.ndarray) -> EvalResult:
        """Accuracy and loss of each keep-mask row, computed now, bypassing the cache.

        For callers that change :attr:`network`'s weights between calls (weight inheritance).
        """
        acc, loss = self._run(np.atleast_2d(np.asarray(masks, dtype=bool)))
        return EvalResult(accuracy=acc, loss=loss)

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(images, self._mean, self._std, self.execution.memory_format)

    def _gate_step(self, images: torch.Tensor, y: torch.Tensor, masks: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 ``images`` under every gate row of ``masks``: correct, loss sum, non-finite."""
        with self.execution.autocast(self.device):
            logits = self._gated.run(self._input(images), masks)
        return _score(logits, y)

    def _slice_step(self, images: torch.Tensor, y: torch.Tensor, mask: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with self.execution.autocast(self.device):
            logits = self._sliced.forward(self._input(images), mask)
        return _score(logits.unsqueeze(0), y)

    @torch.inference_mode()
    def _run(self, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = masks.shape[0]
        correct = torch.zeros(n, dtype=torch.float64, device=self.device)
        loss = torch.zeros(n, dtype=torch.float64, device=self.device)
        bad = torch.zeros(n, dtype=torch.bool, device=self.device)
        bar = tqdm(total=n, desc="evaluate", unit="cand", disable=not self.progress, leave=False)
        try:
            if self.mode == "gate":
                self._run_gated(masks, correct, loss, bad, bar)
            else:
                for i in range(n):
                    row = torch.from_numpy(np.ascontiguousarray(masks[i]))  # stays on the CPU
                    for b0 in range(0, self.n_images, self.batch_size):
                        b1 = b0 + self.batch_size
                        c, lo, f = self._slice_step(self._x[b0:b1], self._y[b0:b1], row)
                        correct[i] += c[0]
                        loss[i] += lo[0]
                        bad[i] |= f[0]
                    bar.update(1)
        finally:
            self._gated.reset()
            bar.close()
        if bad.any():  # the one host synchronisation of the call
            raise NonFiniteOutputError(
                f"the model produced NaN or infinite logits for {int(bad.sum())} of {n} "
                f"candidate(s) (precision {self.execution.precision}); check the checkpoint (a "
                "diverged fine-tune?) and the input normalisation, or use precision 'fp32' if "
                "fp16 overflowed."
            )
        both = (torch.stack([correct, loss]) / self.n_images).cpu().numpy()  # one transfer
        return both[0], both[1]

    def _run_gated(self, masks: np.ndarray, correct: torch.Tensor, loss: torch.Tensor,
                   bad: torch.Tensor, bar: tqdm) -> None:
        """Populations of ``per`` candidates per pass; padded to ``per`` when compiled.

        Compiled, a call uses one graph, or two when the images come in chunks and the last
        chunk is smaller (its shape differs); both are reused by every later call.
        """
        n = masks.shape[0]
        step = min(self.batch_size, self.n_images)
        per = self.candidates_per_pass
        m = torch.as_tensor(masks, dtype=torch.float32).to(self.device)
        for c0 in range(0, n, per):
            c1 = min(n, c0 + per)
            chunk = m[c0:c1]
            if self.execution.compile and c1 - c0 < per:  # one candidate count: no recompiling
                chunk = torch.cat([chunk, chunk[-1:].expand(per - (c1 - c0), -1)])
            for b0 in range(0, self.n_images, step):
                c, lo, f = self._step(self._x[b0:b0 + step], self._y[b0:b0 + step], chunk)
                correct[c0:c1] += c[:c1 - c0]
                loss[c0:c1] += lo[:c1 - c0]
                bad[c0:c1] |= f[:c1 - c0]
            bar.update(c1 - c0)


def _score(logits: torch.Tensor, y: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Correct count, summed cross-entropy and non-finite flag per candidate, on the device.

    ``logits`` is (P, B, classes); the counts and sums come back as float64, (P,) each.
    """
    p, b, c = logits.shape
    logits = logits.float()
    bad = ~torch.isfinite(logits).view(p, -1).all(1)
    correct = (logits.argmax(-1) == y).sum(1).double()
    ce = F.cross_entropy(logits.reshape(p * b, c), y.repeat(p), reduction="none")
    return correct, ce.view(p, b).sum(1).double(), bad
