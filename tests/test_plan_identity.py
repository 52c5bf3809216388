"""A plan is identified by its content, not its name: an edited copy under the same name gets
studies of its own, never the other plan's results, and says what of the other's it overwrites."""

from __future__ import annotations

import json
import sqlite3

import pytest

from tests._util import TINY_PLAN, session, write_tiny_plan
from tuner.paths import inside
from tuner.plan import load_plan
from tuner.report.document import write_report
from tuner.tune.final import final_summary, run_final
from tuner.tune.kinds import KINDS, stage_spec

FIXES = {"lr": "0.01", "weight_decay": "0.0001"}  # the activation stage without its predecessors
ALL_FIXED = {**FIXES, "activation": "relu", "norm": "none", "optimizer": "adam"}
ACTIVATION = 'epochs = 1\nobjective = "peak"\n[stages.grid]\nactivation = ["relu", "gelu"]'


@pytest.fixture
def workdir(tmp_path, msd_file):
    write_tiny_plan(tmp_path)
    return tmp_path


def _edit(workdir, old: str, new: str) -> None:
    path = workdir / "studies" / "tiny.toml"
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


@pytest.mark.slow
def test_an_edited_plan_under_the_same_name_gets_new_studies_and_an_unchanged_one_reuses(
    workdir, msd_file, caplog
):
    s = session(workdir, str(msd_file), fixes=FIXES)
    first = s.run_stage("activation")
    s.close()
    assert first.study == "tiny.activation" and first.state == "done"
    n_first = len(first.trials)

    # a copy edited without renaming it: another grid
    _edit(workdir, ACTIVATION, ACTIVATION.replace('["relu", "gelu"]', '["tanh", "silu"]'))
    s = session(workdir, str(msd_file), fixes=FIXES)
    assert s.stage_state("activation").state == "pending"  # the other plan's study is not its
    with caplog.at_level("INFO", logger="tuner.tune"):
        edited = s.run_stage("activation")
    assert "plan content changed since study tiny.activation" in caplog.text
    assert edited.study == "tiny.activation.v2" and edited.state == "done"
    assert {t.params["activation"] for t in edited.trials} == {"tanh", "silu"}
    assert edited.best_params["activation"] in {"tanh", "silu"}  # carried: inside its grid
    assert s.resolve_fixed(3)["activation"] == edited.best_params["activation"]
    assert edited.user_attrs["plan_content"] == s.plan.content_key("activation")
    s.close()

    # the same grid with more epochs is other content too
    _edit(workdir, 'epochs = 1\nobjective = "peak"\n[stages.grid]\nactivation', 'epochs = 2\nobjective = "peak"\n[stages.grid]\nactivation')  # fmt: skip
    s = session(workdir, str(msd_file), fixes=FIXES)
    longer = s.run_stage("activation")
    s.close()
    assert longer.study == "tiny.activation.v3"
    assert all(len(t.intermediate_values) == 2 for t in longer.trials)  # two epochs each

    # back to the original plan: its study is found again (not the newest), nothing retrained
    write_tiny_plan(workdir)
    s = session(workdir, str(msd_file), fixes=FIXES)
    assert s.stage_state("activation").study == "tiny.activation"
    caplog.clear()
    with caplog.at_level("INFO", logger="tuner.tune"):
        again = s.run_stage("activation")
    s.close()
    assert "already complete in study tiny.activation" in caplog.text
    assert again.study == "tiny.activation" and len(again.trials) == n_first
    assert again.best_params == first.best_params


def test_plan_content_covers_what_a_stage_depends_on_and_nothing_else(tmp_path):
    write_tiny_plan(tmp_path)
    base = load_plan("tiny", tmp_path)
    keys = {name: base.content_key(name) for name in [*(s.name for s in base.stages), "final"]}

    def changed(old: str, new: str) -> set[str]:
        text = TINY_PLAN.format(wd_epochs=1)
        assert text.count(old) == 1, old
        path = tmp_path / "edited.toml"
        path.write_text(text.replace(old, new))
        plan = load_plan(str(path), tmp_path)
        assert plan.name == "tiny"
        return {name for name, key in keys.items() if plan.content_key(name) != key}

    # a description is not content
    assert changed('name = "activation"\n', 'name = "activation"\ndescription = "x"\n') == set()
    # a stage's grid: that stage only; later stages see its winner through their fixed params
    assert changed('["relu", "gelu"]', '["relu", "tanh"]') == {"activation"}
    assert changed("[final]\nepochs = 2", "[final]\nepochs = 3") == {"final"}
    # a default an earlier stage tunes is not used after it; one nobody tunes is used by all
    assert changed("batch_size = 64", "batch_size = 64\nlr = 0.5") == {"lr"}
    assert changed("hidden = [16, 16]", "hidden = [16, 8]") == set(keys)
    assert changed("batch_size = 64", "batch_size = 64\nactivation = 'gelu'") == {
        "lr",
        "weight_decay",
        "activation",
    }


# the content hashes of the shipped plans: the studies they ran are found again only while
# these stay the same (a refactoring that changes one orphans every study of that plan)
SHIPPED_CONTENT = {"seed": "073fcffdfe9b53a4", "quick": "90580cd95e4a8b12", "extended": "d71830da932186a6"}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SHIPPED_CONTENT))
def test_the_shipped_plans_keep_their_content_hash(tmp_path, name):
    assert load_plan(name, tmp_path).content == SHIPPED_CONTENT[name]


# the kind keys every stage's dict held when one dataclass carried every kind's options
EVERY_STAGE = {
    "folds": 0,
    "patience": 0,
    "param": "lr",
    "start_lr": 1e-7,
    "end_lr": 1.0,
    "range_optimizer": "adam",
    "snap": "decade",
    "candidates": [1.0],
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_stage_dict_holds_the_first_kinds_keys_with_their_defaults(kind):
    recorded = stage_spec(name="x", kind=kind).to_dict()
    own = KINDS[kind].option_keys
    assert {k: recorded[k] for k in EVERY_STAGE if k not in own} == {
        k: v for k, v in EVERY_STAGE.items() if k not in own
    }


def test_two_plan_contents_never_share_a_study_however_their_workers_race(workdir, msd_file):
    """Workers of two contents open the same stage at the same moment, before either study
    exists: the study's claim goes to one content; the other takes the next version."""
    a, b = session(workdir, str(msd_file)), session(workdir, str(msd_file))
    try:
        assert a.studies.claim_study("activation", 0, "content:a") == "tiny.activation"
        assert b.studies.claim_study("activation", 0, "content:b") == "tiny.activation.v2"
        assert b.studies.claim_study("activation", 1, "content:b") == "tiny.activation.v2"
        assert (
            a.studies.claim_study("activation", 1, "content:a") == "tiny.activation"
        )  # a's workers join
        assert b.studies.claim_study("activation", 0, "content:b") == "tiny.activation.v2"
    finally:
        a.close()
        b.close()


def _forget_plan_content(workdir) -> None:
    """Make the storage look as written before plan identity: no ``plan_content``, no claims."""
    conn = sqlite3.connect(workdir / "studies" / "tuner.sqlite3")
    with conn:
        conn.execute("DELETE FROM study_user_attributes WHERE key = 'plan_content'")
        conn.execute("DELETE FROM tuner_claims WHERE point = '__study__'")
    conn.close()


@pytest.mark.slow
def test_a_study_from_before_plan_identity_is_reused_only_when_its_stage_agrees(workdir, msd_file):
    s = session(workdir, str(msd_file), fixes=FIXES)
    first = s.run_stage("activation")
    s.close()
    _forget_plan_content(workdir)
    s = session(workdir, str(msd_file), fixes=FIXES)
    again = s.run_stage("activation")  # the recorded stage settings agree: reused
    s.close()
    assert again.study == "tiny.activation" and len(again.trials) == len(first.trials)
    assert "plan_content" not in again.user_attrs

    _edit(workdir, ACTIVATION, ACTIVATION.replace("epochs = 1", "epochs = 2"))
    s = session(workdir, str(msd_file), fixes=FIXES)
    try:
        assert s.stage_state("activation").state == "pending"
        assert s.run_stage("activation").study == "tiny.activation.v2"
    finally:
        s.close()


@pytest.mark.slow
def test_an_edited_plans_final_model_and_report_say_what_they_overwrite(workdir, msd_file, caplog):
    s = session(workdir, str(msd_file), fixes=ALL_FIXED)
    original = run_final(s)
    write_report(s)
    accuracy = final_summary(s)["test_accuracy"]
    s.close()

    _edit(workdir, "[final]\nepochs = 2", "[final]\nepochs = 1")
    s = session(workdir, str(msd_file), fixes=ALL_FIXED)
    with caplog.at_level("WARNING"):
        edited = run_final(s)
        write_report(s)
    assert (original.study, edited.study) == ("tiny.final", "tiny.final.v2")
    assert "overwriting the final model in" in caplog.text
    assert "overwriting the report in" in caplog.text
    assert "was edited under the same name" in caplog.text
    metrics = json.loads((workdir / "models" / "tiny" / "metrics.json").read_text())
    assert metrics["study"] == "tiny.final.v2" and metrics["plan_content"] == s.plan.content
    s.close()

    # the original plan's status and report do not pass the edited plan's model off as theirs
    write_tiny_plan(workdir)
    s = session(workdir, str(msd_file), fixes=ALL_FIXED)
    caplog.clear()
    with caplog.at_level("WARNING"):
        summary = final_summary(s)
        paths = write_report(s)
    s.close()
    assert summary["study"] == "tiny.final" and summary["test_accuracy"] == accuracy
    assert "model" not in summary
    assert "holds the model of study tiny.final.v2" in caplog.text
    assert "now holds the model of study `tiny.final.v2`" in paths.markdown.read_text()


@pytest.mark.parametrize("parts", [("../x",), ("/etc",), ("models", "../../x"), ("a", "..")])
def test_paths_built_from_names_stay_inside_their_root(tmp_path, parts):
    from tuner.errors import PlanError

    with pytest.raises(PlanError, match="leads outside"):
        inside(tmp_path, *parts)
    assert inside(tmp_path, "models", "quick") == tmp_path.absolute() / "models" / "quick"
