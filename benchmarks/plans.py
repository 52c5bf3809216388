"""The ``seed`` plan against the ``extended`` plan on the same data, in one run.

Each plan runs whole (``run-all``: every stage, then the final retrain scored on test) in its own
process and fresh workdir, on the same prepared data (same source, rows, split and seed). Prints
one JSON line per plan -- test accuracy, test loss, macro-F1, wall seconds of the whole process
and the configuration the plan chose -- and a last line with the differences (extended - seed).

    python benchmarks/plans.py                            # full-size synthetic data (~50 min)
    python benchmarks/plans.py --rows 50000               # a stratified subsample
    python benchmarks/plans.py --data FILE                # a UCI-format file
    python benchmarks/plans.py --plans seed extended quick
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


def run_plan(plan: str, workdir: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "tuner", "run-all", "--plan", plan, "--data", args.data,
           "--workdir", str(workdir), "--seed", str(args.seed), "-q"]  # fmt: skip
    if args.rows:
        cmd += ["--rows", str(args.rows)]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    metrics = json.loads((workdir / "models" / plan / "metrics.json").read_text())
    return {
        "plan": plan,
        "test_accuracy": round(metrics["test_accuracy"], 4),
        "test_loss": round(metrics["test_loss"], 4),
        "macro_f1": round(metrics["macro_f1"], 4),
        "wall_s": round(wall, 1),
        "config": metrics.get("config"),
        "rows": args.rows or "all",
        "data": args.data,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="synthetic", help="synthetic (default) or a UCI file")
    ap.add_argument("--rows", type=int, default=None, help="a stratified subsample of N rows")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--plans", nargs="+", default=["seed", "extended"])
    ap.add_argument("--keep", type=Path, default=None, help="keep the workdirs under this folder")
    args = ap.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="tuner-plans-") as tmp:
        root = args.keep or Path(tmp)
        for plan in args.plans:
            result = run_plan(plan, root / plan, args)
            results.append(result)
            print(json.dumps(result), flush=True)
    if len(results) >= 2:
        a, b = results[0], results[-1]
        print(
            json.dumps(
                {
                    "compare": f"{b['plan']} - {a['plan']}",
                    "test_accuracy_points": round(
                        100 * (b["test_accuracy"] - a["test_accuracy"]), 2
                    ),
                    "macro_f1": round(b["macro_f1"] - a["macro_f1"], 4),
                    "test_loss": round(b["test_loss"] - a["test_loss"], 4),
                    "wall_ratio": round(b["wall_s"] / a["wall_s"], 3),
                }
            )
        )


if __name__ == "__main__":
    main()
