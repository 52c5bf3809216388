"""Plans are data: the shipped plans parse to the published sequence, bad plans say why."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest

from tuner.errors import PlanError
from tuner.plan import load_plan
from tuner.train.config import TrainConfig
from tuner.train.options import FIELDS, optimizers
from tuner.tune.kinds import stage_spec

REPO = Path(__file__).resolve().parents[1]


def test_seed_plan_is_the_published_sequence():
    plan = load_plan("seed", REPO)
    assert [s.name for s in plan.stages] == [
        "lr",
        "weight_decay",
        "init",
        "activation",
        "normalization",
        "optimizer",
    ]
    assert plan.defaults == TrainConfig(
        hidden=(256, 256),
        activation="relu",
        norm="none",
        init="default",
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        momentum=0.9,
        batch_size=128,
    )
    lr, wd, init, act, norm, opt = plan.stages
    assert (
        lr.kind,
        lr.options.range_optimizer,
        lr.options.start_lr,
        lr.options.end_lr,
        lr.epochs,
    ) == (
        "lr_range_test",
        "adam",
        1e-7,
        1.0,
        5,
    )
    assert (wd.kind, wd.options.folds, wd.epochs, wd.objective) == ("cv", 5, 10, "mean")
    assert wd.grid == {"weight_decay": (0.0, 1e-5, 1e-4, 1e-3, 1e-2)}
    assert init.grid == {"init": ("default", "xavier_uniform", "kaiming_normal")}
    assert act.grid == {"activation": ("relu", "leaky_relu", "gelu")}
    assert norm.grid == {"norm": ("none", "batch", "layer")}
    assert opt.grid == {"optimizer": ("adam", "sgd", "rmsprop")}
    for s in (init, act, norm, opt):
        assert (s.kind, s.epochs, s.objective) == ("sweep", 15, "peak")
    assert (plan.final.epochs, plan.final.patience) == (15, 5)


def test_extended_plan_searches_what_the_published_study_fixed():
    plan = load_plan("extended", REPO)
    arch, reg, training = plan.stages
    assert arch.grid["hidden"] == ("128x128", "256x256", "256x128x64", "512x512", "512x512x512")
    assert (reg.sampler, reg.trials) == ("tpe", 6)
    assert set(reg.space) == {"lr", "batch_size", "dropout", "weight_decay", "label_smoothing"}
    assert reg.space["lr"]["log"] and reg.space["batch_size"] == {"choices": [256, 512, 1024]}
    assert set(training.grid) == {"schedule", "class_weight"}
    assert (
        arch.options.patience and reg.options.patience
    )  # epochs end early on a stalled validation loss
    assert plan.final.restore_best and plan.final.patience
    # the defaults sit inside the TPE space: round 0 starts from them
    d = plan.defaults
    assert d.batch_size in reg.space["batch_size"]["choices"]
    assert d.weight_decay in reg.space["weight_decay"]["choices"]
    assert reg.space["lr"]["low"] <= d.lr <= reg.space["lr"]["high"]


def test_quick_plan_has_the_same_stages_and_grids():
    seed, quick = load_plan("seed", REPO), load_plan("quick", REPO)
    assert [(s.name, s.kind, s.grid, s.objective) for s in quick.stages] == [
        (s.name, s.kind, s.grid, s.objective) for s in seed.stages
    ]
    assert quick.defaults == seed.defaults
    assert sum(s.epochs * max(getattr(s.options, "folds", 1), 1) for s in quick.stages) < 20


def test_plan_by_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(
        '[[stages]]\nname = "act"\nkind = "sweep"\nepochs = 2\n[stages.grid]\nactivation = ["relu", "tanh"]\n'
        '[[stages]]\nname = "width"\nkind = "sweep"\nepochs = 1\nobjective = "final"\n'
        "[stages.grid]\nhidden = [[64], [128, 64]]\n"
    )
    plan = load_plan(str(path), tmp_path)
    assert plan.name == "mine"
    assert plan.stages[1].grid == {"hidden": ("64", "128x64")}
    assert plan.defaults.with_params({"hidden": "128x64"}).hidden == (128, 64)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "at least one"),
        ('[[stages]]\nname = "a"\nkind = "magic"\n', "unknown"),
        ('[[stages]]\nname = "a"\nkind = "sweep"\n', "non-empty"),
        (
            '[[stages]]\nname = "a"\nkind = "sweep"\n[stages.grid]\nactivation = ["swish9"]\n',
            "swish9",
        ),
        ('[[stages]]\nname = "a"\nkind = "sweep"\n[stages.grid]\ncolour = ["red"]\n', "colour"),
        ('[[stages]]\nname = "a"\nkind = "cv"\nfolds = 1\n[stages.grid]\nlr = [0.1]\n', "folds"),
        (
            '[[stages]]\nname = "a"\nkind = "sweep"\nobjective = "mean"\n[stages.grid]\nlr = [0.1]\n',
            "mean",
        ),
        (
            '[[stages]]\nname = "a"\nkind = "sweep"\n[stages.grid]\nlr = [0.1]\n'
            '[[stages]]\nname = "b"\nkind = "sweep"\n[stages.grid]\nlr = [0.2]\n',
            "both",
        ),
        ("stages = [", "TOML"),
    ],
)
def test_bad_plans_are_rejected_with_a_reason(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(PlanError, match=message):
        load_plan(str(path), tmp_path)


def test_unknown_plan_name_lists_the_available_ones(tmp_path):
    with pytest.raises(PlanError, match="quick"):
        load_plan("nope", tmp_path)


# -- names are identifiers ---------------------------------------------------------------------
STAGE = '[[stages]]\nname = "{stage}"\nkind = "sweep"\nepochs = 1\n[stages.grid]\nlr = [0.1]\n'


def _load(tmp_path, text: str, file: str = "plan.toml"):
    path = tmp_path / file
    path.write_text(text)
    return load_plan(str(path), tmp_path)


@pytest.mark.parametrize(
    "name",
    ["../../../../tmp/x", "/tmp/x", "a/b", "a\\b", "..", "a..b", ".hidden", "", "a b", "x" * 65],
)
def test_plan_names_that_could_leave_the_workdir_are_refused(tmp_path, name):
    text = f"name = {json.dumps(name)}\n" + STAGE.format(stage="a")
    with pytest.raises(PlanError, match="name must be letters, digits") as info:
        _load(tmp_path, text)
    assert len(str(info.value).splitlines()) == 1
    assert json.dumps(name)[:40] in str(info.value)


@pytest.mark.parametrize("stage", ["../a", "/abs", "a/b", "a.b", "..", "a b", "-a"])
def test_stage_names_that_could_leave_the_workdir_are_refused(tmp_path, stage):
    with pytest.raises(PlanError, match=r"stage 1 .*name must be letters, digits, \"_\" and \"-\""):
        _load(tmp_path, STAGE.format(stage=stage.replace("\\", "\\\\")))


@pytest.mark.parametrize("stage", ["final", "v2"])
def test_stage_names_of_the_final_job_and_of_versions_are_reserved(tmp_path, stage):
    with pytest.raises(PlanError, match="reserved"):
        _load(tmp_path, STAGE.format(stage=stage))


def test_a_plan_named_after_a_file_with_an_odd_name_must_set_its_name(tmp_path):
    with pytest.raises(PlanError, match='set name = "..." in the plan'):
        _load(tmp_path, STAGE.format(stage="a"), file="my plan.toml")
    text = 'name = "mine"\n' + STAGE.format(stage="a")
    assert _load(tmp_path, text, file="my plan.toml").name == "mine"


@pytest.mark.slow
def test_a_bad_name_stops_the_cli_before_anything_is_written(tmp_path):
    from tests._util import run_cli

    path = tmp_path / "plans" / "escape.toml"
    path.parent.mkdir()
    path.write_text('name = "../../escaped"\n' + STAGE.format(stage="a"))
    work = tmp_path / "work"
    work.mkdir()
    proc = run_cli("report", "--plan", str(path), "--workdir", str(work), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("tuner: error: plan 'escape': name must be letters")
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert list(work.iterdir()) == [] and not (tmp_path / "escaped").exists()


# -- every plan value is type- and range-checked -----------------------------------------------
SWEEP = 'name = "a"\nkind = "sweep"\nepochs = 1\n[stages.grid]\nlr = [0.1]\n'
CV = 'name = "a"\nkind = "cv"\nfolds = 2\nobjective = "mean"\nepochs = 1\n[stages.grid]\nlr = [0.1]\n'
RANGE = 'name = "lr"\nkind = "lr_range_test"\nepochs = 1\nobjective = "final"\n'


def _plan(stage: str = SWEEP, *, defaults: str = "", final: str = "", top: str = "") -> str:
    text = top + (f"[defaults]\n{defaults}" if defaults else "") + f"[[stages]]\n{stage}"
    return text + (f"[final]\n{final}" if final else "")


@pytest.mark.parametrize(
    "text, message",
    [
        (_plan(SWEEP.replace("epochs = 1", 'epochs = "two"')), r'epochs must be an integer in \[1, 10000\], got "two" \(a string\)'),
        (_plan(SWEEP.replace("epochs = 1", "epochs = 1.5")), r"epochs must be an integer in \[1, 10000\], got 1.5 \(a number\)"),
        (_plan(SWEEP.replace("epochs = 1", "epochs = true")), r"epochs must be an integer .*got true \(a boolean\)"),
        (_plan(SWEEP.replace("epochs = 1", "epochs = 0")), r"epochs must be in \[1, 10000\], got 0"),
        (_plan(CV.replace("folds = 2", 'folds = "2"')), r'folds must be an integer in \[0, 100\], got "2" \(a string\)'),
        (_plan(CV.replace("folds = 2", "folds = 5000")), r"folds must be in \[0, 100\], got 5000"),
        (_plan(SWEEP.replace("epochs = 1", "repeats = 2.0")), r"repeats must be an integer"),
        (_plan(SWEEP.replace('name = "a"', "name = 7")), r"stage 1: name must be letters, digits.* got 7 \(an integer\)"),
        (_plan(SWEEP.replace("epochs = 1", 'keep_incumbent_unless_significant = "yes"')), r"keep_incumbent_unless_significant must be true or false"),
        (_plan(CV.replace("epochs = 1", 'epochs = 1\npruner = "wilcoxon"\npruner_p = 0')), r"pruner_p must be in \(0, 1\), got 0"),
        (_plan(RANGE + "candidates = []\n"), r"candidates must be a non-empty list"),
        (_plan(RANGE + "candidates = [1.0, -2]\n"), r"candidates\[1\]: candidates must be > 0, got -2"),
        (_plan(RANGE + "start_lr = inf\n"), r"start_lr must be a finite number > 0, got inf"),
        (_plan(SWEEP.replace("lr = [0.1]", "lr = [0.1, nan]")), r"grid.lr\[1\]: lr must be a finite number > 0, got nan"),
        (_plan(SWEEP.replace("lr = [0.1]", "lr = [0.1, 0.1]")), r"grid.lr\[1\]: 0.1 is listed twice"),
        (_plan(SWEEP.replace("lr = [0.1]", "batch_size = [64, 128.5]")), r"grid.batch_size\[1\]: batch_size must be an integer"),
        (_plan(SWEEP.replace("lr = [0.1]", "hidden = [[16], [0]]")), r"grid.hidden\[1\]: hidden must be a non-empty list"),
        (_plan(defaults="lr = inf\n"), r"\[defaults\]: lr must be a finite number > 0, got inf"),
        (_plan(defaults="weight_decay = nan\n"), r"weight_decay must be a finite number >= 0, got nan"),
        (_plan(defaults="momentum = -5\n"), r"\[defaults\]: momentum must be in \[0, 1\), got -5"),
        (_plan(defaults="batch_size = true\n"), r"batch_size must be an integer .*got true \(a boolean\)"),
        (_plan(defaults="dropout = 1.0\n"), r"dropout must be in \[0, 1\), got 1.0"),
        (_plan(defaults='activation = "swish"\n'), r'unknown activation "swish"; choose one of: relu'),
        (_plan(final='epochs = "x"\n'), r'\[final\]: epochs must be an integer in \[1, 10000\], got "x"'),
        (_plan(final="epochs = -3\n"), r"\[final\]: epochs must be in \[1, 10000\], got -3"),
        (_plan(final="restore_best = 1\n"), r"\[final\]: restore_best must be true or false, got 1"),
        (_plan(final="epoch = 3\n"), r"\[final\]: unknown key\(s\) epoch"),
        ("defaults = 5\n" + _plan(), r"defaults must be a table \(\[defaults\]\), got 5"),
        ("stages = [5]\n", r"stage 1 must be a table \(\[\[stages\]\]\), got 5"),
        ("stages = 5\n", r"stages must be a list of tables"),
        ('description = 3\n' + _plan(), r"description must be a string, got 3"),
        (
            _plan(
                'name = "a"\nkind = "sweep"\nsampler = "tpe"\ntrials = 2\n[stages.space]\n'
                'lr = { low = 1e-3, high = inf, log = "yes" }\n'
            ),
            r"space.lr.high: lr must be a finite number > 0, got inf\n.*space.lr.log must be true or false",
        ),
    ],
)  # fmt: skip
def test_each_bad_value_is_one_line_naming_the_key_the_expectation_and_the_value(
    tmp_path, text, message
):
    with pytest.raises(PlanError, match=message):
        _load(tmp_path, text)


def test_every_bad_value_of_a_plan_is_reported_at_once(tmp_path):
    text = _plan(
        SWEEP.replace("epochs = 1", "epochs = 1.5"),
        defaults='lr = "x"\nbatch_size = 0\n',
        final="patience = -1\n",
    )
    with pytest.raises(PlanError) as info:
        _load(tmp_path, text)
    lines = str(info.value).splitlines()
    assert len(lines) == 4, lines
    assert [line.split(": ", 1)[0] for line in lines] == [
        "plan 'plan' [defaults]",
        "plan 'plan' [defaults]",
        "plan 'plan' stage 1 ('a')",
        "plan 'plan' [final]",
    ]


def test_a_plan_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "latin.toml"
    path.write_bytes('name = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(PlanError, match="not UTF-8 text"):
        load_plan(str(path), tmp_path)


@pytest.mark.parametrize(
    "fixes, message",
    [
        ({"lr": "inf"}, "lr must be a finite number > 0"),
        ({"weight_decay": "nan"}, "weight_decay must be a finite number >= 0"),
        ({"lr": "-1"}, "lr must be > 0"),
        ({"batch_size": "1.5"}, "batch_size must be an integer"),
        ({"momentum": "-5"}, r"momentum must be in \[0, 1\)"),
        ({"hidden": "16xx"}, "hidden must be a non-empty list"),
    ],
)
def test_bad_fix_values_are_refused(fixes, message):
    from tuner.train.config import coerce_params

    with pytest.raises(PlanError, match=f"--fix: {message}"):
        coerce_params(fixes, where="--fix")


@pytest.mark.slow
def test_fix_inf_or_nan_stops_the_cli_before_anything_runs(tmp_path, msd_file):
    from tests._util import run_cli, write_tiny_plan

    write_tiny_plan(tmp_path)
    for fix in ("lr=inf", "weight_decay=nan"):
        args = ("run-stage", "activation", "--plan", "tiny", "--data", str(msd_file))
        proc = run_cli(*args, "--fix", "lr=0.01", "--fix", fix, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"tuner: error: --fix: {fix.split('=')[0]} must be a finite")
        assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["studies"]  # no data, no storage
    assert [p.name for p in (tmp_path / "studies").iterdir()] == ["tiny.toml"]


def test_more_folds_than_the_data_allows_is_one_clear_error(tmp_path, uci_file):
    from tests._util import session
    from tuner.errors import StageError

    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "folds.toml").write_text(
        'name = "folds"\n[defaults]\nhidden = [8]\n[[stages]]\nname = "wd"\nkind = "cv"\n'
        'folds = 50\nobjective = "mean"\npruner = "wilcoxon"\n[stages.grid]\n'
        "weight_decay = [0.0, 0.1]\n"
    )
    s = session(tmp_path, str(uci_file(300)), plan="folds")
    try:
        with pytest.raises(StageError, match="50 folds of 210 train rows leave 4 validation rows"):
            s.run_stage("wd")
        assert s.storage.get_all_studies() == []
    finally:
        s.close()


@pytest.mark.parametrize("field", list(FIELDS))
def test_option_fields_accept_exactly_the_registered_names(tmp_path, field):
    """Each option field takes the names registered in tuner.train.options, in [defaults], in
    a grid and in --fix, and refuses any other with the registered list."""
    from tuner.plan import coerce_params

    names = list(FIELDS[field])
    assert getattr(TrainConfig(), field) in names  # the default is registered
    for name in names:
        assert getattr(TrainConfig(**{field: name}), field) == name
        assert coerce_params({field: name}) == {field: name}
    values = ", ".join(f'"{n}"' for n in names)
    plan = _load(tmp_path, _plan(SWEEP.replace("lr = [0.1]", f"{field} = [{values}]")))
    assert plan.stages[0].grid == {field: tuple(names)}
    listed = re.escape(f'unknown {field} "no_such_choice"; choose one of: {", ".join(names)}')
    with pytest.raises(PlanError, match=listed + "$"):
        _load(tmp_path, _plan(defaults=f'{field} = "no_such_choice"\n'))
    with pytest.raises(PlanError, match=listed):
        TrainConfig(**{field: "no_such_choice"})


def test_a_range_test_takes_exactly_the_registered_optimizers(tmp_path):
    for name in optimizers.REGISTRY:
        plan = _load(tmp_path, _plan(RANGE + f'optimizer = "{name}"\n'))
        assert plan.stages[0].options.range_optimizer == name
    assert stage_spec(name="lr", kind="lr_range_test").options.range_optimizer == optimizers.DEFAULT
    with pytest.raises(PlanError, match=re.escape(", ".join(optimizers.REGISTRY))):
        _load(tmp_path, _plan(RANGE + 'optimizer = "no_such_choice"\n'))


_DATA_PLAN = """
name = "withdata"
[data]
scaler = "robust"
missing_indicators = true
[[stages]]
name = "wd"
kind = "sweep"
epochs = 1
[stages.grid]
weight_decay = [0.0, 1e-4]
"""


def test_a_plans_data_section_fills_what_flags_and_descriptions_leave_unset(tmp_path):
    from tuner.data.spec import build_spec

    path = tmp_path / "withdata.toml"
    path.write_text(_DATA_PLAN)
    plan = load_plan(str(path), tmp_path)
    assert dict(plan.data) == {"scaler": "robust", "missing_indicators": True}
    table = tmp_path / "t.csv"
    table.write_text("a,y\n1,x\n")
    spec = build_spec(str(table), {"target": "y"}, plan.data)
    assert (spec.scaler, spec.missing_indicators) == ("robust", True)
    flagged = build_spec(str(table), {"target": "y", "scaler": "quantile"}, plan.data)
    assert (flagged.scaler, flagged.missing_indicators) == ("quantile", True)
    described = tmp_path / "d.toml"
    described.write_text(f'path = "{table}"\ntarget = "y"\nscaler = "standard"\n')
    assert build_spec(str(described), {}, plan.data).scaler == "standard"
    uci = build_spec("synthetic", {}, plan.data)  # the UCI format takes no table encoding
    assert (uci.scaler, uci.missing_indicators) == ("standard", False)


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ('[data]\nscaler = "minmax"', '[data]: unknown scaler "minmax"'),
        ("[data]\nbins = 4", "[data]: unknown key(s) bins"),
        ('data = "robust"', "data must be a table"),
    ],
)
def test_a_bad_data_section_is_one_line(tmp_path, section, expected):
    path = tmp_path / "bad.toml"
    stages = _DATA_PLAN[_DATA_PLAN.index("[[stages]]") :]
    path.write_text(f'name = "bad"\n{section}\n{stages}')
    with pytest.raises(PlanError, match=re.escape(expected)):
        load_plan(str(path), tmp_path)


def test_the_default_plan_follows_the_data_and_a_plans_data_section_reaches_the_session(
    tmp_path, monkeypatch
):
    from tuner import commands
    from tuner.cli import build_parser
    from tuner.data.spec import build_spec

    table = tmp_path / "t.csv"
    table.write_text("a,y\n1,x\n")
    assert commands.default_plan(build_spec("synthetic", {})) == commands.SEED_PLAN
    assert commands.default_plan(build_spec(str(table), {"target": "y"})) == commands.TABLE_PLAN
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "withdata.toml").write_text(_DATA_PLAN)
    monkeypatch.setattr(commands, "TABLE_PLAN", "withdata")
    optuna.storages.RDBStorage(
        f"sqlite:///{tmp_path / 'studies' / 'tuner.sqlite3'}"
    )  # status reads one
    args = build_parser().parse_args(
        ["status", "--data", str(table), "--target", "y", "--workdir", str(tmp_path)]
    )
    session = commands.open_session(args, with_data=False)
    try:
        assert session.plan.name == "withdata"
        assert (session.settings.data.scaler, session.settings.data.missing_indicators) == (
            "robust",
            True,
        )
    finally:
        session.close()
