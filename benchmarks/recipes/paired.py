"""Paired differences between recipes over the runs both have: mean, sd, naive SE (runs of one
table are not independent, so the SE is optimistic), per-table-mean SE (14 tables).
    python benchmarks/recipes/paired.py A B [C ...]   # each vs the first"""

import statistics as st
import sys

from report import SMALL, load

res = load()
a = sys.argv[1]
for b in sys.argv[2:]:
    runs = [r for r in res[a] if r in res[b] and r[0] in SMALL]
    d = [100 * (res[b][r]["test_acc"] - res[a][r]["test_acc"]) for r in runs]
    per_t = {}
    for r, x in zip(runs, d, strict=True):
        per_t.setdefault(r[0], []).append(x)
    tm = [st.mean(v) for v in per_t.values()]
    print(
        f"{b} - {a}: {st.mean(d):+.2f} pts over {len(d)} runs (sd {st.stdev(d):.2f}, naive SE "
        f"{st.stdev(d) / len(d) ** 0.5:.2f}; over {len(tm)} table means SE {st.stdev(tm) / len(tm) ** 0.5:.2f}; "
        f"better on {sum(x > 0 for x in tm)}/{len(tm)} tables)"
    )
