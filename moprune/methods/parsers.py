"""Parsers of command-line values; each refuses bad input with what it expected."""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind: type, expected: str) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def positive(text: str) -> int:
    """An integer >= 1."""
    value = int(_number(text, int, "a positive integer"))
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def nonneg(text: str) -> int:
    """An integer >= 0."""
    value = int(_number(text, int, "an integer >= 0"))
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    value = float(_number(text, float, "a fraction in [0, 1]"))
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text}")
    return value


def real(text: str) -> float:
    """Any number (range checks belong to the option's validation)."""
    return float(_number(text, float, "a number"))


def seed(text: str) -> int:
    """A seed: an integer in [0, 2**32)."""
    value = int(_number(text, int, "an integer seed"))
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected a seed in [0, 2**32), got {text}")
    return value


def weights(text: str) -> tuple[float, ...]:
    """Comma-separated non-negative numbers, not all zero (knee weights)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 2,1; got {text!r}") from None
    if any(v < 0 or not math.isfinite(v) for v in values) or not any(v > 0 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected non-negative weights, not all zero, e.g. 2,1; got {text!r}")
    return values


def names(text: str) -> tuple[str, ...]:
    """Comma-separated names."""
    out = tuple(v.strip() for v in text.split(",") if v.strip())
    if not out:
        raise argparse.ArgumentTypeError(f"expected comma-separated names; got {text!r}")
    return out


__all__ = ["fraction", "names", "nonneg", "positive", "real", "seed", "weights"]
