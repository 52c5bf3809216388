"""What a user sees while a plan runs and at its end: progress lines without a terminal, the
shipped epoch of the final model."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from tqdm import tqdm

from tuner import progress
from tuner.train.history import EpochStats, History
from tuner.tune import groups
from tuner.tune.final import shipped

REPO = Path(__file__).resolve().parents[1]


def test_a_progress_line_says_epochs_elapsed_and_time_left():
    line = progress.progress_line("tabular.ensemble ensemble=1", 10, 100, 20.0)
    assert (
        line
        == "tabular.ensemble ensemble=1: epoch 10/100, 0:20 elapsed, at most 3:00 left at this pace"
    )
    assert "1:00:00 elapsed" in progress.progress_line("x", 1, 2, 3600.0)
    # inside the first epoch there is no pace yet to estimate from
    assert progress.progress_line("x", 0, 100, 40.0) == "x: in epoch 1/100, 0:40 elapsed"


def test_without_a_terminal_a_progress_line_is_logged_every_30_s_even_inside_an_epoch(caplog):
    """Compose logs and CI see a line at the pace of the clock, not of the epochs: one
    epoch of a large CV group can take minutes."""
    bar = tqdm(total=100, disable=True)  # what tqdm does without a terminal (disable=None)
    reporter = groups.TrialReporter([], bar, [], lambda: None, "s.stage lr=0.1", 100)
    assert progress.LOG_EVERY_S == 30.0
    with caplog.at_level(logging.INFO, logger="tuner.tune.groups"):
        with progress.showing(
            bar, reporter.line, logging.getLogger("tuner.tune.groups"), every=0.05
        ):
            time.sleep(0.3)  # inside epoch 1: no progress() call at all
            reporter.progress(1)
            time.sleep(0.2)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) >= 4
    assert lines[0].startswith("s.stage lr=0.1: in epoch 1/100, 0:00 elapsed")
    assert lines[-1].startswith("s.stage lr=0.1: epoch 1/100, 0:00 elapsed, at most ")
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # -q: nothing
        with progress.showing(
            bar, reporter.line, logging.getLogger("tuner.tune.groups"), every=0.05
        ):
            time.sleep(0.2)
    assert not caplog.records


def test_without_a_terminal_the_lr_range_test_logs_lines_instead_of_a_bar(
    monkeypatch, caplog, capsys
):
    import torch

    from tuner.train.config import TrainConfig
    from tuner.train.lr_range import range_test

    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.01)
    x, y = torch.randn(4000, 8), torch.randint(0, 3, (4000,))
    with caplog.at_level(logging.INFO, logger="tuner.train.lr_range"):
        range_test(
            TrainConfig(hidden=(16,), batch_size=8), (x, y), n_classes=3, seed=0, optimizer="adam"
        )
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("LR range test: ")]
    assert any(" step " in line and "elapsed" in line for line in lines), lines
    assert "it/s" not in capsys.readouterr().err  # no tqdm bar written into the logs


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
    from tuner.report.notes import points_table
    from tuner.report.summary import stage_table, status_table
    from tuner.tune.state import StageState

    rows = [{"params": {"ensemble": k}, "value": v, "seconds": 1.0, "trial": i}
            for i, (k, v) in enumerate([(1, 0.9), (8, 0.95)])]  # fmt: skip
    for objective, header in (("best_loss", "val acc at best loss"), ("peak", "peak val acc")):
        state = StageState("ensemble", "t.ensemble", "done", 2, 2, {"ensemble": 8}, 0.95, {},
                           user_attrs={"stage": {"objective": objective}}, rows=rows)  # fmt: skip
        first = stage_table(state).splitlines()[1]  # the header, after the stage line
        assert header in first and " value " not in f"{first} "
        assert points_table(state, ["ensemble"])[0][1] == header  # the dashboard's note
        status = {"plan": "tabular", "storage": "sqlite://", "stages": [state.to_dict()]}
        row = status_table({**status, "final": None}).splitlines()[3].split()  # the stage's
        assert state.to_dict()["metric"] == header and " ".join(row[5:-1]) == header, row


def test_long_class_names_fit_inside_the_class_and_confusion_plots(tmp_path, monkeypatch):
    """30-character class names: every label of the two class plots lies inside its figure."""
    from matplotlib.text import Text

    from tuner.report import plots

    figures = []
    real_save = plots._save

    def keep(fig, path, **kw):
        figures.append(fig)
        return real_save(fig, path, **kw)

    monkeypatch.setattr(plots, "_save", keep)
    names = [f"{word} vegetation with stubble {i}"[:30] for i, word in
             enumerate(["damp grey soil", "cotton crop", "very damp grey soil", "red soil", "x"])]  # fmt: skip
    assert max(len(n) for n in names) == 30
    plots.class_distribution(
        {"label_names": names, "class_counts": {"train": [70, 60, 50, 40, 30]},
         "target": "classes", "split": "stratified"},
        tmp_path / "classes.png",
    )  # fmt: skip
    matrix = [[10 if i == j else 1 for j in range(5)] for i in range(5)]
    plots.confusion_matrix(
        {"confusion_matrix": matrix, "labels": names, "class_name": "classes",
         "test_accuracy": 0.8},
        tmp_path / "confusion.png",
    )  # fmt: skip
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    for fig in figures:
        canvas = FigureCanvasAgg(fig)
        canvas.draw()  # as savefig drew it
        renderer = canvas.get_renderer()
        box = fig.bbox
        texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
        assert any("damp" in t.get_text() for t in texts)
        for t in texts:
            bb = t.get_window_extent(renderer)
            assert bb.x0 >= box.x0 - 1 and bb.x1 <= box.x1 + 1, t.get_text()
            assert bb.y0 >= box.y0 - 1 and bb.y1 <= box.y1 + 1, t.get_text()


def test_the_report_says_which_epoch_ships_and_why_validation_beats_test():
    from tuner.report.summary import shipped_lines

    last = shipped_lines({"shipped_epoch": 15, "epochs_trained": 15, "val_accuracy": 0.91,
                          "test_accuracy": 0.88})  # fmt: skip
    assert last[0].startswith("**Shipped weights:** epoch 15 (the last epoch trained)")
    assert "optimistic" in last[0]
    best = shipped_lines({"shipped_epoch": 11, "epochs_trained": 27, "val_accuracy": 0.96,
                          "test_accuracy": 0.95})  # fmt: skip
    assert "epoch 11 (the epoch of lowest validation loss)" in best[0]
    assert shipped_lines({"epochs_trained": 3}) == []  # an older metrics.json


def test_the_closing_summary_names_the_whole_chosen_configuration():
    from tuner.report.summary import status_table

    final = {"test_accuracy": 0.95, "test_loss": 0.2, "n_test": 750, "fixed_params":
             {"ensemble": 8}, "config": {"hidden": [256, 256], "lr": 0.002, "ensemble": 8}}  # fmt: skip
    text = status_table({"plan": "tabular", "storage": "sqlite://", "stages": [], "final": final})
    assert "chosen: ensemble=8 (tuned); from the plan: hidden=[256, 256], lr=0.002" in text
    older = {k: v for k, v in final.items() if k not in ("config", "fixed_params")}
    assert "chosen" not in status_table({"plan": "t", "storage": "s", "stages": [], "final": older})


def test_an_lr_range_tests_points_are_not_called_a_grid():
    from tuner.plan import load_plan
    from tuner.report.notes import grid_text, search_label

    plan = load_plan("quick", REPO)
    stage = plan.stage("lr").to_dict()
    assert search_label(stage) == "Points"
    assert grid_text(stage, [{"lr": 0.01}]) == (
        "0.01: the range test's pick x1 (found by the test, not a grid)"
    )
    assert search_label(plan.stage("init").to_dict()) == "Grid"


def test_on_a_terminal_the_bar_is_redrawn_during_a_long_epoch():
    import io

    out = io.StringIO()
    bar = tqdm(total=10, desc="s.stage", file=out, disable=False, mininterval=0)
    before = out.getvalue().count("\r")
    with progress.showing(bar, lambda: "unused", logging.getLogger("x"), tick=0.05):
        time.sleep(0.3)  # one long epoch: no update, yet the bar moves
    assert out.getvalue().count("\r") - before >= 3
    bar.close()
