"""Failures of the environment, through the CLI: each is one line ``tuner: error: ...`` and exit
status 2 (143 for SIGTERM), no traceback, no trial left RUNNING, and the next run resumes.

Non-finite stored values (strict ``status --json``, ``report``), corrupt SQLite files, a full
disk (simulated: the write raises ENOSPC or SQLite's "database or disk is full"), unwritable
paths and out-of-range numbers, passwords in storage URLs, and SIGTERM.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests._util import (
    WORKER_ARGS,
    assert_each_point_complete_once,
    popen_cli,
    run_cli,
    stage_trials,
    write_tiny_plan,
)
from tuner.cli import main
from tuner.config import fmt_value
from tuner.tune.storage import default_storage_url, redact, scrub

# every point of TINY_PLAN's later stages given by hand: `final` runs without any stage
ALL_FIXED = ("--fix", "lr=0.01", "--fix", "weight_decay=0", "--fix", "activation=relu")
ALL_FIXED += ("--fix", "norm=none", "--fix", "optimizer=adam")


def cli(capsys, *args: str) -> subprocess.CompletedProcess:
    """``tuner ARGS`` in this process (no interpreter start-up: fast), as a CompletedProcess.
    An exception that escapes ``main`` (what would be a traceback) fails the test."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["tuner", *args], code, out, err)


def one_error_line(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    """The single ``tuner: error:`` line of a failed command (asserting there is exactly one
    and no traceback), without its prefix."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tuner: error:")]
    assert len(errors) == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr
    return errors[0].removeprefix("tuner: error: ")


def no_running(url: str) -> None:
    storage = optuna.storages.RDBStorage(url)
    try:
        for summary in storage.get_all_studies():
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            running = [t.number for t in study.get_trials() if t.state == TrialState.RUNNING]
            assert not running, f"{summary.study_name}: trials {running} left RUNNING"
    finally:
        storage.engine.dispose()


# -- non-finite values in the storage (#3) -----------------------------------------------------
def test_fmt_value_handles_nan_and_inf():
    assert [fmt_value(v) for v in (float("nan"), float("inf"), -float("inf"))] == [
        "nan",
        "inf",
        "-inf",
    ]
    assert fmt_value(1e-5) == "1e-5" and fmt_value(2e6) == "2e+6"


@pytest.mark.slow
def test_status_json_is_strict_and_report_works_with_non_finite_stored_values(
    tmp_path, uci_file, capsys
):
    data = str(uci_file(n=600))
    write_tiny_plan(tmp_path)
    work = ("--plan", "tiny", "--workdir", str(tmp_path), "-q")
    for stage in ("lr", "weight_decay"):
        assert cli(capsys, "run-stage", stage, *work, "--data", data).returncode == 0
    # what a diverged run stored before values were checked: NaN/inf in results and choices
    db = sqlite3.connect(tmp_path / "studies" / "tuner.sqlite3")
    with db:
        row = "select study_id from studies where study_name = ?"
        (lr_id,) = db.execute(row, ("tiny.lr",)).fetchone()
        (wd_id,) = db.execute(row, ("tiny.weight_decay",)).fetchone()
        key = "select value_json from study_user_attributes where study_id = ? and key = ?"
        curve = json.loads(db.execute(key, (lr_id, "lr_range_test")).fetchone()[0])
        curve.update(chosen=float("inf"), suggestion=float("nan"))
        db.execute(
            "update study_user_attributes set value_json = ? where study_id = ? and key = ?",
            (json.dumps(curve), lr_id, "lr_range_test"),
        )
        first = "select min(trial_id) from trials where study_id = ?"
        (trial_id,) = db.execute(first, (wd_id,)).fetchone()
        for name, value in (("values", "[NaN, Infinity]"), ("std", "NaN")):
            db.execute(
                "update trial_user_attributes set value_json = ? where trial_id = ? and key = ?",
                (value, trial_id, name),
            )
    db.close()

    proc = cli(capsys, "status", *work, "--json")
    assert proc.returncode == 0, proc.stderr

    def refuse(constant: str) -> None:
        raise AssertionError(f"status --json printed {constant}, which is not JSON")

    status = json.loads(proc.stdout, parse_constant=refuse)
    points = status["stages"][1]["points"]
    assert None in [p["mean"] for p in points]  # the non-finite mean is null
    assert status["stages"][1]["best_value"] is not None  # a finite point still wins

    assert cli(capsys, "report", *work).returncode == 0
    assert "chosen inf" in (tmp_path / "reports" / "tiny" / "report.md").read_text()


# -- corrupt SQLite files (#4) -----------------------------------------------------------------
def _corrupt_storages(tmp_path: Path, capsys) -> list[Path]:
    """Two workdirs with a plan: a text file as the database, and a truncated database."""
    text = tmp_path / "text"
    write_tiny_plan(text)
    (text / "studies" / "tuner.sqlite3").write_text("these are my notes, not a database\n")

    truncated = tmp_path / "truncated"
    write_tiny_plan(truncated)
    optuna.create_study(  # a real database, then truncated below
        study_name="tiny.lr", storage=f"sqlite:///{truncated / 'studies' / 'tuner.sqlite3'}"
    )
    db = truncated / "studies" / "tuner.sqlite3"
    for extra in ("-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)
    whole = db.read_bytes()
    db.write_bytes(whole[: len(whole) // 2])
    return [text, truncated]


@pytest.mark.slow
def test_a_corrupt_sqlite_file_is_one_line_naming_it_for_every_command(tmp_path, uci_file, capsys):
    data = str(uci_file(n=300))
    for work in _corrupt_storages(tmp_path, capsys):
        db = work / "studies" / "tuner.sqlite3"
        before = db.read_bytes()
        commands = [
            ("status", "--plan", "tiny"),
            ("status", "--plan", "tiny", "--json"),
            ("report", "--plan", "tiny"),
            ("run-stage", "weight_decay", "--plan", "tiny", "--fix", "lr=0.01", "--data", data),
            ("dashboard", "--port", "0"),
        ]
        for cmd in commands:
            line = one_error_line(cli(capsys, *cmd, "--workdir", str(work)))
            assert str(db) in line and "not a usable SQLite database" in line, (cmd, line)
        assert db.read_bytes() == before  # left as it was, for the user to restore
        assert not (work / "reports").exists() and not (work / "models").exists()
    # as a new user sees it: a process that prints one line and no traceback
    proc = run_cli("status", "--plan", "tiny", "--workdir", str(work), cwd=tmp_path)
    assert str(db) in one_error_line(proc)


# -- a full disk (#5) --------------------------------------------------------------------------
def test_disk_full_writing_the_model_fails_the_final_trial_and_a_rerun_completes(
    tmp_path, uci_file, capsys, monkeypatch
):
    import tuner.tune.final

    data = str(uci_file(n=400))
    write_tiny_plan(tmp_path)
    url = default_storage_url(tmp_path)
    args = ("final", "--plan", "tiny", "--workdir", str(tmp_path), "--data", data, *ALL_FIXED)

    def full(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tuner.tune.final, "save_torch", full)
    line = one_error_line(cli(capsys, *args))
    assert "no space left on the disk" in line and "model.pt" in line, line
    no_running(url)
    assert [t.state for t in stage_trials(url, "tiny.final")] == [TrialState.FAIL]
    models = tmp_path / "models" / "tiny"
    assert not [p for p in models.iterdir() if "model.pt" in p.name]  # no half file either

    monkeypatch.undo()  # space freed: the next run completes
    again = cli(capsys, *args)
    assert again.returncode == 0 and "test accuracy" in again.stdout, again.stderr
    states = [t.state for t in stage_trials(url, "tiny.final")]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]
    assert (models / "model.pt").is_file()


@pytest.mark.slow
def test_database_full_while_telling_a_result_fails_the_trials_and_a_rerun_completes(
    tmp_path, uci_file, capsys, monkeypatch
):
    import sqlalchemy
    from optuna.storages import RDBStorage

    data = str(uci_file(n=400))
    write_tiny_plan(tmp_path)
    url = default_storage_url(tmp_path)
    args = ("run-stage", "weight_decay", "--workdir", str(tmp_path), "--data", data)
    args += WORKER_ARGS
    real = RDBStorage.set_trial_state_values

    def set_trial_state_values(self, trial_id, state, values=None):
        if state == TrialState.COMPLETE:  # telling a result: the disk is full
            orig = sqlite3.OperationalError("database or disk is full")
            raise sqlalchemy.exc.OperationalError("UPDATE trials", {}, orig)
        return real(self, trial_id, state, values)

    monkeypatch.setattr(RDBStorage, "set_trial_state_values", set_trial_state_values)
    line = one_error_line(cli(capsys, *args))
    assert "no space left on the disk" in line and "database or disk is full" in line, line
    assert str(tmp_path / "studies" / "tuner.sqlite3") in line
    no_running(url)
    assert [t.state for t in stage_trials(url)] == [TrialState.FAIL]

    monkeypatch.undo()
    again = cli(capsys, *args)
    assert again.returncode == 0 and "3/3 complete" in again.stdout, again.stderr
    assert_each_point_complete_once(stage_trials(url))


# -- environment errors (#6) -------------------------------------------------------------------
@pytest.mark.slow
def test_environment_errors_and_out_of_range_numbers_are_one_line(tmp_path, uci_file):
    data = str(uci_file(n=300, name="in/data.txt"))
    work = tmp_path / "work"
    work.mkdir()
    write_tiny_plan(work)
    afile = tmp_path / "afile"
    afile.write_text("not a directory\n")
    run = ("run-stage", "weight_decay", "--plan", "tiny", "--fix", "lr=0.01", "--data", data)
    cases = {
        "workdir is a file": (*run, "--workdir", str(afile)),
        "workdir under a file": ("prepare", "--data", data, "--workdir", str(afile / "w")),
        "status, workdir a file": ("status", "--plan", "quick", "--workdir", str(afile)),
        "storage under a file": (
            "status",
            "--plan",
            "tiny",
            "--storage",
            f"sqlite:///{afile}/studies/tuner.sqlite3",
        ),
        "negative seed": (*run, "--seed", "-1"),
        "huge seed": (*run, "--seed", "99999999999"),
        "negative heartbeat": (*run, "--heartbeat-interval", "-5"),
        "zero threads": (*run, "--threads", "0"),
        "zero rows": (*run, "--rows", "0"),
        "not a number": (*run, "--group-size", "many"),
        "port out of range": ("dashboard", "--port", "70000"),
        "synthesize onto a directory": ("synthesize", "--out", str(work), "--rows", "100"),
        "synthesize under a file": ("synthesize", "--out", str(afile / "x.txt"), "--rows", "100"),
        "synthesize seed": ("synthesize", "--out", "x.txt", "--rows", "100", "--seed", "-3"),
        "report --out under a file": ("report", "--plan", "tiny", "--out", str(afile / "r")),
    }
    try:
        import MySQLdb  # noqa: F401
    except ImportError:
        cases["mysql without its driver"] = (
            "status",
            "--plan",
            "tiny",
            "--storage",
            "mysql://tuner:SeKrEt99@db.example/tuner",
        )
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for what, args in cases.items():
        proc = run_cli(*args, cwd=work, timeout=120)
        line = one_error_line(proc)
        assert "SeKrEt99" not in proc.stderr + proc.stdout, what
        assert line, what
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_workdir_and_report_out_are_one_line(tmp_path, uci_file):
    data = str(uci_file(n=300))
    ro = tmp_path / "ro"
    ro.mkdir()
    write_tiny_plan(tmp_path)
    ro.chmod(0o555)
    try:
        cases = [
            ("prepare", "--data", data, "--workdir", str(ro)),
            ("run-stage", "lr", "--plan", "quick", "--data", data, "--workdir", str(ro / "sub")),
            ("report", "--plan", "tiny", "--out", str(ro / "report"), "--workdir", str(tmp_path)),
            ("status", "--plan", "quick", "--storage", f"sqlite:///{ro}/missing/db.sqlite3"),
        ]
        for args in cases:
            one_error_line(run_cli(*args, cwd=tmp_path))
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


# -- passwords in storage URLs (#9) ------------------------------------------------------------
def test_redact_hides_passwords_wherever_they_sit():
    urls = {
        "postgresql://tuner@db/tuner?password=SeKrEt1": "password=***",
        "postgresql://tuner:SeKrEt1@db/tuner?sslpassword=SeKrEt2&sslmode=require": "tuner:***@",
        "postgresql+psycopg://u@db/t?my_PASSWORD=SeKrEt1&application_name=x": "my_PASSWORD=***",
        "not a url://u:SeKrEt1@h/?password=SeKrEt2": "u:***@",
    }
    for url, shown in urls.items():
        out = redact(url)
        assert "SeKrEt" not in out and shown in out, out
    message = "connection to postgresql://u:SeKrEt1@h/d failed for SeKrEt1"
    assert "SeKrEt" not in scrub(message, "postgresql://u:SeKrEt1@h/d")
    assert redact("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


@pytest.mark.slow
def test_a_refused_connection_with_a_query_password_does_not_print_it(tmp_path):
    url = "postgresql://tuner@127.0.0.1:1/tuner?password=SeKrEt1&sslpassword=SeKrEt2"
    proc = run_cli("status", "--plan", "quick", "--storage", url, cwd=tmp_path)
    line = one_error_line(proc)
    assert "SeKrEt" not in proc.stderr + proc.stdout and "password=***" in line


def test_passwords_in_a_postgresql_url_never_leave_the_process(tmp_path, uci_file, postgres_url):
    secret = "SeKrEt1x"
    url = f"{postgres_url}?password={secret}&sslpassword={secret}2&sslmode=disable"
    data = str(uci_file(n=300))
    write_tiny_plan(tmp_path)
    base = ("--plan", "tiny", "--storage", url)
    outputs = [
        run_cli(
            "run-stage",
            "weight_decay",
            *base,
            "--fix",
            "lr=0.01",
            "--data",
            data,
            cwd=tmp_path,
            check=True,
        ),
        run_cli("status", *base, cwd=tmp_path, check=True),
        run_cli("status", *base, "--json", cwd=tmp_path, check=True),
        run_cli("report", *base, cwd=tmp_path, check=True),
    ]
    dash = popen_cli("dashboard", "--storage", url, "--port", "0", cwd=tmp_path)
    try:
        banner = dash.stdout.readline() + dash.stdout.readline()
        dash.send_signal(signal.SIGTERM)
        out, err = dash.communicate(timeout=30)
    finally:
        if dash.poll() is None:
            dash.kill()
            dash.communicate()
    assert dash.returncode == 0 and "storage postgresql+psycopg://tuner@" in banner, err
    printed = "".join(p.stdout + p.stderr for p in outputs) + banner + out + err
    assert "password=***" in printed
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".md", ".html")]
    assert files
    stored = ""
    storage = optuna.storages.RDBStorage(postgres_url)
    try:
        for summary in storage.get_all_studies():
            stored += json.dumps([summary.user_attrs, summary.system_attrs], default=str)
            for t in storage.get_all_trials(summary._study_id):
                stored += json.dumps([t.user_attrs, t.system_attrs], default=str)
    finally:
        storage.engine.dispose()
    for where, text in [("output", printed), ("storage", stored)] + [
        (str(f), f.read_text()) for f in files
    ]:
        assert secret not in text, where


# -- SIGTERM (#10) -----------------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_fails_running_trials_exits_143_and_the_next_run_resumes(tmp_path, msd_file):
    write_tiny_plan(tmp_path, wd_epochs=30)  # seconds per point: caught while it trains
    url = default_storage_url(tmp_path)
    args = ("run-stage", "weight_decay", "--data", str(msd_file), *WORKER_ARGS)
    proc = popen_cli(*args, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not any(t.state == TrialState.RUNNING for t in stage_trials(url)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no trial started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("tuner: terminated by SIGTERM"), err
    before = stage_trials(url)
    assert not [t for t in before if t.state == TrialState.RUNNING]
    failed = [t for t in before if t.state == TrialState.FAIL]
    assert failed and all("interrupted" in t.user_attrs for t in failed)
    db = sqlite3.connect(tmp_path / "studies" / "tuner.sqlite3")
    try:  # the claims this worker still holds: only those of the points it finished
        held = db.execute(
            "select trial_id from tuner_claims where owner like ?", (f"%:{proc.pid}:%",)
        ).fetchall()
    finally:
        db.close()
    states = {t._trial_id: t.state for t in before}
    assert all(states.get(trial_id) == TrialState.COMPLETE for (trial_id,) in held), held
    settled = [t for t in before if t.state == TrialState.COMPLETE]

    rerun = run_cli(*args, cwd=tmp_path, check=True)
    assert "3/3 complete" in rerun.stdout
    after = stage_trials(url)
    assert_each_point_complete_once(after)
    assert len(after) == len(before) + 3 - len(settled)  # nothing finished was trained again


def test_disk_full_errors_are_recognised_wherever_they_come_from():
    from tuner.tune.storage import disk_full, environment_failure

    assert disk_full(OSError(errno.ENOSPC, "No space left on device"))
    wrapped = RuntimeError("commit failed")
    wrapped.__cause__ = sqlite3.OperationalError("database or disk is full")
    assert disk_full(wrapped)
    assert environment_failure(ValueError("x"), None) is None


def test_an_observer_that_loses_the_storage_logs_one_line_and_a_bug_keeps_its_traceback(caplog):
    """A report or notes observer that fails because the database went away warns in one line
    (the command's own one-line error follows it); a bug in an observer keeps its traceback."""
    import sqlalchemy

    from tuner.tune.hooks import Observers

    lost = sqlalchemy.exc.OperationalError("SELECT 1", None, Exception("connection refused"))

    class Observer:
        def __init__(self, err):
            self.err = err

        def on_trial_done(self, *args):
            raise self.err

    with caplog.at_level("WARNING"):
        Observers([Observer(lost), Observer(KeyError("bug"))]).notify("on_trial_done")
    first, second = caplog.records
    assert "lost the connection to the storage: connection refused" in first.getMessage()
    assert not first.exc_info
    assert second.exc_info and "failed; the run goes on" in second.getMessage()

    from tuner.report.notes import _best_effort  # the notes' per-call guard says the same

    caplog.clear()
    with caplog.at_level("WARNING"):
        assert _best_effort(Observer(lost).on_trial_done)() is None
    (record,) = caplog.records
    assert "lost the connection to the storage" in record.getMessage() and not record.exc_info
