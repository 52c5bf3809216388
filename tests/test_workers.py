"""Workers share a stage through the storage: killed runs resume, concurrent runs split the grid."""

from __future__ import annotations

import signal
import time

from optuna.trial import TrialState

from tests._util import (
    WORKER_ARGS,
    assert_each_point_complete_once,
    popen_cli,
    run_cli,
    stage_trials,
    write_tiny_plan,
)
from tuner.tune.storage import default_storage_url


def test_sigkilled_stage_resumes_and_completes_each_point_once(tmp_path, msd_file):
    write_tiny_plan(tmp_path, wd_epochs=4)
    args = ("run-stage", "weight_decay", "--data", str(msd_file), *WORKER_ARGS)
    proc = popen_cli(*args, cwd=tmp_path)
    deadline = time.monotonic() + 120
    # kill it mid-trial: after the first point is complete, while the second is running
    while time.monotonic() < deadline:
        states = [t.state for t in stage_trials(default_storage_url(tmp_path))]
        if TrialState.COMPLETE in states and TrialState.RUNNING in states:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
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
