"""Strict name registries: a duplicate raises, a failed lookup lists the valid names."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from moprune.errors import ConfigError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to objects (factories, criteria, presets) that refuses surprises.

    Args:
        kind: What the registry holds, used in error messages ("model", "criterion").

    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T) -> T:
        """Register ``obj`` under ``name``; raises ``ConfigError`` if the name is taken."""
        if name in self._items:
            raise ConfigError(f"{self.kind} {name!r} is already registered; choose another name.")
        self._items[name] = obj
        return obj

    def decorator(self, name: str) -> Callable[[T], T]:
        """Return a decorator that registers the decorated object under ``name``."""

        def wrap(obj: T) -> T:
            return self.register(name, obj)

        return wrap

    def get(self, name: str) -> T:
        """Look up ``name``; raises ``UnknownNameError`` listing the valid names."""
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(sorted(self._items)) or "(none registered)"
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid {self.kind} names: {valid}"
            ) from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


__all__ = ["Registry", "UnknownNameError"]
