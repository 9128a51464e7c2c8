"""Weight inheritance through one full-width supernet (EvoFC).

:class:`InheritanceEvaluator` has the :class:`~moprune.evaluation.evaluator.Evaluator` interface. It
holds one full-width network, the *supernet*, on the device. For each candidate it

1. takes the candidate's kept weights out of the supernet (the tensors sliced to its plan:
   exactly the physically pruned network's weights),
2. trains them for the candidate's slice of one global schedule,
3. writes them back into the supernet (weights of dropped channels are untouched), and
4. scores the candidate on the hold-out split with the weights it just trained.

The global schedule is one normal training run (``recipe.epochs`` passes over the training
split with the recipe's learning-rate schedule); the search's ``planned`` candidates share
its steps in order, candidate ``k`` training steps ``[k T / P, (k + 1) T / P)``. Batches
come from one seeded stream over the whole run (a permutation and augmentation per epoch),
so the search sees the training data as one training run would. Every number depends only
on the seed and the order of evaluation: a search is deterministic on the CPU and resumes
exactly from :meth:`InheritanceEvaluator.state_dict`.

Scores are not cached: a genome evaluated twice trains twice, on newer weights.
:func:`moprune.training.init.random_init` gives the random starting point of the paper's
setting.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from moprune.core.execution import Execution, normalize, resolve_device
from moprune.core.layers import LAYER_RULES
from moprune.core.plan import PruningPlan, masks_matrix
from moprune.core.sliced import SlicedModel
from moprune.core.space import PruningSpace
from moprune.core.surgery import prune_model
from moprune.data.datasets import DataBundle, Normalization, Split
from moprune.errors import ConfigError
from moprune.evaluation.evaluator import Evaluator
from moprune.evaluation.scorer import EvalResult, EvalStats
from moprune.training.finetune import (
    CROP_MIN_SIZE,
    CROP_PADDING,
    FinetuneConfig,
    _augment,
    _batch_bounds,
    _lr_at,
    evaluate_accuracy,
    norm_tensors,
)
from moprune.training.init import recalibrate_bn


def take_out(sliced: SlicedModel, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Copies of the supernet's tensors kept by ``mask`` (the pruned network's weights)."""
    return _take_out(sliced, mask)[0]


def _take_out(sliced: SlicedModel, mask: torch.Tensor
              ) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, object]]]:
    """:func:`take_out`, and the module attributes to patch while the copies run."""
    tensors, groups = sliced.tensors(mask)
    return {k: v.detach().clone() for k, v in tensors.items()}, groups


@torch.no_grad()
def write_back(sliced: SlicedModel, mask: torch.Tensor, tensors: dict[str, torch.Tensor]) -> None:
    """Write a candidate's tensors into the supernet at the channels ``mask`` keeps.

    Only the tensors of trained layer kinds (``LayerRule.trained``: convolutions, linear
    layers, BatchNorm) are written; entries of dropped channels are left bit-identical.
    """
    model = sliced.model
    for name, kind, k_in, k_out in sliced.indices(mask):
        rule = LAYER_RULES.get(kind)
        if not rule.trained:
            continue
        m = model.get_submodule(name)
        for t, axes in rule.tensors.items():
            key = f"{name}.{t}"
            if key not in tensors:
                continue
            dst = getattr(m, t)
            kept = [rule.kept(m, t, axis, k_in, k_out) for axis in range(len(axes))]
            if len(axes) == 2:  # e.g. a convolution's (out, in) weight
                rows, cols = (k if k is not None else torch.arange(dst.shape[i], device=dst.device)
                              for i, k in enumerate(kept))
                dst[rows[:, None], cols[None, :]] = tensors[key].to(dst.dtype)
            elif kept[0] is not None:
                dst[kept[0]] = tensors[key].to(dst.dtype)
            else:
                dst.copy_(tensors[key])


class BatchStream:
    """The batches of one training run over ``train``, addressed by global step.

    Epoch ``e`` draws its permutation, crop offsets and flips from a generator seeded by
    ``(seed, e)``, like :func:`moprune.training.finetune.finetune` draws them per epoch;
    batch ``b`` of epoch ``e`` is global step ``e * steps_per_epoch + b``.
    """

    def __init__(self, train: Split, normalization: Normalization, recipe: FinetuneConfig,
                 seed: int, device: torch.device) -> None:
        if len(train) == 0:
            raise ConfigError("weight inheritance trains the candidates, but the training split "
                             "is empty; load the data with load_train=True")
        self.images = train.images.to(device)
        self.labels = train.labels.to(device)
        self.seed = int(seed)
        self.device = device
        _, _, h, w = train.images.shape
        self.crop = recipe.augment and h >= CROP_MIN_SIZE and w >= CROP_MIN_SIZE
        self.flip = recipe.augment and recipe.augment_flip
        self.mean, self.std = norm_tensors(normalization, train.images.shape[1], device)
        self.bounds = _batch_bounds(len(train), recipe.batch_size)
        self._epoch: int | None = None

    @property
    def steps_per_epoch(self) -> int:
        return len(self.bounds)

    def _draw(self, epoch: int) -> None:
        n = len(self.labels)
        seq = np.random.SeedSequence([self.seed & (2**63 - 1), epoch])
        gen = torch.Generator().manual_seed(int(seq.generate_state(1, np.uint64)[0] >> 1))
        self._order = torch.randperm(n, generator=gen).to(self.device)
        self._offsets = (torch.randint(0, 2 * CROP_PADDING + 1, (n, 2), generator=gen)
                         .to(self.device) if self.crop else None)
        self._flips = (torch.rand(n, generator=gen) < 0.5).to(self.device) if self.flip else None
        self._epoch = epoch

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised, augmented inputs and labels of global step ``step``."""
        epoch, b = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._draw(epoch)
        start, end = self.bounds[b]
        index = self._order[start:end]
        x = _augment(self.images[index],
                     None if self._offsets is None else self._offsets[start:end],
                     None if self._flips is None else self._flips[start:end])
        return normalize(x, self.mean, self.std), self.labels[index]


class InheritanceEvaluator:
    """Scores candidates after training their slice of a supernet (EvoFC's weight inheritance).

    Args:
        model: The network the search starts from (pretrained, or :func:`random_init`); it is
            copied to the device and never modified.
        space: Its pruning space.
        train: Training images (uint8) of the global schedule.
        val: Hold-out images the candidates are scored on.
        normalization: Mean/std the model expects.
        recipe: The global schedule: ``epochs`` (the length of one normal training run, over
            the whole search), learning rate and its schedule, momentum, weight decay, batch
            size and augmentation. The learning rate follows the global step; SGD's momentum
            buffers are inherited like the weights (taken out and written back).
        planned: Candidates the search will evaluate; they share the schedule's steps.
            Candidates beyond ``planned`` train no steps.
        seed: Seed of the batch stream and of dropout.
        device: ``"cpu"`` or ``"cuda"``.
        progress: Show a progress bar over candidates.
        calibration_batches: Training batches that re-estimate BatchNorm statistics when a
            plan is measured on the supernet's current weights (:meth:`evaluate_on`,
            :meth:`pruned`); the supernet's own statistics mix all candidates' plans.

    """

    def __init__(self, model: nn.Module, space: PruningSpace, train: Split, val: Split,
                 normalization: Normalization, recipe: FinetuneConfig, planned: int, seed: int,
                 device: str | torch.device = "cpu", progress: bool = False,
                 calibration_batches: int = 10) -> None:
        if recipe.epochs < 1:
            raise ConfigError(f"weight inheritance needs a schedule of >= 1 epoch (got "
                             f"{recipe.epochs}); use the plain Evaluator to score without "
                             "training")
        if planned < 1:
            raise ConfigError(f"planned must be >= 1 candidate; got {planned}")
        self.model = model
        self.space = space
        self.recipe = recipe
        self.planned = int(planned)
        self.seed = int(seed)
        self.device = resolve_device(device)
        self.progress = progress
        self.normalization = normalization
        self.data = val
        self.mode = "inherit"
        # fp32, contiguous: the supernet trains in its own loop, exactly like the pruned network
        self.execution = Execution("fp32", channels_last=False).resolve(self.device)
        self.stats = EvalStats()
        # the slice-mode evaluator's own device copy of the model *is* the supernet
        self._eval = Evaluator(model, space, val, normalization, device=self.device,
                               mode="slice", execution=self.execution)
        self.supernet = self._eval.network
        self._sliced = SlicedModel(self.supernet, space)
        # SGD momentum of every supernet parameter, inherited like the weights
        self._momentum = copy.deepcopy(self.supernet)
        with torch.no_grad():
            for p in self._momentum.parameters():
                p.zero_()
                p.requires_grad_(False)
        self._momentum_sliced = SlicedModel(self._momentum, space)
        self.calibration_batches = calibration_batches
        self._stream = BatchStream(train, normalization, recipe, seed, self.device)
        self.total_steps = recipe.epochs * self._stream.steps_per_epoch
        self.trained = 0  # candidates trained so far (the position in the schedule)
        self._baseline = self._eval.score(masks_matrix(space, [PruningPlan.full(space)]))

    @property
    def n_images(self) -> int:
        return len(self.data)

    @property
    def candidates_per_pass(self) -> int:
        """One: every candidate trains on its own."""
        return 1

    def steps_of(self, k: int) -> range:
        """Global steps of the ``k``-th candidate (0-based): ``[k T / P, (k + 1) T / P)``."""
        if k >= self.planned:
            return range(self.total_steps, self.total_steps)
        t, p = self.total_steps, self.planned
        return range(k * t // p, (k + 1) * t // p)

    def baseline(self) -> EvalResult:
        """Accuracy and loss of the unpruned starting network (before any training)."""
        return self._baseline

    def evaluate(self, plans: list[PruningPlan]) -> EvalResult:
        return self.evaluate_masks(masks_matrix(self.space, plans))

    def evaluate_masks(self, masks: np.ndarray) -> EvalResult:
        """Train each row's slice of the supernet in turn, write it back, score it.

        A candidate whose training diverges leaves the supernet as it was and scores
        accuracy 0, loss inf, with a warning (``stats.diverged``).
        """
        masks = np.atleast_2d(np.asarray(masks, dtype=bool))
        if masks.shape[1] != self.space.n_channels:
            raise ConfigError(f"masks must have {self.space.n_channels} columns (one per "
                             f"channel); got shape {masks.shape}")
        acc, loss = np.zeros(len(masks)), np.zeros(len(masks))
        bar = tqdm(total=len(masks), desc="inherit + train + evaluate", unit="cand",
                   disable=not self.progress or not len(masks), leave=False)
        for i, mask in enumerate(masks):
            steps = self.steps_of(self.trained)
            self.trained += 1
            m = torch.as_tensor(mask, device=self.device)
            if self._train(m, steps):
                res = self._eval.score(mask[None])
                acc[i], loss[i] = res.accuracy[0], res.loss[0]
            else:
                acc[i], loss[i] = 0.0, math.inf
            self.stats.evaluations += 1
            self.stats.images += self.n_images + sum(
                e - s for s, e in (self._stream.bounds[j % self._stream.steps_per_epoch]
                                   for j in steps))
            bar.update(1)
        bar.close()
        return EvalResult(accuracy=acc, loss=loss)

    def _train(self, mask: torch.Tensor, steps: range) -> bool:
        """Train the candidate's tensors for ``steps``; False (supernet unchanged) on NaN."""
        if not len(steps):
            return True
        tensors, groups = _take_out(self._sliced, mask)
        params = {k: v.requires_grad_(True) for k, v in tensors.items()
                  if v.is_floating_point() and not k.endswith(("running_mean", "running_var"))}
        shared = {n: p for n, p in self.supernet.named_parameters() if n not in tensors}
        saved = {n: p.detach().clone() for n, p in shared.items()}
        saved_buffers = {n: b.detach().clone() for n, b in self.supernet.named_buffers()
                         if n not in tensors}
        r = self.recipe
        opt = torch.optim.SGD([*params.values(), *shared.values()], lr=r.lr,
                              momentum=r.momentum, nesterov=r.nesterov,
                              weight_decay=r.weight_decay)
        momentum_shared = dict(self._momentum.named_parameters())
        if r.momentum > 0:  # a zero buffer makes the first step what a fresh SGD's would be
            momentum = take_out(self._momentum_sliced, mask)
            for k, p in params.items():
                opt.state[p]["momentum_buffer"] = momentum[k]
            for n, p in shared.items():
                opt.state[p]["momentum_buffer"] = momentum_shared[n].detach().clone()
        loss_fn = nn.CrossEntropyLoss(label_smoothing=r.label_smoothing)
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        devices = [self.device] if self.device.type == "cuda" else []
        self.supernet.train()
        try:
            with torch.random.fork_rng(devices=devices), self._sliced.patched(groups):
                torch.manual_seed((self.seed * 1_000_003 + steps.start) % 2**63)  # dropout
                for step in steps:
                    x, y = self._stream.batch(step)
                    lr = _lr_at(r, step, self.total_steps)
                    for group in opt.param_groups:
                        group["lr"] = lr
                    loss = loss_fn(functional_call(self.supernet, tensors, (x,)), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    bad |= ~torch.isfinite(loss.detach())
        finally:
            self.supernet.eval()
            for p in params.values():
                p.requires_grad_(False)
        finite = not bool(bad) and all(bool(torch.isfinite(t).all()) for t in params.values())
        for p in shared.values():
            p.grad = None
        if not finite:
            with torch.no_grad():
                for n, p in shared.items():
                    p.copy_(saved[n])
                for n, b in self.supernet.named_buffers():
                    if n in saved_buffers:
                        b.copy_(saved_buffers[n])
            self.stats.diverged += 1
            warnings.warn(f"a candidate's training diverged (steps {steps.start}-{steps.stop}); "
                          "the supernet keeps its weights and the candidate scores accuracy 0. "
                          "Lower the search learning rate if this repeats.", RuntimeWarning,
                          stacklevel=3)
            return False
        write_back(self._sliced, mask, tensors)
        if r.momentum > 0:
            write_back(self._momentum_sliced, mask,
                       {k: opt.state[p]["momentum_buffer"] for k, p in params.items()})
            with torch.no_grad():
                for n, p in shared.items():
                    momentum_shared[n].copy_(opt.state[p]["momentum_buffer"])
        return True

    # ---- the rest of the scorer contract (moprune.evaluation.scorer.Scorer) --------------

    def reference_evaluator(self, split: Split, progress: bool = False) -> Evaluator:
        """A plain evaluator of the starting network on ``split`` (default execution)."""
        return Evaluator(self.model, self.space, split, self.normalization, device=self.device,
                         progress=progress, execution=Execution())

    def candidate_model(self, mask: np.ndarray) -> nn.Module:
        """The plan with the supernet's current weights, BatchNorm re-estimated (:meth:`pruned`)."""
        return self.pruned(mask)

    def report(self, data: DataBundle) -> dict:
        """The schedule, and the full-width supernet after the search, for ``baseline.json``."""
        full = self.pruned(np.ones(self.space.n_channels, dtype=bool))  # BN re-estimated once
        r = self.recipe
        norm = data.normalization
        return {
            "inheritance": {"epochs": r.epochs, "lr": r.lr, "schedule": r.schedule,
                            "planned": self.planned, "trained": self.trained,
                            "total_steps": self.total_steps},
            "supernet_val_accuracy": evaluate_accuracy(full, data.val, norm,
                                                       device=self.device)[0],
            "supernet_test_accuracy": evaluate_accuracy(full, data.test, norm,
                                                        device=self.device)[0],
            "scored_after_retraining": False,
        }

    def evaluate_on(self, masks: np.ndarray, split: Split, progress: bool = False
                    ) -> EvalResult:
        """Accuracy and loss on another split (the test split) with the supernet's weights.

        Each plan is measured as :meth:`pruned` builds it: the current weights, BatchNorm
        statistics re-estimated for the plan. Nothing is trained.
        """
        acc, loss = [], []
        for mask in np.atleast_2d(np.asarray(masks, dtype=bool)):
            a, lo = evaluate_accuracy(self.pruned(mask), split, self.normalization,
                                      device=self.device)
            acc.append(a)
            loss.append(lo)
        return EvalResult(accuracy=np.array(acc), loss=np.array(loss))

    def pruned(self, mask: np.ndarray) -> nn.Module:
        """The candidate with the supernet's current (inherited) weights, physically pruned.

        The supernet's BatchNorm statistics mix every candidate's plan, so they are
        re-estimated for this one: reset, then averaged over ``calibration_batches`` training
        batches (the first ones of the batch stream) in train mode, without gradients.
        """
        plan = PruningPlan.from_mask(self.space, np.asarray(mask, dtype=bool))
        net = prune_model(self.supernet, self.space, plan)
        if self.calibration_batches > 0:
            recalibrate_bn(net, [self._stream.batch(s)[0] for s in
                                 range(min(self.calibration_batches, self.total_steps))])
        return net.eval()

    def state_dict(self) -> dict:
        """What a resumed search needs: the supernet's weights and momentum, the position."""
        return {"supernet": {k: v.detach().cpu().clone()
                             for k, v in self.supernet.state_dict().items()},
                "momentum": {k: v.detach().cpu().clone()
                             for k, v in self._momentum.named_parameters()},
                "trained": self.trained, "recipe": asdict(self.recipe),
                "planned": self.planned, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (refused when the schedule differs)."""
        mine = {"recipe": asdict(self.recipe), "planned": self.planned, "seed": self.seed}
        theirs = {k: state.get(k) for k in mine}
        if theirs != mine:
            raise ConfigError(f"the saved supernet state was made with another schedule "
                             f"({theirs}); this evaluator has {mine}")
        self.supernet.load_state_dict(state["supernet"])
        with torch.no_grad():
            for k, p in self._momentum.named_parameters():
                p.copy_(state["momentum"][k])
        self.trained = int(state["trained"])


@dataclass(frozen=True)
class Inheritance:
    """Scoring: each plan trained as its slice of one supernet, then measured (EvoFC).

    Attributes:
        recipe: The global schedule (``epochs``: one normal training run over the search).
        planned: Candidates the search evaluates; they share the schedule's steps.

    """

    recipe: FinetuneConfig
    planned: int

    def build(self, model: nn.Module, space: PruningSpace, data: DataBundle, *, seed: int,
              device: str | torch.device, mode: str, progress: bool,
              execution: Execution) -> InheritanceEvaluator:
        """An :class:`InheritanceEvaluator` (``mode`` and ``execution`` do not apply).

        The supernet trains in its own fp32 loop.
        """
        return InheritanceEvaluator(model, space, data.train, data.val, data.normalization,
                                    self.recipe, planned=self.planned, seed=seed,
                                    device=device, progress=progress)


__all__ = ["BatchStream", "Inheritance", "InheritanceEvaluator", "take_out", "write_back"]
