"""Run directories: config, every evaluated candidate, checkpoints, the front; resumable.

Layout of a run directory::

    config.json        how the run was made (problem file + sha256, options, seed, versions,
                       git hash); a resumed run must match it
    baseline.json      the unpruned network (val/test accuracy, MACs, params)
    candidates.jsonl   one line per evaluated genome, in evaluation order
    checkpoint.pkl     the pymoo algorithm after the last finished generation (atomic)
    progress.json      generations done, hypervolume per generation
    front.json         final non-dominated members with test accuracy
    events.jsonl       only when something happened besides the results: Dask workers that
                       left or joined during an evaluation (their tasks ran elsewhere)
    plots/             front.{png,svg}, hypervolume.{png,svg}

A method adds files of its own (``Method.extra_files``): CCEP ``rounds/round_NNN.pt`` and
``coevolution.jsonl``, DeepPruningES ``elites.jsonl``, EvoFC ``supernet.pt``; see
docs/run-directory.md.

Every file is written atomically (temporary file + ``os.replace``), so a run killed at any
point (``kill -9`` included) leaves the last checkpoint and the candidates up to it intact.
"""

from __future__ import annotations

from moprune.version import __version__
from moprune.errors import RunDirError  # noqa: F401 (re-exported)

import importlib
import json
import os
import pickle
import platform
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG = "config.json"
CANDIDATES = "candidates.jsonl"
CHECKPOINT = "checkpoint.pkl"
FRONT = "front.json"
BASELINE = "baseline.json"
PROGRESS = "progress.json"
# identity keys added later, with the value that runs made before them implicitly had
LEGACY_IDENTITY = {"precision": "fp32"}
EVENTS = "events.jsonl"  # what happened to a run besides its results (e.g. Dask workers lost)
MAGIC = "moprune-checkpoint-v1"
RUN_FILES = (CONFIG, CANDIDATES, CHECKPOINT, FRONT, BASELINE, PROGRESS, EVENTS)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (same-folder temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> object:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunDirError(f"{str(path)!r} is missing; is this a moprune run directory?") from None
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{str(path)!r} is not valid JSON ({exc}); it is corrupted") from exc


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

    def check(self, config: dict, resume: bool, force: bool) -> bool:
        """Check that a search may write here; writes nothing. Returns True to resume.

        Resuming needs a checkpoint and a stored config whose ``identity`` matches.

        Raises:
            RunDirError: The folder holds a different run (and neither ``resume`` with a
                matching config nor ``force`` was given), or is not a run at all.

        """
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{str(self.path)!r} exists and is not a directory")
        if self.exists():
            if force and not resume:
                return False
            if resume:
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
                        "over (this deletes the old results), or another --out."
                    )
                if self.checkpoint_exists():
                    self.load_checkpoint()  # fail now, not after loading data, if corrupted
                    return True
                return False
            raise RunDirError(
                f"{str(self.path)!r} already holds a run; pass --resume to continue it, "
                "--force to overwrite it, or choose another --out."
            )
        if self.path.exists() and any(self.path.iterdir()) and not force:
            raise RunDirError(f"{str(self.path)!r} is not empty and holds no moprune run; "
                              "choose an empty or new folder (or --force)")
        return False

    def create(self, config: dict, extra_files: tuple[str, ...] = ()) -> None:
        """Start a new run here (removing the files of an old one).

        ``extra_files``: the files (or folders of ``.pt`` files) the method writes besides the
        common ones, removed with them.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        self._clear(extra_files)
        atomic_write_json(self.path / CONFIG, config)
        atomic_write_bytes(self.path / CANDIDATES, b"")

    def _clear(self, extra_files: tuple[str, ...]) -> None:
        for name in (*RUN_FILES, *extra_files):
            path = self.path / name
            if path.is_dir():
                for p in path.iterdir():
                    if p.suffix == ".pt":
                        p.unlink()
            else:
                path.unlink(missing_ok=True)
        plots = self.path / "plots"
        if plots.is_dir():
            for p in plots.iterdir():
                if p.suffix in (".png", ".svg"):
                    p.unlink()

    def config(self) -> dict:
        cfg = read_json(self.path / CONFIG)
        if not isinstance(cfg, dict) or "identity" not in cfg:
            raise RunDirError(f"{str(self.path / CONFIG)!r} is not a moprune run config")
        return cfg

    # ---- candidates --------------------------------------------------------------------
    def candidates(self) -> list[dict]:
        """All recorded candidates (a torn last line from a kill is ignored)."""
        path = self.path / CANDIDATES
        if not path.exists():
            raise RunDirError(f"{str(path)!r} is missing; is this a moprune run directory?")
        return self._jsonl(path)

    @staticmethod
    def _jsonl(path: Path) -> list[dict]:
        out = []
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    break  # torn write of the last line
                raise RunDirError(f"{str(path)!r} line {i + 1} is corrupted") from None
        return out

    def append_candidates(self, records: list[dict]) -> None:
        self.append_jsonl(CANDIDATES, records)

    def read_jsonl(self, name: str) -> list[dict]:
        """Records of a JSON-lines file of the run (missing file: none)."""
        path = self.path / name
        return self._jsonl(path) if path.exists() else []

    def append_jsonl(self, name: str, records: list[dict]) -> None:
        with open(self.path / name, "a") as f:
            for r in records:
                f.write(json.dumps(r, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def filter_jsonl(self, name: str, keep: Callable[[dict], bool]) -> list[dict]:
        """Rewrite a JSON-lines file keeping only records for which ``keep`` is true."""
        rows = [r for r in self.read_jsonl(name) if keep(r)]
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        atomic_write_bytes(self.path / name, data.encode())
        return rows

    def truncate_candidates(self, n_generations: int) -> list[dict]:
        """Keep only candidates of generations ``<= n_generations`` (before resuming)."""
        self.candidates()  # a missing file is an error here
        return self.filter_jsonl(CANDIDATES, lambda r: r["generation"] <= n_generations)

    # ---- checkpoint --------------------------------------------------------------------
    def checkpoint_exists(self) -> bool:
        return (self.path / CHECKPOINT).exists()

    def save_checkpoint(self, state: dict) -> None:
        atomic_write_bytes(self.path / CHECKPOINT, pickle.dumps({"magic": MAGIC, **state}))

    def load_checkpoint(self) -> dict:
        path = self.path / CHECKPOINT
        try:
            with open(path, "rb") as f:
                state = _Unpickler(f).load()
        except FileNotFoundError:
            raise RunDirError(f"no checkpoint in {str(self.path)!r}") from None
        except Exception as exc:  # pickle raises many types on garbage
            raise RunDirError(f"checkpoint {str(path)!r} is corrupted or not a moprune "
                              f"checkpoint ({type(exc).__name__}); start over with --force"
                              ) from exc
        if not isinstance(state, dict) or state.get("magic") != MAGIC:
            raise RunDirError(f"{str(path)!r} is not a moprune checkpoint (foreign file); start "
                              "over with --force or choose another --out")
        return state

    # ---- results -----------------------------------------------------------------------
    def write_json(self, name: str, obj: object) -> None:
        atomic_write_json(self.path / name, obj)

    def read(self, name: str) -> object:
        return read_json(self.path / name)

    def front(self) -> list[dict]:
        if not (self.path / FRONT).exists() and (self.path / CONFIG).exists():
            raise RunDirError(f"the run in {str(self.path)!r} has no front yet (it was "
                              "interrupted); finish it with `moprune search ... --resume`")
        front = self.read(FRONT)
        if not isinstance(front, list):
            raise RunDirError(f"{str(self.path / FRONT)!r} is malformed")
        return front

    def baseline(self) -> dict[str, Any]:
        baseline = self.read(BASELINE)
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


# Modules whose classes moved when the package was layered (0.1 -> 0.2): checkpoints written
# before keep resuming. Each old module maps to the modules its names may now live in.
MOVED_MODULES = {
    "moprune.algorithms": ("moprune.algorithms.presets", "moprune.problems.mask"),
    "moprune.deeppruninges": ("moprune.algorithms.deeppruninges",),
    "moprune.coevolution": ("moprune.algorithms.coevolution",),
    "moprune.evofc": ("moprune.algorithms.evofc", "moprune.problems.criterion_ratio"),
    "moprune.problems": ("moprune.problems.mask", "moprune.problems.ratio",
                         "moprune.problems.base"),
    "moprune.gp.operators": ("moprune.algorithms.gp",),
    "moprune.gp.search": ("moprune.problems.function",),
    "moprune.gp.primitives": ("moprune.criteria.gp.primitives",),
    "moprune.training": ("moprune.training.finetune",),
}


class _Unpickler(pickle.Unpickler):
    """Unpickles checkpoints, also those naming classes at their pre-0.2 module paths."""

    def find_class(self, module: str, name: str) -> Any:
        for candidate in MOVED_MODULES.get(module, ()):
            mod = importlib.import_module(candidate)
            if hasattr(mod, name):
                return getattr(mod, name)
        return super().find_class(module, name)


@contextmanager
def detached_problem(algorithm) -> Iterator[None]:
    """Temporarily remove the (unpicklable, large) problem from a pymoo algorithm."""
    problem = algorithm.problem
    algorithm.problem = None
    try:
        yield
    finally:
        algorithm.problem = problem
