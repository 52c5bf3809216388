"""Baselines on the same split: what a user would get from scikit-learn in one line.

"Is this good?" has no answer without something to compare with. For every prepared data set
tuner fits three default scikit-learn models on the train rows of the very arrays the MLP
trains on, and scores them on the validation and test rows:

* ``majority``: the most frequent training class (``DummyClassifier``): the floor;
* ``logistic_regression``: ``LogisticRegression(max_iter=1000)``: a linear model;
* ``gradient_boosting``: ``HistGradientBoostingClassifier(random_state=seed)``: the strong
  default on tables.

They must take seconds, not minutes: above :data:`MAX_FIT_ROWS` training rows each fits on a
stratified subsample of that many rows (``fit_rows`` says how many; the scores are still on
every validation and test row). The result is cached beside the prepared arrays
(``<data_dir>/prepared/<key>/baselines-<seed>.json``), so every stage, worker, ``status`` and
report reads the same numbers, computed once.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tuner.data.manifest import Prepared
from tuner.paths import atomic_write

logger = logging.getLogger(__name__)

MAX_FIT_ROWS = 20_000
"""Training rows a baseline fits on at most (a stratified subsample above it): a few seconds
for gradient boosting and logistic regression on 100 features on a 2-core machine."""

NAMES = {
    "majority": "majority class",
    "logistic_regression": "logistic regression",
    "gradient_boosting": "gradient boosting",
}
"""Each baseline's key in ``metrics.json`` and ``status --json``, and its name in words."""


def _models(seed: int) -> dict[str, Any]:
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    return {
        "majority": DummyClassifier(strategy="most_frequent"),
        "logistic_regression": LogisticRegression(max_iter=1000),
        "gradient_boosting": HistGradientBoostingClassifier(random_state=seed),
    }


def _fit_rows(y: np.ndarray, seed: int) -> np.ndarray:
    """All training rows, or a stratified subsample of :data:`MAX_FIT_ROWS` of them."""
    if len(y) <= MAX_FIT_ROWS:
        return np.arange(len(y))
    from sklearn.model_selection import train_test_split

    rows, _ = train_test_split(
        np.arange(len(y)), train_size=MAX_FIT_ROWS, stratify=y, random_state=seed
    )
    return np.sort(rows)


def fit_baselines(prepared: Prepared, seed: int) -> dict[str, Any]:
    """Fit the baselines on ``prepared``'s train rows; their validation and test accuracy."""
    from sklearn.exceptions import ConvergenceWarning

    rows = _fit_rows(prepared.y_train, seed)
    x, y = prepared.x_train[rows], prepared.y_train[rows]
    out: dict[str, Any] = {"fit_rows": int(len(rows)), "train_rows": int(len(prepared.y_train))}
    for key, model in _models(seed).items():
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # scored as it stands
            model.fit(x, y)
        entry = {"seconds": round(time.perf_counter() - t0, 3)}
        for part, (xs, ys) in {
            "val": (prepared.x_val, prepared.y_val),
            "test": (prepared.x_test, prepared.y_test),
        }.items():
            if len(ys):
                entry[f"{part}_accuracy"] = float(np.mean(model.predict(xs) == ys))
        out[key] = entry
    return out


def baselines(prepared: Prepared, data_dir: Path, seed: int) -> dict[str, Any]:
    """The baselines of ``prepared`` (split and fit seed ``seed``), from the cache beside its
    arrays, or fitted now and cached."""
    path = Path(data_dir) / "prepared" / prepared.manifest.key / f"baselines-{seed}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass  # a damaged cache file: fit again
    t0 = time.perf_counter()
    found = fit_baselines(prepared, seed)
    logger.info(
        "baselines on the same split (%s training rows%s): %s (%.1f s)",
        found["fit_rows"],
        "" if found["fit_rows"] == found["train_rows"] else f" of {found['train_rows']}",
        ", ".join(
            f"{NAMES[k]} {found[k]['test_accuracy']:.4f}"
            for k in NAMES
            if "test_accuracy" in found[k]
        ),
        time.perf_counter() - t0,
    )
    try:
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(found, indent=1) + "\n"))
    except OSError as err:  # a read-only data dir: the numbers are still shown
        logger.warning("could not cache the baselines in %s: %s", path.parent, err)
    return found


def comparison(accuracy: float, found: dict[str, Any], part: str = "test") -> list[dict[str, Any]]:
    """Rows of "tuned MLP vs baselines": each baseline's ``part`` accuracy and the MLP's
    difference to it in points."""
    rows = []
    for key, name in NAMES.items():
        acc = found.get(key, {}).get(f"{part}_accuracy")
        if acc is not None:
            rows.append(
                {"model": name, "accuracy": acc, "points": round(100 * (accuracy - acc), 2)}
            )
    return rows
