"""Observers of a running plan: what happens beside training, subscribed, not called by name.

A :class:`StageObserver` is told when a stage's study starts, when a trial is done (before it
is told to Optuna: a finished trial's attrs are frozen), when a stage's kind has recorded
results of its own (an LR range test's curve), when a stage is done and when the final job
has written its metrics -- the way Optuna's ``callbacks`` watch ``study.optimize``. The dashboard's notes and plot artifacts
(:class:`tuner.report.notes.DashboardNotes`) are one observer; the command line subscribes it.
Tuning code never imports what observes it.

Observers are best effort: one that raises is logged and the run goes on (a plot that cannot be
drawn must never fail a trial or a stage).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna

from tuner.tune.storage import failure_line

logger = logging.getLogger(__name__)


Session = Any
"""The :class:`tuner.tune.stages.Session` that calls the hook (not imported here: the session
depends on its observers' interface, never the other way round)."""


class StageObserver:
    """Base class: every hook does nothing; subclasses override the ones they need."""

    def stage_started(self, session: Session, study: optuna.Study, stage: str) -> None:
        """A stage's study is open and about to train (its points may be partly done)."""

    def stage_attrs(self, session: Session, study: optuna.Study, stage: str) -> None:
        """The stage's kind recorded results of its own in the study's user attrs (an LR range
        test's curve): what it draws of them is :meth:`StageKind.figures`."""

    def trial_done(
        self,
        session: Session,
        study: optuna.Study,
        trial: optuna.Trial,
        point: Mapping[str, Any],
        attrs: Mapping[str, Any],
    ) -> None:
        """``trial`` (grid point ``point``) has its results ``attrs``; it is told next."""

    def stage_done(self, session: Session, study: optuna.Study, stage: str) -> None:
        """Every point of the stage is complete."""

    def final_done(self, session: Session, study: optuna.Study, metrics_path: Path) -> None:
        """The final job ran (``metrics_path`` exists when this worker wrote it)."""


def warn_failed(log: logging.Logger, what: str, err: Exception) -> None:
    """Warn that observer work ``what`` failed and the run goes on: in one line for a full disk
    or a lost storage (the command's own one-line error follows it), with the traceback for
    anything else (a bug)."""
    failure = failure_line(err, None)
    log.warning(
        "%s failed%s; the run goes on without it",
        what,
        f" ({failure})" if failure else "",
        exc_info=failure is None,
    )


class Observers:
    """The observers of one session, called in order; a failing one is logged, not raised."""

    def __init__(self, observers: Sequence[StageObserver] = ()) -> None:
        self.observers = list(observers)

    def notify(self, hook: str, *args: Any) -> None:
        for observer in self.observers:
            try:
                getattr(observer, hook)(*args)
            except Exception as err:  # noqa: BLE001 - an observer never fails the run
                warn_failed(logger, f"{type(observer).__name__}.{hook}", err)
