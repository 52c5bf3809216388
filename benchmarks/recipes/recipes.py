"""Compact MLP / TabM-mini / numeric-embedding recipes for tabular classification (plain torch).

    nice -n 19 python benchmarks/recipes/recipes.py RECIPE [TABLE ...]     # appends results/RECIPE.jsonl (skips done runs)

Recipes are defined in RECIPES at the bottom. Inputs: WORK/data/<table>/s<seed>.npz from prepare_tables.py
(tuner's own prepared arrays + the raw numeric columns of the same rows).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(1)
WORK = Path(os.environ.get("TUNER_RECIPES_DIR", Path(tempfile.gettempdir()) / "tuner-recipes"))
"""Where prepare_tables.py wrote the arrays (WORK/data)."""
RESULTS = Path(__file__).resolve().parent / "results"  # one JSON line per table x seed
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: tables.py
from tables import TABLES as _TABLES  # noqa: E402

TABLES = list(_TABLES)  # benchmarks/tables.py's: the 14 classic tables, then diamonds and hi
SEEDS = (42, 43, 44)


def load(table: str, seed: int) -> dict:
    with np.load(WORK / "data" / table / f"s{seed}.npz") as z:
        return {k: z[k] for k in z.files}


# ----------------------------------------------------------------------------- preprocessing


def robust_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RealMLP-TD robust scaling: centre median, scale 1/(q75-q25), else 2/(max-min), else 0."""
    med = np.nanmedian(x, axis=0)
    q1, q3 = np.nanquantile(x, 0.25, axis=0), np.nanquantile(x, 0.75, axis=0)
    lo, hi = np.nanmin(x, axis=0), np.nanmax(x, axis=0)
    s = np.where(
        q3 > q1,
        1.0 / np.maximum(q3 - q1, 1e-30),
        np.where(hi > lo, 2.0 / np.maximum(hi - lo, 1e-30), 0.0),
    )
    return med, s


def smooth_clip(z: np.ndarray) -> np.ndarray:
    return z / np.sqrt(1.0 + (z / 3.0) ** 2)


def preprocess(d: dict, scaling: str, seed: int) -> dict:
    """Numeric block (scaled), PLE-ready raw (imputed) block, and 'other' block (one-hots +
    missing indicators). scaling: 'tuner' (tuner's standardised arrays as-is, no indicators),
    'robust' (robust scale + smooth clip), 'quantile' (QuantileTransformer normal)."""
    nn_ = int(d["n_num"])
    out = {}
    if scaling == "tuner":
        for p in ("train", "val", "test"):
            out[p] = (
                d[f"x_{p}"][:, :nn_].astype(np.float32),
                None,
                d[f"x_{p}"][:, nn_:].astype(np.float32),
            )
        out["imputed"] = {p: d[f"r_{p}"] for p in ("train", "val", "test")}
    rtr = d["r_train"]
    fill = np.nanmedian(rtr, axis=0) if nn_ else np.zeros(0)
    fill = np.where(np.isnan(fill), 0.0, fill)
    has_nan = np.isnan(rtr).any(axis=0) if nn_ else np.zeros(0, bool)
    imputed = {}
    for p in ("train", "val", "test"):
        r = d[f"r_{p}"]
        imputed[p] = np.where(np.isnan(r), fill[None, :], r) if nn_ else r
    if scaling == "tuner":
        out["imputed"] = imputed
        return out
    if scaling == "robust":
        med, s = robust_fit(imputed["train"]) if nn_ else (0, 0)
        f = lambda x: smooth_clip((x - med) * s)  # noqa: E731
    elif scaling == "quantile":
        from sklearn.preprocessing import QuantileTransformer

        if nn_:
            qt = QuantileTransformer(
                n_quantiles=min(1000, len(rtr)),
                output_distribution="normal",
                subsample=None,
                random_state=seed,
            ).fit(imputed["train"])
            f = qt.transform
        else:
            f = lambda x: x  # noqa: E731
    else:
        raise ValueError(scaling)
    for p in ("train", "val", "test"):
        num = (
            f(imputed[p]).astype(np.float32) if nn_ else np.zeros((len(imputed[p]), 0), np.float32)
        )
        ind = np.isnan(d[f"r_{p}"][:, has_nan]).astype(np.float32)
        other = np.concatenate([d[f"x_{p}"][:, nn_:].astype(np.float32), ind], axis=1)
        out[p] = (num, None, other)
    out["imputed"] = imputed
    return out


def ple_bins(x: np.ndarray, n_bins: int) -> list[np.ndarray]:
    """Quantile bin edges per feature (rtdl compute_bins: unique of n_bins+1 quantiles)."""
    return [
        np.unique(np.quantile(x[:, j], np.linspace(0, 1, n_bins + 1))) for j in range(x.shape[1])
    ]


def ple_encode(x: np.ndarray, bins: list[np.ndarray]) -> np.ndarray:
    """(n, F, max_bins) piecewise-linear encoding; first bin unclamped below, last above
    (rtdl); padding and constant features are 0."""
    nb = max(1, max(len(b) - 1 for b in bins))
    out = np.zeros((len(x), len(bins), nb), np.float32)
    for j, b in enumerate(bins):
        m = len(b) - 1
        if m < 1:
            continue
        left, width = b[:-1], np.diff(b)
        e = (x[:, j : j + 1] - left[None, :]) / width[None, :]
        if m == 1:
            pass
        else:
            e[:, 0] = np.minimum(e[:, 0], 1.0)
            e[:, -1] = np.maximum(e[:, -1], 0.0)
            e[:, 1:-1] = np.clip(e[:, 1:-1], 0.0, 1.0)
        out[:, j, :m] = e
    return out


# ----------------------------------------------------------------------------- model


class PLEEmb(nn.Module):
    """precomputed PLE (B, F, nb) -> per-feature linear (F, nb, d) -> ReLU -> flatten"""

    def __init__(self, n_f, nb, d):
        super().__init__()
        bound = 1 / math.sqrt(nb)
        self.w = nn.Parameter(torch.empty(n_f, nb, d).uniform_(-bound, bound))
        self.b = nn.Parameter(torch.empty(n_f, d).uniform_(-bound, bound))

    def forward(self, e):
        return F.relu(torch.einsum("bfn,fnd->bfd", e, self.w) + self.b).flatten(1)


class PLREmb(nn.Module):
    """x (B, F) -> 2 pi c x, c ~ N(0, sigma) (F, nf) -> [cos, sin] -> linear (per feature, or
    shared when lite) -> ReLU -> flatten"""

    def __init__(self, n_f, nf, d, sigma, lite):
        super().__init__()
        self.c = nn.Parameter(torch.randn(n_f, nf) * sigma)
        bound = 1 / math.sqrt(2 * nf)
        self.lite = lite
        shape = (2 * nf, d) if lite else (n_f, 2 * nf, d)
        self.w = nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))
        self.b = nn.Parameter(torch.empty((d,) if lite else (n_f, d)).uniform_(-bound, bound))

    def forward(self, x):
        v = 2 * math.pi * self.c[None] * x[..., None]
        v = torch.cat([torch.cos(v), torch.sin(v)], -1)
        if self.lite:
            h = v @ self.w + self.b
        else:
            h = torch.einsum("bfn,fnd->bfd", v, self.w) + self.b
        return F.relu(h).flatten(1)


class Net(nn.Module):
    def __init__(self, n_num, d_other, n_classes, cfg, nb=0):
        super().__init__()
        emb = cfg.get("emb")
        self.emb = None
        if emb == "ple" and n_num:
            self.emb = PLEEmb(n_num, nb, cfg["d_emb"])
            d_in = n_num * cfg["d_emb"]
        elif emb == "plr" and n_num:
            self.emb = PLREmb(
                n_num, cfg["n_freq"], cfg["d_emb"], cfg["sigma"], cfg.get("lite", True)
            )
            d_in = n_num * cfg["d_emb"]
        else:
            d_in = n_num
        d_in += d_other
        self.k = k = cfg.get("k", 1)
        self.packed = cfg.get("packed", False)
        h = cfg["width"]
        L = cfg["depth"]
        self.drop = cfg.get("dropout", 0.0)
        if k > 1 and not self.packed:
            r = torch.empty(k, d_in)
            if cfg.get("r_init", "signs") == "signs":
                r = torch.bernoulli(torch.full((k, d_in), 0.5)) * 2 - 1
            else:
                r.normal_(1.0 if cfg.get("r_init") == "normal1" else 0.0, 1.0)
            self.r = nn.Parameter(r)
        else:
            self.r = None
        if self.packed:
            dims = [d_in] + [h] * L
            self.pw = nn.ParameterList()
            self.pb = nn.ParameterList()
            for a, b in zip(dims[:-1], dims[1:], strict=False):
                bound = 1 / math.sqrt(a)
                self.pw.append(nn.Parameter(torch.empty(k, a, b).uniform_(-bound, bound)))
                self.pb.append(nn.Parameter(torch.empty(k, 1, b).uniform_(-bound, bound)))
        else:
            self.layers = nn.ModuleList([nn.Linear(d_in if i == 0 else h, h) for i in range(L)])
        bound = 1 / math.sqrt(h)
        self.hw = nn.Parameter(torch.empty(k, h, n_classes).uniform_(-bound, bound))
        self.hb = nn.Parameter(torch.empty(k, n_classes).uniform_(-bound, bound))

    def forward(self, num, other):
        """-> logits (B, k, C)"""
        x = self.emb(num) if self.emb is not None else num
        x = torch.cat([x, other], 1)
        if self.packed:
            z = x.unsqueeze(0).expand(self.k, -1, -1)  # (k, B, D)
            for w, b in zip(self.pw, self.pb, strict=True):
                z = F.dropout(F.relu(torch.baddbmm(b, z, w)), self.drop, self.training)
            return torch.einsum("kbh,khc->bkc", z, self.hw) + self.hb
        if self.r is not None:
            x = x.unsqueeze(1) * self.r  # (B, k, D)
        else:
            x = x.unsqueeze(1)
        for lin in self.layers:
            x = F.dropout(F.relu(lin(x)), self.drop, self.training)
        if self.k == 1:
            return x @ self.hw[0] + self.hb[0]
        return torch.einsum("bkh,khc->bkc", x, self.hw) + self.hb


# ----------------------------------------------------------------------------- training


def batch_rule(n: int, cfg) -> int:
    if cfg.get("batch"):
        return cfg["batch"]
    return int(min(512, max(32, 2 ** round(math.log2(n / 64)))))


def epochs_rule(n: int, cfg) -> int:
    if cfg.get("max_epochs"):
        return cfg["max_epochs"]
    return int(min(200, max(30, round(200_000 / n))))


def fit_eval(d: dict, cfg: dict, seed: int) -> dict:
    torch.manual_seed(seed)
    np.random.seed(seed)
    t0 = time.process_time()
    w0 = time.perf_counter()
    pre = preprocess(d, cfg.get("scaling", "robust"), seed)
    nn_ = int(d["n_num"])
    nb = 0
    parts = {}
    if cfg.get("emb") == "ple" and nn_:
        src = pre["imputed"]
        bins = ple_bins(src["train"], cfg["n_bins"])
        nb = max(1, max(len(b) - 1 for b in bins))
        for p in ("train", "val", "test"):
            parts[p] = (torch.from_numpy(ple_encode(src[p], bins)), torch.from_numpy(pre[p][2]))
    else:
        for p in ("train", "val", "test"):
            parts[p] = (torch.from_numpy(pre[p][0]), torch.from_numpy(pre[p][2]))
    ys = {p: torch.from_numpy(d[f"y_{p}"].astype(np.int64)) for p in ("train", "val", "test")}
    C = int(d["n_classes"])
    model = Net(nn_, parts["train"][1].shape[1], C, cfg, nb)
    opt_name = cfg.get("opt", "adamw")
    if opt_name == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg.get("wd", 0.0))
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg.get("wd", 0.0))
    n = len(ys["train"])
    bs = batch_rule(n, cfg)
    max_ep = epochs_rule(n, cfg)
    patience = cfg.get("patience", 16)
    monitor = cfg.get("monitor", "loss")
    ls = cfg.get("label_smoothing", 0.0)

    def predict(p):
        model.eval()
        with torch.no_grad():
            num, oth = parts[p]
            out = []
            for i in range(0, len(num), 4096):
                lg = model(num[i : i + 4096], oth[i : i + 4096])
                pr = F.softmax(lg, -1)
                out.append(pr.mean(1) if pr.ndim == 3 else pr)
            return torch.cat(out)

    best, best_state, best_ep, bad = None, None, 0, 0
    g = torch.Generator().manual_seed(seed)
    num_tr, oth_tr = parts["train"]
    ytr = ys["train"]
    ep = 0
    for ep in range(1, max_ep + 1):
        model.train()
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            if len(idx) < 2 and n > bs:
                continue
            lg = model(num_tr[idx], oth_tr[idx])
            yb = ytr[idx]
            if lg.ndim == 3:
                loss = F.cross_entropy(
                    lg.reshape(-1, C), yb.repeat_interleave(lg.shape[1]), label_smoothing=ls
                )
            else:
                loss = F.cross_entropy(lg, yb, label_smoothing=ls)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        pv = predict("val")
        vloss = float(F.nll_loss(torch.log(pv.clamp_min(1e-12)), ys["val"]))
        vacc = float((pv.argmax(1) == ys["val"]).float().mean())
        score = (-vloss,) if monitor == "loss" else (vacc, -vloss)
        if best is None or score > best:
            best, best_ep, bad = score, ep, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best_val = (vacc, vloss)
        else:
            bad += 1
            if bad >= patience:
                break
    model.load_state_dict(best_state)
    pt = predict("test")
    tacc = float((pt.argmax(1) == ys["test"]).float().mean())
    return {
        "test_acc": tacc,
        "val_acc": best_val[0],
        "val_loss": best_val[1],
        "best_epoch": best_ep,
        "epochs": ep,
        "batch": bs,
        "max_epochs": max_ep,
        "cpu_s": round(time.process_time() - t0, 2),
        "wall_s": round(time.perf_counter() - w0, 2),
    }


def baselines(d: dict, seed: int) -> dict:
    import warnings

    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    out = {}
    for name, m in (
        ("lr", LogisticRegression(max_iter=5000)),
        ("hgb", HistGradientBoostingClassifier(random_state=seed)),
    ):
        w0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.fit(d["x_train"], d["y_train"])
        out[name] = {
            "test_acc": float((m.predict(d["x_test"]) == d["y_test"]).mean()),
            "val_acc": float((m.predict(d["x_val"]) == d["y_val"]).mean()),
            "wall_s": round(time.perf_counter() - w0, 2),
        }
    return out


# ----------------------------------------------------------------------------- recipes

BASE = dict(
    scaling="robust",
    width=256,
    depth=2,
    lr=1e-3,
    opt="adamw",
    wd=0.0,
    dropout=0.0,
    k=1,
    patience=16,
    monitor="loss",
)
TABM = dict(BASE, k=32, lr=2e-3, wd=3e-4, dropout=0.1)
RECIPES = {
    # 1. tuner's seed-plan-like reference: standardised arrays, Adam 1e-3, batch 128
    "mlp": dict(BASE, scaling="tuner", opt="adam", batch=128),
    "mlp_bs": dict(BASE, scaling="tuner", opt="adam"),  # same with the batch-size rule
    # 2. robust preprocessing
    "mlp_robust": dict(BASE, scaling="robust", opt="adam"),
    "mlp_qt": dict(BASE, scaling="quantile", opt="adam"),
    # 3. embeddings, single MLP
    "mlp_ple": dict(BASE, scaling="robust", opt="adam", emb="ple", n_bins=16, d_emb=16),
    "mlp_plr": dict(
        BASE, scaling="robust", opt="adam", emb="plr", n_freq=16, d_emb=16, sigma=0.1, lite=True
    ),
    # 4. TabM-mini
    "tabm": dict(TABM),
    "tabm_qt": dict(TABM, scaling="quantile"),
    "tabm_k16": dict(TABM, k=16),
    "tabm_ple": dict(TABM, emb="ple", n_bins=16, d_emb=16, r_init="normal"),
    "tabm_ple_s": dict(TABM, emb="ple", n_bins=16, d_emb=16),
    "tabm_plr": dict(TABM, emb="plr", n_freq=16, d_emb=16, sigma=0.1, lite=True, r_init="normal"),
    "tabm_plr_s": dict(TABM, emb="plr", n_freq=16, d_emb=16, sigma=0.1, lite=True),
    "packed8": dict(TABM, k=8, packed=True),
    "mlp_plr_s03": dict(
        BASE, scaling="robust", opt="adam", emb="plr", n_freq=16, d_emb=16, sigma=0.3, lite=True
    ),
    "mlp_plr_s003": dict(
        BASE, scaling="robust", opt="adam", emb="plr", n_freq=16, d_emb=16, sigma=0.03, lite=True
    ),
    "mlp_plr_e100": dict(
        BASE,
        scaling="robust",
        opt="adam",
        emb="plr",
        n_freq=16,
        d_emb=16,
        sigma=0.1,
        lite=True,
        max_epochs=100,
    ),
    # cheaper TabM-mini (k=8)
    "tabm8": dict(TABM, k=8),
    "tabm8_ple": dict(TABM, k=8, emb="ple", n_bins=16, d_emb=16, r_init="normal"),
    "tabm8_plr": dict(
        TABM, k=8, emb="plr", n_freq=16, d_emb=16, sigma=0.1, lite=True, r_init="normal"
    ),
    "tabm_acc": dict(TABM, monitor="acc"),
}


def main():
    recipe = sys.argv[1]
    tables = sys.argv[2:] or TABLES
    out = RESULTS / f"{recipe}.jsonl"
    out.parent.mkdir(exist_ok=True)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["table"], r["seed"]))
    for t in tables:
        for s in SEEDS:
            if (t, s) in done:
                continue
            d = load(t, s)
            if recipe == "baselines":
                res = baselines(d, s)
            else:
                res = fit_eval(d, RECIPES[recipe], s)
            row = {"table": t, "seed": s, "recipe": recipe, **res}
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
