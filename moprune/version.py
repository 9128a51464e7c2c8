"""The version of moprune (one place; the package and pyproject read it)."""

__version__ = "0.2.0"
