"""Fused group training: every member trains exactly as it would alone through reference.train."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tuner.train.config import TrainConfig
from tuner.train.history import History
from tuner.train.loop import train_group
from tuner.train.options import FIELDS, activations, inits, losses, norms, optimizers, schedules
from tuner.train.reference import train
from tuner.train.tensors import as_tensors

N_CLASSES = 10
RTOL = 1e-4  # on train and validation losses


def _data(n: int = 600, n_val: int = 200, seed: int = 0):
    """Learnable 10-class data with 90 features: class c lifts every 10th feature."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, n + n_val)
    x = rng.normal(size=(n + n_val, 90)) + 0.8 * (y[:, None] == (np.arange(90) % N_CLASSES))
    xt, yt = as_tensors(x.astype(np.float32), y)
    return xt[:n], yt[:n], xt[n:], yt[n:]


DATA = _data()


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (see conftest)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(hidden=(32, 32), batch_size=64, **kw)


def _alone(cfg, x, y, vx, vy, *, epochs, seed) -> History:
    _, hist = train(cfg, (x, y), (vx, vy), epochs=epochs, seed=seed, n_classes=N_CLASSES)
    return hist


def _assert_same(fused: History, alone: History, n_val: int, what: str = "") -> None:
    assert len(fused.epochs) == len(alone.epochs), what
    for f, a in zip(fused.epochs, alone.epochs, strict=True):
        assert f.epoch == a.epoch
        np.testing.assert_allclose(f.train_loss, a.train_loss, rtol=RTOL, err_msg=what)
        np.testing.assert_allclose(f.val_loss, a.val_loss, rtol=RTOL, err_msg=what)
        assert abs(f.val_acc - a.val_acc) <= 1 / n_val + 1e-12, what


def _check_group(cfgs, seeds, *, epochs=3, data=DATA):
    x, y, vx, vy = data
    fused = train_group(
        cfgs, x, y, vx, vy, epochs=epochs, seeds=seeds, n_classes=N_CLASSES
    ).histories
    assert len(fused) == len(cfgs)
    for cfg, seed, hist in zip(cfgs, seeds, fused, strict=True):
        _assert_same(hist, _alone(cfg, x, y, vx, vy, epochs=epochs, seed=seed), len(vx), str(cfg))
    return fused


def test_optimizers_with_their_own_lr_and_weight_decay():
    """Every registered optimizer, three members each (its own lr, weight decay, momentum),
    in one stack: one optimizer call per distinct setting."""
    settings = [
        {"lr": 1e-3},
        {"lr": 3e-3, "weight_decay": 1e-3, "momentum": 0.5},
        {"lr": 2e-2, "weight_decay": 1e-4, "momentum": 0.0},
    ]
    cfgs = [_cfg(optimizer=o, **kw) for o in optimizers.REGISTRY for kw in settings]
    hists = _check_group(cfgs, [0] * len(cfgs))
    assert max(h.final_acc for h in hists) > 0.3  # they learn


def test_activations():
    acts = list(activations.REGISTRY)
    _check_group([_cfg(activation=a, lr=3e-3) for a in acts], [1] * len(acts))


def test_norms_with_a_last_partial_batch():
    # BatchNorm members get some weight decay: see test_batchnorm_with_adam_and_no_weight_decay.
    x, y, vx, vy = DATA
    # 577 = 9 * 64 + 1: BatchNorm drops the last single-row batch, the others train on it.
    data = (x[:577], y[:577], vx, vy)
    cfgs = [
        _cfg(norm=n, activation=a, weight_decay=1e-3 if norms.get(n).running_stats else wd)
        for n in norms.REGISTRY
        for a, wd in (("relu", 0.0), ("gelu", 1e-3))
    ]
    cfgs.append(_cfg(norm="batch", optimizer="sgd", lr=3e-2))  # SGD: the noise stays noise
    _check_group(cfgs, [2] * len(cfgs), data=data)


def test_batchnorm_with_adam_and_no_weight_decay():
    """The Linear bias before a BatchNorm has a zero gradient up to rounding noise; Adam (and
    RMSprop) without weight decay normalise that noise into steps of about lr. The bias leaves
    the training loss unchanged (batch statistics cancel it) but moves the running mean, so the
    validation loss follows the noise: reference.train itself differs by up to ~0.1% between 1 and
    2 threads here. Train losses still match to RTOL; validation losses to 1%."""
    x, y, vx, vy = DATA
    cfgs = [_cfg(lr=3e-2, norm="batch"), _cfg(lr=3e-3, norm="batch", optimizer="adamw")]
    fused = train_group(cfgs, x, y, vx, vy, epochs=2, seeds=[4, 4], n_classes=N_CLASSES).histories
    for cfg, hist in zip(cfgs, fused, strict=True):
        alone = _alone(cfg, x, y, vx, vy, epochs=2, seed=4)
        for f, a in zip(hist.epochs, alone.epochs, strict=True):
            np.testing.assert_allclose(f.train_loss, a.train_loss, rtol=RTOL)
            np.testing.assert_allclose(f.val_loss, a.val_loss, rtol=1e-2)
            assert abs(f.val_acc - a.val_acc) <= 0.02


def test_inits():
    cfgs = [_cfg(init=i) for i in inits.REGISTRY]
    _check_group(cfgs, [3] * len(cfgs))


def test_three_layers_of_different_widths_and_a_group_of_one():
    cfgs = [
        TrainConfig(hidden=(32, 16, 8), batch_size=64, norm=n, lr=3e-3, weight_decay=1e-3)
        for n in ("layer", "batch")
    ]
    _check_group(cfgs, [5, 5], epochs=2)
    _check_group(cfgs[:1], [6], epochs=2)


def test_different_seeds_per_member():
    cfgs = [
        _cfg(lr=lr, norm=n, weight_decay=1e-3)
        for lr, n in ((1e-3, "none"), (3e-3, "batch"), (1e-3, "layer"))
    ]
    cfgs.append(_cfg(lr=2e-3))
    _check_group(cfgs, [0, 1, 2, 1])


def test_cv_folds_of_unequal_sizes():
    x, y, vx, vy = DATA
    # Validation folds of 215, 200 and 185 rows: training on 385 (= 6 * 64 + 1), 400, 415 rows.
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(5))
    folds = [perm[:215], perm[215:415], perm[415:]]
    trains = [torch.cat([f for j, f in enumerate(folds) if j != i]) for i in range(3)]
    grid = [_cfg(lr=2e-3), _cfg(lr=1e-3, norm="batch", weight_decay=1e-3), _cfg(optimizer="sgd")]
    cfgs, tr, va = [], [], []
    for cfg in grid:
        for i in range(3):
            cfgs.append(cfg)
            tr.append(trains[i])
            va.append(folds[i])
    seeds = [7] * len(cfgs)
    fused = train_group(
        cfgs,
        x,
        y,
        x,
        y,
        epochs=2,
        seeds=seeds,
        n_classes=N_CLASSES,
        train_idx=tr,
        val_idx=va,
    ).histories
    for cfg, t, v, hist in zip(cfgs, tr, va, fused, strict=True):
        alone = _alone(cfg, x[t], y[t], x[v], y[v], epochs=2, seed=7)
        _assert_same(hist, alone, len(v), f"{cfg} fold of {len(t)}")


def test_schedules_label_smoothing_and_class_weights():
    """Each member's scheduled learning rate, smoothed and class-weighted training loss match
    torch's schedulers and nn.CrossEntropyLoss(weight, label_smoothing), for every registered
    schedule and class weighting."""
    cfgs = [
        *(_cfg(schedule=s, lr=3e-3) for s in schedules.REGISTRY),
        _cfg(schedule="onecycle", optimizer="sgd", lr=5e-2),
        _cfg(schedule="onecycle", optimizer="rmsprop", lr=1e-3, norm="layer"),
        _cfg(label_smoothing=0.1),
        *(_cfg(class_weight=w, optimizer="adamw", weight_decay=1e-2) for w in losses.REGISTRY),
        _cfg(class_weight="sqrt_balanced", label_smoothing=0.05, schedule="cosine"),
        _cfg(),
    ]
    x, y, vx, vy = DATA
    y = torch.where(y < 3, y, torch.where(y % 2 == 0, 3, 4))  # imbalanced: 3 small, 2 big classes
    hists = _check_group(cfgs, [2] * len(cfgs), data=(x, y, vx, vy))
    # the settings change what is trained: no two members end alike
    finals = [h.epochs[-1].train_loss for h in hists]
    assert len({round(v, 6) for v in finals}) == len(cfgs)


# What each family's entries are compared under, where the tolerances above hold: norms with
# some weight decay (see test_batchnorm_with_adam_and_no_weight_decay), class weightings on
# imbalanced labels. A new family needs its line here.
FAMILY_SETTINGS: dict[str, dict] = {
    "activation": {"lr": 3e-3},
    "norm": {"weight_decay": 1e-3},
    "init": {},
    "optimizer": {"lr": 3e-3, "weight_decay": 1e-3, "momentum": 0.5},
    "schedule": {"lr": 3e-3},
    "class_weight": {"label_smoothing": 0.05},
    "embedding": {"lr": 3e-3, "embedding_dim": 4, "bins": 8, "frequency_scale": 0.1},
}


@pytest.mark.parametrize(
    ("field", "name"),
    [pytest.param(f, n, id=f"{f}={n}") for f, entries in FIELDS.items() for n in entries],
)
def test_every_registered_option_trains_as_in_the_reference_engine(field, name):
    """Every entry of every registry in tuner.train.options, alone in a stack and in a mixed
    stack (itself at a second learning rate, and another entry of its family), trains as
    reference.train trains it alone. An entry without its fused half cannot be instantiated
    (abstract methods); one whose fused half differs from its reference form fails here."""
    names = list(FIELDS[field])
    other = names[(names.index(name) + 1) % len(names)]
    if field == "embedding":  # the members of a stack share their embedding's shape
        other = name
    settings = FAMILY_SETTINGS[field]
    x, y, vx, vy = DATA
    if field == "class_weight":
        y = torch.where(y < 3, y, torch.where(y % 2 == 0, 3, 4))
    data = (x[:577], y[:577], vx, vy)  # 577 = 9 * 64 + 1: a last batch of one row
    cfg = _cfg(**settings, **{field: name})
    _check_group([cfg], [8], epochs=2, data=data)
    mixed = [cfg, cfg.with_params({"lr": cfg.lr / 2}), _cfg(**settings, **{field: other})]
    _check_group(mixed, [8, 8, 9], epochs=2, data=data)


def test_class_weights_follow_each_members_training_rows():
    x, y, vx, vy = DATA
    rows = [torch.arange(0, 400), torch.nonzero(y % 3 != 0).squeeze(1)]  # the 2nd lacks classes
    cfgs = [_cfg(class_weight="balanced", label_smoothing=0.1)] * 2
    fused = train_group(
        cfgs, x, y, vx, vy, epochs=2, seeds=[1, 1], n_classes=N_CLASSES, train_idx=rows
    ).histories
    for cfg, r, hist in zip(cfgs, rows, fused, strict=True):
        _assert_same(hist, _alone(cfg, x[r], y[r], vx, vy, epochs=2, seed=1), len(vx))


def test_dropout_step_matches_autograd_with_the_same_masks():
    """One SGD step of a dropout member equals autograd through the same masks, which come
    from the member's own generator (seed ^ DROPOUT_SEED), one draw per hidden layer."""
    from tuner.train.loss import DROPOUT_SEED, dropout_mask
    from tuner.train.model import build_model, seeded
    from tuner.train.stack import FusedGroup

    x, y, _, _ = DATA
    cfg = _cfg(dropout=0.4, optimizer="sgd", momentum=0.0, lr=0.1, activation="gelu")
    plain = _cfg(optimizer="sgd", momentum=0.0, lr=0.1, activation="gelu")
    fg = FusedGroup([plain, cfg], 90, N_CLASSES, seeds=[3, 3])
    xb, yb = x[:64], y[:64]
    fg.train_step(xb, yb)
    with seeded(3):
        model = build_model(cfg, 90, N_CLASSES)
    gen = torch.Generator().manual_seed(3 ^ DROPOUT_SEED)
    h = xb
    lins = [m for m in model if isinstance(m, torch.nn.Linear)]
    for lin in lins[:-1]:
        h = torch.nn.functional.gelu(lin(h)) * dropout_mask(0.4, (64, lin.out_features), gen)
    loss = torch.nn.functional.cross_entropy(lins[-1](h), yb)
    loss.backward()
    exported = fg.export(1)
    got = [m for m in exported if isinstance(m, torch.nn.Linear)]
    for lin, new in zip(lins, got, strict=True):
        torch.testing.assert_close(new.weight, lin.weight - 0.1 * lin.weight.grad)
        torch.testing.assert_close(new.bias, lin.bias - 0.1 * lin.bias.grad)
    assert any(isinstance(m, torch.nn.Dropout) for m in exported)


def test_dropout_member_trains_the_same_inside_a_group_and_alone():
    x, y, vx, vy = DATA
    cfgs = [
        _cfg(dropout=0.3, lr=1e-2),
        _cfg(dropout=0.1, norm="batch", lr=2e-3),
        _cfg(lr=1e-2),
        _cfg(dropout=0.5, schedule="cosine", lr=1e-2),
    ]
    seeds = [0, 0, 0, 1]
    together = train_group(cfgs, x, y, vx, vy, epochs=3, seeds=seeds, n_classes=N_CLASSES).histories
    for cfg, seed, hist in zip(cfgs, seeds, together, strict=True):
        (alone,) = train_group(
            [cfg], x, y, vx, vy, epochs=3, seeds=[seed], n_classes=N_CLASSES
        ).histories
        _assert_same(hist, alone, len(vx), str(cfg))
    # dropout changes training: the p=0.3 member differs from the plain one with the same seed
    assert together[0].epochs[0].train_loss != pytest.approx(together[2].epochs[0].train_loss)
    assert together[0].final_acc > 0.3  # and it learns


def test_dropped_member_leaves_the_others_unchanged():
    x, y, vx, vy = DATA
    cfgs = [
        _cfg(lr=1e-3),
        _cfg(lr=3e-2, norm="batch", weight_decay=1e-3),
        _cfg(lr=2e-3, optimizer="rmsprop"),
    ]
    seen = []

    def on_epoch(epoch, stats):
        seen.append((epoch, [s is not None for s in stats]))
        return {1} if epoch == 1 else None

    fused = train_group(
        cfgs, x, y, vx, vy, epochs=3, seeds=[4, 4, 4], n_classes=N_CLASSES, on_epoch=on_epoch
    ).histories
    assert seen == [(1, [True, True, True]), (2, [True, False, True]), (3, [True, False, True])]
    assert len(fused[1].epochs) == 1 and fused[1].stopped_early
    assert not fused[0].stopped_early
    for k in (0, 2):
        _assert_same(fused[k], _alone(cfgs[k], x, y, vx, vy, epochs=3, seed=4), len(vx))
    _assert_same(fused[1], _alone(cfgs[1], x, y, vx, vy, epochs=1, seed=4), len(vx))


def test_on_epoch_may_raise_to_stop():
    x, y, vx, vy = DATA

    def on_epoch(epoch, stats):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_group(
            [_cfg()], x, y, vx, vy, epochs=2, seeds=[0], n_classes=N_CLASSES, on_epoch=on_epoch
        )


def test_exported_member_matches_the_model_trained_alone():
    x, y, vx, vy = DATA
    cfgs = [_cfg(norm="batch", lr=1e-3, weight_decay=1e-3), _cfg(norm="layer", optimizer="sgd")]
    result = train_group(cfgs, x, y, vx, vy, epochs=2, seeds=[0, 0], n_classes=N_CLASSES)
    for k, cfg in enumerate(cfgs):
        model, _ = train(cfg, (x, y), (vx, vy), epochs=2, seed=0, n_classes=N_CLASSES)
        exported = result.export(k)
        for name, ref in model.state_dict().items():
            got = exported.state_dict()[name]
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize(
    "bad",
    [
        {"hidden": (32, 16)},
        {"batch_size": 32},
    ],
)
def test_members_must_share_widths_and_batch_size(bad):
    x, y, vx, vy = DATA
    cfgs = [_cfg(), TrainConfig(**{"hidden": (32, 32), "batch_size": 64, **bad})]
    with pytest.raises(ValueError, match="hidden|batch_size"):
        train_group(cfgs, x, y, vx, vy, epochs=1, seeds=[0, 0], n_classes=N_CLASSES)


def test_bad_arguments():
    x, y, vx, vy = DATA
    with pytest.raises(ValueError, match="seeds"):
        train_group([_cfg()], x, y, vx, vy, epochs=1, seeds=[0, 1], n_classes=N_CLASSES)
    with pytest.raises(ValueError, match="precision"):
        train_group(
            [_cfg()], x, y, vx, vy, epochs=1, seeds=[0], n_classes=N_CLASSES, precision="fp8"
        )
    with pytest.raises(ValueError, match="train_idx"):
        train_group([_cfg()], x, y, vx, vy, epochs=1, seeds=[0], n_classes=N_CLASSES, train_idx=[])
    assert train_group([], x, y, vx, vy, epochs=1, seeds=[], n_classes=N_CLASSES).histories == []


def test_bf16_trains_close_to_fp32():
    x, y, vx, vy = DATA
    cfgs = [_cfg(lr=3e-3), _cfg(lr=3e-3, norm="layer", activation="gelu")]
    fp32 = train_group(cfgs, x, y, vx, vy, epochs=3, seeds=[0, 0], n_classes=N_CLASSES).histories
    bf16 = train_group(
        cfgs, x, y, vx, vy, epochs=3, seeds=[0, 0], n_classes=N_CLASSES, precision="bf16"
    ).histories
    for a, b in zip(fp32, bf16, strict=True):
        assert a.final_acc > 0.3
        assert abs(a.final_acc - b.final_acc) <= 0.05
        assert abs(a.epochs[-1].val_loss - b.epochs[-1].val_loss) <= 0.05 * a.epochs[-1].val_loss


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    x, y, vx, vy = DATA
    cfgs = [_cfg(lr=2e-3), _cfg(norm="batch", optimizer="sgd"), _cfg(optimizer="rmsprop")]
    cpu = train_group(cfgs, x, y, vx, vy, epochs=2, seeds=[0, 1, 0], n_classes=N_CLASSES).histories
    gpu = train_group(
        cfgs, x, y, vx, vy, epochs=2, seeds=[0, 1, 0], n_classes=N_CLASSES, device="cuda"
    ).histories
    for a, b in zip(cpu, gpu, strict=True):
        # TF32 may be on for CUDA matmuls: compare loosely.
        np.testing.assert_allclose(
            [e.val_loss for e in a.epochs], [e.val_loss for e in b.epochs], rtol=2e-2
        )
