"""Helpers shared by the pipeline tests: a tiny plan, sessions, and the CLI as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tuner.data.prepare import DataSpec
from tuner.plan import load_plan
from tuner.report.notes import DashboardNotes
from tuner.tune.stages import Session, Settings, point_key
from tuner.tune.storage import default_storage_url

REPO = Path(__file__).resolve().parents[1]

# The quick plan's structure with a 16x16 MLP and one epoch everywhere: fast enough to run
# whole in a few seconds, yet every stage kind, objective and BatchNorm are exercised.
TINY_PLAN = """
name = "tiny"
[defaults]
hidden = [16, 16]
batch_size = 64

[[stages]]
name = "lr"
kind = "lr_range_test"
epochs = 1
objective = "final"
candidates = [0.5, 1.0]

[[stages]]
name = "weight_decay"
kind = "cv"
folds = 2
epochs = {wd_epochs}
objective = "mean"
[stages.grid]
weight_decay = [0.0, 1e-4, 1e-2]

[[stages]]
name = "activation"
kind = "sweep"
epochs = 1
objective = "peak"
[stages.grid]
activation = ["relu", "gelu"]

[[stages]]
name = "normalization"
kind = "sweep"
epochs = 2
objective = "final"
[stages.grid]
norm = ["none", "batch", "layer"]

[[stages]]
name = "optimizer"
kind = "sweep"
epochs = 1
objective = "peak"
[stages.grid]
optimizer = ["adam", "sgd", "rmsprop"]

[final]
epochs = 2
patience = 1
"""


def write_tiny_plan(workdir: Path, wd_epochs: int = 1) -> Path:
    path = workdir / "studies" / "tiny.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TINY_PLAN.format(wd_epochs=wd_epochs))
    return path


def session(
    workdir: Path,
    data: str,
    *,
    plan: str = "tiny",
    fixes: dict | None = None,
    rows: int | None = None,
    group_size: int = 0,
) -> Session:
    settings = Settings(
        group_size=group_size,
        workdir=workdir,
        storage_url=default_storage_url(workdir),
        data=DataSpec(source=data, rows=rows),
        fixes=fixes or {},
        heartbeat_interval=1,
        grace_period=4,
        poll_interval=0.2,
    )
    return Session(load_plan(plan, workdir), settings, observers=[DashboardNotes()])


def run_cli(
    *args: str, cwd: Path, check: bool = False, timeout: float = 300
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TUNER_STORAGE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "tuner", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"tuner {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def popen_cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TUNER_STORAGE", None)
    return subprocess.Popen(
        [sys.executable, "-m", "tuner", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# The weight-decay grid of TINY_PLAN, and worker flags for tests that run several at once: one
# torch thread each (two workers with two threads on two cores mostly wait), fast heartbeats.
WD_POINTS = {point_key({"weight_decay": v}) for v in (0.0, 1e-4, 1e-2)}
WORKER_ARGS = ("--plan", "tiny", "--fix", "lr=0.01", "--threads", "1")
WORKER_ARGS += ("--heartbeat-interval", "1", "--grace-period", "4", "--group-size", "1")


def stage_trials(storage_url: str, name: str = "tiny.weight_decay") -> list:
    """The trials of study ``name`` (none when it does not exist yet)."""
    storage = optuna.storages.RDBStorage(storage_url)
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return []
    finally:
        storage.engine.dispose()


def assert_each_point_complete_once(trials) -> None:
    complete = [point_key(t.params) for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(complete) == sorted(WD_POINTS), complete
    assert not [t for t in trials if t.state == TrialState.RUNNING]


def assert_model_predicts_as_scored(s: Session, out: Path, tmp_path: Path):
    """The final job's ``out/model.pt`` loads with its bundle, scores the test split exactly as
    ``metrics.json`` says, and ``predict`` on the test rows written as raw UCI-format values
    reproduces that accuracy (up to the rounding of the written values). Returns the model."""
    import json

    import pytest

    from tuner.predict import load_bundle, predict_file
    from tuner.train.model import evaluate

    model, _ = load_bundle(out / "model.pt")
    data = s.data()
    metrics = json.loads((out / "metrics.json").read_text())
    assert evaluate(model, *data.test) == (metrics["test_loss"], metrics["test_accuracy"])
    prepared = s.prepared()
    enc = prepared.manifest.encoding
    raw = prepared.x_test.astype("float64") * enc.scale_ + enc.mean_
    rows = tmp_path / "rows.csv"
    rows.write_text("\n".join(",".join(f"{v:.6f}" for v in r) for r in raw) + "\n")
    labels = predict_file(out / "model.pt", rows)
    names = prepared.label_names
    hits = sum(names[y] == lab for y, lab in zip(prepared.y_test, labels, strict=True))
    assert hits / len(labels) == pytest.approx(metrics["test_accuracy"], abs=3 / len(labels))
    return model


def kill_mid_trial(proc: subprocess.Popen, states: Callable[[], list[TrialState]]) -> None:
    """SIGKILL ``proc`` after a point of its stage is complete and while another is running
    (``states()``: the stage's trial states). It is stopped (SIGSTOP) first and the states read
    again, so "mid-trial" holds however short the points are: a point that finished meanwhile
    lets it go on (SIGCONT) to the next one."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        now = states()
        if TrialState.COMPLETE in now and TrialState.RUNNING in now:
            proc.send_signal(signal.SIGSTOP)
            if TrialState.RUNNING in states():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return
            proc.send_signal(signal.SIGCONT)
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("no point was running after a complete one within 120 s")
