"""The report: plots, report.md and a self-contained report.html, written by run-all and by
``python -m tuner report``; report.html rendered by headless Chromium."""

from __future__ import annotations

import base64
import json
import re

import optuna
import pytest
from PIL import Image

from tests._util import run_cli, session, write_tiny_plan
from tests.browser import dump_dom, finished_run
from tuner.report.document import write_report
from tuner.report.notes import fmt_params
from tuner.tune.storage import default_storage_url

STAGES = ("lr", "weight_decay", "activation", "normalization", "optimizer")
PLOTS = {
    "decades",
    "lr_range_test",
    "lr_curves",
    "weight_decay_cv",
    "activation_curves",
    "normalization_curves",
    "optimizer_curves",
    "final_history",
    "confusion_matrix",
}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory, msd_file):
    return finished_run(tmp_path_factory, msd_file)


@pytest.fixture(scope="module")
def studies(run):
    storage = optuna.storages.RDBStorage(default_storage_url(run))
    out = {
        s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
        for s in storage.get_all_studies()
    }
    yield out
    storage.engine.dispose()


def _sections(md: str) -> dict[str, str]:
    parts = re.split(r"^## ", md, flags=re.M)
    return {p.splitlines()[0]: p for p in parts[1:]}


@pytest.mark.slow
def test_run_all_writes_the_plots(run):
    out = run / "reports" / "tiny"
    assert "report:" in (run / "run-all.stdout").read_text()
    pngs = {p.stem: p for p in out.glob("*.png")}
    assert PLOTS <= set(pngs), sorted(pngs)
    for name, path in pngs.items():
        data = path.read_bytes()
        assert data.startswith(PNG), name
        assert len(data) > 8000, (name, len(data))  # a drawn figure, not an empty canvas
        with Image.open(path) as im:
            assert im.width >= 400 and im.height >= 200, (name, im.size)
            assert len(im.convert("L").getcolors(256)) > 20, name  # lines and text, not blank


@pytest.mark.slow
def test_report_md_has_data_stages_final_and_wall_times(run, studies):
    md = (run / "reports" / "tiny" / "report.md").read_text()
    sections = _sections(md)
    manifest = next((run / "data" / "prepared").glob("*/manifest.json"))
    counts = json.loads(manifest.read_text())["class_counts"]

    data = sections["Data"]
    assert "train 2100, validation 450, test 450" in data
    total_2000s = sum(counts[s][8] for s in ("train", "val", "test"))
    assert re.search(rf"\| 2000s \| {counts['train'][8]} \| .* \| {total_2000s} \|", data)
    assert "![Decade distribution](decades.png)" in data

    for stage in STAGES:
        section = sections[f"Stage `{stage}` ({_kind(stage)})"]
        study = studies[f"tiny.{stage}"]
        best = study.best_trial
        winner = fmt_params(best.params)
        assert f"**Winner:** **{winner}** ({best.value:.4f})" in section, section
        fixed = study.user_attrs["fixed_params"]
        assert f"**Fixed params:** {fmt_params(fixed)}" in section
        # one table row per grid point, with its value, the winner marked
        rows = [r for r in section.splitlines() if r.startswith("| ") and "---" not in r]
        assert len(rows) == 1 + len(study.trials)
        assert sum(r.rstrip(" |").endswith("winner") for r in rows) == 1
        for t in study.trials:
            assert f"| {t.value:.4f} |" in section
        if stage == "weight_decay":
            assert "| std | 95% CI | n | folds |" in section
            for t in study.trials:
                assert f"{t.user_attrs['std']:.4f}" in section
            assert "weight_decay_cv.png" in section
        else:
            assert f"{stage}_curves.png" in section
    assert "steepest descent at" in sections["Stage `lr` (lr_range_test)"]
    assert "lr_range_test.png" in sections["Stage `lr` (lr_range_test)"]

    final = sections["Final model"]
    metrics = json.loads((run / "models" / "tiny" / "metrics.json").read_text())
    assert f"**Test accuracy:** {metrics['test_accuracy']:.4f}" in final
    first_screen = md.split("## Data")[0]  # every value says what it measures; the test's epoch
    assert "| stage | state | done | winner | value | metric | study |" in first_screen
    shipped = f"test accuracy, epoch {metrics['shipped_epoch']}"
    assert f"| {metrics['test_accuracy']:.4f} | {shipped} |" in first_screen, first_screen
    assert "| decade | precision | recall | F1 | support |" in final
    for name, c in metrics["per_class"].items():
        assert f"| {name} | {c['precision']:.3f} | {c['recall']:.3f}" in final
    assert "final_history.png" in final and "confusion_matrix.png" in final
    epoch = metrics["shipped_epoch"]  # the per-class table and the matrix name their weights
    assert f"Per class on the test rows, weights of epoch {epoch}:" in final
    assert f"![Test confusion matrix (weights of epoch {epoch})](confusion_matrix.png)" in final

    wall = sections["Wall times"]
    for stage in (*STAGES, "final", "**total**"):
        assert re.search(rf"^\| {re.escape(stage)} \| \d* \| [\d.]+ \| [\d.]+ \|$", wall, re.M), (
            stage,
            wall,
        )
    # every image the Markdown links is beside it
    for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md):
        assert (run / "reports" / "tiny" / link).is_file(), link


def _kind(stage: str) -> str:
    return {"lr": "lr_range_test", "weight_decay": "cv"}.get(stage, "sweep")


@pytest.mark.slow
def test_report_html_is_self_contained(run):
    text = (run / "reports" / "tiny" / "report.html").read_text()
    md = (run / "reports" / "tiny" / "report.md").read_text()
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', text)
    assert len(srcs) == md.count("![") >= 9
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    # nothing fetched from anywhere: no scripts, stylesheets, external sources or links
    assert not re.search(r"<script|<link|<iframe|@import", text, re.I)
    assert not re.search(r'(src|href)="(?!data:|#)', text)
    assert "<table>" in text and "<h2" in text


@pytest.mark.slow
def test_report_command_rewrites_the_report_without_data(run, tmp_path):
    out = tmp_path / "again"
    # --data defaults to uci: the report reads the storage and the cache, never the source
    proc = run_cli("report", "--plan", "tiny", "--workdir", str(run), "--out", str(out), cwd=run)
    assert proc.returncode == 0, proc.stderr
    assert f"report: {out / 'report.md'}" in proc.stdout
    assert {p.stem for p in out.glob("*.png")} >= PLOTS
    first = (run / "reports" / "tiny" / "report.md").read_text()
    again = (out / "report.md").read_text()
    strip = lambda s: re.sub(r"Written .* UTC", "", s)  # noqa: E731
    assert strip(first) == strip(again)


def test_report_of_a_plan_that_has_not_run(tmp_path):
    write_tiny_plan(tmp_path)
    s = session(tmp_path, "synthetic")  # never prepared: the report needs no data
    try:
        paths = write_report(s)
    finally:
        s.close()
    assert paths.plots == {}
    md = paths.markdown.read_text()
    assert md.count("Not run yet.") == len(STAGES)
    assert "The final job has not run (pending)." in md
    assert (tmp_path / "reports" / "tiny" / "report.html").is_file()


@pytest.mark.browser
def test_report_html_renders_in_chromium(run, tmp_path):
    # report.html has no script of its own; a copy with one reports what the browser decoded
    page = tmp_path / "report.html"
    probe = (
        "<script>document.body.setAttribute('data-images', JSON.stringify("
        "Array.from(document.images).map(i => [i.complete, i.naturalWidth])));</script>"
    )
    html = (run / "reports" / "tiny" / "report.html").read_text()
    page.write_text(html.replace("</body>", probe + "</body>"))
    dom = dump_dom(page.as_uri(), budget_ms=3000)
    images = json.loads(re.search(r"data-images=\"([^\"]*)\"", dom).group(1).replace("&quot;", '"'))
    assert len(images) >= 9
    assert all(complete and width >= 400 for complete, width in images), images
    for stage in STAGES:
        assert f"Stage <code>{stage}</code>" in dom
    assert "Final model" in dom and "Wall times" in dom
