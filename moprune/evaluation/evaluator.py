"""Accuracy of pruning plans on a held-out split, without copying or cutting the model.

Two exact modes (both equal the physically pruned model's logits):

- ``"gate"``: channel gates on the shared network, a whole population per forward pass
  (fixed shapes; the GPU default);
- ``"slice"``: weights sliced to each plan and run functionally (the pruned network's cost;
  the CPU default).

Results are cached by plan (the repaired keep-mask), so duplicate genomes cost nothing;
``stats`` counts evaluations and cache hits.

Speed: the images stay on the device as uint8 and are normalised there per batch; the
network runs under the :class:`~moprune.core.execution.Execution` settings (autocast precision,
channels-last, ``torch.compile`` of the gate-mode population pass); correct counts, losses
and a non-finite flag accumulate on the device, so a call synchronises with the host once,
at its end, never per candidate or per batch.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from moprune.core.execution import Execution, normalize, resolve_device
from moprune.core.gated import GatedModel
from moprune.core.plan import PruningPlan, masks_matrix
from moprune.core.sliced import SlicedModel
from moprune.core.space import PruningSpace
from moprune.data.datasets import DataBundle, Normalization, Split
from moprune.errors import ConfigError, NonFiniteError
from moprune.evaluation.scorer import EvalResult, EvalStats, MaskCache, evaluate_cached
from moprune.training.finetune import norm_tensors

MODES = ("auto", "gate", "slice")


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
            :class:`~moprune.core.execution.Execution`); ``compile`` needs gate mode.

    """

    def __init__(self, model: nn.Module, space: PruningSpace, data: Split,
                 normalization: Normalization, device: str | torch.device = "cpu",
                 mode: str = "auto", batch_size: int | None = None, progress: bool = False,
                 execution: Execution | None = None) -> None:
        if mode not in MODES:
            raise ConfigError(f"unknown evaluation mode {mode!r}; valid: {', '.join(MODES)}")
        if len(data) == 0:
            raise ConfigError("the evaluation split is empty; pass at least one image")
        execution = Execution() if execution is None else execution
        if not isinstance(execution, Execution):
            raise TypeError(f"execution must be an Execution; got {type(execution).__name__}")
        self.model = model
        self.space = space
        self.data = data
        self.normalization = normalization
        self.progress = progress
        self.stats = EvalStats()
        self.device: torch.device = resolve_device(device)
        if batch_size is None:
            batch_size = 32768 if self.device.type == "cuda" else 512
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1; got {batch_size}")
        self.batch_size: int = batch_size
        self.execution: Execution = execution.resolve(self.device)
        self.mode: str = mode
        if mode == "auto":
            gate = self.device.type == "cuda" or self.execution.compile
            self.mode = "gate" if gate else "slice"
        if self.execution.compile and self.mode != "gate":
            raise ConfigError("compile needs gate mode (fixed shapes); slice mode changes the "
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
        """Candidates sharing one forward pass (gate: ``batch_size // images``; slice: 1)."""
        if self.mode != "gate":
            return 1
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

    # ---- the rest of the scorer contract (moprune.evaluation.scorer.Scorer) --------------

    def reference_evaluator(self, split: Split, progress: bool = False) -> Evaluator:
        """A plain evaluator of the full network on ``split``.

        Same device, mode and precision; never compiled (another split is measured once).
        """
        return Evaluator(self.model, self.space, split, self.normalization, device=self.device,
                         mode=self.mode, progress=progress,
                         execution=dataclasses.replace(self.execution, compile=False))

    def evaluate_on(self, masks: np.ndarray, split: Split, progress: bool = False
                    ) -> EvalResult:
        """Accuracy and loss of each plan on another split (the test split)."""
        return self.reference_evaluator(split, progress).evaluate_masks(masks)

    def candidate_model(self, mask: np.ndarray) -> nn.Module | None:
        """None: a plan is scored as the full network pruned to it."""
        return None

    def report(self, data: DataBundle) -> dict:
        """How candidates were scored, for ``baseline.json``."""
        return {"scored_after_retraining": False}

    def state_dict(self) -> dict:
        """Nothing to restore: results depend only on the plans."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore (see :meth:`state_dict`)."""

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
            raise NonFiniteError(
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


@dataclass(frozen=True)
class AsIs:
    """Scoring: each plan as the full network pruned to it (:class:`Evaluator`)."""

    def build(self, model: nn.Module, space: PruningSpace, data: DataBundle, *, seed: int,
              device: str | torch.device, mode: str, progress: bool,
              execution: Execution) -> Evaluator:
        """An :class:`Evaluator` of ``data.val``."""
        return Evaluator(model, space, data.val, data.normalization, device=device, mode=mode,
                         progress=progress, execution=execution)


__all__ = ["MODES", "AsIs", "Evaluator"]
