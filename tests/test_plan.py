"""Plans are data: the shipped plans parse to the published sequence, bad plans say why."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuner.errors import PlanError
from tuner.plan import TrainConfig, load_plan

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
    assert (lr.kind, lr.range_optimizer, lr.start_lr, lr.end_lr, lr.epochs) == (
        "lr_range_test",
        "adam",
        1e-7,
        1.0,
        5,
    )
    assert (wd.kind, wd.folds, wd.epochs, wd.objective) == ("cv", 5, 10, "mean")
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
    assert arch.patience and reg.patience  # epochs end early on a stalled validation loss
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
    assert sum(s.epochs * max(s.folds, 1) for s in quick.stages) < 20


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
