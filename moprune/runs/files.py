"""Files of a run directory: atomic writes, JSON and JSON-lines, with errors that say which file.

Every write is atomic (a temporary file in the same folder, ``fsync``, ``os.replace``), so a
process killed at any point leaves either the old or the new file, never half of one. An
operating-system error (a full disk, a read-only folder) is raised as a :class:`RunWriteError`
naming the file and what was being done.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from moprune.errors import RunDirError


class RunWriteError(RunDirError):
    """A run's file could not be written (full disk, read-only folder, ...)."""


def _os_error(action: str, path: Path, exc: OSError) -> RunWriteError:
    return RunWriteError(f"cannot {action} {str(path)!r}: {exc.strerror or exc}; free some "
                         "space or fix the folder's permissions, then rerun the command (a "
                         "search resumes with --resume)")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (same-folder temporary file + rename)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise _os_error("write", path, exc) from exc
    except BaseException:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: object) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def append_lines(path: Path, records: list[dict]) -> None:
    """Append one JSON line per record and flush it to disk."""
    try:
        with open(path, "a") as f:
            for r in records:
                f.write(json.dumps(r, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise _os_error("append to", Path(path), exc) from exc


def read_json(path: Path) -> object:
    """A JSON file's content; a missing or broken file is a :class:`RunDirError`."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunDirError(f"{str(path)!r} is missing; is this a moprune run directory?") from None
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{str(path)!r} is not valid JSON ({exc}); it is corrupted") from exc


def parse_lines(path: Path, lines: list[bytes]) -> list[dict]:
    """JSON records of complete lines; a line that is no JSON is an error naming it."""
    out = []
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RunDirError(f"{str(path)!r} line {i + 1} is corrupted (not JSON)") from None
    return out


__all__ = ["RunWriteError", "append_lines", "atomic_write_bytes", "atomic_write_json",
           "parse_lines", "read_json"]
