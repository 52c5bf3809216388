"""Training throughput: the published-style loop, tuner.train.reference.train, and fused groups.

Prints one JSON line per case (plus a first line describing the machine and the measured
matrix-product peaks)::

    python benchmarks/engine.py                 # ~100k MSD-shaped rows, every case
    python benchmarks/engine.py --quick         # smoke run
    python benchmarks/engine.py --cases fused --trials 25 --precisions fp32

Cases (all a 256x256 GELU MLP, batch 128, Adam):

* ``published``: one trial through ``torch.utils.data.DataLoader(TensorDataset, batch_size=128,
  shuffle=True)``, ``zero_grad / backward / step`` and ``loss.item()`` per step -- how the
  published study trained every trial;
* ``engine``: one trial as tuner trains it alone (the final job): :func:`tuner.train.loop.train_one`,
  a fused group of one;
* ``reference``: one trial through :func:`tuner.train.reference.train` (autograd, index-sliced
  in-memory batches): the loop fused training is tested against;
* ``fused``: :func:`tuner.train.loop.train_group` on groups of ``--trials`` members (1, 3, 12, 25),
  each with its own learning rate (the worst case for the optimizer: one fused call per
  member; ``--same-lr`` gives them all 1e-3); ``--precisions fp32 bf16``.

``trial_samples_per_s`` counts training samples summed over the group's members per second of
training wall time: model building and optimizer set-up excluded, the epoch's evaluation on
1,024 validation rows included for ``engine`` and ``fused`` (their ``EpochStats.seconds``). The cases run in turn for ``--rounds`` rounds of one timed run each
(``--seconds`` long, at most one epoch over the rows; bf16 cases once) and the best run of
each case is reported, with every run's rate in ``all_rates``: on a shared machine a burst of
load then spoils a run rather than a case. ``gflops`` counts 6 x the parameter-matmul FLOPs per sample
(forward 2 x (90x256 + 256x256 + 256x10), x3 for forward and backward); ``peak_share`` divides
it by the fp32 ``torch.mm`` rate measured at the start of the same run, for bf16 lines too
(which also give ``bf16_peak_share``, against the bf16 ``torch.mm`` rate). The machine's
load average is printed with every line: compare figures only from a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tuner.data import synthetic  # noqa: E402
from tuner.train.config import TrainConfig  # noqa: E402
from tuner.train.loop import train_group, train_one  # noqa: E402
from tuner.train.model import build_model, make_optimizer  # noqa: E402
from tuner.train.reference import train  # noqa: E402
from tuner.train.runtime import keep_freed_memory  # noqa: E402
from tuner.train.tensors import as_tensors  # noqa: E402

HIDDEN = (256, 256)
BATCH = 128
N_FEATURES, N_CLASSES = 90, 10
FLOPS_PER_SAMPLE = 6 * (N_FEATURES * HIDDEN[0] + HIDDEN[0] * HIDDEN[1] + HIDDEN[1] * N_CLASSES)
VAL_ROWS = 1024


def load(rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.preprocessing import StandardScaler

    years, features = synthetic.generate(rows=rows + VAL_ROWS, seed=0)
    labels = (years - synthetic.FIRST_DECADE) // 10
    features = StandardScaler().fit_transform(features)
    x, y = as_tensors(features.astype(np.float32), labels)
    return x[VAL_ROWS:], y[VAL_ROWS:], x[:VAL_ROWS], y[:VAL_ROWS]


def mm_peak(dtype: torch.dtype, budget_s: float) -> float:
    """Best ``torch.mm`` rate in GFLOP/s over square sizes 512..2048 within about ``budget_s``."""
    best = 0.0
    for n in (512, 1024, 2048):
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        t0 = time.perf_counter()
        a @ b  # warm-up; also tells whether this size fits the budget
        first = time.perf_counter() - t0
        if first * 4 > budget_s and n > 512:
            break
        reps = max(2, min(10, int(budget_s / 3 / max(first, 1e-6))))
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
        if first * 8 * 4 > budget_s:  # the next size would be 8x slower
            break
    return best


SAME_LR = False  # --same-lr: every member lr 1e-3 (one optimizer call for the whole group)


def cfg_for(k: int) -> TrainConfig:
    lr = 1e-3 if SAME_LR else float(10 ** (-4 + 2 * (k % 25) / 24))  # 1e-4 .. 1e-2
    return TrainConfig(hidden=HIDDEN, activation="gelu", lr=lr, batch_size=BATCH)


def published(x, y, steps: int) -> float:
    """Seconds for ``steps`` published-style steps (DataLoader, one trial)."""
    from torch.utils.data import DataLoader, TensorDataset

    cfg = cfg_for(0)
    torch.manual_seed(0)
    model = build_model(cfg, N_FEATURES, N_CLASSES)
    opt = make_optimizer(cfg, model.parameters())
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    done, running = 0, 0.0
    t0 = time.perf_counter()
    while done < steps:
        for xb, yb in loader:
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            running += loss.item()
            done += 1
            if done == steps:
                break
    return time.perf_counter() - t0


def engine(x, y, vx, vy, steps: int) -> float:
    """Seconds of one epoch of ``steps`` steps of a single trial as tuner trains it
    (``loop.train_one``, the final job's path; its evaluation included)."""
    n = steps * BATCH
    _, hist = train_one(cfg_for(0), (x[:n], y[:n]), (vx, vy), epochs=1, seed=0, n_classes=N_CLASSES)
    return hist.epochs[0].seconds


def reference(x, y, vx, vy, steps: int) -> float:
    """Seconds of one ``reference.train`` epoch (the autograd reference loop fused training is
    tested against) of ``steps`` steps, its evaluation included."""
    n = steps * BATCH
    _, hist = train(cfg_for(0), (x[:n], y[:n]), (vx, vy), epochs=1, seed=0, n_classes=N_CLASSES)
    return hist.epochs[0].seconds


def fused(x, y, vx, vy, steps: int, trials: int, precision: str) -> float:
    n = steps * BATCH
    """Seconds of one ``train_group`` epoch of ``steps`` steps (its evaluation included)."""
    cfgs = [cfg_for(k) for k in range(trials)]
    result = train_group(
        cfgs,
        x[:n],
        y[:n],
        vx,
        vy,
        epochs=1,
        seeds=[0] * trials,
        n_classes=N_CLASSES,
        precision=precision,
    )
    return result.histories[0].epochs[0].seconds


@dataclass
class Case:
    name: str
    trials: int
    precision: str
    run: Callable[[int], float]  # steps -> wall seconds
    steps: int = 0
    best: dict | None = None
    rates: list[float] = field(default_factory=list)


def size(case: Case, seconds: float, max_steps: int) -> None:
    """Warm up and choose the steps of one timed run (about ``seconds``, at most one epoch).

    The per-step time used here is the better of two 10-step runs."""
    per_step = min(case.run(10), case.run(10)) / 10
    case.steps = int(min(max_steps, max(10, seconds / per_step)))


def time_once(case: Case, seconds: float, max_steps: int) -> None:
    """One timed run; the next run is sized from the best rate so far (so one slow probe under
    a burst of load does not leave every later run short)."""
    c0, t0 = time.process_time(), time.perf_counter()
    seconds = case.run(case.steps)
    cpu_per_wall = (time.process_time() - c0) / (time.perf_counter() - t0)
    rate = case.trials * case.steps * BATCH / seconds
    case.rates.append(rate)
    if case.best is None or rate > case.best["rate"]:
        case.best = {
            "rate": rate,
            "steps": case.steps,
            "seconds": seconds,
            "cpu_per_wall": cpu_per_wall,
            "loadavg": os.getloadavg(),
        }
    best_steps = seconds * case.best["rate"] / (case.trials * BATCH)
    case.steps = int(min(max_steps, max(10, best_steps)))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=3.0, help="time of one timed run")
    ap.add_argument("--rounds", type=int, default=3, help="timed runs per fp32 case (best kept)")
    ap.add_argument("--quick", action="store_true", help="smoke run: small data, short runs")
    ap.add_argument("--cases", nargs="+", default=["published", "engine", "reference", "fused"])
    ap.add_argument("--trials", nargs="+", type=int, default=[1, 3, 12, 25])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument(
        "--malloc-defaults",
        action="store_true",
        help="leave glibc's allocator thresholds as they are (tuner raises them: tuner.train.runtime)",
    )
    ap.add_argument(
        "--same-lr", action="store_true", help="fused members share lr 1e-3 (default: 1e-4..1e-2)"
    )
    args = ap.parse_args(argv)
    global SAME_LR
    SAME_LR = args.same_lr
    if args.quick:
        args.rows, args.seconds, args.rounds = min(args.rows, 8_000), 0.5, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    tuned_malloc = False if args.malloc_defaults else keep_freed_memory()

    x, y, vx, vy = load(args.rows)
    max_steps = len(x) // BATCH
    cases: list[Case] = []
    if "published" in args.cases:
        cases.append(Case("published", 1, "fp32", lambda s: published(x, y, s)))
    if "engine" in args.cases:
        cases.append(Case("engine", 1, "fp32", lambda s: engine(x, y, vx, vy, s)))
    if "reference" in args.cases:
        cases.append(Case("reference", 1, "fp32", lambda s: reference(x, y, vx, vy, s)))
    if "fused" in args.cases:
        for p in args.precisions:
            for k in args.trials:
                cases.append(Case("fused", k, p, lambda s, k=k, p=p: fused(x, y, vx, vy, s, k, p)))
    for case in cases:
        size(case, args.seconds, max_steps)

    # Rounds over the cases in turn (bf16 cases once: on most CPUs they are slow), so that a
    # burst of load from other processes spoils one run of a case rather than the case.
    budget = 1.0 if args.quick else 3.0
    peak = {"fp32": 0.0, "bf16": 0.0}
    for r in range(args.rounds):
        peak["fp32"] = max(peak["fp32"], mm_peak(torch.float32, budget))
        order = cases[r % len(cases) :] + cases[: r % len(cases)] if cases else []
        for case in order:
            if case.precision == "fp32" or r == 0:
                time_once(case, args.seconds, max_steps)
    peak["bf16"] = mm_peak(torch.bfloat16, budget)

    print(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "malloc_thresholds_raised": tuned_malloc,
                "rows": len(x),
                "rounds": args.rounds,
                "peak_gflops": {k: round(v, 1) for k, v in peak.items()},
                "loadavg": os.getloadavg(),
            }
        ),
        flush=True,
    )
    base = next((c.best["rate"] for c in cases if c.name == "published"), None)
    for case in cases:
        best = case.best
        gflops = best["rate"] * FLOPS_PER_SAMPLE / 1e9
        line = {
            "case": case.name,
            "trials": case.trials,
            "precision": case.precision,
            "trial_samples_per_s": round(best["rate"]),
            "ratio_vs_published": round(best["rate"] / base, 2) if base else None,
            "gflops": round(gflops, 1),
            "peak_share": round(gflops / peak["fp32"], 3),
            "steps": best["steps"],
            "seconds": round(best["seconds"], 2),
            "cpu_per_wall": round(best["cpu_per_wall"], 2),
            "loadavg": best["loadavg"],
            "all_rates": [round(r) for r in case.rates],
        }
        if case.precision == "bf16":
            line["bf16_peak_share"] = round(gflops / peak["bf16"], 3)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
