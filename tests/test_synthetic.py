"""Tests for :mod:`tuner.data.synthetic`, the MSD-shaped synthetic data generator."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tuner.data import synthetic
from tuner.data.synthetic import (
    DECADE_COUNTS,
    FULL_ROWS,
    N_FEATURES,
    decade_counts,
    generate,
    write_uci,
)

LINE_RE = re.compile(r"\d{4}(,-?\d+\.\d{5}){90}")


def _decades(years: np.ndarray) -> np.ndarray:
    """Decade labels exactly as the tuner derives them from years."""
    return np.clip((years // 10 * 10 - 1920) // 10, 0, 9)


@pytest.fixture(scope="module")
def medium() -> tuple[np.ndarray, np.ndarray]:
    """A 20,000-row data set shared by the statistical checks."""
    return generate(20_000, seed=0)


def test_prior_constants() -> None:
    assert sum(DECADE_COUNTS) == FULL_ROWS == 515_345
    assert len(DECADE_COUNTS) == 10
    assert N_FEATURES == 90
    assert isinstance(synthetic.GENERATOR_VERSION, int)


@pytest.mark.slow
def test_full_size_counts_are_exactly_the_real_prior() -> None:
    years, features = generate(FULL_ROWS, seed=0)
    assert years.shape == (FULL_ROWS,)
    assert features.shape == (FULL_ROWS, N_FEATURES)
    assert np.bincount(_decades(years), minlength=10).tolist() == list(DECADE_COUNTS)
    assert np.isfinite(features).all()


@pytest.mark.parametrize("rows", [5_000, 20_000, 100_000, 123_457, FULL_ROWS])
def test_decade_counts_are_proportional(rows: int) -> None:
    counts = decade_counts(rows)
    assert counts.sum() == rows
    exact = np.array(DECADE_COUNTS) * rows / FULL_ROWS
    assert np.all(np.abs(counts - exact) < 1.0)
    assert counts.min() >= 2


@pytest.mark.parametrize("rows", [0, 1, 7, 99])
def test_tiny_row_counts(rows: int) -> None:
    years, features = generate(rows, seed=1)
    assert years.shape == (rows,)
    assert features.shape == (rows, N_FEATURES)
    assert decade_counts(rows).sum() == rows
    assert np.isfinite(features).all()


def test_negative_rows_rejected() -> None:
    with pytest.raises(ValueError):
        generate(-1)


def test_generated_counts_match_decade_counts(medium: tuple[np.ndarray, np.ndarray]) -> None:
    years, _ = medium
    assert np.array_equal(np.bincount(_decades(years), minlength=10), decade_counts(20_000))


def test_dtypes_shapes_and_year_range(medium: tuple[np.ndarray, np.ndarray]) -> None:
    years, features = medium
    assert years.dtype == np.int64 and years.shape == (20_000,)
    assert features.dtype == np.float64 and features.shape == (20_000, N_FEATURES)
    assert years.min() >= 1922 and years.max() <= 2011
    assert np.isfinite(features).all()
    # Every year of the two crowded decades occurs (year = decade start + uniform 0..9).
    assert set(range(1990, 2010)) <= set(years.tolist())


def test_rows_are_shuffled(medium: tuple[np.ndarray, np.ndarray]) -> None:
    decades = _decades(medium[0])
    assert (np.diff(decades) < 0).sum() > 1_000
    assert len(set(decades[:200].tolist())) >= 3


def test_deterministic_per_seed_and_different_across_seeds() -> None:
    y1, x1 = generate(3_000, seed=7)
    y2, x2 = generate(3_000, seed=7)
    assert np.array_equal(y1, y2) and np.array_equal(x1, x2)
    y3, x3 = generate(3_000, seed=8)
    assert not np.array_equal(y1, y3)
    assert not np.allclose(x1, x3)


def test_column_groups_look_like_msd(medium: tuple[np.ndarray, np.ndarray]) -> None:
    _, features = medium
    averages, variances, covariances = features[:, :12], features[:, 12:24], features[:, 24:]
    assert 35 < np.median(averages[:, 0]) < 50  # the loudness-like first average
    assert (variances > 0).all()
    assert np.median(variances, axis=0).max() > 1_000
    # Covariances take both signs in (almost) every column.
    neg = (covariances < 0).mean(axis=0)
    assert ((neg > 0.05) & (neg < 0.95)).sum() >= 60
    # Column scales differ by orders of magnitude.
    iqr = np.subtract(*np.percentile(features, [75, 25], axis=0))
    assert iqr.max() / iqr.min() > 100


def _kurtosis(x: np.ndarray) -> np.ndarray:
    """Excess kurtosis of each column."""
    centred = x - x.mean(axis=0)
    return (centred**4).mean(axis=0) / (centred**2).mean(axis=0) ** 2 - 3.0


def test_heavy_tails_and_outliers(medium: tuple[np.ndarray, np.ndarray]) -> None:
    _, features = medium
    kurt = _kurtosis(features)
    assert (kurt > 3.0).sum() >= 30
    assert kurt[12:24].min() > 3.0  # log-normal variances: heavy right tail
    # Gross outliers: a small fraction of rows far outside the bulk in some column.
    med = np.median(features, axis=0)
    mad = np.median(np.abs(features - med), axis=0)
    far = (np.abs(features - med) > 30 * mad).any(axis=1).mean()
    assert 0.001 < far < 0.05


def test_neighbouring_decades_are_closer(medium: tuple[np.ndarray, np.ndarray]) -> None:
    years, features = medium
    decades = _decades(years)
    med = np.median(features, axis=0)
    iqr = np.subtract(*np.percentile(features, [75, 25], axis=0))
    robust = np.clip((features - med) / iqr, -5, 5)
    means = {d: robust[decades == d].mean(axis=0) for d in (5, 6, 7, 8)}

    def dist(a: int, b: int) -> float:
        return float(np.linalg.norm(means[a] - means[b]))

    assert dist(7, 8) < dist(6, 8) < dist(5, 8)


def test_decade_is_learnable_well_above_majority(medium: tuple[np.ndarray, np.ndarray]) -> None:
    """A small MLP trained for a few seconds beats the majority rate by a clear margin."""
    years, features = medium
    labels = _decades(years)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(labels))
    train, test = order[:15_000], order[15_000:]
    mean = features[train].mean(axis=0)
    std = features[train].std(axis=0)
    x = torch.from_numpy(((features - mean) / std).astype(np.float32))
    y = torch.from_numpy(labels).long()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread avoids oversubscription on busy CI
    try:
        accuracy = _train_small_mlp(x, y, train, test)
    finally:
        torch.set_num_threads(threads)
    majority = (labels[test] == np.bincount(labels[train]).argmax()).mean()
    assert majority == pytest.approx(0.58, abs=0.02)
    assert accuracy > majority + 0.03


def _train_small_mlp(
    x: torch.Tensor, y: torch.Tensor, train: np.ndarray, test: np.ndarray
) -> float:
    """Train a 128x128 GELU MLP for 6 epochs (Adam, batch 128); return its test accuracy."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(N_FEATURES, 128),
        torch.nn.GELU(),
        torch.nn.Linear(128, 128),
        torch.nn.GELU(),
        torch.nn.Linear(128, 10),
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x_train, y_train = x[train], y[train]
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):
        perm = torch.randperm(len(train), generator=gen)
        for start in range(0, len(train), 128):
            batch = perm[start : start + 128]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x_train[batch]), y_train[batch]).backward()
            opt.step()
    with torch.no_grad():
        return (net(x[test]).argmax(dim=1) == y[test]).float().mean().item()


def test_write_uci_round_trip(tmp_path: Path) -> None:
    years, features = generate(300, seed=3)
    path = tmp_path / "msd.txt"
    write_uci(path, years, features)

    raw = path.read_bytes()
    assert b"\r" not in raw and raw.endswith(b"\n")
    lines = raw.decode("ascii").split("\n")[:-1]
    assert len(lines) == 300
    assert all(LINE_RE.fullmatch(line) for line in lines)
    first = lines[0].split(",")
    assert first[0] == str(years[0])
    assert first[1:] == [f"{v:.5f}" for v in features[0]]

    table = pd.read_csv(path, header=None)
    assert table.shape == (300, 91)
    assert table[0].dtype.kind == "i"
    assert np.array_equal(table[0].to_numpy(), years)
    loaded = np.loadtxt(path, delimiter=",")
    expected = np.array([[float(f"{v:.5f}") for v in row] for row in features])
    assert np.array_equal(loaded[:, 1:], expected)


def test_write_uci_accepts_str_path_and_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    write_uci(str(path), np.zeros(0, dtype=np.int64), np.zeros((0, N_FEATURES)))
    assert path.read_bytes() == b""


def test_write_uci_rejects_bad_shapes(tmp_path: Path) -> None:
    years, features = generate(10, seed=0)
    with pytest.raises(ValueError):
        write_uci(tmp_path / "a.txt", years[:5], features)
    with pytest.raises(ValueError):
        write_uci(tmp_path / "b.txt", years, features[:, :89])
    bad = features.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError):
        write_uci(tmp_path / "c.txt", years, bad)
