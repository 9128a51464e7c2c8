"""Search methods as plugins: the registry ``moprune search --algorithm`` reads.

Every module of this package that defines ``METHOD`` (a :class:`~moprune.methods.base.Method`)
is a built-in method, found by listing the package: adding a method is adding one file. A
problem file can register more with ``METHODS.register(name, method)``. A name that is no
method but a registered pymoo algorithm (:data:`moprune.algorithms.ALGORITHMS`) runs through
:class:`~moprune.methods.pymoo.PymooMethod`.
"""

from __future__ import annotations

import importlib
import pkgutil

from moprune.algorithms import ALGORITHMS
from moprune.core.registry import Registry
from moprune.errors import UnknownNameError
from moprune.methods.base import Method
from moprune.methods.pymoo import PymooMethod

METHODS: Registry[Method] = Registry("method")


def _discover() -> None:
    """Register the ``METHOD`` of every module of this package (once, in name order)."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        method = getattr(module, "METHOD", None)
        if isinstance(method, Method) and method.name not in METHODS:
            METHODS.register(method.name, method)


def resolve_method(name: str) -> Method:
    """The method named ``name``: a registered method, or a registered pymoo algorithm.

    Raises:
        UnknownNameError: Neither; the message lists both kinds of names.

    """
    if name in METHODS:
        return METHODS.get(name)
    if name in ALGORITHMS:
        return PymooMethod(name)
    raise UnknownNameError(
        f"unknown algorithm {name!r}; methods: {', '.join(METHODS.names())}; pymoo algorithms: "
        f"{', '.join(n for n in ALGORITHMS.names() if n not in METHODS)} (a problem file can "
        "register more with moprune.algorithms.ALGORITHMS.register or "
        "moprune.methods.METHODS.register)")


def all_methods() -> list[Method]:
    """Every registered method, NSGA-II first (the command line's option groups)."""
    names = sorted(METHODS.names(), key=lambda n: (n != "nsga2", n))
    return [METHODS.get(n) for n in names]


_discover()

__all__ = ["METHODS", "Method", "all_methods", "resolve_method"]
