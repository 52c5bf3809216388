"""Plots of a plan's data, stages and final model: small PNGs drawn headless with matplotlib.

Every function takes plain data (manifests, trial user attrs, ``metrics.json``) and a path,
draws one figure with the Agg backend and writes it as PNG. They run per trial while stages
train (the learning-curve artifact of each trial), so they stay cheap: small figures, no
``tight_layout``, matplotlib imported once and lazily.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.config import point_label

if TYPE_CHECKING:
    from tuner.tune.kinds.base import Figure

DPI = 90
WINNER = "#d62728"
# matplotlib's default cycle without its red, which marks winners
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


def _figure(width: float = 6.0, height: float = 3.4, ncols: int = 1):
    """A figure (not registered with pyplot: no global state, thread-safe) and its axes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _save(
    fig, path: Path, *, left=0.1, right=0.97, bottom=0.16, top=0.88, wspace=0.3, fit=False
) -> Path:
    """Lay out and write ``fig`` to ``path`` atomically (a dashboard may be reading it).
    ``fit``: margins that fit the tick labels, whatever their length (class names)."""
    from tuner.paths import atomic_write

    if fit:
        if fig.get_layout_engine() is None:  # a constrained layout lays out when drawn
            fig.tight_layout(pad=0.4)
    else:
        fig.subplots_adjust(left=left, right=right, bottom=bottom, top=top, wspace=wspace)
    path = Path(path)

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


def _short(label: str, width: int = 16) -> str:
    """A class name for a tick: wrapped on word boundaries at ``width`` characters, at most two
    lines (then cut with an ellipsis)."""
    import textwrap

    lines = textwrap.wrap(str(label), width, break_long_words=True) or [""]
    if len(lines) > 2:
        lines = [lines[0], lines[1][: width - 1] + "\u2026"]
    return "\n".join(lines)


def _epoch_axis(ax, epochs: Sequence[int]) -> None:
    """Integer epochs on the x axis, with room around a single epoch."""
    from matplotlib.ticker import FixedLocator, MaxNLocator

    last = max(epochs, default=1)
    ax.set_xlim(0.7, last + 0.3)
    if last <= 15:
        ax.xaxis.set_major_locator(FixedLocator(list(range(1, last + 1))))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)


# -- data ---------------------------------------------------------------------------------------
def class_distribution(manifest: Mapping[str, Any], path: Path) -> Path:
    """Rows per class in the prepared data, stacked by split, with each class's share."""
    labels = list(manifest.get("label_names") or [f"{1920 + 10 * i}s" for i in range(10)])
    counts = manifest["class_counts"]
    fig, (ax,) = _figure(6.4, 3.4)
    bottom = [0] * len(labels)
    colors = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}
    for split in ("train", "val", "test"):
        values = counts.get(split)
        if not values:
            continue
        ax.bar(range(len(labels)), values, bottom=bottom, label=split, color=colors[split],
               width=0.75)  # fmt: skip
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    total = sum(bottom) or 1
    for i, n in enumerate(bottom):
        ax.annotate(
            f"{100 * n / total:.1f}%",
            (i, n),
            ha="center",
            va="bottom",
            fontsize=7,
            xytext=(0, 1),
            textcoords="offset points",
        )
    ax.set_ylim(0, max(bottom) * 1.12 if max(bottom) else 1)
    ax.set_ylabel("rows")
    word = (manifest.get("target") or "decade").capitalize()
    ax.set_title(f"{word} distribution ({total:,} rows, {manifest.get('split', '?')} split)")
    rotate = len(labels) > 6 or max((len(str(lab)) for lab in labels), default=0) > 10
    ax.set_xticks(
        range(len(labels)),
        [_short(lab) for lab in labels],
        rotation=35 if rotate else 0,
        ha="right" if rotate else "center",
        fontsize=8,
    )
    ax.legend(fontsize=8, frameon=False)
    return _save(fig, path, fit=True)


# -- stages -------------------------------------------------------------------------------------
def loss_vs_lr(curve: Mapping[str, Any], path: Path, *, skip: tuple[int, int] = (10, 5)) -> Path:
    """Loss against learning rate (log scale), the steepest-descent suggestion and the chosen
    (snapped) learning rate marked."""
    lrs, losses = list(curve["lrs"]), list(curve["losses"])
    fig, (ax,) = _figure(6.0, 3.4)
    ax.plot(lrs, losses, color="#1f77b4", lw=1.3, label="smoothed loss")
    lo, hi = skip[0], max(len(lrs) - skip[1], skip[0] + 1)
    finite = [v for v in losses[lo:hi] if math.isfinite(v)] or [1.0]
    ax.set_ylim(min(finite) - 0.05 * abs(min(finite)), max(finite) * 1.15)
    ax.set_xscale("log")
    s, c = curve.get("suggestion"), curve.get("chosen")
    if s:
        ax.axvline(s, color="#ff7f0e", ls="--", lw=1.2, label=f"steepest descent {s:.2g}")
        i = min(range(len(lrs)), key=lambda j: abs(math.log(lrs[j] / s)))
        ax.plot([lrs[i]], [losses[i]], "o", color="#ff7f0e")
    if c:
        ax.axvline(c, color=WINNER, lw=1.4, label=f"chosen {c:.2g}")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test")
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    return _save(fig, path, left=0.1, bottom=0.15)


KIND_PLOTS: dict[str, Callable[[Mapping[str, Any], Path], Path | None]] = {
    "loss_vs_lr": loss_vs_lr,
}
"""The plots a stage kind may ask for by name (:class:`tuner.tune.kinds.base.Figure`)."""


def draw_figure(figure: Figure, path: Path) -> Path | None:
    """Draw a kind's :class:`~tuner.tune.kinds.base.Figure` to ``path``."""
    try:
        plot = KIND_PLOTS[figure.plot]
    except KeyError:
        raise ValueError(
            f"no plot {figure.plot!r} for {figure.file}; known: {', '.join(KIND_PLOTS)}"
        ) from None
    return plot(figure.data, path)


def cv_errorbars(
    stage: str,
    points: Sequence[Mapping[str, Any]],
    path: Path,
    *,
    param: str | None = None,
) -> Path:
    """Mean validation accuracy over folds with +- one standard deviation, per grid point.

    ``points``: ``{"params", "value", "std", "fold_values"}`` in grid order; the best one is
    drawn in red. Individual fold values are shown as small dots.
    """
    fig, (ax,) = _figure(6.0, 3.4)
    labels = [point_label(p["params"]) for p in points]
    values = [p["value"] for p in points]
    stds = [p.get("std") or 0.0 for p in points]
    best = max(range(len(points)), key=lambda i: values[i]) if points else -1
    for i, p in enumerate(points):
        color = WINNER if i == best else "#1f77b4"
        ax.errorbar(i, values[i], yerr=stds[i], fmt="o", color=color, capsize=5, ms=6, lw=1.5)
        folds = p.get("fold_values") or []
        ax.plot([i + 0.12] * len(folds), folds, ".", color="0.55", ms=4)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.set_xlabel(param or "grid point")
    ax.set_ylabel("val accuracy, mean of folds")
    ax.set_title(f"{stage}: CV accuracy, mean +- std over folds (dots: folds)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path, left=0.15)


def stage_curves(
    stage: str,
    points: Sequence[Mapping[str, Any]],
    path: Path,
    *,
    param: str | None = None,
) -> Path:
    """Validation accuracy per epoch, one line per grid point; the winner drawn thicker in red.

    ``points``: ``{"params", "value", "history"}`` with ``history`` a per-epoch dict
    (``epoch``, ``val_acc``, ``train_loss``, ``val_loss``).
    """
    fig, (ax_acc, ax_loss) = _figure(8.0, 3.4, ncols=2)
    best = max(range(len(points)), key=lambda i: points[i]["value"]) if points else -1
    epochs: list[int] = []
    for i, p in enumerate(points):
        h = p["history"]
        epochs += h["epoch"]
        label = point_label(p["params"])
        color = PALETTE[i % len(PALETTE)]
        style = (
            {"lw": 2.4, "color": WINNER, "zorder": 3} if i == best else {"lw": 1.3, "color": color}
        )
        ax_acc.plot(h["epoch"], h["val_acc"], marker="o", ms=4, label=label, **style)
        ax_loss.plot(h["epoch"], h["val_loss"], marker="o", ms=4, **style)
    for ax, what in ((ax_acc, "validation accuracy"), (ax_loss, "validation loss")):
        _epoch_axis(ax, epochs)
        ax.set_ylabel(what)
    ax_acc.legend(fontsize=7, frameon=False, title=param, title_fontsize=7)
    fig.suptitle(f"{stage}: validation curves per grid point (winner in red)", fontsize=10)
    return _save(fig, path, left=0.1, wspace=0.32)


def trial_curve(title: str, history: Any, path: Path) -> Path:
    """One trial's learning curve: losses and validation accuracy per epoch. A CV trial's
    ``history`` is a list (one per fold): one line per fold."""
    runs = history if isinstance(history, list) else [history]
    fig, (ax_loss, ax_acc) = _figure(6.4, 2.8, ncols=2)
    epochs: list[int] = []
    for k, h in enumerate(runs):
        epochs += h["epoch"]
        color = PALETTE[k % len(PALETTE)]
        suffix = f" fold {k}" if len(runs) > 1 else ""
        kw = {"color": color, "ms": 4}
        ax_loss.plot(h["epoch"], h["train_loss"], marker="o", label=f"train{suffix}", **kw)
        ax_loss.plot(h["epoch"], h["val_loss"], marker="s", ls="--", label=f"val{suffix}", **kw)
        ax_acc.plot(h["epoch"], h["val_acc"], marker="o", label=f"val{suffix}", **kw)
    ax_loss.set_ylabel("loss (solid train, dashed val)")
    ax_acc.set_ylabel("validation accuracy")
    for ax in (ax_loss, ax_acc):
        _epoch_axis(ax, epochs)
    ax_loss.legend(fontsize=6, frameon=False)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path, left=0.1, bottom=0.17, top=0.86, wspace=0.4)


# -- final --------------------------------------------------------------------------------------
def final_history(
    history: Mapping[str, Any], path: Path, *, title: str = "final", shipped: int | None = None
) -> Path:
    """The final retrain: train and validation loss, validation accuracy, per epoch, and the
    epoch whose weights the model holds (``shipped``; else the lowest validation loss)."""
    fig, (ax_loss, ax_acc) = _figure(8.0, 3.4, ncols=2)
    epochs = history["epoch"]
    ax_loss.plot(epochs, history["train_loss"], marker="o", ms=3, label="train")
    ax_loss.plot(epochs, history["val_loss"], marker="s", ms=3, label="validation")
    ax_acc.plot(epochs, history["val_acc"], marker="o", ms=3, color="#2ca02c")
    if shipped is None:
        best = min(range(len(epochs)), key=lambda i: history["val_loss"][i])
        ax_loss.axvline(epochs[best], color="0.6", ls=":", lw=1, label="best val loss")
    else:
        for ax in (ax_loss, ax_acc):
            ax.axvline(shipped, color=WINNER, ls=":", lw=1, label=f"shipped (epoch {shipped})")
    ax_loss.set_ylabel("cross-entropy")
    ax_acc.set_ylabel("validation accuracy")
    for ax in (ax_loss, ax_acc):
        _epoch_axis(ax, epochs)
    ax_loss.legend(fontsize=8, frameon=False)
    stopped = " (stopped early)" if history.get("stopped_early") else ""
    fig.suptitle(f"{title}: training history, {len(epochs)} epochs{stopped}", fontsize=10)
    return _save(fig, path, left=0.1, wspace=0.32)


def confusion_matrix(metrics: Mapping[str, Any], path: Path) -> Path:
    """The test confusion matrix, each row normalized to the true class's count."""
    matrix = metrics["confusion_matrix"]
    labels = list(metrics["labels"])
    rows = [[v / (sum(r) or 1) for v in r] for r in matrix]
    fig, (ax,) = _figure(5.6, 5.0)
    fig.set_layout_engine("constrained")  # fits the tick labels and the colorbar
    im = ax.imshow(rows, cmap="Blues", vmin=0.0, vmax=1.0)
    n = len(labels)
    for i in range(n):
        for j in range(n):
            v = rows[i][j]
            if v >= 0.005:
                ax.text(
                    j,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if v > 0.55 else "black",
                )
    ax.set_xticks(range(n), [_short(lab) for lab in labels], rotation=45, ha="right", fontsize=7)
    support = [sum(r) for r in matrix]
    ax.set_yticks(
        range(n),
        [f"{_short(lab)} ({s})" for lab, s in zip(labels, support, strict=True)],
        fontsize=7,
    )
    word = metrics.get("class_name", "decade")
    ax.set_xlabel(f"predicted {word}")
    ax.set_ylabel(f"true {word} (test rows)")
    acc, epoch = metrics.get("test_accuracy"), metrics.get("shipped_epoch")
    ax.set_title(
        "Test confusion matrix (row-normalized)"
        + (f", accuracy {acc:.4f}" if acc else "")
        + (f"\nweights of epoch {epoch}" if epoch else ""),
        fontsize=9,
    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    return _save(fig, path, fit=True)
