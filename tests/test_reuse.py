"""Trial reuse (issue 17): an identical trial of an earlier stage is recorded instead of trained,
the final job scores the kept weights of the stage trial that trained exactly its model, and
neither changes a decision or a test score."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from tests._util import kill_mid_trial, popen_cli, run_cli, stage_trials
from tuner.config import FinalSpec
from tuner.data.prepare import DataSpec
from tuner.errors import PlanError
from tuner.plan import load_plan, parse_plan
from tuner.report.notes import DashboardNotes
from tuner.train.config import TrainConfig
from tuner.train.loop import train_one
from tuner.train.tensors import TensorData
from tuner.tune.final import run_final
from tuner.tune.kinds import stage_spec
from tuner.tune.objectives import evaluate_points
from tuner.tune.reuse import FinalRule
from tuner.tune.stages import Session, Settings, incumbent, point_key
from tuner.tune.storage import default_storage_url

# Sweeps that all train like the final job (same epochs, same seed): every later stage's
# incumbent point is an earlier stage's winner, and the final model is the optimizer stage's
# winning run. No BatchNorm: its pre-norm bias follows rounding noise (see tuner/train/loop.py), so
# a run trained in another group is not the same to the last row of validation accuracy.
CHAIN_PLAN = """
name = "chain"
{reuse}
[defaults]
hidden = [16, 16]
batch_size = 64
lr = 0.01

[[stages]]
name = "init"
kind = "sweep"
epochs = {epochs}
objective = "peak"
[stages.grid]
init = ["default", "xavier_uniform"]

[[stages]]
name = "activation"
kind = "sweep"
epochs = {epochs}
objective = "peak"
[stages.grid]
activation = ["relu", "gelu", "tanh"]

[[stages]]
name = "normalization"
kind = "sweep"
epochs = {epochs}
objective = "peak"
[stages.grid]
norm = ["none", "layer"]

[[stages]]
name = "optimizer"
kind = "sweep"
epochs = {epochs}
objective = "peak"
[stages.grid]
optimizer = ["adam", "rmsprop"]

[final]
epochs = {epochs}
patience = 1
"""

LATER = ("activation", "normalization", "optimizer")
ARGS = ("--plan", "chain", "--threads", "1", "--heartbeat-interval", "1", "--grace-period", "4")


def write_chain_plan(workdir: Path, epochs: int = 3, reuse: bool | None = None) -> Path:
    path = workdir / "studies" / "chain.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = "" if reuse is None else f"reuse = {str(reuse).lower()}"
    path.write_text(CHAIN_PLAN.format(epochs=epochs, reuse=line))
    return path


def chain_session(workdir: Path, data: Path, *, reuse: bool = True) -> Session:
    settings = Settings(
        workdir=workdir,
        storage_url=default_storage_url(workdir),
        data=DataSpec(source=str(data)),
        heartbeat_interval=1,
        grace_period=4,
        poll_interval=0.2,
        reuse=reuse,
    )
    return Session(load_plan("chain", workdir), settings, observers=[DashboardNotes()])


def run_plan(workdir: Path, data: Path, *, reuse: bool) -> tuple[Session, dict]:
    write_chain_plan(workdir)
    s = chain_session(workdir, data, reuse=reuse)
    for spec in s.plan.stages:
        s.run_stage(spec.name)
    run_final(s)
    metrics = json.loads((workdir / "models" / "chain" / "metrics.json").read_text())
    return s, metrics


@pytest.mark.slow
def test_reuse_keeps_decisions_and_final_scores_and_skips_identical_training(tmp_path, msd_file):
    on, m_on = run_plan(tmp_path / "on", msd_file, reuse=True)
    off, m_off = run_plan(tmp_path / "off", msd_file, reuse=False)
    try:
        for spec in on.plan.stages:
            a, b = on.stage_state(spec.name), off.stage_state(spec.name)
            assert a.best_params == b.best_params, spec.name
            assert [p.params for p in a.points] == [p.params for p in b.points]
            for pa, pb in zip(a.points, b.points, strict=True):
                assert pa.mean == pytest.approx(pb.mean, abs=1e-9), (spec.name, pa.params)
            assert not b.reused  # --no-reuse trains everything
            trained = [t for t in a.trials if "reused_from" not in t.user_attrs]
            if spec.name in LATER:
                # the incumbent point is the previous stage's winner: recorded, not trained
                base = on.plan.defaults.with_params(a.fixed_params or {})
                key = point_key(incumbent(spec, base))
                assert set(a.reused) == {key}, spec.name
                source_study, number = a.reused[key].split("#")
                source = on.stage_state(source_study.split(".")[1])
                src = next(t for t in source.trials if t.number == int(number))
                mine = next(t for t in a.trials if point_key(t.params) == key)
                assert mine.value == src.value
                assert mine.intermediate_values == src.intermediate_values
                assert mine.user_attrs["values"] == src.user_attrs["values"]
                assert mine.user_attrs["history"] == src.user_attrs["history"]
                assert mine.user_attrs["seconds"] == 0.0
                assert len(trained) == spec.n_points - 1
                status_points = a.to_dict()["points"]
                assert [p["reused_from"] for p in status_points if p["reused_from"]] == [
                    a.reused[key]
                ]
            else:
                assert not a.reused and len(trained) == spec.n_points
        # the final model is the optimizer winner's run, scored on test: the same scores
        winner = on.stage_state("optimizer")
        assert m_on["reused_from"] is not None and m_off["reused_from"] is None
        assert m_on["config"] == m_off["config"]
        assert m_on["test_accuracy"] == m_off["test_accuracy"]
        assert m_on["test_loss"] == pytest.approx(m_off["test_loss"], rel=1e-5)
        assert m_on["epochs_trained"] == m_off["epochs_trained"]
        assert m_on["stopped_early"] == m_off["stopped_early"]
        chosen = next(t for t in winner.trials if t.params == winner.best_params)
        assert m_on["reused_from"] == chosen.user_attrs.get(
            "reused_from", f"{winner.study}#{chosen.number}"
        )
        final = on.stage_state("final").trials[-1]
        assert final.user_attrs["reused_from"] == m_on["reused_from"]
        bundle = torch.load(tmp_path / "on" / "models" / "chain" / "model.pt", weights_only=True)
        assert set(bundle["state_dict"]) == set(
            torch.load(tmp_path / "off" / "models" / "chain" / "model.pt", weights_only=True)[
                "state_dict"
            ]
        )
        history_on = json.loads((tmp_path / "on/models/chain/history.json").read_text())
        history_off = json.loads((tmp_path / "off/models/chain/history.json").read_text())
        assert history_on["val_acc"] == pytest.approx(history_off["val_acc"], abs=1e-9)
        assert history_on["val_loss"] == pytest.approx(history_off["val_loss"], rel=1e-5)
        proc = run_cli("status", "--plan", "chain", "--json", cwd=tmp_path / "on", check=True)
        status = json.loads(proc.stdout)
        for stage in status["stages"]:
            reused = [p["reused_from"] for p in stage["points"] if p["reused_from"]]
            assert len(reused) == (stage["name"] in LATER), stage
        assert status["final"]["reused_from"] == m_on["reused_from"]
    finally:
        on.close()
        off.close()
    # a final that trains longer than the sweeps (as the extended plan's): trained as before
    path = tmp_path / "on" / "studies" / "chain.toml"
    path.write_text(path.read_text().replace("[final]\nepochs = 3", "[final]\nepochs = 4"))
    longer = chain_session(tmp_path / "on", msd_file)
    try:
        run_final(longer)
        metrics = json.loads((tmp_path / "on/models/chain/metrics.json").read_text())
        assert metrics["reused_from"] is None and metrics["config"] == m_on["config"]
        assert longer.stage_state("final").study != "chain.final"  # a new final study
    finally:
        longer.close()


@pytest.mark.parametrize("restore_best", [False, True])
def test_kept_weights_are_what_the_final_job_trains(msd_file, tmp_path, restore_best):
    """The final's early stopping replayed on a sweep member keeps the weights (and history)
    that ``train_one`` with that rule returns for the same configuration and seed."""
    from tuner.data.prepare import prepare

    data = TensorData.from_prepared(prepare(DataSpec(source=str(msd_file)), tmp_path / "data"))
    stage = stage_spec(name="s", kind="sweep", epochs=8, objective="peak")
    cfgs = [TrainConfig(hidden=(16, 16), lr=0.05, activation=a) for a in ("relu", "gelu")]
    rule = FinalRule.of(FinalSpec(epochs=8, patience=1, restore_best=restore_best), cfgs[1], 1)
    results = evaluate_points(stage, cfgs, data, seed=3, keep={1: rule})
    assert results[0].kept is None
    state, epochs, stopped = results[1].kept
    model, history = train_one(
        cfgs[1],
        data.train,
        data.val,
        epochs=8,
        seed=3,
        n_classes=data.n_classes,
        patience=1,
        restore_best=restore_best,
    )
    assert epochs == len(history.epochs) and stopped == history.stopped_early
    alone = model.state_dict()
    assert set(state) == set(alone)
    for name, value in alone.items():
        torch.testing.assert_close(state[name], value, rtol=1e-4, atol=1e-5)


def test_plan_option_and_flag_turn_reuse_off(tmp_path, msd_file):
    write_chain_plan(tmp_path, reuse=False)
    plan = load_plan("chain", tmp_path)
    assert plan.reuse is False
    write_chain_plan(tmp_path)
    assert load_plan("chain", tmp_path).reuse is True
    assert plan.content == load_plan("chain", tmp_path).content  # reuse changes no number
    with pytest.raises(PlanError, match="reuse"):
        parse_plan({"name": "x", "reuse": "yes", "stages": []}, name="x")
    s = chain_session(tmp_path, msd_file)
    try:
        assert s.reusing()
        s.settings = dataclasses.replace(s.settings, reuse=False)
        assert not s.reusing()
        pruned = stage_spec(name="p", kind="sweep", pruner="median", grid={"lr": (0.1,)})
        s.settings = dataclasses.replace(s.settings, reuse=True)
        assert not s.reusing(pruned)  # pruning depends on the peers: never reused
    finally:
        s.close()
    proc = run_cli("run-stage", "init", "--help", cwd=tmp_path, check=True)
    assert "--no-reuse" in proc.stdout


def _stage(workdir: Path, stage: str) -> list:
    return stage_trials(default_storage_url(workdir), f"chain.{stage}")


def _each_point_once(trials, n_points: int) -> None:
    complete = [point_key(t.params) for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == len(set(complete)) == n_points, complete
    assert not [t for t in trials if t.state == TrialState.RUNNING]


@pytest.mark.slow
def test_two_workers_reuse_each_point_once(tmp_path, msd_file):
    write_chain_plan(tmp_path)
    data = ("--data", str(msd_file))
    run_cli("run-stage", "init", *data, *ARGS, cwd=tmp_path, check=True)
    args = ("run-stage", "activation", *data, *ARGS, "--group-size", "1")
    workers = [popen_cli(*args, cwd=tmp_path) for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
    trials = _stage(tmp_path, "activation")
    _each_point_once(trials, 3)
    assert len(trials) == 3  # no duplicate, no failed trial
    reused = [t for t in trials if "reused_from" in t.user_attrs]
    assert [t.params for t in reused] == [{"activation": "relu"}]
    assert reused[0].user_attrs["reused_from"].startswith("chain.init#")


@pytest.mark.slow
def test_killed_worker_resumes_with_reuse(tmp_path, msd_file):
    write_chain_plan(tmp_path, epochs=25)
    data = ("--data", str(msd_file))
    run_cli("run-stage", "init", *data, *ARGS, cwd=tmp_path, check=True)
    args = ("run-stage", "activation", *data, *ARGS, "--group-size", "1")
    proc = popen_cli(*args, cwd=tmp_path)
    # the reused point done, a trained one running
    kill_mid_trial(proc, lambda: [t.state for t in _stage(tmp_path, "activation")])
    run_cli(*args, cwd=tmp_path, check=True)
    trials = _stage(tmp_path, "activation")
    _each_point_once(trials, 3)
    assert sum(t.state == TrialState.FAIL for t in trials) == 1
    reused = [t for t in trials if "reused_from" in t.user_attrs]
    assert [t.params for t in reused] == [{"activation": "relu"}]
