"""A throwaway PostgreSQL server on loopback for the scale-out tests.

``initdb`` into a temporary directory, ``pg_ctl start`` on a free port of 127.0.0.1 (unix socket
in the same directory), one fresh database per test, ``pg_ctl stop`` at the end. PostgreSQL
refuses to run as root, so under root the server runs as the ``postgres`` system user that
Debian's ``postgresql`` package creates.

Without the server binaries the tests are skipped, unless ``CI`` is set: CI must run them
(``.ci/run`` installs the ``postgresql`` package).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

USER = "tuner"


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` with initdb and pg_ctl, else the PATH's."""

    def version(path: str) -> tuple[int, ...]:
        part = Path(path).parent.parent.name
        return tuple(int(x) for x in part.split(".") if x.isdigit())

    for initdb in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version, reverse=True):
        bindir = Path(initdb).parent
        if (bindir / "pg_ctl").is_file():
            return bindir
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """One PostgreSQL cluster in a temporary directory, listening on 127.0.0.1:``port``."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        # under root the server runs as "postgres", who must reach the directory: use /tmp,
        # not a $TMPDIR that may sit in root's home
        tmp = "/tmp" if os.geteuid() == 0 and Path("/tmp").is_dir() else None
        self.root = Path(tempfile.mkdtemp(prefix="tuner-pg-", dir=tmp))
        self.datadir = self.root / "data"
        self.sockdir = self.root / "sock"
        self.log = self.root / "server.log"
        self.port = free_port()
        self._run_as: list[str] = []
        self._dbs = itertools.count(1)
        self.sockdir.mkdir()
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(
                    "running as root and there is no 'postgres' user to run the server as"
                ) from None
            os.chmod(self.root, 0o700)
            for d in (self.root, self.sockdir):
                os.chown(d, pw.pw_uid, pw.pw_gid)
            self._run_as = ["runuser", "-u", "postgres", "--"]
        self._pg("initdb", "-D", self.datadir, "-U", USER, "-A", "trust", "-E", "UTF8", "--no-sync")

    def _pg(self, name: str, *args: object, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [*self._run_as, str(self.bindir / name), *(str(a) for a in args)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=self.root, timeout=120)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1 "
            # fsync=off: a throwaway cluster (the OS keeps what it wrote); commits stay
            # synchronous so that `pg_ctl stop -m immediate` (a crash) loses no committed work
            "-c fsync=off -c max_connections=200"
        )
        try:
            self._pg(
                "pg_ctl", "start", "-w", "-t", "60", "-D", self.datadir, "-l", self.log, "-o", opts
            )
        except RuntimeError as err:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{err}\n{log}") from None

    def stop(self, mode: str = "fast") -> None:
        self._pg("pg_ctl", "stop", "-w", "-D", self.datadir, "-m", mode, check=False)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its name."""
        import psycopg

        name = f"tuner_test_{next(self._dbs)}"
        conninfo = f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PgServer]:
    """A PostgreSQL server for the whole test session (skipped without the binaries, unless CI)."""
    bindir = find_bindir()
    if bindir is None:
        reason = "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: these tests must run)")
        pytest.skip(reason)
    server = PgServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def postgres_url(postgres_server: PgServer) -> str:
    """``postgresql+psycopg://`` URL of a fresh, empty database on the test server."""
    return postgres_server.url(postgres_server.create_database())
