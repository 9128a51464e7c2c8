"""The errors moprune raises for things a user can fix; everything else is a bug.

Every user-facing error derives from :class:`MopruneError`: the command line prints those as
``moprune COMMAND: error: MESSAGE`` (exit status 2) and shows the traceback of anything else,
since an error that is not a ``MopruneError`` means moprune itself went wrong. The concrete
kinds keep a standard base too (``ValueError``, ``KeyError``, ``TypeError``, ...), so code
that caught those before keeps working.
"""

from __future__ import annotations


class MopruneError(Exception):
    """Base of every error a user can act on; the message says what to change."""


class ConfigError(MopruneError, ValueError):
    """An option, setting or argument is invalid (the message names it and the valid range)."""


class UnknownNameError(MopruneError, KeyError):
    """A registry lookup failed; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class UnsupportedLayerError(MopruneError, TypeError):
    """The model contains a layer that moprune cannot cost, slice or mask exactly."""


class DataError(ConfigError):
    """A data set is missing or malformed, or a data option is out of range."""


class GenomeError(ConfigError):
    """A genome does not fit its encoding."""


class ProblemFileError(ConfigError):
    """A problem file is missing, broken, or lacks the expected entry point."""


class RunDirError(ConfigError):
    """A run directory cannot be used as asked (exists, foreign, corrupted, unfinished)."""


class DeviceError(ConfigError):
    """The requested device does not exist here."""


class NonFiniteError(MopruneError, ValueError):
    """A network produced NaN or infinite values (evaluation or training)."""


class NoPickError(ConfigError):
    """No candidate satisfies a pick rule; the message says what the best available was."""


class SchedulerLostError(MopruneError, RuntimeError):
    """The Dask scheduler went away during a distributed evaluation."""


class ClusterError(MopruneError, RuntimeError):
    """The cluster cannot do the work (workers cannot build the scorer, or keep dying)."""


class DistributedUnavailableError(MopruneError, ImportError):
    """Dask's ``distributed`` package is not installed."""


__all__ = [
    "ClusterError", "ConfigError", "DataError", "DeviceError", "DistributedUnavailableError",
    "GenomeError",
    "MopruneError", "NoPickError", "NonFiniteError", "ProblemFileError", "RunDirError",
    "SchedulerLostError", "UnknownNameError", "UnsupportedLayerError",
]
