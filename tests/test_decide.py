"""Noise-aware stage decisions: paired differences, significance, keeping the incumbent, and
pruners that compare points trained side by side."""

from __future__ import annotations

import numpy as np
import pytest
from optuna.trial import TrialState

from tests._util import session
from tests.conftest import uci_lines, write_uci_text
from tuner.tune.decide import PointStats, decide, paired

# -- the rule, on numbers -------------------------------------------------------------------


def test_a_consistent_paired_win_is_significant_and_a_noisy_one_is_not():
    a = [0.70, 0.71, 0.69, 0.72, 0.70]
    assert paired(a, [v - 0.01 for v in a])["significant"]
    noisy = paired(a, [0.71, 0.69, 0.70, 0.70, 0.71])  # same means up to noise
    assert not noisy["significant"]
    lo, hi = noisy["diff_ci95"]
    assert lo < 0 < hi and noisy["n"] == 5


def test_one_run_per_point_is_never_significant():
    out = paired([0.7], [0.6])
    assert out == {"diff": pytest.approx(0.1), "diff_ci95": None, "significant": False, "n": 1}


def test_keep_incumbent_unless_the_winner_beats_it_significantly():
    inc = PointStats({"activation": "relu"}, (0.70, 0.71, 0.69))
    close = PointStats({"activation": "gelu"}, (0.705, 0.705, 0.70))  # better mean, noise
    far = PointStats({"activation": "tanh"}, (0.75, 0.76, 0.74))
    kept = decide([inc, close], incumbent={"activation": "relu"}, keep_incumbent=True)
    assert kept.winner == {"activation": "gelu"} and not kept.significant
    assert kept.chosen == {"activation": "relu"}
    plain = decide([inc, close], incumbent={"activation": "relu"}, keep_incumbent=False)
    assert plain.chosen == {"activation": "gelu"}
    beaten = decide([inc, close, far], incumbent={"activation": "relu"}, keep_incumbent=True)
    assert beaten.chosen == {"activation": "tanh"} and beaten.versus_incumbent["significant"]


# -- the rule, on data built to have a real and a null difference -----------------------------

PLAN = """
name = "noise"
[defaults]
hidden = [16, 16]
batch_size = 64
lr = {lr}

[[stages]]
name = "pick"
kind = "sweep"
epochs = 2
objective = "final"
repeats = 5
keep_incumbent_unless_significant = true
[stages.grid]
{grid}
"""


def _run(tmp_path, data, lr, grid):
    (tmp_path / "studies").mkdir(parents=True)
    (tmp_path / "studies" / "noise.toml").write_text(PLAN.format(lr=lr, grid=grid))
    s = session(tmp_path, str(data), plan="noise")
    try:
        return s.run_stage("pick")
    finally:
        s.close()


def test_a_real_difference_is_significant_and_replaces_the_incumbent(tmp_path, msd_file):
    # the default lr (1e-5) barely moves in two epochs; 1e-2 learns: a real difference
    state = _run(tmp_path, msd_file, 1e-5, "lr = [1e-5, 1e-2]")
    d = state.decision
    assert d.incumbent == {"lr": 1e-5} and d.winner == {"lr": 1e-2}
    assert d.significant and d.diff_ci95[0] > 0 and d.n == 5
    assert d.chosen == {"lr": 1e-2} and state.best_params == {"lr": 1e-2}
    summary = state.to_dict()
    assert [p["n"] for p in summary["points"]] == [5, 5]
    for p in summary["points"]:
        assert p["ci95"][0] <= p["mean"] <= p["ci95"][1]
    assert summary["decision"]["significant"] is True


def test_a_null_difference_is_not_significant_and_keeps_the_incumbent(tmp_path):
    # labels independent of the features: no setting can do better than another
    rng = np.random.default_rng(0)
    years = rng.integers(1922, 2011, size=3000)
    features = rng.normal(size=(3000, 90))
    data = write_uci_text(tmp_path / "null.txt", uci_lines(years, features))
    state = _run(tmp_path / "w", data, 1e-2, 'activation = ["relu", "gelu", "tanh"]')
    d = state.decision
    assert d.incumbent == {"activation": "relu"}
    assert not d.significant
    assert d.versus_incumbent is None or not d.versus_incumbent["significant"]
    assert d.chosen == {"activation": "relu"} and state.best_params == {"activation": "relu"}


# -- pruners over peers ---------------------------------------------------------------------

PRUNE_PLAN = """
name = "prune"
[defaults]
hidden = [16, 16]
batch_size = 64

[[stages]]
name = "pick"
{stage}
[stages.grid]
lr = [1e-2, 3e-3, 1e-7]  # 1e-7 stays at its random initial weights: clearly worse
"""


def _pruned_run(tmp_path, data, stage):
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "prune.toml").write_text(PRUNE_PLAN.format(stage=stage))
    s = session(tmp_path, str(data), plan="prune")
    try:
        state = s.run_stage("pick")
    finally:
        s.close()
    assert state.state == "done" and state.best_params == {"lr": 1e-2}
    pruned = {t.params["lr"]: t for t in state.trials if t.state == TrialState.PRUNED}
    assert 1e-7 in pruned and 1e-2 not in pruned and state.n_pruned == len(pruned)
    return pruned[1e-7]


def test_wilcoxon_prunes_a_clearly_worse_point_after_its_first_folds(tmp_path, msd_file):
    stage = 'kind = "cv"\nfolds = 4\nepochs = 2\nobjective = "mean"\npruner = "wilcoxon"'
    pruned = _pruned_run(tmp_path, msd_file, stage + "\nblocks = 8")
    assert pruned.user_attrs["folds_trained"] == 2  # pruner_min_folds, by default 2
    assert sorted(pruned.intermediate_values) == list(range(16))  # two folds' blocks


def test_median_prunes_a_clearly_worse_point_after_warm_up(tmp_path, msd_file):
    stage = 'kind = "sweep"\nepochs = 6\nobjective = "peak"\npruner = "median"'
    pruned = _pruned_run(tmp_path, msd_file, stage + "\npruner_warmup = 2")
    assert pruned.user_attrs["epochs_trained"] == 2
