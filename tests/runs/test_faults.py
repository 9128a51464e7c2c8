"""Fault injection: whatever happens to a run directory ends in a clear error or a correct
recovery, never in a silent exit 0 with damaged or mixed files.

Kills are injected in-process at the run directory's write operations (an append torn half-way,
an atomic write stopped before its rename, ...), at seeded random points over several seeds;
``tests/runs/test_runs.py`` kills a real process with ``kill -9`` as well.
"""

from __future__ import annotations

import errno
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import run_main

import moprune.runs.files as run_files
import moprune.runs.rundir as rundir
from moprune.cli.main import main
from moprune.runs.lock import RunLock
from moprune.runs.rundir import RunDir
from moprune.version import __version__

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "problems" / "digits_demo.py"
RESULTS = ("candidates.jsonl", "front.json", "baseline.json")


def args(out: Path, weights: Path, *extra: str, seed: int = 0) -> list[str]:
    return ["search", str(DIGITS), "--weights", str(weights), "--pop-size", "6",
            "--generations", "4", "--eval-images", "64", "--test-images", "64", "--seed",
            str(seed), "--out", str(out), "--quiet", *extra]


def results(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in RESULTS}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` but the lock (which names its current holder)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def refused(argv: list[str], capsys, *needles: str) -> str:
    status, _, err = run_main(argv, capsys)
    assert status == 2, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def references(tmp_path_factory, digits_weights) -> dict[int, Path]:
    """Uninterrupted runs for the seeds the kills use."""
    out = {}
    for seed in (0, 1, 2):
        path = tmp_path_factory.mktemp("faults") / f"ref{seed}"
        assert main(args(path, digits_weights, seed=seed)) == 0
        out[seed] = path
    return out


@pytest.fixture
def finished(references, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(references[0], copy)
    return copy


# ---- kills at random write operations -----------------------------------------------------


class Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so nothing on the way catches it."""


class Injector:
    """Counts the run directory's write operations; the ``at``-th one is killed half-way."""

    def __init__(self, at: int | None, rng: random.Random, fault: Callable[[], BaseException]
                 ) -> None:
        self.at, self.rng, self.fault, self.count = at, rng, fault, 0
        self.real_append, self.real_atomic = run_files.append_lines, run_files.atomic_write_bytes

    def _hit(self) -> bool:
        self.count += 1
        return self.at is not None and self.count == self.at

    def append(self, path: Path, records: list[dict]) -> None:
        if self._hit():
            data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
            with open(path, "a") as f:  # a torn append: part of the lines reaches the disk
                f.write(data[: self.rng.randrange(len(data) + 1)])
            raise self.fault()
        self.real_append(path, records)

    def atomic(self, path: Path, data: bytes) -> None:
        if self._hit():
            if self.rng.random() < 0.5:  # the temporary file was written, not renamed yet
                (path.parent / f".{path.name}.killed.tmp").write_bytes(data[: len(data) // 2])
            raise self.fault()
        self.real_atomic(path, data)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for module in (rundir, run_files):  # atomic_write_json calls run_files' own
            monkeypatch.setattr(module, "append_lines", self.append)
            monkeypatch.setattr(module, "atomic_write_bytes", self.atomic)


def count_writes(argv: list[str], monkeypatch) -> int:
    injector = Injector(None, random.Random(0), Killed)
    with monkeypatch.context() as m:
        injector.install(m)
        assert main(argv) == 0
    return injector.count


def test_kills_at_random_writes_resume_to_the_same_files(references, digits_weights, tmp_path,
                                                         monkeypatch, capsys) -> None:
    """24 kill points over 3 seeds: every resumed run equals the uninterrupted one."""
    writes = count_writes(args(tmp_path / "count", digits_weights), monkeypatch)
    assert writes >= 15  # create, per generation (candidates, checkpoint, progress), front
    rng = random.Random(1234)
    points = [(seed, at) for seed in (0, 1, 2) for at in rng.sample(range(1, writes + 1), 8)]
    for seed, at in points:
        out = tmp_path / f"kill{seed}-{at}"
        argv = args(out, digits_weights, seed=seed)
        injector = Injector(at, random.Random(at), Killed)
        with monkeypatch.context() as m:
            injector.install(m)
            with pytest.raises(Killed):
                main(argv)
        status, _, err = run_main(argv + ["--resume"], capsys)
        if status == 2 and "no checkpoint yet" not in err:  # killed before config.json
            assert not (out / "config.json").exists(), err
            status, _, err = run_main(argv, capsys)
        assert status == 0, f"kill at write {at} (seed {seed}): {err}"
        assert results(out) == results(references[seed]), f"kill at write {at} (seed {seed})"
        assert RunDir(out).finished()


def test_ctrl_c_says_how_to_resume(references, digits_weights, tmp_path, monkeypatch,
                                   capsys) -> None:
    out = tmp_path / "sigint"
    argv = args(out, digits_weights)
    injector = Injector(12, random.Random(0), KeyboardInterrupt)
    with monkeypatch.context() as m:
        injector.install(m)
        status, _, err = run_main(argv, capsys)
    assert status == 130
    assert err.strip().endswith("interrupted (rerun the same command with --resume to continue)")
    assert "Traceback" not in err
    status, _, err = run_main(argv + ["--resume"], capsys)
    assert status == 0, err
    assert results(out) == results(references[0])


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_disk_or_read_only_folder_names_the_file_and_resumes(
        code, references, digits_weights, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "disk"
    argv = args(out, digits_weights)
    calls = {"n": 0}
    real_fsync = run_files.os.fsync

    def failing_fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 15:
            raise OSError(code, run_files.os.strerror(code))
        real_fsync(fd)

    with monkeypatch.context() as m:
        m.setattr(run_files.os, "fsync", failing_fsync)
        err = refused(argv, capsys, "cannot", str(out), run_files.os.strerror(code), "--resume")
    assert "offline" not in err and "torch.hub" not in err
    status, _, err = run_main(argv + ["--resume"], capsys)
    assert status == 0, err
    assert results(out) == results(references[0])


# ---- two writers --------------------------------------------------------------------------


def test_a_second_writer_is_refused_and_names_the_first(finished, digits_weights, capsys
                                                        ) -> None:
    before = snapshot(finished)
    with RunLock(finished, "moprune search (the first)"):
        for extra in (["--force"], ["--force", "--seed", "5"]):
            refused(args(finished, digits_weights, *extra), capsys, "being written",
                    "moprune search (the first)", "pid")
        refused(["plot", str(finished)], capsys, "still being written")
        refused(["pick", str(finished), "--knee"], capsys, "still being written")
        refused(["export", str(finished), "--id", "knee", "--out",
                 str(finished.parent / "k.pt")], capsys, "still being written")
    assert snapshot(finished) == before
    status, _, err = run_main(["pick", str(finished), "--knee"], capsys)  # nobody writes now
    assert status == 0, err


def test_two_concurrent_searches_cannot_share_a_run(digits_weights, tmp_path, capsys) -> None:
    out = tmp_path / "shared"
    with RunLock(out, "moprune search"):  # a search that has just started
        refused(args(out, digits_weights), capsys, "being written")
        assert not (out / "config.json").exists()


# ---- torn, truncated and edited files ---------------------------------------------------------


def interrupt(run: Path) -> None:
    """The state a kill after the last checkpoint leaves: no front, not finished."""
    for name in ("front.json", "finished.json"):
        (run / name).unlink()


def lines_of(run: Path) -> list[bytes]:
    return (run / "candidates.jsonl").read_bytes().splitlines(keepends=True)


def test_a_torn_tail_of_an_interrupted_run_is_trimmed_and_said(finished, references,
                                                              digits_weights, capsys) -> None:
    interrupt(finished)
    with open(finished / "candidates.jsonl", "ab") as f:
        f.write(b'{"genome": "ab", "id": 99, "val_acc')
    status, out, err = run_main(args(finished, digits_weights, "--resume"), capsys)
    assert status == 0, err
    assert "trimmed 0 candidate line(s) and a line torn" in out
    assert results(finished) == results(references[0])


@pytest.mark.parametrize("where", ["half", "one line", "first line"])
def test_a_truncated_run_is_an_error_and_repair_rebuilds_it(where, finished, references,
                                                            digits_weights, capsys) -> None:
    lines = lines_of(finished)
    keep = {"half": len(lines) // 2, "one line": len(lines) - 1, "first line": 0}[where]
    (finished / "candidates.jsonl").write_bytes(b"".join(lines[:keep]))
    before = snapshot(finished)
    for argv in (["plot", str(finished)], ["pick", str(finished), "--knee"],
                 ["export", str(finished), "--id", "knee", "--out", str(finished.parent / "k")]):
        refused(argv, capsys, "candidates.jsonl", "truncated", "moprune repair")
    refused(args(finished, digits_weights, "--resume"), capsys, "finished run")
    assert snapshot(finished) == before  # nothing was rewritten, in particular not front.json
    status, out, err = run_main(["repair", str(finished), "--quiet"], capsys)
    assert status == 0, err
    assert "replayed 4 generation(s)" in out and "finished" in out
    assert results(finished) == results(references[0])
    assert (finished / "repair-backup").is_dir()
    status, out, _ = run_main(["repair", str(finished)], capsys)
    assert status == 0 and "is intact" in out


def test_an_edited_line_is_named_and_repaired(finished, references, capsys) -> None:
    lines = lines_of(finished)
    record = json.loads(lines[3])
    record["val_accuracy"] = 0.99
    lines[3] = (json.dumps(record, sort_keys=True) + "\n").encode()
    (finished / "candidates.jsonl").write_bytes(b"".join(lines))
    err = refused(["pick", str(finished), "--knee"], capsys, "line 4", "moprune repair")
    assert "corrupted" in err
    status, out, err = run_main(["repair", str(finished), "--quiet"], capsys)
    assert status == 0, err
    assert "1 scored again" in out
    assert results(finished) == results(references[0])


def test_an_edited_front_is_refused_and_repaired(finished, references, capsys) -> None:
    front = json.loads((finished / "front.json").read_text())
    (finished / "front.json").write_text(json.dumps(front[:1]))
    refused(["pick", str(finished), "--knee"], capsys, "front.json", "differs", "repair")
    status, _, err = run_main(["repair", str(finished), "--quiet"], capsys)
    assert status == 0, err
    assert results(finished) == results(references[0])


@pytest.mark.parametrize("state", ["interrupted", "finished"])
def test_a_corrupted_checkpoint_is_repaired_without_losing_results(state, finished, references,
                                                                   digits_weights, capsys
                                                                   ) -> None:
    if state == "interrupted":  # killed during generation 3, its checkpoint then damaged
        interrupt(finished)
        kept = [line for line in lines_of(finished) if json.loads(line)["generation"] <= 2]
        (finished / "candidates.jsonl").write_bytes(b"".join(kept))
    (finished / "checkpoint.pkl").write_bytes(b"\x80\x04garbage")
    if state == "interrupted":
        refused(args(finished, digits_weights, "--resume"), capsys, "checkpoint.pkl",
                "corrupted", "moprune repair")
    status, out, err = run_main(["repair", str(finished), "--quiet"], capsys)
    assert status == 0, err
    assert "0 scored again" in out  # every score came from the recorded candidates
    if state == "interrupted":  # rebuilt as far as it had got: resumable
        assert not (finished / "front.json").exists()
        status, _, err = run_main(args(finished, digits_weights, "--resume"), capsys)
        assert status == 0, err
    assert results(finished) == results(references[0])


# ---- nothing of the user's is deleted -----------------------------------------------------------


def test_force_removes_only_the_runs_files_and_says_so(finished, digits_weights, capsys) -> None:
    status, out, err = run_main(args(finished, digits_weights, "--force", seed=1), capsys)
    assert status == 0, err
    assert "replaced the run" in out and "candidates.jsonl" in out


@pytest.mark.parametrize("foreign", ["notes.txt", "models/knee.pt", "plots/mine.pdf"])
def test_force_refuses_a_folder_with_the_users_files(foreign, finished, digits_weights,
                                                     capsys) -> None:
    (finished / foreign).parent.mkdir(parents=True, exist_ok=True)
    (finished / foreign).write_text("mine")
    before = snapshot(finished)
    refused(args(finished, digits_weights, "--force", seed=1), capsys, foreign,
            "never deletes")
    assert snapshot(finished) == before


def test_demo_never_deletes_the_users_files(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    config = {"identity": {"problem": str(REPO / "moprune" / "tasks" / "digits.py")},
              "files": rundir.run_files()}
    (out / "config.json").write_text(json.dumps(config))
    (out / "candidates.jsonl").write_text("")
    (out / "notes.txt").write_text("my notes")
    (out / "exports").mkdir()
    (out / "exports" / "model.pt").write_text("mine")
    before = snapshot(out)
    refused(["demo", "--out", str(out), "--quiet"], capsys, "notes.txt", "never deletes")
    assert snapshot(out) == before


# ---- the error contract ------------------------------------------------------------------------


def test_option_values_are_refused_before_anything_is_loaded(digits_weights, tmp_path,
                                                             capsys) -> None:
    out = tmp_path / "bad"
    for extra, needle in ((["--seed", "-3"], "--seed"), (["--pop-size", "abc"],
                                                         "expected a positive integer")):
        with pytest.raises(SystemExit) as exit_info:
            main(args(out, digits_weights, *extra))
        assert exit_info.value.code == 2
        assert needle in capsys.readouterr().err
    refused(args(out, digits_weights, "--pop-size", "1"), capsys, "--pop-size must be >= 2")
    refused(args(out, digits_weights, "--device", "gpu"), capsys, "'gpu'", "cpu")
    assert not out.exists()


@pytest.mark.parametrize("body, kind", [("raise RuntimeError('no GPU here')", "RuntimeError"),
                                        ("raise ValueError('bad size')", "ValueError")])
def test_errors_of_the_problem_file_say_they_come_from_it(body, kind, tmp_path, capsys) -> None:
    problem = tmp_path / "broken.py"
    problem.write_text(f"def build_task(options):\n    {body}\n")
    err = refused(["search", str(problem), "--out", str(tmp_path / "r")], capsys,
                  "build_task() in problem file", "broken.py", kind)
    assert not (tmp_path / "r").exists()
    assert "offline" not in err


def test_a_truncated_weights_file_is_a_clear_error(tmp_path, digits_weights, capsys) -> None:
    bad = tmp_path / "w.pt"
    bad.write_bytes(digits_weights.read_bytes()[:100])
    err = refused(args(tmp_path / "r", bad), capsys, "w.pt", "cannot be read", "truncated")
    assert "Invalid argument" not in err.split("(")[0]


def test_plot_of_an_unknown_id_draws_nothing(finished, capsys) -> None:
    before = snapshot(finished / "plots")
    refused(["plot", str(finished), "--id", "99999"], capsys, "no candidate with id 99999")
    assert snapshot(finished / "plots") == before


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"moprune {__version__}"


def test_a_bug_keeps_its_traceback_and_says_it_is_one(finished, monkeypatch, capsys) -> None:
    import moprune.cli.results as results_cmd

    def broken(*_args, **_kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(results_cmd, "pick", broken)
    with pytest.raises(ZeroDivisionError):
        main(["pick", str(finished), "--knee"])
    assert "this is a bug in moprune" in capsys.readouterr().err


def test_debug_shows_the_problem_files_traceback(tmp_path, capsys) -> None:
    problem = tmp_path / "broken.py"
    problem.write_text("def build_task(options):\n    return 1 / 0\n")
    status, _, err = run_main(["--debug", "search", str(problem), "--out", str(tmp_path / "r")],
                              capsys)
    assert status == 2
    assert "Traceback" in err and "1 / 0" in err and "ZeroDivisionError" in err
    assert "build_task() in problem file" in err
