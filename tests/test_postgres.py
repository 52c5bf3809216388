"""Many workers on one PostgreSQL storage, against a real server on loopback (see tests/pg.py).

Each point of a stage completes exactly once with three workers racing for it; a worker killed
mid-trial loses nothing; a database that goes away mid-run stops a worker with one line and
exit status 2; an unreachable or malformed storage URL exits 2 with one line.
"""

from __future__ import annotations

import datetime as dt
import signal
import time

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import FrozenTrial, TrialState

from tests._util import (
    WORKER_ARGS,
    assert_each_point_complete_once,
    popen_cli,
    run_cli,
    stage_trials,
    write_tiny_plan,
)
from tuner import cli
from tuner.tune import claims
from tuner.tune.claims import ClaimTable, claims_table
from tuner.tune.storage import (
    PG_CONNECT_ARGS,
    connection_failure,
    engine_kwargs,
    lost_storage,
    resolve_url,
)


def _stage(msd_file, url: str) -> tuple[str, ...]:
    return ("run-stage", "weight_decay", "--data", str(msd_file), "--storage", url, *WORKER_ARGS)


def _wait_for(condition, procs, timeout: float = 120, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        for p in procs:
            assert p.poll() is None, f"worker exited early ({p.returncode}): {p.communicate()}"
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _pause_mid_trial(proc, storage: optuna.storages.RDBStorage) -> FrozenTrial:
    """Stop ``proc`` (SIGSTOP) while it trains a trial of tiny.weight_decay; return that trial.

    Stopping first makes "mid-trial" certain however short the trials are: the trial is
    checked to be still RUNNING while the process can no longer finish it.
    """
    tag = f":{proc.pid}:"

    def running() -> FrozenTrial | None:
        try:
            study_id = storage.get_study_id_from_name("tiny.weight_decay")
        except KeyError:
            return None
        for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            if tag in t.user_attrs.get("worker", ""):
                return t
        return None

    while True:
        _wait_for(running, [proc], what=f"a running trial of worker {proc.pid}")
        proc.send_signal(signal.SIGSTOP)
        trial = running()
        if trial is not None:
            return trial
        proc.send_signal(signal.SIGCONT)  # it finished the trial meanwhile: catch the next one


def _finish(procs, timeout: float = 180) -> list[tuple[str, str]]:
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err
        outs.append((out, err))
    return outs


def test_three_workers_racing_on_one_stage_complete_each_point_once(
    tmp_path, msd_file, postgres_url
):
    """The three workers are held at their first claim (the test locks the claims table) and
    let go at the same instant: they race for the same points, and each point still completes
    exactly once, and the work is shared. (Not necessarily one point per worker: the study's
    creator sets it up while the others wait and poll, and on a loaded machine a worker can
    finish its first point and take the last before the slowest has claimed one.)"""
    write_tiny_plan(tmp_path, wd_epochs=8)
    ClaimTable(postgres_url, 4).close()  # create tuner_claims so the test can lock it
    gate = sa.create_engine(postgres_url)
    try:
        with gate.connect() as conn:
            tx = conn.begin()
            conn.exec_driver_sql("LOCK TABLE tuner_claims IN ACCESS EXCLUSIVE MODE")
            workers = [popen_cli(*_stage(msd_file, postgres_url), cwd=tmp_path) for _ in range(3)]

            def all_waiting() -> bool:
                with gate.connect() as probe:
                    n = probe.exec_driver_sql(
                        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                        "WHERE c.relname = 'tuner_claims' AND NOT l.granted"
                    ).scalar()
                return n == 3

            try:
                _wait_for(all_waiting, workers, what="3 workers blocked on their first claim")
            finally:
                tx.rollback()  # release the lock: all three claim at once
        outs = _finish(workers)
    finally:
        gate.dispose()
    trials = stage_trials(postgres_url)
    assert_each_point_complete_once(trials)
    assert len(trials) == 3  # no duplicate, no failed trial
    assert len({t.user_attrs["worker"] for t in trials}) >= 2
    for out, _ in outs:
        assert "3/3 complete" in out


def test_worker_sigkilled_mid_trial_on_another_host_is_retried_by_a_live_worker(
    tmp_path, msd_file, postgres_url
):
    """A worker dies (SIGKILL) in the middle of a trial while another one runs. Its claim is
    made to look like one from another machine, so the live worker cannot see the process is
    gone: it takes the point over only when the heartbeats stop (grace period), fails the dead
    trial and trains the point again. Nothing is lost, nothing is counted twice."""
    write_tiny_plan(tmp_path, wd_epochs=5)
    storage = optuna.storages.RDBStorage(postgres_url)
    args = _stage(msd_file, postgres_url)
    victim = popen_cli(*args, cwd=tmp_path)
    survivor = None
    try:
        killed = _pause_mid_trial(victim, storage)
        survivor = popen_cli(*args, cwd=tmp_path)
        owner = killed.user_attrs["worker"]
        with storage.engine.begin() as conn:  # "another host": only heartbeats tell it is dead
            conn.execute(
                claims_table.update()
                .where(claims_table.c.owner == owner)
                .values(owner="elsewhere" + owner[owner.index(":") :])
            )
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        ((out, _),) = _finish([survivor])
    finally:
        storage.engine.dispose()
        for p in (victim, survivor):
            if p is not None and p.poll() is None:
                p.kill()

    trials = stage_trials(postgres_url)
    assert_each_point_complete_once(trials)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [killed.number]
    assert len(trials) == 4  # the three points, plus the killed attempt
    redo = [t for t in trials if t.state == TrialState.COMPLETE and t.params == killed.params]
    assert f":{survivor.pid}:" in redo[0].user_attrs["worker"]
    assert "3/3 complete" in out


def test_database_lost_mid_trial_exits_2_with_one_line_and_the_next_run_resumes(
    tmp_path, msd_file, postgres_server
):
    url = postgres_server.url(postgres_server.create_database())
    write_tiny_plan(tmp_path, wd_epochs=5)
    args = _stage(msd_file, url)
    worker = popen_cli(*args, cwd=tmp_path)
    storage = optuna.storages.RDBStorage(url)
    try:
        _pause_mid_trial(worker, storage)
        storage.engine.dispose()
        postgres_server.stop("immediate")
        worker.send_signal(signal.SIGCONT)
        _, err = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
        postgres_server.start()
    assert worker.returncode == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("tuner: error: lost the connection to storage postgresql+psycopg://")
    assert "tiny.weight_decay" in last  # telling its trial, or looking for trials to reuse

    rerun = run_cli(*args, cwd=tmp_path, check=True)
    assert "3/3 complete" in rerun.stdout
    trials = stage_trials(url)
    assert_each_point_complete_once(trials)
    assert sum(t.state == TrialState.FAIL for t in trials) == 1  # the interrupted trial


def test_claims_on_postgresql_go_by_the_server_clock(postgres_url, monkeypatch):
    """Workers on several machines: a worker whose clock is an hour off neither takes a live
    claim over nor keeps a dead one alive; the database's clock decides."""
    table = ClaimTable(postgres_url, grace_period_s=20)
    try:
        assert table.try_claim("s", "p", "elsewhere:1:a", is_free=table.is_stale) == (True, None)
        skewed = claims._now() + dt.timedelta(hours=1)
        monkeypatch.setattr(claims, "_now", lambda: skewed)
        got, holder = table.try_claim("s", "p", "here:2:b", is_free=table.is_stale)
        assert not got and holder.owner == "elsewhere:1:a"
        with table.engine.begin() as conn:  # the owner's last heartbeat was a minute ago
            conn.execute(
                claims_table.update().values(
                    heartbeat_at=claims_table.c.heartbeat_at - dt.timedelta(minutes=1)
                )
            )
        got, previous = table.try_claim("s", "p", "here:2:b", is_free=table.is_stale)
        assert got and previous.owner == "elsewhere:1:a"
    finally:
        table.close()


@pytest.mark.parametrize(
    "url, expected",
    [
        ("postgresql+psycopg://u:secret@127.0.0.1:1/db", "cannot open storage"),
        ("postgresql://u:secret@127.0.0.1:1/db", "cannot open storage"),
        ("postgresql+psycopg://u:secret@127.0.0.1:port/db", "not a valid SQLAlchemy URL"),
        ("nosuchdb://u:secret@host/db", "not a valid SQLAlchemy URL"),
        ("not a url", "not a valid SQLAlchemy URL"),
    ],
)
def test_unreachable_or_malformed_storage_exits_2_with_one_line(tmp_path, capsys, url, expected):
    write_tiny_plan(tmp_path)
    t0 = time.monotonic()
    code = cli.main(["status", "--plan", "tiny", "--workdir", str(tmp_path), "--storage", url])
    assert time.monotonic() - t0 < 15
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("tuner:")]
    assert code == 2
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err
    assert "secret" not in err  # the password is never printed


def test_a_database_going_away_is_a_storage_error_and_a_bug_is_not():
    refused = sa.create_engine(
        "postgresql+psycopg://u@127.0.0.1:1/db",
        **engine_kwargs("postgresql+psycopg://u@127.0.0.1:1/db"),
    )
    with pytest.raises(sa.exc.OperationalError) as info:
        refused.connect()
    wrapped = optuna.exceptions.StorageInternalError("commit failed")
    wrapped.__cause__ = info.value  # how Optuna reports a failed commit
    lost = lost_storage(wrapped, "postgresql+psycopg://u:secret@127.0.0.1:1/db", "training x")
    assert lost is not None and "Connection refused" in str(lost) and "secret" not in str(lost)
    assert "while training x" in str(lost)
    memory = sa.create_engine("sqlite://")
    for bad_sql in ("SELEC 1", "SELECT * FROM no_such_table"):  # bugs keep their traceback
        with pytest.raises(sa.exc.OperationalError) as info, memory.connect() as conn:
            conn.exec_driver_sql(bad_sql)
        assert connection_failure(info.value) is None
    assert connection_failure(ValueError("no")) is None


def test_missing_database_on_a_live_server_exits_2(tmp_path, capsys, postgres_server):
    write_tiny_plan(tmp_path)
    url = postgres_server.url("no_such_database")
    code = cli.main(["status", "--plan", "tiny", "--workdir", str(tmp_path), "--storage", url])
    err = capsys.readouterr().err
    assert code == 2
    assert 'database "no_such_database" does not exist' in err.strip().splitlines()[-1]


def test_plain_postgresql_url_uses_psycopg(tmp_path, capsys, postgres_url):
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    assert resolve_url(plain) == postgres_url
    assert resolve_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert resolve_url("sqlite:///x.db") == "sqlite:///x.db"
    assert engine_kwargs(postgres_url)["connect_args"] == PG_CONNECT_ARGS
    assert PG_CONNECT_ARGS["connect_timeout"] <= 10  # an unreachable server fails fast
    write_tiny_plan(tmp_path)
    code = cli.main(["status", "--plan", "tiny", "--workdir", str(tmp_path), "--storage", plain])
    assert code == 0, capsys.readouterr().err
    assert "weight_decay" in capsys.readouterr().out
