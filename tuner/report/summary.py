"""Plain-text tables for the terminal: one per stage after it runs, and ``status``."""

from __future__ import annotations

from typing import Any

from optuna.trial import TrialState

from tuner.tune.decide import decision_text
from tuner.tune.stages import StageState


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def stage_table(state: StageState) -> str:
    """The grid points of a stage with their values (best mean marked ``*``), the decision
    with its paired difference, and what is carried forward."""
    complete = [t for t in state.trials if t.state == TrialState.COMPLETE]
    complete.sort(key=lambda t: t.value, reverse=True)
    params = sorted({k for t in complete for k in t.params})
    has_std = any(t.user_attrs.get("n", 1) > 1 or "fold_values" in t.user_attrs for t in complete)
    header = ["best", *params, "value"]
    header += ["std", "95% CI", "n"] if has_std else []
    header += ["seconds", "trial"]
    reused = any(t.user_attrs.get("reused_from") for t in complete)
    header += ["reused from"] if reused else []
    rows = []
    for i, t in enumerate(complete):
        row = ["*" if i == 0 else "", *(_fmt(t.params.get(p)) for p in params), f"{t.value:.4f}"]
        if has_std:
            ci = t.user_attrs.get("ci95")
            row += [
                f"{t.user_attrs.get('std', float('nan')):.4f}",
                f"{ci[0]:.4f}..{ci[1]:.4f}" if ci else "",
                str(t.user_attrs.get("n", "")),
            ]
        row += [f"{t.user_attrs.get('seconds', 0.0):.1f}", str(t.number)]
        row += [t.user_attrs.get("reused_from") or ""] if reused else []
        rows.append(row)
    fixed = ", ".join(f"{k}={_fmt(v)}" for k, v in (state.fixed_params or {}).items()) or "none"
    title = f"stage {state.name} (study {state.study}, {state.n_complete}/{state.n_total} complete; fixed: {fixed})"
    out = [title, _table(header, rows)]
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
                s["study"] or "",
            ]
        )
    text = f"plan {status['plan']} on {status['storage']}\n"
    text += _table(["stage", "state", "done", "best", "value", "study"], rows)
    final = status["final"]
    if final:
        text += (
            f"\nfinal: test accuracy {final['test_accuracy']:.4f}, test loss {final['test_loss']:.4f}, "
            f"n_test {final['n_test']}"
        )
        if "model" in final:
            text += f"\nmodel: {final['model']}"
        if final.get("reused_from"):
            text += f" (the kept weights of trial {final['reused_from']}: not trained again)"
    else:
        text += "\nfinal: not run"
    return text
