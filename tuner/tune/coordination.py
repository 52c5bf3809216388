"""Coordination: how workers share a plan through the storage alone.

A :class:`Coordinator` is one worker's side of it: its presence (how many workers share the
plan's stages, hence how many points each claims at once), its claims on grid points with
their heartbeats, and :meth:`Coordinator.once` -- claim, else wait and log once -- for a thing
exactly one worker does while the others wait (an LR range test, a TPE round). Claims live in
``tuner_claims`` (:mod:`tuner.tune.claims`); a worker that dies stops beating, its claims go
stale and the next worker takes its points over (failing the trial it left running). A worker
that is stopped (an error, Ctrl-C, SIGTERM) cleans up after itself on the way out
(:meth:`Coordinator.abandon`): its RUNNING trials failed, its claims released.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import StageError, StorageLost, Terminated
from tuner.progress import periodically
from tuner.tune.claims import Claim, ClaimTable
from tuner.tune.state import SETTLED, point_key
from tuner.tune.storage import connection_failure, corrupt_database, error_line

logger = logging.getLogger(__name__)

MAX_FAILURES = 3  # a point whose training raised this often stops the stage


class Coordinator:
    """One worker's presence, claims and heartbeats on a plan (see the module docstring)."""

    def __init__(
        self,
        plan_name: str,
        storage: optuna.storages.BaseStorage,
        claims: ClaimTable,
        owner: str,
        settings: Any,
    ) -> None:
        self.plan_name, self.storage, self.claims, self.owner = plan_name, storage, claims, owner
        self.settings = settings  # heartbeat_interval, poll_interval, group_size
        self._presence: ExitStack | None = None  # the presence heartbeat, while announced

    def announce(self) -> None:
        """Count this session as a worker of the plan until :meth:`withdraw` (or its death):
        a presence row in ``tuner_claims``, refreshed every heartbeat interval. With
        ``group_size`` 0 each worker claims its share of a stage's points (:meth:`share`)."""
        if self._presence is not None:
            return
        self.claims.announce(self.plan_name, self.owner)

        def beat() -> None:
            try:
                self.claims.refresh_presence(self.plan_name, self.owner)
            except Exception as err:  # noqa: BLE001 - an outage shows up in the main thread
                logger.warning("presence heartbeat failed: %s", error_line(err))

        self._presence = ExitStack()
        self._presence.enter_context(
            periodically(
                self.settings.heartbeat_interval,
                beat,
                "tuner-presence",
                join_timeout=self.settings.heartbeat_interval + 5,
            )
        )

    def withdraw(self) -> None:
        """Stop counting as a worker (best effort: a dead worker's row goes stale anyway)."""
        if self._presence is None:
            return
        presence, self._presence = self._presence, None
        presence.close()
        try:
            self.claims.withdraw(self.plan_name, self.owner)
        except Exception as err:  # noqa: BLE001 - the storage may be what failed
            logger.debug("could not withdraw presence: %s", error_line(err))

    def share(self, pending: int) -> int:
        """How many of a stage's ``pending`` points this worker claims at once: ``group_size``
        when set, else its share among the plan's live workers, ceil(pending / workers) (all
        of them for a single worker, which trains the stage as one fused group)."""
        if self.settings.group_size:
            return self.settings.group_size
        if self._presence is None:
            return pending
        try:
            workers = len(set(self.claims.live_workers(self.plan_name)) | {self.owner})
        except Exception as err:  # noqa: BLE001 - the claims below report a lost storage
            logger.debug("could not count live workers: %s", error_line(err))
            workers = 1
        return max(1, -(-pending // workers))

    def once(
        self,
        study_name: str,
        key: str,
        what: str,
        done: Callable[[], bool],
        do: Callable[[], None],
        *,
        release: bool = False,
        poll: float | None = None,
    ) -> None:
        """Claim, else wait and log once: until ``done()``, the one worker that holds claim
        ``key`` on the study runs ``do`` (with its claim's heartbeat running) while the others
        poll (every ``poll`` seconds; the poll interval by default) and log ``waiting for
        another worker: {what}`` once. A holder that dies leaves a stale claim the next worker
        takes over; with ``release`` the holder drops the claim when ``do`` returns or raises.
        Used for creating a study, the LR range test and TPE rounds; grid points are claimed
        many at once (:meth:`claim_points`)."""
        waiting = False
        while not done():
            got, _ = self.claims.try_claim(
                study_name, key, self.owner, is_free=self.claims.is_stale
            )
            if got:
                try:
                    if not done():  # else: done by a worker that finished between read and claim
                        with self.heartbeat([study_name], []):
                            do()
                finally:
                    if release:
                        self.claims.release(study_name, key, self.owner)
                continue
            if not waiting:
                logger.info("waiting for another worker: %s", what)
                waiting = True
            time.sleep(self.settings.poll_interval if poll is None else poll)

    @contextmanager
    def heartbeat(self, studies: list[str], trial_ids: list[int]) -> Iterator[None]:
        """Keep this worker's claims (and Optuna trial heartbeats) fresh while training."""

        def beat() -> None:
            try:
                for trial_id in trial_ids:
                    self.storage.record_heartbeat(trial_id)
                self.claims.refresh(self.owner, studies)
            except Exception as err:  # keep beating; an outage shows up in the main thread
                logger.warning("heartbeat failed: %s", error_line(err))

        for trial_id in trial_ids:
            self.storage.record_heartbeat(trial_id)
        interval = self.settings.heartbeat_interval
        with periodically(interval, beat, "tuner-heartbeat", join_timeout=interval + 5):
            yield

    def claim_is_free(self, claim: Claim) -> bool:
        if claim.trial_id is not None:
            state = self.storage.get_trial(claim.trial_id).state
            if state in SETTLED:
                return False
            if state.is_finished():
                return True
        return self.claims.is_stale(claim)

    def fail_if_running(self, trial_id: int) -> None:
        """Fail the trial of a dead worker whose claim we took over (no trial stays RUNNING)."""
        try:
            if self.storage.get_trial(trial_id).state == TrialState.RUNNING:
                self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
                logger.info("trial id %d was left running by a dead worker: failed it", trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass

    def fail_left_running(self, study_name: str, key: str, previous: Claim) -> None:
        """Fail what the worker whose claim on point ``key`` we took over left RUNNING: the
        trial its claim names, or, when it died between creating its trial and naming it in
        the claim, its RUNNING trial of that point."""
        if previous.trial_id is not None:
            self.fail_if_running(previous.trial_id)
            return
        for trial_id in running_trials_of(self.storage, study_name, previous.owner, key):
            self.fail_if_running(trial_id)

    def abandon(self, err: BaseException) -> None:
        """Clean up after this worker, stopped by ``err``: fail its RUNNING trials (user attr
        ``interrupted``) and release its claims, so that the next run (or another worker)
        trains those points again at once. Best effort: the storage may be what failed; nothing
        is tried on a lost connection, whose trials the next worker fails once their heartbeats
        are stale."""
        if isinstance(err, StorageLost) or connection_failure(err) or corrupt_database(err):
            return  # nothing can be written there
        why = "terminated (SIGTERM)" if isinstance(err, Terminated) else type(err).__name__
        failed = 0

        def fail(trial_id: int) -> None:
            nonlocal failed
            self.storage.set_trial_user_attr(trial_id, "interrupted", why)
            self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
            failed += 1

        try:
            for claim in self.claims.owned(self.owner):
                if claim.trial_id is not None:
                    state = self.storage.get_trial(claim.trial_id).state
                    if state in SETTLED:
                        continue  # the claim marks a finished point: keep it
                    if state == TrialState.RUNNING:
                        fail(claim.trial_id)
                else:  # stopped between creating the point's trial and recording it in the claim
                    for trial_id in running_trials_of(
                        self.storage, claim.study_name, self.owner, claim.point
                    ):
                        fail(trial_id)
                self.claims.release(claim.study_name, claim.point, self.owner)
        except Exception as cleanup_err:  # noqa: BLE001 - the storage itself may be what failed
            logger.warning(
                "could not fail this worker's running trials (%s): the next run fails them once "
                "their heartbeats are stale",
                error_line(cleanup_err),
            )
            return
        if failed:
            logger.info("failed %d trial(s) this worker left running", failed)

    @staticmethod
    def check_failures(study: optuna.Study, trials: list[FrozenTrial], key: str) -> None:
        errors = [
            t
            for t in trials
            if t.state == TrialState.FAIL and "error" in t.user_attrs and point_key(t.params) == key
        ]
        if len(errors) >= MAX_FAILURES:
            raise StageError(
                f"{study.study_name}: point {key} failed {len(errors)} times; last error "
                f"(trial {errors[-1].number}): {errors[-1].user_attrs['error']}"
            )

    @contextmanager
    def exclusive(self, study_name: str, key: str) -> Iterator[bool]:
        """Yield whether this worker holds claim ``key`` on the study for the ``with`` block
        (released after it): for writes that two workers must not make at the same moment
        and that need only one writer (a study's note: Optuna inserts a study attr after
        looking for it, so two first writers collide in the database)."""
        got, _ = self.claims.try_claim(study_name, key, self.owner, is_free=self.claims.is_stale)
        try:
            yield got
        finally:
            if got:
                self.claims.release(study_name, key, self.owner)

    def claim_points(
        self, study: optuna.Study, trials: list[FrozenTrial], pending: list[str]
    ) -> list[str]:
        """Claim up to :meth:`share` of the ``pending`` point keys of ``study`` (its ``trials``
        as read now): a point whose claim is held by a live worker is skipped, one whose worker
        died (its claim stale, its trial finished) is taken over and its trial failed. A point
        that failed :data:`MAX_FAILURES` times stops the stage (:class:`StageError`)."""
        limit = self.share(len(pending))
        claimed: list[str] = []
        for key in pending:
            self.check_failures(study, trials, key)
            got, previous = self.claims.try_claim(
                study.study_name, key, self.owner, is_free=self.claim_is_free
            )
            if got:
                claimed.append(key)
                if previous is not None:
                    self.fail_left_running(study.study_name, key, previous)
                if len(claimed) >= limit:
                    break
        return claimed


def running_trials_of(
    storage: optuna.storages.BaseStorage, study_name: str, worker: str, point: str
) -> list[int]:
    """Storage ids of the RUNNING trials of point ``point`` (its :func:`point_key`) in
    ``study_name`` that ``worker`` created: what a worker stopped between creating a trial and
    naming it in its claim left behind."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return []
    running = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
    return [
        storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        for t in running
        if t.user_attrs.get("worker") == worker and point_key(t.params) == point
    ]
