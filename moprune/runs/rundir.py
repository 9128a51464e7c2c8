"""Run directories: config, every evaluated candidate, checkpoints, the front; resumable.

Layout of a run directory::

    config.json        how the run was made (problem file + sha256, options, seed, versions,
                       git hash, the files the run writes); a resumed run must match it
    baseline.json      the unpruned network (val/test accuracy, MACs, params)
    candidates.jsonl   one line per evaluated genome, in evaluation order
    checkpoint.pkl     the search after the last finished generation, with the ledger of the
                       candidate lines up to it (atomic)
    progress.json      generations done, evaluations, cache hits
    front.json         final non-dominated members with test accuracy
    finished.json      written last: the ledger of every candidate line and the hashes of
                       front.json and baseline.json (a finished run is never rewritten)
    events.jsonl       only when something happened besides the results: Dask workers that
                       left or joined during an evaluation (their tasks ran elsewhere)
    plots/             front.{png,svg}, hypervolume.{png,svg}, ...
    .lock              held (flock) by the one process writing the run

A method adds files of its own (``Method.extra_files``): CCEP ``rounds/round_NNN.pt`` and
``coevolution.jsonl``, DeepPruningES ``elites.jsonl``, EvoFC ``supernet.pt``; see
docs/run-directory.md.

Every file is written atomically, so a run killed at any point (``kill -9`` included) leaves
the last checkpoint and the candidates up to it intact; every file read back is checked
against what the run recorded (:mod:`moprune.runs.ledger`).
"""

from __future__ import annotations

import fnmatch
import json
import pickle
import platform
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moprune.errors import RunDirError
from moprune.runs.compat import LEGACY_IDENTITY, Unpickler
from moprune.runs.files import (
    append_lines,
    atomic_write_bytes,
    atomic_write_json,
    parse_lines,
    read_json,
)
from moprune.runs.ledger import Ledger, complete_lines, file_hash, verify
from moprune.runs.lock import LOCK, RunLock, check_not_written
from moprune.version import __version__

CONFIG = "config.json"
CANDIDATES = "candidates.jsonl"
CHECKPOINT = "checkpoint.pkl"
FRONT = "front.json"
BASELINE = "baseline.json"
PROGRESS = "progress.json"
FINISHED = "finished.json"
EVENTS = "events.jsonl"  # what happened to a run besides its results (e.g. Dask workers lost)
MAGIC = "moprune-checkpoint-v1"
RUN_FILES = (CONFIG, CANDIDATES, CHECKPOINT, FRONT, BASELINE, PROGRESS, FINISHED, EVENTS)
# what every run may write (glob patterns relative to the run); methods add theirs
OWN_FILES = (*RUN_FILES, LOCK, ".*.tmp", "plots/*.png", "plots/*.svg", "plots/.*.tmp",
             "repair-backup/*")


def run_files(extra: tuple[str, ...] = ()) -> list[str]:
    """The files a run writes: the common ones and a method's ``extra`` (glob patterns)."""
    return [*OWN_FILES, *extra]


def git_hash() -> str | None:
    """Commit of the moprune checkout, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def versions() -> dict[str, str]:
    """Versions of Python and the main packages."""
    import numpy
    import pymoo
    import torch
    import torch_pruning
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "pymoo": pymoo.__version__,
            "torch_pruning": getattr(torch_pruning, "__version__", "?"),
            "numpy": numpy.__version__, "moprune": __version__}


def _flat(d: dict, prefix: str = "") -> dict:
    """Nested dicts flattened to dotted keys (so a refusal names the exact setting)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@dataclass
class RunDir:
    """A run directory on disk."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    # ---- creation and identity -------------------------------------------------------
    def exists(self) -> bool:
        return (self.path / CONFIG).exists()

    def finished(self) -> bool:
        """Whether the run finished (``finished.json``; runs before 0.2: ``front.json``)."""
        return (self.path / FINISHED).exists()

    def lock(self, command: str) -> RunLock:
        """The run's writer lock (a context manager); a second writer gets a clear error."""
        return RunLock(self.path, command)

    def check_readable(self, what: str) -> None:
        """Refuse to read a run another process is still writing, or one that is damaged.

        A finished run's candidates, front and baseline are checked against
        ``finished.json``; an error names the file, the line and how to recover.
        """
        check_not_written(self.path, what)
        if self.finished():
            self.candidates()
            self.front()
            self.baseline()

    def check(self, config: dict, resume: bool, force: bool) -> bool:
        """Check that a search may write here; writes nothing. Returns True to resume.

        Resuming needs a checkpoint and a stored config whose ``identity`` matches; a
        finished run is not resumed. ``force`` replaces a run, never files it did not write.

        Raises:
            RunDirError: The folder holds a different or finished run (and neither
                ``resume`` with a matching config nor ``force`` was given), files that no run
                wrote, or is not a run at all.

        """
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{str(self.path)!r} exists and is not a directory")
        if self.exists():
            if force and not resume:
                self._refuse_foreign(self.files() + self._inputs(config))
                return False
            if resume:
                self._check_identity(config)
                if self.finished():
                    raise RunDirError(
                        f"{str(self.path)!r} holds a finished run (front.json): there is nothing "
                        "to resume; look at it with `moprune plot/pick/export`, or start over "
                        "with --force (this replaces its results), or choose another --out.")
                if self.checkpoint_exists():
                    self.resume_candidates(self.load_checkpoint(), trim=False)  # fail now
                    return True
                return False
            raise RunDirError(
                f"{str(self.path)!r} already holds a run; pass --resume to continue it, "
                "--force to overwrite it, or choose another --out."
            )
        if self.path.exists():
            self._refuse_foreign([LOCK, ".*.tmp", *self._inputs(config)],
                                 why="holds no moprune run; choose an empty or new folder")
        return False

    def _inputs(self, config: dict) -> list[str]:
        """The run's input files that live in its folder (``--weights``): kept, never removed."""
        out = []
        for key in ("weights", "problem"):
            value = config.get("identity", {}).get(key)
            if not value:
                continue
            try:
                out.append(Path(value).resolve().relative_to(self.path.resolve()).as_posix())
            except ValueError:  # not inside the run folder
                continue
        return out

    def _check_identity(self, config: dict) -> None:
        identity = dict(self.config()["identity"])
        for key, value in LEGACY_IDENTITY.items():  # runs made before the key existed
            if key in config["identity"] and key not in identity:
                identity[key] = value
        stored = _flat(identity)
        wanted = _flat(config["identity"])
        diff = {k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k)}
        if diff:
            raise RunDirError(
                f"cannot resume {str(self.path)!r}: it was made with different settings "
                f"({', '.join(sorted(diff))}); use the same command, or --force to start "
                "over (this replaces the old results), or another --out."
            )

    # ---- the files a run owns ----------------------------------------------------------
    def files(self) -> list[str]:
        """The glob patterns of the files this run writes (recorded in its config)."""
        try:
            stored = self.config().get("files")
        except RunDirError:
            stored = None
        return list(stored) if stored else run_files()

    def _entries(self) -> list[Path]:
        """Every file in the folder (recursively), and every empty folder."""
        out = []
        for entry in sorted(self.path.rglob("*")):
            if entry.is_file() or entry.is_symlink():
                out.append(entry)
            elif entry.is_dir() and not any(entry.iterdir()):
                out.append(entry)
        return out

    def owned(self, patterns: list[str]) -> tuple[list[Path], list[str]]:
        """The run's files here, and the entries that are not (relative names)."""
        mine, foreign = [], []
        for entry in self._entries():
            name = entry.relative_to(self.path).as_posix()
            if entry.is_file() and any(fnmatch.fnmatchcase(name, p) for p in patterns):
                mine.append(entry)
            else:
                foreign.append(name + ("/" if entry.is_dir() else ""))
        return mine, foreign

    def _refuse_foreign(self, patterns: list[str], why: str = "") -> None:
        _, foreign = self.owned(patterns)
        if foreign:
            shown = ", ".join(foreign[:8]) + (f" and {len(foreign) - 8} more"
                                             if len(foreign) > 8 else "")
            reason = why or "holds files the run did not write"
            raise RunDirError(f"{str(self.path)!r} {reason}: {shown}; moprune never deletes "
                              "files it did not write. Move them away or choose another --out.")

    def create(self, config: dict) -> list[str]:
        """Start a new run here, removing the files of an old one (and only those).

        Returns the removed files (relative names). ``config["files"]`` lists what the new run
        writes.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        removed = []
        if self.exists() or any(self.path.iterdir()):
            mine, foreign = self.owned(self.files())
            inputs = self._inputs(config)
            if [f for f in foreign if f not in inputs]:
                self._refuse_foreign(self.files() + inputs)
            for p in mine:
                if p.name == LOCK:
                    continue
                p.unlink()
                removed.append(p.relative_to(self.path).as_posix())
            for d in sorted({p.parent for p in mine if p.parent != self.path}, reverse=True):
                if d.is_dir() and not any(d.iterdir()):
                    d.rmdir()
        atomic_write_json(self.path / CONFIG, config)
        atomic_write_bytes(self.path / CANDIDATES, b"")
        return sorted(removed)

    def config(self) -> dict:
        cfg = read_json(self.path / CONFIG)
        if not isinstance(cfg, dict) or "identity" not in cfg:
            raise RunDirError(f"{str(self.path / CONFIG)!r} is not a moprune run config")
        return cfg

    # ---- candidates --------------------------------------------------------------------
    def _candidates_bytes(self) -> bytes:
        path = self.path / CANDIDATES
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise RunDirError(f"{str(path)!r} is missing; is this a moprune run directory?"
                              ) from None

    def _recover(self) -> str:
        return (f"recover with `moprune repair {self.path}` (it rebuilds the run's files from "
                "what is intact) or restore the file from a backup")

    def candidates(self) -> list[dict]:
        """All recorded candidates; a finished run's are checked against ``finished.json``.

        Of a run in progress (or interrupted), a torn last line (a kill while appending) is
        left out; ``--resume`` trims it.
        """
        data = self._candidates_bytes()
        path = self.path / CANDIDATES
        if self.finished():
            ledger = Ledger.from_dict(self.finished_record()["candidates"])
            check = verify(data, ledger, f"{str(path)!r} (checked against {FINISHED})",
                           self._recover())
            if check.extra or check.torn:
                more = f"{check.extra} line(s)" if check.extra else "a partial line"
                raise RunDirError(f"{str(path)!r} holds {more} after the {len(check.lines)} the "
                                  f"finished run recorded: it was written to after the run "
                                  f"finished; {self._recover()}")
            return parse_lines(path, check.lines)
        lines, _ = complete_lines(data)
        return parse_lines(path, lines)

    def resume_candidates(self, state: dict, trim: bool = True) -> list[dict]:
        """The candidates a checkpoint recorded; lines written after it are trimmed.

        Raises:
            RunDirError: A recorded line is missing or differs (naming it and the recovery).

        """
        data = self._candidates_bytes()
        path = self.path / CANDIDATES
        stored = state.get("candidates")
        if stored is None:  # a checkpoint from before 0.2: no ledger
            lines, _ = complete_lines(data)
            return parse_lines(path, lines)
        check = verify(data, Ledger.from_dict(stored),
                       f"{str(path)!r} (checked against {CHECKPOINT})", self._recover())
        if trim and (check.extra or check.torn):
            kept = b"".join(line + b"\n" for line in check.lines)
            atomic_write_bytes(path, kept)
            torn = " and a line torn by the interruption" if check.torn else ""
            print(f"note: trimmed {check.extra} candidate line(s){torn} written after the last "
                  "checkpoint; they are evaluated again")
        return parse_lines(path, check.lines)

    def append_candidates(self, records: list[dict]) -> None:
        self.append_jsonl(CANDIDATES, records)

    def read_jsonl(self, name: str) -> list[dict]:
        """Records of a JSON-lines file of the run (missing file: none; a torn end skipped)."""
        path = self.path / name
        if not path.exists():
            return []
        return parse_lines(path, complete_lines(path.read_bytes())[0])

    def append_jsonl(self, name: str, records: list[dict]) -> None:
        append_lines(self.path / name, records)

    def filter_jsonl(self, name: str, keep: Callable[[dict], bool]) -> list[dict]:
        """Rewrite a JSON-lines file keeping only records for which ``keep`` is true."""
        rows = [r for r in self.read_jsonl(name) if keep(r)]
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        atomic_write_bytes(self.path / name, data.encode())
        return rows

    # ---- checkpoint --------------------------------------------------------------------
    def checkpoint_exists(self) -> bool:
        return (self.path / CHECKPOINT).exists()

    def save_checkpoint(self, state: dict) -> None:
        """Write ``state`` with the ledger of the candidate lines written so far (atomic)."""
        ledger = Ledger.of(self._candidates_bytes())
        atomic_write_bytes(self.path / CHECKPOINT, pickle.dumps(
            {"magic": MAGIC, **state, "candidates": ledger.to_dict()}))

    def load_checkpoint(self) -> dict:
        path = self.path / CHECKPOINT
        try:
            with open(path, "rb") as f:
                state = Unpickler(f).load()
        except FileNotFoundError:
            raise RunDirError(f"no checkpoint in {str(self.path)!r}") from None
        except Exception as exc:  # pickle raises many types on garbage
            raise RunDirError(f"checkpoint {str(path)!r} is corrupted or not a moprune "
                              f"checkpoint ({type(exc).__name__}); recover with `moprune repair "
                              f"{self.path}` (it replays the search from the recorded "
                              "candidates) or start over with --force") from exc
        if not isinstance(state, dict) or state.get("magic") != MAGIC:
            raise RunDirError(f"{str(path)!r} is not a moprune checkpoint (foreign file); recover "
                              f"with `moprune repair {self.path}`, start over with --force or "
                              "choose another --out")
        return state

    # ---- results -----------------------------------------------------------------------
    def write_json(self, name: str, obj: object) -> None:
        atomic_write_json(self.path / name, obj)

    def read(self, name: str) -> object:
        return read_json(self.path / name)

    def finish(self) -> None:
        """Record the finished run: the ledger of every candidate line, front and baseline."""
        record: dict[str, object] = {"candidates": Ledger.of(self._candidates_bytes()).to_dict()}
        for name in (FRONT, BASELINE):
            record[name] = file_hash((self.path / name).read_bytes())
        atomic_write_json(self.path / FINISHED, record)

    def finished_record(self) -> dict:
        """What ``finished.json`` recorded (the ledger, the hashes of front and baseline)."""
        record = read_json(self.path / FINISHED)
        if not isinstance(record, dict) or "candidates" not in record:
            raise RunDirError(f"{str(self.path / FINISHED)!r} is malformed; {self._recover()}")
        return record

    def _checked(self, name: str) -> object:
        """A JSON result file, checked against ``finished.json`` when the run finished."""
        path = self.path / name
        if self.finished() and path.exists():
            expected = self.finished_record().get(name)
            if expected is not None and file_hash(path.read_bytes()) != expected:
                raise RunDirError(f"{str(path)!r} differs from what the finished run wrote (it "
                                  f"was edited or damaged); {self._recover()}")
        return self.read(name)

    def front(self) -> list[dict]:
        if not (self.path / FRONT).exists() and (self.path / CONFIG).exists():
            raise RunDirError(f"the run in {str(self.path)!r} has no front yet (it was "
                              "interrupted); finish it with `moprune search ... --resume`")
        front = self._checked(FRONT)
        if not isinstance(front, list):
            raise RunDirError(f"{str(self.path / FRONT)!r} is malformed")
        return front

    def baseline(self) -> dict[str, Any]:
        baseline = self._checked(BASELINE)
        if not isinstance(baseline, dict):
            raise RunDirError(f"{str(self.path / BASELINE)!r} is malformed")
        return baseline

    def record(self, cid: int) -> dict:
        """The candidate with id ``cid`` (front members carry their test accuracy)."""
        for r in self.front() if (self.path / FRONT).exists() else []:
            if r["id"] == cid:
                return r
        for r in self.candidates():
            if r["id"] == cid:
                return r
        raise RunDirError(f"no candidate with id {cid} in {str(self.path)!r}; "
                          f"`moprune pick {self.path} --list` lists front members and their ids")


@contextmanager
def detached_problem(algorithm) -> Iterator[None]:
    """Temporarily remove the (unpicklable, large) problem from a pymoo algorithm."""
    problem = algorithm.problem
    algorithm.problem = None
    try:
        yield
    finally:
        algorithm.problem = problem
