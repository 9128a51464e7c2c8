"""Defining and searching a pruning problem in Python, on a torchvision ResNet-18.

This example shows the API only. The network has random weights and the images and labels
are random, so every accuracy it prints is chance level (about 0.1) and the front says
nothing about real pruning quality. Swap in a trained model and real data (for example
``moprune.data.datasets.load_dataset("imagefolder", root=..., seed=0)``) for meaningful numbers.

Run it with ``python docs/examples/torchvision_problem.py`` (CPU, a few seconds).
tests/test_docs_examples.py runs it, so it stays in step with the library.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision
from pymoo.algorithms.moo.sms import SMSEMOA
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.sampling.rnd import FloatRandomSampling
from pymoo.optimize import minimize

import moprune
from moprune import (
    Evaluator,
    FilterMaskProblem,
    LayerRatioProblem,
    MaskNSGA2Config,
    PruningSpace,
    SpacePolicy,
    mask_nsga2,
)
from moprune.data.datasets import Normalization, Split
from moprune.fronts import knee_index
from moprune.runs.export import thop_cost
from moprune.training.finetune import evaluate_accuracy

torch.manual_seed(0)
INPUT_SHAPE = (3, 32, 32)  # (C, H, W) of one image

# 1. The model: any torchvision-style classifier whose output comes straight from a Linear
#    or Conv2d layer. Random weights here (see the module docstring).
model = torchvision.models.resnet18(num_classes=10).eval()

# 2. Held-out data: uint8 images (N, C, H, W) and int64 labels, plus the normalisation the
#    model expects. Random here; a real run uses a hold-out part of the training set.
gen = torch.Generator().manual_seed(0)
val = Split(
    images=torch.randint(0, 256, (32, *INPUT_SHAPE), dtype=torch.uint8, generator=gen),
    labels=torch.randint(0, 10, (32,), generator=gen),
)
norm = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

# 3. The pruning space: Torch-Pruning's DependencyGraph finds the channel groups. With
#    residual=False only internal groups (the output of conv1 in each BasicBlock, read only
#    by that block's conv2) are prunable; residual streams stay whole. min_channels=4 keeps at
#    least 4 channels per group and fixes groups of 4 channels or fewer.
space = PruningSpace.from_model(model, INPUT_SHAPE, SpacePolicy(residual=False, min_channels=4))
print(space)
for g in space.groups:
    print(f"  group {g.index}: {g.name} ({g.size} channels, layers {', '.join(g.layers)})")

# 4. Evaluator (exact masked evaluation; "auto" = slice on CPU, gate on CUDA) and problem.
evaluator = Evaluator(model, space, val, norm, device="cpu", mode="auto", batch_size=32)
problem = FilterMaskProblem(evaluator, objectives=("error", "macs_ratio"),
                            max_macs_ratio=0.9, repair_criterion="l1")
print(f"n_var={problem.n_var} bits, baseline: {problem.baseline}")

# 5. Search with the NSGA-II preset for masks, through plain pymoo.
res = minimize(problem, mask_nsga2(problem, MaskNSGA2Config(pop_size=6)), ("n_gen", 2),
               seed=1, verbose=False)
print("final non-dominated set, columns (error, macs_ratio):")
print(res.F)

# 6. Export one member (the knee of the final set) as a physically pruned network and check
#    that thop counts exactly the MACs and parameters the cost model predicted, and that
#    its accuracy equals the masked evaluation.
X, F = np.atleast_2d(res.X), np.atleast_2d(res.F)
k = knee_index(F, method="distance")
plan = problem.encoding.decode(X[k])
pruned = moprune.prune_model(model, space, plan)
predicted = problem.cost_model.cost([plan])
macs, params = thop_cost(pruned, INPUT_SHAPE)
assert macs == int(predicted.macs[0]) and params == int(predicted.params[0])
acc, _ = evaluate_accuracy(pruned, val, norm)
assert abs(acc - evaluator.evaluate([plan]).accuracy[0]) < 1e-9
print(f"knee: kept {plan.n_kept().sum()} of {space.n_channels} prunable channels, "
      f"{macs:,} MACs per image ({2 * macs:,} FLOPs; baseline {problem.baseline['macs']:,} "
      f"MACs), {params:,} params, accuracy {acc:.3f} (random data: chance level)")

# 7. Per-group ratios ranked by the L1 criterion, searched with another pymoo algorithm.
#    SMS-EMOA gets the operators of the ratio preset (moprune.ratio_nsga2).
ratio_problem = LayerRatioProblem(evaluator, criterion="l1", max_ratio=0.8)
sms = SMSEMOA(pop_size=4, sampling=FloatRandomSampling(), crossover=SBX(prob=0.9, eta=15),
              mutation=PM(eta=20), eliminate_duplicates=True)
res2 = minimize(ratio_problem, sms, ("n_gen", 2), seed=1, verbose=False)
print(f"SMS-EMOA on {ratio_problem.n_var} ratios: {len(np.atleast_2d(res2.F))} "
      f"non-dominated; evaluator: {evaluator.stats}")
