"""What a run recorded of its candidate lines, and the check of a file against it.

Every checkpoint holds a :class:`Ledger` of ``candidates.jsonl``: how many lines belonged to
the run then, and a short hash of each. A finished run writes one into ``finished.json``.
:func:`verify` tells apart the three states a file can be in: intact (the recorded lines and
perhaps more after them: candidates of a generation the checkpoint did not reach, or a line
torn by a kill, which a resume trims), short (lines missing: truncated) and damaged (a
recorded line differs), naming the first bad line.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from moprune.errors import RunDirError


def line_hash(line: bytes) -> str:
    """Short hash of one line (without its newline)."""
    return hashlib.sha256(line).hexdigest()[:16]


def file_hash(data: bytes) -> str:
    """Hash of a whole file's bytes."""
    return hashlib.sha256(data).hexdigest()


def complete_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """The newline-terminated lines of ``data`` and what follows the last newline (a torn line)."""
    parts = data.split(b"\n")
    return parts[:-1], parts[-1]


@dataclass(frozen=True)
class Ledger:
    """The candidate lines a run recorded: their count and a hash of each."""

    hashes: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, data: bytes) -> Ledger:
        """The ledger of a file's complete lines."""
        return cls(tuple(line_hash(line) for line in complete_lines(data)[0]))

    @property
    def lines(self) -> int:
        return len(self.hashes)

    def to_dict(self) -> dict:
        return {"lines": self.lines, "hashes": list(self.hashes)}

    @classmethod
    def from_dict(cls, stored: dict) -> Ledger:
        return cls(tuple(stored["hashes"]))


@dataclass(frozen=True)
class Check:
    """The result of :func:`verify`: the recorded lines, and what came after them."""

    lines: list[bytes]
    extra: int  # complete lines after the recorded ones
    torn: bool  # a partial line at the end


def verify(data: bytes, ledger: Ledger, what: str, recover: str) -> Check:
    """Check ``data`` against ``ledger``; raises naming the file, line and recovery.

    Args:
        data: The file's bytes.
        ledger: What the run recorded.
        what: The file and the record it is checked against, for messages.
        recover: How to recover, for messages.

    """
    lines, tail = complete_lines(data)
    for i, (line, expected) in enumerate(zip(lines, ledger.hashes)):
        if line_hash(line) != expected:
            raise RunDirError(f"{what}: line {i + 1} is corrupted: it differs from what the run "
                              f"recorded (the file was edited or damaged); {recover}")
    if len(lines) < ledger.lines:
        torn = " (and a torn line)" if tail else ""
        raise RunDirError(f"{what}: the run recorded {ledger.lines} lines but the file holds "
                          f"{len(lines)}{torn}: it was truncated; {recover}")
    return Check(lines[:ledger.lines], len(lines) - ledger.lines, bool(tail))


__all__ = ["Check", "Ledger", "complete_lines", "file_hash", "line_hash", "verify"]
