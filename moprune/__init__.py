"""moprune: evolutionary multi-objective filter pruning of CNNs on pymoo and PyTorch.

The public API of every layer (see docs/architecture.md): the engine (spaces, plans, costs,
evaluators, surgery), the pymoo problems and algorithm presets, the registries extensions
plug into, tasks and problem files, and the error base class.
"""

from moprune.algorithms import ALGORITHMS
from moprune.algorithms.evofc import EvoFCConfig, evofc_nsga2
from moprune.algorithms.presets import MaskNSGA2Config, mask_nsga2, ratio_nsga2
from moprune.core.cost import Cost, CostModel
from moprune.core.execution import Execution
from moprune.core.layers import LAYER_RULES, LayerRule
from moprune.core.objectives import OBJECTIVES, Objective
from moprune.core.plan import PruningPlan
from moprune.core.space import PruningSpace, SpacePolicy
from moprune.core.surgery import prune_model
from moprune.criteria import CRITERIA
from moprune.errors import MopruneError
from moprune.evaluation.evaluator import Evaluator
from moprune.evaluation.inheritance import InheritanceEvaluator
from moprune.evaluation.retraining import RetrainingEvaluator
from moprune.methods import METHODS
from moprune.problems import ENCODINGS
from moprune.problems.criterion_ratio import CriterionRatioProblem
from moprune.problems.mask import FilterMaskProblem
from moprune.problems.ratio import LayerRatioProblem
from moprune.tasks.setup import make_problem
from moprune.tasks.task import PruningTask, TaskOptions, load_problem_file
from moprune.version import __version__
from moprune.zoo import torchvision_layers as _torchvision_layers  # noqa: F401 - registers rules

__all__ = [
    "ALGORITHMS", "CRITERIA", "ENCODINGS", "LAYER_RULES", "METHODS", "OBJECTIVES", "Cost",
    "CostModel", "CriterionRatioProblem", "Evaluator", "EvoFCConfig", "Execution",
    "FilterMaskProblem", "InheritanceEvaluator", "LayerRatioProblem", "LayerRule",
    "MaskNSGA2Config", "MopruneError", "Objective", "PruningPlan", "PruningSpace", "PruningTask",
    "RetrainingEvaluator", "SpacePolicy", "TaskOptions", "__version__", "evofc_nsga2",
    "load_problem_file", "make_problem", "mask_nsga2", "prune_model", "ratio_nsga2",
]
