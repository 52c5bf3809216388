"""``predict``: decades for new rows, from a saved ``model.pt`` alone.

The input is comma-separated without a header: either 90 feature columns, or 91 columns in the
UCI layout (year first, ignored). The saved scaler statistics are applied before the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tuner.errors import DataError
from tuner.model import build_model
from tuner.plan import TrainConfig


def load_bundle(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the trained model from ``model.pt`` (weights + config)."""
    if not path.is_file():
        raise DataError(f"{path}: no such model file (run `python -m tuner final` first)")
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise DataError(f"{path}: not a tuner model file ({type(err).__name__})") from None
    cfg = TrainConfig().with_params(bundle["config"])
    model = build_model(cfg, bundle["n_features"], bundle["n_classes"])
    model.load_state_dict(bundle["state_dict"])
    model.eval()
    return model, bundle


def read_features(path: Path, n_features: int) -> np.ndarray:
    """Read rows of ``n_features`` values (or ``n_features + 1`` with a leading year)."""
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
def predict_file(model_path: Path, input_path: Path) -> list[str]:
    """One decade label (e.g. ``"1990s"``) per input row."""
    model, bundle = load_bundle(model_path)
    x = read_features(input_path, bundle["n_features"])
    mean = np.asarray(bundle["scaler"]["mean"])
    scale = np.asarray(bundle["scaler"]["scale"])
    xs = torch.from_numpy(((x - mean) / scale).astype(np.float32))
    pred = torch.cat([model(xs[i : i + 16384]).argmax(1) for i in range(0, len(xs), 16384)])
    names = bundle["label_names"]
    return [names[int(i)] for i in pred]
