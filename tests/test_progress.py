"""What a user sees while a plan runs and at its end: progress lines without a terminal, the
shipped epoch of the final model."""

from __future__ import annotations

import logging

import pytest
from tqdm import tqdm

from tuner.train.history import EpochStats, History
from tuner.tune import groups
from tuner.tune.final import shipped


def test_a_progress_line_says_epochs_elapsed_and_time_left():
    line = groups.progress_line("tabular.ensemble ensemble=1", 10, 100, 20.0)
    assert (
        line
        == "tabular.ensemble ensemble=1: epoch 10/100, 0:20 elapsed, at most 3:00 left at this pace"
    )
    assert "1:00:00 elapsed" in groups.progress_line("x", 1, 2, 3600.0)


def test_without_a_terminal_training_logs_a_progress_line_every_30_s(monkeypatch, caplog):
    now = [1000.0]
    monkeypatch.setattr(groups.time, "monotonic", lambda: now[0])
    bar = tqdm(total=100, disable=True)
    reporter = groups.TrialReporter([], bar, [], lambda: None, "s.stage lr=0.1", 100)
    with caplog.at_level(logging.INFO, logger="tuner.tune.groups"):
        now[0] += 10
        reporter.progress(1)
        assert not caplog.records
        now[0] += 25  # 35 s since the start
        reporter.progress(2)
        assert [r.getMessage() for r in caplog.records] == [
            "s.stage lr=0.1: epoch 2/100, 0:35 elapsed, at most 28:35 left at this pace"
        ]
        now[0] += 5
        reporter.progress(3)
        assert len(caplog.records) == 1


def _history(losses, accs):
    return History(
        [
            EpochStats(i + 1, 1.0, lo, ac, 0.1)
            for i, (lo, ac) in enumerate(zip(losses, accs, strict=True))
        ]
    )


@pytest.mark.parametrize(("restore_best", "epoch", "acc"), [(True, 2, 0.8), (False, 3, 0.9)])
def test_the_final_model_says_which_epoch_it_ships(restore_best, epoch, acc):
    h = _history([0.5, 0.4, 0.45], [0.7, 0.8, 0.9])
    assert shipped(h, restore_best) == {"shipped_epoch": epoch, "val_accuracy": acc,
                                        "val_loss": h.epochs[epoch - 1].val_loss}  # fmt: skip


def test_the_report_names_the_target_and_its_classes_once():
    from tuner.report.document import _target_line

    assert _target_line({"target": "classes", "label_rule": "classes", "n_classes": 6}) == (
        "**Target:** `classes`: 6 classes"
    )
    assert _target_line({"target": "year", "label_rule": "decade", "label_names": ["a", "b"]}) == (
        "**Target:** `year`: 2 classes, decade"
    )


def test_a_stage_table_names_its_metric():
    from tuner.report.summary import stage_table
    from tuner.tune.state import StageState

    rows = [{"params": {"ensemble": k}, "value": v, "seconds": 1.0, "trial": i}
            for i, (k, v) in enumerate([(1, 0.9), (8, 0.95)])]  # fmt: skip
    for objective, header in (("best_loss", "val acc at best loss"), ("peak", "peak val acc")):
        state = StageState("ensemble", "t.ensemble", "done", 2, 2, {"ensemble": 8}, 0.95, {},
                           user_attrs={"stage": {"objective": objective}}, rows=rows)  # fmt: skip
        first = stage_table(state).splitlines()[1]  # the header, after the stage line
        assert header in first and " value " not in f"{first} "
