"""Where studies live: storage URLs, connections, and the names of stage studies.

The default storage is SQLite under the workdir (``sqlite:///<workdir>/studies/tuner.sqlite3``);
any SQLAlchemy URL works, PostgreSQL for many workers (``postgresql://`` and ``postgres://`` URLs
use the psycopg 3 driver). Heartbeats are always on so that a trial left RUNNING by a killed
worker is failed and its grid point trained again.

A storage that cannot be reached, or whose connection breaks during a run, is a
:class:`~tuner.errors.StorageError` (one line, exit status 2): connecting gives up after
``CONNECT_TIMEOUT_S`` seconds instead of hanging.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from tuner.errors import StorageError

logger = logging.getLogger(__name__)

CREATE_RETRIES = 5
SQLITE_TIMEOUT_S = 120  # wait for a writer's lock instead of failing with "database is locked"
CONNECT_TIMEOUT_S = 10  # a server that does not answer: give up instead of hanging
# TCP keepalives: a server (or network) that vanishes without closing the connection is noticed
# within about a minute instead of a query waiting forever.
PG_CONNECT_ARGS = {
    "connect_timeout": CONNECT_TIMEOUT_S,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
_PG_SCHEMES = ("postgresql://", "postgres://")


def default_storage_url(workdir: Path) -> str:
    return f"sqlite:///{(workdir / 'studies' / 'tuner.sqlite3').resolve()}"


def resolve_url(url: str) -> str:
    """The URL tuner connects with: ``postgresql://`` and ``postgres://`` (no driver named) use
    psycopg 3, ``postgresql+psycopg://``, a dependency of tuner; SQLAlchemy would otherwise look
    for psycopg2. Any other URL is returned unchanged."""
    url = url.strip()
    for scheme in _PG_SCHEMES:
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def engine_kwargs(url: str) -> dict:
    """Connection settings that let several processes share one database."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    if url.startswith("postgresql+psycopg"):
        return {"pool_pre_ping": True, "connect_args": dict(PG_CONNECT_ARGS)}
    return {"pool_pre_ping": True}


def check_url(url: str) -> None:
    """Raise :class:`StorageError` for a URL SQLAlchemy cannot parse or has no driver for."""
    url = resolve_url(url)
    shown = _redact_unparsed(url)
    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as err:
        reason = str(err).replace(url, shown).strip().splitlines()[0] if str(err) else "unknown"
        raise StorageError(
            f"storage URL {shown!r} is not a valid SQLAlchemy URL: {reason}"
        ) from None
    except ImportError as err:
        raise StorageError(f"storage URL {shown!r} needs a database driver: {err}") from None
    if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def open_storage(
    url: str, *, heartbeat_interval: int, grace_period: int
) -> optuna.storages.RDBStorage:
    """Open (and create if needed) the Optuna RDB storage at ``url``."""
    url = resolve_url(url)
    check_url(url)
    if url.startswith("sqlite"):
        _enable_wal(url)
    for attempt in range(CREATE_RETRIES):
        try:
            with warnings.catch_warnings():
                # heartbeats are "experimental" in Optuna's API, yet crash recovery needs them
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs(url),
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                )
        except (OperationalError, sqlalchemy.exc.DBAPIError) as err:
            reason = first_line(err)
            if is_schema_race(err) and attempt + 1 < CREATE_RETRIES:
                # another worker is creating the same tables right now
                time.sleep(0.2 * (attempt + 1))
                continue
            raise StorageError(f"cannot open storage {redact(url)}: {reason}") from None
    raise AssertionError("unreachable")


def first_line(err: BaseException) -> str:
    orig = getattr(err, "orig", None)
    lines = str(orig if orig is not None else err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def error_line(err: BaseException) -> str:
    """One line for a storage error: the database's own message where Optuna wrapped it."""
    return first_line(connection_failure(err) or err)


def connection_failure(err: BaseException) -> BaseException | None:
    """The database error behind ``err`` when the storage went away (refused, dropped, timed out,
    locked for too long), else ``None``.

    Looks through Optuna's wrapping (``StorageInternalError`` from a failed commit) at the
    causes: a SQLAlchemy ``OperationalError`` or ``InterfaceError``, or any DBAPI error that
    invalidated its connection.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlalchemy.exc.OperationalError) and _is_sqlite(current):
            # sqlite3 raises OperationalError for bad SQL and missing tables too: those are bugs
            if any(s in str(current.orig).lower() for s in _SQLITE_UNAVAILABLE):
                return current
        elif isinstance(current, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return current
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return current
        current = current.__cause__ or current.__context__
    return None


_SQLITE_UNAVAILABLE = ("locked", "busy", "unable to open", "disk i/o")


def _is_sqlite(err: sqlalchemy.exc.DBAPIError) -> bool:
    return type(err.orig).__module__.startswith("sqlite3")


def lost_storage(err: BaseException, url: str, doing: str = "") -> StorageError | None:
    """A one-line :class:`StorageError` for a storage failure behind ``err`` (see
    :func:`connection_failure`), or ``None`` when ``err`` is something else."""
    cause = connection_failure(err)
    if cause is None:
        return None
    where = f" while {doing}" if doing else ""
    return StorageError(
        f"lost the connection to storage {redact(url)}{where}: {first_line(cause)} "
        "(finished trials are kept; a trial left running is failed and retried by the next "
        "worker or run)"
    )


def is_schema_race(err: BaseException) -> bool:
    """True for the error a worker gets when another creates the same tables concurrently."""
    text = str(err).lower()
    return any(s in text for s in ("already exists", "duplicate", "unique constraint"))


def _enable_wal(url: str) -> None:
    """Put a SQLite database in WAL mode (persistent) so readers never block the writer.

    Switching needs a moment with no other connection; when another worker holds one, it has
    switched already or will, so a busy database is not an error here.
    """
    engine = sqlalchemy.create_engine(url, **engine_kwargs(url))
    try:
        with engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            if str(mode).lower() != "wal":
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    except OperationalError as err:
        if "locked" not in str(err.orig) and "busy" not in str(err.orig):
            raise StorageError(f"cannot open storage {url}: {err.orig}") from None
        logger.debug("could not switch %s to WAL now: %s", url, err.orig)
    finally:
        engine.dispose()


def redact(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return _redact_unparsed(url)


def _redact_unparsed(url: str) -> str:
    """Hide ``user:PASSWORD@`` in a URL that may not parse."""
    return re.sub(r"(://[^:/@]*:).*@", r"\1***@", url)


def study_name(plan: str, stage: str, version: int = 1) -> str:
    """``seed.weight_decay`` for the first study of a stage, ``seed.weight_decay.v2`` after --force."""
    return f"{plan}.{stage}" if version <= 1 else f"{plan}.{stage}.v{version}"


def latest_version(study_names: list[str], plan: str, stage: str) -> int:
    """The highest version of the stage's study among ``study_names``; 0 when there is none."""
    pattern = re.compile(rf"^{re.escape(plan)}\.{re.escape(stage)}(?:\.v(\d+))?$")
    versions = [int(m.group(1) or 1) for n in study_names if (m := pattern.match(n))]
    return max(versions, default=0)
