"""Stage objectives on fused groups: the values a stage records are those of each grid point
trained alone (sweeps, CV folds, repeats), and the final job's single-trial path keeps
reference.train's early stopping and best-weights contract."""

from __future__ import annotations

import dataclasses
import statistics

import numpy as np
import pytest
import torch

from tuner.train.compute import Compute
from tuner.train.config import TrainConfig
from tuner.train.loop import train_one
from tuner.train.reference import train
from tuner.train.tensors import TensorData, as_tensors
from tuner.tune.kinds import stage_spec
from tuner.tune.kinds.cv import cv_folds
from tuner.tune.objectives import evaluate_points
from tuner.tune.runs import summarize

N_CLASSES = 10


def _data(n: int = 600, n_val: int = 200, seed: int = 0) -> TensorData:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, n + n_val)
    x = rng.normal(size=(n + n_val, 90)) + 0.8 * (y[:, None] == (np.arange(90) % N_CLASSES))
    xt, yt = as_tensors(x.astype(np.float32), y)
    return TensorData(
        train=(xt[:n], yt[:n]),
        val=(xt[n:], yt[n:]),
        test=(xt[n:], yt[n:]),
        n_classes=N_CLASSES,
        key="test",
    )


DATA = _data()


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (see conftest)


def _cfgs(**grid) -> list[TrainConfig]:
    ((name, values),) = grid.items()
    base = TrainConfig(hidden=(32, 32), batch_size=64, lr=3e-3)
    return [base.with_params({name: v}) for v in values]


def _alone(cfg, train_xy, val_xy, *, epochs, seed):
    _, hist = train(cfg, train_xy, val_xy, epochs=epochs, seed=seed, n_classes=N_CLASSES)
    return hist


class Recorder:
    """A Reporter that keeps every report and prunes what ``prune(point, step)`` says."""

    def __init__(self, prune=lambda point, step: False):
        self.reports: list[tuple[int, float, int]] = []
        self.epochs = 0
        self._prune = prune

    def report(self, point, value, step):
        self.reports.append((point, value, step))

    def should_prune(self, point):
        steps = [s for p, _, s in self.reports if p == point]
        return self._prune(point, steps[-1])

    def progress(self, epoch):
        self.epochs += 1


def test_sweep_points_score_each_point_as_trained_alone():
    stage = stage_spec(name="act", kind="sweep", epochs=3, objective="peak")
    cfgs = _cfgs(activation=["relu", "gelu", "leaky_relu"])
    rec = Recorder()
    results = evaluate_points(stage, cfgs, DATA, seed=7, reporter=rec)
    reported = rec.reports
    assert rec.epochs == 3
    for i, (cfg, result) in enumerate(zip(cfgs, results, strict=True)):
        alone = _alone(cfg, DATA.train, DATA.val, epochs=3, seed=7)
        assert result.value == pytest.approx(alone.peak_acc, abs=1 / 200 + 1e-12)
        assert [s for j, _, s in reported if j == i] == [1, 2, 3]
        assert result.attrs["n"] == 1 and result.attrs["ci95"] == [result.value] * 2
        assert not result.pruned


def test_cv_points_are_the_mean_of_folds_trained_alone():
    stage = stage_spec(name="wd", kind="cv", folds=3, epochs=2, objective="mean")
    cfgs = _cfgs(weight_decay=[0.0, 1e-2])
    results = evaluate_points(stage, cfgs, DATA, seed=3)
    x, y = DATA.train
    folds = cv_folds(y.numpy(), 3, 3)
    for cfg, result in zip(cfgs, results, strict=True):
        accs = []
        for tr, va in folds:
            tr_t, va_t = torch.from_numpy(tr), torch.from_numpy(va)
            hist = _alone(cfg, (x[tr_t], y[tr_t]), (x[va_t], y[va_t]), epochs=2, seed=3)
            accs.append(hist.final_acc)
        np.testing.assert_allclose(result.attrs["fold_values"], accs, atol=1 / 200)
        assert result.value == pytest.approx(statistics.fmean(result.attrs["fold_values"]))
        assert result.attrs["std"] == pytest.approx(statistics.stdev(result.attrs["fold_values"]))
        assert len(result.attrs["history"]) == 3


def test_repeats_average_over_seeds_and_give_an_interval():
    stage = stage_spec(name="act", kind="sweep", epochs=2, objective="final", repeats=3)
    cfgs = _cfgs(activation=["relu", "gelu"])
    results = evaluate_points(stage, cfgs, DATA, seed=10)
    for cfg, result in zip(cfgs, results, strict=True):
        alone = [
            _alone(cfg, DATA.train, DATA.val, epochs=2, seed=s).final_acc for s in (10, 11, 12)
        ]
        np.testing.assert_allclose(result.attrs["values"], alone, atol=1 / 200)
        lo, hi = result.attrs["ci95"]
        assert result.attrs["n"] == 3 and lo <= result.value <= hi
        assert hi - lo > 0  # three different seeds do not agree to the last row


def test_a_pruned_point_stops_and_is_marked():
    stage = stage_spec(name="act", kind="sweep", epochs=4, objective="peak")
    cfgs = _cfgs(activation=["relu", "gelu"])
    rec = Recorder(prune=lambda i, step: i == 1 and step == 2)
    results = evaluate_points(stage, cfgs, DATA, seed=0, reporter=rec)
    assert not results[0].pruned and results[0].attrs["epochs_trained"] == 4
    assert results[1].pruned and results[1].attrs["epochs_trained"] == 2


def test_cv_by_fold_reports_blocks_and_skips_the_folds_of_a_pruned_point():
    stage = stage_spec(
        name="wd", kind="cv", folds=3, epochs=2, objective="mean", pruner="wilcoxon", blocks=4
    )
    cfgs = _cfgs(weight_decay=[0.0, 1e-2, 1e-4])
    rec = Recorder(prune=lambda i, step: i == 1 and step >= 3)  # after the first fold
    results = evaluate_points(stage, cfgs, DATA, seed=3, reporter=rec)
    assert sorted({s for p, _, s in rec.reports if p == 0}) == list(range(12))
    assert sorted({s for p, _, s in rec.reports if p == 1}) == [0, 1, 2, 3]
    assert results[1].pruned and results[1].attrs["folds_trained"] == 1
    assert results[1].attrs["member_epochs"] == 2 and results[0].attrs["member_epochs"] == 6
    # unpruned points score exactly as in the all-folds-at-once run
    plain = evaluate_points(dataclasses.replace(stage, pruner="none"), cfgs, DATA, seed=3)
    for i in (0, 2):
        np.testing.assert_allclose(
            results[i].attrs["fold_values"], plain[i].attrs["fold_values"], atol=1 / 200
        )
    # the blocks of a fold average to the fold's accuracy
    blocks = [v for p, v, s in rec.reports if p == 0 and s < 4]
    assert statistics.fmean(blocks) == pytest.approx(results[0].attrs["fold_values"][0], abs=0.01)


def test_points_of_other_widths_train_in_their_own_group():
    stage = stage_spec(name="arch", kind="sweep", epochs=2, objective="final")
    cfgs = _cfgs(hidden=[(32, 32), (16,), (32, 32)])
    results = evaluate_points(stage, cfgs, DATA, seed=1)
    for cfg, result in zip(cfgs, results, strict=True):
        alone = _alone(cfg, DATA.train, DATA.val, epochs=2, seed=1)
        assert result.value == pytest.approx(alone.final_acc, abs=1 / 200 + 1e-12)


def test_summarize_gives_a_t_interval():
    s = summarize([0.6, 0.62, 0.64])
    assert s["mean"] == pytest.approx(0.62) and s["n"] == 3
    # t(0.975, 2) = 4.303; std 0.02; half-width 4.303 * 0.02 / sqrt(3)
    assert s["ci95"][1] - s["mean"] == pytest.approx(4.303 * 0.02 / 3**0.5, rel=1e-3)


@pytest.mark.parametrize("restore_best", [False, True])
def test_train_one_keeps_engine_trains_early_stopping(restore_best):
    rng = np.random.default_rng(1)
    noise = as_tensors(rng.normal(size=(200, 90)).astype(np.float32), rng.integers(0, 10, 200))
    cfg = TrainConfig(hidden=(32, 32), batch_size=64, lr=1e-2)
    kw = dict(epochs=12, seed=0, n_classes=N_CLASSES, patience=2, restore_best=restore_best)
    ref_model, ref = train(cfg, DATA.train, noise, **kw)
    model, hist = train_one(cfg, DATA.train, noise, **kw)
    assert hist.stopped_early and ref.stopped_early
    assert len(hist.epochs) == len(ref.epochs) < 12
    for a, b in zip(ref_model.state_dict().values(), model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_compute_resolves_devices_and_rejects_what_is_not_there():
    assert Compute.resolve("cpu").device == "cpu"
    auto = Compute.resolve("auto")
    assert auto.device == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        Compute.resolve("tpu")
    with pytest.raises(ValueError, match="unknown precision"):
        Compute.resolve("cpu", "fp8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            Compute.resolve("cuda")


def test_bf16_on_a_cpu_without_native_bf16_warns(caplog, monkeypatch):
    import tuner.train.compute as compute

    monkeypatch.setattr(compute, "cpu_has_native_bf16", lambda: False)
    assert Compute.resolve("cpu", "bf16") == Compute("cpu", "bf16")
    assert "no native bf16" in caplog.text
    caplog.clear()
    monkeypatch.setattr(compute, "cpu_has_native_bf16", lambda: True)
    Compute.resolve("cpu", "bf16")
    assert "no native bf16" not in caplog.text
