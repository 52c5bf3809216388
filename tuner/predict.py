"""``predict``: classes for new rows, from a saved ``model.pt`` alone.

A model trained on a table reads a table with a header (the formats of
:mod:`tuner.data.table`): columns are matched by name in any order, the target column is
ignored if present, and the stored encoding (:mod:`tuner.data.features`) is applied. The result
is a table in the input's row order: a ``prediction`` column with the class names and one
``proba_<class>`` column per class.

A model trained on YearPredictionMSD (the UCI format) reads comma-separated rows without a
header, either 90 feature columns or 91 in the UCI layout (year first, ignored), and gives one
decade per row, as it always has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tuner.errors import DataError
from tuner.train.config import TrainConfig
from tuner.train.model import build_model

_BATCH = 16384
_KEYS = ("state_dict", "config", "n_features", "n_classes", "label_names")


def load_bundle(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the trained model from ``model.pt`` (weights, config, data encoding)."""
    if not path.is_file():
        raise DataError(f"{path}: no such model file (run `python -m tuner final` first)")
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise DataError(f"{path}: not a tuner model file ({type(err).__name__})") from None
    if not isinstance(bundle, dict) or any(k not in bundle for k in _KEYS):
        raise DataError(f"{path}: not a tuner model file (a torch file without tuner's fields)")
    try:
        cfg = TrainConfig().with_params(bundle["config"])
        model = build_model(cfg, int(bundle["n_features"]), int(bundle["n_classes"]))
        model.load_state_dict(bundle["state_dict"])
    except Exception as err:  # weights that do not fit the stored configuration
        text = " ".join(str(err).split())[:160]
        raise DataError(f"{path}: a damaged tuner model file ({text})") from None
    model.eval()
    return model, bundle


def read_features(path: Path, n_features: int) -> np.ndarray:
    """Read UCI-style rows of ``n_features`` values (or ``n_features + 1`` with a leading
    year), no header."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        frame = pd.read_csv(path, header=None, dtype=np.float64)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except (ValueError, pd.errors.ParserError) as err:
        first = str(err).strip().splitlines()[0]
        raise DataError(
            f"{path}: not {n_features} comma-separated numbers per line: {first}"
        ) from None
    values = frame.to_numpy()
    if values.shape[1] == n_features + 1:
        values = values[:, 1:]
    if values.shape[1] != n_features:
        raise DataError(
            f"{path}: expected {n_features} values per line (or {n_features + 1} with the year), "
            f"found {values.shape[1]}"
        )
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise DataError(f"{path}: line {int(np.argmax(bad)) + 1}: missing, NaN or infinite value")
    return values


@torch.inference_mode()
def _probabilities(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    xs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    parts = [torch.softmax(model(xs[i : i + _BATCH]), dim=1) for i in range(0, len(xs), _BATCH)]
    return torch.cat(parts).double().numpy() if parts else np.zeros((0, 0))


def is_table_model(bundle: dict[str, Any]) -> bool:
    return "features" in bundle


def predict_file(model_path: Path, input_path: Path) -> list[str]:
    """One class name per input row (for a table model: the ``prediction`` column)."""
    model, bundle = load_bundle(model_path)
    if is_table_model(bundle):
        return predict_table(model_path, input_path)["prediction"].tolist()
    x = read_features(input_path, bundle["n_features"])
    mean = np.asarray(bundle["scaler"]["mean"])
    scale = np.asarray(bundle["scaler"]["scale"])
    proba = _probabilities(model, (x - mean) / scale)
    names = bundle["label_names"]
    return [names[int(i)] for i in proba.argmax(1)]


def predict_table(model_path: Path, input_path: Path) -> pd.DataFrame:
    """Predictions of a table model for a table with a header: ``prediction`` and one
    ``proba_<class>`` column per class, in the input's row order."""
    from tuner.data import features
    from tuner.data.table import read_table

    model, bundle = load_bundle(model_path)
    if not is_table_model(bundle):
        raise DataError(
            f"{model_path}: a YearPredictionMSD model; its input is UCI-format rows without a header"
        )
    data = bundle.get("data") or {}
    table = read_table(input_path, sep=data.get("sep"), missing=tuple(data.get("missing") or ()))
    x = features.transform(table.frame, bundle["features"], table.display)
    proba = _probabilities(model, x)
    names = list(bundle["label_names"])
    out = pd.DataFrame({"prediction": [names[int(i)] for i in proba.argmax(1)]})
    for j, name in enumerate(names):
        out[f"proba_{name}"] = proba[:, j]
    return out
