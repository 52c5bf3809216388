"""One encoding for every data source: YearPredictionMSD's arrays are what they always were,
byte for byte; the encoding and the manifest round-trip as plain data; ``model.pt`` files of the
previous version still predict."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from tuner import predict
from tuner.data.encoding import Encoding
from tuner.data.manifest import MANIFEST_VERSION, Manifest
from tuner.data.prepare import DataSpec, prepare, split_indices
from tuner.data.uci import FEATURE_NAMES
from tuner.errors import DataError
from tuner.tune.final import input_encoding

PARTS = ("train", "val", "test")
ARRAYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


def _written(data_dir: Path, key: str) -> dict[str, np.ndarray]:
    """The arrays the pipeline wrote to its cache."""
    with np.load(data_dir / "prepared" / key / "arrays.npz") as npz:
        return {name: npz[name] for name in ARRAYS}


def _read_uci(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Years and features of a UCI-format file, read with numpy alone (not tuner's reader)."""
    data = np.loadtxt(path, delimiter=",", dtype=np.float64)
    return data[:, 0].astype(np.int64), np.ascontiguousarray(data[:, 1:])


def _standardized(x_train: np.ndarray, *parts: np.ndarray) -> list[np.ndarray]:
    """The published recipe's standardization, written out: scikit-learn's StandardScaler
    (population variance by its corrected two-pass sums, in float64, over C-ordered train
    rows), applied in float64 as ``(x - mean) / scale`` and rounded to float32 once."""
    n = float(len(x_train))
    mean = x_train.sum(axis=0) / n
    centred = x_train - mean
    unnormalized = (centred**2).sum(axis=0) - centred.sum(axis=0) ** 2 / n
    scale = np.sqrt(unnormalized / n)
    scaler = StandardScaler().fit(x_train)  # what the previous version called, inline
    np.testing.assert_array_equal(scaler.mean_, mean)
    np.testing.assert_array_equal(scaler.scale_, scale)
    return [((x - mean) / scale).astype(np.float32) for x in parts]


def test_msd_arrays_are_the_published_standardization_byte_for_byte(tmp_path, uci_file):
    """Everything recomputed here without tuner's code: reading (numpy), decade labels, the
    published split (``train_test_split`` twice), the standardization fitted on train rows.
    The arrays the pipeline writes must be the same bytes; near misses that a rewrite of the
    encoding could make (float32 arithmetic, ``ddof=1``, a float32 mean) are not."""
    path = uci_file(3000, seed=21)
    years, x = _read_uci(path)
    y = np.clip((years // 10 * 10 - 1920) // 10, 0, 9)
    rows = np.arange(len(y))
    train, rest = train_test_split(rows, test_size=0.30, random_state=42, stratify=y)
    val, test = train_test_split(rest, test_size=0.5, random_state=42, stratify=y[rest])
    expected_x = _standardized(x[train], x[train], x[val], x[test])
    expected = {}
    for part, idx, xs in zip(PARTS, (train, val, test), expected_x, strict=True):
        expected[f"x_{part}"], expected[f"y_{part}"] = xs, y[idx].astype(np.int64)

    data_dir = tmp_path / "data"
    prepared = prepare(DataSpec(source=str(path)), data_dir)
    written = _written(data_dir, prepared.manifest.key)
    for name in ARRAYS:
        for got in (written[name], getattr(prepared, name)):
            assert got.dtype == expected[name].dtype and got.shape == expected[name].shape, name
            assert got.tobytes() == expected[name].tobytes(), name
    assert written["x_train"].dtype == np.float32 and written["x_train"].flags.c_contiguous

    # The comparison has teeth: each of these encodings differs in many bytes.
    xt, xs = x[train], x[test]
    mean, std = xt.mean(axis=0), xt.std(axis=0)
    near_misses = {
        "float32 arithmetic": (xs.astype(np.float32) - mean.astype(np.float32))
        / std.astype(np.float32),
        "ddof=1": ((xs - mean) / xt.std(axis=0, ddof=1)).astype(np.float32),
        "float32 mean": ((xs - xt.astype(np.float32).mean(axis=0, dtype=np.float32)) / std).astype(
            np.float32
        ),
        "statistics of all rows": ((xs - x.mean(axis=0)) / x.std(axis=0)).astype(np.float32),
    }
    for what, other in near_misses.items():
        assert (other != written["x_test"]).sum() > 1000, what


# sha256 over (name, dtype, shape, bytes) of the six arrays, as the previous version (commit
# 7fcd6b9: StandardScaler fitted inline in prepare._build) wrote them for the real sample
PREVIOUS_VERSION = {
    (None, 42): ("d9188789f7e525ef", "1e1ccf830578b92003656672d09a226c7476a4e304a6fe335f9dddcb5dd4f33d"),
    (500, 3): ("ff53b85f2288d4a5", "f1bd8e33665ca0471ef8b00bb9d96f7556d73cf8f0a5ce6f5871890df32ff9ac"),
}  # fmt: skip


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in ARRAYS:
        a = arrays[name]
        for part in (name, str(a.dtype), str(a.shape)):
            h.update(part.encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize(("rows", "seed"), list(PREVIOUS_VERSION))
def test_real_rows_are_prepared_as_the_previous_version_did(tmp_path, real_head, rows, seed):
    """1,176 real rows (rare decades lumped for stratification): the same cache key and the
    same bytes as the previous version, and the published standardization recomputed here."""
    spec = DataSpec(source=str(real_head), rows=rows, seed=seed)
    prepared = prepare(spec, tmp_path)
    key, digest = PREVIOUS_VERSION[(rows, seed)]
    assert prepared.manifest.key == key
    written = _written(tmp_path, key)
    assert _digest(written) == digest

    years, x = _read_uci(real_head)
    y = np.clip((years // 10 * 10 - 1920) // 10, 0, 9)
    parts = split_indices(y, "stratified", seed, rows=rows)  # the recipe, rare classes lumped
    expected = _standardized(x[parts[0]], *(x[idx] for idx in parts))
    for part, xs in zip(PARTS, expected, strict=True):
        assert written[f"x_{part}"].tobytes() == xs.tobytes(), part


def test_msd_is_a_table_whose_target_is_the_year(tmp_path, uci_file):
    """The UCI path: named feature columns, the year binned by decade, the same encoding
    as a table's (fitted on the train rows), described by the same manifest."""
    path = uci_file(400, seed=3)
    m = prepare(DataSpec(source=str(path)), tmp_path).manifest
    assert m.file_format == "uci" and m.target is None and m.label_rule == "decade"
    assert m.columns.numeric == FEATURE_NAMES and not m.columns.categorical
    enc = m.encoding
    assert enc.numeric == FEATURE_NAMES and enc.scaler == "standard" and enc.fitted
    assert enc.feature_names == list(FEATURE_NAMES) and m.n_features == 90
    assert (m.rows_without_target, m.missing_values) == (0, {})
    assert set(m.lumped_classes) <= set(m.label_names)  # recorded, as for a table


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(4)
    n = 300
    b = rng.normal(size=n) * 100
    b[::13] = np.nan
    return pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "b": b,
            "colour": rng.choice(
                ["red", "green", "blue", "teal"], size=n, p=[0.5, 0.3, 0.19, 0.01]
            ),
            "y": rng.choice(["p", "q"], size=n),
        }
    )


@pytest.mark.parametrize("scaler", ["standard", "quantile"])
def test_the_encoding_round_trips_as_plain_data(tmp_path, scaler):
    frame = _frame()
    enc = Encoding(["a", "b"], ["colour"], scaler=scaler, min_frequency=5)
    x = enc.fit_transform(frame.iloc[:200], "t.csv")
    assert x.dtype == np.float32 and x.shape == (200, enc.n_features) and x.flags.c_contiguous
    np.testing.assert_array_equal(x, enc.transform(frame.iloc[:200]))
    assert enc.feature_names == ["a", "b", "colour=blue", "colour=green", "colour=red",
                                 "colour=(other)"]  # fmt: skip
    state = enc.to_dict()
    assert json.loads(json.dumps(state)) == state  # plain lists, strings and numbers
    path = tmp_path / "enc.pt"
    torch.save({"encoding": state}, path)
    again = Encoding.from_dict(torch.load(path, weights_only=True)["encoding"])
    assert again == enc
    new = frame.iloc[200:].drop(columns="y")[["colour", "b", "a"]]  # any column order
    np.testing.assert_array_equal(again.transform(new), enc.transform(new))
    if scaler == "standard":  # the statistics are the train rows' (median fill included)
        filled = frame["b"].iloc[:200].fillna(frame["b"].iloc[:200].median())
        assert enc.fill_[1] == pytest.approx(filled.median())
        assert enc.mean_[1] == pytest.approx(filled.mean())
        assert enc.scale_[1] == pytest.approx(filled.std(ddof=0))
    with pytest.raises(ValueError, match="feature_names"):
        Encoding.from_dict({**state, "feature_names": state["feature_names"][:-1]})
    with pytest.raises(DataError, match="missing column"):
        enc.transform(frame.drop(columns="colour"), "new.csv")


def test_refused_missing_values_and_unfitted_use():
    frame = _frame()
    with pytest.raises(DataError, match=r"t.csv: column 'b', row 1: missing value"):
        Encoding(["a", "b"], impute="refuse").fit(frame, "t.csv")
    enc = Encoding(["a"], impute="refuse").fit(frame, "t.csv")
    assert enc.fill_ is None and "fill" not in enc.to_dict()
    holes = pd.DataFrame({"a": [1.0, np.nan]})
    with pytest.raises(DataError, match=r"new.csv: column 'a', row 2: missing value"):
        enc.transform(holes, "new.csv")
    with pytest.raises(RuntimeError, match="not fitted"):
        Encoding(["a"]).transform(frame)


def test_the_manifest_round_trips_and_an_older_one_is_prepared_again(tmp_path, uci_file, caplog):
    path = str(uci_file(300, seed=5))
    first = prepare(DataSpec(source=path), tmp_path)
    m = first.manifest
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    assert m["key"] == m.key and m["n_features"] == 90
    with pytest.raises(KeyError):
        m["scaler"]  # noqa: B018  (the typed fields only)

    # a cache the previous version wrote (its manifest held a "scaler"): prepared again, same key
    manifest = tmp_path / "prepared" / m.key / "manifest.json"
    old = {k: v for k, v in m.to_dict().items() if k not in ("encoding", "columns")}
    old.update(version=1, scaler={"mean": m.encoding.mean_, "scale": m.encoding.scale_})
    manifest.write_text(json.dumps(old))
    with caplog.at_level(logging.WARNING):
        again = prepare(DataSpec(source=path), tmp_path)
    assert "ignoring stale prepared data" in caplog.text
    assert again.manifest.key == m.key and again.manifest.version == MANIFEST_VERSION
    assert json.loads(manifest.read_text())["version"] == MANIFEST_VERSION
    for name in ARRAYS:
        assert getattr(again, name).tobytes() == getattr(first, name).tobytes()


# --------------------------------------------------------------------------- model.pt

CONFIG = {"hidden": [8]}


def _state_dict(n_features: int, n_classes: int) -> dict[str, torch.Tensor]:
    """Weights of a small MLP, built the way ``predict`` rebuilds it."""
    torch.manual_seed(0)
    cfg = predict.TrainConfig().with_params(CONFIG)
    return predict.build_model(cfg, n_features, n_classes).state_dict()


def _bundle(prepared, spec: DataSpec, **encoding) -> dict:
    m = prepared.manifest
    return {
        "state_dict": _state_dict(m.n_features, m.n_classes),
        "config": dict(CONFIG),
        "n_features": m.n_features,
        "n_classes": m.n_classes,
        "label_names": list(m.label_names),
        "plan": "tiny",
        "data_key": m.key,
        "data": spec.to_dict(),
        **encoding,
    }


def test_model_files_of_the_previous_version_still_predict(tmp_path, uci_file):
    """The previous version stored YearPredictionMSD's scaler (``scaler``: mean and scale)
    or a table's encoding (``features``); both load as today's encoding, predict what a
    model.pt of this version predicts, and a bundle without either is refused."""
    msd = DataSpec(source=str(uci_file(300, seed=2)))
    prepared = prepare(msd, tmp_path / "msd")
    enc = prepared.manifest.encoding
    rows = tmp_path / "rows.csv"  # 91 columns, the year first, no header
    rows.write_text(Path(msd.source).read_text().split("\n", 20)[-1])
    models = {
        "old": _bundle(prepared, msd, scaler={"mean": enc.mean_, "scale": enc.scale_}),
        "new": _bundle(prepared, msd, **input_encoding(prepared.manifest)),
    }
    tables = {}
    for name, bundle in models.items():
        torch.save(bundle, tmp_path / f"{name}.pt")
        _, loaded = predict.load_bundle(tmp_path / f"{name}.pt")
        assert loaded["file_format"] == "uci" and not predict.is_table_model(loaded)
        assert loaded["encoding"].numeric == FEATURE_NAMES
        tables[name] = predict.predict_table(tmp_path / f"{name}.pt", rows)
    pd.testing.assert_frame_equal(tables["old"], tables["new"])
    assert len(tables["new"]) == 280 and tables["new"].columns[0] == "prediction"

    csv = tmp_path / "t.csv"
    _frame().to_csv(csv, index=False)
    spec = DataSpec(source=str(csv), target="y")
    table = prepare(spec, tmp_path / "table")
    state = table.manifest.encoding.to_dict()
    old_state = {k: v for k, v in state.items() if k not in ("min_frequency", "max_levels", "seed")}
    old = _bundle(table, spec, features=old_state, target="y")
    torch.save(old, tmp_path / "old_table.pt")
    _, loaded = predict.load_bundle(tmp_path / "old_table.pt")
    assert predict.is_table_model(loaded)
    fitted = ("numeric", "categorical", "fill", "mean", "scale", "feature_names")
    assert {k: loaded["encoding"].to_dict()[k] for k in fitted} == {k: state[k] for k in fitted}
    new = _bundle(table, spec, **input_encoding(table.manifest))
    torch.save(new, tmp_path / "new_table.pt")
    pd.testing.assert_frame_equal(
        predict.predict_table(tmp_path / "old_table.pt", csv),
        predict.predict_table(tmp_path / "new_table.pt", csv),
    )

    del old["features"]
    torch.save(old, tmp_path / "neither.pt")
    with pytest.raises(DataError, match="damaged tuner model file .*no input encoding"):
        predict.load_bundle(tmp_path / "neither.pt")
