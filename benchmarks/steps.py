"""Step time of the fused engine for the seed plan's stage groups, optionally against a git revision.

A step is one optimizer step of every member of a group on one batch of 128 rows (forward,
backward, optimizer), as in a stage of the seed plan (256x256 MLP, lr 1e-4):

* ``init``: 3 members differing in initialisation (ReLU);
* ``activation``: ReLU, LeakyReLU, GELU;
* ``normalization``: GELU with none, BatchNorm, LayerNorm;
* ``optimizer``: GELU + LayerNorm with SGD, Adam, RMSprop, AdamW;
* ``weight_decay``: 5 weight decays x 5 folds (25 members, each fold its own rows).

Timing on a shared machine moves by a third between runs, so ``--against REV`` loads
``tuner/train/fused.py`` of that git revision next to the working tree's and times both in the same
process, in interleaved blocks, and reports medians: differences of a few percent then show.
Only ``tuner/train/fused.py`` comes from ``REV``; what it imports is the working tree's package.

    python benchmarks/steps.py                          # the working tree only
    python benchmarks/steps.py --against HEAD~1         # and the previous commit, interleaved
    python benchmarks/steps.py --groups normalization --blocks 10
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tuner.config import TrainConfig  # noqa: E402
from tuner.train import fused  # noqa: E402
from tuner.train.runtime import keep_freed_memory  # noqa: E402

BATCH = 128
BASE = {"hidden": (256, 256), "lr": 1e-4, "weight_decay": 1e-5, "batch_size": BATCH}
GROUPS: dict[str, list[dict]] = {
    "init": [{"init": i} for i in ("default", "xavier_uniform", "kaiming_normal")],
    "activation": [{"activation": a} for a in ("relu", "leaky_relu", "gelu")],
    "normalization": [{"activation": "gelu", "norm": n} for n in ("none", "batch", "layer")],
    "optimizer": [
        {"activation": "gelu", "norm": "layer", "optimizer": o}
        for o in ("sgd", "adam", "rmsprop", "adamw")
    ],
    "weight_decay": [{"weight_decay": w} for w in (0.0, 1e-5, 1e-4, 1e-3, 1e-2) for _ in range(5)],
}


def fused_at(rev: str) -> ModuleType:
    """``tuner/train/fused.py`` as it was at git revision ``rev``, imported as its own module."""
    source = subprocess.run(
        ["git", "show", f"{rev}:tuner/train/fused.py"], cwd=REPO, check=True, capture_output=True
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="tuner-steps-")) / "fused_at_rev.py"
    path.write_bytes(source)
    name = "tuner_fused_at_rev"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def batches(k: int, shared: bool, n: int, gen: torch.Generator):
    """``n`` batches: one [B, F] for all members, or per-member rows [K, B, F] (CV folds)."""
    shape = (BATCH, 90) if shared else (k, BATCH, 90)
    labels = (BATCH,) if shared else (k, BATCH)
    return [
        (torch.randn(shape, generator=gen), torch.randint(0, 10, labels, generator=gen))
        for _ in range(n)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", default=None, help="a git revision to time alongside")
    ap.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    ap.add_argument("--blocks", type=int, default=6, help="interleaved timed blocks per version")
    ap.add_argument("--steps", type=int, default=240, help="member-steps per block (/ members)")
    args = ap.parse_args()
    keep_freed_memory()
    versions = {"worktree": fused}
    if args.against:
        versions[args.against] = fused_at(args.against)
    gen = torch.Generator().manual_seed(0)
    for name in args.groups:
        cfgs = [TrainConfig(**{**BASE, **d}) for d in GROUPS[name]]
        k = len(cfgs)
        data = batches(k, name != "weight_decay", max(10, args.steps // k), gen)
        groups = {v: m.FusedGroup(cfgs, 90, 10, seeds=list(range(k))) for v, m in versions.items()}
        times: dict[str, list[float]] = {v: [] for v in versions}
        with torch.inference_mode():
            for group in groups.values():
                for xb, yb in data[:5]:
                    group.train_step(xb, yb)
            for _ in range(args.blocks):
                for v, group in groups.items():
                    t0 = time.perf_counter()
                    for xb, yb in data:
                        group.train_step(xb, yb)
                    times[v].append((time.perf_counter() - t0) / len(data) * 1e3)
        line = {"group": name, "members": k}
        for v, ts in times.items():
            line[f"ms_per_step[{v}]"] = round(statistics.median(ts), 3)
        if args.against:
            ratio = statistics.median(times["worktree"]) / statistics.median(times[args.against])
            line["worktree_over_against"] = round(ratio, 3)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
