"""Preprocessing built for MLPs, in the one encoding: the robust scaler (median and
inter-quartile range, then smooth clipping) and missing-value indicators. Each is fitted on the
train rows only, round-trips as plain data (``model.pt`` loads with ``weights_only=True``) and
is applied by ``predict`` exactly as it was to the prepared rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.test_encoding import _bundle
from tuner import predict
from tuner.data.encoding import Encoding
from tuner.data.prepare import DataSpec, cache_key, prepare, split_indices
from tuner.data.spec import build_spec
from tuner.errors import DataError
from tuner.tune.final import input_encoding


def _skewed(tmp_path: Path, n: int = 400) -> tuple[Path, pd.DataFrame]:
    """A table with a heavy-tailed column, a column with gaps, a column that is mostly one
    value (inter-quartile range 0), a text column and a 2-class target."""
    rng = np.random.default_rng(7)
    counts = rng.lognormal(3, 2, size=n)
    gaps = rng.normal(size=n)
    gaps[::9] = np.nan
    mostly = np.where(rng.random(n) < 0.9, 5.0, rng.normal(5, 3, size=n))
    colour = rng.choice(["red", "green", "blue"], size=n)
    y = np.where(np.log(counts) + np.nan_to_num(gaps) > 3, "yes", "no")
    frame = pd.DataFrame({"counts": counts, "gaps": gaps, "mostly": mostly, "colour": colour,
                          "y": y})  # fmt: skip
    path = tmp_path / "skewed.csv"
    frame.to_csv(path, index=False)
    return path, pd.read_csv(path)


def _robust(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    """The robust scaler written out: (x - median) / IQR (half the range when the IQR is 0),
    then x / sqrt(1 + (x / 3)^2)."""
    median = np.median(train, axis=0)
    spread = np.quantile(train, 0.75, axis=0) - np.quantile(train, 0.25, axis=0)
    spread = np.where(spread == 0, (train.max(axis=0) - train.min(axis=0)) / 2, spread)
    z = (x - median) / spread
    return z / np.sqrt(1 + (z / 3) ** 2)


def test_the_robust_scaler_is_fitted_on_train_rows_only(tmp_path):
    path, frame = _skewed(tmp_path)
    prepared = prepare(DataSpec(source=str(path), target="y", scaler="robust"), tmp_path / "d")
    enc = prepared.encoding
    y = np.unique(frame["y"], return_inverse=True)[1]
    train, val, test = split_indices(y, "stratified", 42)
    cols = ["counts", "gaps", "mostly"]
    raw = frame[cols].to_numpy()
    fill = np.nanmedian(raw[train], axis=0)
    assert enc.fill_ == pytest.approx(list(fill))
    filled = np.where(np.isnan(raw), fill, raw)
    assert enc.center_ == pytest.approx(list(np.median(filled[train], axis=0)))
    # the mostly-constant column has an inter-quartile range of 0: half its range scales it
    iqr = np.quantile(filled[train], 0.75, axis=0) - np.quantile(filled[train], 0.25, axis=0)
    assert iqr[2] == 0 and enc.factor_[2] == pytest.approx(
        2 / (filled[train, 2].max() - filled[train, 2].min())
    )
    for part, idx in (("x_train", train), ("x_val", val), ("x_test", test)):
        expected = _robust(filled[idx], filled[train])
        np.testing.assert_allclose(getattr(prepared, part)[:, :3], expected, rtol=1e-6, atol=1e-6)
    # smooth clipping keeps every value inside (-3, 3), even the heavy tail's
    assert np.abs(prepared.x_train[:, :3]).max() < 3
    # statistics of all rows differ: the train rows' are the ones used
    assert enc.center_[0] != pytest.approx(float(np.median(filled[:, 0])))


def test_the_robust_scaler_handles_constant_columns_and_huge_values():
    frame = pd.DataFrame({"c": [4.0] * 10, "v": np.arange(10.0)})
    enc = Encoding(["c", "v"], scaler="robust").fit(frame)
    assert enc.factor_[0] == 0.0  # constant in train: encodes as 0 whatever comes later
    x = enc.transform(pd.DataFrame({"c": [1e308, -5.0], "v": [1e308, -1e308]}))
    np.testing.assert_array_equal(x, [[0, 3], [0, -3]])  # no error, no NaN: clipped


@pytest.mark.parametrize("scaler", ["standard", "quantile", "robust"])
def test_missing_indicators_are_fitted_on_train_rows_only(scaler):
    frame = pd.DataFrame({
        "a": [1.0, np.nan, 3.0, 4.0, 5.0, 6.0, np.nan, 8.0],
        "b": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, np.nan, 8.0],  # a gap only outside the train rows
        "k": list("xyxyxyxy"),
    })  # fmt: skip
    train = frame.iloc[:6]
    enc = Encoding(["a", "b"], ["k"], scaler=scaler, min_frequency=1, missing_indicators=True)
    x = enc.fit_transform(train, "t.csv")
    assert enc.indicators_ == ["a"]
    assert enc.feature_names == ["a", "b", "a=(missing)", "k=x", "k=y"]
    np.testing.assert_array_equal(x[:, 2], [0, 1, 0, 0, 0, 0])
    rest = enc.transform(frame.iloc[6:], "t.csv")
    np.testing.assert_array_equal(rest[:, 2], [1, 0])
    assert enc.fill_[0] == pytest.approx(np.nanmedian(train["a"]))
    # off (the default): the same columns as before, no indicator
    plain = Encoding(["a", "b"], ["k"], scaler=scaler, min_frequency=1)
    np.testing.assert_array_equal(plain.fit_transform(train), np.delete(x, 2, axis=1))
    assert "indicators" not in plain.to_dict() and "missing_indicators" not in plain.to_dict()


@pytest.mark.parametrize(
    ("scaler", "indicators"), [("robust", False), ("robust", True), ("quantile", True)]
)
def test_new_preprocessing_round_trips_and_predict_reproduces_the_test_rows(
    tmp_path, scaler, indicators
):
    path, frame = _skewed(tmp_path)
    spec = DataSpec(source=str(path), target="y", scaler=scaler, missing_indicators=indicators)
    prepared = prepare(spec, tmp_path / "d")
    enc = prepared.encoding
    assert enc.n_features == 3 + int(indicators) + 3
    state = enc.to_dict()
    assert json.loads(json.dumps(state)) == state
    bundle = _bundle(prepared, spec, **input_encoding(prepared.manifest))
    torch.save(bundle, tmp_path / "model.pt")
    model, loaded = predict.load_bundle(tmp_path / "model.pt")  # weights_only=True
    assert loaded["encoding"] == enc
    # the test rows, as a user would give them: the target left out, columns in another order
    y = np.unique(frame["y"], return_inverse=True)[1]
    _, _, test = split_indices(y, "stratified", 42)
    rows = tmp_path / "rows.csv"
    frame.iloc[test].drop(columns="y")[["colour", "mostly", "gaps", "counts"]].to_csv(
        rows, index=False
    )
    table = pd.read_csv(rows)
    np.testing.assert_array_equal(loaded["encoding"].transform(table), prepared.x_test)
    out = predict.predict_table(tmp_path / "model.pt", rows)
    with torch.no_grad():
        proba = torch.softmax(model(torch.from_numpy(prepared.x_test)), dim=1).numpy()
    np.testing.assert_allclose(out.filter(like="proba_").to_numpy(), proba, rtol=1e-6)


def test_the_new_options_are_data_spec_keys_and_change_the_cache_key_only_when_used(tmp_path):
    desc = tmp_path / "d.toml"
    desc.write_text('path = "t.csv"\ntarget = "y"\nscaler = "robust"\nmissing_indicators = true\n')
    spec = build_spec(str(desc), {})
    assert spec.scaler == "robust" and spec.missing_indicators is True
    assert spec.table_options()["missing_indicators"] is True
    plain = DataSpec(source="t.csv", target="y")
    assert "missing_indicators" not in plain.table_options()
    assert cache_key("abc", plain) == cache_key(
        "abc", DataSpec(source="t.csv", target="y", missing_indicators=False)
    )
    assert cache_key("abc", plain) != cache_key(
        "abc", DataSpec(source="t.csv", target="y", missing_indicators=True)
    )
    desc.write_text('path = "t.csv"\ntarget = "y"\nmissing_indicators = "yes"\n')
    with pytest.raises(DataError, match="missing_indicators: expected true or false"):
        build_spec(str(desc), {})
    with pytest.raises(DataError, match="scaler 'minmax'"):
        DataSpec(source="t.csv", target="y", scaler="minmax").check()


def test_the_command_line_flags_set_the_same_spec_keys(tmp_path):
    from tuner.cli import build_parser
    from tuner.commands import data_spec

    table = tmp_path / "t.csv"
    table.write_text("a,b,y\n1,2,x\n3,4,z\n")
    args = build_parser().parse_args(
        [
            "prepare",
            "--data",
            str(table),
            "--target",
            "y",
            "--scaler",
            "robust",
            "--missing-indicators",
            "--max-columns",
            "50",
        ]  # fmt: skip
    )
    spec = data_spec(args)
    assert (spec.scaler, spec.missing_indicators, spec.max_columns) == ("robust", True, 50)
    plain = data_spec(build_parser().parse_args(["prepare", "--data", str(table), "--target", "y"]))
    assert (plain.scaler, plain.missing_indicators, plain.max_columns) == (
        "standard",
        False,
        10_000,
    )
