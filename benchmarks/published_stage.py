"""One component stage the way the published study ran it: a baseline for ``stage.py``.

Reads a UCI-format file with pandas, makes the stratified 70/15/15 split (scaler fit on
train), then trains one MLP per activation, one after the other, for 15 epochs through a
``DataLoader`` (batch 128, shuffled), ``zero_grad / backward / step`` with ``loss.item()`` per
step, and evaluates on validation after every epoch through a ``DataLoader`` too. Prints one
JSON line: the peak validation accuracy per activation and the wall time.

    python benchmarks/published_stage.py FILE [--epochs 15]

Deliberately independent of tuner: it is what tuner is measured against.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU}


def load(path: str, seed: int = 42):
    df = pd.read_csv(path, header=None)
    years = df.iloc[:, 0].to_numpy()
    x = df.iloc[:, 1:].to_numpy(dtype=np.float32)
    y = np.clip((years - 1920) // 10, 0, 9).astype(np.int64)
    x_tr, x_tmp, y_tr, y_tmp = train_test_split(x, y, test_size=0.30, stratify=y, random_state=seed)
    x_va, _, y_va, _ = train_test_split(
        x_tmp, y_tmp, test_size=0.50, stratify=y_tmp, random_state=seed
    )
    scaler = StandardScaler().fit(x_tr)
    x_tr, x_va = scaler.transform(x_tr), scaler.transform(x_va)
    as_t = lambda a, b: TensorDataset(torch.tensor(a, dtype=torch.float32), torch.tensor(b))  # noqa: E731
    return as_t(x_tr, y_tr), as_t(x_va, y_va)


def run_trial(activation: str, train_ds, val_ds, epochs: int) -> float:
    torch.manual_seed(42)
    model = nn.Sequential(
        nn.Linear(90, 256),
        ACTIVATIONS[activation](),
        nn.Linear(256, 256),
        ACTIVATIONS[activation](),
        nn.Linear(256, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    train_loader = DataLoader(train_ds, batch_size=128, shuffle=True)
    val_loader = DataLoader(val_ds, batch_size=128)
    peak = 0.0
    for _ in range(epochs):
        model.train()
        running = 0.0
        for xb, yb in train_loader:
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            running += loss.item()
        model.eval()
        correct, total = 0, 0
        with torch.no_grad():
            for xb, yb in val_loader:
                correct += (model(xb).argmax(1) == yb).sum().item()
                total += len(yb)
        peak = max(peak, correct / total)
    return peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file")
    ap.add_argument("--epochs", type=int, default=15)
    args = ap.parse_args()
    t0 = time.perf_counter()
    train_ds, val_ds = load(args.file)
    peaks = {a: run_trial(a, train_ds, val_ds, args.epochs) for a in ACTIVATIONS}
    print(json.dumps({"peak_val_acc": peaks, "seconds_in_process": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()
