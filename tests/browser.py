"""Helpers for the report and dashboard tests: one finished tiny run shared by both modules,
and headless Chromium driven from the command line (``--dump-dom``, ``--screenshot``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests._util import run_cli, write_tiny_plan

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
)

_RUNS: dict[str, Path] = {}


def finished_run(tmp_path_factory: pytest.TempPathFactory, msd_file: Path) -> Path:
    """A workdir where ``run-all --plan tiny`` finished (stages, final, report): run once per
    test session and shared by the modules that only read it."""
    key = str(msd_file)
    if key not in _RUNS:
        workdir = tmp_path_factory.mktemp("finished_run")
        write_tiny_plan(workdir)
        t0 = time.perf_counter()
        proc = run_cli(
            "run-all",
            "--plan",
            "tiny",
            "--data",
            str(msd_file),
            "--workdir",
            str(workdir),
            "--threads",
            "1",
            cwd=workdir,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        (workdir / "run-all.stdout").write_text(proc.stdout)
        (workdir / "run-all.seconds").write_text(f"{time.perf_counter() - t0:.1f}\n")
        _RUNS[key] = workdir
    return _RUNS[key]


def get_json(url: str, timeout: float = 30) -> object:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.status == 200, (url, response.status)
        return json.loads(response.read())


def get_bytes(url: str, timeout: float = 30) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.status == 200, (url, response.status)
        return response.read()


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def require_chromium() -> str:
    """The Chromium binary; without one, skip on a developer machine but fail in CI."""
    path = find_chromium()
    if path is None:
        reason = (
            "headless Chromium is not installed (Debian: apt-get install chromium); "
            ".ci/run installs it"
        )
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {reason}")
        pytest.skip(reason)
    return path


def _chromium(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    chromium = require_chromium()
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        return subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def dump_dom(url: str, *, budget_ms: int = 15000, timeout: float = 90) -> str:
    """The DOM of ``url`` after scripts ran for ``budget_ms`` of virtual time (the page's
    network requests complete before virtual time moves on)."""
    proc = _chromium([f"--virtual-time-budget={budget_ms}", "--dump-dom", url], timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def screenshot(url: str, path: Path, *, size: str = "1400,1000", budget_ms: int = 15000) -> Path:
    proc = _chromium(
        [
            f"--virtual-time-budget={budget_ms}",
            f"--window-size={size}",
            f"--screenshot={path}",
            url,
        ],
        90,
    )
    assert proc.returncode == 0 and Path(path).is_file(), proc.stderr[-2000:]
    return Path(path)


def wait_until(predicate, timeout: float = 30, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
