"""Workers share a stage through the storage: killed runs resume, concurrent runs split the grid."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from tests._util import (
    WORKER_ARGS,
    assert_each_point_complete_once,
    kill_mid_trial,
    popen_cli,
    run_cli,
    stage_trials,
    write_tiny_plan,
)
from tuner.tune.claims import ClaimTable, new_owner_id
from tuner.tune.coordination import Coordinator
from tuner.tune.state import point_key
from tuner.tune.storage import default_storage_url
from tuner.tune.studies import create_trial


@pytest.mark.slow
def test_sigkilled_stage_resumes_and_completes_each_point_once(tmp_path, msd_file):
    # points of seconds: a look at the states (a new storage connection each) is slower than a
    # point of 4 epochs on a busy machine, so the whole stage once ran between two looks
    write_tiny_plan(tmp_path, wd_epochs=60)
    args = ("run-stage", "weight_decay", "--data", str(msd_file), *WORKER_ARGS)
    proc = popen_cli(*args, cwd=tmp_path)
    # kill it mid-trial: after the first point is complete, while the second is running
    kill_mid_trial(proc, lambda: [t.state for t in stage_trials(default_storage_url(tmp_path))])
    before = stage_trials(default_storage_url(tmp_path))
    assert any(t.state == TrialState.RUNNING for t in before)
    n_complete_before = sum(t.state == TrialState.COMPLETE for t in before)

    done = run_cli(*args, cwd=tmp_path, check=True)
    after = stage_trials(default_storage_url(tmp_path))
    assert_each_point_complete_once(after)
    # the killed trial was failed, not left RUNNING; finished points were not trained again
    assert sum(t.state == TrialState.FAIL for t in after) == 1
    assert len(after) == len(before) + (3 - n_complete_before)
    assert "weight_decay" in done.stdout


@pytest.mark.slow
def test_two_concurrent_workers_share_the_grid(tmp_path, msd_file):
    write_tiny_plan(tmp_path, wd_epochs=3)
    args = ("run-stage", "weight_decay", "--data", str(msd_file), *WORKER_ARGS)
    run_cli("prepare", "--data", str(msd_file), cwd=tmp_path, check=True)
    workers = [popen_cli(*args, cwd=tmp_path) for _ in range(2)]
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
    trials = stage_trials(default_storage_url(tmp_path))
    assert_each_point_complete_once(trials)
    assert len(trials) == 3  # no duplicate, no failed trial
    assert len({t.user_attrs["worker"] for t in trials}) == 2


def test_a_trial_its_dead_worker_never_named_in_its_claim_is_failed_on_takeover(tmp_path):
    """A worker that dies between creating a point's trial and writing the trial's id into
    its claim leaves a RUNNING trial the claim does not name. The worker that takes the
    claim over finds it by its ``worker`` attr and fails it: no trial stays RUNNING."""
    url = f"sqlite:///{tmp_path / 'studies.sqlite3'}"
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(study_name="tiny.weight_decay", storage=storage)
    claims = ClaimTable(url, grace_period_s=3600)  # only the dead process frees the claim
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    me = new_owner_id()
    dead = me.replace(f":{os.getpid()}:", f":{int(gone.stdout)}:")
    dists = {"weight_decay": CategoricalDistribution((0.0, 0.01))}
    points = [{"weight_decay": 0.0}, {"weight_decay": 0.01}]
    keys = [point_key(p) for p in points]
    left = []
    for point, key in zip(points, keys, strict=True):
        assert claims.try_claim(study.study_name, key, dead, is_free=lambda c: False)[0]
        left.append(create_trial(storage, study, point, dists, dead)[1])
    claims.set_trial(study.study_name, keys[1], dead, left[1])  # the second got that far

    settings = SimpleNamespace(group_size=0, heartbeat_interval=1, poll_interval=0.1)
    taker = Coordinator("tiny", storage, claims, me, settings)
    assert taker.claim_points(study, study.get_trials(), keys) == keys
    assert [storage.get_trial(t).state for t in left] == [TrialState.FAIL, TrialState.FAIL]
    claims.close()
    storage.engine.dispose()
