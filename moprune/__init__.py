"""moprune: evolutionary multi-objective filter pruning of CNNs on pymoo and PyTorch."""

from moprune.algorithms import ALGORITHMS, MaskNSGA2Config, mask_nsga2, ratio_nsga2
from moprune.cost import Cost, CostModel
from moprune.criteria import CRITERIA
from moprune.evaluator import Evaluator
from moprune.evofc import CriterionRatioProblem, EvoFCConfig, evofc_nsga2
from moprune.execution import Execution
from moprune.inheritance import InheritanceEvaluator
from moprune.plan import PruningPlan
from moprune.problems import FilterMaskProblem, LayerRatioProblem
from moprune.space import PruningSpace, SpacePolicy
from moprune.surgery import prune_model

__version__ = "0.1.0"

__all__ = [
    "ALGORITHMS", "CRITERIA", "Cost", "CostModel", "CriterionRatioProblem", "Evaluator",
    "EvoFCConfig", "Execution", "FilterMaskProblem", "InheritanceEvaluator", "LayerRatioProblem",
    "MaskNSGA2Config", "PruningPlan", "PruningSpace", "SpacePolicy", "__version__",
    "evofc_nsga2", "mask_nsga2", "prune_model", "ratio_nsga2",
]
