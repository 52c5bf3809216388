"""What pruning saves in the weight-decay stage, and whether it changes the decision.

Runs the ``seed`` plan's ``weight_decay`` stage twice on the same data, each in a fresh workdir
and process: as published (no pruner: all 5 points x 5 folds in one fused group) and with
``pruner = "wilcoxon"`` (fold after fold, points worse than the leader on the paired validation
blocks pruned before their remaining folds). Prints one JSON line per run -- wall seconds,
member-epochs trained (one member trained for one epoch on one fold), the chosen weight decay,
each point's value and whether it was pruned -- and a last line with the compute saved.

    python benchmarks/pruning.py                      # full-size synthetic data (~15 min)
    python benchmarks/pruning.py --rows 50000         # a stratified subsample
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parents[1]


def run(workdir: Path, plan: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "tuner", "run-stage", "weight_decay", "--plan", str(plan),
           "--data", args.data, "--fix", f"lr={args.lr}", "--workdir", str(workdir), "-q"]  # fmt: skip
    if args.rows:
        cmd += ["--rows", str(args.rows)]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    wall = time.perf_counter() - t0
    storage = f"sqlite:///{workdir / 'studies' / 'tuner.sqlite3'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="seed.weight_decay", storage=storage)
    trials = [t for t in study.trials if t.state.is_finished()]
    points = {
        str(t.params["weight_decay"]): {
            "value": round(t.value, 4) if t.value is not None else None,
            "state": t.state.name,
            "folds_trained": t.user_attrs.get("folds_trained"),
        }
        for t in trials
    }
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {
        "plan": plan.stem,
        "wall_s": round(wall, 1),
        "member_epochs": sum(t.user_attrs.get("member_epochs", 0) for t in trials),
        "best_weight_decay": max(complete, key=lambda t: t.value).params["weight_decay"],
        "points": points,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="synthetic")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--lr", default="0.001", help="the fixed learning rate (the published 1e-3)")
    ap.add_argument("--p", type=float, default=0.1, help="WilcoxonPruner p_threshold")
    ap.add_argument(
        "--min-folds", type=int, default=2, help="folds before a point can be pruned (default 2)"
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tuner-pruning-bench-"))
    seed = (REPO / "studies" / "seed.toml").read_text()
    pruned = seed.replace(
        'objective = "mean"\n',
        f'objective = "mean"\npruner = "wilcoxon"\npruner_p = {args.p}\n'
        f"pruner_min_folds = {args.min_folds}\n",
        1,
    )
    assert pruned != seed
    plans = {"published": work / "seed.toml", "pruned": work / "seed_pruned.toml"}
    plans["published"].write_text(seed)
    plans["pruned"].write_text(pruned)
    results = {}
    for name, plan in plans.items():
        results[name] = run(work / name, plan, args)
        print(json.dumps({"run": name, **results[name]}), flush=True)
    base, cut = results["published"], results["pruned"]
    print(
        json.dumps(
            {
                "compute_saved": round(1 - cut["member_epochs"] / base["member_epochs"], 3),
                "wall_saved": round(1 - cut["wall_s"] / base["wall_s"], 3),
                "same_choice": base["best_weight_decay"] == cut["best_weight_decay"],
            }
        )
    )


if __name__ == "__main__":
    main()
