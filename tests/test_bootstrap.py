"""Paired bootstrap of two classifiers' test scores (benchmarks/plans.py's intervals)."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from tuner.report.bootstrap import _weighted_scores, paired_bootstrap

C = 10


def _preds(rng, y, p_right):
    return np.where(rng.random(len(y)) < p_right, y, rng.integers(0, C, len(y)))


def test_weighted_scores_equal_sklearn_on_the_resample():
    rng = np.random.default_rng(1)
    y = rng.integers(0, C - 1, 800)  # class 9 never occurs: it counts as F1 0, like sklearn
    pred = _preds(rng, y, 0.6)
    idx = rng.integers(0, len(y), len(y))
    w = np.bincount(idx, minlength=len(y))[None].astype(float)
    acc, f1 = _weighted_scores(w, y, pred, C)
    assert acc[0] == pytest.approx((y[idx] == pred[idx]).mean())
    expected = f1_score(y[idx], pred[idx], labels=list(range(C)), average="macro", zero_division=0)
    assert f1[0] == pytest.approx(expected)


def test_a_real_difference_is_significant():
    rng = np.random.default_rng(2)
    y = rng.integers(0, C, 3000)
    out = paired_bootstrap(y, _preds(rng, y, 0.55), _preds(rng, y, 0.65), C, draws=500)
    for diff in out.values():
        lo, hi = diff.ci95
        assert 0 < lo <= diff.observed <= hi
        assert diff.significant
    assert out["accuracy"].observed == pytest.approx(0.1, abs=0.03)


def test_a_null_difference_is_not_significant():
    rng = np.random.default_rng(3)
    y = rng.integers(0, C, 3000)
    a, b = _preds(rng, y, 0.6), _preds(rng, y, 0.6)  # two draws of one model
    out = paired_bootstrap(y, a, b, C, draws=500)
    for diff in out.values():
        lo, hi = diff.ci95
        assert lo < 0 < hi and not diff.significant
    same = paired_bootstrap(y, a, a, C, draws=50)
    assert same["macro_f1"].observed == 0 and same["macro_f1"].ci95 == (0.0, 0.0)


def test_bad_input():
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap(np.zeros(3, int), np.zeros(3, int), np.zeros(2, int), C)
