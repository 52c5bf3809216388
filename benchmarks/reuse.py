"""Trial reuse (issue 17): ``run-all`` with and without reuse on the same data, one after the other.

Each arm runs the whole plan (every stage, then the final job) in its own process and fresh
workdir on the same file: first with ``--no-reuse`` (every point and the final model trained),
then with reuse (the default). Prints one JSON line per arm -- wall seconds per stage and in all,
test accuracy and loss, the decisions, which points were reused and where the final model came
from -- and a last line comparing them: the speed-up and whether the decisions and the test
scores are identical. Exits 1 when they are not.

A stage's wall time is the time from the end of the previous stage (the start of the process
for the first) to the end of its last trial, read from the storage; ``final`` runs to the end of
the final trial, and ``process`` is the whole command (data preparation and the report included).

    python benchmarks/reuse.py                    # a 60,000-row synthetic file (the issue's test)
    python benchmarks/reuse.py --rows 3000        # a smoke test on a small synthetic file
    python benchmarks/reuse.py --data FILE        # a UCI-format file (or "synthetic": full size)
    python benchmarks/reuse.py --plan quick --keep /tmp/reuse-bench
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def tuner(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tuner", *args], cwd=REPO, check=True, capture_output=True, text=True
    )


def stage_ends(workdir: Path, plan_name: str) -> dict[str, float]:
    """Each stage's (and the final's) end: the latest completion among its study's trials."""
    import optuna

    from tuner.plan import load_plan
    from tuner.tune.stages import FINAL, Session, Settings
    from tuner.tune.storage import default_storage_url

    plan = load_plan(plan_name, workdir)
    settings = Settings(workdir=workdir, storage_url=default_storage_url(workdir), data=None)
    session = Session(plan, settings)
    try:
        ends = {}
        for name in [*(s.name for s in plan.stages), FINAL]:
            study = session.latest_study(name)
            done = [
                t.datetime_complete
                for t in (study.get_trials(deepcopy=False) if study else [])
                if t.state == optuna.trial.TrialState.COMPLETE and t.datetime_complete
            ]
            ends[name] = max(done).timestamp() if done else float("nan")
        return ends
    finally:
        session.close()


def run_arm(reuse: bool, workdir: Path, args: argparse.Namespace) -> dict:
    cmd = ["run-all", "--plan", args.plan, "--data", args.data, "--workdir", str(workdir),
           "--seed", str(args.seed), "-q"]  # fmt: skip
    if not reuse:
        cmd.append("--no-reuse")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    start = time.time()
    t0 = time.perf_counter()
    tuner(*cmd)
    wall = time.perf_counter() - t0
    ends = stage_ends(workdir, args.plan)
    per_stage, last = {}, start
    for name, end in ends.items():
        per_stage[name] = round(end - last, 1)
        last = end
    status = json.loads(
        tuner("status", "--plan", args.plan, "--workdir", str(workdir), "--json").stdout
    )
    metrics = json.loads((workdir / "models" / args.plan / "metrics.json").read_text())
    return {
        "reuse": reuse,
        "wall_s": {**per_stage, "process": round(wall, 1)},
        "test_accuracy": metrics["test_accuracy"],
        "test_loss": metrics["test_loss"],
        "decisions": {s["name"]: s["best_params"] for s in status["stages"]},
        "reused": {
            s["name"]: [p["params"] for p in s["points"] if p.get("reused_from")]
            for s in status["stages"]
        },
        "final_from": metrics.get("reused_from"),
        "data": args.data,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="a UCI-format file, or 'synthetic' (full size)")
    ap.add_argument(
        "--rows",
        type=int,
        default=60_000,
        help="without --data: rows of the synthetic file written for the run (default 60000)",
    )
    ap.add_argument("--plan", default="seed")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run")
    ap.add_argument("--keep", type=Path, default=None, help="keep the workdirs under this folder")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="tuner-reuse-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        if args.data is None:
            path = root / f"synthetic_{args.rows}.txt"
            if not path.is_file():
                tuner("synthesize", "--out", str(path), "--rows", str(args.rows), "-q")
            args.data = str(path)
        off = run_arm(False, root / "no-reuse", args)
        print(json.dumps(off), flush=True)
        on = run_arm(True, root / "reuse", args)
        print(json.dumps(on), flush=True)

    same = {
        "decisions": off["decisions"] == on["decisions"],
        "test_accuracy": off["test_accuracy"] == on["test_accuracy"],
    }
    total_off, total_on = off["wall_s"]["process"], on["wall_s"]["process"]
    print(
        json.dumps(
            {
                "speedup": round(total_off / total_on, 3) if total_on else None,
                "saved_s": round(total_off - total_on, 1),
                "identical": same,
                "test_loss_diff": on["test_loss"] - off["test_loss"],
                "stages_with_reuse": [k for k, v in on["reused"].items() if v],
            }
        )
    )
    if not all(same.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
