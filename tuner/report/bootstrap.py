"""Paired bootstrap of two classifiers scored on the same test rows.

Two plans' final models are scored on one test split; whether one is better than the other is a
question about those rows. :func:`paired_bootstrap` resamples the rows with replacement (the
same resample for both models, so row difficulty cancels) and reports the difference in accuracy
and in macro-F1 with a 95% percentile interval. Resamples are drawn as multinomial row counts,
so a metric of a resample is a weighted count and thousands of resamples cost a few matrix
products.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Difference:
    """``b - a`` on the test rows, and its 95% bootstrap interval."""

    observed: float
    ci95: tuple[float, float]

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        lo, hi = self.ci95
        return lo > 0 or hi < 0


def _weighted_scores(
    w: np.ndarray, y: np.ndarray, pred: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and macro-F1 (sklearn's, with every class counted and 0 for an empty one) of
    ``pred`` under row weights ``w`` [draws, n]."""
    true_1h = np.eye(n_classes)[y]  # [n, C]
    pred_1h = np.eye(n_classes)[pred]
    hit = (y == pred).astype(float)
    tp = w @ (true_1h * hit[:, None])  # [draws, C]
    support = w @ true_1h
    predicted = w @ pred_1h
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return (w @ hit) / w.sum(1), f1.mean(1)


def paired_bootstrap(
    y: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    n_classes: int,
    *,
    draws: int = 2000,
    seed: int = 0,
    chunk: int = 100,
) -> dict[str, Difference]:
    """Accuracy and macro-F1 of ``pred_b`` minus those of ``pred_a`` on labels ``y``, each
    with a 95% percentile interval over ``draws`` paired resamples of the rows."""
    y, pred_a, pred_b = (np.asarray(v, dtype=np.int64) for v in (y, pred_a, pred_b))
    if not (len(y) == len(pred_a) == len(pred_b)) or len(y) == 0:
        raise ValueError("labels and both predictions must be non-empty and of one length")
    n = len(y)
    rng = np.random.default_rng(seed)
    full = np.ones((1, n))
    acc_a, f1_a = _weighted_scores(full, y, pred_a, n_classes)
    acc_b, f1_b = _weighted_scores(full, y, pred_b, n_classes)
    d_acc, d_f1 = [], []
    for start in range(0, draws, chunk):
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, draws - start)).astype(float)
        sa, fa = _weighted_scores(w, y, pred_a, n_classes)
        sb, fb = _weighted_scores(w, y, pred_b, n_classes)
        d_acc.append(sb - sa)
        d_f1.append(fb - fa)

    def diff(observed: float, samples: list[np.ndarray]) -> Difference:
        lo, hi = np.percentile(np.concatenate(samples), [2.5, 97.5])
        return Difference(float(observed), (float(lo), float(hi)))

    return {
        "accuracy": diff(acc_b[0] - acc_a[0], d_acc),
        "macro_f1": diff(f1_b[0] - f1_a[0], d_f1),
    }
