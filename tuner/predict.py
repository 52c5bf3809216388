"""``predict``: classes for new rows, from a saved ``model.pt`` alone.

``model.pt`` holds the weights, the configuration, the class names and the fitted
:class:`~tuner.data.encoding.Encoding` of the data the model was trained on (plain lists: it
loads with ``torch.load(weights_only=True)``). Every model predicts the same way: read the
input rows as a table, encode them with the stored encoding, apply the model. Only reading
depends on how the training rows were written (the bundle's ``file_format``):

* a model trained on a table reads a table with a header (the formats of
  :mod:`tuner.data.table`): columns are matched by name in any order, the target column is
  ignored if present;
* a model trained on YearPredictionMSD (the UCI format) reads comma-separated rows without a
  header, either the 90 feature columns or 91 in the UCI layout (the year first, ignored).

The result is a table in the input's row order: a ``prediction`` column with the class names and
one ``proba_<class>`` column per class. A class name that a spreadsheet would read as a formula
(``=HYPERLINK(...)``, ``+cmd|...``, ``@SUM(...)``) is written with a leading ``'``
(:func:`csv_safe`).

``model.pt`` files written by earlier versions (a table's encoding under ``features``,
YearPredictionMSD's scaler statistics under ``scaler``) still load: :func:`load_bundle` converts
them to the encoding they describe.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tuner.data.encoding import TABLE_WORDING, Encoding, Wording
from tuner.errors import DataError
from tuner.train.config import TrainConfig
from tuner.train.model import build_model

_BATCH = 16384
_KEYS = ("state_dict", "config", "n_features", "n_classes", "label_names")


def load_bundle(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained model of ``model.pt`` (in eval mode) and the bundle's fields, with
    ``bundle["encoding"]`` the fitted :class:`~tuner.data.encoding.Encoding` and
    ``bundle["file_format"]`` how its input rows are written (``"table"`` or ``"uci"``).
    A :class:`~tuner.errors.DataError` (one line) for a missing, foreign or damaged file."""
    if not path.is_file():
        raise DataError(f"{path}: no such model file (run `python -m tuner final` first)")
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise DataError(f"{path}: not a tuner model file ({type(err).__name__})") from None
    if not isinstance(bundle, dict) or any(k not in bundle for k in _KEYS):
        raise DataError(f"{path}: not a tuner model file (a torch file without tuner's fields)")
    try:
        bundle = _upgrade(bundle)
        _check_fields(bundle)
        encoding = Encoding.from_dict(bundle["encoding"])
        if bundle["file_format"] not in _READERS:
            raise ValueError(f"unknown file_format {bundle['file_format']!r}")
        if encoding.n_features != int(bundle["n_features"]):
            raise ValueError(
                f"the encoding makes {encoding.n_features} features, the model takes "
                f"{bundle['n_features']}"
            )
        if bundle.get("target") is not None and bundle["target"] in encoding.required_columns:
            raise ValueError(f"the target {bundle['target']!r} is also a feature")
        cfg = TrainConfig().with_params(bundle["config"])
        n_features, n_classes = int(bundle["n_features"]), int(bundle["n_classes"])
        model = build_model(cfg, n_features, n_classes, bundle.get("fitted"))
        model.load_state_dict(bundle["state_dict"])
    except Exception as err:  # weights or an encoding that do not fit the stored configuration
        text = " ".join(str(err).split())[:160]
        raise DataError(f"{path}: a damaged tuner model file ({text})") from None
    model.eval()
    return model, {**bundle, "encoding": encoding}


def _check_fields(bundle: dict[str, Any]) -> None:
    """The types and sizes of a bundle's fields (a hand-edited file must not predict
    silently wrong): ``ValueError`` naming the first that is wrong."""

    def count(name: str) -> int:
        value = bundle[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
        return value

    count("n_features")
    n_classes = count("n_classes")
    names = bundle["label_names"]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ValueError("label_names must be a list of class names (strings)")
    if len(names) != n_classes or len(set(names)) != len(names):
        raise ValueError(f"label_names: {len(names)} distinct names for {n_classes} classes")
    for name, kind in (("config", dict), ("encoding", dict), ("state_dict", dict)):
        if not isinstance(bundle[name], kind):
            raise ValueError(f"{name} must be a {kind.__name__}")
    if not isinstance(bundle.get("data") or {}, dict):
        raise ValueError("data must be a dict")
    if not isinstance(bundle.get("target"), (str, type(None))):
        raise ValueError("target must be a column name")
    if not isinstance(bundle.get("file_format"), str):
        raise ValueError("file_format must be a string")


def _upgrade(bundle: dict[str, Any]) -> dict[str, Any]:
    """A bundle of an earlier version in today's form: its encoding under ``encoding`` and
    the input's ``file_format``. Earlier versions stored a table's encoding under
    ``features`` (the same fields) and YearPredictionMSD's standardization as ``scaler``
    (mean and scale of the 90 features)."""
    if "encoding" in bundle:
        return bundle
    if "features" in bundle:
        return {**bundle, "encoding": bundle["features"], "file_format": "table"}
    if "scaler" in bundle:
        from tuner.data.uci import FEATURE_NAMES

        scaler = bundle["scaler"]
        encoding = Encoding.standardized(FEATURE_NAMES, scaler["mean"], scaler["scale"])
        return {**bundle, "encoding": encoding.to_dict(), "file_format": "uci"}
    raise ValueError("no input encoding")


def is_table_model(bundle: dict[str, Any]) -> bool:
    """Whether the model of ``bundle`` (from :func:`load_bundle`) reads tables with a header
    (else UCI-format rows)."""
    return bundle["file_format"] == "table"


@contextmanager
def read_once(path: Path | str) -> Iterator[tuple[Path, str]]:
    """``--input`` as a regular file (its path, and its name for messages). ``-`` (stdin), a
    FIFO, ``/dev/stdin`` or a process substitution (``<(cat f)``) is read once into a
    temporary file, removed afterwards: reading checks a file's start, then reads it whole,
    and such an input would come back empty (or block) the second time. A regular file, or a
    path that does not name one, is used as it is."""
    if str(path) == "-":
        display = "stdin"
    else:
        display = str(path)
        try:
            mode = os.stat(path).st_mode
        except OSError:  # no such file, a link loop...: the reader says which
            mode = stat.S_IFREG
        if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
            yield Path(path), display
            return
    suffix = "".join(Path(display).suffixes[-2:]) if display != "stdin" else ""
    with tempfile.TemporaryDirectory(prefix="tuner-input-") as tmp:
        copy = Path(tmp) / f"input{suffix}"
        try:
            with open(copy, "wb") as out:
                if display == "stdin":
                    shutil.copyfileobj(sys.stdin.buffer, out)
                else:
                    with open(path, "rb") as source:
                        shutil.copyfileobj(source, out)
        except OSError as err:
            raise DataError(f"{display}: cannot read the input ({err.strerror or err})") from None
        yield copy, display


def read_features(path: Path, n_features: int, display: str | None = None) -> np.ndarray:
    """Read UCI-style rows of ``n_features`` values (or ``n_features + 1`` with a leading
    year), no header: a float64 array, one row per line."""
    from tuner.data.delimited import check_regular_file

    path = Path(path)
    check_regular_file(path, display or str(path))
    display = display or str(path)
    try:
        frame = pd.read_csv(path, header=None, dtype=np.float64)
    except pd.errors.EmptyDataError:
        raise DataError(f"{display}: the file is empty") from None
    except (ValueError, pd.errors.ParserError) as err:
        first = str(err).strip().splitlines()[0]
        raise DataError(
            f"{display}: not {n_features} comma-separated numbers per line: {first}"
        ) from None
    values = frame.to_numpy()
    if values.shape[1] == n_features + 1:
        values = values[:, 1:]
    if values.shape[1] != n_features:
        raise DataError(
            f"{display}: expected {n_features} values per line (or {n_features + 1} with the year), "
            f"found {values.shape[1]}"
        )
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise DataError(
            f"{display}: line {int(np.argmax(bad)) + 1}: missing, NaN or infinite value"
        )
    return values


_Input = tuple[pd.DataFrame, str, Wording]


def _read_table(path: Path, bundle: dict[str, Any], display: str) -> _Input:
    from tuner.data.table import DEFAULT_MAX_COLUMNS, read_table

    data = bundle.get("data") or {}
    table = read_table(
        path,
        display=display,
        sep=data.get("sep"),
        missing=tuple(data.get("missing") or ()),
        max_columns=int(data.get("max_columns") or DEFAULT_MAX_COLUMNS),
    )
    return table.frame, table.display, TABLE_WORDING


_UCI_WORDING = Wording(column=str, remedy="far outside the training rows' range")


def _read_uci_rows(path: Path, bundle: dict[str, Any], display: str) -> _Input:
    names = bundle["encoding"].numeric
    frame = pd.DataFrame(read_features(path, len(names), display), columns=list(names))
    return frame, display, _UCI_WORDING


_READERS: dict[str, Callable[[Path, dict[str, Any], str], _Input]] = {
    "table": _read_table,
    "uci": _read_uci_rows,
}
"""How a model's input rows are read, by the ``file_format`` of its training data: a frame of
raw columns (index: the data row from 0), how messages name the file and its columns."""


@torch.inference_mode()
def _probabilities(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    xs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    parts = [torch.softmax(model(xs[i : i + _BATCH]), dim=1) for i in range(0, len(xs), _BATCH)]
    return torch.cat(parts).double().numpy() if parts else np.zeros((0, 0))


def predict_table(model_path: Path, input_path: Path | str) -> pd.DataFrame:
    """Predictions of the model in ``model_path`` for the rows of ``input_path`` (read as the
    model's training rows were written; see the module doc): a DataFrame in the input's row
    order with ``prediction`` (the class name) and one ``proba_<class>`` column per class.
    A :class:`~tuner.errors.DataError` (one line) for a bad model file or input (a missing
    column, text in a numeric column, ...). ``input_path`` may be ``-`` (stdin), a FIFO or a
    process substitution: read once (:func:`read_once`)."""
    model, bundle = load_bundle(model_path)
    with read_once(input_path) as (path, name):
        frame, display, wording = _READERS[bundle["file_format"]](path, bundle, name)
    proba = _probabilities(model, bundle["encoding"].transform(frame, display, wording))
    names = [csv_safe(name) for name in bundle["label_names"]]
    out = pd.DataFrame({"prediction": [names[int(i)] for i in proba.argmax(1)]})
    for j, name in enumerate(bundle["label_names"]):
        out[csv_safe(f"proba_{name}")] = proba[:, j]  # "proba_" never starts a formula
    return out


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(text: str) -> str:
    """``text`` as a CSV cell a spreadsheet will not run: one that begins with ``=``, ``+``,
    ``-``, ``@``, a tab or a carriage return gets a leading single quote (OWASP's advice
    against CSV injection), unless it is a number (``-1``, ``+2.5``)."""
    if not text.startswith(_FORMULA_STARTS):
        return text
    try:
        float(text)
    except ValueError:
        return "'" + text
    return text


def predict_file(model_path: Path, input_path: Path | str) -> list[str]:
    """One class name per row of ``input_path``, in order (:func:`predict_table`'s
    ``prediction`` column)."""
    return predict_table(model_path, input_path)["prediction"].tolist()
