"""Run directories: determinism, resume (after kill -9 too), and bad input that must give a
clear error without harming the results already saved."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_main
from PIL import Image

from moprune.cli.main import main
from moprune.runs.rundir import RunDir, RunDirError
from moprune.zoo.cifar_resnet import cifar_resnet

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "problems" / "digits_demo.py"
RESNET20 = REPO / "problems" / "resnet20_cifar10.py"
POP, GENS, EVAL_IMAGES, TEST_IMAGES = 8, 8, 96, 96
RESULT_FILES = ("front.json", "candidates.jsonl")


def search_args(out: Path, weights: Path, *extra: str, seed: int = 0) -> list[str]:
    return ["search", str(DIGITS), "--weights", str(weights), "--pop-size", str(POP),
            "--generations", str(GENS), "--eval-images", str(EVAL_IMAGES),
            "--test-images", str(TEST_IMAGES), "--seed", str(seed), "--out", str(out),
            "--quiet", *extra]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def results(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in RESULT_FILES}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, digits_weights: Path) -> Path:
    """An uninterrupted run (seed 0); tests copy it before touching it."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    assert main(search_args(out, digits_weights)) == 0
    return out


@pytest.fixture
def saved_run(reference: Path, tmp_path: Path) -> Path:
    """A private copy of the reference run."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    return out


@pytest.fixture(scope="module")
def random_resnet20(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random ResNet-20 state_dict, so CIFAR problems need no download."""
    path = tmp_path_factory.mktemp("weights") / "resnet20_random.pt"
    torch.save(cifar_resnet(20).state_dict(), path)
    return path


def assert_refused(argv: list[str], run: Path, capsys, *needles: str) -> str:
    """The command exits with status 2, names ``needles``, and leaves ``run`` byte-identical."""
    before = snapshot(run)
    status, _, err = run_main(argv, capsys)
    assert status == 2, err
    assert err.startswith("moprune "), err
    for needle in needles:
        assert needle in err, f"{needle!r} not in error message: {err}"
    assert "Traceback" not in err
    assert snapshot(run) == before, "the failed command changed the saved run"
    return err


# ---- determinism ------------------------------------------------------------------------


def test_same_seed_gives_identical_results(reference, digits_weights, tmp_path):
    out = tmp_path / "again"
    assert main(search_args(out, digits_weights)) == 0
    assert results(out) == results(reference)
    assert (out / "baseline.json").read_bytes() == (reference / "baseline.json").read_bytes()


def test_force_overwrites_a_run_and_another_seed_differs(saved_run, digits_weights, reference):
    assert main(search_args(saved_run, digits_weights, "--force", seed=1)) == 0
    run = RunDir(saved_run)
    assert run.config()["identity"]["seed"] == 1
    assert results(saved_run)["candidates.jsonl"] != results(reference)["candidates.jsonl"]
    assert results(saved_run)["front.json"] != results(reference)["front.json"]
    assert run.load_checkpoint()["generation"] == GENS
    ids = [r["id"] for r in run.candidates()]
    assert ids == list(range(len(ids)))  # nothing of the old run is left in candidates.jsonl


# ---- resume -----------------------------------------------------------------------------


def test_resume_after_kill_9_equals_an_uninterrupted_run(reference, digits_weights, tmp_path,
                                                         capsys):
    out = tmp_path / "killed"
    argv = search_args(out, digits_weights)
    proc = subprocess.Popen([sys.executable, "-m", "moprune.cli.main", *argv], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    progress = out / "progress.json"
    done = 0
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                done = json.loads(progress.read_text())["generations_done"]
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                done = 0
            if done >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"search ended before it could be killed: " \
                                    f"{proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert done >= 3
    assert not (out / "front.json").exists()
    killed_at = RunDir(out).load_checkpoint()["generation"]
    assert 3 <= killed_at < GENS

    status, stdout, err = run_main(argv + ["--resume"], capsys)
    assert status == 0, err
    assert results(out) == results(reference)
    assert RunDir(out).load_checkpoint()["generation"] == GENS


class Interrupted(Exception):
    """Stands in for a crash in the middle of a search."""


@pytest.mark.parametrize("after_saving", [True, False],
                         ids=["crash after checkpoint", "crash before checkpoint"])
def test_resume_in_process_after_an_interruption(reference, digits_weights, tmp_path, capsys,
                                                 monkeypatch, after_saving):
    """A crash after generation 3's checkpoint, or after its candidates were appended but
    before its checkpoint (candidates.jsonl then runs ahead of checkpoint.pkl)."""
    out = tmp_path / "interrupted"
    real_save = RunDir.save_checkpoint

    def crashing_save(self, state):
        crash = state["generation"] == 3
        if after_saving or not crash:
            real_save(self, state)
        if crash:
            raise Interrupted

    monkeypatch.setattr(RunDir, "save_checkpoint", crashing_save)
    with pytest.raises(Interrupted):
        main(search_args(out, digits_weights))
    monkeypatch.undo()
    run = RunDir(out)
    assert run.load_checkpoint()["generation"] == (3 if after_saving else 2)
    assert max(r["generation"] for r in run.candidates()) == 3
    assert not (out / "front.json").exists()

    status, _, err = run_main(search_args(out, digits_weights, "--resume"), capsys)
    assert status == 0, err
    assert results(out) == results(reference)


def test_resume_after_the_last_generation_writes_the_front(saved_run, digits_weights,
                                                          reference, capsys):
    """Killed after the last checkpoint, before the front was written: --resume finishes."""
    (saved_run / "front.json").unlink()
    (saved_run / "finished.json").unlink()
    status, _, err = run_main(search_args(saved_run, digits_weights, "--resume"), capsys)
    assert status == 0, err
    assert results(saved_run) == results(reference)


def test_resume_of_a_finished_run_is_refused(saved_run, digits_weights, capsys):
    assert_refused(search_args(saved_run, digits_weights, "--resume"), saved_run, capsys,
                   "finished run", "nothing to resume", "--force")


# ---- refusals that must leave the saved run untouched ------------------------------------


def test_out_dir_holding_another_run_is_refused(saved_run, digits_weights, capsys):
    assert_refused(search_args(saved_run, digits_weights, seed=1), saved_run, capsys,
                   "already holds a run", "--resume", "--force")
    # the same command as the saved run, without --resume, is refused too
    assert_refused(search_args(saved_run, digits_weights), saved_run, capsys,
                   "already holds a run")


def test_resume_with_other_options_names_the_setting(saved_run, digits_weights, capsys):
    assert_refused(search_args(saved_run, digits_weights, "--resume", seed=1), saved_run,
                   capsys, "cannot resume", "seed", "--force")
    argv = search_args(saved_run, digits_weights, "--resume")
    argv[argv.index("--pop-size") + 1] = str(POP + 2)
    err = assert_refused(argv, saved_run, capsys, "pop_size")
    assert "seed" not in err.split("(")[1].split(")")[0]


def unfinish(run: Path) -> None:
    """The run as a kill after its last checkpoint leaves it: no front, not finished."""
    (run / "front.json").unlink()
    (run / "finished.json").unlink()


def test_resume_with_a_corrupted_checkpoint(saved_run, digits_weights, capsys):
    unfinish(saved_run)
    (saved_run / "checkpoint.pkl").write_bytes(os.urandom(64) + b"\x00garbage\xff")
    assert_refused(search_args(saved_run, digits_weights, "--resume"), saved_run, capsys,
                   "checkpoint.pkl", "corrupted", "moprune repair", "--force")


def test_resume_with_a_foreign_checkpoint(saved_run, digits_weights, capsys):
    unfinish(saved_run)
    (saved_run / "checkpoint.pkl").write_bytes(pickle.dumps({"algorithm": None,
                                                              "generation": 3}))
    assert_refused(search_args(saved_run, digits_weights, "--resume"), saved_run, capsys,
                   "not a moprune checkpoint")


def test_problem_file_without_build_task(saved_run, digits_weights, tmp_path, capsys):
    problem = tmp_path / "no_entry.py"
    problem.write_text("def make_task(options):\n    return None\n")
    argv = search_args(saved_run, digits_weights)
    argv[1] = str(problem)
    assert_refused(argv, saved_run, capsys, "no_entry.py", "build_task")


def test_missing_problem_file(saved_run, digits_weights, tmp_path, capsys):
    argv = search_args(saved_run, digits_weights)
    argv[1] = str(tmp_path / "nowhere.py")
    assert_refused(argv, saved_run, capsys, "nowhere.py", "does not exist")


def test_problem_file_that_raises_on_import(saved_run, digits_weights, tmp_path, capsys):
    problem = tmp_path / "broken.py"
    problem.write_text("raise RuntimeError('boom in the problem file')\n")
    argv = search_args(saved_run, digits_weights)
    argv[1] = str(problem)
    assert_refused(argv, saved_run, capsys, "broken.py", "failed to import", "RuntimeError",
                   "boom in the problem file")


def test_unknown_algorithm_lists_the_known_ones(saved_run, digits_weights, capsys):
    assert_refused(search_args(saved_run, digits_weights, "--algorithm", "nsga9"), saved_run,
                   capsys, "nsga9", "nsga2")


def test_cuda_requested_without_cuda(saved_run, digits_weights, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert_refused(search_args(saved_run, digits_weights, "--device", "cuda", "--resume"),
                   saved_run, capsys, "CUDA is not available", "--device cpu")
    assert_refused(["export", str(saved_run), "--id", "0", "--out",
                    str(saved_run / "m.pt"), "--device", "cuda"], saved_run, capsys,
                   "--device cpu")


def test_weights_that_do_not_fit_the_model(saved_run, random_resnet20, capsys):
    assert_refused(search_args(saved_run, random_resnet20), saved_run, capsys,
                   "resnet20_random.pt", "do not fit")


def test_missing_weights_file(saved_run, tmp_path, capsys):
    assert_refused(search_args(saved_run, tmp_path / "none.pt"), saved_run, capsys,
                   "none.pt", "does not exist")


def test_export_of_an_unknown_id(saved_run, tmp_path, capsys):
    target = tmp_path / "m.pt"
    assert_refused(["export", str(saved_run), "--id", "99999", "--out", str(target)],
                   saved_run, capsys, "no candidate with id 99999", "moprune pick")
    assert not target.exists()


# ---- data errors (fresh output folders) --------------------------------------------------


def resnet20_args(out: Path, weights: Path, *extra: str) -> list[str]:
    return ["search", str(RESNET20), "--weights", str(weights), "--pop-size", "4",
            "--generations", "1", "--eval-images", "8", "--test-images", "8", "--out",
            str(out), "--quiet", *extra]


def write_image_folder(root: Path, classes: int, per_class: int) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", max(1, per_class // 2))):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")


def test_missing_data_root(random_resnet20, tmp_path, capsys):
    status, _, err = run_main(resnet20_args(tmp_path / "run", random_resnet20), capsys)
    assert status == 2
    assert "--data-root" in err and "train/" in err


def test_data_root_without_a_known_layout(random_resnet20, tmp_path, capsys):
    root = tmp_path / "data"
    (root / "stuff").mkdir(parents=True)
    (root / "notes.txt").write_text("not a data set\n")
    status, _, err = run_main(resnet20_args(tmp_path / "run", random_resnet20,
                                            "--data-root", str(root)), capsys)
    assert status == 2
    assert "cannot tell which data set" in err and "stuff/" in err


def test_data_root_that_does_not_exist(random_resnet20, tmp_path, capsys):
    status, _, err = run_main(resnet20_args(tmp_path / "run", random_resnet20, "--data-root",
                                            str(tmp_path / "absent")), capsys)
    assert status == 2
    assert "absent" in err and "does not exist" in err


def test_wrong_number_of_classes(random_resnet20, tmp_path, capsys):
    root = tmp_path / "three"
    write_image_folder(root, classes=3, per_class=6)
    status, _, err = run_main(resnet20_args(tmp_path / "run", random_resnet20,
                                            "--data-root", str(root)), capsys)
    assert status == 2
    assert "3 classes" in err and "10" in err


def test_a_failed_data_load_does_not_block_the_corrected_command(random_resnet20, tmp_path,
                                                                 capsys):
    out = tmp_path / "run"
    status, _, _ = run_main(resnet20_args(out, random_resnet20), capsys)
    assert status == 2
    root = tmp_path / "three"
    write_image_folder(root, classes=3, per_class=6)
    # the corrected command (still failing, on the class count) must not be refused
    # because of the first attempt
    status, _, err = run_main(resnet20_args(out, random_resnet20, "--data-root", str(root)),
                              capsys)
    assert "already holds a run" not in err
    assert "3 classes" in err


# ---- candidates.jsonl robustness -------------------------------------------------------------


def test_torn_last_line_of_candidates_is_ignored(saved_run):
    unfinish(saved_run)  # an interrupted run: a kill while appending tears the last line
    run = RunDir(saved_run)
    before = run.candidates()
    line = json.dumps(before[-1], sort_keys=True)
    with open(saved_run / "candidates.jsonl", "a") as f:
        f.write(line[: len(line) // 2])
    assert run.candidates() == before


def test_corrupted_middle_line_of_candidates_is_an_error(saved_run):
    path = saved_run / "candidates.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1][:10] + "\n"
    path.write_text("".join(lines))
    with pytest.raises(RunDirError, match="line 2 is corrupted"):
        RunDir(saved_run).candidates()
