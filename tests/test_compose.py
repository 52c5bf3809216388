"""docker-compose.yml, Dockerfile and .env.example, without a Docker engine.

The compose file is parsed and interpolated the way ``docker compose`` does it; its services
are checked for what scaling out needs (postgres with a healthcheck and a volume, scalable
workers that wait for it, a loopback-only dashboard, a shared work volume); each service's
command is accepted by tuner's CLI; and the worker and dashboard commands run for real against
the test PostgreSQL server, two workers as ``--scale worker=2`` would run them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from tests._util import REPO, write_tiny_plan
from tests.pg import free_port
from tuner.cli import build_parser
from tuner.stages import point_key
from tuner.storage import check_url

COMPOSE = REPO / "docker-compose.yml"
TUNER = ["python", "-m", "tuner"]
_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value, env: dict[str, str]):
    """Compose's variable interpolation: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``,
    ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``, over a parsed YAML document."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        if m.group("plain"):
            return env.get(m.group("plain"), "")
        expr = m.group("braced")
        name, op, arg = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(:?[-?]?)(.*)", expr).groups()
        val = env.get(name)
        unset = val is None or (op.startswith(":") and val == "")
        if op.endswith("-"):
            return arg if unset else val
        if op.endswith("?"):
            if unset:
                raise KeyError(f"{name}: {arg}")
            return val
        return val or ""

    return _VAR.sub(sub, value)


def compose(env: dict[str, str] | None = None) -> dict:
    return interpolate(
        yaml.safe_load(COMPOSE.read_text()), {"POSTGRES_PASSWORD": "pw"} if env is None else env
    )


def command(service: dict) -> list[str]:
    cmd = service["command"]
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def env_example() -> dict[str, str]:
    out = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def test_compose_declares_postgres_scalable_workers_dashboard_and_volumes():
    doc = compose()
    services = doc["services"]
    assert set(services) >= {"postgres", "worker", "dashboard"}
    named_volumes = set(doc["volumes"])

    pg = services["postgres"]
    assert pg["image"].startswith("postgres:")
    assert "CMD" in pg["healthcheck"]["test"][0] and "pg_isready" in " ".join(
        pg["healthcheck"]["test"]
    )
    pg_volumes = {v.split(":")[0]: v.split(":")[1] for v in pg["volumes"]}
    assert pg_volumes.get("pgdata") == "/var/lib/postgresql/data" and "pgdata" in named_volumes
    assert "ports" not in pg  # the database is reached by the other services only
    assert pg["environment"]["POSTGRES_PASSWORD"] == "pw"  # from the environment

    for name in ("worker", "dashboard"):
        svc = services[name]
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "container_name" not in svc  # scalable: compose names the replicas
        assert svc["build"]["context"] == "."
        assert "work:/work" in svc["volumes"] and "work" in named_volumes
        url = make_url(svc["environment"]["TUNER_STORAGE"])
        assert (url.drivername, url.host, url.password) == ("postgresql+psycopg", "postgres", "pw")
    assert "ports" not in services["worker"]  # replicas would fight over a published port

    (port,) = services["dashboard"]["ports"]
    assert str(port).startswith("127.0.0.1:")  # loopback only: the dashboard has no login
    assert str(port).endswith(":8080")


def test_password_comes_from_the_environment_and_nothing_secret_is_committed():
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        compose({})
    example = env_example()
    assert example["POSTGRES_PASSWORD"] == ""  # the user sets it in their own .env
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE.read_text()))
    assert used <= set(example), f"not documented in .env.example: {used - set(example)}"
    assert "/.env" in (REPO / ".gitignore").read_text().split()
    assert ".env" in (REPO / ".dockerignore").read_text().split()
    # .env.example's values give the same services as compose's own defaults
    assert compose({**example, "POSTGRES_PASSWORD": "pw"}) == compose({"POSTGRES_PASSWORD": "pw"})


def test_dockerfile_installs_cpu_torch_then_the_project():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    assert text.index("download.pytorch.org") < text.index("pip install .")
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    deps = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^dependencies = \[[^\]]*"psycopg\[binary\]', deps, re.M | re.S)


def test_each_service_command_is_accepted_by_the_cli(monkeypatch):
    doc = compose()
    for name in ("worker", "dashboard"):
        svc = doc["services"][name]
        for key, value in svc.get("environment", {}).items():
            monkeypatch.setenv(key, value)
        cmd = command(svc)
        assert cmd[:3] == TUNER, cmd
        args = build_parser().parse_args(cmd[3:])  # argparse exits on anything it rejects
        assert args.storage == svc["environment"]["TUNER_STORAGE"]
        check_url(args.storage)  # parses, and its driver (psycopg) is installed
        assert args.workdir == Path("/work")
    worker = build_parser().parse_args(command(doc["services"]["worker"])[3:])
    assert (worker.command, worker.plan, worker.data, worker.threads) == (
        "run-all",
        "seed",
        "synthetic",
        1,
    )
    real = compose({"POSTGRES_PASSWORD": "pw", "TUNER_DATA": "uci"})["services"]["worker"]
    assert build_parser().parse_args(command(real)[3:]).data == "uci"  # one variable


def _local(cmd: list[str], workdir: Path, **replace: str) -> list[str]:
    """A service's command as run here: the work volume is ``workdir``, the interpreter ours."""
    out = [sys.executable if c == "python" else c for c in cmd]
    out = [str(workdir) if c == "/work" else c for c in out]
    for flag, value in replace.items():
        i = out.index(flag)
        out[i + 1] = value
    return out


def _spawn(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    full = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.Popen(
        cmd, cwd=cwd, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


STAGES = ["lr", "weight_decay", "activation", "normalization", "optimizer", "final"]
POINTS = {"lr": 2, "weight_decay": 3, "activation": 2, "normalization": 3, "optimizer": 3}


def test_compose_services_run_the_whole_plan_on_postgres_with_two_workers(
    tmp_path, msd_file, postgres_server
):
    """``docker compose up --scale worker=2``, minus Docker: the worker command twice, then
    the dashboard command, on the test PostgreSQL (the compose URL pointed at it), with the
    small plan and data chosen by the compose variables."""
    plan = write_tiny_plan(tmp_path)
    doc = compose(
        {
            "POSTGRES_PASSWORD": "pw",
            "TUNER_PLAN": str(plan),
            "TUNER_DATA": str(msd_file),
            "TUNER_GROUP_SIZE": "1",  # one point per claim: both workers get some
        }
    )
    services = doc["services"]
    compose_url = make_url(services["worker"]["environment"]["TUNER_STORAGE"])
    url = compose_url.set(
        host="127.0.0.1",
        port=postgres_server.port,
        database=postgres_server.create_database(),
        username="tuner",
    ).render_as_string(hide_password=False)
    env = {"TUNER_STORAGE": url}

    worker_cmd = _local(command(services["worker"]), tmp_path)
    workers = [_spawn(worker_cmd, tmp_path, env) for _ in range(2)]
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
        assert "final: test accuracy" in out, out

    storage = optuna.storages.RDBStorage(url)
    try:
        studies = {
            s: optuna.load_study(study_name=f"tiny.{s}", storage=storage).get_trials(deepcopy=False)
            for s in STAGES
        }
    finally:
        storage.engine.dispose()
    owners = set()
    for stage, trials in studies.items():
        assert all(t.state == TrialState.COMPLETE for t in trials), stage  # no fail, no leftover
        keys = [point_key(t.params) for t in trials]
        assert len(keys) == len(set(keys)) == POINTS.get(stage, 1), stage  # each point once
        owners |= {t.user_attrs["worker"] for t in trials}
    assert len(owners) == 2  # both workers took part
    # a worker starts a stage only once the previous one is complete
    for prev, nxt in zip(STAGES, STAGES[1:], strict=False):
        assert max(t.datetime_complete for t in studies[prev]) <= min(
            t.datetime_start for t in studies[nxt]
        ), (prev, nxt)
    assert len(studies["final"]) == 1  # the final job ran once
    assert (tmp_path / "models" / "tiny" / "metrics.json").is_file()

    port = free_port()
    replace = {"--host": "127.0.0.1", "--port": str(port)}  # not 0.0.0.0 on this machine
    dash_cmd = _local(command(services["dashboard"]), tmp_path, **replace)
    dash = _spawn(dash_cmd, tmp_path, env)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert dash.poll() is None, dash.communicate()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    listing = json.load(r)
                break
            except OSError:
                assert time.monotonic() < deadline, "the dashboard did not answer"
                time.sleep(0.5)
    finally:
        dash.send_signal(signal.SIGTERM)
        dash.communicate(timeout=30)
    names = {s["study_name"] for s in listing["study_summaries"]}
    assert {f"tiny.{s}" for s in STAGES} <= names
