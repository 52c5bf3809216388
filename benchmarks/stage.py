"""Wall clock of a whole component stage: tuner against the published-style loop.

Writes an MSD-shaped file of ``--rows`` rows (``tuner synthesize``), then times, as separate
processes and one after the other:

* ``python -m tuner run-stage activation --plan seed --data FILE --fix lr=0.001
  --fix weight_decay=0.0001 --fix init=default`` in a fresh workdir (3 trials x 15 epochs at
  batch 128, trained as one fused group), and
* ``python benchmarks/published_stage.py FILE``: the same three trainings the way the
  published study ran them (pandas, DataLoader, one trial after another).

Prints one JSON line per process (wall seconds, each activation's peak validation accuracy)
and a last line with the ratio. Process start-up, reading and preparing the data count for
both.

    python benchmarks/stage.py                  # 100,000 rows (~3 min on 2 cores)
    python benchmarks/stage.py --rows 20000 --epochs 2
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

import optuna

REPO = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--epochs", type=int, default=15, help="epochs per trial (the plan's: 15)")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temp directory")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tuner-stage-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"msd_{args.rows}.txt"
    if not data.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "tuner",
                "synthesize",
                "--out",
                str(data),
                "--rows",
                str(args.rows),
                "-q",
            ],
            cwd=REPO,
            check=True,
        )
    plan = "seed"
    if args.epochs != 15:  # a shorter copy of the seed plan for smoke runs
        text = (
            (REPO / "studies" / "seed.toml")
            .read_text()
            .replace("epochs = 15", f"epochs = {args.epochs}")
        )
        plan_path = work / "seed_short.toml"
        plan_path.write_text(text)
        plan = str(plan_path)
    tuner_dir = work / "tuner"
    if tuner_dir.exists():
        raise SystemExit(f"{tuner_dir} exists: give a fresh --workdir")
    tuner_dir.mkdir()
    cmd = [sys.executable, "-m", "tuner", "run-stage", "activation", "--plan", plan,
           "--data", str(data), "--fix", "lr=0.001", "--fix", "weight_decay=0.0001",
           "--fix", "init=default", "--workdir", str(tuner_dir), "-q"]  # fmt: skip
    tuner_s, _ = timed(cmd, REPO)
    storage = f"sqlite:///{tuner_dir / 'studies' / 'tuner.sqlite3'}"
    name = [
        s.study_name
        for s in optuna.get_all_study_summaries(storage)
        if ".activation" in s.study_name
    ][0]
    trials = optuna.load_study(study_name=name, storage=storage).trials
    tuner_peaks = {t.params["activation"]: t.value for t in trials}
    print(json.dumps({"case": "tuner run-stage activation", "wall_s": round(tuner_s, 1),
                      "peak_val_acc": tuner_peaks, "loadavg": os.getloadavg()}), flush=True)  # fmt: skip

    base_cmd = [sys.executable, str(REPO / "benchmarks" / "published_stage.py"), str(data),
                "--epochs", str(args.epochs)]  # fmt: skip
    base_s, out = timed(base_cmd, REPO)
    base = json.loads(out.strip().splitlines()[-1])
    print(json.dumps({"case": "published-style loop", "wall_s": round(base_s, 1),
                      "peak_val_acc": base["peak_val_acc"], "loadavg": os.getloadavg()}), flush=True)  # fmt: skip
    print(json.dumps({"rows": args.rows, "epochs": args.epochs,
                      "speedup": round(base_s / tuner_s, 2)}))  # fmt: skip


if __name__ == "__main__":
    main()
