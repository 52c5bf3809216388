"""A worker's claimed group of a stage's points: its trials created, trained together, told.

The stage runner (:meth:`tuner.tune.stages.Session.run_stage`) claims points and hands each
claimed group to a :class:`GroupRunner`, with the stage's :class:`Training` (how a group
trains). The runner creates the group's RUNNING trials, records the points that have an
identical trial in an earlier stage from it (:mod:`tuner.tune.reuse`), trains the rest as one
fused group with heartbeats running and a :class:`TrialReporter` (intermediate values, pruning,
a progress bar, stop checks), then tells each result. When training raises, every trial of the
group is failed, recording why (:func:`tuner.tune.storage.failure_kind`); a lost or full
storage becomes one line naming what was being done.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState
from tqdm import tqdm

from tuner.errors import Terminated
from tuner.progress import progress_line, showing
from tuner.tune import reuse
from tuner.tune.coordination import Coordinator
from tuner.tune.runs import PointResult, Reporter
from tuner.tune.state import point_key
from tuner.tune.storage import (
    environment_failure,
    error_line,
    failure_kind,
    lost_storage,
    storage_failure,
)
from tuner.tune.studies import create_trial

logger = logging.getLogger(__name__)

Point = dict[str, Any]

Evaluate = Callable[[list[Point], list[optuna.Trial], Reporter], list[PointResult]]
"""Trains a group of claimed points: ``(points, trials, reporter) -> results``."""


@dataclass(frozen=True)
class Training:
    """How the claimed groups of a stage's run train: ``evaluate`` trains a group, its points'
    trials are created with ``dists``, a group trains ``epochs`` epochs in all (its progress
    bar's length), the points whose keys are in ``protect`` are never pruned (the incumbent of
    a keep-incumbent stage), and ``find`` says where a point's identical trial of an earlier
    stage is (``None``: no reuse)."""

    evaluate: Evaluate
    dists: dict[str, BaseDistribution]
    epochs: int
    protect: frozenset[str] = frozenset()
    find: reuse.Find | None = None


def check_stop(stop: threading.Event | None) -> None:
    """Raise :class:`Terminated` when the worker was told to stop (``Settings.stop``)."""
    if stop is not None and stop.is_set():
        raise Terminated("SIGTERM")


class GroupRunner:
    """Runs one worker's claimed groups (see the module docstring).

    ``workers``: the worker's coordinator (its storage, claims and heartbeats); ``notify``:
    tells the session's observers (``notify(hook, *args)``); ``storage_url`` names the storage
    in error lines; ``stop``: set when the worker is told to stop.
    """

    def __init__(
        self,
        workers: Coordinator,
        notify: Callable[..., None],
        storage_url: str,
        stop: threading.Event | None,
    ) -> None:
        self.workers, self.notify = workers, notify
        self.storage, self.claims, self.owner = workers.storage, workers.claims, workers.owner
        self.storage_url, self.stop = storage_url, stop

    def run(self, study: optuna.Study, group: list[Point], training: Training) -> None:
        """Create the claimed points' trials, train them together, tell each result.

        A point with an identical trial in an earlier stage (``training.find``) is recorded
        from it, and the group trains without it.
        """
        trials, trial_ids = self.start_trials(study, group, training.dists)
        if training.find is not None:
            group, trials = self.reuse_trials(study, group, trials, training.find)
            if not group:
                return
        labels = [", ".join(f"{k}={v}" for k, v in p.items()) or "final" for p in group]
        numbers = ", ".join(str(t.number) for t in trials)
        logger.info(
            "%s %s (%s): %s",
            study.study_name,
            f"trials {numbers}" if len(trials) > 1 else f"trial {numbers}",
            "; ".join(labels),
            "training together" if len(trials) > 1 else "training",
        )
        desc = f"{study.study_name} {labels[0]}" + (
            f" +{len(group) - 1} more" if len(group) > 1 else ""
        )
        bar = tqdm(total=training.epochs, desc=desc, unit="epoch", leave=False, disable=None)
        protected = [point_key(p) in training.protect for p in group]
        reporter = TrialReporter(
            trials, bar, protected, lambda: check_stop(self.stop), desc, training.epochs
        )
        ids = [trial_ids[t.number] for t in trials]
        try:
            with (
                self.workers.heartbeat([study.study_name], ids),
                bar,
                showing(bar, reporter.line, logger),
            ):
                results = training.evaluate(group, trials, reporter)
        except BaseException as err:
            self.fail(study, trials, err, f"training {study.study_name} trial(s) {numbers}")
            raise
        with self.storage_errors(f"telling {study.study_name} trial(s) {numbers}"):
            for point, trial, label, result in zip(group, trials, labels, results, strict=True):
                self.tell(study, point, trial, label, result)

    def start_trials(
        self, study: optuna.Study, group: list[Point], dists: dict[str, BaseDistribution]
    ) -> tuple[list[optuna.Trial], dict[int, int]]:
        """The RUNNING trials of the claimed points, and trial number -> storage id (for
        heartbeats and claims)."""
        trials: list[optuna.Trial] = []
        trial_ids: dict[int, int] = {}
        with self.storage_errors(f"starting {study.study_name} trials"):
            for point in group:
                trial, trial_id = create_trial(self.storage, study, point, dists, self.owner)
                # a first heartbeat at once: a worker dying here leaves a trial Optuna can fail
                self.storage.record_heartbeat(trial_id)
                self.claims.set_trial(study.study_name, point_key(point), self.owner, trial_id)
                trials.append(trial)
                trial_ids[trial.number] = trial_id
        return trials, trial_ids

    def fail(
        self, study: optuna.Study, trials: list[optuna.Trial], err: BaseException, doing: str
    ) -> None:
        """Fail a group's trials after its training raised ``err`` (each records why: see
        :func:`~tuner.tune.storage.failure_kind`); raise the one-line error for a lost storage,
        a full disk or a corrupt storage, else return (the caller re-raises ``err``)."""
        lost = lost_storage(err, self.storage_url, doing)
        if lost is not None:  # nothing more to write (see storage_errors)
            raise lost from None
        kind = failure_kind(err)  # only "error" counts towards MAX_FAILURES
        for trial in trials:
            try:
                trial.set_user_attr(kind, f"{type(err).__name__}: {err}")
            except Exception:  # noqa: BLE001 - a full disk: failing the trial matters more
                pass
            try:
                study.tell(trial, state=TrialState.FAIL)
            except Exception as tell_err:  # the storage itself may be what failed
                logger.warning(
                    "could not mark trial %d as failed: %s", trial.number, error_line(tell_err)
                )
        failure = environment_failure(err, self.storage_url, doing)
        if failure is not None:  # a full disk, a corrupt storage: one line
            raise failure from None

    def tell(
        self,
        study: optuna.Study,
        point: Point,
        trial: optuna.Trial,
        label: str,
        result: PointResult,
    ) -> None:
        """Record a trained point's attrs, tell the observers, then tell Optuna its value (or
        that it was pruned)."""
        for name, value in result.attrs.items():
            trial.set_user_attr(name, value)
        self.notify("trial_done", study, trial, point, result.attrs)
        if result.pruned:
            study.tell(trial, state=TrialState.PRUNED)
            logger.info("%s trial %d (%s): pruned", study.study_name, trial.number, label)
            return
        study.tell(trial, result.value)
        logger.info("%s trial %d (%s): %.4f", study.study_name, trial.number, label, result.value)

    def reuse_trials(
        self,
        study: optuna.Study,
        group: list[Point],
        trials: list[optuna.Trial],
        find: reuse.Find,
    ) -> tuple[list[Point], list[optuna.Trial]]:
        """Record each claimed point that has an identical trial in an earlier stage from that
        trial (no training); return the points (and trials) left to train."""
        left: list[tuple[Point, optuna.Trial]] = []
        with self.storage_errors(f"reusing trials for {study.study_name}"):
            for point, trial in zip(group, trials, strict=True):
                source = find(point)
                if source is None:
                    left.append((point, trial))
                    continue
                try:
                    value = reuse.copy_into(trial, *source)
                    self.notify("trial_done", study, trial, point, source[1].user_attrs)
                    study.tell(trial, value)
                except BaseException:
                    for t in trials:  # none stays RUNNING: the next worker retries them
                        try:
                            study.tell(t, state=TrialState.FAIL)
                        except Exception:  # noqa: BLE001 - already told, or the storage is gone
                            pass
                    raise
                logger.info(
                    "%s trial %d (%s): %.4f, reused from %s (identical training)",
                    study.study_name,
                    trial.number,
                    ", ".join(f"{k}={v}" for k, v in point.items()),
                    value,
                    reuse.origin(*source),
                )
        return [p for p, _ in left], [t for _, t in left]

    @contextmanager
    def storage_errors(self, doing: str) -> Iterator[None]:
        """Turn a lost database connection into the one-line error that names what was being
        done; the trials' heartbeats stop, so the next worker (or run) fails and retries them."""
        try:
            yield
        except Exception as err:
            lost = storage_failure(err, self.storage_url, doing)
            if lost is not None:  # a full disk too: the worker fails its trials on the way out
                raise lost from None
            raise


class TrialReporter:
    """A group's :class:`~tuner.tune.runs.Reporter`: intermediate values go to the points'
    trials, pruning is the study's pruner, progress a tqdm bar (or, without a terminal, the
    :meth:`line` :func:`~tuner.progress.showing` logs); every epoch it checks whether the worker
    was told to stop (``check_stop``)."""

    def __init__(
        self,
        trials: list[optuna.Trial],
        bar: tqdm,
        protected: list[bool],
        check_stop: Callable[[], None],
        what: str = "",
        epochs: int = 0,
    ) -> None:
        self.trials, self.bar, self.protected = trials, bar, protected
        self.check_stop = check_stop
        self.what, self.epochs = what, epochs  # for the progress lines without a terminal
        self.last: dict[int, float] = {}
        self.epoch = 0  # epochs done
        self.start = time.monotonic()

    def report(self, point: int, value: float, step: int) -> None:
        self.trials[point].report(value, step)
        self.last[point] = value
        self.bar.set_postfix(best=f"{max(self.last.values()):.4f}", refresh=False)

    def should_prune(self, point: int) -> bool:
        return not self.protected[point] and self.trials[point].should_prune()

    def progress(self, epoch: int) -> None:
        self.epoch = epoch
        self.bar.update(1)
        self.check_stop()

    def line(self) -> str:
        """Where the group is: epochs done, elapsed, time left at this pace."""
        return progress_line(self.what, self.epoch, self.epochs, time.monotonic() - self.start)
