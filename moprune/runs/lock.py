"""One writer per run directory: an operating-system lock held for the life of the writer.

:class:`RunLock` takes an exclusive ``flock`` on ``RUN/.lock``. The kernel releases it when
the process ends, however it ends (``kill -9`` included), so a lock is never stale. The lock
file holds the writer's pid, command and start time, for the message the next writer gets.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from types import TracebackType

from moprune.errors import RunDirError

LOCK = ".lock"


def holder(folder: Path) -> dict | None:
    """Who holds ``folder``'s lock (pid, command, since), or None when nobody writes it."""
    path = Path(folder) / LOCK
    if not path.is_file():
        return None
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            try:
                return json.loads(f.read() or "{}")
            except json.JSONDecodeError:
                return {}
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return None


def describe(info: dict) -> str:
    """``pid 123, `moprune search`, since 2026-12-03 18:00:01`` (what is known of it)."""
    parts = [f"pid {info['pid']}" if "pid" in info else "another process"]
    if info.get("command"):
        parts.append(f"`{info['command']}`")
    if info.get("since"):
        parts.append(f"since {info['since']}")
    return ", ".join(parts)


class RunLock:
    """An exclusive lock on a run directory (a context manager).

    Args:
        folder: The run directory (created if missing; removed again on a refusal if it was
            created here and holds nothing else).
        command: What writes, for the message another writer gets.

    Raises:
        RunDirError: Another process holds the lock; the message names it.

    """

    def __init__(self, folder: Path, command: str) -> None:
        self.folder = Path(folder)
        self.command = command
        self._fd: int | None = None
        self._created = False

    def __enter__(self) -> RunLock:
        if self.folder.exists() and not self.folder.is_dir():
            raise RunDirError(f"{str(self.folder)!r} exists and is not a directory")
        if not self.folder.exists():
            self.folder.mkdir(parents=True)
            self._created = True
        fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            info = holder(self.folder) or {}
            raise RunDirError(
                f"{str(self.folder)!r} is being written by {describe(info)}; one run directory "
                "has one writer (two would mix their candidates). Wait for it to finish, stop "
                "it, or choose another --out.") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "command": self.command,
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self._fd = fd
        return self

    def release(self, failed: bool = False) -> None:
        """Unlock; after a failure, remove a folder this lock created if nothing else is in it."""
        if self._fd is None:
            return
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
        if failed and self._created:
            rest = [p for p in self.folder.iterdir() if p.name != LOCK]
            if not rest:
                (self.folder / LOCK).unlink(missing_ok=True)
                self.folder.rmdir()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release(failed=exc is not None)


def check_not_written(folder: Path, what: str) -> None:
    """Refuse to read a run that a process is still writing (its files are in flux)."""
    info = holder(folder)
    if info is not None:
        raise RunDirError(f"{str(folder)!r} is still being written by {describe(info)}; {what} "
                          "it once that search has finished")


__all__ = ["LOCK", "RunLock", "check_not_written", "describe", "holder"]
