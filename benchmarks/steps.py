"""Step time of the fused stack for the seed plan's stage groups, optionally against a git revision.

A step is one optimizer step of every member of a group on one batch of 128 rows (forward,
backward, optimizer), as in a stage of the seed plan (256x256 MLP, lr 1e-4):

* ``init``: 3 members differing in initialisation (ReLU);
* ``activation``: ReLU, LeakyReLU, GELU;
* ``normalization``: GELU with none, BatchNorm, LayerNorm;
* ``optimizer``: GELU + LayerNorm with SGD, Adam, RMSprop, AdamW;
* ``weight_decay``: 5 weight decays x 5 folds (25 members, each fold its own rows).

Timing on a shared machine moves by a third between runs, so ``--against REV`` loads the
fused stack of that git revision next to the working tree's and times both in the same
process, in interleaved blocks, and reports medians: differences of a few percent then show.
``REV``'s whole ``tuner/`` package is extracted (``git archive``) into a temporary directory
under the name ``tuner_rev`` (its imports of ``tuner`` rewritten), so its stack runs with its
own model, options and ``TrainConfig``; every layout works (``FusedGroup`` in
``tuner_rev.train.stack``, in ``tuner_rev.train.fused`` before the engine was split, in
``tuner_rev.fused`` before fb77cc7).

    python benchmarks/steps.py                          # the working tree only
    python benchmarks/steps.py --against HEAD~1         # and the previous commit, interleaved
    python benchmarks/steps.py --groups normalization --blocks 10
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import json
import re
import shutil
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

from tuner.train import stack  # noqa: E402
from tuner.train.config import TrainConfig  # noqa: E402
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


REV_PACKAGE = "tuner_rev"
# ``from tuner.x import``, ``from tuner import``, ``import tuner.x``, ``import tuner``, at any indent
_TUNER_IMPORT = re.compile(r"^(\s*(?:from|import))\s+tuner\b", re.MULTILINE)


def package_at(rev: str) -> tuple[ModuleType, type]:
    """The module with ``FusedGroup`` and the ``TrainConfig`` of git revision ``rev``: its
    whole ``tuner/`` package extracted into a temporary directory as ``tuner_rev`` and
    imported from there."""
    root = Path(tempfile.mkdtemp(prefix="tuner-steps-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    archive = subprocess.run(
        ["git", "archive", rev, "tuner"], cwd=REPO, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    package = root / REV_PACKAGE
    (root / "tuner").rename(package)
    for path in package.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        path.write_text(_TUNER_IMPORT.sub(rf"\1 {REV_PACKAGE}", text), encoding="utf-8")
    sys.path.insert(0, str(root))
    layout = next(
        name
        for name in ("train.stack", "train.fused", "fused")
        if (package / name.replace(".", "/")).with_suffix(".py").is_file()
    )
    stack_rev = importlib.import_module(f"{REV_PACKAGE}.{layout}")
    plan_rev = importlib.import_module(f"{REV_PACKAGE}.plan")
    return stack_rev, plan_rev.TrainConfig


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
    versions: dict[str, tuple[ModuleType, type]] = {"worktree": (stack, TrainConfig)}
    if args.against:
        versions[args.against] = package_at(args.against)
    gen = torch.Generator().manual_seed(0)
    for name in args.groups:
        k = len(GROUPS[name])
        data = batches(k, name != "weight_decay", max(10, args.steps // k), gen)
        groups = {
            v: module.FusedGroup(
                [config(**{**BASE, **d}) for d in GROUPS[name]], 90, 10, seeds=list(range(k))
            )
            for v, (module, config) in versions.items()
        }
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
