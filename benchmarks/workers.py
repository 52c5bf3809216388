"""Scaling with the defaults: N workers on one PostgreSQL database, no --group-size.

Starts a throwaway PostgreSQL server on loopback (tests/pg.py: Debian's postgresql package),
writes an MSD-shaped synthetic file, prepares it once, then for each worker count N runs N
identical worker commands at once on a fresh database and a shared workdir, each with
--threads max(1, cores // N), and prints one JSON line per run: wall seconds, trials per
worker, and whether PostgreSQL's log got any ERROR line.

    python benchmarks/workers.py                         # quick plan + a seed-plan stage, 1/2/4
    python benchmarks/workers.py --workers 1 2 --cases stage --rows 20000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.pg import PgServer, find_bindir  # noqa: E402

CASES = {
    "quick": ["run-all", "--plan", "quick"],
    "stage": [
        "run-stage",
        "activation",
        "--plan",
        "seed",
        "--fix",
        "lr=0.001",
        "--fix",
        "weight_decay=0.0001",
        "--fix",
        "init=default",
    ],  # fmt: skip
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    bindir = find_bindir()
    if bindir is None:
        sys.exit("PostgreSQL server binaries not found: apt-get install postgresql")
    server = PgServer(bindir)
    server.start()
    tmp = Path(tempfile.mkdtemp(prefix="tuner-workers-"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    tuner = [sys.executable, "-m", "tuner"]
    try:
        data = tmp / "small.txt"
        subprocess.run([*tuner, "synthesize", "--rows", str(args.rows), "--out", str(data), "-q"],
                       check=True, env=env)  # fmt: skip
        for case in args.cases:
            for n in args.workers:
                workdir = tmp / f"{case}-{n}"
                workdir.mkdir()
                url = server.url(server.create_database())
                common = ["--data", str(data), "--workdir", str(workdir), "--storage", url]
                subprocess.run([*tuner, "prepare", *common[:4], "-q"], check=True, env=env)
                threads = max(1, args.cores // n)
                cmd = [*tuner, *CASES[case], *common, "--threads", str(threads), "-q"]
                t0 = time.perf_counter()
                procs = [
                    subprocess.Popen(
                        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
                    )  # fmt: skip
                    for _ in range(n)
                ]
                errs = [p.communicate()[1] for p in procs]
                wall = time.perf_counter() - t0
                codes = [p.returncode for p in procs]
                per_worker = trials_per_worker(url)
                log = server.log.read_text() if server.log.exists() else ""
                print(json.dumps({
                    "case": case, "workers": n, "threads": threads, "wall_s": round(wall, 1),
                    "exit_codes": codes, "trials_per_worker": per_worker,
                    "pg_error_lines": sum("ERROR" in line for line in log.splitlines()),
                    "stderr_tail": [e.strip().splitlines()[-1:] for e in errs if e.strip()],
                }), flush=True)  # fmt: skip
    finally:
        server.cleanup()


def trials_per_worker(url: str) -> list[int]:
    import optuna

    storage = optuna.storages.RDBStorage(url)
    try:
        counts: dict[str, int] = {}
        for s in optuna.get_all_study_summaries(storage):
            for t in optuna.load_study(study_name=s.study_name, storage=storage).trials:
                w = t.user_attrs.get("worker")
                if w and t.state.is_finished():
                    counts[w] = counts.get(w, 0) + 1
        return sorted(counts.values(), reverse=True)
    finally:
        storage.engine.dispose()


if __name__ == "__main__":
    main()
