"""``moprune search --algorithm deeppruninges`` and the trade-off export, on the digits demo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import run_main

from moprune.cli.main import main
from moprune.fronts import trade_off_models
from moprune.runs.rundir import RunDir

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "problems" / "digits_demo.py"


def es_args(out: Path, weights: Path, *extra: str) -> list[str]:
    return ["search", str(DIGITS), "--weights", str(weights), "--algorithm", "deeppruninges",
            "--pop-size", "6", "--generations", "3", "--partial-epochs", "1",
            "--train-images", "150", "--eval-images", "96", "--test-images", "96",
            "--out", str(out), "--quiet", *extra]


@pytest.fixture(scope="module")
def es_run(tmp_path_factory: pytest.TempPathFactory, digits_weights: Path) -> Path:
    """A small DeepPruningES run with partial retraining and the line knee."""
    out = tmp_path_factory.mktemp("es") / "run"
    assert main(es_args(out, digits_weights, "--knee-method", "line")) == 0
    return out


def test_search_records_the_method_settings(es_run):
    ident = RunDir(es_run).config()["identity"]
    assert ident["algorithm"] == "deeppruninges"
    assert ident["pop_size"] == 6 and ident["generations"] == 3
    assert ident["deeppruninges"] == {"pop_size": 6, "mutation_rate": 0.2, "knee_method": "line",
                                      "knee_weights": None, "heavy_objective": None,
                                      "light_objective": None}
    assert ident["partial"] == {"epochs": 1, "lr": 1e-3}
    assert ident["residual"] is True
    baseline = RunDir(es_run).baseline()
    assert baseline["scored_after_retraining"] is True
    assert baseline["retrain"]["lr"] == 1e-3 and baseline["retrain"]["nesterov"] is True


def test_elite_log_has_one_row_per_generation(es_run):
    run = RunDir(es_run)
    rows = run.read_jsonl("elites.jsonl")
    ids = {r["id"]: r for r in run.candidates()}
    assert [r["generation"] for r in rows] == [1, 2, 3]
    assert all(rows[0][role]["id"] == 0 for role in ("heavy", "light", "knee"))  # unpruned
    for row in rows:
        for role in ("heavy", "light", "knee"):
            rec = ids[row[role]["id"]]
            assert rec["val_accuracy"] == row[role]["val_accuracy"]
            assert rec["generation"] <= row["generation"]
    assert (es_run / "plots" / "elites.png").is_file()


def test_pick_knee_uses_the_runs_knee_definition(es_run, capsys):
    run = RunDir(es_run)
    expected = trade_off_models(run.front(), ("error", "macs_ratio"), "line")["knee"]
    status, out, err = run_main(["pick", str(es_run), "--knee", "--json"], capsys)
    assert status == 0, err
    assert json.loads(out)["id"] == expected["id"]
    weighted = trade_off_models(run.front(), ("error", "macs_ratio"), "distance", (2.0, 1.0))
    status, out, err = run_main(["pick", str(es_run), "--knee", "--knee-method", "distance",
                                 "--knee-weights", "2,1", "--json"], capsys)
    assert status == 0, err
    assert json.loads(out)["id"] == weighted["knee"]["id"]


def test_export_of_a_retrained_run_reproduces_the_scored_network(es_run, tmp_path, capsys):
    """The exported knee is the candidate retrained with its own seed: same hold-out score."""
    run = RunDir(es_run)
    knee = trade_off_models(run.front(), ("error", "macs_ratio"), "line")["knee"]
    status, out, err = run_main(["export", str(es_run), "--id", "knee", "--out",
                                 str(tmp_path / "knee.pt"), "--quiet"], capsys)
    assert status == 0, err
    payload = torch.load(tmp_path / "knee.pt", weights_only=False)
    assert payload["id"] == knee["id"]
    assert payload["metrics"]["val_accuracy"] == knee["val_accuracy"]
    assert payload["metrics"]["test_accuracy"] == knee["test_accuracy"]
    assert payload["metrics"]["macs"] == knee["macs"]


def test_export_elites_with_the_published_final_recipe(es_run, tmp_path, capsys):
    out = tmp_path / "elites"
    status, text, err = run_main(["export", str(es_run), "--elites", "--out", str(out),
                                  "--finetune-epochs", "1", "--recipe", "deeppruninges",
                                  "--quiet"], capsys)
    assert status == 0, err
    summary = json.loads((out / "elites.json").read_text())
    assert summary["knee_method"] == "line" and summary["finetune_epochs"] == 1
    front_ids = {r["id"] for r in RunDir(es_run).front()}
    for role in ("heavy", "knee", "light"):
        metrics = torch.load(out / f"{role}.pt", weights_only=False)["metrics"]
        assert metrics["finetune_config"]["lr"] == 1e-4
        assert metrics["finetune_config"]["nesterov"] is True
        assert metrics["finetune_config"]["schedule"] == "constant"
        assert summary["models"][role]["record"]["id"] in front_ids
        assert role in text
    light = summary["models"]["light"]["record"]
    assert light["macs"] == min(r["macs"] for r in RunDir(es_run).front())
    md = (out / "elites.md").read_text()
    assert md.count("\n| ") >= 5  # header rule, baseline and three models
    for suffix in ("png", "svg"):
        assert (out / f"elites.{suffix}").stat().st_size > 0


def test_same_seed_same_front(es_run, digits_weights, tmp_path):
    again = tmp_path / "again"
    assert main(es_args(again, digits_weights, "--knee-method", "line")) == 0
    for name in ("front.json", "candidates.jsonl", "elites.jsonl"):
        assert (again / name).read_text() == (es_run / name).read_text(), name


def test_resume_with_other_partial_training_is_refused(es_run, capsys):
    status, out, err = run_main(es_args(es_run, Path(RunDir(es_run).config()["identity"]
                                                     ["weights"]), "--knee-method", "line",
                                        "--partial-epochs", "2", "--resume"), capsys)
    assert status == 2
    assert "partial.epochs" in err


@pytest.mark.parametrize(("extra", "message"), [
    (["--algorithm", "nsga2", "--mutation-rate", "0.3"], "--mutation-rate is an option of"),
    (["--algorithm", "ccep", "--partial-epochs", "1"], "--partial-epochs does not apply"),
    (["--algorithm", "ccep", "--residual"], "drop --residual / --no-residual"),
    (["--algorithm", "ccep", "--no-residual"], "drop --residual / --no-residual"),
    (["--algorithm", "nsga2", "--partial-lr", "0.01"], "--partial-lr needs --partial-epochs"),
    (["--algorithm", "deeppruninges", "--partial-lr", "inf"], "--partial-lr must be a finite"),
    (["--algorithm", "nsga2", "--knee-method", "line"], "choose DeepPruningES's elites"),
    (["--algorithm", "deeppruninges", "--pop-size", "3"], "pop_size >= 4"),
    (["--algorithm", "deeppruninges", "--knee-method", "nope"], "knee method"),
    (["--algorithm", "deeppruninges", "--knee-weights", "1,2,3"], "--knee-weights has 3 values"),
])
def test_bad_combinations_are_clear_errors(extra, message, digits_weights, tmp_path, capsys):
    argv = ["search", str(DIGITS), "--weights", str(digits_weights), "--out",
            str(tmp_path / "bad"), "--quiet", "--generations", "1", *extra]
    status, out, err = run_main(argv, capsys)
    assert status == 2
    assert message in err
    assert not (tmp_path / "bad" / "candidates.jsonl").exists()


@pytest.mark.parametrize("argv", [
    ["--knee-weights", "1,-1"], ["--knee-weights", "0,0"], ["--knee-weights", "a,b"],
])
def test_bad_knee_weights_are_refused_by_the_parser(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["search", str(DIGITS), "--out", str(tmp_path / "x"), *argv])
    assert exc.value.code == 2
    assert "weights" in capsys.readouterr().err


def test_pick_knee_options_need_knee(es_run, capsys):
    status, out, err = run_main(["pick", str(es_run), "--list", "--knee-method", "line"], capsys)
    assert status == 2 and "use them with --knee" in err


def test_export_refuses_a_recipe_without_epochs_and_a_file_as_folder(es_run, tmp_path, capsys):
    status, out, err = run_main(["export", str(es_run), "--id", "knee", "--out",
                                 str(tmp_path / "k.pt"), "--recipe", "deeppruninges"], capsys)
    assert status == 2 and "--finetune-epochs N > 0" in err
    existing = tmp_path / "file.pt"
    existing.write_bytes(b"x")
    status, out, err = run_main(["export", str(es_run), "--elites", "--out", str(existing)],
                                capsys)
    assert status == 2 and "is a file: pass a folder" in err


def test_diverging_partial_retraining_scores_zero_and_the_search_finishes(
        digits_weights, tmp_path, capsys):
    out = tmp_path / "diverge"
    with pytest.warns(RuntimeWarning, match="diverged"):
        status = main(es_args(out, digits_weights, "--partial-lr", "1e6", "--generations", "2"))
    assert status == 0, capsys.readouterr().err
    records = RunDir(out).candidates()
    assert any(r["val_accuracy"] == 0.0 for r in records)


def test_export_id_must_be_a_number_or_a_role(es_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", str(es_run), "--id", "middle", "--out", str(tmp_path / "m.pt")])
    assert exc.value.code == 2
    assert "heavy, light or knee" in capsys.readouterr().err
