"""CCEP rounds: prune bound, splicing, stopping rules, determinism, resume, export, CLI."""

from __future__ import annotations

import functools
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import thop
import torch
from helpers import built_model, one_torch_thread, tiny_sequential
from torch import nn

from moprune.algorithms.coevolution import CoevolutionConfig, min_kept
from moprune.cli.main import main
from moprune.core.space import SpacePolicy
from moprune.data.datasets import DataBundle, Normalization, Split
from moprune.methods.ccep_rounds import (
    COEVOLUTION_LOG,
    CCEPConfig,
    load_network,
    published_recipe,
    run_ccep,
)
from moprune.runs.rundir import RunDir, RunDirError
from moprune.tasks.setup import make_problem
from moprune.tasks.task import DataRequest, PruningTask, TaskOptions, load_problem_file
from moprune.training.finetune import FinetuneConfig, _lr_at, evaluate_accuracy

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "problems" / "digits_demo.py"
MIN_CHANNELS = 2  # the digits problem's policy
SMALL = CCEPConfig(rounds=3, coevolution=CoevolutionConfig(generations=2), finetune_epochs=1,
                   recipe="task")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    yield from one_torch_thread()


@functools.cache
def _digits(weights: Path):
    task = load_problem_file(DIGITS, TaskOptions(weights=weights))
    data = task.load_data(DataRequest(root=None, seed=0, eval_images=128, test_images=128,
                                      load_train=True))
    return task, data


def digits_setup(weights: Path):
    task, data = _digits(weights)
    return make_problem(task, data)


def new_run(path: Path) -> RunDir:
    shutil.rmtree(path, ignore_errors=True)
    run = RunDir(path)
    run.create({"identity": {"objectives": ["error", "macs_ratio"]}, "title": "test"})
    return run


def stable(records: list[dict]) -> list[dict]:
    """Records without timings and cache counters (which may differ between runs)."""
    return [{k: v for k, v in r.items() if "seconds" not in k and k != "cache_hits"}
            for r in records]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, digits_weights) -> RunDir:
    run = new_run(tmp_path_factory.mktemp("ccep") / "run")
    run_ccep(digits_setup(digits_weights), run, SMALL, resume=False, progress=False)
    return run


def test_rounds_shrink_within_the_prune_bound(digits_run):
    rounds = digits_run.candidates()
    assert [r["round"] for r in rounds] == list(range(SMALL.rounds + 1))
    bound = SMALL.coevolution.prune_bound
    for prev, cur in zip(rounds, rounds[1:]):
        assert cur["macs"] < prev["macs"]
        assert cur["groups_pruned"] >= 1
        for before, after in zip(prev["kept"], cur["kept"]):
            assert after <= before
            assert after >= min_kept(before, bound, MIN_CHANNELS) >= MIN_CHANNELS


def test_round_records_match_the_saved_networks(digits_run, digits_weights):
    task, data = _digits(digits_weights)
    for rec in digits_run.candidates():
        net = load_network(digits_run, rec["weights_file"])
        macs, params = thop.profile(net.model, (torch.zeros(1, *task.input_shape),),
                                    verbose=False)
        assert (int(macs), int(params)) == (rec["macs"], rec["params"])
        acc, _ = evaluate_accuracy(net.model, data.val, data.normalization)
        assert acc == rec["val_accuracy"]
        assert [len(k) for k in net.kept] == rec["kept"]
        assert all(len(k) >= MIN_CHANNELS for k in net.kept)


def test_coevolution_log_respects_the_bound(digits_run):
    rows = digits_run.read_jsonl(COEVOLUTION_LOG)
    assert rows
    for row in rows:
        assert row["kept"] >= min_kept(row["size"], SMALL.coevolution.prune_bound,
                                       MIN_CHANNELS)
        assert 0 <= row["val_accuracy"] <= 1


def test_front_plots_and_baseline(digits_run):
    front = digits_run.front()
    assert front and all("test_accuracy" in r for r in front)
    assert digits_run.baseline()["test_accuracy"] == digits_run.candidates()[0]["test_accuracy"]
    for name in ("front", "rounds", "hypervolume"):
        assert (digits_run.path / "plots" / f"{name}.png").stat().st_size > 0


def test_same_seed_same_rounds(digits_run, digits_weights, tmp_path):
    run = new_run(tmp_path / "again")
    run_ccep(digits_setup(digits_weights), run, SMALL, resume=False, progress=False)
    assert stable(run.candidates()) == stable(digits_run.candidates())
    assert run.read_jsonl(COEVOLUTION_LOG) == digits_run.read_jsonl(COEVOLUTION_LOG)


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("stop", [(2, 2), (2, 0), (1, -1)],
                         ids=["mid-coevolution", "before-finetune", "between-rounds"])
def test_resume_gives_the_same_result(stop, digits_run, digits_weights, tmp_path):
    run = new_run(tmp_path / "resumed")

    def hook(r: int, step: int) -> None:
        if (r, step) == stop:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_ccep(digits_setup(digits_weights), run, SMALL, resume=False, progress=False,
                 on_step=hook)
    assert not (run.path / "front.json").exists()
    run_ccep(digits_setup(digits_weights), run, SMALL, resume=True, progress=False)
    assert stable(run.candidates()) == stable(digits_run.candidates())
    assert run.read_jsonl(COEVOLUTION_LOG) == digits_run.read_jsonl(COEVOLUTION_LOG)


def test_target_macs_ratio_stops_at_the_target(digits_weights, tmp_path):
    target = 0.8
    cfg = CCEPConfig(rounds=10, coevolution=CoevolutionConfig(generations=1),
                     finetune_epochs=0, target_macs_ratio=target)
    run = new_run(tmp_path / "target")
    run_ccep(digits_setup(digits_weights), run, cfg, resume=False, progress=False)
    rounds = run.candidates()
    assert rounds[-1]["macs_ratio"] <= target
    assert all(r["macs_ratio"] > target for r in rounds[:-1])
    assert len(rounds) < cfg.rounds + 1


def test_target_splices_only_what_is_needed(digits_weights, tmp_path):
    """A target just below one round's reach is met by splicing fewer groups."""
    free = new_run(tmp_path / "free")
    cfg = CCEPConfig(rounds=1, coevolution=CoevolutionConfig(generations=1), finetune_epochs=0)
    run_ccep(digits_setup(digits_weights), free, cfg, resume=False, progress=False)
    full = free.candidates()[1]
    # a fifth of what one full round removes: one group's winner is enough (they are pruned
    # within the same bound, so each removes a comparable share), not all three
    target = 1 - 0.2 * (1 - full["macs_ratio"])
    run = new_run(tmp_path / "partial")
    run_ccep(digits_setup(digits_weights), run,
             CCEPConfig(rounds=1, coevolution=cfg.coevolution, finetune_epochs=0,
                        target_macs_ratio=target), resume=False, progress=False)
    part = run.candidates()[1]
    assert part["macs_ratio"] <= target
    assert part["groups_pruned"] < full["groups_pruned"]
    assert part["macs_ratio"] > full["macs_ratio"]


def test_accuracy_drop_stops_and_is_excluded(digits_weights, tmp_path):
    cfg = CCEPConfig(rounds=6, coevolution=CoevolutionConfig(generations=1, prune_bound=0.5),
                     finetune_epochs=0, max_accuracy_drop=0.0)
    run = new_run(tmp_path / "drop")
    run_ccep(digits_setup(digits_weights), run, cfg, resume=False, progress=False)
    rounds, base = run.candidates(), run.baseline()
    assert rounds[-1]["val_accuracy"] < base["val_accuracy"] or len(rounds) == cfg.rounds + 1
    assert all(r["val_accuracy"] >= base["val_accuracy"] for r in run.front())


def _random_task(model_id: str, model: nn.Module | None = None,
                 shape: tuple[int, int, int] = (3, 8, 8)) -> tuple[PruningTask, DataBundle]:
    if model is None:
        model, shape = built_model(model_id)
    gen = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        return Split(torch.randint(0, 256, (n, *shape), generator=gen, dtype=torch.uint8),
                     torch.randint(0, 10, (n,), generator=gen))

    data = DataBundle("random", split(64), split(32), split(32), 10,
                      tuple(str(i) for i in range(10)),
                      Normalization((0.5,) * shape[0], (0.25,) * shape[0]), shape)
    task = PruningTask(name=model_id, model=model, input_shape=shape,
                       load_data=lambda request: data, policy=SpacePolicy(min_channels=1),
                       finetune=FinetuneConfig(epochs=1, batch_size=32, lr=0.01))
    return task, data


@pytest.mark.parametrize("model_id", ["cifar_resnet20", "vgg16_bn_cifar"])
def test_residual_and_plain_models(model_id, tmp_path):
    task, data = _random_task(model_id)
    setup = make_problem(task, data)
    run = new_run(tmp_path / model_id)
    cfg = CCEPConfig(rounds=1, coevolution=CoevolutionConfig(pop_size=3, generations=1),
                     finetune_epochs=1, recipe="task")
    run_ccep(setup, run, cfg, resume=False, progress=False)
    rec = run.candidates()[1]
    net = load_network(run, rec["weights_file"])
    out = net.model(torch.zeros(2, *task.input_shape))
    assert out.shape == (2, 10)
    macs, _ = thop.profile(net.model, (torch.zeros(1, *task.input_shape),), verbose=False)
    assert int(macs) == rec["macs"] < setup.problem.baseline["macs"]
    assert all(len(k) >= 1 for k in net.kept)


def test_stops_when_nothing_is_left_to_prune(tmp_path):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = tiny_sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()
    task, data = _random_task("four_channels", model, (3, 8, 8))
    run = new_run(tmp_path / "tiny")
    # a high mutation rate so that every group finds a pruned mask each round
    cfg = CCEPConfig(rounds=10, coevolution=CoevolutionConfig(generations=3, mutation_rate=0.5),
                     finetune_epochs=0)
    run_ccep(make_problem(task, data), run, cfg, resume=False, progress=False)
    rounds = run.candidates()
    assert rounds[-1]["kept"] == [1, 1]  # both groups down to min_channels
    assert len(rounds) <= 4  # each round removes at least one channel of each group
    assert run.load_checkpoint()["stopped"] == "no group can lose a channel any more"


def test_config_errors():
    with pytest.raises(ValueError, match="rounds"):
        CCEPConfig(rounds=0)
    with pytest.raises(ValueError, match="recipe"):
        CCEPConfig(recipe="fast")
    with pytest.raises(ValueError, match="target_macs_ratio"):
        CCEPConfig(target_macs_ratio=1.5)


def test_needs_training_data_to_finetune(digits_weights, tmp_path):
    task, _ = _digits(digits_weights)
    data = task.load_data(DataRequest(root=None, seed=0, eval_images=64, load_train=False))
    with pytest.raises(ValueError, match="training data"):
        run_ccep(make_problem(task, data), new_run(tmp_path / "r"), CCEPConfig(rounds=1),
                 resume=False, progress=False)


def test_published_recipe_and_step_schedule():
    base = FinetuneConfig(augment_flip=False)
    cfg = published_recipe(base, 100)
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size) == (0.1, 0.9, 1e-4, 128)
    assert cfg.augment_flip is False and cfg.epochs == 100 and not cfg.nesterov
    steps = 100 * 10
    assert _lr_at(cfg, 0, steps) == 0.1
    assert _lr_at(cfg, 499, steps) == 0.1  # epoch 50 (1-based) still at 0.1
    assert math.isclose(_lr_at(cfg, 500, steps), 0.01)  # from epoch 51 on
    with pytest.raises(ValueError, match="milestones"):
        FinetuneConfig(schedule="step", milestones=(0.7, 0.3))


def test_cli_search_pick_export_resume(digits_weights, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["search", str(DIGITS), "--weights", str(digits_weights), "--algorithm", "ccep",
            "--rounds", "2", "--generations", "1", "--finetune-epochs", "1",
            "--finetune-recipe", "task", "--eval-images", "128", "--test-images", "128",
            "--out", str(out), "--quiet"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "pruned, before FT" in text and "knee of the front over rounds" in text
    run = RunDir(out)
    ident = run.config()["identity"]
    assert ident["algorithm"] == "ccep" and ident["pop_size"] == 5
    assert ident["ccep"]["rounds"] == 2
    # a finished run is not resumed (nor rewritten); other settings are refused untouched
    before = (out / "candidates.jsonl").read_bytes()
    assert main([*args, "--resume"]) == 2
    assert "finished run" in capsys.readouterr().err
    assert (out / "candidates.jsonl").read_bytes() == before
    assert main([*args[:-1], "--rounds", "3", "--resume", "--quiet"]) == 2
    assert "ccep.rounds" in capsys.readouterr().err
    assert (out / "candidates.jsonl").read_bytes() == before
    # export a round: the fine-tuned round network, not the original pruned to its mask
    assert main(["export", str(out), "--id", "2", "--out", str(tmp_path / "r2.pt"),
                 "--quiet"]) == 0
    saved = torch.load(tmp_path / "r2.pt", weights_only=False)
    rec = run.record(2)
    assert saved["metrics"]["macs"] == rec["macs"]
    assert saved["metrics"]["val_accuracy"] == rec["val_accuracy"]
    assert np.isclose(saved["metrics"]["test_accuracy"], rec["test_accuracy"])


def test_damaged_round_file_is_a_clear_error(digits_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(digits_run.path, copy)
    (copy / "rounds" / "round_001.pt").write_bytes(b"garbage")
    with pytest.raises(RunDirError, match="corrupted"):
        load_network(RunDir(copy), 1)


def test_registered_as_one_round(digits_weights):
    from moprune.algorithms import ALGORITHMS
    from moprune.algorithms.coevolution import CoevolutionRound

    alg = ALGORITHMS.get("ccep")(digits_setup(digits_weights).problem, 4)
    assert isinstance(alg, CoevolutionRound) and alg.config.pop_size == 4
    task, data = _digits(digits_weights)
    with pytest.raises(TypeError, match="filter-mask"):
        ALGORITHMS.get("ccep")(make_problem(task, data, encoding="ratio").problem, 4)
