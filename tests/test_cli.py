"""The CLI as a new user runs it: run-all, status --json, predict, errors with exit code 2."""

from __future__ import annotations

import json

import pytest

from tests._util import (
    run_cli,
    write_tiny_plan,
)


@pytest.mark.slow
def test_run_all_then_status_json_and_predict(tmp_path, msd_file):
    write_tiny_plan(tmp_path)
    run = run_cli("run-all", "--plan", "tiny", "--data", str(msd_file), cwd=tmp_path, check=True)
    assert "final: test accuracy" in run.stdout
    proc = run_cli(
        "status", "--plan", "tiny", "--data", str(msd_file), "--json", cwd=tmp_path, check=True
    )
    status = json.loads(proc.stdout)
    assert status["plan"] == "tiny"
    names = [s["name"] for s in status["stages"]]
    assert names == ["lr", "weight_decay", "activation", "normalization", "optimizer"]
    chosen: dict = {}
    for stage in status["stages"]:
        assert stage["state"] == "done"
        assert stage["n_complete"] == stage["n_total"] > 0
        assert stage["study"] == f"tiny.{stage['name']}"
        # every stage carries the winners of the stages before it
        assert stage["fixed_params"] == chosen
        chosen = {**chosen, **stage["best_params"]}
    final = status["final"]
    assert 0 < final["test_accuracy"] <= 1 and final["test_loss"] > 0
    model = tmp_path / "models" / "tiny" / "model.pt"
    assert model.is_file()
    metrics = json.loads((tmp_path / "models" / "tiny" / "metrics.json").read_text())
    assert metrics["n_test"] == final["n_test"]
    assert {k: metrics["config"][k] for k in chosen} == chosen
    assert final["fixed_params"] == chosen and final["config"] == metrics["config"]  # status too

    rows = tmp_path / "rows.csv"
    rows.write_text("".join(msd_file.read_text().splitlines(keepends=True)[:7]))
    out = tmp_path / "pred.txt"
    run_cli(
        "predict",
        "--model",
        str(model),
        "--input",
        str(rows),
        "--output",
        str(out),
        cwd=tmp_path,
        check=True,
    )
    labels = out.read_text().split()
    assert len(labels) == 7 and all(lab.endswith("0s") and len(lab) == 5 for lab in labels)

    again = run_cli(
        "run-stage",
        "activation",
        "--plan",
        "tiny",
        "--data",
        str(msd_file),
        cwd=tmp_path,
        check=True,
    )
    assert "already complete" in again.stderr


def test_status_of_a_fresh_workdir_says_nothing_ran_there_and_creates_nothing(
    tmp_path, monkeypatch, capsys
):
    from tuner.cli import main

    monkeypatch.chdir(tmp_path)
    for args in (["status"], ["status", "--plan", "quick", "--json"], ["report"]):
        assert main(args) == 2
        stderr = capsys.readouterr().err
        assert len(stderr.splitlines()) == 1, stderr
        assert stderr.startswith(
            f"tuner: error: no study storage at {tmp_path / 'studies' / 'tuner.sqlite3'}: "
            "nothing has run there yet"
        )
        assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_missing_predecessor_exits_2_naming_the_stage(tmp_path, msd_file):
    proc = run_cli("run-stage", "init", "--plan", "quick", "--data", str(msd_file), cwd=tmp_path)
    assert proc.returncode == 2
    assert "'lr' first" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_bad_arguments_exit_2_with_one_line(tmp_path, msd_file):
    cases = [
        ("run-stage", "nonsense", "--plan", "quick", "--data", str(msd_file)),
        ("run-stage", "init", "--plan", "quick", "--fix", "lr", "--data", str(msd_file)),
        ("run-stage", "init", "--plan", "quick", "--fix", "colour=red", "--data", str(msd_file)),
        ("status", "--plan", "no_such_plan"),
        ("status", "--plan", "quick", "--storage", "notadb://x"),
        ("predict", "--model", str(tmp_path / "none.pt"), "--input", str(msd_file)),
        ("prepare", "--data", str(tmp_path / "missing.txt")),
    ]
    for args in cases:
        proc = run_cli(*args, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert lines[-1].startswith("tuner: error:"), (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_every_command_has_help(tmp_path):
    for cmd in ("prepare", "run-stage", "run-all", "final", "status", "predict", "synthesize"):
        proc = run_cli(cmd, "--help", cwd=tmp_path, check=True)
        assert "usage:" in proc.stdout


@pytest.mark.slow
def test_bad_data_file_exits_2_and_writes_nothing(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    bad = tmp_path / "bad.txt"
    bad.write_text("2001," + ",".join(["1.5"] * 90) + "\n1999," + ",".join(["2.5"] * 89) + "\n")
    for cmd in (("prepare",), ("run-stage", "lr"), ("run-all",), ("final",)):
        proc = run_cli(*cmd, "--plan", "quick", "--data", str(bad), cwd=work)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [
            f"tuner: error: {bad}: line 2: expected 91 comma-separated values, found 90"
        ], proc.stderr
    assert list(work.iterdir()) == []


@pytest.mark.slow
def test_final_on_a_zip_scores_the_published_test_split(tmp_path, msd_file):
    import math
    import zipfile

    archive = tmp_path / "YearPredictionMSD.txt.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(msd_file, "YearPredictionMSD.txt")
    fixes = ["lr=0.01", "weight_decay=0", "init=default", "activation=gelu", "norm=none"]
    fixes += ["optimizer=rmsprop"]
    args = ["final", "--plan", "quick", "--data", str(archive)]
    for f in fixes:
        args += ["--fix", f]
    run_cli(*args, cwd=tmp_path, check=True)
    metrics = json.loads((tmp_path / "models" / "quick" / "metrics.json").read_text())
    # the recipe's sizes: test_size=0.30 of all rows, then the second half (rounded up) of that
    n = len(msd_file.read_text().splitlines())
    assert metrics["n_test"] == math.ceil(0.5 * math.ceil(0.30 * n)) == 450
    assert metrics["config"]["optimizer"] == "rmsprop" and metrics["config"]["activation"] == "gelu"
    assert metrics["fixed_params"]["lr"] == 0.01
