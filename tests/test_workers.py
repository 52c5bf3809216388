"""Workers share a stage through the storage: killed runs resume, concurrent runs split the grid."""

from __future__ import annotations

import signal
import time

import optuna
from optuna.trial import TrialState

from tests._util import (
    popen_cli,
    run_cli,
    write_tiny_plan,
)
from tuner.stages import point_key
from tuner.storage import default_storage_url

WD_POINTS = {point_key({"weight_decay": v}) for v in (0.0, 1e-4, 1e-2)}
STAGE_ARGS = (
    "--plan",
    "tiny",
    "--fix",
    "lr=0.01",
    "--heartbeat-interval",
    "1",
    "--grace-period",
    "4",
)


def _trials(workdir, name="tiny.weight_decay"):
    storage = optuna.storages.RDBStorage(default_storage_url(workdir))
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return []
    finally:
        storage.engine.dispose()


def _assert_each_point_complete_once(trials):
    complete = [point_key(t.params) for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(complete) == sorted(WD_POINTS), complete
    assert not [t for t in trials if t.state == TrialState.RUNNING]


def test_sigkilled_stage_resumes_and_completes_each_point_once(tmp_path, msd_file):
    write_tiny_plan(tmp_path, wd_epochs=4)
    args = ("run-stage", "weight_decay", "--data", str(msd_file), *STAGE_ARGS)
    proc = popen_cli(*args, cwd=tmp_path)
    deadline = time.monotonic() + 120
    # kill it mid-trial: after the first point is complete, while the second is running
    while time.monotonic() < deadline:
        states = [t.state for t in _trials(tmp_path)]
        if TrialState.COMPLETE in states and TrialState.RUNNING in states:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _trials(tmp_path)
    assert any(t.state == TrialState.RUNNING for t in before)
    n_complete_before = sum(t.state == TrialState.COMPLETE for t in before)

    done = run_cli(*args, cwd=tmp_path, check=True)
    after = _trials(tmp_path)
    _assert_each_point_complete_once(after)
    # the killed trial was failed, not left RUNNING; finished points were not trained again
    assert sum(t.state == TrialState.FAIL for t in after) == 1
    assert len(after) == len(before) + (3 - n_complete_before)
    assert "weight_decay" in done.stdout


def test_two_concurrent_workers_share_the_grid(tmp_path, msd_file):
    write_tiny_plan(tmp_path, wd_epochs=3)
    args = ("run-stage", "weight_decay", "--data", str(msd_file), *STAGE_ARGS)
    run_cli("prepare", "--data", str(msd_file), cwd=tmp_path, check=True)
    workers = [popen_cli(*args, cwd=tmp_path) for _ in range(2)]
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
    trials = _trials(tmp_path)
    _assert_each_point_complete_once(trials)
    assert len(trials) == 3  # no duplicate, no failed trial
    assert len({t.user_attrs["worker"] for t in trials}) == 2
