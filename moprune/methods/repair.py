"""``moprune repair RUN``: bring a damaged or interrupted run back to a consistent state.

What a run recorded (the ledger of its candidate lines in the checkpoint, and in
``finished.json`` once finished) says which lines are intact. Then:

- lines written after the last checkpoint (an interrupted generation, a line torn by a kill)
  are trimmed, as ``--resume`` would;
- anything worse (a damaged or missing line, a corrupted checkpoint, an edited front) is
  rebuilt by *replaying* the search from its start with the same seed: genomes the run
  recorded intact get their recorded scores back without being scored again, the rest are
  scored anew. An interrupted run is replayed as far as it had got (then ``--resume``
  continues it); a finished run to its end, front included. The damaged files are kept in
  ``RUN/repair-backup/``; nothing is deleted.

Replaying needs scores that depend only on the plan: weight inheritance (EvoFC's default)
and CCEP's fine-tuned rounds cannot be replayed, and are reported instead.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass

from moprune.errors import RunDirError
from moprune.methods.base import Method
from moprune.methods.rebuild import method_of, setup_from_config
from moprune.runs.files import parse_lines
from moprune.runs.ledger import Ledger, complete_lines, line_hash
from moprune.runs.rundir import (
    BASELINE,
    CANDIDATES,
    CHECKPOINT,
    FINISHED,
    FRONT,
    PROGRESS,
    RunDir,
    atomic_write_bytes,
)

BACKUP = "repair-backup"


@dataclass
class Diagnosis:
    """What is intact in a run and what is not."""

    intact: list[dict]  # candidate records whose lines the run recorded as they are
    damaged: list[str]  # what is wrong, one line each
    trim: int  # lines after the last checkpoint (nothing wrong with them)
    generations: int  # generations the intact records reach


def _ledger(run: RunDir, damaged: list[str]) -> Ledger | None:
    """The most complete record of the candidate lines: finished.json, else the checkpoint.

    A checkpoint that does not load is damage either way (a finished run's too).
    """
    from_checkpoint = None
    if run.checkpoint_exists():
        try:
            stored = run.load_checkpoint().get("candidates")
            from_checkpoint = None if stored is None else Ledger.from_dict(stored)
        except RunDirError as exc:
            damaged.append(str(exc))
    if run.finished():
        try:
            return Ledger.from_dict(run.finished_record()["candidates"])
        except RunDirError as exc:
            damaged.append(str(exc))
    return from_checkpoint


def diagnose(run: RunDir) -> Diagnosis:
    """Check every file the run verifies against its ledger."""
    damaged: list[str] = []
    path = run.path / CANDIDATES
    lines, tail = complete_lines(path.read_bytes() if path.exists() else b"")
    ledger = _ledger(run, damaged)
    intact: list[dict] = []
    if ledger is None:  # no record of the lines: trust the ones that parse
        for line in lines:
            try:
                intact.extend(parse_lines(path, [line]))
            except RunDirError:
                damaged.append(f"{CANDIDATES}: a line is not JSON")
        trim = 0
    else:
        for i, expected in enumerate(ledger.hashes):
            if i < len(lines) and line_hash(lines[i]) == expected:
                intact.extend(parse_lines(path, [lines[i]]))
            else:
                damaged.append(f"{CANDIDATES} line {i + 1}: missing or differs from the ledger")
        trim = max(0, len(lines) - ledger.lines) + bool(tail)
    if run.finished():
        for name in (FRONT, BASELINE):
            try:
                run.front() if name == FRONT else run.baseline()
            except RunDirError as exc:
                damaged.append(str(exc))
    generations = max((int(r.get("generation", 0)) for r in intact), default=0)
    return Diagnosis(intact, damaged, trim, generations)


def _backup(run: RunDir) -> str:
    """Copy the run's result files into ``repair-backup/<time>/``; returns the folder."""
    folder = run.path / BACKUP / time.strftime("%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    for name in (CANDIDATES, CHECKPOINT, FRONT, BASELINE, FINISHED, PROGRESS):
        if (run.path / name).is_file():
            shutil.copy2(run.path / name, folder / name)
    return folder.relative_to(run.path).as_posix()


def _replay(run: RunDir, method: Method, diagnosis: Diagnosis, device: str | None,
            progress: bool) -> str:
    config = run.config()
    identity = config["identity"]
    finished = run.finished()
    until = identity["generations"] if finished else diagnosis.generations
    backup = _backup(run)
    setup = setup_from_config(config, device=device, progress=progress)
    setup.problem.recorded = {r["genome"]: (float(r["val_accuracy"]), float(r["val_loss"]))
                              for r in diagnosis.intact}
    for name in (CHECKPOINT, FRONT, FINISHED, PROGRESS):
        (run.path / name).unlink(missing_ok=True)
    for pattern in method.extra_files:  # the method's own logs start again with the search
        for p in run.path.glob(pattern):
            if p.is_file():
                p.unlink()
    atomic_write_bytes(run.path / CANDIDATES, b"")
    done = method.replay(setup, run, identity, until, progress)
    replayed = run.candidates()
    reused = sum(1 for r in replayed if r["genome"] in setup.problem.recorded)
    scored = len(replayed) - reused
    state = ("finished (front, plots)" if done >= identity["generations"]
             else f"resumable after generation {done}: finish it with `moprune search ... "
                  "--resume`")
    return (f"replayed {done} generation(s) from the recorded scores: {reused} candidate(s) "
            f"taken from the run, {scored} scored again; the run is {state}. The damaged "
            f"files are in {run.path / backup}.")


def repair(run: RunDir, device: str | None = None, progress: bool = True) -> str:
    """Repair ``run`` (see the module docstring); returns what was done, for printing."""
    config = run.config()
    method = method_of(config)
    diagnosis = diagnose(run)
    if not diagnosis.damaged:
        if diagnosis.trim:
            state = run.load_checkpoint()
            run.resume_candidates(state)  # trims, and says so
            return (f"trimmed {diagnosis.trim} line(s) written after the last checkpoint; the "
                    "run resumes with `moprune search ... --resume`")
        return f"{run.path} is intact: every file agrees with what the run recorded"
    problems = "\n".join(f"  - {d}" for d in diagnosis.damaged[:10])
    if not method.replayable(config["identity"]):
        raise RunDirError(
            f"{run.path} is damaged:\n{problems}\n{method.name} runs cannot be replayed (their "
            "scores depend on training state, not only on the plan); restore the damaged files "
            "from a backup, or start over with `moprune search ... --force`")
    print(f"{run.path} is damaged:\n{problems}\nreplaying the search from its recorded scores")
    return _replay(run, method, diagnosis, None if device is None else device, progress)


__all__ = ["BACKUP", "Diagnosis", "diagnose", "repair"]
