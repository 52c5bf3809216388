"""Seconds per epoch of the tabular plan's two candidates on a table-shaped problem.

A synthetic table of ``--rows`` training rows with ``--numeric`` numeric columns and
``--binary`` 0/1 columns (one-hots, missing-value indicators), 5 classes; the tabular plan's
defaults (2x256 ReLU, AdamW, dropout 0.1, PLR with 16 frequencies and dimension 16, ``batch_size
= "auto"``) as one MLP (``ensemble = 1``) and as the 8-member ensemble (``ensemble = 8``),
each trained for ``--epochs`` epochs through :func:`tuner.train.loop.train_one` with 4,000
validation rows evaluated every epoch. ``--all-numeric`` adds a tiny noise to the 0/1 columns,
so that the periodic embedding embeds every column (how it worked before it passed 0/1 columns
through): the difference is what passing them through saves.

    python benchmarks/tabular_epoch.py                    # 30,000 rows, 20 numeric + 80 binary
    python benchmarks/tabular_epoch.py --all-numeric
    python benchmarks/tabular_epoch.py --rows 42000 --numeric 7 --binary 17   # diamonds-shaped

Prints one line per model: rows, columns embedded, seconds per epoch (the mean over the epochs).
Compare figures only from one run on a quiet machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tuner.train.config import TrainConfig  # noqa: E402
from tuner.train.loop import train_one  # noqa: E402
from tuner.train.options.embeddings import numeric_columns  # noqa: E402

TABULAR = {
    "optimizer": "adamw", "lr": 2e-3, "weight_decay": 3e-4, "dropout": 0.1,
    "batch_size": "auto", "embedding": "plr", "embedding_dim": 16, "frequencies": 16,
    "frequency_scale": 0.1,
}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=30_000)
    ap.add_argument("--numeric", type=int, default=20)
    ap.add_argument("--binary", type=int, default=80)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--all-numeric", action="store_true", help="embed the 0/1 columns too")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    n = args.rows + 4_000
    x = torch.cat(
        [
            torch.randn(n, args.numeric, generator=g),
            (torch.rand(n, args.binary, generator=g) < 0.3).float(),
        ],
        dim=1,
    )
    y = (x @ torch.randn(x.shape[1], 5, generator=g) + torch.randn(n, 5, generator=g)).argmax(1)
    if args.all_numeric:
        x[:, args.numeric :] += 1e-3 * torch.rand(n, args.binary, generator=g)
    train_xy, val_xy = (x[4_000:], y[4_000:]), (x[:4_000], y[:4_000])
    embedded = len(numeric_columns(train_xy[0]))
    # The first torch.optim optimizer of a process imports torch._dynamo (about 1.1 s, once);
    # the ensemble's route builds one. Pay it here, outside the timed epochs.
    torch.optim.AdamW(torch.nn.Linear(1, 1).parameters())
    for k in (1, 8):
        cfg = TrainConfig(**TABULAR, ensemble=k)
        t0 = time.perf_counter()
        train_one(cfg, train_xy, val_xy, epochs=args.epochs, seed=0, n_classes=5)
        per_epoch = (time.perf_counter() - t0) / args.epochs
        print(
            f"ensemble={k}: {args.rows} rows, {x.shape[1]} columns ({embedded} embedded), "
            f"{per_epoch:.2f} s per epoch",
            flush=True,
        )


if __name__ == "__main__":
    main()
