"""Tests for tuner.data.uci: reading UCI-format files, clear errors, the UCI download path."""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_rows, uci_lines, write_uci_text
from tuner.data import uci as sources
from tuner.data import uci_download as download
from tuner.data import uci_format
from tuner.data.prepare import decade_labels
from tuner.data.uci import load_source, read_uci_file
from tuner.errors import DataError, TunerError

REAL_DECADES = {
    1930: 5,
    1940: 4,
    1950: 8,
    1960: 8,
    1970: 96,
    1980: 70,
    1990: 264,
    2000: 689,
    2010: 32,
}


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def read_error(path: Path) -> str:
    with pytest.raises(DataError) as info:
        read_uci_file(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert isinstance(info.value, TunerError)
    return message


# --------------------------------------------------------------------------- happy paths


def test_reads_generated_file(uci_file):
    years, features = make_rows(300)
    path = uci_file(300)
    raw = read_uci_file(path)
    assert raw.years.dtype == np.int64 and raw.features.dtype == np.float64
    assert raw.features.shape == (300, 90)
    np.testing.assert_array_equal(raw.years, years)
    np.testing.assert_array_equal(raw.features, features)  # repr floats round-trip exactly
    assert raw.source == str(path.resolve())
    assert raw.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == sources.file_sha256(path)


def test_txt_csv_zip_identical(tmp_path: Path):
    years, features = make_rows(200, seed=3)
    text = "".join(line + "\n" for line in uci_lines(years, features)).encode()
    txt = tmp_path / "a.txt"
    txt.write_bytes(text)
    csv = tmp_path / "a.csv"
    csv.write_bytes(text)
    flat = make_zip(tmp_path / "flat.zip", {"YearPredictionMSD.txt": text})
    nested = make_zip(
        tmp_path / "nested.zip",
        {"README.md": b"hello", "deep/dir/YearPredictionMSD.txt": text, "other.csv": b"1,2\n"},
    )
    single = make_zip(tmp_path / "single.zip", {"stuff/mine.csv": text, "notes.md": b"x"})
    results = [read_uci_file(p) for p in (txt, csv, flat, nested, single)]
    for raw in results:
        np.testing.assert_array_equal(raw.years, results[0].years)
        np.testing.assert_array_equal(raw.features, results[0].features)
        # For a zip the hash is that of the data member, so it equals the plain file's.
        assert raw.sha256 == results[0].sha256 == hashlib.sha256(text).hexdigest()
    assert sources.file_sha256(nested) == results[0].sha256


def test_tolerated_variants(tmp_path: Path):
    """CRLF line ends, blank lines, a missing final newline and a BOM are all fine."""
    years, features = make_rows(50)
    lines = uci_lines(years, features)
    text = "\ufeff" + "\r\n".join(lines[:20]) + "\r\n\r\n   \r\n" + "\n".join(lines[20:])
    path = tmp_path / "variants.txt"
    path.write_text(text, encoding="utf-8")
    raw = read_uci_file(path)
    np.testing.assert_array_equal(raw.years, years)
    np.testing.assert_array_equal(raw.features, features)


def test_old_mac_line_ends(tmp_path: Path):
    years, features = make_rows(30)
    lines = uci_lines(years, features)
    path = tmp_path / "cr.txt"
    path.write_bytes("\r".join(lines).encode())
    np.testing.assert_array_equal(read_uci_file(path).features, features)
    lines[11] += ",1"
    path.write_bytes("\r".join(lines).encode())
    assert f"{path}: line 12: expected 91" in read_error(path)


def test_binary_file(tmp_path: Path):
    path = tmp_path / "data.txt"
    path.write_bytes(gzip.compress("".join(line + "\n" for line in G).encode()))
    message = read_error(path)
    assert message.startswith(f"{path}: line 1: not plain text"), message


def test_real_sample(real_head: Path):
    raw = read_uci_file(real_head)
    assert raw.features.shape == (1176, 90)
    assert raw.years[0] == 2001
    assert raw.features[0, 0] == pytest.approx(49.94357, abs=1e-9)
    assert raw.years.min() >= 1922 and raw.years.max() <= 2011
    decades, counts = np.unique(raw.years // 10 * 10, return_counts=True)
    assert dict(zip(decades.tolist(), counts.tolist(), strict=True)) == REAL_DECADES
    labels = decade_labels(raw.years)
    assert np.bincount(labels, minlength=10).tolist() == [0, 5, 4, 8, 8, 96, 70, 264, 689, 32]


def test_synthetic_write_uci_round_trip(tmp_path: Path):
    synthetic = pytest.importorskip("tuner.data.synthetic")
    years, features = synthetic.generate(rows=400, seed=5)
    path = tmp_path / "synth.txt"
    synthetic.write_uci(path, years, features)
    raw = read_uci_file(path)
    np.testing.assert_array_equal(raw.years, years)
    np.testing.assert_allclose(raw.features, features, rtol=0, atol=5e-6)  # %.5f


def test_synthetic_source(tmp_path: Path, monkeypatch):
    synthetic = pytest.importorskip("tuner.data.synthetic")
    real_generate = synthetic.generate
    calls = []

    def small(rows: int = 515_345, seed: int = 0):
        calls.append((rows, seed))
        return real_generate(rows=300, seed=seed)

    monkeypatch.setattr(synthetic, "generate", small)
    a = load_source("synthetic", tmp_path, synthetic_seed=1)
    b = load_source("synthetic", tmp_path, synthetic_seed=2)
    assert calls == [(515_345, 1), (515_345, 2)]  # full size asked for
    assert a.source == "synthetic" and a.features.shape == (300, 90)
    assert a.years.dtype == np.int64 and a.features.dtype == np.float64
    assert a.sha256 != b.sha256
    assert load_source("synthetic", tmp_path, synthetic_seed=1).sha256 == a.sha256
    assert not (tmp_path / "raw").exists()


def test_a_synthetic_subsample_is_generated_at_its_size_as_synthesize_writes_it(tmp_path: Path):
    """``--data synthetic --rows N`` (stratified) generates N rows, not the full 515,345 it
    would otherwise subsample: the data of ``synthesize --rows N``, split the same way."""
    from tuner.data import synthetic
    from tuner.data.prepare import prepare
    from tuner.data.spec import build_spec

    generated = prepare(build_spec("synthetic", {"rows": 600}), tmp_path / "a")
    assert generated.manifest.rows == 600 and generated.manifest.n_rows_total == 600
    years, features = synthetic.generate(rows=600, seed=0)
    file = tmp_path / "msd_600.txt"
    synthetic.write_uci(file, years, features)
    written = prepare(build_spec(str(file), {"rows": 600}), tmp_path / "b")
    for part in ("train", "val", "test"):
        a, b = (getattr(p, f"y_{part}") for p in (generated, written))
        np.testing.assert_array_equal(a, b)
        a, b = (getattr(p, f"x_{part}") for p in (generated, written))
        np.testing.assert_allclose(a, b, atol=1e-3)  # the file holds 5 decimals
    other = prepare(build_spec("synthetic", {"rows": 700}), tmp_path / "a")
    assert other.manifest.source_sha256 != generated.manifest.source_sha256  # no size mix-up


# --------------------------------------------------------------------------- bad input


def _good(n: int = 10) -> list[str]:
    return uci_lines(*make_rows(n, seed=7))


def _replace_field(line: str, column: int, value: str) -> str:
    fields = line.split(",")
    fields[column - 1] = value
    return ",".join(fields)


def _case(lines: list[str], lineno: int, new: str) -> list[str]:
    lines = list(lines)
    lines[lineno - 1] = new
    return lines


G = _good()
BAD_CASES = {
    # name: (lines, expected line number, substrings)
    "header": (["year," + ",".join(f"f{i}" for i in range(90)), *G], 1, ["header"]),
    "semicolons": ([line.replace(",", ";") for line in G], 1, ["found 1", "semicolons"]),
    "tabs": ([line.replace(",", "\t") for line in G], 1, ["found 1", "tabs"]),
    "spaces": ([line.replace(",", " ") for line in G], 1, ["found 1", "spaces"]),
    "too many": (_case(G, 7, G[6] + ",1.5"), 7, ["expected 91 comma-separated values, found 92"]),
    "trailing comma": (_case(G, 7, G[6] + ","), 7, ["found 92"]),
    "too few": (_case(G, 7, G[6].rsplit(",", 1)[0]), 7, ["expected 91", "found 90"]),
    "too few first": (_case(G, 1, G[0].rsplit(",", 1)[0]), 1, ["found 90"]),
    "too many first": (_case(G, 1, G[0] + ",3"), 1, ["found 92"]),
    "non-numeric": (_case(G, 5, _replace_field(G[4], 10, "abc")), 5, ["column 10", "'abc'"]),
    "nan": (_case(G, 6, _replace_field(G[5], 3, "nan")), 6, ["column 3", "finite"]),
    "NA": (_case(G, 6, _replace_field(G[5], 3, "NA")), 6, ["column 3", "not a number"]),
    "inf": (_case(G, 8, _replace_field(G[7], 91, "-inf")), 8, ["column 91", "finite"]),
    "empty field": (_case(G, 4, _replace_field(G[3], 50, "")), 4, ["column 50", "empty"]),
    "year fraction": (
        _case(G, 4, _replace_field(G[3], 1, "2001.5")),
        4,
        ["impossible year", "2001.5"],
    ),
    "year zero": (_case(G, 9, _replace_field(G[8], 1, "0")), 9, ["impossible year 0"]),
    "year 3011": (_case(G, 10, _replace_field(G[9], 1, "3011")), 10, ["impossible year 3011"]),
    "year text": (_case(G, 3, _replace_field(G[2], 1, "MMI")), 3, ["year", "not a number"]),
    "blank lines counted": ((G[:3] + ["", "  "] + _case(G[3:], 2, G[4] + ",1")), 7, ["found 92"]),
}


@pytest.mark.parametrize("block", [20_000, 3])
@pytest.mark.parametrize("name", list(BAD_CASES))
def test_bad_lines(tmp_path: Path, monkeypatch, name: str, block: int):
    # block=3: the validator's pandas-checked blocks end inside the data (boundary handling).
    monkeypatch.setattr(uci_format, "_BLOCK_LINES", block)
    lines, lineno, needles = BAD_CASES[name]
    path = write_uci_text(tmp_path / "bad.txt", lines)
    message = read_error(path)
    assert message.startswith(f"{path}: line {lineno}: "), message
    for needle in needles:
        assert needle in message, message


def test_bad_line_reported_first_only(tmp_path: Path):
    lines = _case(_case(G, 3, _replace_field(G[2], 5, "x")), 8, G[7] + ",1")
    message = read_error(write_uci_text(tmp_path / "two.txt", lines))
    assert ": line 3: " in message and "line 8" not in message


@pytest.mark.parametrize("block", [20_000, 64])
def test_late_bad_line_in_larger_file(tmp_path: Path, monkeypatch, block: int):
    monkeypatch.setattr(uci_format, "_BLOCK_LINES", block)
    lines = uci_lines(*make_rows(3000, seed=1))
    lines[2499] = _replace_field(lines[2499], 20, "nan")
    lines[2799] = _replace_field(lines[2799], 1, "1850")
    lines.insert(100, "")  # blank lines shift line numbers but not data rows
    message = read_error(write_uci_text(tmp_path / "late.txt", lines))
    assert ": line 2501: " in message and "column 20" in message, message
    del lines[2500]
    message = read_error(write_uci_text(tmp_path / "late.txt", lines))
    assert ": line 2800: impossible year 1850" in message, message


def test_message_when_validator_finds_nothing(tmp_path: Path, monkeypatch):
    """Should pandas reject something the validator accepts, the error is still one line."""
    monkeypatch.setattr(uci_format, "first_problem", lambda lines, start_row=0: None)
    path = write_uci_text(tmp_path / "odd.txt", _case(G, 2, G[1] + ",1"))
    message = read_error(path)
    assert message.startswith(f"{path}: not in the UCI YearPredictionMSD format ("), message


@pytest.mark.parametrize("content", [b"", b"\n\n  \n\r\n"])
def test_empty_file(tmp_path: Path, content: bytes):
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    message = read_error(path)
    assert str(path) in message and "empty" in message


def test_missing_file_and_directory(tmp_path: Path):
    missing = tmp_path / "nope.txt"
    message = read_error(missing)
    assert str(missing) in message and "no such file" in message
    with pytest.raises(DataError, match="nope.zip: no such file"):
        load_source(str(tmp_path / "nope.zip"), tmp_path)
    (tmp_path / "dir.txt").mkdir()
    assert "directory" in read_error(tmp_path / "dir.txt")


def test_unsupported_extension(tmp_path: Path):
    path = tmp_path / "data.json"
    path.write_text("{}")
    message = read_error(path)
    assert "data.json" in message and "'.json'" in message and ".zip" in message


def test_zip_without_data_file(tmp_path: Path):
    path = make_zip(tmp_path / "nodata.zip", {"README.md": b"x", "data/values.bin": b"\0"})
    message = read_error(path)
    assert "nodata.zip" in message and "YearPredictionMSD.txt" in message
    assert "README.md" in message and "data/values.bin" in message


def test_zip_with_several_candidates(tmp_path: Path):
    path = make_zip(tmp_path / "two.zip", {"a.txt": b"1", "b.csv": b"2"})
    message = read_error(path)
    assert "two.zip" in message and "a.txt" in message and "b.csv" in message


def test_zip_with_bad_line(tmp_path: Path):
    text = "".join(line + "\n" for line in _case(G, 7, G[6] + ",2")).encode()
    path = make_zip(tmp_path / "bad.zip", {"x/YearPredictionMSD.txt": text})
    message = read_error(path)
    assert message.startswith(f"{path}/x/YearPredictionMSD.txt: line 7: "), message


def test_corrupt_zip(tmp_path: Path):
    text = "".join(line + "\n" for line in uci_lines(*make_rows(500))).encode()
    good = make_zip(tmp_path / "good.zip", {"YearPredictionMSD.txt": text})
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    renamed = tmp_path / "renamed.zip"
    renamed.write_text("2001,1.0,2.0\n")
    for path in (truncated, renamed):
        message = read_error(path)
        assert path.name in message and "corrupt zip" in message
    # Damage inside the compressed member (the directory still reads): CRC or zlib error.
    data = bytearray(good.read_bytes())
    offset = 30 + len("YearPredictionMSD.txt") + 200
    data[offset : offset + 64] = bytes(64)
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(bytes(data))
    assert "damaged.zip" in read_error(damaged)


# --------------------------------------------------------------------------- UCI download


@pytest.fixture
def uci_zip(tmp_path: Path, monkeypatch) -> tuple[Path, bytes]:
    """A small zip in the UCI layout, served via a file:// URL; the expected hash is its own."""
    text = "".join(line + "\n" for line in uci_lines(*make_rows(250, seed=9))).encode()
    served = tmp_path / "served"
    served.mkdir()
    path = make_zip(served / "YearPredictionMSD.txt.zip", {"YearPredictionMSD.txt": text})
    monkeypatch.setattr(download, "UCI_URLS", (path.as_uri(),))
    monkeypatch.setattr(download, "UCI_TXT_SHA256", hashlib.sha256(text).hexdigest())
    return path, text


def test_uci_download_and_cache(tmp_path: Path, uci_zip, monkeypatch):
    _, text = uci_zip
    data_dir = tmp_path / "data"
    raw = load_source("uci", data_dir)
    target = data_dir / "raw" / "YearPredictionMSD.txt"
    assert raw.source == "uci" and raw.features.shape == (250, 90)
    assert raw.sha256 == download.UCI_TXT_SHA256
    assert target.read_bytes() == text
    assert sorted(p.name for p in (data_dir / "raw").iterdir()) == [
        "YearPredictionMSD.txt",
        "YearPredictionMSD.txt.sha256",
    ]  # no temp files, no zip left

    # Second use: no download and no re-hash (the sidecar remembers the verification).
    def fail(*args, **kwargs):
        raise AssertionError("should not be called")

    monkeypatch.setattr(download, "UCI_URLS", ("file:///nonexistent/x.zip",))
    monkeypatch.setattr(download, "file_sha256", fail)
    again = load_source("uci", data_dir)
    np.testing.assert_array_equal(again.features, raw.features)

    # A changed mtime means re-verifying (the content is the same, so no download).
    monkeypatch.undo()
    monkeypatch.setattr(download, "UCI_URLS", ("file:///nonexistent/x.zip",))
    monkeypatch.setattr(download, "UCI_TXT_SHA256", hashlib.sha256(text).hexdigest())
    hashed = []
    real_hash = download.file_sha256
    monkeypatch.setattr(download, "file_sha256", lambda p: hashed.append(p) or real_hash(p))
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    load_source("uci", data_dir)
    assert hashed == [target]


def test_uci_tries_urls_in_turn(tmp_path: Path, uci_zip, monkeypatch):
    path, _ = uci_zip
    monkeypatch.setattr(download, "UCI_URLS", ((tmp_path / "missing.zip").as_uri(), path.as_uri()))
    assert load_source("uci", tmp_path / "data").features.shape == (250, 90)


def test_uci_replaces_unverified_local_copy(tmp_path: Path, uci_zip):
    _, text = uci_zip
    target = write_uci_text(tmp_path / "data" / "raw" / "YearPredictionMSD.txt", G)
    raw = load_source("uci", tmp_path / "data")
    assert raw.features.shape == (250, 90) and target.read_bytes() == text


def test_uci_checksum_mismatch(tmp_path: Path, uci_zip, monkeypatch):
    _, text = uci_zip
    monkeypatch.setattr(download, "UCI_TXT_SHA256", "0" * 64)
    with pytest.raises(DataError) as info:
        load_source("uci", tmp_path / "data")
    message = str(info.value)
    assert "0" * 64 in message and hashlib.sha256(text).hexdigest() in message
    assert "\n" not in message
    assert list((tmp_path / "data" / "raw").iterdir()) == []  # bad file deleted


def test_uci_unreachable(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(download, "UCI_URLS", ((tmp_path / "gone.zip").as_uri(),))
    with pytest.raises(DataError) as info:
        load_source("uci", tmp_path / "data")
    message = str(info.value)
    assert message.startswith("cannot download the UCI YearPredictionMSD data (")
    assert "--data PATH" in message and "--data synthetic" in message and "\n" not in message
    assert list((tmp_path / "data" / "raw").iterdir()) == []


def test_uci_offline(tmp_path: Path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match=r"name resolution.*--data synthetic"):
        load_source("uci", tmp_path / "data")


def test_uci_download_not_a_zip(tmp_path: Path, monkeypatch):
    page = tmp_path / "error.html"
    page.write_text("<html>Service unavailable</html>")
    monkeypatch.setattr(download, "UCI_URLS", (page.as_uri(),))
    with pytest.raises(DataError, match="cannot download.*corrupt zip"):
        load_source("uci", tmp_path / "data")
