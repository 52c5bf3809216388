"""The stratified split always ends: class-count ties of every kind are split or lumped, never
looped over (a balanced table of many small classes once spun for ever inside ``prepare``)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from tuner.data.split import split_indices


@contextmanager
def _within(seconds: int) -> Iterator[None]:
    """Fail, rather than hang the suite, when the body runs longer than ``seconds``."""

    def expired(signum, frame):
        raise TimeoutError(f"the split did not finish within {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


TIES = {
    "40 classes x 3 rows": np.repeat(np.arange(40), 3),
    "60 classes x 2 rows": np.repeat(np.arange(60), 2),
    "30 singletons + one big class": np.concatenate([np.arange(30), np.full(90, 30)]),
    "two tied big classes + tied singletons": np.concatenate(
        [np.full(50, 0), np.full(50, 1), np.arange(2, 22)]
    ),
    "every row its own class": np.arange(120),
    "one class": np.zeros(120, dtype=int),
}


@pytest.mark.parametrize("labels", TIES.values(), ids=TIES.keys())
def test_ties_are_split_into_disjoint_parts_covering_every_row(labels):
    lumped: set[int] = set()
    with _within(20):
        train, val, test = split_indices(labels, "stratified", seed=42, lumped=lumped)
    together = np.concatenate([train, val, test])
    assert sorted(together.tolist()) == list(range(len(labels)))
    assert len(train) > len(val) > 0 and len(test) > 0


def test_a_subsample_of_balanced_small_classes_ends_too():
    labels = np.repeat(np.arange(40), 5)
    with _within(20):
        train, val, test = split_indices(labels, "stratified", seed=1, rows=120)
    assert len(train) + len(val) + len(test) == 120
