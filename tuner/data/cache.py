"""The prepared-data cache: ``<data_dir>/prepared/<key>/`` holds ``arrays.npz`` and
``manifest.json``, so that every stage and worker of a tuning run trains on byte-identical data
without parsing the source again.

:func:`cache_key` names the directory: 16 hex digits of a hash of the source's content hash,
the split, the subsample size, the seed and :data:`PREPARE_VERSION` (a table's options too).
:func:`load_cached` returns the :class:`~tuner.data.manifest.Prepared` a directory holds, or
``None`` when it is missing, unreadable, stale or of another manifest version.
:func:`write_cache` writes one to a temporary directory and renames it into place, so a crash
or a bad input never leaves a partial cache behind. :func:`preparing_lock` makes the workers
sharing a data directory prepare one at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from tuner.data.manifest import ARRAYS, MANIFEST_VERSION, Manifest, Prepared
from tuner.data.spec import DataSpec

logger = logging.getLogger(__name__)

PREPARE_VERSION = 1
"""Bump when the prepared arrays for the same inputs change; part of the cache key. (The
manifest's own format is :data:`~tuner.data.manifest.MANIFEST_VERSION`: a cache with another
one is prepared again under the same key.)"""
TABLE_VERSION = 2
"""Bump when a table's encoding for the same inputs changes; part of a table's cache key.
2: numbers with a decimal comma are numbers (1 one-hot encoded them as text)."""


def cache_key(source_sha256: str, spec: DataSpec, test_sha256: str | None = None) -> str:
    """16 hex digits identifying the prepared arrays of ``spec`` on that source content.

    A table's options (target, columns, encoding, split column) and its test file's content
    are part of the key; for the UCI format the key is what it always was, so caches and
    studies made before tables existed are still found.
    """
    fields: dict[str, Any] = {
        "source_sha256": source_sha256,
        "split": spec.split,
        "rows": None if spec.rows is None else int(spec.rows),
        "seed": int(spec.seed),
        "version": PREPARE_VERSION,
    }
    if spec.is_table:
        fields["table"] = spec.table_options()
        fields["table_version"] = TABLE_VERSION
        fields["test_sha256"] = test_sha256
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_cached(directory: Path, key: str, source_sha256: str, spec: DataSpec) -> Prepared | None:
    """The cached :class:`Prepared` in ``directory`` if complete and matching, else None."""
    manifest_path = directory / "manifest.json"
    arrays_path = directory / "arrays.npz"
    if not manifest_path.is_file() or not arrays_path.is_file():
        return None
    try:
        raw = json.loads(manifest_path.read_text())
        expected = {
            "key": key,
            "version": MANIFEST_VERSION,
            "source_sha256": source_sha256,
            "split": spec.split,
            "rows": spec.rows,
            "seed": spec.seed,
        }
        if not isinstance(raw, dict) or any(raw.get(k) != v for k, v in expected.items()):
            logger.warning("ignoring stale prepared data in %s (manifest differs)", directory)
            return None
        manifest = Manifest.from_dict(raw)
        with np.load(arrays_path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in ARRAYS}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("ignoring unreadable prepared data in %s: %s", directory, exc)
        return None
    for part in ("train", "val", "test"):
        n = getattr(manifest, f"n_{part}")
        if arrays[f"x_{part}"].shape[0] != n or arrays[f"y_{part}"].shape[0] != n:
            logger.warning("ignoring inconsistent prepared data in %s", directory)
            return None
    return Prepared(manifest=manifest, **arrays)


def write_cache(prepared: Prepared, directory: Path) -> None:
    """Write arrays and manifest to a temporary directory, then rename it to ``directory``.

    Concurrent workers may prepare the same key at once: whoever renames first wins, and a
    complete cache written by another process meanwhile is kept, never deleted.
    """
    root = directory.parent
    root.mkdir(parents=True, exist_ok=True)
    key = prepared.manifest.key
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=root))
    try:
        np.savez(tmp / "arrays.npz", **{name: getattr(prepared, name) for name in ARRAYS})
        text = json.dumps(prepared.manifest.to_dict(), indent=1) + "\n"
        (tmp / "manifest.json").write_text(text)
        if directory.exists():
            if is_complete(directory, key):
                logger.info("another process wrote %s meanwhile; keeping its copy", directory)
                return
            stale = Path(tempfile.mkdtemp(prefix=f".stale-{directory.name}-", dir=root))
            os.replace(directory, stale / "old")  # move aside atomically, then delete
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, directory)
        except OSError:
            if not is_complete(directory, key):
                raise
            logger.info("another process wrote %s first; keeping its copy", directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def is_complete(directory: Path, key: str) -> bool:
    """Whether ``directory`` holds a cache of ``key`` in this manifest version."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(manifest, dict)
        and manifest.get("key") == key
        and manifest.get("version") == MANIFEST_VERSION
        and (directory / "arrays.npz").is_file()
    )


@contextmanager
def preparing_lock(data_dir: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``data_dir/.prepare.lock`` (none where it cannot be made:
    a read-only data directory has nothing to race on). When preparing fails (bad input), the
    lock file and a data directory this call made are removed again: nothing is left written."""
    import fcntl

    made = [p for p in (data_dir.parent, data_dir) if not p.exists()]
    lock = data_dir / ".prepare.lock"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield
        return
    failed = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another worker is preparing the data in %s; waiting for it", data_dir)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a filesystem without locks
            pass
        yield
    except BaseException:
        failed = True
        raise
    finally:
        if failed:
            lock.unlink(missing_ok=True)
            for path in reversed(made):
                try:
                    path.rmdir()  # only if still empty
                except OSError:
                    pass
        os.close(fd)  # releases the lock
