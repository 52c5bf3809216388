"""The tabular plan and what it is built from: batch sizes that follow the training rows,
periodic embeddings of the numeric columns only, the best-epoch objective, and the plan as a
new user runs it (no ``--plan`` on a table)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests._util import run_cli
from tests.test_embeddings import DATA, N_CLASSES, _same
from tests.test_tables import penguins_csv  # noqa: F401 (a fixture)
from tuner.data.prepare import split_indices
from tuner.errors import PlanError
from tuner.train.batches import resolve_batch
from tuner.train.config import TrainConfig, coerce_params
from tuner.train.history import EpochStats, History
from tuner.train.loop import train_group
from tuner.train.model import build_model, fit_inputs, seeded
from tuner.train.options.embeddings import numeric_columns
from tuner.train.reference import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("rows", "batch"),
    [(100, 32), (2_000, 32), (3_000, 64), (5_000, 64), (16_000, 256), (40_000, 512), (10**6, 512)],
)
def test_an_auto_batch_is_the_power_of_two_nearest_rows_over_64_within_32_to_512(rows, batch):
    assert resolve_batch("auto", rows) == batch
    assert resolve_batch(128, rows) == 128
    assert TrainConfig(batch_size="auto").for_rows(rows).batch_size == batch


def test_auto_is_accepted_wherever_a_batch_size_is_and_nothing_else_is():
    assert coerce_params({"batch_size": "auto"}) == {"batch_size": "auto"}
    assert coerce_params({"batch_size": "auto"}, strict=True) == {"batch_size": "auto"}
    with pytest.raises(
        PlanError, match=r'batch_size must be an integer in \[1, 16777216\] or "auto"'
    ):
        coerce_params({"batch_size": "big"})
    assert TrainConfig(batch_size="auto").to_dict()["batch_size"] == "auto"


def test_an_auto_batch_trains_exactly_as_its_resolved_size_in_both_engines():
    x, y, vx, vy = DATA  # 600 rows: auto is 32
    auto = TrainConfig(hidden=(16,), batch_size="auto", lr=3e-3)
    fixed = auto.with_params({"batch_size": 32})
    kw = {"epochs": 2, "seeds": [1], "n_classes": N_CLASSES}
    a = train_group([auto], x, y, vx, vy, **kw).histories[0]
    b = train_group([fixed], x, y, vx, vy, **kw).histories[0]
    assert [e.train_loss for e in a.epochs] == [e.train_loss for e in b.epochs]
    _, ref = train(auto, (x, y), (vx, vy), epochs=2, seed=1, n_classes=N_CLASSES)
    _same(a, ref, "auto")
    other = train_group([fixed.with_params({"batch_size": 64})], x, y, vx, vy, **kw)
    assert other.histories[0].epochs[0].train_loss != a.epochs[0].train_loss


def test_periodic_embeddings_embed_the_numeric_columns_and_pass_0_1_columns_through():
    x = DATA[0]  # column 4 is 0/1, column 3 constant (2.0): every other column is numeric
    assert numeric_columns(x) == [c for c in range(20) if c != 4]
    cfg = TrainConfig(hidden=(8,), embedding="plr", embedding_dim=4, frequencies=3)
    fitted = fit_inputs(cfg, x)
    assert fitted == {"columns": numeric_columns(x)}
    with seeded(0):
        model = build_model(cfg, 20, N_CLASSES, fitted)
    assert model[1].in_features == 19 * 4 + 1
    assert model[0].frequency.shape == (19, 3)
    out = model[0](x[:5])
    torch.testing.assert_close(out[:, -1], x[:5, 4])  # passed through as it is
    with seeded(0):  # a model.pt written before the choice: every column embedded
        old = build_model(cfg, 20, N_CLASSES, None)
    assert old[1].in_features == 20 * 4


def test_cv_folds_share_their_embedded_columns_even_where_a_fold_sees_only_0_and_1():
    """A column that is 0/1 on one fold's rows but not on the group's stays numeric for every
    member (the stack needs one shape), as it is on the train split."""
    x, y, vx, vy = DATA
    x = x.clone()
    x[:, 5] = (x[:, 5] > 0).float()
    x[500, 5] = 2.0  # only in the second half of the rows
    folds = [torch.arange(0, 300), torch.arange(300, 600)]
    cfg = TrainConfig(hidden=(8,), batch_size=64, embedding="plr", embedding_dim=4, frequencies=3)
    result = train_group(
        [cfg, cfg], x, y, vx, vy, epochs=1, seeds=[0, 0], n_classes=N_CLASSES, train_idx=folds
    )
    for k in range(2):
        assert result.export(k)[0].fitted == {"columns": numeric_columns(x)}
    assert 5 in numeric_columns(x) and 5 not in numeric_columns(x[:300])


def test_the_best_loss_objective_is_the_accuracy_of_the_epoch_restore_best_ships():
    h = History(
        [
            EpochStats(epoch=1, train_loss=1.0, val_loss=0.9, val_acc=0.60, seconds=0.1),
            EpochStats(epoch=2, train_loss=0.8, val_loss=0.7, val_acc=0.70, seconds=0.1),
            EpochStats(epoch=3, train_loss=0.6, val_loss=0.8, val_acc=0.75, seconds=0.1),
        ]
    )
    assert (h.value("best_loss"), h.value("peak"), h.value("final")) == (0.70, 0.75, 0.75)


@pytest.mark.slow
def test_a_table_without_a_plan_runs_the_tabular_plan_and_predict_reproduces_its_test_accuracy(
    tmp_path,
    penguins_csv,  # noqa: F811 (the fixture)
):
    args = ("--data", str(penguins_csv), "--target", "species", "--threads", "1")
    run_cli("run-all", *args, cwd=tmp_path, check=True, timeout=600)
    status = json.loads(run_cli("status", *args, "--json", cwd=tmp_path, check=True).stdout)
    assert status["plan"] == "tabular" and status["stages"][0]["state"] == "done"
    # without --data (or --plan): the plan whose studies the storage holds, not the seed plan
    bare = json.loads(run_cli("status", "--json", cwd=tmp_path, check=True).stdout)
    assert bare["plan"] == "tabular" and bare["final"]["test_accuracy"] > 0
    # the baselines on the same split, in metrics.json and status
    assert set(bare["final"]["baselines"]) >= {
        "majority",
        "logistic_regression",
        "gradient_boosting",
    }
    text = run_cli("status", cwd=tmp_path, check=True).stdout
    assert "logistic regression" in text and "points)" in text
    shipped = f"shipped weights: epoch {bare['final']['shipped_epoch']} of"
    assert shipped in text and bare["final"]["shipped_epoch"] <= bare["final"]["epochs_trained"]
    metrics = json.loads((tmp_path / "models/tabular/metrics.json").read_text())
    assert metrics["config"]["embedding"] == "plr"
    assert metrics["config"].get("ensemble", 1) in (1, 8)  # 1 (the default) is left out
    bundle = torch.load(tmp_path / "models/tabular/model.pt", weights_only=True)
    assert bundle["encoding"]["scaler"] == "robust"
    n_numeric = len(bundle["fitted"]["columns"])
    assert 0 < n_numeric < len(bundle["encoding"]["feature_names"])  # one-hots pass through

    frame = pd.read_csv(penguins_csv, na_values="?", index_col=0)
    labelled = frame[frame["species"].notna()].reset_index(drop=True)
    _, _, test = split_indices(
        np.unique(labelled["species"], return_inverse=True)[1], "stratified", 42
    )
    rows = labelled.iloc[test]
    inp = tmp_path / "rows.csv"
    rows.drop(columns="species").iloc[:, ::-1].to_csv(inp, index=False, na_rep="?")
    out = tmp_path / "pred.csv"
    run_cli("predict", "--model", "models/tabular/model.pt", "--input", str(inp), "--output",
            str(out), cwd=tmp_path, check=True)  # fmt: skip
    pred = pd.read_csv(out)["prediction"].to_numpy()
    accuracy = float(np.mean(pred == rows["species"].to_numpy()))
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-9)


def test_stored_plans_reads_the_plans_of_a_storage_and_creates_nothing(tmp_path):
    import optuna

    from tuner.tune.studies import stored_plans

    missing = tmp_path / "studies" / "tuner.sqlite3"
    assert stored_plans(f"sqlite:///{missing}") == [] and not missing.parent.exists()
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    for name in ("tabular.ensemble", "tabular.final", "__workers__:tabular"):
        optuna.create_study(study_name=name, storage=url)
    assert stored_plans(url) == ["tabular"]
    optuna.create_study(study_name="seed.lr", storage=url)
    assert stored_plans(url) == ["seed", "tabular"]


def test_baselines_fit_on_the_train_rows_score_val_and_test_and_are_cached(tmp_path, monkeypatch):
    from sklearn.linear_model import LogisticRegression

    from tests.test_tables import _table
    from tuner.data import baselines as bl
    from tuner.data.prepare import prepare
    from tuner.data.spec import build_spec

    prepared = prepare(build_spec(str(_table(tmp_path, n=600)), {"target": "label"}), tmp_path)
    found = bl.baselines(prepared, tmp_path, seed=42)
    assert found["fit_rows"] == found["train_rows"] == len(prepared.y_train)
    majority = np.bincount(prepared.y_train).argmax()
    assert found["majority"]["test_accuracy"] == np.mean(prepared.y_test == majority)
    lr = LogisticRegression(max_iter=1000).fit(prepared.x_train, prepared.y_train)
    assert found["logistic_regression"]["val_accuracy"] == lr.score(prepared.x_val, prepared.y_val)
    assert 0.5 < found["gradient_boosting"]["test_accuracy"] <= 1
    cached = tmp_path / "prepared" / prepared.manifest.key / "baselines-42.json"
    assert json.loads(cached.read_text()) == found

    def refit(*a, **k):
        raise AssertionError("fitted again")

    monkeypatch.setattr(bl, "fit_baselines", refit)
    assert bl.baselines(prepared, tmp_path, seed=42) == found  # read from the cache
    rows = bl.comparison(0.9, found)
    assert [r["model"] for r in rows] == list(bl.NAMES.values())
    assert rows[1]["points"] == round(
        100 * (0.9 - found["logistic_regression"]["test_accuracy"]), 2
    )


def test_baselines_fit_on_a_stratified_subsample_of_a_large_train_split(tmp_path, monkeypatch):
    from tests.test_tables import _table
    from tuner.data import baselines as bl
    from tuner.data.prepare import prepare
    from tuner.data.spec import build_spec

    monkeypatch.setattr(bl, "MAX_FIT_ROWS", 100)
    prepared = prepare(build_spec(str(_table(tmp_path, n=600)), {"target": "label"}), tmp_path)
    found = bl.fit_baselines(prepared, seed=1)
    assert (found["fit_rows"], found["train_rows"]) == (100, len(prepared.y_train))
    rows = bl._fit_rows(prepared.y_train, 1)
    shares = np.bincount(prepared.y_train[rows]) / 100
    assert np.allclose(shares, np.bincount(prepared.y_train) / len(prepared.y_train), atol=0.02)


_LONG_PLAN = """
name = "long"
[defaults]
hidden = [32]
batch_size = 16
[[stages]]
name = "width"
kind = "sweep"
epochs = 5000
[stages.grid]
hidden = [[32], [64]]
[[stages]]
name = "lr"
kind = "sweep"
epochs = 5000
[stages.grid]
lr = [1e-3, 3e-3]
[final]
epochs = 4000
patience = 0
restore_best = true
"""


@pytest.mark.slow
def test_a_time_budget_stops_every_stage_at_its_share_and_the_final_job_still_trains(tmp_path):
    """5,000 epochs per run would take many minutes: with --time-budget 12 each stage stops at
    its deadline (its points scored on what they trained, marked in the study and the report)
    and the final model is trained and scored."""
    import optuna

    from tests.test_tables import _table

    table = _table(tmp_path, n=400)
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "long.toml").write_text(_LONG_PLAN)
    args = ("--plan", "long", "--data", str(table), "--target", "label", "--threads", "1")
    run_cli("run-all", *args, "--time-budget", "12", cwd=tmp_path, check=True, timeout=300)
    url = f"sqlite:///{tmp_path / 'studies' / 'tuner.sqlite3'}"
    for name in ("long.width", "long.lr"):
        trials = optuna.load_study(study_name=name, storage=url).trials
        assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
        assert all(t.user_attrs["out_of_time"] for t in trials)
        assert all(1 <= t.user_attrs["epochs_trained"] < 5000 for t in trials)
    metrics = json.loads((tmp_path / "models/long/metrics.json").read_text())
    assert metrics["out_of_time"] and 1 <= metrics["epochs_trained"] < 5000
    assert 0 < metrics["test_accuracy"] <= 1
    report = (tmp_path / "reports/long/report.md").read_text()
    assert "**Time budget:** 2 of 2 points stopped at the stage's deadline" in report
    assert "(stopped by the time budget)" in report


@pytest.mark.parametrize("seconds", ["0", "-5", "nan"])
def test_a_time_budget_must_be_a_positive_number_of_seconds(tmp_path, seconds):
    from tests.test_tables import _table

    table = _table(tmp_path)
    proc = run_cli("run-all", "--plan", "quick", "--data", str(table), "--target", "label",
                   "--time-budget", seconds, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2
    assert "--time-budget must be a positive number of seconds" in proc.stderr
    assert not (tmp_path / "studies").exists()


def test_the_budget_gives_each_stage_its_share_of_the_time_left(monkeypatch):
    import time as time_module

    from tuner.tune.budget import Budget

    now = [100.0]
    monkeypatch.setattr(time_module, "monotonic", lambda: now[0])
    budget = Budget(160.0, {"a": 100, "b": 200, "final": 300})  # 60 s for 600 units of work
    assert budget.deadline_for("a") == pytest.approx(110.0)  # a sixth of 60 s
    now[0] = 130.0  # a ran late: b gets 2/5 of the 30 s left
    assert budget.deadline_for("b") == pytest.approx(142.0)
    now[0] = 170.0  # past the end: no time left, the stage still trains one epoch
    assert budget.deadline_for("b") == 170.0


def test_runs_under_a_time_budget_are_reused_only_under_one():
    """A budget may cut a run short: its fingerprint and the final's key differ from the same
    run's without a budget, so that a later unbudgeted run trains it in full."""
    from tuner.config import FinalSpec, StageSpec
    from tuner.train.compute import Compute
    from tuner.train.tensors import TensorData
    from tuner.tune.reuse import FinalRule, StageReuse, final_key

    x, y, vx, vy = DATA
    data = TensorData((x, y), (vx, vy), (vx, vy), N_CLASSES, "key")
    cfg = TrainConfig()
    plain, budgeted = (FinalRule.of(FinalSpec(), cfg, len(y), budgeted=b) for b in (False, True))
    keys = {final_key(cfg, r, seed=1, data=data, compute=Compute()) for r in (plain, budgeted)}
    assert len(keys) == 2
    reuse = [
        StageReuse(
            StageSpec(name="s", kind="sweep"),
            cfg,
            lambda c: {},
            FinalSpec(),
            data,
            1,
            Compute(),
            Path("."),
            keeps_final=True,
            budgeted=b,
        )  # fmt: skip
        for b in (False, True)
    ]
    assert reuse[0].fingerprint(cfg) != reuse[1].fingerprint(cfg)


@pytest.mark.slow
def test_under_a_budget_the_final_job_ships_the_last_stages_cut_run_instead_of_one_epoch(tmp_path):
    """The last stage trains as the final job would (same epochs): the budget gives the final
    job no time of its own, and the winner's run, stopped at the deadline, is the model (its
    best epoch so far), not a one-epoch retrain."""
    from tests.test_tables import _table

    table = _table(tmp_path, n=400)
    (tmp_path / "studies").mkdir()
    plan = _LONG_PLAN.replace('name = "long"', 'name = "long2"').replace(
        "epochs = 4000", "epochs = 5000"
    )
    (tmp_path / "studies" / "long2.toml").write_text(plan)
    run_cli("run-all", "--plan", "long2", "--data", str(table), "--target", "label",
            "--threads", "1", "--time-budget", "10", cwd=tmp_path, check=True, timeout=300)  # fmt: skip
    metrics = json.loads((tmp_path / "models/long2/metrics.json").read_text())
    assert metrics["reused_from"].startswith("long2.")  # a stage trial (width, or lr reusing it)
    assert metrics["out_of_time"] and 1 < metrics["epochs_trained"] < 5000
