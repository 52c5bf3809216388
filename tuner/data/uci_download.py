"""The real YearPredictionMSD file: downloaded once from UCI, verified by its SHA-256.

:func:`ensure_uci` takes the data directory and returns the path of a verified
``<data_dir>/raw/YearPredictionMSD.txt``, downloading it from :data:`UCI_URLS` when absent (or
when a local copy fails the check). The verification is remembered in a small JSON sidecar
(size, mtime, hash) so the 430 MB file is not re-hashed on every run. Without the network it
raises a one-line :class:`~tuner.errors.DataError` saying how to go on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

from tqdm import tqdm

from tuner.data.uci_format import CHUNK, UCI_MEMBER, file_sha256, open_zip, reason
from tuner.errors import DataError

logger = logging.getLogger(__name__)

UCI_URLS: tuple[str, ...] = (
    "https://archive.ics.uci.edu/ml/machine-learning-databases/00203/YearPredictionMSD.txt.zip",
    "https://archive.ics.uci.edu/static/public/203/yearpredictionmsd.zip",
)
"""Where the UCI zip is downloaded from, tried in order."""

UCI_TXT_SHA256 = "4b6f8e50235b359e01689ae7fb33ad0f89677e9a15f25f3d6259327a6bb927bb"
"""SHA-256 of ``YearPredictionMSD.txt`` (the zip's data member), as publicly reported."""

DOWNLOAD_TIMEOUT_S = 30.0
"""Socket timeout for each download attempt (connect and every read)."""

_USAGE_HINT = (
    "pass a local copy with --data PATH (.txt, .csv or .zip in the UCI format) "
    "or use --data synthetic"
)


def ensure_uci(data_dir: Path) -> Path:
    """Path of a verified ``data_dir/raw/YearPredictionMSD.txt``, downloading it if needed."""
    path = Path(data_dir) / "raw" / UCI_MEMBER
    if path.is_file():
        if _sidecar_ok(path):
            return path
        logger.info("verifying %s (SHA-256)", path)
        digest = file_sha256(path)
        if digest == UCI_TXT_SHA256:
            _write_sidecar(path, digest)
            return path
        logger.warning(
            "%s has SHA-256 %s, expected %s; downloading a fresh copy",
            path,
            digest,
            UCI_TXT_SHA256,
        )
    return download_uci(data_dir)


def download_uci(data_dir: Path) -> Path:
    """Download the UCI zip, extract and verify ``YearPredictionMSD.txt`` into
    ``data_dir/raw`` and return its path.

    Each URL of :data:`UCI_URLS` is tried in turn. A checksum mismatch raises at once (naming
    both hashes) and leaves no file behind; when every URL fails the :class:`DataError` says
    why and how to proceed without the network.
    """
    raw_dir = Path(data_dir) / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    target = raw_dir / UCI_MEMBER
    failures: list[str] = []
    for url in UCI_URLS:
        fd, tmp_name = tempfile.mkstemp(prefix=".download-", suffix=".zip", dir=raw_dir)
        os.close(fd)
        tmp_zip = Path(tmp_name)
        try:
            try:
                _fetch(url, tmp_zip)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                failures.append(f"{url}: {reason(exc)}")
                logger.info("download of %s failed: %s", url, reason(exc))
                continue
            try:
                extracted, digest = _extract_member(tmp_zip, url, raw_dir)
            except DataError as exc:
                failures.append(str(exc))
                logger.info("%s", exc)
                continue
            if digest != UCI_TXT_SHA256:
                extracted.unlink(missing_ok=True)
                raise DataError(
                    f"{UCI_MEMBER} downloaded from {url} has SHA-256 {digest}, expected "
                    f"{UCI_TXT_SHA256}; the bad file was deleted"
                )
            os.replace(extracted, target)
            _write_sidecar(target, digest)
            logger.info("downloaded and verified %s", target)
            return target
        finally:
            tmp_zip.unlink(missing_ok=True)
    raise DataError(
        f"cannot download the UCI YearPredictionMSD data ({'; '.join(failures)}); {_USAGE_HINT}"
    )


# --------------------------------------------------------------------------- download helpers


def _fetch(url: str, dest: Path) -> None:
    """Stream ``url`` into ``dest`` with a progress bar on stderr."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:  # noqa: S310
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with (
            open(dest, "wb") as out,
            tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc="YearPredictionMSD",
                disable=None,
                leave=False,
            ) as bar,
        ):
            while chunk := resp.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))


def _extract_member(zip_path: Path, url: str, dest_dir: Path) -> tuple[Path, str]:
    """Extract the data member of a downloaded zip to a temporary file in ``dest_dir``,
    hashing it on the way; returns the file and its SHA-256 (the caller verifies and renames).
    """
    fd, tmp_name = tempfile.mkstemp(prefix=".extract-", suffix=".txt", dir=dest_dir)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, open_zip(zip_path, url) as (zf, member):
            try:
                with zf.open(member) as src:
                    while chunk := src.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                raise DataError(f"{url}: corrupt zip file ({reason(exc)})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, digest.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _sidecar_ok(path: Path) -> bool:
    """Whether ``path`` was verified before and has not changed since (size and mtime)."""
    try:
        info = json.loads(_sidecar(path).read_text())
        st = path.stat()
    except (OSError, ValueError):
        return False
    return (
        isinstance(info, dict)
        and info.get("sha256") == UCI_TXT_SHA256
        and info.get("size") == st.st_size
        and info.get("mtime_ns") == st.st_mtime_ns
    )


def _write_sidecar(path: Path, digest: str) -> None:
    st = path.stat()
    side = _sidecar(path)
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(
        json.dumps({"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}) + "\n"
    )
    os.replace(tmp, side)
