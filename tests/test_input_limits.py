"""Hardening of the data layer: each bad table ends in one :class:`DataError` line, before
anything is written, and no file content is echoed beyond a bounded cell value.

Numbers refer to the issue "Hardening, round 2".
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tuner.data.prepare import DataSpec, prepare
from tuner.data.spec import build_spec
from tuner.data.table import read_table
from tuner.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def _rows(n: int = 200, sep: str = ",") -> str:
    """``n`` data rows of a numeric column, a text column and a 2-class target."""
    return "".join(f"{i * 0.5}{sep}{'ab'[i % 2]}{i % 3}{sep}{'yn'[i % 2]}\n" for i in range(n))


def _prepare_error(tmp_path: Path, **spec) -> str:
    with pytest.raises(DataError) as info:
        prepare(DataSpec(**spec), tmp_path / "data")
    assert not (tmp_path / "data" / "prepared").exists()
    message = str(info.value)
    assert "\n" not in message
    return message


# -- 3: a wide header -------------------------------------------------------------------------
def test_a_very_wide_header_is_refused_quickly_reading_the_header_alone(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"column{i}" for i in range(2_000_000)) + "\n")  # 17 MB, one line
    code = (
        "import time\n"
        "from tuner.data.table import read_table\n"
        "from tuner.errors import DataError\n"
        "t0 = time.perf_counter()\n"
        "try:\n"
        f"    read_table({str(path)!r})\n"
        "except DataError as err:\n"
        "    print(err)\n"
        "print(time.perf_counter() - t0)\n"
        "status = open('/proc/self/status').read().split('VmHWM:')[1]\n"
        "print(status.split()[0])  # the peak resident KiB of this program alone\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=True)  # fmt: skip
    message, seconds, rss_kib = proc.stdout.strip().splitlines()
    assert "more than 10,000 columns" in message and "max_columns" in message
    assert "column1" not in message
    assert float(seconds) < 5
    assert int(rss_kib) < 400 * 1024, rss_kib


def test_the_column_limit_is_a_data_spec_key(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,c,y\n" + "".join(f"{i / 2},{i / 3},{i / 4},{i % 2}\n" for i in range(200)))
    message = _prepare_error(tmp_path, source=str(path), target="y", max_columns=3)
    assert "more than 3 columns" in message
    desc = tmp_path / "d.toml"
    desc.write_text('path = "t.csv"\ntarget = "y"\nmax_columns = 4\n')
    spec = build_spec(str(desc), {})
    assert spec.max_columns == 4 and "max_columns" not in spec.table_options()
    assert prepare(spec, tmp_path / "ok").n_features == 3
    frame = pd.DataFrame({f"c{i}": [1.0, 2.0] for i in range(5)})
    frame.to_parquet(tmp_path / "t.parquet")
    with pytest.raises(DataError, match="has 5 columns, more than 4"):
        read_table(tmp_path / "t.parquet", max_columns=4)


# -- 6: a header one name shorter than the rows -----------------------------------------------
@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a,y\n" + "".join(f"{i},{i},{i % 2}\n" for i in range(200)), 2),  # header too short
        ("a,b,y\n" + "1,2,0\n" * 100 + "1,2\n" + "1,2,1\n" * 100, 102),  # one short row
        ("a,b,y\n" + "1,2,0\n" * 100 + '"1",2,1,4\n' + "1,2,1\n" * 100, 102),  # quoted, long row
    ],
    ids=["short header", "short row", "quoted long row"],
)
def test_a_field_count_mismatch_is_refused_naming_the_line(tmp_path, text, line):
    path = tmp_path / "t.csv"
    path.write_text(text)
    message = _prepare_error(tmp_path, source=str(path), target="y")
    assert f"line {line} has" in message, message


# -- 14: unnamed columns ----------------------------------------------------------------------
def test_an_unnamed_column_in_the_middle_is_data_and_a_trailing_comma_is_dropped(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    signal = rng.normal(size=n)
    y = np.where(signal > 0, "p", "q")
    middle = tmp_path / "middle.csv"
    middle.write_text("a,,y\n" + "".join(f"{i % 5},{s},{c}\n" for i, (s, c) in
                                         enumerate(zip(signal, y, strict=True))))  # fmt: skip
    m = prepare(DataSpec(source=str(middle), target="y"), tmp_path / "m").manifest
    assert m.columns.numeric == ("a", "Unnamed: 1") and not m.columns.dropped
    for name, text in {
        "both.csv": "a,b,y,\n" + "".join(f"{i},{s},{c},\n" for i, (s, c) in
                                         enumerate(zip(signal, y, strict=True))),
        "rows.csv": "a,b,y\n" + "".join(f"{i},{s},{c},\r\n" for i, (s, c) in
                                        enumerate(zip(signal, y, strict=True))),
    }.items():  # fmt: skip
        path = tmp_path / name
        path.write_text(text)
        table = read_table(path)
        assert list(table.frame.columns) == ["a", "b", "y"] and not table.unnamed, name
        m = prepare(DataSpec(source=str(path), target="y"), tmp_path / name).manifest
        assert m.columns.numeric == ("b",) and "a" in m.columns.dropped  # a: row numbers
    # an index written by DataFrame.to_csv is still not a feature
    first = tmp_path / "first.csv"
    pd.DataFrame({"b": signal, "y": y}).to_csv(first)
    assert read_table(first).unnamed == ("Unnamed: 0",)


# -- 7: decimal commas with a stray word late in the column -----------------------------------
def test_a_stray_word_in_a_decimal_comma_column_is_the_numeric_column_error(tmp_path):
    rows = [f"{i};{i % 7},{i % 3};{'ab'[i % 2]};{i % 2}" for i in range(1500)]
    rows[1200] = "1200;oops;a;0"
    path = tmp_path / "t.csv"
    path.write_text("n;x;c;y\n" + "\n".join(rows) + "\n")
    message = _prepare_error(tmp_path, source=str(path), target="y")
    assert "column 'x' is numeric but row 1201 holds 'oops'" in message
    # declared categorical, the column stays text and prepares
    prepare(DataSpec(source=str(path), target="y", categorical=("x",)), tmp_path / "cat")


# -- 9: a zip with metadata entries -----------------------------------------------------------
def test_a_zip_with_a_folder_entry_and_macos_metadata_reads_its_one_table(tmp_path):
    text = "a,c,y\n" + _rows()
    path = tmp_path / "t.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("export/", "")
        zf.writestr("export/t.csv", text)
        zf.writestr("__MACOSX/export/._t.csv", b"\x00\x05\x16\x07 binary")
    table = read_table(path)
    pd.testing.assert_frame_equal(table.frame, read_table_text(tmp_path, text))


def read_table_text(tmp_path: Path, text: str) -> pd.DataFrame:
    plain = tmp_path / "plain.csv"
    plain.write_text(text)
    return read_table(plain).frame


# -- 5, 19: Parquet list/struct columns and duplicate names -----------------------------------
def test_parquet_nested_columns_and_duplicate_names_are_one_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 200
    base = {"a": pa.array(np.arange(n, dtype=float)), "y": pa.array(["p", "q"] * (n // 2))}
    for name, extra in {
        "list": pa.array([[1, 2]] * n),
        "struct": pa.array([{"u": 1, "v": "w"}] * n),
    }.items():
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({**base, "tags": extra}), path)
        message = _prepare_error(tmp_path, source=str(path), target="y")
        assert "column 'tags' holds" in message and "not numbers or text" in message
    path = tmp_path / "dup.parquet"
    pq.write_table(pa.Table.from_arrays([base["a"], base["a"], base["y"]], names=["a", "a", "y"]),
                   path)  # fmt: skip
    assert "duplicate column name 'a' (columns 1 and 2)" in _prepare_error(
        tmp_path, source=str(path), target="y"
    )


# -- 12: UTF-16 -------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_a_utf16_file_is_read(tmp_path, encoding):
    text = "größe\tfarbe\tklasse\n" + _rows(sep="\t")
    path = tmp_path / "t.tsv"
    bom = {"utf-16-be": "\ufeff"}.get(encoding, "")
    path.write_bytes((bom + text).encode(encoding))
    table = read_table(path)
    assert list(table.frame.columns) == ["größe", "farbe", "klasse"] and len(table.frame) == 200
    m = prepare(DataSpec(source=str(path), target="klasse"), tmp_path / "d").manifest
    assert m.columns.numeric == ("größe",)


# -- 16: no file content echoed ---------------------------------------------------------------
def test_a_file_that_is_not_a_table_is_not_echoed(tmp_path):
    secret = "root:$6$Sup3rS3cretHash$abcdefghijklmnop:19000:0:99999:7:::"
    path = tmp_path / "shadow"
    path.write_text(secret + "\n" + "daemon:*:19000:0:99999:7:::\n" * 3)
    desc = tmp_path / "d.toml"
    desc.write_text(f'path = "{path}"\ntarget = "y"\n')
    with pytest.raises(DataError) as info:
        prepare(build_spec(str(desc), {}), tmp_path / "data")
    message = str(info.value)
    assert "Sup3rS3cret" not in message and "root:" not in message and "daemon" not in message
    assert "single column" in message
    # a long cell value in a real table is quoted bounded
    table = tmp_path / "t.csv"
    long = "x" * 500
    table.write_text("a,y\n" + "".join(f"{i},{i % 2}\n" for i in range(199)) + f"{long},1\n")
    message = _prepare_error(tmp_path, source=str(table), target="y")
    assert "row 200 holds 'xxxxxxxx" in message and long not in message and len(message) < 400


# -- 15: TOML descriptions --------------------------------------------------------------------
def test_toml_descriptions_need_a_target_take_a_bom_and_name_their_keys(tmp_path):
    (tmp_path / "t.csv").write_text("a,c,y\n" + _rows())
    desc = tmp_path / "d.toml"
    desc.write_text('path = "t.csv"\n')
    with pytest.raises(DataError, match=r"d.toml: 'target' \(the class column\) is required"):
        build_spec(str(desc), {})
    assert build_spec(str(desc), {"target": "y"}).target == "y"  # --target gives it
    desc.write_bytes(b"\xef\xbb\xbf" + b'path = "t.csv"\ntarget = "y"\n')
    assert build_spec(str(desc), {}).target == "y"
    for key, value in (("rows", -5), ("min_frequency", 0), ("max_levels", -1)):
        desc.write_text(f'path = "t.csv"\ntarget = "y"\n{key} = {value}\n')
        with pytest.raises(DataError) as info:
            build_spec(str(desc), {})
        assert str(info.value).startswith(f"{desc}: {key}: expected a positive integer"), info.value
        assert "--" not in str(info.value)
    desc.write_text('path = "t.csv"\ntarget = "y"\nrows = 50\n')
    with pytest.raises(DataError) as info:
        build_spec(str(desc), {})
    assert str(info.value) == f"{desc}: rows = 50: at least 100 rows are needed"
    assert build_spec(str(desc), {"rows": 150}).rows == 150  # --rows overrides the file's value
    with pytest.raises(DataError, match="^--rows 50: at least 100"):
        prepare(build_spec(str(desc), {"rows": 50}), tmp_path / "data")
    n = len((tmp_path / "t.csv").read_text().splitlines()) - 1
    desc.write_text(f'path = "t.csv"\ntarget = "y"\nrows = {n + 100}\n')
    with pytest.raises(DataError) as info:  # more rows than the file has: the key, not a flag
        prepare(build_spec(str(desc), {}), tmp_path / "data")
    assert str(info.value) == f"{desc}: rows = {n + 100}: the data has only {n} rows"


def test_reading_stays_fast_for_a_large_plain_table(tmp_path):
    """The field-count check is vectorized: 200,000 rows x 12 columns in well under the time
    pandas itself takes, quoted or not."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(200_000, 10)), columns=[f"f{i}" for i in range(10)])
    frame["c"] = rng.choice(["red", "green"], size=len(frame))
    frame["y"] = rng.integers(0, 2, size=len(frame))
    path = tmp_path / "big.csv"
    frame.to_csv(path, index=False)
    t0 = time.perf_counter()
    table = read_table(path)
    assert table.frame.shape == (200_000, 12)
    assert time.perf_counter() - t0 < 20
    buffer = io.StringIO()
    frame.iloc[:1000].to_csv(buffer, index=False, quoting=1)  # every field quoted
    quoted = tmp_path / "quoted.csv"
    quoted.write_text(buffer.getvalue())
    assert read_table(quoted).frame.shape == (1000, 12)


# -- 11: text in a numeric column of the separate test file -----------------------------------
TEST_FILE_VALUES = {
    "text": ("1.5,a1,y\n" * 6 + "oops,a1,n\n", "column 'a' is numeric but row 7 holds 'oops'"),
    "too large": ("1.5,a1,y\n" * 4 + "1e300,a1,n\n", "column 'a', row 5: 1e+300 is too large"),
    "infinite": ("1.5,a1,y\n" * 2 + "inf,a1,n\n", "column 'a', row 3: inf is not a finite number"),
}


@pytest.mark.parametrize(("rows", "expected"), TEST_FILE_VALUES.values(), ids=TEST_FILE_VALUES)
def test_a_bad_value_in_the_test_file_names_that_file_and_its_own_row(tmp_path, rows, expected):
    main = tmp_path / "main.csv"
    main.write_text("a,c,y\n" + _rows(300))
    test = tmp_path / "test.csv"
    test.write_text("a,c,y\n" + rows + "2.5,b2,n\n" * 5)
    message = _prepare_error(tmp_path, source=str(main), target="y", test=str(test))
    assert message.startswith(f"{test}: {expected}"), message


# -- 8: group splits with groups of very different sizes --------------------------------------
def _grouped(tmp_path: Path, sizes: list[int], rare_group: str | None = None) -> Path:
    """A table of groups ``g0, g1, ...`` of ``sizes`` rows, classes y/n (and ``z`` on every
    row of ``rare_group``)."""
    groups = np.concatenate([[f"g{i}"] * k for i, k in enumerate(sizes)])
    rng = np.random.default_rng(0)
    y = np.where(np.arange(len(groups)) % 2, "y", "n")
    if rare_group is not None:
        y[groups == rare_group] = "z"
    path = tmp_path / "grouped.csv"
    pd.DataFrame({"x": rng.normal(size=len(groups)), "g": groups, "y": y}).to_csv(path, index=False)
    return path


def test_a_group_split_warns_about_lopsided_parts_and_refuses_tiny_ones(tmp_path, caplog):
    path = _grouped(tmp_path, [540] + [5] * 12)  # one group holds 90% of the rows
    message = _prepare_error(tmp_path, source=str(path), target="y", split="group",
                             split_column="g")  # fmt: skip
    assert message == (
        f"{path}: group column 'g' splits the rows into train 45, val 545, test 10: train needs "
        "at least 70 rows (a few groups hold most rows; use more, smaller groups or --split "
        "stratified)"
    )
    path = _grouped(tmp_path, [200] + [20] * 20)
    with caplog.at_level("WARNING", logger="tuner.data.split"):
        prepared = prepare(DataSpec(source=str(path), target="y", split="group", split_column="g"),
                           tmp_path / "data")  # fmt: skip
    m = prepared.manifest
    assert (m.n_train, m.n_val, m.n_test) == (280, 60, 260)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        f"{path}: group column 'g' splits the rows into train 280, val 60, test 260, far from "
        "70/15/15 (groups of very different sizes)"
    ]
    caplog.clear()
    path = _grouped(tmp_path, [10] * 40)  # even groups: no word
    with caplog.at_level("WARNING", logger="tuner.data.split"):
        prepare(DataSpec(source=str(path), target="y", split="group", split_column="g"),
                tmp_path / "data2")  # fmt: skip
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_a_group_split_refuses_a_class_that_only_validation_or_test_has(tmp_path):
    path = _grouped(tmp_path, [10] * 40, rare_group="g12")  # g12 lands in test
    message = _prepare_error(tmp_path, source=str(path), target="y", split="group",
                             split_column="g")  # fmt: skip
    assert message == (
        f"{path}: group column 'g' leaves class(es) 'z' out of the train rows, but validation "
        "or test has them; use more, smaller groups or --split stratified"
    )


# -- 10, 17: predict's output and a hand-edited model.pt --------------------------------------
def _model(tmp_path: Path, labels: list[str]) -> tuple[Path, Path, dict]:
    import torch

    from tests.test_encoding import _bundle
    from tuner.tune.final import input_encoding

    rng = np.random.default_rng(3)
    n = 300
    frame = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n),
                          "c": rng.choice(["u", "v"], size=n),
                          "y": rng.choice(labels, size=n)})  # fmt: skip
    csv = tmp_path / "t.csv"
    frame.to_csv(csv, index=False)
    spec = DataSpec(source=str(csv), target="y")
    prepared = prepare(spec, tmp_path / "data")
    bundle = _bundle(prepared, spec, **input_encoding(prepared.manifest))
    path = tmp_path / "model.pt"
    torch.save(bundle, path)
    return path, csv, bundle


def test_predict_neutralises_formulas_in_class_names(tmp_path):
    from tuner.predict import csv_safe, predict_table

    labels = ['=HYPERLINK("http://x","y")', "+cmd|' /C calc'!A0", "@SUM(1+1)", "-2", "ok"]
    model, csv, _ = _model(tmp_path, labels)
    out = predict_table(model, csv)
    assert set(out["prediction"]) <= {"'" + v for v in labels[:3]} | {"-2", "ok"}
    assert set(out["prediction"]) & {"'" + v for v in labels[:3]}
    text = out.to_csv(index=False)
    for line in text.splitlines():
        for cell in line.split(","):
            assert not cell.startswith(("=", "+", "@", "\t", "\r")), cell
    assert [csv_safe(v) for v in ("-1.5", "+3", "\tx", "\rx", "-x", "a=b")] == [
        "-1.5",
        "+3",
        "'\tx",
        "'\rx",
        "'-x",
        "a=b",
    ]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda b: b.__setitem__("label_names", b["label_names"][:1]), "label_names"),
        (lambda b: b.__setitem__("label_names", [1, 2]), "label_names"),
        (lambda b: b.__setitem__("n_classes", "2"), "n_classes"),
        (lambda b: b["encoding"].__setitem__("numeric", "ab"), "numeric"),
        (lambda b: b["encoding"].__setitem__("mean", [float("nan"), 1.0]), "mean"),
        (lambda b: b["encoding"].__setitem__("fill", "ab"), "fill"),
        (lambda b: b.__setitem__("data", 5), "data"),
        (lambda b: b["encoding"]["categorical"][0].__setitem__("levels", ["u", "u"]), "levels"),
    ],
    ids=[
        "short labels",
        "int labels",
        "str n_classes",
        "str numeric",
        "nan mean",
        "str fill",
        "int data",
        "repeated levels",
    ],  # fmt: skip
)
def test_a_hand_edited_model_file_is_one_damaged_line(tmp_path, edit, expected):
    import torch

    from tuner.predict import predict_table

    model, csv, bundle = _model(tmp_path, ["p", "q"])
    edit(bundle)
    torch.save(bundle, model)
    with pytest.raises(DataError, match=f"a damaged tuner model file .*{expected}"):
        predict_table(model, csv)


# -- 13: FIFOs, link loops, stdin ------------------------------------------------------------
def test_data_that_is_not_a_regular_file_is_refused_without_opening_it(tmp_path):
    fifo = tmp_path / "t.csv"
    os.mkfifo(fifo)  # no writer: opening it would block
    loop = tmp_path / "loop.csv"
    os.symlink(tmp_path / "other.csv", loop)
    os.symlink(loop, tmp_path / "other.csv")
    t0 = time.perf_counter()
    message = _prepare_error(tmp_path, source=str(fifo), target="y")
    assert message == f"{fifo}: not a regular file (a FIFO, device or socket): pass a file on disk"
    message = _prepare_error(tmp_path, source=str(fifo))  # the UCI format
    assert message.startswith(f"{fifo}: not a regular file"), message
    (tmp_path / "main.csv").write_text("a,c,y\n" + _rows())
    message = _prepare_error(tmp_path, source=str(tmp_path / "main.csv"), target="y",
                             test=str(fifo))  # fmt: skip
    assert message.startswith(f"{fifo}: not a regular file"), message
    fifo_toml = tmp_path / "d.toml"
    os.mkfifo(fifo_toml)
    with pytest.raises(DataError, match="d.toml: not a regular file"):
        build_spec(str(fifo_toml), {})
    assert _prepare_error(tmp_path, source=str(loop), target="y") == f"{loop}: symbolic link loop"
    assert _prepare_error(tmp_path, source=str(loop)) == f"{loop}: symbolic link loop"
    with pytest.raises(DataError, match="^.*missing.csv: no such file$"):
        read_table(tmp_path / "missing.csv")
    assert time.perf_counter() - t0 < 10


def test_predict_reads_stdin_a_fifo_and_a_pipe_once(tmp_path, monkeypatch, capsys):
    import threading

    from tuner.cli import main

    model, csv, _ = _model(tmp_path, ["p", "q"])
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--input", str(csv)]) == 0
    reference = capsys.readouterr().out
    data = csv.read_bytes()

    class Stdin:
        buffer = io.BytesIO(data)

    monkeypatch.setattr(sys, "stdin", Stdin)
    assert main(["predict", "--model", str(model), "--input", "-"]) == 0
    assert capsys.readouterr().out == reference

    def write(target: str | int) -> threading.Thread:
        def run() -> None:
            with open(target, "wb") as fh:
                fh.write(data)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    fifo = tmp_path / "rows.csv"
    os.mkfifo(fifo)
    thread = write(str(fifo))
    assert main(["predict", "--model", str(model), "--input", str(fifo)]) == 0
    thread.join(5)
    assert capsys.readouterr().out == reference
    r, w = os.pipe()  # what <(cat rows.csv) passes: /dev/fd/N
    thread = write(w)
    try:
        assert main(["predict", "--model", str(model), "--input", f"/dev/fd/{r}"]) == 0
    finally:
        thread.join(5)
        os.close(r)
    assert capsys.readouterr().out == reference


# -- 18: feature-name collisions --------------------------------------------------------------
def test_encoded_names_are_unique_and_user_levels_stay_apart_from_placeholders(tmp_path):
    from tuner.data.encoding import Encoding

    n = 200
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "color=red": rng.normal(size=n),
        "color": np.array(["red", "blue", "(missing)", "(other)", None] * (n // 5), dtype=object),
        "y": np.array(["p", "q"] * (n // 2)),
    })  # fmt: skip
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    prepared = prepare(DataSpec(source=str(path), target="y"), tmp_path / "data")
    enc = prepared.manifest.encoding
    names = enc.feature_names
    assert names == ["color=red", 'color="(missing)"', 'color="(other)"', "color=(missing)",
                     "color=blue", "color=red#2"]  # fmt: skip
    x = prepared.x_train
    assert x.shape[1] == 6 and (x[:, 1:].sum(axis=1) == 1).all()  # one level per row
    assert (x[:, 1:].sum(axis=0) > 0).all()  # literal and placeholder levels apart
    state = enc.to_dict()
    assert Encoding.from_dict(state) == enc
    state["feature_names"] = [name.removesuffix("#2") for name in names]  # an earlier version's
    assert Encoding.from_dict(state).feature_names == names


# -- 21: class names that differ only in how a number is written ------------------------------
def test_classes_spelled_as_different_numbers_stay_apart_with_a_warning(caplog):
    from tuner.data.target import encode

    with caplog.at_level("WARNING", logger="tuner.data.target"):
        labels = encode(pd.Series(["1", "1.0", "'1'", "2", "x"]), "k", "t.csv", None)
    assert labels.names == ("'1'", "1", "1.0", "2", "x")  # the documented rule: as they are
    assert "the same number written differently" in caplog.text and "'1.0'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="tuner.data.target"):
        encode(pd.Series(["1", "2", "x"]), "k", "t.csv", None)
    assert not caplog.text
