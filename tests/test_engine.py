"""The training loop and the LR range test on small data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tuner.train.config import TrainConfig
from tuner.train.lr_range import range_test, snap, steepest_lr
from tuner.train.model import build_model
from tuner.train.reference import train
from tuner.train.tensors import as_tensors


def _blobs(n=1200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 8)) + y[:, None] * 1.5
    return as_tensors(x.astype(np.float32), y)


@pytest.mark.slow
def test_training_is_deterministic_per_seed_and_learns():
    data = _blobs()
    cfg = TrainConfig(hidden=(16,), lr=1e-2, batch_size=32)
    _, h1 = train(cfg, data, data, epochs=3, seed=1, n_classes=3)
    _, h2 = train(cfg, data, data, epochs=3, seed=1, n_classes=3)
    _, h3 = train(cfg, data, data, epochs=3, seed=2, n_classes=3)
    assert h1.to_dict()["train_loss"] == h2.to_dict()["train_loss"]
    assert h1.to_dict()["train_loss"] != h3.to_dict()["train_loss"]
    assert h1.final_acc > 0.8
    assert h1.epochs[-1].train_loss < h1.epochs[0].train_loss


@pytest.mark.parametrize("norm", ["none", "batch", "layer"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd", "rmsprop"])
def test_every_published_component_trains(norm, optimizer):
    data = _blobs(301)  # 301 = 9 batches of 32 + 13: the last partial batch is trained too
    cfg = TrainConfig(hidden=(16, 16), norm=norm, optimizer=optimizer, lr=1e-2, batch_size=32)
    model, hist = train(cfg, data, data, epochs=2, seed=0, n_classes=3)
    assert np.isfinite(hist.epochs[-1].val_loss)
    assert not model.training


def test_early_stopping_stops_and_can_restore_best():
    data = _blobs(400)
    noise = as_tensors(
        np.random.default_rng(1).normal(size=(200, 8)).astype(np.float32),
        np.random.default_rng(2).integers(0, 3, 200),
    )
    cfg = TrainConfig(hidden=(64,), lr=5e-2, batch_size=16)
    _, hist = train(cfg, data, noise, epochs=30, seed=0, n_classes=3, patience=2)
    assert hist.stopped_early and len(hist.epochs) < 30


def test_inits_differ_and_default_is_pytorchs():
    cfg = TrainConfig(hidden=(32,))
    torch.manual_seed(0)
    default = build_model(cfg, 8, 3)
    torch.manual_seed(0)
    xavier = build_model(cfg.with_params({"init": "xavier_uniform"}), 8, 3)
    torch.manual_seed(0)
    plain = torch.nn.Linear(8, 32)
    assert torch.equal(default[0].weight, plain.weight)
    assert not torch.equal(xavier[0].weight, plain.weight)
    assert torch.count_nonzero(xavier[0].bias) == 0


def test_steepest_lr_and_snap():
    lrs = list(np.logspace(-7, 0, 60))
    # a loss that falls fastest around 1e-3
    losses = [2.0 - 1.0 / (1 + np.exp(-(np.log10(lr) + 3) * 4)) for lr in lrs]
    s = steepest_lr(lrs, losses)
    assert 3e-4 < s < 3e-3
    assert snap(2.3e-3, "decade") == pytest.approx(1e-3)
    assert snap(4e-3, "decade") == pytest.approx(1e-2)
    assert snap(2.3e-3, "none") == 2.3e-3


def test_steepest_lr_ignores_drops_between_spikes_after_the_minimum():
    lrs = list(np.logspace(-7, 0, 80))
    losses = [2.0 - 1.0 / (1 + np.exp(-(np.log10(lr) + 3) * 4)) for lr in lrs]
    # diverging: the loss climbs past 1e-2 with a spike and a sharp drop near 0.2
    for i, lr in enumerate(lrs):
        if lr > 1e-2:
            losses[i] += 0.5 * np.log10(lr / 1e-2) + (3.0 if 0.1 < lr < 0.2 else 0.0)
    assert 3e-4 < steepest_lr(lrs, losses) < 3e-3


def test_range_test_records_an_increasing_lr_curve():
    data = _blobs(2000)
    cfg = TrainConfig(hidden=(16,), batch_size=32)
    result = range_test(cfg, data, n_classes=3, seed=0, optimizer=cfg.optimizer)
    assert result.lrs == sorted(result.lrs) and result.lrs[0] == pytest.approx(1e-7)
    assert len(result.losses) == len(result.lrs) >= 20
    assert result.lrs[0] <= result.suggestion <= result.lrs[-1]
    assert result.chosen == snap(result.suggestion, "decade")


def test_dropout_keeps_one_minus_p_of_the_activations_scaled_and_is_off_in_eval():
    """The reference form's dropout (what ensembles train through): each activation is kept
    with probability 1-p and scaled by 1/(1-p), reproducibly under a seed; eval mode passes
    through; under bf16 autocast the output stays bf16."""
    from tuner.train.model import Dropout, seeded

    model = build_model(TrainConfig(hidden=(64,), dropout=0.25), 10, 3)
    (drop,) = [m for m in model if isinstance(m, torch.nn.Dropout)]
    assert isinstance(drop, Dropout)
    x = torch.ones(400, 500)
    with seeded(1):
        a = drop.train()(x)
    with seeded(1):
        b = drop(x)
    assert torch.equal(a, b) and not torch.equal(a, drop(x))
    assert torch.equal(a.unique(), torch.tensor([0.0, 4 / 3]))
    assert abs((a > 0).float().mean().item() - 0.75) < 0.005  # 200,000 draws: sd 0.001
    assert torch.equal(drop.eval()(x), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert drop.train()(x.bfloat16()).dtype == torch.bfloat16
