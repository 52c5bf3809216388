"""Plain-text tables for the terminal: one per stage after it runs, and ``status``.

:func:`plan_status` is what ``status`` reports of a plan (each stage's read model and the final
job's metrics), as a table (:func:`status_table`) or strict JSON (:func:`status_json`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tuner.data.baselines import comparison
from tuner.report import tables
from tuner.tune.decide import decision_text
from tuner.tune.state import StageState

if TYPE_CHECKING:
    from tuner.tune.stages import Session


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def plan_status(session: Session) -> dict[str, Any]:
    """The plan's status from the storage: its name, the storage (passwords hidden), each
    stage's read model and the final job's summary (``None`` until it is done)."""
    from tuner.tune.final import final_summary
    from tuner.tune.stages import plan_states
    from tuner.tune.storage import redact

    return {
        "plan": session.plan.name,
        "storage": redact(session.settings.storage_url),
        "stages": [s.to_dict() for s in plan_states(session)],
        "final": final_summary(session),
    }


def status_json(status: dict[str, Any]) -> str:
    """``status`` as strict JSON: a non-finite value (a diverged run's loss) is ``null``."""
    return json.dumps(_finite(status), indent=2, allow_nan=False)


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN and infinity replaced by ``None``: strict JSON (``null``)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def stage_table(state: StageState) -> str:
    """The points of a stage by value (the point carried forward marked ``*``), the decision
    with its paired difference, and what is carried forward."""
    rows = sorted(state.rows, key=lambda r: r["value"], reverse=True)
    winner = state.winner
    params = sorted({k for r in rows for k in r["params"]})
    has_std = any((r.get("n") or 1) > 1 or r.get("fold_values") for r in rows)
    header = ["best", *params, state.metric]
    header += ["std", "95% CI", "n"] if has_std else []
    header += ["seconds", "trial"]
    reused = any(r.get("reused_from") for r in rows)
    header += ["reused from"] if reused else []
    cells = []
    for r in rows:
        row = ["*" if r is winner else "", *(_fmt(r["params"].get(p)) for p in params)]
        row.append(f"{r['value']:.4f}")
        if has_std:
            ci = r.get("ci95")
            std = r.get("std")
            row += [
                f"{std:.4f}" if std is not None else "",
                f"{ci[0]:.4f}..{ci[1]:.4f}" if ci else "",
                str(r.get("n") or ""),
            ]
        row += [f"{r.get('seconds') or 0.0:.1f}", str(r["trial"])]
        row += [r.get("reused_from") or ""] if reused else []
        cells.append(row)
    fixed = ", ".join(f"{k}={_fmt(v)}" for k, v in (state.fixed_params or {}).items()) or "none"
    title = (
        f"stage {state.name} (study {state.study}, {state.n_complete}/{state.n_total} "
        f"complete; fixed: {fixed})"
    )
    out = [title, tables.text(header, cells)]
    if state.decision is not None:
        out.append(f"decision: {decision_text(state.decision)}")
        out.append(f"carried forward: {_fmt(state.best_params)}")
    if state.n_pruned:
        out.append(f"pruned: {state.n_pruned} point(s) stopped early")
    if state.reused:
        out.append(
            f"reused: {len(state.reused)} point(s) trained exactly as in an earlier stage's trial "
            "(not trained again)"
        )
    return "\n".join(out)


def baseline_lines(accuracy: float, found: dict[str, Any]) -> str:
    """The tuned model against the baselines on the same test rows, one line each."""
    fit = found.get("fit_rows")
    note = (
        f" (fitted on {fit} of {found['train_rows']} training rows)"
        if fit is not None and fit != found.get("train_rows")
        else ""
    )
    lines = [f"baselines on the same test rows{note}:"]
    lines += [
        f"  {r['model']:<20} {r['accuracy']:.4f}  (tuned MLP {r['points']:+.2f} points)"
        for r in comparison(accuracy, found)
    ]
    return "\n".join(lines)


def status_table(status: dict[str, Any]) -> str:
    """``status`` as a table: one row per stage in plan order, then the final result."""
    rows = []
    for s in status["stages"]:
        best = ", ".join(f"{k}={_fmt(v)}" for k, v in (s["best_params"] or {}).items())
        value = f"{s['best_value']:.4f}" if s["best_value"] is not None else ""
        rows.append(
            [
                s["name"],
                s["state"],
                f"{s['n_complete']}/{s['n_total']}",
                best,
                value,
                s["metric"] if value else "",
                s["study"] or "",
            ]
        )
    text = f"plan {status['plan']} on {status['storage']}\n"
    text += tables.text(["stage", "state", "done", "best", "value", "metric", "study"], rows)
    final = status["final"]
    if final:
        text += (
            f"\nfinal: test accuracy {final['test_accuracy']:.4f}, test loss {final['test_loss']:.4f}, "
            f"n_test {final['n_test']}"
        )
        if "shipped_epoch" in final:
            text += (
                f"\nshipped weights: epoch {final['shipped_epoch']} of {final['epochs_trained']} "
                f"trained, validation accuracy {final['val_accuracy']:.4f}"
            )
        if final.get("config"):
            text += "\n" + configuration_line(final["config"], final.get("fixed_params") or {})
        if "model" in final:
            text += f"\nmodel: {final['model']}"
        if final.get("reused_from"):
            text += f" (the kept weights of trial {final['reused_from']}: not trained again)"
        if final.get("baselines"):
            text += "\n" + baseline_lines(final["test_accuracy"], final["baselines"])
    else:
        text += "\nfinal: not run"
    return text


def configuration_line(config: Mapping[str, Any], tuned: Mapping[str, Any]) -> str:
    """``chosen: ensemble=8 (tuned); from the plan: hidden=[256, 256], ...``: the final
    model's whole configuration, what the stages chose first."""
    chosen = ", ".join(f"{k}={_fmt(config.get(k, v))}" for k, v in tuned.items()) or "nothing"
    rest = ", ".join(f"{k}={_fmt(v)}" for k, v in config.items() if k not in tuned)
    return f"chosen: {chosen} (tuned); from the plan: {rest}"


# -- the final model and the time budget, in words ----------------------------------------
def out_of_time(state: StageState) -> str:
    """Which of a stage's points a time budget stopped at the stage's deadline, in words
    ('' when none was)."""
    cut = [t for t in state.trials if t.user_attrs.get("out_of_time")]
    if not cut:
        return ""
    epochs = sorted({int(t.user_attrs.get("epochs_trained", 0)) for t in cut})
    return (
        f"{len(cut)} of {len(state.trials)} points stopped at the stage's deadline, after "
        f"{', '.join(map(str, epochs))} epochs (scored on the epochs they trained)"
    )


def shipped_lines(metrics: Mapping[str, Any]) -> list[str]:
    """Which epoch's weights the model holds, and why its validation and test accuracy
    differ (nothing for a metrics.json written before it said)."""
    epoch = metrics.get("shipped_epoch")
    if epoch is None:
        return []
    which = (
        "the last epoch trained"
        if epoch == metrics.get("epochs_trained")
        else "the epoch of lowest validation loss"
    )
    return [
        f"**Shipped weights:** epoch {epoch} ({which}), validation accuracy "
        f"{metrics['val_accuracy']:.4f}, test accuracy {metrics['test_accuracy']:.4f}. The "
        "validation rows chose the configuration and the epoch, so their accuracy is an "
        "optimistic estimate; the test rows, scored once, are the honest one"
    ]


def stopped_why(metrics: Mapping[str, Any]) -> str:
    """Why the final run ended before its planned epochs, in words ('' when it did not)."""
    if metrics.get("out_of_time"):
        return " (stopped by the time budget)"
    return " (stopped early on validation loss)" if metrics.get("stopped_early") else ""
