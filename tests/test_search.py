"""TPE stages: points proposed a round at a time, stored, claimed and resumed like a grid's;
early stopping inside sweeps."""

from __future__ import annotations

import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from tests._util import popen_cli, session, stage_trials
from tuner.errors import PlanError
from tuner.plan import load_plan
from tuner.train.config import TrainConfig
from tuner.tune import objectives
from tuner.tune.kinds import stage_spec
from tuner.tune.objectives import evaluate_points
from tuner.tune.search import distributions, propose
from tuner.tune.stages import point_key
from tuner.tune.storage import default_storage_url

TPE_PLAN = """
name = "searchy"
[defaults]
hidden = [16, 16]
batch_size = 64
lr = 0.01

[[stages]]
name = "regularization"
kind = "sweep"
sampler = "tpe"
trials = 4
round_size = 2
epochs = 2
[stages.space]
dropout = { low = 0.0, high = 0.5 }
weight_decay = { low = 1e-6, high = 1e-2, log = true }

[final]
epochs = 1
"""

SPACE = stage_spec(
    name="reg",
    kind="sweep",
    sampler="tpe",
    trials=8,
    round_size=4,
    space={"lr": {"low": 1e-4, "high": 1e-1, "log": True}, "hidden": {"choices": ["16", "32"]}},
)


def _write_plan(tmp_path):
    path = tmp_path / "studies" / "searchy.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TPE_PLAN)


def test_proposals_start_from_the_incumbent_stay_inside_and_repeat_for_a_seed():
    first = {"lr": 1e-3, "hidden": "32"}
    a = propose(SPACE, [], 4, seed=0, first=first)
    assert a[0] == first
    assert len({point_key(p) for p in a}) == 4
    for p in a:
        assert 1e-4 <= p["lr"] <= 1e-1 and p["hidden"] in ("16", "32")
        assert p["lr"] == float(f"{p['lr']:.3g}")  # rounded to 3 significant digits
    assert propose(SPACE, [], 4, seed=0, first=first) == a
    assert propose(SPACE, [], 4, seed=1, first=first) != a


def test_later_rounds_use_the_results_and_never_repeat_a_point():
    dists = distributions(SPACE)
    # a landscape where a small lr wins: after the start-up round TPE proposes below 1e-2
    history = [
        create_trial(params={"lr": lr, "hidden": h}, distributions=dists, value=v)
        for lr, h, v in [
            (1e-4, "16", 0.70),
            (3e-4, "32", 0.72),
            (3e-2, "16", 0.30),
            (9e-2, "32", 0.20),
        ]
    ]
    nxt = propose(SPACE, history, 4, seed=0)
    assert all(p["lr"] < 1e-2 for p in nxt), nxt
    tried = {point_key(t.params) for t in history}
    assert not tried & {point_key(p) for p in nxt}


def test_a_small_categorical_space_runs_out_instead_of_repeating():
    spec = stage_spec(
        name="act", kind="sweep", sampler="tpe", trials=5, round_size=5,
        space={"activation": {"choices": ["relu", "gelu"]}},
    )  # fmt: skip
    assert sorted(p["activation"] for p in propose(spec, [], 5, seed=0)) == ["gelu", "relu"]


@pytest.mark.slow
def test_tpe_stage_runs_in_rounds_from_the_incumbent_and_resumes(tmp_path, msd_file, monkeypatch):
    _write_plan(tmp_path)
    real = objectives.evaluate_points
    calls = []

    def crash_in_round_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr("tuner.tune.stages.evaluate_points", crash_in_round_two)
    s = session(tmp_path, str(msd_file), plan="searchy")
    try:
        with pytest.raises(KeyboardInterrupt):
            s.run_stage("regularization")
        state = s.stage_state("regularization")
        assert state.state == "running" and state.n_total == 4 and state.n_complete == 2
    finally:
        s.close()

    monkeypatch.setattr("tuner.tune.stages.evaluate_points", real)
    s = session(tmp_path, str(msd_file), plan="searchy")
    try:
        state = s.run_stage("regularization")
        assert state.state == "done" and state.n_complete == 4
        rounds = state.user_attrs["rounds"]
        assert [len(r) for r in rounds] == [2, 2]
        # the incumbent (weight_decay 0) lies outside the log range: round 0 is TPE's alone
        assert all(p["weight_decay"] > 0 for p in rounds[0])
        trials = state.trials
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        assert sorted(point_key(t.params) for t in complete) == sorted(
            point_key(p) for r in rounds for p in r
        )
        assert sum(t.state == TrialState.FAIL for t in trials) == 2  # the interrupted round
        assert isinstance(complete[0].distributions["dropout"], FloatDistribution)
        assert state.best_params in [dict(t.params) for t in complete]
        again = s.run_stage("regularization")  # done: nothing is trained again
        assert len(again.trials) == len(trials)
    finally:
        s.close()


def test_incumbent_inside_the_space_is_the_first_point(tmp_path, msd_file):
    _write_plan(tmp_path)
    s = session(tmp_path, str(msd_file), plan="searchy", fixes={"weight_decay": 1e-4})
    try:
        # weight_decay is what the stage tunes, so it cannot be fixed...
        with pytest.raises(Exception, match="tunes"):
            s.run_stage("regularization")
    finally:
        s.close()
    plan = (tmp_path / "studies" / "searchy.toml").read_text()
    plan = plan.replace("lr = 0.01\n", "lr = 0.01\nweight_decay = 1e-4\ndropout = 0.1\n")
    (tmp_path / "studies" / "searchy.toml").write_text(plan)
    s = session(tmp_path, str(msd_file), plan="searchy")
    try:
        state = s.run_stage("regularization")
        assert state.user_attrs["rounds"][0][0] == {"dropout": 0.1, "weight_decay": 1e-4}
    finally:
        s.close()


@pytest.mark.slow
def test_two_workers_share_a_tpe_stage(tmp_path, msd_file):
    _write_plan(tmp_path)
    args = ("run-stage", "regularization", "--plan", "searchy", "--data", str(msd_file))
    args += ("--threads", "1", "--group-size", "1", "--heartbeat-interval", "1")
    workers = [popen_cli(*args, cwd=tmp_path) for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
    trials = stage_trials(default_storage_url(tmp_path), "searchy.regularization")
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({point_key(t.params) for t in trials}) == 4


def test_sweep_runs_stop_early_when_validation_loss_stalls():
    from tests.test_objectives import DATA

    stage = stage_spec(name="lr", kind="sweep", epochs=8, objective="peak", patience=1)
    base = TrainConfig(hidden=(32, 32), batch_size=64)
    cfgs = [base.with_params({"lr": lr}) for lr in (3e-1, 1e-4)]
    results = evaluate_points(stage, cfgs, DATA, seed=0)
    for result in results:
        losses = result.attrs["history"]["val_loss"]
        n = len(losses)
        stalled = [i for i in range(1, 8) if min(losses[: i + 1]) == min(losses[:i])]
        expected = stalled[0] + 1 if stalled else 8  # stops after the first epoch without a gain
        assert n == expected and result.attrs["epochs_trained"] == n
        assert result.attrs["stopped_early"] == (n < 8) and not result.pruned
    assert results[0].attrs["epochs_trained"] < 8  # lr 0.3 overshoots quickly


@pytest.mark.parametrize(
    "extra, message",
    [
        ('sampler = "tpe"\ntrials = 4\n[stages.grid]\nlr = [0.1]\n', "space"),
        ('sampler = "tpe"\ntrials = 0\n[stages.space]\nlr = { low = 1e-3, high = 1e-1 }\n', "trials"),
        ('sampler = "tpe"\ntrials = 2\n[stages.space]\nlr = { low = 1e-1, high = 1e-3 }\n', "low < high"),
        ('sampler = "tpe"\ntrials = 2\n[stages.space]\nlr = { low = 0.0, high = 1e-1, log = true }\n', "lr must be > 0"),
        ('sampler = "tpe"\ntrials = 2\n[stages.space]\nactivation = { low = 0, high = 1 }\n', "choices"),
        ('sampler = "tpe"\ntrials = 2\n[stages.space]\ndropout = { low = 0, high = 1.5 }\n', "dropout"),
        ("[stages.space]\nlr = { low = 1e-3, high = 1e-1 }\n", "sampler"),
        ('patience = 2\n[stages.grid]\nlr = [0.1]\n', "patience"),
    ],
)  # fmt: skip
def test_bad_search_stages_are_rejected(tmp_path, extra, message):
    head = '[[stages]]\nname = "a"\n'
    if "patience" in extra:  # early stopping is for sweeps: a cv stage rejects it
        head += 'kind = "cv"\nfolds = 2\nobjective = "mean"\n'
    else:
        head += 'kind = "sweep"\n'
    path = tmp_path / "bad.toml"
    path.write_text(head + extra)
    with pytest.raises(PlanError, match=message):
        load_plan(str(path), tmp_path)


def test_min_steps_trains_more_epochs_on_small_data_only():
    from tests.test_objectives import DATA
    from tuner.config import planned_epochs

    assert planned_epochs(5, 1500, 360_741, 256) == 5  # full size: 1,410 steps an epoch
    assert planned_epochs(5, 1500, 823, 256) == 375  # 1,176 rows: 4 steps an epoch
    assert planned_epochs(5, 0, 823, 256) == 5
    # 600 rows at batch 64: 10 steps an epoch, so 25 steps take 3 epochs
    stage = stage_spec(name="a", kind="sweep", epochs=1, objective="final", min_steps=25)
    cfg = TrainConfig(hidden=(16,), batch_size=64)
    (result,) = evaluate_points(stage, [cfg], DATA, seed=0)
    assert result.attrs["epochs_trained"] == 3
