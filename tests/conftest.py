"""Shared fixtures: small UCI-format data files and the real 1,176-row reference sample."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.pg import postgres_server, postgres_url  # noqa: F401  (fixtures: a PostgreSQL server)

REAL_HEAD = Path(__file__).resolve().parents[2] / "shared/data/msd_head_1176.csv"
"""1,176 real rows of YearPredictionMSD.txt, outside the repository (absent in a fresh clone)."""

# Decade shares for generated test data: skewed like the real file, but every decade common
# enough that sklearn can stratify a few thousand rows without lumping classes.
_SHARES = np.array([0.02, 0.02, 0.03, 0.05, 0.08, 0.10, 0.15, 0.20, 0.30, 0.05])


def make_rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows of (years int64, features float64 (n, 90)) covering all ten decades."""
    rng = np.random.default_rng(seed)
    decade = rng.choice(10, size=n, p=_SHARES)
    years = np.clip(1920 + 10 * decade + rng.integers(0, 10, size=n), 1922, 2011)
    features = rng.normal(loc=np.arange(90) * 0.5, scale=1 + np.arange(90) * 0.1, size=(n, 90))
    features += decade[:, None] * 0.3  # some signal, so means differ between subsets
    return years.astype(np.int64), features


def uci_lines(years: np.ndarray, features: np.ndarray) -> list[str]:
    """UCI-format text lines (no newline); ``repr`` floats so values round-trip exactly."""
    return [
        ",".join([str(int(y)), *(repr(float(v)) for v in row)])
        for y, row in zip(years, features, strict=True)
    ]


def write_uci_text(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.fixture
def uci_file(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``uci_file(n=300, seed=0, name="data.txt")`` writes generated rows."""

    def make(n: int = 300, seed: int = 0, name: str = "data.txt") -> Path:
        years, features = make_rows(n, seed)
        return write_uci_text(tmp_path / name, uci_lines(years, features))

    return make


@pytest.fixture
def real_head() -> Path:
    if not REAL_HEAD.is_file():
        pytest.skip(f"reference sample {REAL_HEAD} not present")
    return REAL_HEAD


@pytest.fixture(scope="session")
def msd_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 rows of the MSD-shaped synthetic data, written in the exact UCI text format."""
    from tuner.data import synthetic

    years, features = synthetic.generate(rows=3000, seed=7)
    path = tmp_path_factory.mktemp("msd") / "msd_3000.txt"
    synthetic.write_uci(path, years, features)
    return path


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Torch on one thread for the test: tiny models train faster so, and on a loaded machine
    much faster (no OpenMP threads waiting at barriers for a descheduled sibling)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SERVICE_FIXTURES = {"postgres_server": "postgres", "engine": "docker"}
"""A test that uses one of these fixtures needs that service: it gets the service's marker."""
SERVICE_MARKERS = ("postgres", "browser", "docker")
"""Tests that need a service (a PostgreSQL server, Chromium, a Docker engine) are slow too, so
``pytest -m "not slow"`` runs without any service installed."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, marker in SERVICE_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)
        if any(item.get_closest_marker(m) for m in SERVICE_MARKERS):
            item.add_marker("slow")
