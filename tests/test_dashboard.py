"""``python -m tuner dashboard``: optuna-dashboard on a finished run (notes, learning curves,
artifacts), rendered in headless Chromium, and watched while a stage runs on SQLite."""

from __future__ import annotations

import json
import signal
import time
import urllib.error

import optuna
import pytest

from tests._util import popen_cli, write_tiny_plan
from tests.browser import dump_dom, finished_run, get_bytes, get_json, wait_until
from tuner.cli import main
from tuner.report.dashboard import Dashboard
from tuner.tune.storage import default_storage_url, open_storage

STAGES = ("lr", "weight_decay", "activation", "normalization", "optimizer")
STUDIES = [f"tiny.{s}" for s in STAGES] + ["tiny.final"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory, msd_file):
    return finished_run(tmp_path_factory, msd_file)


@pytest.fixture(scope="module")
def dashboard(run):
    with Dashboard(default_storage_url(run), run, "127.0.0.1", 0).start() as dash:
        yield dash


def _base(dash: Dashboard) -> str:
    return f"http://127.0.0.1:{dash.port}"


def _studies(base: str) -> dict[str, int]:
    return {
        s["study_name"]: s["study_id"] for s in get_json(f"{base}/api/studies")["study_summaries"]
    }


@pytest.mark.slow
def test_api_has_one_study_per_stage_each_with_its_note(dashboard):
    base = _base(dashboard)
    assert get_json(f"{base}/api/meta")["artifact_is_available"] is True
    studies = _studies(base)
    assert sorted(studies) == sorted(STUDIES)
    for name, study_id in studies.items():
        detail = get_json(f"{base}/api/studies/{study_id}")
        note = detail["note"]["body"]
        stage = name.split(".", 1)[1]
        if stage == "final":
            assert note.startswith("## Final model: done")
            assert "**Test accuracy:**" in note and "| 2000s |" in note
            assert "**Shipped weights:** epoch" in note and ", weights of epoch" in note
            assert detail["objective_names"] == ["test accuracy"]
            want = {"final_history.png", "confusion_matrix.png"}
        else:
            assert note.startswith(f"## Stage `{stage}`"), note
            searched = "**Points:**" if stage == "lr" else "**Grid:**"  # a range test's own
            for what in ("**Tunes:**", searched, "**Fixed from earlier stages:**"):
                assert what in note
            assert "**Winner:** **" in note and "over" in note
            assert "validation accuracy" in detail["objective_names"][0]
            want = {f"{stage}_summary.png"} | ({"lr_range_test.png"} if stage == "lr" else set())
        artifacts = {a["filename"]: a["artifact_id"] for a in detail["artifacts"]}
        assert set(artifacts) == want, artifacts
        for artifact_id in artifacts.values():
            assert get_bytes(f"{base}/artifacts/{study_id}/{artifact_id}").startswith(PNG)
        # every trial: its learning curve as intermediate values and as a plot artifact
        assert detail["has_intermediate_values"] is True
        for trial in detail["trials"]:
            assert trial["state"] == "Complete"
            assert len(trial["intermediate_values"]) >= 1
            (artifact,) = trial["artifacts"]
            assert artifact["filename"] == f"trial_{trial['number']}_curve.png"
            url = f"{base}/artifacts/{study_id}/{trial['trial_id']}/{artifact['artifact_id']}"
            assert get_bytes(url).startswith(PNG)


@pytest.mark.browser
def test_dashboard_in_chromium_shows_every_study_and_a_note(dashboard):
    base = _base(dashboard)
    for budget in (15_000, 60_000):  # virtual time; a slow machine gets a second, longer look
        dom = dump_dom(f"{base}/dashboard", budget_ms=budget)
        missing = [name for name in STUDIES if name not in dom]
        if not missing:
            break
    assert not missing, f"not on the rendered page: {missing}\n{dom[-2000:]}"
    study_id = _studies(base)["tiny.weight_decay"]
    for budget in (15_000, 60_000):
        dom = dump_dom(f"{base}/dashboard/studies/{study_id}/note", budget_ms=budget)
        if "Fixed from earlier stages" in dom:
            break
    assert "Fixed from earlier stages" in dom and "winner" in dom, dom[-2000:]


@pytest.mark.slow
def test_dashboard_command_prints_its_url_and_stops_on_sigterm(run):
    proc = popen_cli("dashboard", "--workdir", str(run), "--port", "0", cwd=run)
    try:
        first = proc.stdout.readline()
        assert first.startswith("optuna-dashboard: http://127.0.0.1:"), first + proc.stderr.read()
        url = first.split(": ", 1)[1].strip()
        assert url.endswith("/dashboard")
        summaries = get_json(url.removesuffix("/dashboard") + "/api/studies")["study_summaries"]
        assert len(summaries) == len(STUDIES)
        # SIGTERM takes the Ctrl-C path (SIGINT may be ignored where CI runs us in background)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "dashboard stopped" in out


def test_dashboard_on_a_missing_storage_exits_2(tmp_path, capsys):
    assert main(["dashboard", "--workdir", str(tmp_path / "nothing"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("tuner: error: no study storage at"), err
    assert not (tmp_path / "nothing").exists()


@pytest.mark.slow
def test_polling_the_dashboard_does_not_disturb_a_running_stage(tmp_path, msd_file):
    """SQLite: the dashboard reads every study, trial and artifact in a loop while a worker in
    another process creates the study and trains, writes and tells its trials."""
    write_tiny_plan(tmp_path, wd_epochs=300)  # long enough to be seen running (seconds)
    url = default_storage_url(tmp_path)
    open_storage(url, heartbeat_interval=5, grace_period=20).engine.dispose()  # an empty storage
    with Dashboard(url, tmp_path, "127.0.0.1", 0).start() as dash:
        base = _base(dash)
        proc = popen_cli(
            "run-stage", "weight_decay", "--plan", "tiny", "--data", str(msd_file),
            "--fix", "lr=0.01", "--workdir", str(tmp_path), "--threads", "1",
            cwd=tmp_path,
        )  # fmt: skip
        polls, seen_running, errors = 0, False, []
        try:
            while proc.poll() is None:
                try:
                    for study_id in _studies(base).values():
                        detail = get_json(f"{base}/api/studies/{study_id}")
                        for trial in detail["trials"]:
                            seen_running |= trial["state"] == "Running"
                            for a in trial["artifacts"]:
                                get_bytes(
                                    f"{base}/artifacts/{study_id}/{trial['trial_id']}/"
                                    f"{a['artifact_id']}"
                                )
                except (urllib.error.URLError, AssertionError, json.JSONDecodeError) as err:
                    errors.append(repr(err))
                polls += 1
                time.sleep(0.05)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, err[-3000:]
        assert "locked" not in err.lower()
        assert not errors, errors[:5]
        assert polls >= 10 and seen_running, (polls, seen_running)
        # and the dashboard sees the finished stage, with its note
        study_id = wait_until(lambda: _studies(base).get("tiny.weight_decay"))

        def finished():  # the dashboard caches a study's trials for 2 s
            detail = get_json(f"{base}/api/studies/{study_id}")
            states = [t["state"] for t in detail["trials"]]
            return detail if states == ["Complete"] * 3 else None

        detail = wait_until(finished, timeout=10)
        assert detail["note"]["body"].startswith("## Stage `weight_decay` (cv): done, 3/3")


@pytest.mark.slow
def test_notes_and_study_artifacts_are_idempotent_across_workers(run, msd_file):
    """Every worker that finishes a stage writes its note and summary plot: the same text, and
    the same artifact ID, so a second writer changes nothing."""
    import optuna
    from optuna_dashboard import get_note

    from tests._util import session
    from tuner.report import notes

    s = session(run, str(msd_file))
    try:
        study = s.latest_study("weight_decay")
        attrs = s.storage.get_study_system_attrs(study._study_id)
        before = (get_note(study), attrs["dashboard:note_ver"], sorted(attrs))
        for _ in range(2):
            notes.on_stage_done(s, study, "weight_decay")
        study = optuna.load_study(study_name=study.study_name, storage=s.storage)
        attrs = s.storage.get_study_system_attrs(study._study_id)
        assert (get_note(study), attrs["dashboard:note_ver"], sorted(attrs)) == before
        assert len(optuna.artifacts.get_all_artifact_meta(study)) == 1
    finally:
        s.close()


@pytest.mark.parametrize("command", ["dashboard", "report"])
def test_new_commands_have_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: tuner {command}")
    if command == "dashboard":
        assert "--host" in out and "127.0.0.1" in out and "--port" in out


def test_browser_tests_skip_without_chromium_only_outside_ci(monkeypatch):
    import tests.browser as browser

    monkeypatch.setattr(browser.shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="Chromium is not installed"):
        browser.require_chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        browser.require_chromium()


def test_study_artifacts_use_optunas_metadata_format(tmp_path):
    """put_study_artifact writes the metadata Optuna's own upload_artifact writes (its one
    private Optuna import): the public get_all_artifact_meta lists it, once however often it
    is written. Fails, not skips, if an Optuna upgrade moves ARTIFACTS_ATTR_PREFIX."""
    import optuna

    from tuner.report import notes

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    study = optuna.create_study(study_name="p.s", storage=storage)
    store = notes.artifact_store(tmp_path)
    png = tmp_path / "summary.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    ids = {notes.put_study_artifact(store, storage, study, png) for _ in range(2)}
    metas = optuna.artifacts.get_all_artifact_meta(study, storage=storage)
    assert [m.artifact_id for m in metas] == list(ids)
    assert metas[0].filename == "summary.png" and metas[0].mimetype == "image/png"


def test_static_files_are_served_to_a_client_that_sends_no_accept_encoding(tmp_path):
    """optuna-dashboard alone answers 500 here (KeyError: 'HTTP_ACCEPT_ENCODING')."""
    import http.client

    (tmp_path / "studies").mkdir()
    url = default_storage_url(tmp_path)
    optuna.storages.RDBStorage(url)  # an empty storage: static files depend on no study
    with Dashboard(url, tmp_path, "127.0.0.1", 0).start() as dashboard:
        conn = http.client.HTTPConnection(dashboard.host, dashboard.port, timeout=30)
        conn.putrequest("GET", "/static/bundle.js", skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        body = response.read()
        conn.close()
    assert response.status == 200 and response.getheader("Content-Encoding") in (None, "identity")
    assert len(body) > 10_000
