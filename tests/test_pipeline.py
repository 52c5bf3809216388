"""Stages as chained Optuna studies: chaining, --fix, resume, --force, final and predict."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState

from tests._util import (
    REPO,
    run_cli,
    session,
    write_tiny_plan,
)
from tuner.data import synthetic
from tuner.errors import StageError
from tuner.plan import load_plan
from tuner.predict import predict_file
from tuner.tune.final import final_summary, run_final
from tuner.tune.stages import point_key


@pytest.fixture
def workdir(tmp_path, msd_file):
    write_tiny_plan(tmp_path)
    return tmp_path


def _complete_points(state):
    return [point_key(t.params) for t in state.trials if t.state == TrialState.COMPLETE]


@pytest.mark.slow
def test_stages_chain_winners_through_the_storage(workdir, msd_file):
    s = session(workdir, str(msd_file))
    lr = s.run_stage("lr")
    assert lr.state == "done" and lr.n_complete == lr.n_total == 2
    curve = lr.user_attrs["lr_range_test"]
    assert len(curve["lrs"]) == len(curve["losses"]) > 20
    assert curve["lrs"][0] < curve["lrs"][-1]
    assert {p["lr"] for p in lr.user_attrs["points"]} == {
        float(f"{curve['chosen'] * c:.6g}") for c in (0.5, 1.0)
    }

    wd = s.run_stage("weight_decay")
    assert wd.fixed_params == {"lr": lr.best_params["lr"]}
    assert sorted(_complete_points(wd)) == sorted(
        point_key({"weight_decay": v}) for v in (0.0, 1e-4, 1e-2)
    )
    for t in wd.trials:
        assert len(t.user_attrs["fold_values"]) == 2
        assert t.value == pytest.approx(sum(t.user_attrs["fold_values"]) / 2)
        assert sorted(t.intermediate_values) == [0, 1]

    act = s.run_stage("activation")
    assert act.fixed_params == {
        "lr": lr.best_params["lr"],
        "weight_decay": wd.best_params["weight_decay"],
    }
    # the trial's full config carries the fixed params
    for t in act.trials:
        assert t.user_attrs["config"]["weight_decay"] == wd.best_params["weight_decay"]
        assert t.user_attrs["config"]["lr"] == lr.best_params["lr"]
    # a fresh session (another process) reads the same chain from the storage
    s.close()
    s2 = session(workdir, str(msd_file))
    assert s2.resolve_fixed(3) == {**act.fixed_params, "activation": act.best_params["activation"]}
    s2.close()


def test_stage_without_predecessors_exits_with_the_missing_stage(workdir, msd_file):
    s = session(workdir, str(msd_file))
    with pytest.raises(StageError, match="'lr' first"):
        s.run_stage("activation")
    s.close()
    s = session(workdir, str(msd_file), fixes={"lr": "0.01"})
    with pytest.raises(StageError, match="'weight_decay' first"):
        s.run_stage("activation")
    s.close()


def test_fix_runs_a_stage_without_its_predecessors(workdir, msd_file):
    s = session(workdir, str(msd_file), fixes={"lr": "0.003", "weight_decay": "0.0001"})
    state = s.run_stage("activation")
    assert state.state == "done"
    assert state.fixed_params == {"lr": 0.003, "weight_decay": 0.0001}
    for t in state.trials:
        assert t.user_attrs["config"]["lr"] == 0.003
    # nothing was run for the fixed stages
    assert s.stage_state("lr").state == "pending"
    with pytest.raises(StageError, match="that is what stage 'activation' tunes"):
        session(workdir, str(msd_file), fixes={"activation": "gelu"}).run_stage("activation")


@pytest.mark.slow
def test_finished_stage_is_not_rerun_and_force_makes_a_new_study(workdir, msd_file, caplog):
    s = session(workdir, str(msd_file), fixes={"lr": "0.01"})
    first = s.run_stage("weight_decay")
    n_trials = len(first.trials)
    with caplog.at_level("INFO"):
        again = s.run_stage("weight_decay")
    assert "already complete" in caplog.text
    assert again.study == first.study == "tiny.weight_decay"
    assert len(again.trials) == n_trials
    forced = s.run_stage("weight_decay", force=True)
    assert forced.study == "tiny.weight_decay.v2" and forced.state == "done"
    assert s.stage_state("weight_decay").study == "tiny.weight_decay.v2"


@pytest.mark.slow
def test_changed_predecessor_starts_a_new_study(workdir, msd_file):
    s = session(workdir, str(msd_file), fixes={"lr": "0.01"})
    s.run_stage("weight_decay")
    s.close()
    s = session(workdir, str(msd_file), fixes={"lr": "0.02"})
    state = s.run_stage("weight_decay")
    assert state.study == "tiny.weight_decay.v2"
    assert state.fixed_params == {"lr": 0.02}


@pytest.mark.slow
def test_resume_trains_only_unfinished_points(workdir, msd_file):
    s = session(workdir, str(msd_file), fixes={"lr": "0.01"}, group_size=1)
    calls = []
    real = s._run_group

    def crash_on_second(study, group, *args, **kwargs):
        calls.append(group[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(study, group, *args, **kwargs)

    s._run_group = crash_on_second
    with pytest.raises(KeyboardInterrupt):
        s.run_stage("weight_decay")
    s.close()
    s = session(workdir, str(msd_file), fixes={"lr": "0.01"})
    state = s.run_stage("weight_decay")
    assert state.state == "done"
    done = _complete_points(state)
    assert len(done) == len(set(done)) == 3
    assert point_key(calls[0]) in done


@pytest.mark.parametrize(("group_size", "groups"), [(0, [3]), (2, [2, 1])])
def test_a_worker_trains_its_claimed_points_as_one_group(workdir, msd_file, group_size, groups):
    s = session(workdir, str(msd_file), fixes={"lr": "0.01"}, group_size=group_size)
    state = s.run_stage("weight_decay")
    trials = sorted(state.trials, key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    # the trials of a group are all created before any of them is told
    sizes, first = [], 0
    while first < len(trials):
        end = first + 1
        while end < len(trials) and trials[end].datetime_start < trials[first].datetime_complete:
            end += 1
        sizes.append(end - first)
        first = end
    assert sizes == groups
    for t in trials:  # every point keeps its own fold values and config
        assert len(t.user_attrs["fold_values"]) == 2
        assert t.user_attrs["config"]["weight_decay"] == t.params["weight_decay"]


def test_failed_training_is_recorded_and_retried(workdir, msd_file, monkeypatch):
    import tuner.tune.stages as stages

    s = session(workdir, str(msd_file), fixes={"lr": "0.01"})
    real = stages.evaluate_points
    failures = []

    def flaky(spec, cfgs, *a, **k):
        if not failures:
            failures.append(cfgs)
            raise RuntimeError("out of memory")
        return real(spec, cfgs, *a, **k)

    monkeypatch.setattr(stages, "evaluate_points", flaky)
    with pytest.raises(RuntimeError):
        s.run_stage("weight_decay")
    state = s.run_stage("weight_decay")
    assert state.state == "done"
    failed = [t for t in state.trials if t.state == TrialState.FAIL]
    # the whole group failed together: every point's trial is failed, then retried
    assert len(failed) == 3 and all("out of memory" in t.user_attrs["error"] for t in failed)
    assert not [t for t in state.trials if t.state == TrialState.RUNNING]


def test_final_writes_model_metrics_and_predict_round_trips(workdir, msd_file, tmp_path):
    fixes = {
        "lr": "0.01",
        "weight_decay": "0.0001",
        "activation": "gelu",
        "norm": "none",
        "optimizer": "adam",
    }
    s = session(workdir, str(msd_file), fixes=fixes)
    state = run_final(s)
    assert state.state == "done"
    out = workdir / "models" / "tiny"
    metrics = json.loads((out / "metrics.json").read_text())
    data = s.data()
    assert metrics["n_test"] == len(data.test[1])
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["test_loss"] > 0
    assert len(metrics["confusion_matrix"]) == 10
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["n_test"]
    assert set(metrics["per_class"]) == set(s.prepared().label_names)
    assert metrics["config"]["activation"] == "gelu"
    history = json.loads((out / "history.json").read_text())
    assert len(history["val_acc"]) == metrics["epochs_trained"]
    summary = final_summary(s)
    assert summary["test_accuracy"] == metrics["test_accuracy"]

    # predict from model.pt alone: the raw test rows give the model's test accuracy
    prepared = s.prepared()
    mean = prepared.manifest.encoding.mean_
    scale = prepared.manifest.encoding.scale_
    raw = prepared.x_test.astype("float64") * scale + mean
    rows = tmp_path / "rows.csv"
    rows.write_text("\n".join(",".join(f"{v:.6f}" for v in r) for r in raw) + "\n")
    labels = predict_file(out / "model.pt", rows)
    names = prepared.label_names
    acc = sum(names[y] == lab for y, lab in zip(prepared.y_test, labels, strict=True)) / len(labels)
    assert acc == pytest.approx(metrics["test_accuracy"], abs=2 / len(labels))

    # the final job runs once
    assert run_final(s).n_complete == 1
    trials = optuna.load_study(study_name="tiny.final", storage=s.storage).trials
    assert len(trials) == 1


def test_real_rows_run_through_a_stage_and_the_final_job(tmp_path, real_head):
    write_tiny_plan(tmp_path)
    s = session(tmp_path, str(real_head))
    lr = s.run_stage("lr")
    assert lr.state == "done" and lr.user_attrs["data"]["n_rows_total"] == 1176
    fixes = {"weight_decay": "0", "activation": "relu", "norm": "none", "optimizer": "adam"}
    s2 = session(tmp_path, str(real_head), fixes=fixes)
    assert run_final(s2).state == "done"
    metrics = json.loads((tmp_path / "models" / "tiny" / "metrics.json").read_text())
    assert metrics["fixed_params"]["lr"] == lr.best_params["lr"]
    assert metrics["n_test"] == len(s2.data().test[1]) > 150


@pytest.mark.slow
def test_extended_plan_runs_end_to_end_and_its_model_predicts(tmp_path, msd_file):
    """The shipped extended plan (architecture grid, TPE rounds, schedules, class weights,
    dropout, an early-stopped final with restored best weights) on 3,000 rows; without its
    ``min_steps``, which on so few rows would train hundreds of epochs."""
    text = (REPO / "studies" / "extended.toml").read_text()
    assert "min_steps = 1500" in text
    plan = tmp_path / "studies" / "extended.toml"
    plan.parent.mkdir(parents=True)
    plan.write_text(text.replace("min_steps = 1500", "min_steps = 0"))
    run_cli(
        "run-all", "--plan", "extended", "--data", str(msd_file), "--threads", "1", "-q",
        cwd=tmp_path, check=True, timeout=600,
    )  # fmt: skip
    metrics = json.loads((tmp_path / "models" / "extended" / "metrics.json").read_text())
    cfg = metrics["config"]
    assert "x".join(map(str, cfg["hidden"])) in load_plan("extended", REPO).stages[0].grid["hidden"]
    assert 0.0 <= cfg["dropout"] <= 0.4 and cfg["schedule"] in ("cosine", "onecycle")
    assert metrics["test_accuracy"] > 0.5
    rows = tmp_path / "rows.csv"
    years, features = synthetic.generate(rows=20, seed=3)
    rows.write_text("\n".join(",".join(f"{v:.6f}" for v in r) for r in features) + "\n")
    labels = predict_file(tmp_path / "models" / "extended" / "model.pt", rows)
    assert len(labels) == 20 and all(lab.endswith("s") for lab in labels)
