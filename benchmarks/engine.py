"""Training throughput: the published-style loop, tuner.engine.train, and fused groups.

Prints one JSON line per case (plus a first line describing the machine and the measured
matrix-product peaks)::

    python benchmarks/engine.py                 # ~100k MSD-shaped rows, every case
    python benchmarks/engine.py --quick         # smoke run
    python benchmarks/engine.py --cases fused --trials 25 --precisions fp32

Cases (all a 256x256 GELU MLP, batch 128, Adam):

* ``published``: one trial through ``torch.utils.data.DataLoader(TensorDataset, batch_size=128,
  shuffle=True)``, ``zero_grad / backward / step`` and ``loss.item()`` per step -- how the
  published study trained every trial;
* ``engine``: one trial through :func:`tuner.engine.train` (index-sliced in-memory batches);
* ``fused``: :func:`tuner.fused.train_group` on groups of ``--trials`` members (1, 3, 12, 25),
  each with its own learning rate (the worst case for the optimizer: one fused call per
  member); ``--precisions fp32 bf16``.

``trial_samples_per_s`` counts training samples summed over the group's members per second of
wall time (set-up and the per-epoch evaluation of 1,024 validation rows included for
``engine`` and ``fused``). ``gflops`` counts 6 x the parameter-matmul FLOPs per sample
(forward 2 x (90x256 + 256x256 + 256x10), x3 for forward and backward); ``peak_share`` divides
it by the fp32 (or bf16) ``torch.mm`` rate measured at the start of the same run. The machine's
load average is printed with every line: compare figures only from a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tuner import synthetic  # noqa: E402
from tuner.engine import as_tensors, train  # noqa: E402
from tuner.fused import train_group  # noqa: E402
from tuner.model import build_model, make_optimizer  # noqa: E402
from tuner.plan import TrainConfig  # noqa: E402

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


def mm_peak(dtype: torch.dtype, budget_s: float) -> tuple[float, int]:
    """Best ``torch.mm`` rate in GFLOP/s over square sizes up to 2048 within ``budget_s``."""
    best, size = 0.0, 0
    for n in (512, 1024, 2048):
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        t0 = time.perf_counter()
        a @ b  # warm-up; also tells whether the next size fits the budget
        first = time.perf_counter() - t0
        if first * 8 > budget_s and n > 512:
            break
        reps = max(3, min(20, int(budget_s / 3 / max(first, 1e-6))))
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        rate = 2 * n**3 / min(times) / 1e9
        if rate > best:
            best, size = rate, n
        if first * 8 * 8 > budget_s:  # the next size would be 8x slower
            break
    return best, size


def cfg_for(k: int) -> TrainConfig:
    lr = float(10 ** (-4 + 2 * (k % 25) / 24))  # 1e-4 .. 1e-2, one per member
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
    n = steps * BATCH
    t0 = time.perf_counter()
    train(cfg_for(0), (x[:n], y[:n]), (vx, vy), epochs=1, seed=0, n_classes=N_CLASSES)
    return time.perf_counter() - t0


def fused(x, y, vx, vy, steps: int, trials: int, precision: str) -> float:
    n = steps * BATCH
    cfgs = [cfg_for(k) for k in range(trials)]
    t0 = time.perf_counter()
    train_group(
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
    return time.perf_counter() - t0


def measure(run, trials: int, seconds: float, max_steps: int) -> tuple[float, int, float, float]:
    """Warm up, then time runs of as many steps as take about ``seconds`` (at most
    ``max_steps`` a run, one epoch over the rows; runs repeat until ``seconds`` have passed).

    Each run includes its set-up (models, optimizer, loader) and, for ``engine`` and ``fused``,
    one evaluation; the per-step time that sizes the runs is estimated without them (the
    difference of a 2- and a 6-step run). Returns (trial samples per second, steps, wall
    seconds, process CPU seconds); CPU seconds near ``threads x wall`` mean the process had
    its cores to itself (OpenMP spin-waits count as CPU time)."""
    short = run(2)
    per_step = max((run(6) - short) / 4, 1e-6)
    steps = int(min(max_steps, max(8, seconds / per_step)))
    done, wall, cpu = 0, 0.0, 0.0
    while wall < 0.8 * seconds or done == 0:
        c0 = time.process_time()
        wall += run(steps)
        cpu += time.process_time() - c0
        done += steps
    return trials * done * BATCH / wall, done, wall, cpu


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=8.0, help="target time per case")
    ap.add_argument("--quick", action="store_true", help="smoke run: small data, ~1 s per case")
    ap.add_argument("--cases", nargs="+", default=["published", "engine", "fused"])
    ap.add_argument("--trials", nargs="+", type=int, default=[1, 3, 12, 25])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.seconds = min(args.rows, 8_000), 1.0
    if args.threads:
        torch.set_num_threads(args.threads)

    x, y, vx, vy = load(args.rows)
    max_steps = len(x) // BATCH
    budget = 2.0 if args.quick else 6.0
    peak = {"fp32": mm_peak(torch.float32, budget), "bf16": mm_peak(torch.bfloat16, budget)}
    print(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "rows": len(x),
                "peak_gflops": {k: round(v[0], 1) for k, v in peak.items()},
                "peak_mm_size": {k: v[1] for k, v in peak.items()},
                "loadavg": os.getloadavg(),
            }
        ),
        flush=True,
    )

    base = None

    def emit(case: str, trials: int, precision: str, result) -> None:
        rate, steps, wall, cpu = result
        gflops = rate * FLOPS_PER_SAMPLE / 1e9
        line = {
            "case": case,
            "trials": trials,
            "precision": precision,
            "trial_samples_per_s": round(rate),
            "ratio_vs_published": round(rate / base, 2) if base else None,
            "gflops": round(gflops, 1),
            "peak_share": round(gflops / peak[precision][0], 3),
            "steps": steps,
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "loadavg": os.getloadavg(),
        }
        print(json.dumps(line), flush=True)

    if "published" in args.cases:
        result = measure(lambda s: published(x, y, s), 1, args.seconds, max_steps)
        base = result[0]
        emit("published", 1, "fp32", result)
    if "engine" in args.cases:
        result = measure(lambda s: engine(x, y, vx, vy, s), 1, args.seconds, max_steps)
        emit("engine", 1, "fp32", result)
    if "fused" in args.cases:
        for precision in args.precisions:
            for k in args.trials:
                result = measure(
                    lambda s, k=k, p=precision: fused(x, y, vx, vy, s, k, p),
                    k,
                    args.seconds,
                    max_steps,
                )
                emit("fused", k, precision, result)


if __name__ == "__main__":
    main()
