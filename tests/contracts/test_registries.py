"""Contract tests over the plugin registries: methods, pymoo algorithms, encodings, objectives,
layer rules, recipes. Every registered entry must meet the contract the engine relies on."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest
import torch
from helpers import digits_eval_setup, one_torch_thread
from pymoo.optimize import minimize

from moprune.algorithms import ALGORITHMS
from moprune.core.layers import LAYER_RULES, LayerRule
from moprune.core.objectives import OBJECTIVES, Metrics
from moprune.criteria import ScoreContext
from moprune.errors import ConfigError, GenomeError
from moprune.evaluation.evaluator import Evaluator
from moprune.methods import METHODS, all_methods, resolve_method
from moprune.methods.base import add_method_arguments, flag_name, options_from_args
from moprune.problems import ENCODINGS
from moprune.tasks.digits import build_task
from moprune.tasks.task import TaskOptions
from moprune.training.finetune import FinetuneConfig
from moprune.training.recipes import RECIPES

REQUIRED_IDENTITY = {"pop_size", "generations", "objectives", "max_macs_ratio", "residual",
                     "criterion", "partial"}
COMMON = {"seed": 0, "max_macs_ratio": None, "max_accuracy_drop": None}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_torch_thread()


def _parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_method_arguments(parser, all_methods())
    return parser.parse_args(list(argv))


# ---- methods -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_meets_the_contract(name: str) -> None:
    method = METHODS.get(name)
    assert method.name == name and method.summary and method.group
    defaults = method.Options()  # every option has a default
    flags = method.Options.flags()
    assert {"pop_size", "generations"} <= set(flags)
    for field in dataclasses.fields(method.Options):
        assert field.name in flags, f"{name}: option {field.name} has no command-line flag"
    # no flags given: the dataclass defaults
    assert options_from_args(method, _parsed(), all_methods()) == defaults
    identity = method.identity(defaults, build_task(TaskOptions()), COMMON)
    assert REQUIRED_IDENTITY <= set(identity), REQUIRED_IDENTITY - set(identity)
    assert identity["pop_size"] == defaults.pop_size  # type: ignore[attr-defined]
    assert all(isinstance(f, str) for f in method.extra_files)
    assert method.knee({**COMMON, **identity})[0]


@pytest.mark.parametrize("name", METHODS.names())
def test_a_flag_of_another_method_is_refused_with_its_owner(name: str) -> None:
    method = METHODS.get(name)
    own = set(method.Options.flags())
    foreign = sorted({f for m in all_methods() for f in m.Options.flags()} - own)
    for field in foreign:
        owner = next(m for m in all_methods() if field in m.Options.flags())
        kind = owner.Options.flags()[field]
        value = [] if kind.action in ("switch", "toggle") else ["1"]
        if kind.choices:
            value = [str(kind.choices[0])]
        args = _parsed(flag_name(field), *value)
        with pytest.raises(ConfigError) as info:
            options_from_args(method, args, all_methods())
        message = str(info.value)
        assert flag_name(field) in message or "drop --residual" in message, message


def test_methods_are_found_by_listing_the_package_and_names_resolve() -> None:
    assert {"nsga2", "ccep", "deeppruninges", "evofc", "random"} <= set(METHODS.names())
    assert resolve_method("smsemoa").name == "smsemoa"  # a pymoo algorithm as a method
    with pytest.raises(KeyError, match="methods: .*pymoo algorithms"):
        resolve_method("nope")


# ---- pymoo algorithms and encodings --------------------------------------------------------


def _problems():
    model, space, val, normalization = digits_eval_setup()
    evaluator = Evaluator(model, space, val, normalization)
    context = ScoreContext(seed=0)
    return {name: ENCODINGS.get(name)(evaluator, "l1", ("error", "macs_ratio"), None, None,
                                      context) for name in ENCODINGS.names()}


PLAIN = [n for n in ALGORITHMS.names() if n not in ("ccep", "deeppruninges", "evofc")]


@pytest.mark.parametrize("algorithm", PLAIN)
@pytest.mark.parametrize("encoding", ["mask", "ratio"])
def test_every_registered_algorithm_searches_every_encoding(algorithm: str,
                                                            encoding: str) -> None:
    problem = _problems()[encoding]
    res = minimize(problem, ALGORITHMS.get(algorithm)(problem, 6), ("n_gen", 3), seed=1)
    X = np.atleast_2d(res.pop.get("X"))
    if encoding == "mask":
        assert np.isin(X, (0, 1)).all()
    else:
        assert (X >= problem.xl).all() and (X <= problem.xu).all()
    F = res.pop.get("F")
    assert np.isfinite(F).all()
    assert F[:, 1].min() < 1.0  # it searched: some candidate is pruned


def test_pymoo_default_operators_on_a_mask_problem_stop_with_the_fix() -> None:
    """The trap of issue 18: SMSEMOA's default float operators on bit masks."""
    from pymoo.algorithms.moo.sms import SMSEMOA

    problem = _problems()["mask"]
    with pytest.raises(GenomeError, match=r"mask operators.*\*\*problem\.operators\(\)"):
        minimize(problem, SMSEMOA(pop_size=8), ("n_gen", 2), seed=1)


@pytest.mark.parametrize("encoding", ["mask", "ratio"])
def test_real_valued_genomes_outside_the_encoding_are_refused(encoding: str) -> None:
    problem = _problems()[encoding]
    bad = np.full((2, problem.n_var), 0.37 if encoding == "mask" else 1.5)
    with pytest.raises(GenomeError, match="operators"):
        problem.evaluate(bad)


# ---- objectives ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_every_objective_is_vectorised_and_readable_from_records(name: str) -> None:
    objective = OBJECTIVES.get(name)
    n = 4
    rng = np.random.default_rng(0)
    masks = rng.random((n, 10)) < 0.7
    metrics = Metrics(accuracy=rng.random(n), loss=rng.random(n), macs=np.arange(1, n + 1) * 10,
                      params=np.arange(1, n + 1) * 3, macs_ratio=rng.random(n),
                      params_ratio=rng.random(n), masks=masks,
                      baseline={"val_accuracy": 0.9, "macs": 100, "params": 40})
    values = np.asarray(objective.compute(metrics), dtype=float)
    assert values.shape == (n,) and np.isfinite(values).all()
    assert objective.label and objective.unit
    records = [{"val_accuracy": float(metrics.accuracy[i]),
                "macs_ratio": float(metrics.macs_ratio[i]),
                "params_ratio": float(metrics.params_ratio[i]), name: float(values[i])}
               for i in range(n)]
    np.testing.assert_allclose([objective.value(r) for r in records], values)


def test_a_taken_objective_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="already registered"):
        OBJECTIVES.register("error", OBJECTIVES.get("error"))


# ---- layer rules -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [rule.kind for rule in LAYER_RULES])
def test_every_layer_rule_names_its_types_and_slices_what_it_declares(kind: str) -> None:
    rule = LAYER_RULES.get(kind)
    assert (rule.types or rule.opaque) and rule.describe()  # opaque: assigned by the space
    if rule.normalizes:  # the masked evaluator recomputes its statistics
        assert type(rule).gated_forward is not LayerRule.gated_forward, kind
    for attr, axes in rule.tensors.items():
        assert set(axes) <= {"in", "out"} and axes[0] == "out", (kind, attr)
    if rule.trained:
        assert rule.tensors, f"{kind}: weight inheritance trains tensors it cannot slice"


def test_a_taken_layer_kind_is_refused() -> None:
    with pytest.raises(ConfigError, match="already registered"):
        LAYER_RULES.register(LAYER_RULES.get("conv"))


def test_layer_rules_classify_by_the_most_specific_type() -> None:
    conv = torch.nn.Conv2d(4, 4, 3, groups=4)
    assert LAYER_RULES.classify(conv, "dw").kind == "depthwise"
    assert LAYER_RULES.classify(torch.nn.Conv2d(4, 6, 3), "c").kind == "conv"
    assert LAYER_RULES.classify(torch.nn.Conv2d(4, 6, 3, groups=2), "g").kind == "grouped_conv"


# ---- recipes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RECIPES.names())
def test_every_recipe_keeps_the_epochs(name: str) -> None:
    base = FinetuneConfig(epochs=3, lr=0.01)
    assert RECIPES.get(name)(base, 7).epochs == 7
