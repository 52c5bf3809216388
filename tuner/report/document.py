"""The report of a plan: plots, ``report.md`` and a self-contained ``report.html``.

``write_report`` reads everything from the storage (stage studies, their trials and user attrs),
the prepared data's manifest and ``models/<plan>/``; it trains nothing and needs no data file.
It writes under ``WORKDIR/reports/<plan>/``:

- ``decades.png``: the decade distribution of the prepared data, stacked by split;
- what a stage's kind draws (an LR range test's loss curve with the suggestion and choice
  marked);
- ``<stage>_cv.png``: a CV stage's mean validation accuracy +- std over folds per grid point;
- ``<stage>_curves.png``: validation accuracy (and loss) per epoch, one line per grid point,
  for every other stage (the ``lr`` stage's verification runs included);
- ``final_history.png``: the final retrain's losses and validation accuracy per epoch;
- ``confusion_matrix.png``: the test confusion matrix, row-normalized;
- ``report.md`` (images linked beside it) and ``report.html`` (images embedded as data URIs,
  inline CSS: one file to mail or archive).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner import paths
from tuner.data.baselines import comparison
from tuner.data.target import class_word
from tuner.report import notes, plots, tables
from tuner.report import summary as status_words
from tuner.report.notes import (
    fmt_params,
    grid_text,
    kind_facts,
    kind_figures,
    points_table,
    scored_by,
    search_label,
    stage_plot,
    summary_plot_name,
    tuned_params,
    winner_text,
)
from tuner.tune.decide import decision_text
from tuner.tune.stages import FINAL, Session, StageState

logger = logging.getLogger(__name__)


def report_dir(session: Session) -> Path:
    return paths.report_dir(session.settings.workdir, session.plan.name)


# -- a tiny document model rendered to Markdown and to HTML ------------------------------------
@dataclass
class Doc:
    """Blocks of a report: headings, paragraphs, lists, tables, images."""

    blocks: list[tuple] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def ul(self, items: list[str]) -> None:
        self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", header, rows))

    def img(self, path: Path | None, alt: str) -> None:
        if path is not None and Path(path).is_file():
            self.blocks.append(("img", Path(path), alt))

    def to_markdown(self) -> str:
        out: list[str] = []
        for b in self.blocks:
            kind = b[0]
            if kind == "h":
                out.append(f"{'#' * b[1]} {b[2]}")
            elif kind == "p":
                out.append(b[1])
            elif kind == "ul":
                out.append("\n".join(f"- {item}" for item in b[1]))
            elif kind == "table":
                out.append(tables.markdown(b[1], b[2]))
            elif kind == "img":
                out.append(f"![{b[2]}]({b[1].name})")
        return "\n\n".join(out) + "\n"

    def to_html(self, title: str) -> str:
        body: list[str] = []
        for b in self.blocks:
            kind = b[0]
            if kind == "h":
                anchor = re.sub(r"[^a-z0-9]+", "-", b[2].lower()).strip("-")
                body.append(f'<h{b[1]} id="{anchor}">{_inline(b[2])}</h{b[1]}>')
            elif kind == "p":
                body.append(f"<p>{_inline(b[1])}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b[1]) + "</ul>")
            elif kind == "table":
                body.append(tables.to_html(b[1], b[2], _inline))
            elif kind == "img":
                data = base64.b64encode(b[1].read_bytes()).decode("ascii")
                body.append(
                    f'<figure><img alt="{html.escape(b[2])}" '
                    f'src="data:image/png;base64,{data}"><figcaption>{html.escape(b[2])}'
                    "</figcaption></figure>"
                )
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body)
            + "\n</body></html>\n"
        )


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #ddd;padding-bottom:.3em}h2{margin-top:2em;border-bottom:1px solid #eee}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}th{background:#f4f4f4}
tr:nth-child(even) td{background:#fafafa}code{background:#f2f2f2;padding:0 .2em;border-radius:3px}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.8em;color:#666}
"""


def _inline(text: str) -> str:
    """Escape ``text`` for HTML, then render Markdown's ``**bold**`` and ```code``` spans."""
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


# -- gathering ---------------------------------------------------------------------------------
def _manifest(session: Session, states: list[StageState]) -> dict[str, Any] | None:
    """The prepared data's manifest: from the session if it has the data, else from the cache
    directory named by the studies' ``data_key``."""
    prepared = session.loaded()
    if prepared is not None:
        return prepared.manifest.to_dict()
    for state in states:
        key = state.user_attrs.get("data_key")
        if key:
            path = session.settings.data_dir / "prepared" / key / "manifest.json"
            if path.is_file():
                return json.loads(path.read_text())
    return None


def _data_attrs(states: list[StageState]) -> dict[str, Any]:
    for state in states:
        if state.user_attrs.get("data"):
            return state.user_attrs["data"]
    return {}


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _secs(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


# -- the report --------------------------------------------------------------------------------
@dataclass
class ReportPaths:
    markdown: Path
    html: Path
    plots: dict[str, Path]


def write_report(session: Session, out_dir: Path | None = None) -> ReportPaths:
    """Draw the plots and write ``report.md`` and ``report.html`` for the session's plan."""
    out = Path(out_dir) if out_dir is not None else report_dir(session)
    out.mkdir(parents=True, exist_ok=True)
    plan = session.plan
    paths.record_plan(out, plan, "the report")  # warns before an edited plan overwrites
    states = [session.stage_state(s.name) for s in plan.stages]
    final = session.stage_state(FINAL)
    manifest = _manifest(session, [*states, final])
    model_dir = paths.model_dir(session.settings.workdir, plan.name)
    metrics = _read_json(model_dir / "metrics.json") if final.state == "done" else None
    history = _read_json(model_dir / "history.json") if final.state == "done" else None
    not_ours = None  # the model dir holds another final study's model (an edited plan's)
    if metrics is not None and metrics.get("study", final.study) != final.study:
        not_ours = (
            f"The final study `{final.study}` is done, but `{model_dir}` now holds the model of "
            f"study `{metrics.get('study')}` (a plan edited under the same name wrote it): run "
            "`final --force` to write this plan's model again."
        )
        logger.warning(not_ours.replace("`", ""))
        metrics = history = None
    figures: dict[str, Path] = {}

    def draw(name: str, fn, *args, **kwargs) -> Path | None:
        try:
            path = fn(*args, **kwargs)
        except Exception:
            logger.warning("could not draw %s", name, exc_info=True)
            return None
        if path is not None:
            figures[name] = path
        return path

    doc = Doc()
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    doc.h(1, f"tuner report: plan `{plan.name}`")
    from tuner.tune.storage import redact

    doc.p(
        f"{plan.description or ''} Written {now} from the storage "
        f"`{redact(session.settings.storage_url)}`.".strip()
    )
    summary = [
        [
            s.name,
            s.state,
            f"{s.n_complete}/{s.n_total}",
            fmt_params(s.best_params) if s.best_params else "",
            f"{s.best_value:.4f}" if s.best_value is not None else "",
            s.metric if s.best_value is not None else "",
            s.study or "",
        ]
        for s in states
    ]
    if metrics:
        summary.append(
            [
                "final",
                final.state,
                "1/1",
                "",
                f"{metrics['test_accuracy']:.4f}",
                "test accuracy"
                + (f", epoch {metrics['shipped_epoch']}" if "shipped_epoch" in metrics else ""),
                final.study or "",
            ]
        )
    else:
        summary.append(["final", final.state, "", "", "", "", final.study or ""])
    doc.table(["stage", "state", "done", "winner", "value", "metric", "study"], summary)
    if metrics and metrics.get("baselines"):
        _baselines(doc, metrics)

    # data
    doc.h(2, "Data")
    data = _data_attrs([*states, final])
    if manifest or data:
        m = manifest or data
        doc.ul(
            [
                f"**Source:** `{m.get('source')}` (SHA-256 `{str(m.get('source_sha256'))[:16]}...`)",
                f"**Split:** {m.get('split')}, seed {m.get('seed')}, "
                + (
                    f"a stratified subsample of {m['rows']} of the source's "
                    f"{m.get('n_rows_total')} rows"
                    if m.get("rows")
                    else f"all {m.get('n_rows_total')} rows of the source"
                ),
                f"**Rows:** train {m.get('n_train')}, validation {m.get('n_val')}, "
                f"test {m.get('n_test')}",
                f"**Prepared data key:** `{m.get('key')}`",
                *_table_lines(m),
            ]
        )
    if manifest and manifest.get("class_counts"):
        counts = manifest["class_counts"]
        labels = manifest.get("label_names") or [str(i) for i in range(len(counts["train"]))]
        total = sum(sum(counts[s]) for s in ("train", "val", "test")) or 1
        rows = []
        for i, name in enumerate(labels):
            n = [counts[s][i] for s in ("train", "val", "test")]
            rows.append([name, *map(str, n), str(sum(n)), f"{100 * sum(n) / total:.1f}%"])
        word = class_word(manifest)
        doc.table([word, "train", "val", "test", "total", "share"], rows)
        name = "decades" if word == "decade" else "classes"
        doc.img(
            draw(name, plots.class_distribution, manifest, out / f"{name}.png"),
            f"{word.capitalize()} distribution",
        )
    elif not data:
        doc.p("No stage has run yet: no data summary.")

    # stages
    for spec, state in zip(plan.stages, states, strict=True):
        stage = state.user_attrs.get("stage") or spec.to_dict()
        doc.h(2, f"Stage `{spec.name}` ({stage.get('kind')})")
        if stage.get("description"):
            doc.p(stage["description"])
        if state.study is None:
            doc.p("Not run yet.")
            continue
        params = tuned_params(stage)
        items = [
            f"**Study:** `{state.study}`, {state.state}, {state.n_complete}/{state.n_total} "
            "points complete",
            f"**Tunes:** {', '.join(params)}",
            f"**{search_label(stage)}:** {grid_text(stage, state.user_attrs.get('points'))}",
            f"**Scored by:** {scored_by(stage)}",
            f"**Fixed params:** {fmt_params(state.fixed_params)}",
        ]
        items += [f"**{label}:** {text}" for label, text in kind_facts(stage, state.user_attrs)]
        items.append(f"**Winner:** {winner_text(state)}")
        items.append(f"**Decision:** {decision_text(state.decision)}")
        if state.best_params is not None:
            items.append(f"**Carried forward:** {fmt_params(state.best_params)}")
        if state.reused:
            items.append(f"**Reused:** {notes.reused_text(state)}")
        cut = status_words.out_of_time(state)
        if cut:
            items.append(f"**Time budget:** {cut}")
        doc.ul(items)
        if state.rows:
            header, cells = points_table(state, params)
            doc.table(header, cells)
        for figure in kind_figures(stage, state.user_attrs):
            png = paths.inside(out, figure.file)
            doc.img(draw(png.stem, plots.draw_figure, figure, png), figure.caption)
        suffix, caption = summary_plot_name(stage)
        png = paths.inside(out, f"{spec.name}_{suffix}.png")
        path = draw(f"{spec.name}_{suffix}", stage_plot, state, png)
        doc.img(path, f"{spec.name}: {caption}")

    # final
    doc.h(2, "Final model")
    if not metrics:
        doc.p(not_ours or f"The final job has not run ({final.state}).")
    else:
        doc.ul(
            [
                f"**Study:** `{final.study}`; model `{model_dir / 'model.pt'}`",
                f"**Fixed params (stage winners):** {fmt_params(metrics.get('fixed_params'))}",
                f"**Configuration:** {fmt_params(metrics.get('config'))}",
                f"**Test accuracy:** {metrics['test_accuracy']:.4f}; **test loss:** "
                f"{metrics['test_loss']:.4f}; macro F1 {metrics['macro_f1']:.4f}; "
                f"{metrics['n_test']} test rows",
                f"**Epochs trained:** {metrics.get('epochs_trained')}"
                + status_words.stopped_why(metrics),
                *status_words.shipped_lines(metrics),
                *(
                    [f"**Model from:** {notes.model_from_text(metrics['reused_from'])}"]
                    if metrics.get("reused_from")
                    else []
                ),
            ]
        )
        epoch = metrics.get("shipped_epoch")
        doc.p(notes.per_class_caption(metrics))
        doc.table(
            notes.per_class_header(metrics), notes.per_class_rows(metrics.get("per_class", {}))
        )
        if history:
            doc.img(
                draw(
                    "final_history",
                    plots.final_history,
                    history,
                    out / "final_history.png",
                    shipped=metrics.get("shipped_epoch"),
                ),
                "Final training history (the dotted line: the epoch whose weights ship)",
            )
        doc.img(
            draw("confusion_matrix", plots.confusion_matrix, metrics, out / "confusion_matrix.png"),
            f"Test confusion matrix{f' (weights of epoch {epoch})' if epoch else ''}",
        )

    # wall times
    doc.h(2, "Wall times")
    rows, total_train, total_elapsed = [], 0.0, 0.0
    for state in states:
        trained = state.trained_seconds
        elapsed = state.wall_seconds
        total_train += trained
        total_elapsed += elapsed or 0.0
        rows.append([state.name, str(len(state.rows)), _secs(trained), _secs(elapsed)])
    if metrics:
        final_s = (metrics.get("wall_times") or {}).get("final_train_s")
        elapsed = final.wall_seconds
        total_train += final_s or 0.0
        total_elapsed += elapsed or 0.0
        rows.append(["final", "1", _secs(final_s), _secs(elapsed)])
    rows.append(["**total**", "", _secs(total_train), _secs(total_elapsed)])
    doc.table(["stage", "trials", "training s (sum of trials)", "elapsed s"], rows)
    doc.p(
        "Training seconds are summed over a stage's trials (several workers overlap them); "
        "elapsed is the time during which some trial of the stage was training (the union of "
        "its trials' start-to-end spans), plus what its kind did outside trials (an LR range "
        "test): the same figure as metrics.json's wall_times."
    )

    md_path, html_path = out / "report.md", out / "report.html"
    paths.write_text(md_path, doc.to_markdown())
    paths.write_text(html_path, doc.to_html(f"tuner report: {plan.name}"))
    logger.info("wrote %s, %s and %d plots", md_path, html_path, len(figures))
    return ReportPaths(md_path, html_path, figures)


def _target_line(m: dict[str, Any]) -> str:
    """``**Target:** `species`: 3 classes`` (with the binning rule where there is one)."""
    n = m.get("n_classes") or len(m.get("label_names") or [])
    rule = m.get("label_rule")
    how = f", {rule}" if rule and rule != "classes" else ""
    return f"**Target:** `{m['target']}`: {n} classes{how}"


def _baselines(doc: Doc, metrics: dict[str, Any]) -> None:
    """The first answer to "is this good?": the tuned MLP against scikit-learn's defaults on
    the same train rows and the same test rows (:mod:`tuner.data.baselines`)."""
    found = metrics["baselines"]
    acc = metrics["test_accuracy"]
    rows = [["tuned MLP", f"{acc:.4f}", ""]]
    rows += [
        [r["model"], f"{r['accuracy']:.4f}", f"{r['points']:+.2f}"] for r in comparison(acc, found)
    ]
    doc.table(
        ["tuned MLP vs baselines (test accuracy)", "accuracy", "tuned MLP - it, points"], rows
    )
    fit, train = found.get("fit_rows"), found.get("train_rows")
    subsample = (
        f" (a stratified subsample of {fit} of the {train} training rows)" if fit != train else ""
    )
    doc.p(
        "The baselines are scikit-learn's defaults (`DummyClassifier`, `LogisticRegression`, "
        "`HistGradientBoostingClassifier`), fitted on the same training rows and encoded "
        f"features as the MLP{subsample} and scored on the same test rows."
    )


def _table_lines(m: dict[str, Any]) -> list[str]:
    """Report lines that describe a table's target and features (none for YearPredictionMSD)."""
    if not m.get("target"):
        return []
    lines = [_target_line(m)]
    cols = m.get("columns") or {}
    feats = m.get("encoding") or {}
    if cols:
        lines.append(
            f"**Features:** {len(cols.get('numeric', []))} numeric (missing values: "
            f"{feats.get('impute', '?')}; scaling: {feats.get('scaler', '?')}), "
            f"{len(cols.get('categorical', []))} categorical (one-hot), "
            f"{m.get('n_features')} inputs to the model"
        )
        for name, why in (cols.get("dropped") or {}).items():
            lines.append(f"**Not a feature:** `{name}`: {why}")
    missing = m.get("missing_values") or {}
    if missing:
        lines.append("**Missing values:** " + ", ".join(f"`{c}` {n}" for c, n in missing.items()))
    if m.get("rows_without_target"):
        lines.append(f"**Rows without a target value (left out):** {m['rows_without_target']}")
    if m.get("lumped_classes"):
        lines.append(
            "**Too rare to stratify on** (split as part of the most frequent class): "
            + ", ".join(m["lumped_classes"])
        )
    return lines
