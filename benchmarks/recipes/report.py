"""Summarise results/*.jsonl: per-table mean test accuracy (over seeds), differences to HGB and LR.

python benchmarks/recipes/report.py [RECIPE ...]                       # default: every recipe with results
python benchmarks/recipes/report.py --select tabm8_plr,tabm8_ple,...   # also: pick per table x seed on val acc
"""

import json
import statistics as st
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: tables.py
from tables import GROUPS  # noqa: E402

SMALL, LARGE = GROUPS["small"], GROUPS["large"]


def load():
    res = {}
    for f in sorted(ROOT.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            if r["recipe"] == "baselines":
                for m in ("lr", "hgb"):
                    res.setdefault(m, {})[(r["table"], r["seed"])] = r[m]
            else:
                res.setdefault(r["recipe"], {})[(r["table"], r["seed"])] = r
    return res


def select(res, names, key="val_acc"):
    """per run, the recipe with the best validation accuracy (ties: lower val loss, then order)"""
    out = {}
    runs = set.intersection(*(set(res[n]) for n in names))
    for run in runs:
        best = max(
            names,
            key=lambda n: (res[n][run][key], -res[n][run].get("val_loss", 0), -names.index(n)),
        )
        r = dict(res[best][run])
        r["picked"] = best
        r["wall_s"] = sum(res[n][run]["wall_s"] for n in names)
        r["cpu_s"] = sum(res[n][run].get("cpu_s", 0) for n in names)
        out[run] = r
    return out


def summary(res, recipes, tables):
    lr, hgb = res["lr"], res["hgb"]
    lines = []
    hdr = "| table | LR | HGB | " + " | ".join(recipes) + " |"
    lines += [hdr, "|" + "---|" * (3 + len(recipes))]
    for t in tables:
        row = [t]
        for m in ["lr", "hgb"] + recipes:
            v = [res[m][(t, s)]["test_acc"] for s in (42, 43, 44) if (t, s) in res.get(m, {})]
            row.append(
                f"{100 * st.mean(v):.2f}" + ("" if len(v) == 3 else f" ({len(v)})") if v else "-"
            )
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(
        "| recipe | runs | mean diff vs HGB (pts) | sd | wins/ties/losses vs HGB | mean diff vs LR | "
        "within 2 pts of HGB | mean wall s/fit | median wall s/fit | mean CPU s/fit |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for m in recipes:
        dh, dl, walls, cpus = [], [], [], []
        for (t, s), r in res[m].items():
            if t not in tables:
                continue
            dh.append(100 * (r["test_acc"] - hgb[(t, s)]["test_acc"]))
            dl.append(100 * (r["test_acc"] - lr[(t, s)]["test_acc"]))
            walls.append(r["wall_s"])
            cpus.append(r.get("cpu_s", r["wall_s"]))
        if not dh:
            continue
        w = sum(x > 1e-9 for x in dh)
        ti = sum(abs(x) <= 1e-9 for x in dh)
        lines.append(
            f"| {m} | {len(dh)} | {st.mean(dh):+.2f} | {st.stdev(dh) if len(dh) > 1 else 0:.2f} | "
            f"{w}/{ti}/{len(dh) - w - ti} | {st.mean(dl):+.2f} | {sum(x >= -2 for x in dh)} | "
            f"{st.mean(walls):.1f} | {st.median(walls):.1f} | {st.mean(cpus):.1f} |"
        )
    return "\n".join(lines)


def main():
    args = sys.argv[1:]
    res = load()
    sels = []
    while "--select" in args:
        i = args.index("--select")
        names = args[i + 1].split(",")
        del args[i : i + 2]
        if all(n in res for n in names):
            name = "sel(" + "+".join(names) + ")"
            res[name] = select(res, names)
            sels.append(name)
    recipes = args or [k for k in res if k not in ("lr", "hgb") and not k.startswith("sel(")]
    recipes += sels
    # HGB itself as a recipe row for reference
    res["HGB"] = res["hgb"]
    res["LR"] = res["lr"]
    print("## 14 tables x 3 seeds\n")
    print(summary(res, recipes + ["LR"], SMALL))
    print("\n## 2 large tables\n")
    print(summary(res, recipes + ["LR"], LARGE))
    print("\n## all 16 tables\n")
    print(summary(res, recipes + ["LR"], SMALL + LARGE).split("\n\n")[-1])
    for s in sels:
        from collections import Counter

        print(f"\n{s} picked:", dict(Counter(r["picked"] for r in res[s].values())))


if __name__ == "__main__":
    main()
