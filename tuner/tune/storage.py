"""Where studies live: storage URLs and connections, and what a failure of them is.

The default storage is SQLite under the workdir (``sqlite:///<workdir>/studies/tuner.sqlite3``);
any SQLAlchemy URL works, PostgreSQL for many workers (``postgresql://`` and ``postgres://`` URLs
use the psycopg 3 driver). Heartbeats are always on so that a trial left RUNNING by a killed
worker is failed and its grid point trained again.

A storage that cannot be reached, or whose connection breaks during a run, is a
:class:`~tuner.errors.StorageError` (one line, exit status 2): connecting gives up after
``CONNECT_TIMEOUT_S`` seconds instead of hanging. Failures are classified here, once: a lost
storage (:func:`lost_storage`), a failure of the machine (:func:`environment_failure`: a full
disk, a corrupt or read-only database), either (:func:`storage_failure`), the one line the
command line prints for any of those or a path the machine refuses (:func:`failure_line`), and
what a failed trial records (:func:`failure_kind`).
"""

from __future__ import annotations

import errno
import logging
import re
import sqlite3
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from tuner.errors import StorageError, StorageLost, TunerError

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
    try:
        parsed.get_dialect().import_dbapi()  # a driver that is not installed: say so now
    except ImportError as err:
        raise StorageError(
            f"storage URL {shown!r} needs a database driver that is not installed: {err}"
        ) from None
    except Exception:  # noqa: BLE001 - a dialect without import_dbapi: the connect says more
        pass
    if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
        directory = Path(parsed.database).parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(
                f"storage {parsed.database}: cannot create its directory {directory} "
                f"({err.strerror or err})"
            ) from None


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
                with _schema_lock_for(url):
                    return optuna.storages.RDBStorage(
                        url,
                        engine_kwargs=engine_kwargs(url),
                        heartbeat_interval=heartbeat_interval,
                        grace_period=grace_period,
                    )
        except (OperationalError, sqlalchemy.exc.DBAPIError) as err:
            reason = scrub(first_line(err), url)
            if is_schema_race(err) and attempt + 1 < CREATE_RETRIES:
                # another worker is creating the same tables right now
                time.sleep(0.2 * (attempt + 1))
                continue
            failure = environment_failure(err, url, "opening it")
            if failure is not None:
                raise failure from None
            raise StorageError(f"cannot open storage {redact(url)}: {reason}") from None
        except ImportError as err:  # Optuna's words for a driver that is not installed
            raise StorageError(
                f"storage URL {redact(url)!r} needs a database driver that is not installed: "
                f"{scrub(first_line(err), url)}"
            ) from None
    raise AssertionError("unreachable")


@contextmanager
def _schema_lock_for(url: str) -> Iterator[None]:
    """:func:`schema_lock` on a short-lived engine of ``url`` (PostgreSQL only)."""
    if not url.startswith("postgresql"):
        yield
        return
    engine = sqlalchemy.create_engine(url, **engine_kwargs(url))  # the same connect timeout
    try:
        with schema_lock(engine):
            yield
    finally:
        engine.dispose()


def first_line(err: BaseException) -> str:
    orig = getattr(err, "orig", None)
    lines = str(orig if orig is not None else err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def error_line(err: BaseException) -> str:
    """One line for a storage error: the database's own message where Optuna wrapped it (any
    password in it hidden)."""
    return scrub(first_line(connection_failure(err) or err))


def connection_failure(err: BaseException) -> BaseException | None:
    """The database error behind ``err`` when the storage went away (refused, dropped, timed out,
    locked for too long), else ``None``.

    Looks through Optuna's wrapping (``StorageInternalError`` from a failed commit) at the
    causes: a SQLAlchemy ``OperationalError`` or ``InterfaceError``, or any DBAPI error that
    invalidated its connection.
    """
    if disk_full(err) is not None:  # the database answers, but cannot write: see disk_full
        return None
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


def lost_storage(err: BaseException, url: str | None, doing: str = "") -> StorageError | None:
    """A one-line :class:`StorageError` for a storage failure behind ``err`` (see
    :func:`connection_failure`), or ``None`` when ``err`` is something else. ``url=None``
    (a caller that does not know it) says "the storage"."""
    cause = connection_failure(err)
    if cause is None:
        return None
    where = f" while {doing}" if doing else ""
    name = f"storage {redact(url)}" if url else "the storage"
    return StorageLost(
        f"lost the connection to {name}{where}: {scrub(first_line(cause), url)} "
        "(finished trials are kept; a trial left running is failed and retried by the next "
        "worker or run)"
    )


def _causes(err: BaseException):
    """``err`` and the exceptions behind it (``__cause__``, else ``__context__``)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _message(err: BaseException) -> str:
    orig = getattr(err, "orig", None)
    return str(orig if orig is not None else err).lower()


_DISK_FULL = (
    "database or disk is full",  # SQLite's SQLITE_FULL
    "no space left on device",
    "disk quota exceeded",
    "could not extend file",  # PostgreSQL's words for a full disk
)
_CORRUPT = ("file is not a database", "database disk image is malformed")
_READ_ONLY = ("attempt to write a readonly database", "read-only file system")
_DB_ERRORS = (sqlalchemy.exc.DBAPIError, sqlite3.Error)


def disk_full(err: BaseException) -> BaseException | None:
    """The error behind ``err`` that says a disk is full (an ``OSError`` ENOSPC/EDQUOT,
    SQLite's "database or disk is full", PostgreSQL's SQLSTATE 53100), else ``None``."""
    for e in _causes(err):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return e
        if getattr(getattr(e, "orig", None), "sqlstate", None) == "53100":
            return e
    return _db_error_saying(err, _DISK_FULL)


def _db_error_saying(err: BaseException, phrases: tuple[str, ...]) -> BaseException | None:
    """The database error behind ``err`` whose message contains one of ``phrases``."""
    for e in _causes(err):
        if isinstance(e, _DB_ERRORS) and any(s in _message(e) for s in phrases):
            return e
    return None


def corrupt_database(err: BaseException) -> BaseException | None:
    """The SQLite error behind ``err`` saying the file is not a database, or a damaged one."""
    return _db_error_saying(err, _CORRUPT)


def read_only_database(err: BaseException) -> BaseException | None:
    """The database error behind ``err`` saying the storage cannot be written."""
    return _db_error_saying(err, _READ_ONLY)


def storage_name(url: str) -> str:
    """How messages name a storage: a SQLite database's file, else the redacted URL."""
    try:
        parsed = make_url(resolve_url(url))
    except (ArgumentError, ValueError, TypeError):
        return redact(url)
    if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
        return str(parsed.database)
    return redact(url)


def environment_failure(
    err: BaseException, url: str | None, doing: str = ""
) -> StorageError | None:
    """One line for a failure of the machine rather than of tuner behind ``err``: a full disk
    (storage or files), a corrupt or non-SQLite database file, a storage that cannot be
    written; ``None`` for anything else (see also :func:`storage_failure`)."""
    where = f" while {doing}" if doing else ""
    name = f"storage {storage_name(url)}" if url else "the storage"
    if (cause := disk_full(err)) is not None:
        if isinstance(cause, OSError):
            what = f"cannot write {cause.filename}" if cause.filename else "cannot write"
            detail = f"{what} ({cause.strerror or cause})"
        else:
            detail = f"{name}: {first_line(cause)}"
        return StorageError(
            scrub(
                f"no space left on the disk{where}: {detail}; free some space and run again "
                "(finished trials are kept)",
                url,
            )
        )
    if (cause := corrupt_database(err)) is not None:
        return StorageError(
            scrub(
                f"{name} is not a usable SQLite database ({first_line(cause)}): "
                "restore it from a backup, or move it away to start a new one",
                url,
            )
        )
    if (cause := read_only_database(err)) is not None:
        return StorageError(
            scrub(
                f"{name} cannot be written{where} ({first_line(cause)}): check the "
                "permissions of the file and of its directory",
                url,
            )
        )
    return None


def storage_failure(err: BaseException, url: str | None, doing: str = "") -> StorageError | None:
    """One line for any failure of the storage or the machine behind ``err`` (see
    :func:`environment_failure` and :func:`lost_storage`), else ``None``."""
    return environment_failure(err, url, doing) or lost_storage(err, url, doing)


ENVIRONMENT_ERRNOS = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENOENT,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EIO,
        errno.ENAMETOOLONG,
        errno.ELOOP,
        errno.EMFILE,
        errno.ENFILE,
    }
)
"""``OSError`` numbers of a path the machine refuses (permissions, a read-only or full disk,
a missing directory, too many open files): the user's to fix, not tuner's."""


def failure_line(err: BaseException, url: str | None) -> str | None:
    """The one line the command line prints for a failure of the environment behind ``err``
    (a lost or corrupt storage ``url``, a full disk, a path that cannot be read or written),
    else ``None`` (a bug: a traceback)."""
    failure = storage_failure(err, url)
    if failure is not None:
        return str(failure)
    if isinstance(err, OSError) and err.errno in ENVIRONMENT_ERRNOS:
        where = f"{err.filename}: " if err.filename else ""
        return scrub(f"{where}{err.strerror or err}", url)
    return None


def failure_kind(err: BaseException) -> str:
    """The user attr a trial failed by ``err`` gets: ``interrupted`` (Ctrl-C, SIGTERM),
    ``environment`` (a full disk, a path or storage that cannot be written), else ``error``
    (its training raised: counts towards ``MAX_FAILURES``)."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    if isinstance(err, (TunerError, OSError)) or environment_failure(err, None) is not None:
        return "environment"
    return "error"


SCHEMA_LOCK = 0x7475_6E65_7231  # "tuner1": the advisory lock that serializes schema creation


@contextmanager
def schema_lock(engine: sqlalchemy.engine.Engine) -> Iterator[None]:
    """Serialize creating tables across workers on PostgreSQL (an advisory lock held on its
    own connection), so that concurrent workers never race on CREATE TABLE and the server logs
    no duplicate-key errors. Elsewhere (SQLite) a no-op: the retries handle the race."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": SCHEMA_LOCK})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": SCHEMA_LOCK})
            conn.commit()


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
    except sqlalchemy.exc.DBAPIError as err:
        if "locked" not in str(err.orig) and "busy" not in str(err.orig):
            failure = environment_failure(err, url, "opening it")
            if failure is not None:
                raise failure from None
            raise StorageError(
                f"cannot open storage {redact(url)}: {scrub(first_line(err), url)}"
            ) from None
        logger.debug("could not switch %s to WAL now: %s", redact(url), err.orig)
    finally:
        engine.dispose()


HIDDEN = "***"


def _is_secret_key(key: str) -> bool:
    """A query parameter that holds a secret: ``password``, ``sslpassword``, any ``*password*``
    (and ``*passwd*``, ``*secret*``), whatever its case."""
    key = key.lower()
    return any(word in key for word in ("password", "passwd", "secret"))


_USERINFO = re.compile(r"(://[^:/@?#]*:)([^@/?#]*)@")
# a URL's query parameter, or a key=value of a libpq connection string ("host=h password=x")
_QUERY_PARAM = re.compile(r"((?:^|[?&;\s])([^=&;#\s]*)=)([^&;#\s]*)")


def redact(url: str) -> str:
    """The URL with every password hidden (the user info's, and query parameters such as
    ``?password=`` and ``?sslpassword=``), for messages, logs, reports and notes."""
    try:
        url = make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError, TypeError):
        pass
    return _redact_unparsed(url)


def _redact_unparsed(url: str) -> str:
    """Hide ``user:PASSWORD@`` and secret query parameters in a URL that may not parse."""
    url = _USERINFO.sub(rf"\1{HIDDEN}@", url)
    return _QUERY_PARAM.sub(
        lambda m: m.group(1) + HIDDEN if _is_secret_key(m.group(2)) else m.group(0), url
    )


def secrets(url: str) -> list[str]:
    """The passwords in ``url`` (user info and secret query parameters), as written and
    decoded, longest first."""
    found = [m.group(2) for m in _USERINFO.finditer(url)]
    found += [m.group(3) for m in _QUERY_PARAM.finditer(url) if _is_secret_key(m.group(2))]
    try:
        parsed = make_url(url)
        found.append(str(parsed.password or ""))
        for key, value in parsed.query.items():
            if _is_secret_key(key):
                found += [value] if isinstance(value, str) else list(value)
    except (ArgumentError, ValueError, TypeError):
        pass
    return sorted({s for s in found if s and s != HIDDEN}, key=len, reverse=True)


def scrub(text: str, url: str | None = None) -> str:
    """``text`` (an error message, a log line) with every password of ``url`` hidden, and the
    passwords of any URL in it. A secret under four characters is hidden where it stands
    alone (not inside a word), so that it does not mangle the rest of the message."""
    for secret in secrets(url) if url else []:
        if len(secret) >= 4:
            text = text.replace(secret, HIDDEN)
        else:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", HIDDEN, text)
    return _redact_unparsed(text)
