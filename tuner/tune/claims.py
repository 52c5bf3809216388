"""Claims: each grid point of a stage is trained by exactly one worker at a time.

Optuna's GridSampler can hand the same point to two workers that ask at the same moment, and
on SQLite even popping a WAITING trial is not atomic. tuner therefore claims a point in a small
table of its own, ``tuner_claims``, in the same database as the studies, before it creates the
trial: an INSERT on the primary key ``(study_name, point)`` succeeds for one worker only, and a
takeover is a compare-and-swap UPDATE on the previous owner. Both are atomic in SQLite and
PostgreSQL.

A claim is live while its owner refreshes ``heartbeat_at``. It can be taken over when its trial
FAILed, when its heartbeat is older than the grace period (the owner died), or when the owner is
a process on this host that no longer exists (a killed run restarted at once).

On PostgreSQL, where workers run on several machines, heartbeats are stamped and judged by the
database server's clock (UTC), so a worker whose own clock is off cannot take a live claim over.
SQLite serves one machine: its heartbeats use the local clock.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from tuner.errors import StorageError
from tuner.tune.storage import (
    CREATE_RETRIES,
    engine_kwargs,
    first_line,
    is_schema_race,
    resolve_url,
    schema_lock,
    scrub,
)

WORKERS = "__workers__:{}"
"""Reserved study name of a plan's presence rows: one claim per live worker (point = owner)."""

_metadata = sa.MetaData()
claims_table = sa.Table(
    "tuner_claims",
    _metadata,
    sa.Column("study_name", sa.String(512), primary_key=True),
    sa.Column("point", sa.String(512), primary_key=True),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("trial_id", sa.Integer, nullable=True),
    sa.Column("heartbeat_at", sa.DateTime, nullable=False),
)


def new_owner_id() -> str:
    """``host:pid:random`` -- unique per worker process, and says where it runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead_here(owner: str) -> bool:
    """True when ``owner`` is a process on this host that no longer runs."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


_PG_NOW = sa.func.timezone("UTC", sa.func.now(), type_=sa.DateTime)
"""PostgreSQL's clock, as the naive UTC timestamp stored in ``heartbeat_at``."""


@dataclass(frozen=True)
class Claim:
    study_name: str
    point: str
    owner: str
    trial_id: int | None
    heartbeat_at: dt.datetime


class ClaimTable:
    """Claims on one database, shared by every worker of every stage."""

    def __init__(self, url: str, grace_period_s: float) -> None:
        url = resolve_url(url)
        self.engine = sa.create_engine(url, **engine_kwargs(url))
        self._server_clock = self.engine.dialect.name == "postgresql"
        self.grace = dt.timedelta(seconds=grace_period_s)
        for attempt in range(CREATE_RETRIES):
            try:
                with schema_lock(self.engine):  # one worker creates the table, quietly
                    _metadata.create_all(self.engine, checkfirst=True)
                break
            except sa.exc.DBAPIError as err:
                if not is_schema_race(err) or attempt + 1 == CREATE_RETRIES:
                    reason = scrub(first_line(err), url)
                    raise StorageError(f"cannot create tuner_claims: {reason}") from None
                time.sleep(0.2 * (attempt + 1))

    def close(self) -> None:
        self.engine.dispose()

    def get(self, study_name: str, point: str) -> Claim | None:
        t = claims_table
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t).where(t.c.study_name == study_name, t.c.point == point)
            ).first()
        return Claim(**row._mapping) if row else None

    def _stamp(self):
        """What ``heartbeat_at`` is set to: the server's clock on PostgreSQL, else ours."""
        return _PG_NOW if self._server_clock else _now()

    def now(self) -> dt.datetime:
        """The time claims are judged by (see :meth:`_stamp`)."""
        if not self._server_clock:
            return _now()
        with self.engine.connect() as conn:
            return conn.execute(sa.select(_PG_NOW)).scalar_one()

    def is_stale(self, claim: Claim) -> bool:
        return self.now() - claim.heartbeat_at > self.grace or owner_is_dead_here(claim.owner)

    def try_claim(
        self, study_name: str, point: str, owner: str, is_free: Callable[[Claim], bool]
    ) -> tuple[bool, Claim | None]:
        """Claim ``point`` for ``owner``: ``(True, previous claim or None)`` on success,
        ``(False, holder)`` when another live worker holds it (or it is done).

        ``is_free(claim)`` says whether an existing claim may be taken over (its trial failed,
        or it is stale); the takeover itself is a compare-and-swap on the old owner.
        """
        t = claims_table
        now = self._stamp()
        if self._insert(study_name, point, owner, now):
            return True, None
        old = self.get(study_name, point)
        if old is None:  # released between our INSERT and SELECT: try again next round
            return False, None
        if not is_free(old):
            return False, old
        with self.engine.begin() as conn:
            swapped = conn.execute(
                t.update()
                .where(
                    t.c.study_name == study_name,
                    t.c.point == point,
                    t.c.owner == old.owner,
                    t.c.heartbeat_at == old.heartbeat_at,
                )
                .values(owner=owner, trial_id=None, heartbeat_at=now)
            ).rowcount
        return (True, old) if swapped == 1 else (False, old)

    def _insert(self, study_name: str, point: str, owner: str, now) -> bool:
        """INSERT the claim unless the point is claimed already; True when it was inserted.

        ``ON CONFLICT DO NOTHING`` on PostgreSQL and SQLite: losing the race is the normal
        path for all workers but one, and must not log a unique-violation error on the server.
        """
        values = dict(
            study_name=study_name, point=point, owner=owner, trial_id=None, heartbeat_at=now
        )
        dialect = self.engine.dialect.name
        if dialect in ("postgresql", "sqlite"):
            if dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            else:
                from sqlalchemy.dialects.sqlite import insert
            stmt = (
                insert(claims_table)
                .values(**values)
                .on_conflict_do_nothing()
                .returning(claims_table.c.owner)  # a row back: inserted (rowcount may be -1)
            )
            with self.engine.begin() as conn:
                return conn.execute(stmt).first() is not None
        try:  # other databases: the unique violation is the answer
            with self.engine.begin() as conn:
                conn.execute(claims_table.insert().values(**values))
            return True
        except sa.exc.IntegrityError:
            return False

    # -- presence: which workers of a plan are alive --------------------------------------------
    def announce(self, plan: str, owner: str) -> None:
        """Say (again) that ``owner`` works on ``plan``: its presence row, refreshed by
        :meth:`refresh_presence`, counts in :meth:`live_workers` until it is stale."""
        name = WORKERS.format(plan)
        if not self._insert(name, owner, owner, self._stamp()):
            self.refresh(owner, [name])

    def refresh_presence(self, plan: str, owner: str) -> None:
        self.refresh(owner, [WORKERS.format(plan)])

    def withdraw(self, plan: str, owner: str) -> None:
        self.release(WORKERS.format(plan), owner, owner)

    def live_workers(self, plan: str) -> list[str]:
        """Owners of the plan's presence rows that are not stale (at least this process's)."""
        t = claims_table
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t).where(t.c.study_name == WORKERS.format(plan))).all()
        claims = [Claim(**row._mapping) for row in rows]
        now = self.now()
        return [
            c.owner
            for c in claims
            if now - c.heartbeat_at <= self.grace and not owner_is_dead_here(c.owner)
        ]

    def set_trial(self, study_name: str, point: str, owner: str, trial_id: int) -> None:
        t = claims_table
        with self.engine.begin() as conn:
            conn.execute(
                t.update()
                .where(t.c.study_name == study_name, t.c.point == point, t.c.owner == owner)
                .values(trial_id=trial_id, heartbeat_at=self._stamp())
            )

    def refresh(self, owner: str, study_names: Iterable[str]) -> None:
        """Heartbeat: mark every claim of ``owner`` in these studies as live."""
        t = claims_table
        with self.engine.begin() as conn:
            conn.execute(
                t.update()
                .where(t.c.owner == owner, t.c.study_name.in_(list(study_names)))
                .values(heartbeat_at=self._stamp())
            )

    def owned(self, owner: str) -> list[Claim]:
        """Every claim ``owner`` holds, in every study."""
        t = claims_table
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t).where(t.c.owner == owner)).all()
        return [Claim(**row._mapping) for row in rows]

    def release(self, study_name: str, point: str, owner: str) -> None:
        """Drop a claim (its work failed before a trial existed, or needs no trial)."""
        t = claims_table
        with self.engine.begin() as conn:
            conn.execute(
                t.delete().where(
                    t.c.study_name == study_name, t.c.point == point, t.c.owner == owner
                )
            )
