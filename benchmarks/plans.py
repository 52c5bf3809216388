"""The ``seed`` plan against the ``extended`` plan on the same data, in one run.

Each plan runs whole (``run-all``: every stage, then the final retrain scored on test) in its own
process and fresh workdir, on the same prepared data (same source, rows, split and seed). Prints
one JSON line per plan -- test accuracy, test loss, macro-F1, wall seconds of the whole process
and the configuration the plan chose -- and a last line with the differences (extended - seed).
Both final models are scored on the same test rows, so the differences in accuracy and macro-F1
come with 95% paired-bootstrap intervals over those rows (``tuner.report.bootstrap``): a difference
whose interval contains 0 is not told apart from the luck of the test split.

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
sys.path.insert(0, str(REPO))


def test_predictions(root: Path, plans: list[str], args: argparse.Namespace):
    """The test labels and each plan's final model's predictions on them. The split is prepared
    once (every plan ran on the same data spec); a model trained on other prepared data (its
    ``model.pt`` names the data key) is refused."""
    import torch

    from tuner.data.prepare import DataSpec, prepare
    from tuner.predict import load_bundle

    spec = DataSpec(args.data, args.rows, "stratified", args.seed)
    prepared = prepare(spec, root / plans[0] / "data")
    key = prepared.manifest.key
    preds = []
    for plan in plans:
        model, bundle = load_bundle(root / plan / "models" / plan / "model.pt")
        if bundle.get("data_key", bundle.get("data")) != key:
            raise SystemExit(
                f"{plan}'s model was trained on prepared data {bundle.get('data_key')}, not {key}"
            )
        with torch.inference_mode():
            preds.append(model(torch.from_numpy(prepared.x_test)).argmax(1).numpy())
    return prepared.y_test, preds, prepared.n_classes


def run_plan(plan: str, workdir: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "tuner", "run-all", "--plan", plan, "--data", args.data,
           "--workdir", str(workdir), "--seed", str(args.seed), "-q"]  # fmt: skip
    if args.rows:
        cmd += ["--rows", str(args.rows)]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    return {
        "plan": plan,
        **scores(workdir, plan),
        "wall_s": round(wall, 1),
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
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="with --keep: a plan whose final model is already there is scored, not re-run",
    )
    ap.add_argument("--draws", type=int, default=2000, help="bootstrap resamples of the test rows")
    args = ap.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="tuner-plans-") as tmp:
        root = args.keep or Path(tmp)
        for plan in args.plans:
            if args.reuse and (root / plan / "models" / plan / "metrics.json").is_file():
                result = {"plan": plan, **scores(root / plan, plan), "wall_s": None}
            else:
                result = run_plan(plan, root / plan, args)
            results.append(result)
            print(json.dumps(result), flush=True)
        if len(results) >= 2:
            a, b = results[0], results[-1]
            print(json.dumps(compare(a, b, root, args)))


def scores(workdir: Path, plan: str) -> dict:
    metrics = json.loads((workdir / "models" / plan / "metrics.json").read_text())
    out = {k: round(metrics[k], 4) for k in ("test_accuracy", "test_loss", "macro_f1")}
    return {**out, "config": metrics.get("config")}


def compare(a: dict, b: dict, root: Path, args: argparse.Namespace) -> dict:
    """``b - a``, with paired-bootstrap intervals for accuracy and macro-F1."""
    from tuner.report.bootstrap import paired_bootstrap

    y, (pred_a, pred_b), n_classes = test_predictions(root, [a["plan"], b["plan"]], args)
    diffs = paired_bootstrap(y, pred_a, pred_b, n_classes, draws=args.draws)
    acc, f1 = diffs["accuracy"], diffs["macro_f1"]
    wall = a["wall_s"] and b["wall_s"] and round(b["wall_s"] / a["wall_s"], 3)
    return {
        "compare": f"{b['plan']} - {a['plan']}",
        "test_accuracy_points": round(100 * acc.observed, 2),
        "test_accuracy_points_ci95": [round(100 * v, 2) for v in acc.ci95],
        "macro_f1": round(f1.observed, 4),
        "macro_f1_ci95": [round(v, 4) for v in f1.ci95],
        "test_loss": round(b["test_loss"] - a["test_loss"], 4),
        "wall_ratio": wall,
        "n_test": int(len(y)),
    }


if __name__ == "__main__":
    main()
