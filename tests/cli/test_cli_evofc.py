"""``moprune search --algorithm evofc`` and the export of its runs, on the digits demo.

Tiny budgets (pop 4, 3 generations, 10 search epochs over 400 training images, 100 hold-out
and 100 test images): each search takes one or two seconds on one CPU thread.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_main

import moprune.methods.tradeoffs
import moprune.training.finetune
from moprune.cli.main import main
from moprune.core.surgery import prune_model
from moprune.methods import METHODS
from moprune.methods.rebuild import setup_from_run
from moprune.methods.tradeoffs import resolve_role
from moprune.problems.criterion_ratio import EVOFC_CRITERIA, group_stages
from moprune.runs.export import checkpoint_file
from moprune.runs.rundir import RunDir

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "problems" / "digits_demo.py"
POP, GENS, EPOCHS, TRAIN, EVAL, TEST = 4, 3, 10, 400, 100, 100
PLANNED = POP + POP * (GENS - 1)  # offspring = pop size by default
BATCH = 64  # the digits recipe's batch size
EVOFC_OPTIONS = {  # each option of the evofc group with a valid value
    "--criteria": ["grad_l1"], "--lower-bounds": ["0.2"], "--max-ratio": ["0.5"],
    "--variables": ["mixed"], "--offspring": ["2"], "--init": ["pretrained"],
    "--training": ["none"], "--search-epochs": ["1"], "--search-lr": ["0.1"],
    "--reinit-criteria": [], "--no-reinit-criteria": [],
}


def evofc_args(out: Path, *extra: str) -> list[str]:
    return ["search", str(DIGITS), "--algorithm", "evofc", "--pop-size", str(POP),
            "--generations", str(GENS), "--search-epochs", str(EPOCHS),
            "--train-images", str(TRAIN), "--eval-images", str(EVAL),
            "--test-images", str(TEST), "--out", str(out), "--quiet", *extra]


def supernet_tensors(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "supernet.pt", map_location="cpu", weights_only=True)["supernet"]


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def genome_pairs(record: dict) -> np.ndarray:
    """``(groups, 2)``: per group the ratio and the criterion gene of a recorded genome."""
    return np.array([float(v) for v in record["genome"].split(",")]).reshape(-1, 2)


def candidate_lines(run: Path) -> list[tuple]:
    return [(r["id"], r["generation"], r["genome"], r["val_accuracy"])
            for r in RunDir(run).candidates()]


def assert_same_search(a: Path, b: Path) -> None:
    """Same candidates (genomes, scores), same front, same final supernet."""
    assert candidate_lines(a) == candidate_lines(b)
    assert (a / "candidates.jsonl").read_bytes() == (b / "candidates.jsonl").read_bytes()
    assert (a / "front.json").read_bytes() == (b / "front.json").read_bytes()
    assert (a / "baseline.json").read_bytes() == (b / "baseline.json").read_bytes()
    assert_same_tensors(supernet_tensors(a), supernet_tensors(b))


def refused_without_writing(argv: list[str], out: Path, capsys) -> str:
    status, _, err = run_main(argv, capsys)
    assert status == 2, err
    assert err.startswith("moprune "), err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir()), "a refused search wrote into --out"
    return err


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these tiny networks train several times faster on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def evofc_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """EvoFC with its defaults (random init, weight inheritance), tiny budgets; its stdout."""
    out = tmp_path_factory.mktemp("evofc") / "run"
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        assert main(evofc_args(out)) == 0
    return out, text.getvalue()


@pytest.fixture(scope="module")
def knee_export(evofc_run, tmp_path_factory) -> Path:
    """The knee of ``evofc_run`` exported as scored (inherited weights, no fine-tuning)."""
    path = tmp_path_factory.mktemp("export") / "knee.pt"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["export", str(evofc_run[0]), "--id", "knee", "--out", str(path),
                     "--quiet"]) == 0
    return path


# ---- the run ----------------------------------------------------------------------------


def test_search_records_the_evofc_settings(evofc_run):
    run_dir, _ = evofc_run
    ident = RunDir(run_dir).config()["identity"]
    assert ident["algorithm"] == "evofc"
    assert ident["pop_size"] == POP and ident["generations"] == GENS
    assert ident["partial"] is None
    assert ident["evofc"] == {
        "criteria": list(EVOFC_CRITERIA), "lower": "0", "max_ratio": 0.99,
        "variables": "pairs", "reinit_criteria": True, "init": "random",
        "training": "inherit", "epochs": EPOCHS, "lr": 0.1, "planned": PLANNED,
        "nsga2": {"pop_size": POP, "n_offsprings": POP, "crossover_prob": 0.9,
                  "mutation_eta": 3.0, "mutation_prob_var": None},
    }


def test_search_writes_candidates_baseline_and_supernet(evofc_run):
    run_dir, _ = evofc_run
    run = RunDir(run_dir)
    records = run.candidates()
    # pymoo eliminates duplicate genomes; real-coded pairs never repeat: every planned
    # candidate is evaluated and recorded, in generations of POP
    assert len(records) == PLANNED
    assert [r["id"] for r in records] == list(range(PLANNED))
    assert [r["generation"] for r in records] == [g for g in range(1, GENS + 1)
                                                  for _ in range(POP)]
    assert len({r["genome"] for r in records}) == PLANNED
    for r in records:
        pairs = genome_pairs(r)
        assert pairs.shape == (3, 2)
        assert ((pairs[:, 0] >= 0.0) & (pairs[:, 0] <= 0.99)).all(), r
        assert ((pairs[:, 1] >= 0.0) & (pairs[:, 1] <= 1.0)).all(), r
        assert 0.0 <= r["val_accuracy"] <= 1.0

    baseline = run.baseline()
    steps_per_epoch = math.ceil(TRAIN / BATCH)
    assert baseline["inheritance"] == {"epochs": EPOCHS, "lr": 0.1, "schedule": "cosine",
                                       "planned": PLANNED, "trained": PLANNED,
                                       "total_steps": EPOCHS * steps_per_epoch}
    assert baseline["scored_after_retraining"] is False
    assert baseline["val_images"] == EVAL and baseline["test_images"] == TEST
    for key in ("supernet_val_accuracy", "supernet_test_accuracy"):
        assert 0.0 <= baseline[key] <= 1.0
    # the supernet learned something: far above the random start and chance
    assert baseline["supernet_val_accuracy"] > 0.2, baseline
    assert baseline["supernet_val_accuracy"] > baseline["val_accuracy"] + 0.1, baseline

    state = torch.load(run_dir / "supernet.pt", map_location="cpu", weights_only=True)
    assert state["trained"] == PLANNED and state["planned"] == PLANNED and state["seed"] == 0
    # the checkpoint of the last generation holds the same supernet
    checkpoint = run.load_checkpoint()
    assert checkpoint["generation"] == GENS
    assert checkpoint["evaluator"]["trained"] == PLANNED
    assert_same_tensors(checkpoint["evaluator"]["supernet"], state["supernet"])

    front = run.front()
    by_id = {r["id"]: r for r in records}
    for member in front:
        assert 0.0 <= member["test_accuracy"] <= 1.0
        assert member["val_accuracy"] == by_id[member["id"]]["val_accuracy"]
    assert (run_dir / "plots" / "front.png").stat().st_size > 0


def test_search_prints_the_scoring_and_the_summary(evofc_run):
    _, text = evofc_run
    assert "EvoFC from a random initialisation" in text
    assert "criteria grad_l1, grad_l2, grad_es, grad_gm" in text
    assert f"{math.ceil(TRAIN / BATCH) * EPOCHS} steps shared by {PLANNED} candidates" in text
    for role in ("baseline", "heavy", "knee", "light"):
        assert role in text
    assert "full-width supernet reaches" in text
    assert f"{PLANNED} candidates evaluated" in text


def test_same_seed_same_candidates_and_supernet(evofc_run, tmp_path):
    again = tmp_path / "again"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(evofc_args(again)) == 0
    assert_same_search(evofc_run[0], again)


# ---- resume -----------------------------------------------------------------------------


class Interrupted(Exception):
    """Stands in for a crash in the middle of a search or an export."""


@pytest.mark.parametrize("after_saving", [True, False],
                         ids=["crash after generation 1's checkpoint",
                              "crash before generation 2's checkpoint"])
def test_resume_after_an_interruption_equals_an_uninterrupted_run(
        evofc_run, tmp_path, capsys, monkeypatch, after_saving):
    out = tmp_path / "interrupted"
    real_save = RunDir.save_checkpoint
    crash_at = 1 if after_saving else 2

    def crashing_save(self, state):
        if after_saving or state["generation"] != crash_at:
            real_save(self, state)
        if state["generation"] == crash_at:
            raise Interrupted

    monkeypatch.setattr(RunDir, "save_checkpoint", crashing_save)
    with pytest.raises(Interrupted):
        main(evofc_args(out))
    monkeypatch.undo()
    run = RunDir(out)
    state = run.load_checkpoint()
    assert state["generation"] == 1
    assert state["evaluator"]["trained"] == POP  # the supernet after generation 1
    assert max(r["generation"] for r in run.candidates()) == crash_at
    assert not (out / "supernet.pt").exists() and not (out / "front.json").exists()

    status, _, err = run_main(evofc_args(out, "--resume"), capsys)
    assert status == 0, err
    assert_same_search(evofc_run[0], out)


def test_resume_after_the_last_generation_writes_front_and_supernet(evofc_run, tmp_path,
                                                                   capsys):
    """Killed after the last checkpoint, before the front: --resume writes both again."""
    copy = tmp_path / "copy"
    shutil.copytree(evofc_run[0], copy)
    (copy / "front.json").unlink()
    (copy / "finished.json").unlink()
    (copy / "supernet.pt").unlink()
    status, _, err = run_main(evofc_args(copy, "--resume"), capsys)
    assert status == 0, err
    assert_same_search(evofc_run[0], copy)


def test_resume_with_other_evofc_options_is_refused(evofc_run, capsys):
    run_dir = evofc_run[0]
    before = (run_dir / "candidates.jsonl").read_bytes()
    status, _, err = run_main(evofc_args(run_dir, "--search-lr", "0.05", "--resume"), capsys)
    assert status == 2
    assert "evofc.lr" in err
    assert (run_dir / "candidates.jsonl").read_bytes() == before


# ---- variants ---------------------------------------------------------------------------


def test_mixed_variables_with_fewer_offspring(tmp_path, capsys):
    out = tmp_path / "mixed"
    status, text, err = run_main(evofc_args(out, "--variables", "mixed", "--offspring", "2"),
                                 capsys)
    assert status == 0, err
    run = RunDir(out)
    ident = run.config()["identity"]["evofc"]
    planned = POP + 2 * (GENS - 1)
    assert ident["variables"] == "mixed" and ident["planned"] == planned
    assert ident["nsga2"]["n_offsprings"] == 2
    records = run.candidates()
    # no duplicate came up: every planned candidate was evaluated (POP, then 2 per generation)
    assert len(records) == planned
    assert [r["id"] for r in records] == list(range(planned))
    assert [r["generation"] for r in records] == [1] * POP + [2] * 2 + [3] * 2
    assert len({r["genome"] for r in records}) == planned
    centres = {(i + 0.5) / len(EVOFC_CRITERIA) for i in range(len(EVOFC_CRITERIA))}
    for r in records:  # recorded as pair vectors, a criterion choice as its bin's centre
        pairs = genome_pairs(r)
        assert ((pairs[:, 0] >= 0.0) & (pairs[:, 0] <= 0.99)).all(), r
        assert set(pairs[:, 1].tolist()) <= centres, r
    assert run.baseline()["inheritance"]["trained"] == len(records)
    assert (out / "supernet.pt").is_file()
    assert "knee" in text


def test_training_from_scratch(tmp_path, capsys):
    out = tmp_path / "scratch"
    status, text, err = run_main(evofc_args(out, "--training", "scratch", "--search-epochs",
                                            "1"), capsys)
    assert status == 0, err
    run = RunDir(out)
    assert run.config()["identity"]["evofc"]["training"] == "scratch"
    baseline = run.baseline()
    assert baseline["scored_after_retraining"] is True
    assert "inheritance" not in baseline and not (out / "supernet.pt").exists()
    assert "re-initialised and trained 1 epoch(s)" in text
    assert len(run.candidates()) == PLANNED

    # the export trains the knee again from the same seeded re-initialisation
    knee = resolve_role(run, METHODS.get("evofc"), "knee")
    status, _, err = run_main(["export", str(out), "--id", "knee", "--out",
                               str(tmp_path / "k.pt"), "--quiet"], capsys)
    assert status == 0, err
    metrics = torch.load(tmp_path / "k.pt", weights_only=False)["metrics"]
    assert metrics["val_accuracy"] == pytest.approx(knee["val_accuracy"], abs=1e-9)
    assert metrics["test_accuracy"] == pytest.approx(knee["test_accuracy"], abs=1e-9)


def test_no_training_from_pretrained_weights(digits_weights, tmp_path, capsys):
    out = tmp_path / "none"
    status, text, err = run_main(evofc_args(out, "--training", "none", "--init", "pretrained",
                                            "--weights", str(digits_weights)), capsys)
    assert status == 0, err
    run = RunDir(out)
    ident = run.config()["identity"]["evofc"]
    assert ident["training"] == "none" and ident["init"] == "pretrained"
    assert ident["lr"] == 0.01  # the problem's lr from pretrained weights
    baseline = run.baseline()
    assert baseline["val_accuracy"] > 0.9  # the trained digits network, not a random one
    assert "inheritance" not in baseline and not (out / "supernet.pt").exists()
    assert baseline["scored_after_retraining"] is False
    assert "scored as is (no training)" in text and "the problem file's weights" in text
    # scored as is: the exported knee measures what the search measured
    knee = resolve_role(run, METHODS.get("evofc"), "knee")
    status, _, err = run_main(["export", str(out), "--id", "knee", "--out",
                               str(tmp_path / "k.pt"), "--quiet"], capsys)
    assert status == 0, err
    metrics = torch.load(tmp_path / "k.pt", weights_only=False)["metrics"]
    assert metrics["val_accuracy"] == pytest.approx(knee["val_accuracy"], abs=1e-9)
    assert metrics["test_accuracy"] == pytest.approx(knee["test_accuracy"], abs=1e-9)


def test_stage_lower_bounds_hold_for_every_candidate(tmp_path, capsys):
    out = tmp_path / "stages"
    status, _, err = run_main(evofc_args(out, "--lower-bounds", "stages:0.3,0.5",
                                         "--max-ratio", "0.8"), capsys)
    assert status == 0, err
    run = RunDir(out)
    assert run.config()["identity"]["evofc"]["lower"] == "stages:0.3,0.5"
    setup = setup_from_run(run, progress=False)
    stages = group_stages(setup.space)
    assert stages.tolist() == [0, 0, 1]  # 8x8 (conv1, conv2), then 4x4 (conv3)
    lower = np.array([0.3, 0.5])[stages]
    sizes = np.array([g["size"] for g in run.baseline()["groups"]])
    records = run.candidates()
    assert len(records) == PLANNED
    for r in records:
        ratios = genome_pairs(r)[:, 0]
        assert (ratios >= lower).all() and (ratios <= 0.8).all(), r
        # kept = max(min_channels, ceil(n (1 - ratio))) <= ceil(n (1 - lower bound))
        assert (np.array(r["kept"]) <= np.ceil(np.round(sizes * (1 - lower), 9))).all(), r
        assert (np.array(r["kept"]) >= 2).all(), r  # the demo's min_channels


@pytest.mark.parametrize(("spec", "given"), [("stages:0.3", 1), ("stages:0.2,0.4,0.6", 3)])
def test_wrong_number_of_stage_bounds_is_a_clear_error(spec, given, tmp_path, capsys):
    out = tmp_path / "bad"
    err = refused_without_writing(evofc_args(out, "--lower-bounds", spec), out, capsys)
    assert f"give {given} values, but the model has 2 stages" in err
    assert "one value per stage" in err


# ---- refused options --------------------------------------------------------------------


@pytest.mark.parametrize("option", sorted(EVOFC_OPTIONS))
@pytest.mark.parametrize("algorithm", ["nsga2", "ccep", "deeppruninges"])
def test_evofc_options_are_refused_for_other_algorithms(option, algorithm, tmp_path, capsys):
    out = tmp_path / "bad"
    argv = ["search", str(DIGITS), "--algorithm", algorithm, "--generations", "1",
            "--out", str(out), "--quiet", option, *EVOFC_OPTIONS[option]]
    err = refused_without_writing(argv, out, capsys)
    named = "--reinit-criteria" if option == "--no-reinit-criteria" else option
    assert f"{named} is an option of --algorithm evofc, not of {algorithm}" in err


@pytest.mark.parametrize(("extra", "message"), [
    (["--partial-epochs", "1"], "--partial-epochs does not apply to evofc"),
    (["--search-epochs", "0"], "--training inherit needs --search-epochs > 0"),
    (["--training", "inherit", "--search-epochs", "0"],
     "--training inherit needs --search-epochs > 0"),
    (["--training", "scratch", "--search-epochs", "0"],
     "--training scratch needs --search-epochs > 0"),
    (["--criteria", "grad_l1,nope"], "unknown criterion 'nope'"),
    (["--criteria", "grad_l1,grad_l1"], "criteria must be distinct"),
    (["--lower-bounds", "cosine:0.1"], "need two values"),
    (["--lower-bounds", "abc"], "expected comma-separated numbers"),
    (["--lower-bounds", "wave:0.1"], "unknown lower-bound schedule"),
    (["--lower-bounds", "-0.1"], "lower bounds must be finite and >= 0"),
    (["--lower-bounds", "0.995"],
     "lower bounds must be in [0, max_ratio=0.99); got '0.995'"),
    (["--max-ratio", "1"], "max_ratio must be in (0, 1)"),
    (["--search-lr", "0"], "lr must be a finite number > 0"),
    (["--search-lr", "nan"], "lr must be a finite number > 0"),
    (["--mutation-rate", "0.3"], "--mutation-rate is an option of"),
    (["--knee-method", "line"], "choose DeepPruningES's elites"),
    (["--max-accuracy-drop", "0.02"], "untrained with --init random"),
])
def test_bad_evofc_settings_are_clear_errors(extra, message, tmp_path, capsys):
    out = tmp_path / "bad"
    err = refused_without_writing(evofc_args(out, *extra), out, capsys)
    assert message in err


def test_refused_search_leaves_an_existing_empty_folder_empty(tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    refused_without_writing(evofc_args(out, "--criteria", "nope"), out, capsys)
    assert out.is_dir() and not any(out.iterdir())


def test_search_help_mentions_evofc_and_its_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["search", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "evofc" in text and "EvoFC" in text
    for option in (*EVOFC_OPTIONS, "--algorithm"):
        assert option in text, option
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = capsys.readouterr().out
    assert "--start" in text and "scratch" in text and "OUT.ckpt" in text


# ---- export -----------------------------------------------------------------------------


def test_export_of_the_knee_uses_the_inherited_weights(evofc_run, knee_export):
    run = RunDir(evofc_run[0])
    knee = resolve_role(run, METHODS.get("evofc"), "knee")
    payload = torch.load(knee_export, weights_only=False)
    metrics = payload["metrics"]
    assert payload["id"] == knee["id"] and payload["genome"] == knee["genome"]
    assert metrics["macs"] == knee["macs"] and metrics["params"] == knee["params"]
    assert metrics["search_val_accuracy"] == knee["val_accuracy"]
    assert metrics["finetune_epochs"] == 0
    # the front's test accuracy was measured on the final supernet sliced to the plan
    assert metrics["test_accuracy"] == pytest.approx(knee["test_accuracy"], abs=1e-9)

    setup = setup_from_run(run, progress=False)  # loads supernet.pt
    masks = setup.problem.decode_masks(setup.problem.genome_from_key(knee["genome"])[None])
    val = setup.evaluator.evaluate_on(masks, setup.data.val).accuracy[0]
    assert metrics["val_accuracy"] == pytest.approx(float(val), abs=1e-9)

    exported = payload["model"].state_dict()
    assert_same_tensors(exported, setup.evaluator.pruned(masks[0]).state_dict())
    plan = setup.problem.encoding.decode(setup.problem.genome_from_key(knee["genome"]))
    start = prune_model(setup.task.model, setup.space, plan).state_dict()
    assert any(not torch.equal(start[k], exported[k]) for k in start if k.endswith("weight")), \
        "the exported knee has the untrained starting weights, not the inherited ones"
    assert not checkpoint_file(knee_export).exists()


def test_pick_and_export_elites_of_an_evofc_run(evofc_run, tmp_path, capsys):
    run_dir = evofc_run[0]
    run = RunDir(run_dir)
    status, out, err = run_main(["pick", str(run_dir), "--knee", "--json"], capsys)
    assert status == 0, err
    assert json.loads(out)["id"] == resolve_role(run, METHODS.get("evofc"), "knee")["id"]
    folder = tmp_path / "elites"
    status, out, err = run_main(["export", str(run_dir), "--elites", "--out", str(folder),
                                 "--quiet"], capsys)
    assert status == 0, err
    summary = json.loads((folder / "elites.json").read_text())["models"]
    for role in ("heavy", "knee", "light"):
        record = resolve_role(run, METHODS.get("evofc"), role)
        assert summary[role]["record"]["id"] == record["id"]
        metrics = torch.load(folder / f"{role}.pt", weights_only=False)["metrics"]
        assert metrics["macs"] == record["macs"]
        # inherited weights: the test accuracy the run reports for its front
        assert metrics["test_accuracy"] == pytest.approx(record["test_accuracy"], abs=1e-9)


def test_export_from_scratch_trains_a_reinitialised_network(evofc_run, knee_export, tmp_path,
                                                            capsys):
    out = tmp_path / "scratch.pt"
    status, text, err = run_main(["export", str(evofc_run[0]), "--id", "knee", "--out",
                                  str(out), "--start", "scratch", "--finetune-epochs", "1",
                                  "--quiet"], capsys)
    assert status == 0, err
    payload = torch.load(out, weights_only=False)
    metrics = payload["metrics"]
    assert metrics["finetune_epochs"] == 1 and len(metrics["finetune_history"]) == 1
    assert metrics["macs"] == torch.load(knee_export, weights_only=False)["metrics"]["macs"]
    assert "pre_finetune_val_accuracy" in metrics
    inherited = torch.load(knee_export, weights_only=False)["model"].state_dict()
    scratch = payload["model"].state_dict()
    assert inherited.keys() == scratch.keys()
    assert any(not torch.equal(inherited[k], scratch[k]) for k in inherited)
    assert not checkpoint_file(out).exists()
    assert "exported candidate" in text


def test_export_from_scratch_needs_epochs(evofc_run, tmp_path, capsys):
    out = tmp_path / "scratch.pt"
    status, _, err = run_main(["export", str(evofc_run[0]), "--id", "knee", "--out", str(out),
                               "--start", "scratch"], capsys)
    assert status == 2
    assert "--start scratch" in err and "--finetune-epochs N > 0" in err
    assert not out.exists() and not checkpoint_file(out).exists()


def test_interrupted_fine_tuning_resumes_to_the_same_weights(evofc_run, tmp_path, capsys,
                                                            monkeypatch):
    run_dir = evofc_run[0]

    def export(out: Path) -> list[str]:
        return ["export", str(run_dir), "--id", "knee", "--out", str(out),
                "--finetune-epochs", "2", "--quiet"]

    whole = tmp_path / "whole.pt"
    status, _, err = run_main(export(whole), capsys)
    assert status == 0, err
    assert not checkpoint_file(whole).exists()

    out = tmp_path / "resumed.pt"
    real_save = moprune.training.finetune._save_checkpoint
    epochs_saved = []

    def crashing_save(path, state):
        real_save(path, state)
        epochs_saved.append(state["epoch"])
        if state["epoch"] == 1:  # dies in epoch 2, after epoch 1's checkpoint
            raise Interrupted

    monkeypatch.setattr(moprune.training.finetune, "_save_checkpoint", crashing_save)
    with pytest.raises(Interrupted):
        main(export(out))
    monkeypatch.undo()
    assert epochs_saved == [1]
    assert checkpoint_file(out).is_file() and not out.exists()

    # another recipe, start or candidate does not silently continue the checkpoint
    status, _, err = run_main([*export(out), "--lr", "0.5"], capsys)
    assert status == 2 and "different fine-tuning settings" in err
    status, _, err = run_main([*export(out), "--start", "scratch"], capsys)
    assert status == 2 and "key: stored" in err and "'start': 'scored'" in err
    status, _, err = run_main(["export", str(run_dir), "--id", "light", "--out", str(out),
                               "--finetune-epochs", "2", "--quiet"], capsys)
    assert status == 2 and "different fine-tuning settings" in err
    assert checkpoint_file(out).is_file() and not out.exists()

    status, _, err = run_main(export(out), capsys)
    assert status == 0, err
    assert not checkpoint_file(out).exists()
    a = torch.load(whole, weights_only=False)
    b = torch.load(out, weights_only=False)
    assert_same_tensors(a["model"].state_dict(), b["model"].state_dict())
    for key in ("val_accuracy", "test_accuracy", "pre_finetune_val_accuracy"):
        assert a["metrics"][key] == b["metrics"][key], key
    strip = [{k: v for k, v in e.items() if k != "seconds"}
             for e in a["metrics"]["finetune_history"]]
    assert strip == [{k: v for k, v in e.items() if k != "seconds"}
                     for e in b["metrics"]["finetune_history"]]


def test_export_of_an_unfinished_inheritance_run_does_not_use_the_untrained_start(
        tmp_path, capsys, monkeypatch):
    out = tmp_path / "unfinished"
    real_save = RunDir.save_checkpoint

    def crashing_save(self, state):
        real_save(self, state)
        raise Interrupted

    monkeypatch.setattr(RunDir, "save_checkpoint", crashing_save)
    with pytest.raises(Interrupted):
        main(evofc_args(out))
    monkeypatch.undo()
    model_file = tmp_path / "c0.pt"
    status, _, err = run_main(["export", str(out), "--id", "0", "--out", str(model_file),
                               "--quiet"], capsys)
    assert status == 2 and "--resume" in err and "supernet.pt" in err
    assert not model_file.exists()


def test_interrupted_elites_export_continues_where_it_stopped(evofc_run, tmp_path, capsys,
                                                              monkeypatch):
    """A model file that already holds the same export is kept, not retrained."""
    run_dir = evofc_run[0]
    out = tmp_path / "models"
    argv = ["export", str(run_dir), "--elites", "--out", str(out), "--finetune-epochs", "1",
            "--quiet"]
    status, _, err = run_main(argv, capsys)
    assert status == 0, err
    before = {r: (out / f"{r}.pt").stat().st_mtime_ns for r in ("heavy", "knee", "light")}
    calls = []
    real = moprune.methods.tradeoffs.export_candidate
    monkeypatch.setattr(moprune.methods.tradeoffs, "export_candidate",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    status, stdout, err = run_main([*argv[:-1]], capsys)
    assert status == 0, err
    assert calls == [] and "already exported" in stdout
    assert before == {r: (out / f"{r}.pt").stat().st_mtime_ns for r in before}
    # another budget exports again
    status, _, err = run_main([*argv[:5], "--finetune-epochs", "2", "--quiet"], capsys)
    assert status == 0, err
    assert calls
