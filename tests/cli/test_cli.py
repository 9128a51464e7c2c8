"""The ``moprune`` command line, end to end and offline, on the digits demo problem."""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import thop
import torch
from helpers import run_main
from torch import nn

from moprune.cli.main import build_parser, main
from moprune.core.space import PruningSpace
from moprune.methods.rebuild import setup_from_run
from moprune.runs.rundir import RunDir
from moprune.tasks.task import TaskOptions, load_problem_file
from moprune.zoo.cifar_resnet import cifar_resnet

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "problems" / "digits_demo.py"
RESNET20 = REPO / "problems" / "resnet20_cifar10.py"
POP, GENS, EVAL_IMAGES, TEST_IMAGES = 8, 3, 128, 128
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PICK_KEYS = ("id", "macs", "params", "val_accuracy", "test_accuracy")


def search_args(out: Path, weights: Path, *extra: str) -> list[str]:
    return ["search", str(DIGITS), "--weights", str(weights), "--pop-size", str(POP),
            "--generations", str(GENS), "--eval-images", str(EVAL_IMAGES),
            "--test-images", str(TEST_IMAGES), "--out", str(out), "--quiet", *extra]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, digits_weights: Path) -> Path:
    """One small search of the digits problem, shared by the tests of this module."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(search_args(out, digits_weights)) == 0
    return out


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the moprune parser has no sub-commands")


def pick_json(run: Path, capsys: pytest.CaptureFixture, *rule: str) -> dict:
    status, out, err = run_main(["pick", str(run), *rule, "--json"], capsys)
    assert status == 0, err
    chosen = json.loads(out)
    for key in PICK_KEYS:
        assert key in chosen, f"pick {rule} --json lacks {key!r}: {chosen}"
    for key in ("val_accuracy", "test_accuracy"):
        assert 0.0 <= chosen[key] <= 1.0, (key, chosen[key])
    assert isinstance(chosen["macs"], int) and chosen["macs"] > 0
    assert isinstance(chosen["params"], int) and chosen["params"] > 0
    return chosen


def val_accuracy_of(model: nn.Module, normalization: dict, run: Path) -> tuple[int, int]:
    """(correct, total) of ``model`` on the run's hold-out split, using the file's normalisation."""
    val = setup_from_run(RunDir(run), progress=False).data.val
    mean = torch.tensor(normalization["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(normalization["std"]).view(1, -1, 1, 1)
    x = (val.images.float() / 255.0 - mean) / std
    with torch.no_grad():
        pred = model.eval()(x).argmax(1)
    return int((pred == val.labels).sum()), len(val)


def thop_macs(model: nn.Module, input_shape: list[int]) -> int:
    macs, _ = thop.profile(copy.deepcopy(model), (torch.zeros(1, *input_shape),), verbose=False)
    return int(macs)


# ---- help -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_help_of_every_subcommand_mentions_each_option(command, capsys):
    parser = subcommands()[command]
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for action in parser._actions:
        for option in action.option_strings:
            assert option in text, f"`moprune {command} --help` does not mention {option}"
        if not action.option_strings:
            assert (action.metavar or action.dest) in text
        if action.help and action.help != argparse.SUPPRESS and action.option_strings:
            first_word = action.help.split()[0]
            assert first_word in text


def test_help_via_subprocess_lists_every_command():
    proc = subprocess.run([sys.executable, "-m", "moprune.cli.main", "--help"], capture_output=True,
                          text=True, cwd=REPO, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: moprune")
    for command in subcommands():
        assert command in proc.stdout


# ---- search -----------------------------------------------------------------------------


def test_search_writes_the_run_directory(run_dir, digits_weights):
    run = RunDir(run_dir)
    for name in ("config.json", "baseline.json", "candidates.jsonl", "checkpoint.pkl",
                 "front.json", "progress.json"):
        assert (run_dir / name).is_file(), name
    config = run.config()
    ident = config["identity"]
    assert ident["seed"] == 0 and ident["pop_size"] == POP and ident["generations"] == GENS
    assert ident["problem"] == str(DIGITS.resolve())
    assert ident["weights"] == str(digits_weights.resolve())
    assert ident["algorithm"] == "nsga2"

    baseline = run.baseline()
    assert 0.9 <= baseline["val_accuracy"] <= 1.0
    assert 0.0 <= baseline["test_accuracy"] <= 1.0
    assert baseline["val_images"] == EVAL_IMAGES and baseline["test_images"] == TEST_IMAGES
    assert baseline["macs"] > 0 and baseline["params"] > 0

    records = run.candidates()
    assert [r["id"] for r in records] == list(range(len(records)))
    assert len({r["genome"] for r in records}) == len(records)
    assert POP <= len(records) <= POP * GENS
    for r in records:
        for key in ("genome", "val_accuracy", "macs", "params", "generation"):
            assert key in r, f"candidate {r.get('id')} lacks {key!r}"
        assert 1 <= r["generation"] <= GENS
        assert 0.0 <= r["val_accuracy"] <= 1.0
        assert 0 < r["macs"] <= baseline["macs"] and 0 < r["params"] <= baseline["params"]
    assert max(r["generation"] for r in records) == GENS

    state = run.load_checkpoint()
    assert state["generation"] == GENS
    assert json.loads((run_dir / "progress.json").read_text())["generations_done"] == GENS

    front = run.front()
    by_id = {r["id"]: r for r in records}
    assert front
    for member in front:
        assert 0.0 <= member["test_accuracy"] <= 1.0
        stored = by_id[member["id"]]
        for key in ("genome", "val_accuracy", "macs", "params", "generation"):
            assert member[key] == stored[key]
    # the front is non-dominated (error vs. MACs) and nothing recorded dominates a member
    for m in front:
        for r in records:
            dominates = (r["val_accuracy"] >= m["val_accuracy"] and r["macs"] <= m["macs"]
                         and (r["val_accuracy"] > m["val_accuracy"] or r["macs"] < m["macs"]))
            assert not dominates, f"candidate {r['id']} dominates front member {m['id']}"

    for name in ("front.png", "front.svg", "hypervolume.png"):
        assert (run_dir / "plots" / name).stat().st_size > 0, name
    assert (run_dir / "plots" / "front.png").read_bytes().startswith(PNG_MAGIC)
    assert b"<svg" in (run_dir / "plots" / "front.svg").read_bytes()


# ---- pick -------------------------------------------------------------------------------


def test_pick_knee_json(run_dir, capsys):
    chosen = pick_json(run_dir, capsys, "--knee")
    assert chosen["id"] in {m["id"] for m in RunDir(run_dir).front()}


def test_pick_max_macs_ratio_json(run_dir, capsys):
    chosen = pick_json(run_dir, capsys, "--max-macs-ratio", "0.8")
    run = RunDir(run_dir)
    base = run.baseline()["macs"]
    assert chosen["macs"] / base <= 0.8
    ok = [m for m in run.front() if m["macs"] / base <= 0.8]
    assert chosen["val_accuracy"] == max(m["val_accuracy"] for m in ok)


def test_pick_max_accuracy_drop_json(run_dir, capsys):
    chosen = pick_json(run_dir, capsys, "--max-accuracy-drop", "0.05")
    run = RunDir(run_dir)
    floor = run.baseline()["val_accuracy"] - 0.05
    assert chosen["val_accuracy"] >= floor - 1e-9
    ok = [m for m in run.front() if m["val_accuracy"] >= floor - 1e-9]
    assert chosen["macs"] == min(m["macs"] for m in ok)


def test_pick_list(run_dir, capsys):
    status, out, err = run_main(["pick", str(run_dir), "--list"], capsys)
    assert status == 0, err
    rows = [line.split() for line in out.splitlines() if line.startswith("front")]
    assert sorted(int(row[1]) for row in rows) == sorted(m["id"] for m in RunDir(run_dir).front())
    status, out, err = run_main(["pick", str(run_dir), "--list", "--json"], capsys)
    assert status == 0, err
    assert json.loads(out) == RunDir(run_dir).front()


def test_pick_budget_no_member_meets_is_a_clear_error(run_dir, capsys):
    status, out, err = run_main(["pick", str(run_dir), "--max-macs-ratio", "0.01", "--json"],
                                capsys)
    assert status == 2
    assert out == ""
    assert "moprune pick: error:" in err
    assert "macs_ratio <= 0.01" in err and "--max-macs-ratio" in err


def test_pick_needs_a_rule(run_dir, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["pick", str(run_dir)])
    assert exc.value.code == 2
    assert "--knee" in capsys.readouterr().err


# ---- plot -------------------------------------------------------------------------------


def test_plot_regenerates_the_plots(run_dir, capsys):
    plots = run_dir / "plots"
    names = ("front.png", "front.svg", "hypervolume.png", "hypervolume.svg")
    for name in names:
        (plots / name).unlink()
    status, out, err = run_main(["plot", str(run_dir)], capsys)
    assert status == 0, err
    for name in names:
        assert (plots / name).stat().st_size > 0, name
        assert str(plots / name) in out
    assert (plots / "front.png").read_bytes().startswith(PNG_MAGIC)


def test_plot_of_a_folder_that_is_no_run(tmp_path, capsys):
    status, _, err = run_main(["plot", str(tmp_path)], capsys)
    assert status == 2
    assert "config.json" in err and "run directory" in err


# ---- export -----------------------------------------------------------------------------


def _pruned_non_front_or_knee(run_dir: Path, which: str) -> dict:
    run = RunDir(run_dir)
    baseline = run.baseline()
    if which == "knee":
        from moprune.fronts import PickRule, pick

        objectives = tuple(run.config()["identity"]["objectives"])
        return pick(run.front(), baseline, PickRule("knee"), objectives)
    front_ids = {m["id"] for m in run.front()}
    rest = [r for r in run.candidates()
            if r["id"] not in front_ids and r["macs"] < baseline["macs"]]
    assert rest, "every pruned candidate is on the front; cannot test a non-front export"
    return rest[-1]


@pytest.mark.parametrize("which", ["knee", "non-front candidate"])
def test_export_is_exact_and_measured(run_dir, tmp_path, capsys, which):
    record = _pruned_non_front_or_knee(run_dir, which)
    out = tmp_path / "m.pt"
    status, stdout, err = run_main(["export", str(run_dir), "--id", str(record["id"]),
                                    "--out", str(out), "--quiet"], capsys)
    assert status == 0, err
    assert f"exported candidate {record['id']}" in stdout
    payload = torch.load(out, weights_only=False)
    model = payload["model"]
    assert isinstance(model, nn.Module)
    assert isinstance(payload["plan"], dict)
    norm = payload["normalization"]
    assert len(norm["mean"]) == len(norm["std"]) == 1
    metrics = payload["metrics"]
    assert payload["id"] == metrics["id"] == record["id"]
    assert payload["genome"] == record["genome"]
    assert metrics["search_val_accuracy"] == record["val_accuracy"]
    assert metrics["finetune_epochs"] == 0

    # exactness: the physically pruned network scores what the masked search measured
    correct, total = val_accuracy_of(model, norm, run_dir)
    assert total == EVAL_IMAGES
    assert correct / total == pytest.approx(record["val_accuracy"], abs=1e-12)
    assert metrics["val_accuracy"] == pytest.approx(record["val_accuracy"], abs=1e-12)

    # the search's analytic cost equals thop's count of the pruned network
    macs = thop_macs(model, payload["input_shape"])
    assert macs == metrics["macs"] == record["macs"]
    assert metrics["flops"] == 2 * macs
    assert sum(p.numel() for p in model.parameters()) == metrics["params"] == record["params"]
    assert metrics["macs"] < metrics["baseline"]["macs"]


def test_export_with_finetuning_records_before_and_after(run_dir, tmp_path, capsys):
    knee = _pruned_non_front_or_knee(run_dir, "knee")
    out = tmp_path / "ft.pt"
    status, _, err = run_main(["export", str(run_dir), "--id", str(knee["id"]), "--out",
                               str(out), "--finetune-epochs", "1", "--quiet"], capsys)
    assert status == 0, err
    payload = torch.load(out, weights_only=False)
    metrics = payload["metrics"]
    assert metrics["finetune_epochs"] == 1
    for key in ("pre_finetune_val_accuracy", "pre_finetune_test_accuracy", "val_accuracy",
                "test_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["pre_finetune_val_accuracy"] == pytest.approx(knee["val_accuracy"],
                                                                 abs=1e-12)
    assert len(metrics["finetune_history"]) >= 1
    correct, total = val_accuracy_of(payload["model"], payload["normalization"], run_dir)
    assert correct / total == pytest.approx(metrics["val_accuracy"], abs=1e-12)
    assert thop_macs(payload["model"], payload["input_shape"]) == knee["macs"]


# ---- inspect ----------------------------------------------------------------------------


def _assert_groups_listed(out: str, problem: Path, weights: Path) -> None:
    task = load_problem_file(problem, TaskOptions(weights=weights))
    space = PruningSpace.from_model(task.model, task.input_shape, task.policy)
    lines = out.splitlines()
    assert task.name in out
    for group in space.groups:
        hits = [line.split() for line in lines if group.name in line.split()]
        assert hits, f"group {group.name} not listed"
        assert str(group.size) in hits[0], f"channels of {group.name} not shown"


def test_inspect_digits(digits_weights, capsys):
    status, out, err = run_main(["inspect", str(DIGITS), "--weights", str(digits_weights)],
                                capsys)
    assert status == 0, err
    _assert_groups_listed(out, DIGITS, digits_weights)
    assert "conv1" in out and "16" in out


def test_inspect_resnet20_offline_with_random_weights(tmp_path, capsys):
    weights = tmp_path / "resnet20_random.pt"
    torch.save(cifar_resnet(20).state_dict(), weights)
    status, out, err = run_main(["inspect", str(RESNET20), "--weights", str(weights)], capsys)
    assert status == 0, err
    _assert_groups_listed(out, RESNET20, weights)
    assert "9 groups" in out
    status, out, err = run_main(["inspect", str(RESNET20), "--weights", str(weights),
                                 "--residual"], capsys)
    assert status == 0, err
    assert "residual" in out and "residual=True" in out


# ---- demo -------------------------------------------------------------------------------


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    status, stdout, err = run_main(["demo", "--out", str(out), "--quiet"], capsys)
    assert status == 0, err
    assert (out / "knee.pt").is_file()
    for name in ("front.png", "front.svg", "hypervolume.png"):
        assert (out / "plots" / name).stat().st_size > 0, name
    table = [line.split() for line in stdout.splitlines()]
    assert any(row[:1] == ["baseline"] for row in table)
    assert any(row[:1] == ["knee"] for row in table)
    payload = torch.load(out / "knee.pt", weights_only=False)
    assert isinstance(payload["model"], nn.Module)
    assert payload["metrics"]["finetune_epochs"] == 5
    assert payload["metrics"]["macs"] < payload["metrics"]["baseline"]["macs"]
