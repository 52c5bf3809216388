"""Export tables, run tuner's own prepare() (same spec as the CLI builds), and recover the raw
numeric columns (with NaN) for the same train/val/test rows. Writes data/<table>/s<seed>.npz.

    nice -n 19 python benchmarks/recipes/prepare_tables.py            # all tables, seeds 42 43 44
"""

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from tables import TABLES, Table, export_csv  # noqa: E402

from tuner.data import features, target  # noqa: E402
from tuner.data.prepare import _read_frames, prepare  # noqa: E402
from tuner.data.spec import build_spec  # noqa: E402
from tuner.data.split import split_rows  # noqa: E402

ROOT = (
    Path(os.environ.get("TUNER_RECIPES_DIR", Path(tempfile.gettempdir()) / "tuner-recipes"))
    / "data"
)
ALL = TABLES  # the 14 classic tables and the two larger ones (diamonds, hi)
SEEDS = (42, 43, 44)


def one(t: Table, seed: int) -> Path:
    out = ROOT / t.name / f"s{seed}.npz"
    if out.exists():
        return out
    csv = ROOT / t.name / f"{t.name}.csv"
    if not csv.exists():
        export_csv(t, csv)
    spec = build_spec(str(csv), {"target": t.target, "seed": seed, "drop": t.drop or None})
    p = prepare(spec, ROOT / t.name / f"seed{seed}" / "data")
    # the same row indices prepare() used (re-derived with its own functions)
    frame, n_main, display, unnamed = _read_frames(spec)
    labels = target.encode(frame[spec.target], spec.target, display, spec.bins)
    if (~labels.keep).any():
        n_main -= int((~labels.keep[:n_main]).sum())
        frame = frame[labels.keep]
    y = labels.y
    cols = features.infer_columns(frame, spec, display, unnamed)
    tr, va, te = split_rows(frame, y, n_main, spec, display, set())
    enc = p.manifest.encoding
    assert list(cols.numeric) == list(enc.numeric)
    nnum = len(enc.numeric)
    raw = {}
    for name, idx, x, yy in (
        ("train", tr, p.x_train, p.y_train),
        ("val", va, p.x_val, p.y_val),
        ("test", te, p.x_test, p.y_test),
    ):
        assert np.array_equal(y[idx], yy), (t.name, name)
        r = (
            np.column_stack(
                [features.as_numbers(frame.iloc[idx][c], c, display) for c in enc.numeric]
            )
            if nnum
            else np.zeros((len(idx), 0))
        )
        # check: impute + standardise reproduces tuner's numeric columns
        f = np.where(np.isnan(r), np.asarray(enc.fill_)[None, :], r) if nnum else r
        if nnum:
            z = (f - np.asarray(enc.mean_)) / np.asarray(enc.scale_)
            assert np.allclose(z, x[:, :nnum], atol=1e-4), (t.name, name)
        raw[name] = r
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        out,
        x_train=p.x_train,
        y_train=p.y_train,
        x_val=p.x_val,
        y_val=p.y_val,
        x_test=p.x_test,
        y_test=p.y_test,
        r_train=raw["train"],
        r_val=raw["val"],
        r_test=raw["test"],
        n_num=nnum,
        n_classes=p.n_classes,
        key=p.manifest.key,
    )
    print(
        t.name,
        seed,
        "train/val/test",
        len(tr),
        len(va),
        len(te),
        "features",
        p.n_features,
        "numeric",
        nnum,
        "classes",
        p.n_classes,
        "missing num",
        int(np.isnan(raw["train"]).sum()),
        flush=True,
    )
    return out


if __name__ == "__main__":
    names = sys.argv[1:] or list(ALL)
    for n in names:
        for s in SEEDS:
            one(ALL[n], s)
