"""ResNet-20 with its published weights on the real CIFAR-10 JPEG copy (../shared/data).

The published weights come through the real ``torch.hub`` loading code (hash-checked file
names) from a ``$TORCH_HOME`` that holds copies of the shared files; the data is the unzipped
JPEG copy. Skipped when the shared data is absent.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import thop
import torch
from torch import nn

from moprune.cli.main import main
from moprune.methods.rebuild import setup_from_run
from moprune.problems.criterion_ratio import group_stages
from moprune.runs.rundir import RunDir

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RESNET20 = REPO / "problems" / "resnet20_cifar10.py"
EVAL_IMAGES, TEST_IMAGES = 256, 500


def test_resnet20_published_weights_search_pick_export(cifar_root, torch_home, tmp_path,
                                                      capsys):
    out = tmp_path / "run"
    status = main(["search", str(RESNET20), "--data-root", str(cifar_root), "--eval-images",
                   str(EVAL_IMAGES), "--test-images", str(TEST_IMAGES), "--pop-size", "6",
                   "--generations", "2", "--device", "cpu", "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert (torch_home / "hub" / "checkpoints" / "resnet20-12fca82f.th").is_file()

    run = RunDir(out)
    baseline = run.baseline()
    assert baseline["val_images"] == EVAL_IMAGES and baseline["test_images"] == TEST_IMAGES
    # published weights (91.8 % on the original test set, ~81 % on the JPEG copy)
    assert baseline["val_accuracy"] > 0.6, baseline
    assert baseline["test_accuracy"] > 0.6, baseline
    assert baseline["macs"] > 40_000_000  # about 41 M MACs per image
    assert run.config()["identity"]["weights"] is None

    status = main(["pick", str(out), "--knee", "--json"])
    knee = json.loads(capsys.readouterr().out)
    assert status == 0
    assert 0.0 <= knee["val_accuracy"] <= 1.0 and 0.0 <= knee["test_accuracy"] <= 1.0
    if knee["macs"] >= baseline["macs"]:  # the knee may be the unpruned net on a tiny run
        knee = min(run.front(), key=lambda r: r["macs"])
    assert knee["macs"] < baseline["macs"]

    model_file = tmp_path / "knee.pt"
    status = main(["export", str(out), "--id", str(knee["id"]), "--out", str(model_file),
                   "--quiet"])
    assert status == 0, capsys.readouterr().err
    payload = torch.load(model_file, weights_only=False)
    model = payload["model"]
    assert isinstance(model, nn.Module)
    assert payload["metrics"]["macs"] == knee["macs"]

    # re-measure on the run's own hold-out images with the file's normalisation
    val = setup_from_run(RunDir(out), progress=False).data.val
    assert len(val) == EVAL_IMAGES
    mean = torch.tensor(payload["normalization"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(payload["normalization"]["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        logits = model.eval()((val.images.float() / 255.0 - mean) / std)
    accuracy = int((logits.argmax(1) == val.labels).sum()) / len(val)
    assert accuracy == pytest.approx(knee["val_accuracy"], abs=1e-9)

    macs, _ = thop.profile(copy.deepcopy(model), (torch.zeros(1, 3, 32, 32),), verbose=False)
    assert int(macs) == knee["macs"] < baseline["macs"]


def test_resnet20_ccep_two_rounds(cifar_root, torch_home, tmp_path, capsys):
    """CCEP on real data: 2 rounds, 1 fine-tuning epoch on 2,000 training images each."""
    out = tmp_path / "ccep"
    status = main(["search", str(RESNET20), "--data-root", str(cifar_root), "--algorithm",
                   "ccep", "--rounds", "2", "--generations", "1", "--finetune-epochs", "1",
                   "--finetune-recipe", "task", "--train-images", "2000", "--eval-images",
                   str(EVAL_IMAGES), "--test-images", str(TEST_IMAGES), "--device", "cpu",
                   "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    run = RunDir(out)
    rounds, baseline = run.candidates(), run.baseline()
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[2]["macs"] < rounds[1]["macs"] < baseline["macs"]
    assert rounds[1]["groups_pruned"] == 9  # every internal group of ResNet-20 lost channels
    for r in rounds[1:]:  # sane: pruned ~12 % of internal channels per round, then fine-tuned
        assert r["val_accuracy"] > 0.6 and r["test_accuracy"] > 0.6, r
        assert r["val_accuracy"] > baseline["val_accuracy"] - 0.15, (r, baseline)

    model_file = tmp_path / "round2.pt"
    assert main(["export", str(out), "--id", "2", "--out", str(model_file), "--quiet"]) == 0
    payload = torch.load(model_file, weights_only=False)
    macs, _ = thop.profile(copy.deepcopy(payload["model"]), (torch.zeros(1, 3, 32, 32),),
                           verbose=False)
    assert int(macs) == rounds[2]["macs"]
    assert payload["metrics"]["val_accuracy"] == pytest.approx(rounds[2]["val_accuracy"])


def test_resnet20_deeppruninges_residual_stages(cifar_root, torch_home, tmp_path, capsys):
    """DeepPruningES on real data: residual-stage encoding, 3 generations, no retraining."""
    out = tmp_path / "es"
    status = main(["search", str(RESNET20), "--data-root", str(cifar_root), "--algorithm",
                   "deeppruninges", "--pop-size", "8", "--generations", "3",
                   "--partial-epochs", "0", "--eval-images", str(EVAL_IMAGES),
                   "--test-images", str(TEST_IMAGES), "--device", "cpu", "--out", str(out),
                   "--quiet"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "residual=True" in captured.out
    run = RunDir(out)
    baseline, candidates, front = run.baseline(), run.candidates(), run.front()
    residual = [g for g in baseline["groups"] if g["residual"]]
    assert len(baseline["groups"]) == 12 and len(residual) == 3  # 9 internal + 3 stages
    elites = run.read_jsonl("elites.jsonl")
    assert [e["generation"] for e in elites] == [1, 2, 3]
    assert candidates[0]["macs"] == baseline["macs"]  # generation 0: the unpruned network
    # 20 % of the bits flip: the mutants drop residual-stage channels too
    assert any(r["kept"][g] < group["size"] for r in candidates[1:]
               for g, group in enumerate(baseline["groups"]) if group["residual"])

    models = tmp_path / "models"
    assert main(["export", str(out), "--elites", "--out", str(models), "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "heavy" in table and "knee" in table and "light" in table
    summary = json.loads((models / "elites.json").read_text())["models"]
    for role in ("heavy", "knee", "light"):
        payload = torch.load(models / f"{role}.pt", weights_only=False)
        record = summary[role]["record"]
        assert record["id"] in {r["id"] for r in front}
        macs, _ = thop.profile(copy.deepcopy(payload["model"]), (torch.zeros(1, 3, 32, 32),),
                               verbose=False)
        assert int(macs) == record["macs"]
        # scored without retraining: the exported network measures what the search measured
        assert payload["metrics"]["val_accuracy"] == pytest.approx(record["val_accuracy"],
                                                                   abs=1e-9)
    light = summary["light"]["record"]
    assert light["macs"] == min(r["macs"] for r in front)
    assert (models / "elites.png").is_file() and (models / "elites.md").is_file()



def test_resnet20_evofc_small_search(cifar_root, torch_home, tmp_path, capsys):
    """EvoFC on real data from a random start: weight inheritance, stage lower bounds.

    One global schedule of 5 epochs over 2,000 images (80 SGD steps shared by 12 candidates):
    the candidates learn (about 30 % hold-out accuracy by generation 3). A shorter schedule
    (1 epoch over 1,000 images: 8 steps) leaves every score at chance. The full-width
    supernet stays near chance either way: no candidate trains all of its channels at once.
    """
    out = tmp_path / "evofc"
    status = main(["search", str(RESNET20), "--data-root", str(cifar_root), "--algorithm",
                   "evofc", "--init", "random", "--training", "inherit", "--pop-size", "4",
                   "--generations", "3", "--search-epochs", "5", "--train-images", "2000",
                   "--eval-images", "200", "--test-images", "200", "--lower-bounds",
                   "stages:0.2,0.4,0.6", "--device", "cpu", "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert (out / "supernet.pt").is_file() and (out / "front.json").is_file()
    run = RunDir(out)
    baseline, records = run.baseline(), run.candidates()
    assert baseline["inheritance"]["planned"] == baseline["inheritance"]["trained"] == 12
    assert baseline["inheritance"]["total_steps"] == 5 * 16  # 2,000 images, batches of 128
    assert len(records) == 12
    for key in ("supernet_val_accuracy", "supernet_test_accuracy"):
        assert 0.0 <= baseline[key] <= 1.0

    # the supernet trained: its weights left the random start, and the candidates learned
    setup = setup_from_run(run, progress=False)
    start = setup.task.model.state_dict()  # the seeded random initialisation
    trained = torch.load(out / "supernet.pt", map_location="cpu", weights_only=True)
    changed = [k for k, v in trained["supernet"].items()
               if k.endswith("weight") and not torch.equal(v, start[k])]
    assert len(changed) > 30, changed
    by_generation = {g: [r["val_accuracy"] for r in records if r["generation"] == g]
                     for g in (1, 2, 3)}
    mean = {g: sum(v) / len(v) for g, v in by_generation.items()}
    assert max(by_generation[3]) > 0.2, by_generation  # chance is 0.1
    assert mean[3] > mean[1] + 0.05, by_generation

    # every ratio respects its stage's lower bound (32x32, 16x16, 8x8)
    stages = group_stages(setup.space)
    assert stages.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    lower = np.array([0.2, 0.4, 0.6])[stages]
    for r in records:
        ratios = np.array([float(v) for v in r["genome"].split(",")])[0::2]
        assert (ratios >= lower).all() and (ratios <= 0.99).all(), r

    status = main(["pick", str(out), "--knee", "--json"])
    knee = json.loads(capsys.readouterr().out)
    assert status == 0
    model_file = tmp_path / "knee.pt"
    assert main(["export", str(out), "--id", "knee", "--out", str(model_file), "--quiet"]) == 0
    payload = torch.load(model_file, weights_only=False)
    assert payload["id"] == knee["id"]
    macs, _ = thop.profile(copy.deepcopy(payload["model"]), (torch.zeros(1, 3, 32, 32),),
                           verbose=False)
    assert int(macs) == knee["macs"] == payload["metrics"]["macs"] < baseline["macs"]
    # exported with the supernet's final weights: the test accuracy of the run's front
    assert payload["metrics"]["test_accuracy"] == pytest.approx(knee["test_accuracy"],
                                                                abs=1e-9)


def test_resnet20_gp_small_evolution(cifar_root, torch_home, tmp_path, capsys):
    """A small GP search for a pruning function on ResNet-20 (published weights, real data).

    The seven seeded metrics start the population; elitism keeps the best, so the best
    fitness never falls. Whether evolution beat the seeds is printed, not assumed.
    """
    out = tmp_path / "gp"
    status = main(["evolve", str(RESNET20), "--data-root", str(cifar_root), "--out", str(out),
                   "--pop-size", "10", "--generations", "3", "--ratios", "0.4",
                   "--eval-images", "300", "--train-images", "1000", "--quiet"])
    assert status == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "gp.jsonl").read_text().splitlines()]
    best = [r["best_fitness"] for r in rows]
    assert best == sorted(best) and best[-1] >= rows[-1]["seeds_best"] > 0.1
    print(f"seeds {rows[-1]['seeds_best']:.4f} -> evolved {best[-1]:.4f}: "
          f"{'improved' if best[-1] > rows[-1]['seeds_best'] else 'no improvement over the seeds'}")
    fn = json.loads((out / "best.gp.json").read_text())
    # the evolved function ranks a search's channels through the gp: criterion
    run = tmp_path / "search"
    status = main(["search", str(RESNET20), "--data-root", str(cifar_root), "--criterion",
                   f"gp:{out / 'best.gp.json'}", "--pop-size", "4", "--generations", "1",
                   "--eval-images", "100", "--test-images", "100", "--train-images", "500",
                   "--out", str(run), "--quiet"])
    assert status == 0, capsys.readouterr().err
    assert fn["expression"]
