"""Candidates scored after a short partial retraining (DeepPruningES's objective).

:class:`RetrainingEvaluator` has the :class:`~moprune.evaluation.evaluator.Evaluator` interface, so
every pruning problem and algorithm can use it. For each new keep-mask it physically prunes
the network (Torch-Pruning surgery of a copy already on the device), trains the small
network for a few epochs on the training part (all images moved to the device once, as
uint8; batches are augmented and normalised there) and measures it on the hold-out split
(also on the device). Nothing is read from disk per candidate.

Every candidate's training is seeded from the run's seed and the mask itself, so a genome
gets the same score whenever and in whatever batch it is evaluated: results are
reproducible, resumable and cacheable, and the front's test accuracy can be measured later
on the very weights that were scored (:meth:`RetrainingEvaluator.trained`).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from moprune.core.execution import Execution, resolve_device
from moprune.core.plan import PruningPlan, masks_matrix
from moprune.core.space import PruningSpace
from moprune.core.surgery import prune_model
from moprune.data.datasets import DataBundle, Normalization, Split
from moprune.errors import ConfigError, NonFiniteError
from moprune.evaluation.evaluator import Evaluator
from moprune.evaluation.scorer import EvalResult, EvalStats, MaskCache, cached_result, uncached
from moprune.training.finetune import FinetuneConfig, evaluate_accuracy, finetune
from moprune.training.init import random_init


def partial_recipe(base: FinetuneConfig, epochs: int, lr: float = 1e-3) -> FinetuneConfig:
    """DeepPruningES's partial retraining: SGD, constant ``lr``, momentum 0.9, Nesterov.

    Published: 3 epochs at learning rate 1e-3. Augmentation, batch size and weight decay
    come from ``base`` (the task's recipe).
    """
    return dataclasses.replace(base, epochs=epochs, lr=lr, momentum=0.9, nesterov=True,
                               schedule="constant")


def final_recipe(base: FinetuneConfig, epochs: int, lr: float = 1e-4) -> FinetuneConfig:
    """DeepPruningES's final retraining of the returned models: SGD lr 1e-4, Nesterov.

    Published: 200 epochs, momentum 0.9, constant learning rate.
    """
    return dataclasses.replace(base, epochs=epochs, lr=lr, momentum=0.9, nesterov=True,
                               schedule="constant")


def _on(split: Split, device: torch.device) -> Split:
    return Split(split.images.to(device), split.labels.to(device))


class RetrainingEvaluator:
    """Accuracy of plans after a short retraining of each physically pruned candidate.

    Args:
        model: The full network the space was built from (never modified).
        space: Its pruning space.
        train: Training images (uint8) the candidates are retrained on.
        val: Hold-out images the retrained candidates are scored on.
        normalization: Mean/std the model expects.
        config: The retraining recipe (``epochs >= 1``), e.g. :func:`partial_recipe`.
        seed: Run seed; each candidate's shuffles and augmentation derive from it and the mask.
        device: ``"cpu"`` or ``"cuda"``.
        mode: Evaluation mode of the unretrained ``baseline`` (see ``Evaluator``).
        progress: Show a progress bar over candidates.
        from_scratch: Re-initialise each pruned candidate (:func:`moprune.evaluation.inheritance.
            random_init`, seeded like its training) and train it from scratch: EvoFC without
            weight inheritance.
        execution: Precision and memory format of the retraining and scoring (default:
            ``Execution()``); never compiled here, every candidate has its own shapes.

    """

    def __init__(self, model: nn.Module, space: PruningSpace, train: Split, val: Split,
                 normalization: Normalization, config: FinetuneConfig, seed: int,
                 device: str | torch.device = "cpu", mode: str = "auto",
                 progress: bool = False, from_scratch: bool = False,
                 execution: Execution | None = None) -> None:
        if config.epochs < 1:
            raise ConfigError(f"partial retraining needs epochs >= 1 (got {config.epochs}); use "
                             "the plain Evaluator for scoring without retraining")
        if len(train) == 0:
            raise ConfigError("partial retraining needs training images, but the training split "
                             "is empty; load the data with load_train=True")
        self.model = model
        self.space = space
        self.config = config
        self.seed = int(seed)
        self.device = resolve_device(device)
        self.progress = progress
        self.from_scratch = from_scratch
        self.normalization = normalization
        self.execution = dataclasses.replace(execution or Execution(),
                                             compile=False).resolve(self.device)
        self.reference = Evaluator(model, space, val, normalization, device=self.device,
                                   mode=mode, execution=self.execution)
        self.mode = "retrain"
        self.data = val
        self.stats = EvalStats()
        self._model = copy.deepcopy(model).to(self.device).eval()
        self._train = _on(train, self.device)
        self._val = _on(val, self.device)
        self._cache: MaskCache = {}

    @property
    def n_images(self) -> int:
        return len(self.data)

    @property
    def candidates_per_pass(self) -> int:
        """One: every candidate trains on its own."""
        return 1

    def baseline(self) -> EvalResult:
        """Accuracy and loss of the unpruned network as given (not retrained)."""
        return self.reference.baseline()

    def evaluate(self, plans: list[PruningPlan]) -> EvalResult:
        """Accuracy and loss of each plan after its retraining."""
        return self.evaluate_masks(masks_matrix(self.space, plans))

    def candidate_seed(self, mask: np.ndarray) -> int:
        """The seed of one candidate's retraining: a hash of the run seed and the mask."""
        key = np.packbits(np.asarray(mask, dtype=bool)).tobytes()
        digest = hashlib.sha256(self.seed.to_bytes(8, "little", signed=True) + key).digest()
        return int.from_bytes(digest[:8], "little") & (2**63 - 1)

    def trained(self, mask: np.ndarray) -> nn.Module:
        """The candidate of ``mask``, physically pruned and retrained (on the device).

        With ``from_scratch`` the pruned network is re-initialised before its training.
        """
        mask = np.asarray(mask, dtype=bool)
        pruned = prune_model(self._model, self.space, PruningPlan.from_mask(self.space, mask))
        seed = self.candidate_seed(mask)
        if self.from_scratch:
            pruned = random_init(pruned, seed)
        gen = torch.Generator().manual_seed(seed)
        # dropout draws from the global generators: seed them too, and restore them after
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            finetune(pruned, self._train, self.normalization, self.config, generator=gen,
                     device=self.device, progress=False, execution=self.execution)
        return pruned.eval()

    def _score(self, mask: np.ndarray, split: Split) -> tuple[float, float]:
        """Retrain and measure one candidate; a diverged retraining scores 0 (loss inf)."""
        try:
            return evaluate_accuracy(self.trained(mask), split, self.normalization,
                                     device=self.device, execution=self.execution)
        except NonFiniteError as exc:
            self.stats.diverged += 1
            warnings.warn(f"a candidate's partial retraining diverged ({exc}); it scores "
                          "accuracy 0. Lower the partial learning rate if this repeats.",
                          RuntimeWarning, stacklevel=3)
            return 0.0, math.inf

    def evaluate_masks(self, masks: np.ndarray) -> EvalResult:
        """Accuracy and loss of each row of a keep-mask matrix, each after retraining.

        A candidate whose retraining diverges (NaN or infinite loss) scores accuracy 0 and loss
        inf, with a warning (``stats.diverged`` counts them), so one bad candidate never stops
        a search.
        """
        masks, keys, todo = uncached(masks, self.space.n_channels, self._cache, self.stats)
        bar = tqdm(total=len(todo), desc=f"retrain {self.config.epochs} ep + evaluate",
                   unit="cand", disable=not self.progress or not todo, leave=False)
        for k, i in todo.items():
            acc, loss = self._score(masks[i], self._val)
            self._cache[k] = (acc, loss)
            self.stats.evaluations += 1
            self.stats.images += self.n_images + self.config.epochs * len(self._train)
            bar.update(1)
        bar.close()
        return cached_result(self._cache, keys)

    # ---- the rest of the scorer contract (moprune.evaluation.scorer.Scorer) --------------

    def reference_evaluator(self, split: Split, progress: bool = False) -> Evaluator:
        """A plain evaluator of the full network on ``split`` (the unretrained baseline)."""
        return self.reference.reference_evaluator(split, progress)

    def candidate_model(self, mask: np.ndarray) -> nn.Module:
        """The candidate pruned and retrained with its own seed (the weights it was scored with)."""
        return self.trained(mask)

    def report(self, data: DataBundle) -> dict:
        """The retraining recipe, for ``baseline.json``."""
        return {"scored_after_retraining": True, "retrain": dataclasses.asdict(self.config)}

    def state_dict(self) -> dict:
        """Nothing to restore: every candidate's retraining is seeded by its mask."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore (see :meth:`state_dict`)."""

    def evaluate_on(self, masks: np.ndarray, split: Split, progress: bool = False
                    ) -> EvalResult:
        """Accuracy and loss on another split (the test split) of the retrained candidates.

        The candidates are retrained again with their own seeds: on the CPU the weights are
        the ones that were scored; on CUDA they may differ in the last bits.
        """
        masks = np.atleast_2d(np.asarray(masks, dtype=bool))
        split = _on(split, self.device)
        acc, loss = [], []
        for m in tqdm(masks, desc="retrain + test", unit="cand",
                      disable=not (self.progress or progress), leave=False):
            a, lo = self._score(m, split)
            acc.append(a)
            loss.append(lo)
        return EvalResult(accuracy=np.array(acc), loss=np.array(loss))


@dataclass(frozen=True)
class Retraining:
    """Scoring: each plan physically pruned, retrained with ``recipe``, then measured.

    Attributes:
        recipe: The retraining (e.g. :func:`partial_recipe`); with 0 epochs the plans are
            scored as they are (a plain :class:`~moprune.evaluation.evaluator.Evaluator`).
        from_scratch: Re-initialise each pruned candidate before its training.

    """

    recipe: FinetuneConfig
    from_scratch: bool = False

    def build(self, model: nn.Module, space: PruningSpace, data: DataBundle, *, seed: int,
              device: str | torch.device, mode: str, progress: bool,
              execution: Execution) -> RetrainingEvaluator | Evaluator:
        """A :class:`RetrainingEvaluator` on ``data.train`` / ``data.val``."""
        if self.recipe.epochs == 0:
            return Evaluator(model, space, data.val, data.normalization, device=device,
                             mode=mode, progress=progress, execution=execution)
        return RetrainingEvaluator(model, space, data.train, data.val, data.normalization,
                                   self.recipe, seed=seed, device=device, mode=mode,
                                   progress=progress, from_scratch=self.from_scratch,
                                   execution=execution)


__all__ = ["Retraining", "RetrainingEvaluator", "final_recipe", "partial_recipe"]
