"""docs/examples/plugin_problem.py: a layer rule, an objective and an algorithm from a problem
file, and the fifth method (random search, one file), through search, plot, pick and export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_main

from moprune.cli.main import main
from moprune.core.gated import GatedModel
from moprune.core.plan import PruningPlan
from moprune.core.sliced import SlicedModel
from moprune.core.space import PruningSpace
from moprune.core.surgery import prune_model
from moprune.runs.export import thop_cost
from moprune.runs.rundir import RunDir
from moprune.tasks.task import TaskOptions, load_problem_file

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "plugin_problem.py"
SMALL = ["--eval-images", "96", "--test-images", "96", "--quiet"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plugin") / "scaled.pt"
    assert main(["finetune", str(EXAMPLE), "--epochs", "8", "--lr", "0.05", "--out", str(out),
                 "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def run(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plugin") / "run"
    assert main(["search", str(EXAMPLE), "--weights", str(weights), "--algorithm", "nsga2_wide",
                 "--pop-size", "8", "--generations", "3", "--out", str(out), *SMALL]) == 0
    return out


def test_the_custom_layer_is_pruned_exactly() -> None:
    task = load_problem_file(EXAMPLE, TaskOptions())
    space = PruningSpace.from_model(task.model, task.input_shape, task.policy)
    scales = [n for n, info in space.layers.items() if info.kind == "channel_scale"]
    assert len(scales) == 3 and space.n_groups == 3
    gen = np.random.default_rng(0)
    mask = gen.random(space.n_channels) < 0.5
    for g in range(space.n_groups):
        mask[space.offsets[g]] = True
    plan = PruningPlan.from_mask(space, mask)
    x = torch.randn(4, *task.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pruned = prune_model(task.model, space, plan)
        expected = pruned(x)
        gated = GatedModel(task.model, space).forward(x, torch.as_tensor(mask)[None])[0]
        sliced = SlicedModel(task.model, space).forward(x, torch.as_tensor(mask))
    torch.testing.assert_close(gated, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sliced, expected, rtol=1e-4, atol=1e-5)
    assert pruned.features[1].weight.shape[0] == len(plan.keep[0])


def test_search_records_and_plots_the_custom_objective(run: Path) -> None:
    r = RunDir(run)
    assert r.config()["identity"]["algorithm"] == "nsga2_wide"
    assert r.config()["identity"]["objectives"] == ["error", "macs_ratio", "kept_channels"]
    records = r.candidates()
    assert records and all(0 < rec["kept_channels"] <= 1 for rec in records)
    for rec in records:  # the stored value is the fraction of kept channels
        assert rec["kept_channels"] == pytest.approx(sum(rec["kept"]) / 80)
    assert min(rec["kept_channels"] for rec in records) < 0.6  # the wide initial masks
    assert (run / "plots" / "front_kept_channels.png").stat().st_size > 0


def test_pick_by_the_custom_objective(run: Path, capsys) -> None:
    status, out, err = run_main(["pick", str(run), "--max", "kept_channels=0.7", "--json"],
                                capsys)
    assert status == 0, err
    chosen = json.loads(out)
    assert chosen["objectives"]["kept_channels"] <= 0.7
    assert chosen["rule"] == "kept_channels<=0.7"
    ok = [rec for rec in RunDir(run).front() if rec["kept_channels"] <= 0.7]
    assert chosen["val_accuracy"] == max(rec["val_accuracy"] for rec in ok)
    status, _, err = run_main(["pick", str(run), "--max", "params=0.5"], capsys)
    assert status == 2 and "not an objective of this run" in err


def test_plot_and_export_with_the_custom_layer(run: Path, tmp_path: Path, capsys) -> None:
    status, out, err = run_main(["plot", str(run), "--id", "1"], capsys)
    assert status == 0, err
    assert "kept_channels_id1.png" in out
    target = tmp_path / "knee.pt"
    status, out, err = run_main(["export", str(run), "--id", "knee", "--out", str(target),
                                 "--finetune-epochs", "1", "--quiet"], capsys)
    assert status == 0, err
    payload = torch.load(target, weights_only=False)
    knee = RunDir(run).record(payload["id"])
    # the analytic cost of the search equals thop's count (with the rule's counter)
    assert thop_cost(payload["model"], payload["input_shape"]) == (knee["macs"], knee["params"])
    assert payload["metrics"]["macs"] == knee["macs"]


def test_the_fifth_method_runs_from_the_command_line(weights: Path, tmp_path: Path,
                                                     capsys) -> None:
    out = tmp_path / "random"
    status, text, err = run_main(["search", str(EXAMPLE), "--weights", str(weights),
                                  "--algorithm", "random", "--pop-size", "6", "--generations",
                                  "2", "--out", str(out), *SMALL], capsys)
    assert status == 0, err
    r = RunDir(out)
    assert r.config()["identity"]["algorithm"] == "random"
    gens = [rec["generation"] for rec in r.candidates()]
    assert set(gens) == {1, 2} and len(gens) <= 12
    assert r.front() and all("test_accuracy" in rec for rec in r.front())
    status, _, err = run_main(["pick", str(out), "--knee"], capsys)
    assert status == 0, err
