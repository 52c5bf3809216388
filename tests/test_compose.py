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
from tuner.tune.stages import point_key
from tuner.tune.storage import check_url

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
        assert svc["image"] == "tuner:latest"  # one image for both services
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


def test_one_image_built_once_from_swappable_images():
    doc = compose()
    services = doc["services"]
    assert services["worker"]["build"]["context"] == "."
    assert "build" not in services["dashboard"]  # built once, by the worker service
    assert services["dashboard"]["depends_on"]["worker"]["condition"] == "service_started"
    args = services["worker"]["build"]["args"]
    assert args == {
        "TUNER_BASE_IMAGE": "python:3.11-slim",
        "TORCH_VERSION": "2.13.0",
        "TORCH_PIP_ARGS": "--index-url https://download.pytorch.org/whl/cpu",
    }
    assert services["postgres"]["image"] == "postgres:16"
    swapped = compose(
        {
            "POSTGRES_PASSWORD": "pw",
            "POSTGRES_IMAGE": "mirror/pg:16",
            "TUNER_BASE_IMAGE": "mirror/python:3.11",
            "TORCH_PIP_ARGS": "--no-index --find-links http://127.0.0.1:9/",
            "TUNER_IMAGE": "me/tuner:1",
        }
    )["services"]
    assert swapped["postgres"]["image"] == "mirror/pg:16"
    assert swapped["worker"]["image"] == swapped["dashboard"]["image"] == "me/tuner:1"
    assert swapped["worker"]["build"]["args"]["TUNER_BASE_IMAGE"] == "mirror/python:3.11"
    # the healthcheck asks over TCP, as the services connect, not on the socket
    assert "-h 127.0.0.1" in " ".join(services["postgres"]["healthcheck"]["test"])


def test_dockerfile_installs_cpu_torch_then_the_pinned_project():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG TUNER_BASE_IMAGE=python:3\.11-slim$", text, re.M)
    assert re.search(r"^FROM \$\{TUNER_BASE_IMAGE\}$", text, re.M)
    assert 'TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"' in text
    assert text.index("${TORCH_PIP_ARGS}") < text.index("pip install -r requirements.txt")
    assert "ENV PIP_CONSTRAINT=/etc/tuner-constraints.txt" in text
    assert text.index("PIP_CONSTRAINT") < text.index("pip install -r requirements.txt")
    pins = (REPO / "docker" / "constraints.txt").read_text()
    pinned = dict(
        line.split("==") for line in pins.splitlines() if line and not line.startswith("#")
    )
    assert {"optuna", "pandas", "numpy", "SQLAlchemy", "hatchling"} <= set(pinned)
    assert "torch" not in pinned  # TORCH_VERSION chooses it
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
    # weight-decay points of seconds each: a worker that polls (every 2 s) while the other
    # trains finds a point left, whatever the order the two started in
    plan = write_tiny_plan(tmp_path, wd_epochs=600)
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


# --------------------------------------------------------------------------------------------
# The stack on a real Docker engine: `docker compose up --scale worker=2`, built and run.

ENGINE_TIMEOUT = 2400  # s for the whole test: stand-in images (cached), build, the quick plan
STANDINS = REPO / "tests" / "compose" / "standins.sh"
STANDIN_PYTHON = "tuner-standin/python:3.11"
STANDIN_POSTGRES = "tuner-standin/postgres:15"
CACHE = Path(os.environ.get("TUNER_CI_CACHE", "/var/cache/tuner-ci"))
WHEEL_PORT = 38741  # the loopback wheel server's port, when free
# what goes into the build context: the files the Dockerfile copies (see .dockerignore)
CONTEXT = ["Dockerfile", ".dockerignore", "docker-compose.yml", "pyproject.toml", "README.md",
           "tuner", "studies", "docker"]  # fmt: skip


def _unavailable(reason: str) -> None:
    """No engine: a failure in CI (the stack must be tested there), a skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the compose stack must be tested on a real engine)")
    pytest.skip(reason)


def _compose_cli() -> list[str] | None:
    """``docker compose`` (v2) where the plugin is installed, else ``docker-compose`` (1.29)."""
    import shutil

    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def _sh(cmd: list[str], *, timeout: float = 600, check: bool = True, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


class _WheelServer:
    """A loopback HTTP file server over the directory holding the CPU torch wheel: the build
    (``--network host``) installs torch from it with ``--no-index --find-links``."""

    def __init__(self, directory: Path) -> None:
        import functools
        import http.server
        import threading

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:  # not on the test's output
                pass

        handler = functools.partial(Quiet, directory=str(directory))
        # a fixed port when it is free: the URL is a build argument (TORCH_PIP_ARGS), and the
        # same value lets the next run reuse the image's cached layers
        try:
            self.server = http.server.ThreadingHTTPServer(("127.0.0.1", WHEEL_PORT), handler)
        except OSError:
            self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _torch_wheel_dir(version: str) -> Path | None:
    import glob

    for pattern in (
        f"/opt/wheels/torch-{version}*cp311*.whl",
        f"/opt/**/torch-{version}*cp311*.whl",
    ):
        found = sorted(glob.glob(pattern, recursive=True))
        if found:
            return Path(found[0]).parent
    return None


@pytest.fixture
def engine() -> list[str]:
    """The compose command line, once a Docker engine answers (else skip, or fail in CI)."""
    import shutil

    for tool in ("docker", "debootstrap"):
        if not shutil.which(tool):
            _unavailable(f"{tool} not found: apt-get install docker.io docker-compose debootstrap")
    cli = _compose_cli()
    if cli is None:
        _unavailable("neither `docker compose` nor docker-compose is installed")
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        _unavailable(f"no Docker engine answers: {info.stderr.strip().splitlines()[-1:]}")
    return cli


def test_compose_stack_on_a_real_engine(engine, tmp_path):
    """Build the image and run the stack as a user would, with `--scale worker=2`, the quick
    plan and small synthetic data, on local stand-ins for the two registry images (built from
    Debian packages by tests/compose/standins.sh), torch from the local wheel, PyPI through
    the host's CA certificates. Only loopback and the stack's own containers are contacted."""
    import secrets
    import shutil

    t0 = time.monotonic()
    wheels = _torch_wheel_dir("2.13.0")
    if wheels is None:
        _unavailable("the CPU torch 2.13.0 wheel for Python 3.11 is not on this machine")
    _sh(["bash", str(STANDINS), str(CACHE)], timeout=1500)

    # the build context: the project's files, plus this machine's CA bundle (PyPI is reached
    # through a TLS-intercepting proxy here), as a user behind such a proxy would add theirs
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.sqlite3*", "*.crt")
    for name in CONTEXT:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(
            src, ctx / name, **({"ignore": ignore} if src.is_dir() else {})
        )
    host_ca = Path("/etc/ssl/certs/ca-certificates.crt")
    if host_ca.is_file():
        shutil.copy2(host_ca, ctx / "docker" / "certs" / "host-ca.crt")

    project = f"tunerci{os.getpid()}"
    port = free_port()
    server = _WheelServer(wheels)
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": project,
        "POSTGRES_PASSWORD": secrets.token_hex(12),
        "POSTGRES_IMAGE": STANDIN_POSTGRES,
        "TUNER_BASE_IMAGE": STANDIN_PYTHON,
        "TUNER_IMAGE": "tuner-ci/tuner:test",  # kept: its layers are the next run's cache
        "TORCH_VERSION": "2.13.0",
        "TORCH_PIP_ARGS": f"--no-index --find-links {server.url}",
        "TUNER_BUILD_NETWORK": "host",
        "TUNER_PLAN": "quick",
        "TUNER_DATA": "/work/data/small.txt",
        "TUNER_THREADS": "1",
        "DASHBOARD_PORT": str(port),
        "DOCKER_BUILDKIT": "0",  # the classic builder honours --network host without extras
        "COMPOSE_DOCKER_CLI_BUILD": "0",
    }

    def dc(*args: str, timeout: float = 600, check: bool = True):
        return _sh([*engine, *args], timeout=timeout, check=check, cwd=ctx, env=env)

    def containers(service: str) -> list[dict]:
        ids = dc("ps", "-a", "-q", service).stdout.split()
        if not ids:
            return []
        return json.loads(_sh(["docker", "inspect", *ids]).stdout)

    try:
        t_build = time.monotonic()
        dc("build", "worker", timeout=1500)
        build_s = time.monotonic() - t_build
        # small data in the work volume first (the README's recipe)
        # 60,000 rows: a worker's share of a stage trains for seconds, longer than the 2 s a
        # waiting worker sleeps between looks (with 3,000 rows one worker once took them all)
        dc("run", "--rm", "worker", "python", "-m", "tuner", "synthesize", "--rows", "60000",
           "--out", "/work/data/small.txt", "-q")  # fmt: skip
        t_run = time.monotonic()
        dc("up", "-d", "--scale", "worker=2", timeout=300)
        deadline = time.monotonic() + 1200
        while True:
            workers = containers("worker")
            if len(workers) == 2 and all(w["State"]["Status"] == "exited" for w in workers):
                break
            assert time.monotonic() < deadline, dc("logs", "--tail", "50", check=False).stdout
            time.sleep(5)
        run_s = time.monotonic() - t_run

        (pg,) = containers("postgres")
        assert pg["State"]["Health"]["Status"] == "healthy"
        logs = dc("logs", "--no-color", "worker", check=False).stdout
        for w in workers:
            assert (w["State"]["ExitCode"], w["RestartCount"]) == (0, 0), logs[-6000:]

        # every study, read from inside the stack (the image has optuna and the storage URL)
        probe = (
            "import json, os, optuna\n"
            "s = optuna.storages.RDBStorage(os.environ['TUNER_STORAGE'])\n"
            "out = {}\n"
            "for su in optuna.get_all_study_summaries(s):\n"
            "    st = optuna.load_study(study_name=su.study_name, storage=s)\n"
            "    out[su.study_name] = {'points': st.user_attrs.get('points'), 'trials': [\n"
            "        {'state': t.state.name, 'params': t.params, 'worker': t.user_attrs.get('worker')}\n"
            "        for t in st.trials]}\n"
            "print(json.dumps(out))\n"
        )
        studies = json.loads(
            dc("run", "--rm", "--no-deps", "worker", "python", "-c", probe).stdout.splitlines()[-1]
        )
        from tuner.plan import load_plan

        plan_stages = [s.name for s in load_plan("quick", tmp_path).stages] + ["final"]
        stages = [f"quick.{s}" for s in plan_stages]
        assert sorted(studies) == sorted(stages), sorted(studies)  # one study each, no .v2
        owners: set[str] = set()
        for name, study in studies.items():
            trials = study["trials"]
            settled = [t for t in trials if t["state"] in ("COMPLETE", "PRUNED")]
            keys = [json.dumps(t["params"], sort_keys=True) for t in settled]
            assert len(keys) == len(set(keys)), name  # each point settled exactly once
            if study["points"] is not None:
                assert len(keys) == len(study["points"]), name
            assert all(t["state"] != "RUNNING" for t in trials), name
            owners |= {t["worker"].split(":")[0] for t in settled if t["worker"]}
        assert len(owners) == 2, owners  # both workers (containers) trained points

        listing = dc("run", "--rm", "--no-deps", "worker", "sh", "-c",
                     "ls /work/models/quick /work/reports/quick").stdout  # fmt: skip
        for name in ("model.pt", "metrics.json", "report.md", "report.html"):
            assert name in listing.split(), listing
        # one report: written once, by one worker
        assert logs.count("report: /work/reports/quick/report.md") == 1, logs[-6000:]

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=30) as r:
            names = {s["study_name"] for s in json.load(r)["study_summaries"]}
        assert set(stages) <= names

        # quiet races: no errors in PostgreSQL's log from tuner's normal operation
        pg_log = dc("logs", "--no-color", "postgres", check=False).stdout
        errors = [line for line in pg_log.splitlines() if "ERROR" in line]
        assert not errors, errors[:10]
        print(
            f"compose stack: build {build_s:.0f}s, quick plan with 2 workers {run_s:.0f}s, "
            f"test {time.monotonic() - t0:.0f}s"
        )
    finally:
        down = dc("down", "-v", "--remove-orphans", timeout=300, check=False)
        server.close()
    assert down.returncode == 0, down.stderr
    left = _sh(
        ["docker", "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={project}"]
    )
    assert not left.stdout.split(), left.stdout
    vols = _sh(
        ["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}"]
    )
    assert not vols.stdout.split(), vols.stdout
