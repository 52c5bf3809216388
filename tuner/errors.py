"""Errors that reach the user as one line and exit code 2.

Anything raised as a :class:`TunerError` is a problem with the user's input or environment
(a bad data file, an unknown stage, a missing predecessor, an unreachable storage). The CLI
prints its message without a traceback and exits with status 2. Any other exception is a bug
and keeps its traceback.
"""

from __future__ import annotations


class TunerError(Exception):
    """A user-facing error: the CLI prints ``str(err)`` and exits with status 2."""


class DataError(TunerError):
    """The data source is missing, unreadable or not in the UCI YearPredictionMSD format."""


class PlanError(TunerError):
    """A plan file is missing or invalid."""


class StageError(TunerError):
    """A stage cannot run as asked (unknown stage, missing predecessor, bad --fix)."""


class StorageError(TunerError):
    """The study storage URL is malformed or the database cannot be reached."""


class StorageLost(StorageError):
    """The connection to the storage broke during a run: nothing more can be written there."""


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM (``docker compose stop``, a service manager): it stops like on
    Ctrl-C (its running trials are failed, its claims released) and exits with status 143."""
