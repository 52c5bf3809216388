"""Where studies live: storage URLs, connections, and the names of stage studies.

The default storage is SQLite under the workdir (``sqlite:///<workdir>/studies/tuner.sqlite3``);
any SQLAlchemy URL works, PostgreSQL for many workers. Heartbeats are always on so that a trial
left RUNNING by a killed worker is failed and its grid point trained again.
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


def default_storage_url(workdir: Path) -> str:
    return f"sqlite:///{(workdir / 'studies' / 'tuner.sqlite3').resolve()}"


def engine_kwargs(url: str) -> dict:
    """Connection settings that let several processes share one database."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    return {"pool_pre_ping": True}


def check_url(url: str) -> None:
    """Raise :class:`StorageError` for a URL SQLAlchemy cannot parse or has no driver for."""
    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as err:
        raise StorageError(f"storage URL {url!r} is not a valid SQLAlchemy URL: {err}") from None
    except ImportError as err:
        raise StorageError(f"storage URL {url!r} needs a database driver: {err}") from None
    if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def open_storage(
    url: str, *, heartbeat_interval: int, grace_period: int
) -> optuna.storages.RDBStorage:
    """Open (and create if needed) the Optuna RDB storage at ``url``."""
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
    return str(orig if orig is not None else err).strip().splitlines()[0]


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
    except ArgumentError:
        return url


def study_name(plan: str, stage: str, version: int = 1) -> str:
    """``seed.weight_decay`` for the first study of a stage, ``seed.weight_decay.v2`` after --force."""
    return f"{plan}.{stage}" if version <= 1 else f"{plan}.{stage}.v{version}"


def latest_version(study_names: list[str], plan: str, stage: str) -> int:
    """The highest version of the stage's study among ``study_names``; 0 when there is none."""
    pattern = re.compile(rf"^{re.escape(plan)}\.{re.escape(stage)}(?:\.v(\d+))?$")
    versions = [int(m.group(1) or 1) for n in study_names if (m := pattern.match(n))]
    return max(versions, default=0)
