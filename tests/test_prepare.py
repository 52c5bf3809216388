"""Tests for tuner.data.prepare: labels, the published split, subsampling, scaling, the cache."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from tests.conftest import make_rows, uci_lines, write_uci_text
from tuner.data import cache
from tuner.data import uci as sources
from tuner.data.prepare import (
    CANONICAL_TEST_ROWS,
    CANONICAL_TRAIN_ROWS,
    LABEL_NAMES,
    MANIFEST_VERSION,
    DataSpec,
    Manifest,
    cache_key,
    decade_labels,
    prepare,
    split_indices,
)
from tuner.errors import DataError


def test_decade_labels():
    years = np.array([1900, 1919, 1922, 1929, 1930, 1999, 2000, 2009, 2010, 2011, 2100])
    assert decade_labels(years).tolist() == [0, 0, 0, 0, 1, 7, 8, 8, 9, 9, 9]
    assert decade_labels(years).dtype == np.int64
    assert LABEL_NAMES == tuple(f"{d}s" for d in range(1920, 2020, 10))


# --------------------------------------------------------------------------- splits


def _check_partition(n: int, *parts: np.ndarray) -> None:
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined), "a row is in two splits (leak)"
    assert sorted(joined.tolist()) == list(range(n))


def test_stratified_split_is_the_published_recipe():
    years, X = make_rows(3000, seed=11)
    y = decade_labels(years)
    X_train, X_temp, y_train, y_temp = train_test_split(
        X, y, test_size=0.30, random_state=42, stratify=y
    )
    X_val, X_test, y_val, y_test = train_test_split(
        X_temp, y_temp, test_size=0.5, random_state=42, stratify=y_temp
    )
    train, val, test = split_indices(y, "stratified")
    np.testing.assert_array_equal(X[train], X_train)
    np.testing.assert_array_equal(X[val], X_val)
    np.testing.assert_array_equal(X[test], X_test)
    np.testing.assert_array_equal(y[test], y_test)
    assert (len(train), len(val), len(test)) == (2100, 450, 450)
    _check_partition(3000, train, val, test)
    overall = np.bincount(y, minlength=10) / len(y)
    for part in (train, val, test):
        share = np.bincount(y[part], minlength=10) / len(part)
        assert np.abs(share - overall).max() < 0.01
    # The seed matters.
    assert not np.array_equal(split_indices(y, "stratified", seed=1)[0], train)


def test_stratified_split_lumps_rare_classes_only_when_needed():
    rng = np.random.default_rng(0)
    y = rng.choice([5, 6, 7, 8], size=500)
    y[17] = 0  # a class with a single row: sklearn cannot stratify on y itself
    with pytest.raises(ValueError):
        train_test_split(np.arange(500), test_size=0.3, random_state=42, stratify=y)
    train, val, test = split_indices(y, "stratified")
    _check_partition(500, train, val, test)
    assert (len(train), len(val), len(test)) == (350, 75, 75)


def test_canonical_split():
    n = CANONICAL_TRAIN_ROWS + CANONICAL_TEST_ROWS
    y = np.random.default_rng(0).choice(10, size=n, p=np.full(10, 0.1))
    train, val, test = split_indices(y, "canonical", seed=42)
    np.testing.assert_array_equal(test, np.arange(CANONICAL_TRAIN_ROWS, n))
    assert len(val) == int(np.ceil(CANONICAL_TRAIN_ROWS * 0.15 / 0.85))
    _check_partition(CANONICAL_TRAIN_ROWS, train, val)
    # Validation is stratified within the train part.
    assert np.abs(np.bincount(y[val], minlength=10) / len(val) - 0.1).max() < 0.01

    sub_train, sub_val, sub_test = split_indices(y, "canonical", seed=42, rows=10_000)
    assert len(sub_train) + len(sub_val) + len(sub_test) == 10_000
    assert len(sub_test) == 10_000 - round(10_000 * CANONICAL_TRAIN_ROWS / n)
    assert sub_test.min() >= CANONICAL_TRAIN_ROWS
    assert max(sub_train.max(), sub_val.max()) < CANONICAL_TRAIN_ROWS

    with pytest.raises(DataError, match="515,345 rows.*this data has 515,344 rows"):
        split_indices(y[:-1], "canonical")


def test_unknown_split_and_bad_rows():
    y = decade_labels(make_rows(500)[0])
    with pytest.raises(DataError, match="unknown split 'random'"):
        split_indices(y, "random")
    with pytest.raises(DataError, match="at least 100"):
        split_indices(y, "stratified", rows=99)
    with pytest.raises(DataError, match="only 500 rows"):
        split_indices(y, "stratified", rows=501)


def test_rows_subsample_is_stratified_and_deterministic():
    y = decade_labels(make_rows(5000, seed=2)[0])
    a = split_indices(y, "stratified", seed=42, rows=1000)
    b = split_indices(y, "stratified", seed=42, rows=1000)
    for x, z in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, z)
    chosen = np.concatenate(a)
    assert len(chosen) == 1000 and len(np.unique(chosen)) == 1000
    expected = np.bincount(y, minlength=10) * 1000 / len(y)
    assert np.abs(np.bincount(y[chosen], minlength=10) - expected).max() <= 1
    # The split of the subsample is the recipe applied to those rows (in file order).
    sub = np.sort(chosen)
    train, _, test = split_indices(y[sub], "stratified", seed=42)
    np.testing.assert_array_equal(sub[train], a[0])
    np.testing.assert_array_equal(sub[test], a[2])
    other = split_indices(y, "stratified", seed=7, rows=1000)
    assert not np.array_equal(np.sort(np.concatenate(other)), sub)


def test_small_subsample_with_rare_classes():
    y = decade_labels(make_rows(2000, seed=4)[0])
    train, val, test = split_indices(y, "stratified", rows=100)
    assert len(np.unique(np.concatenate([train, val, test]))) == 100


# --------------------------------------------------------------------------- prepare


def test_prepare_scales_with_train_statistics_only(tmp_path: Path, uci_file):
    path = uci_file(1000, seed=5)
    prepared = prepare(DataSpec(source=str(path)), tmp_path / "data")
    raw = sources.read_uci_file(path)
    y = decade_labels(raw.years)
    train, val, test = split_indices(y, "stratified", 42)
    mean = raw.features[train].mean(axis=0)
    scale = raw.features[train].std(axis=0)
    m = prepared.manifest
    np.testing.assert_allclose(m.encoding.mean_, mean, rtol=1e-10)
    np.testing.assert_allclose(m.encoding.scale_, scale, rtol=1e-10)
    assert np.abs(np.array(m.encoding.mean_) - raw.features.mean(axis=0)).max() > 1e-3
    for x, idx in ((prepared.x_train, train), (prepared.x_val, val), (prepared.x_test, test)):
        assert x.dtype == np.float32 and x.flags.c_contiguous
        np.testing.assert_allclose(x, (raw.features[idx] - mean) / scale, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(prepared.y_train, y[train])
    np.testing.assert_array_equal(prepared.y_test, y[test])
    assert prepared.y_val.dtype == np.int64
    assert np.abs(prepared.x_train.mean(axis=0)).max() < 1e-4
    assert (prepared.n_features, prepared.n_classes) == (90, 10)
    assert prepared.label_names == LABEL_NAMES

    assert m.source == str(path.resolve()) and m.source_sha256 == raw.sha256
    assert (m.split, m.rows, m.seed) == ("stratified", None, 42)
    assert m.version == MANIFEST_VERSION and m.file_format == "uci" and m.target is None
    assert (m.n_rows_total, m.n_train, m.n_val, m.n_test) == (1000, 700, 150, 150)
    assert m.class_counts["train"] == np.bincount(y[train], minlength=10).tolist()
    assert m.label_names == LABEL_NAMES and m.label_rule == "decade" and m.created
    assert m.encoding.numeric == sources.FEATURE_NAMES and m.n_features == 90
    directory = tmp_path / "data" / "prepared" / m.key
    stored = json.loads((directory / "manifest.json").read_text())
    assert stored == m.to_dict() and Manifest.from_dict(stored) == m
    assert sorted(p.name for p in directory.iterdir()) == ["arrays.npz", "manifest.json"]
    assert [p.name for p in (tmp_path / "data" / "prepared").iterdir()] == [m.key]


def test_cache_reuse_and_invalidation(tmp_path: Path, uci_file, monkeypatch, caplog):
    path = str(uci_file(600, seed=6))
    data_dir = tmp_path / "data"
    monkeypatch.setattr("tuner.data.prepare.ANNOUNCE_BYTES", 1000)  # a "large" file
    with caplog.at_level(logging.INFO, logger="tuner.data.prepare"):
        first = prepare(DataSpec(source=path), data_dir)
    # said before the first read: a large file is not prepared in silence
    assert caplog.records[0].getMessage().startswith(f"preparing {path} (0 MB): reading")
    caplog.clear()

    def no_reading(ref):
        raise AssertionError("the source was parsed again")

    with monkeypatch.context() as m:
        m.setattr(sources, "load_resolved", no_reading)
        with caplog.at_level(logging.INFO, logger="tuner.data.prepare"):
            again = prepare(DataSpec(source=path), data_dir)
    assert "reusing prepared data" in caplog.text
    assert again.manifest == first.manifest
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))

    keys = {first.manifest.key}
    for spec in (DataSpec(source=path, rows=300), DataSpec(source=path, seed=1)):
        prepared = prepare(spec, data_dir)
        assert prepared.manifest.key not in keys
        keys.add(prepared.manifest.key)
    assert prepare(DataSpec(source=path, rows=300), data_dir).manifest.n_train == 210
    assert {p.name for p in (data_dir / "prepared").iterdir()} == keys
    sha = first.manifest.source_sha256
    assert cache_key(sha, DataSpec(split="canonical")) != cache_key(sha, DataSpec())
    assert cache_key(sha, DataSpec()) == first.manifest.key

    # Other content, same path: a new key.
    write_uci_text(Path(path), uci_lines(*make_rows(600, seed=99)))
    assert prepare(DataSpec(source=path), data_dir).manifest.key not in keys


def test_broken_cache_is_rebuilt(tmp_path: Path, uci_file):
    path = str(uci_file(400))
    first = prepare(DataSpec(source=path), tmp_path)
    manifest = tmp_path / "prepared" / first.manifest.key / "manifest.json"
    manifest.write_text(manifest.read_text()[:50])
    again = prepare(DataSpec(source=path), tmp_path)
    np.testing.assert_array_equal(again.x_val, first.x_val)
    assert json.loads(manifest.read_text())["key"] == first.manifest.key
    assert [p.name for p in (tmp_path / "prepared").iterdir()] == [first.manifest.key]


def test_concurrent_writer_keeps_existing_cache(tmp_path: Path, uci_file):
    """A complete cache that appeared meanwhile (another worker) is kept, not replaced."""
    prepared = prepare(DataSpec(source=str(uci_file(300))), tmp_path)
    directory = tmp_path / "prepared" / prepared.manifest.key
    before = (directory / "manifest.json").read_text()
    prepared.manifest = prepared.manifest.replace(created="later")
    cache.write_cache(prepared, directory)
    assert (directory / "manifest.json").read_text() == before
    assert [p.name for p in directory.parent.iterdir()] == [directory.name]


def test_same_content_in_zip_shares_the_cache(tmp_path: Path, uci_file):
    import zipfile

    path = uci_file(300)
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(path, "sub/YearPredictionMSD.txt")
    a = prepare(DataSpec(source=str(path)), tmp_path / "d")
    b = prepare(DataSpec(source=str(archive)), tmp_path / "d")
    assert a.manifest.key == b.manifest.key
    assert b.manifest.source == str(archive.resolve())


@pytest.mark.parametrize(
    "content",
    [
        "",
        "year,a,b\n1,2,3\n",
        "2001;1.0;2.0\n",
        "GOOD\nGOOD\n2001,1.0\n",
        "GOOD\nGOOD\nGOOD\nNAN\n",
    ],
)
def test_bad_input_leaves_no_cache(tmp_path: Path, content: str):
    good, bad = uci_lines(*make_rows(2, seed=1))
    bad = bad.replace(bad.split(",")[5], "nan", 1)
    path = tmp_path / "bad.txt"
    path.write_text(content.replace("GOOD", good).replace("NAN", bad))
    data_dir = tmp_path / "data"
    with pytest.raises(DataError) as info:
        prepare(DataSpec(source=str(path)), data_dir)
    assert str(path) in str(info.value)
    assert not (data_dir / "prepared").exists()


def test_bad_spec_and_small_data(tmp_path: Path, uci_file):
    path = str(uci_file(300))
    with pytest.raises(DataError, match="canonical split needs .* 300 rows"):
        prepare(DataSpec(source=path, split="canonical"), tmp_path)
    with pytest.raises(DataError, match="--rows 50"):
        prepare(DataSpec(source=path, rows=50), tmp_path)
    with pytest.raises(DataError, match="--rows 301: the data has only 300 rows"):
        prepare(DataSpec(source=path, rows=301), tmp_path)
    with pytest.raises(DataError, match="unknown split"):
        prepare(DataSpec(source=path, split="kfold"), tmp_path)
    with pytest.raises(DataError, match="at least 100"):
        prepare(DataSpec(source=str(uci_file(60, name="tiny.txt"))), tmp_path)
    with pytest.raises(DataError, match="missing.txt: no such file"):
        prepare(DataSpec(source=str(tmp_path / "missing.txt")), tmp_path)
    assert not (tmp_path / "prepared").exists()


def test_prepare_real_sample(tmp_path: Path, real_head: Path):
    prepared = prepare(DataSpec(source=str(real_head)), tmp_path)
    m = prepared.manifest
    assert (m.n_rows_total, m.n_train, m.n_val, m.n_test) == (1176, 823, 176, 177)
    total = [sum(c) for c in zip(*m.class_counts.values(), strict=True)]
    assert total == [0, 5, 4, 8, 8, 96, 70, 264, 689, 32]
    assert min(m.class_counts["train"][1:]) >= 2  # rare decades spread, not dropped
    assert np.isfinite(prepared.x_train).all()
    sub = prepare(DataSpec(source=str(real_head), rows=500, seed=3), tmp_path)
    assert sub.manifest.n_train + sub.manifest.n_val + sub.manifest.n_test == 500


def test_prepare_uses_module_functions(monkeypatch, tmp_path: Path, uci_file):
    """prepare goes through sources.resolve_source/load_resolved (the seam tests patch)."""
    path = str(uci_file(300))
    seen = []
    real = sources.resolve_source
    monkeypatch.setattr(
        sources, "resolve_source", lambda s, d, **kw: seen.append(s) or real(s, d, **kw)
    )
    prepare(DataSpec(source=path), tmp_path)
    assert seen == [path]


def test_file_changed_while_preparing(tmp_path: Path, uci_file, monkeypatch):
    """A file rewritten between hashing and parsing is hashed again: the key follows content."""
    path = uci_file(300)
    real_load = sources.load_resolved

    def rewrite_then_load(ref):
        write_uci_text(path, uci_lines(*make_rows(400, seed=8)))
        return real_load(ref)

    monkeypatch.setattr(sources, "load_resolved", rewrite_then_load)
    prepared = prepare(DataSpec(source=str(path)), tmp_path)
    m = prepared.manifest
    assert m.n_rows_total == 400
    assert m.source_sha256 == sources.file_sha256(path)
    assert m.key == cache_key(m.source_sha256, DataSpec(source=str(path)))
    assert (tmp_path / "prepared" / m.key / "manifest.json").is_file()
