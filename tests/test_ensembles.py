"""Ensembles trained as one model (tuner.train.ensemble, tuner.train.ensemble_group): TabM's
BatchEnsemble and packed MLPs, the mean-of-members training loss, the log-mean-probability
output, both engines side by side, model.pt, and identity at the default of one member."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests._util import assert_model_predicts_as_scored, session, write_tiny_plan
from tests.test_embeddings import DATA, N_CLASSES, trained_as_alone
from tuner.config import content_hash
from tuner.errors import PlanError
from tuner.train.config import TrainConfig
from tuner.train.ensemble import BatchEnsemble, PackedEnsemble, log_mean_prob
from tuner.train.loop import train_group, train_one
from tuner.train.model import build_model, evaluate, seeded
from tuner.train.reference import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (see conftest)


def _cfg(k: int = 4, kind: str = "batch", **kw) -> TrainConfig:
    kw = {"lr": 3e-3, **kw}
    return TrainConfig(hidden=(32, 32), batch_size=64, ensemble=k, ensemble_kind=kind, **kw)


def _member_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.train()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("kind", ["batch", "mini", "packed"])
def test_eval_output_is_the_log_of_the_members_mean_softmax(kind):
    x, *_ = DATA
    with seeded(0):
        model = build_model(_cfg(4, kind), 20, N_CLASSES)
    logits = _member_logits(model, x[:50])
    assert logits.shape == (4, 50, N_CLASSES)
    assert not torch.allclose(logits[0], logits[1])  # the members differ
    model.eval()
    with torch.no_grad():
        out = model(x[:50])
    expected = torch.log(torch.softmax(logits, dim=2).mean(0))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(log_mean_prob(logits), expected, rtol=1e-5, atol=1e-6)
    # its cross-entropy is the ensemble's negative log-likelihood
    loss, acc = evaluate(model, x[:50], DATA[1][:50])
    nll = -expected.gather(1, DATA[1][:50, None]).mean().item()
    assert loss == pytest.approx(nll, rel=1e-5)
    assert acc == int((expected.argmax(1) == DATA[1][:50]).sum()) / 50


def test_batch_ensemble_shares_weights_and_starts_as_tabm():
    with seeded(0):
        model = build_model(_cfg(4, "batch"), 20, N_CLASSES)
    assert isinstance(model, BatchEnsemble)
    first, second = model.linears
    assert first.weight.shape == (32, 20)  # one W for every member
    assert set(first.r.unique().tolist()) == {-1.0, 1.0}  # the first r: random signs
    assert torch.equal(second.r, torch.ones(4, 32))
    assert torch.equal(first.s, torch.ones(4, 32)) and torch.equal(second.s, torch.ones(4, 32))
    assert torch.equal(first.bias, first.bias[:1].expand(4, -1))  # one draw, every member
    assert first.bias.abs().max() <= 20**-0.5
    assert len(model.heads) == 4 and not torch.equal(model.heads[0].weight, model.heads[1].weight)
    with seeded(0):
        packed = build_model(_cfg(3, "packed"), 20, N_CLASSES)
    assert isinstance(packed, PackedEnsemble)
    ws = [net[0].weight for net in packed.nets]
    assert not torch.equal(ws[0], ws[1]) and not torch.equal(ws[1], ws[2])
    with seeded(0):  # behind a numeric embedding, TabM.make starts the first r from N(0, 1)
        embedded = build_model(_cfg(4, "batch", embedding="plr"), 20, N_CLASSES)
    r = embedded.linears[0].r
    assert r.shape == (4, 20 * 16) and len(r.unique()) > 1000 and abs(r.std().item() - 1) < 0.1
    assert torch.equal(embedded.linears[1].r, torch.ones(4, 32))
    with seeded(0):  # TabM-mini: one adapter on the input, then the shared layers
        mini = build_model(_cfg(4, "mini"), 20, N_CLASSES)
    adapter, first = mini.linears[0]
    assert adapter.r.shape == (4, 20) and set(adapter.r.unique().tolist()) == {-1.0, 1.0}
    assert isinstance(first, nn.Linear) and isinstance(mini.linears[1], nn.Linear)
    assert len([p for p in mini.parameters() if p.shape == (4, 20)]) == 1


@pytest.mark.parametrize("kind", ["batch", "mini", "packed"])
def test_the_training_loss_is_the_mean_of_the_members_losses(kind):
    """One batch per epoch: epoch 1's training loss is the loss at the initial weights."""
    x, y, vx, vy = DATA
    cfg = _cfg(3, kind, label_smoothing=0.1).with_params({"batch_size": len(x)})
    with seeded(5):
        model = build_model(cfg, 20, N_CLASSES)
    logits = _member_logits(model, x)
    ce = nn.CrossEntropyLoss(label_smoothing=0.1)
    mean_of_members = torch.stack([ce(lg, y) for lg in logits]).mean().item()
    of_the_mean = ce(log_mean_prob(logits), y).item()
    assert abs(mean_of_members - of_the_mean) > 1e-4
    _, ref = train(cfg, (x, y), (vx, vy), epochs=1, seed=5, n_classes=N_CLASSES)
    fused = train_group([cfg], x, y, vx, vy, epochs=1, seeds=[5], n_classes=N_CLASSES)
    for hist in (ref, fused.histories[0]):
        assert hist.epochs[0].train_loss == pytest.approx(mean_of_members, rel=1e-5)


@pytest.mark.parametrize(
    "extra",
    [{}, {"norm": "batch", "embedding": "ple", "bins": 8, "embedding_dim": 4}],
    ids=["plain", "batchnorm-ple"],
)
@pytest.mark.parametrize("kind", ["batch", "mini", "packed"])
def test_ensembles_train_in_a_group_as_in_the_reference_engine(kind, extra):
    """Alone, and in a group with their own rows (folds), learning rates, optimizers and seeds;
    and an ensemble is not its first member alone (K=1 reports other numbers)."""
    x, y, vx, vy = DATA
    cfgs = [
        _cfg(4, kind, **extra),
        _cfg(4, kind, lr=1e-2, activation="gelu", **extra),
        _cfg(4, kind, optimizer="sgd", lr=0.05, schedule="cosine", **extra),
    ]
    seeds = [3, 3, 4]
    rows = [torch.arange(0, 600), torch.arange(0, 450), torch.arange(150, 600)]
    fused = trained_as_alone(cfgs, seeds, rows)
    single = train_group(
        [c.with_params({"ensemble": 1}) for c in cfgs[:1]],
        x, y, vx, vy, epochs=3, seeds=seeds[:1], n_classes=N_CLASSES,
    ).histories[0]  # fmt: skip
    diffs = [
        abs(getattr(a, f) - getattr(b, f))
        for a, b in zip(single.epochs, fused[0].epochs, strict=True)
        for f in ("train_loss", "val_loss")
    ]
    assert max(diffs) > 1e-3
    assert max(h.final_acc for h in fused) > 0.2  # it learns (chance: 0.1)


def test_dropout_masks_follow_the_member_not_the_group():
    x, y, vx, vy = DATA
    cfg = _cfg(3, "batch", dropout=0.2)
    other = _cfg(3, "batch", dropout=0.2, lr=1e-2)
    alone = train_group([cfg], x, y, vx, vy, epochs=2, seeds=[1], n_classes=N_CLASSES)
    mixed = train_group([other, cfg], x, y, vx, vy, epochs=2, seeds=[2, 1], n_classes=N_CLASSES)
    assert alone.histories[0].epochs == [
        e.__class__(e.epoch, e.train_loss, e.val_loss, e.val_acc, a.seconds)
        for e, a in zip(mixed.histories[1].epochs, alone.histories[0].epochs, strict=True)
    ]


def test_early_stopping_restores_the_ensembles_best_epoch():
    x, y, vx, vy = DATA
    cfg = _cfg(3, "packed", lr=0.05)
    model, hist = train_one(
        cfg, (x, y), (vx, vy), epochs=6, seed=0, n_classes=N_CLASSES, patience=2,
        restore_best=True,
    )  # fmt: skip
    assert isinstance(model, PackedEnsemble) and not model.training
    best = min(e.val_loss for e in hist.epochs)
    assert evaluate(model, vx, vy)[0] == pytest.approx(best, rel=1e-5)


def test_a_stage_grid_over_ensembles_trains_one_stack_per_size_and_kind():
    from tuner.tune.runs import fusable

    cfgs = [
        _cfg(1),
        _cfg(4),
        _cfg(4, "packed"),
        _cfg(1, "packed"),  # one member: a plain MLP whatever the kind
        _cfg(2),
        _cfg(4, lr=1e-2),
    ]
    assert fusable(cfgs) == [[0, 3], [1, 5], [2], [4]]
    with pytest.raises(ValueError, match="ensemble"):
        train_group([cfgs[0], cfgs[1]], *DATA, epochs=1, seeds=[0, 0], n_classes=N_CLASSES)


def test_one_member_leaves_identity_and_training_unchanged():
    default = TrainConfig(hidden=(16, 16), batch_size=64)
    one = TrainConfig(hidden=(16, 16), batch_size=64, ensemble=1, ensemble_kind="batch")
    assert one.to_dict() == default.to_dict()
    assert not {"ensemble", "ensemble_kind"} & set(one.to_dict())
    # the content hashes of before the fields existed
    assert content_hash(TrainConfig().to_dict()) == "70a25f5fc6f56727"
    assert content_hash(one.to_dict()) == "3e179522385e5909"
    assert _cfg(4).to_dict()["ensemble"] == 4
    assert "ensemble_kind" not in _cfg(4).to_dict()  # its default
    x, y, vx, vy = DATA
    a = train_group([default], x, y, vx, vy, epochs=1, seeds=[0], n_classes=N_CLASSES)
    one = one.with_params({"ensemble_kind": "packed"})  # no kind for one member
    b = train_group([one], x, y, vx, vy, epochs=1, seeds=[0], n_classes=N_CLASSES)
    assert a.histories[0].epochs[0].val_loss == b.histories[0].epochs[0].val_loss
    assert type(a.export(0)) is type(b.export(0)) is nn.Sequential


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("ensemble", 0, "ensemble must be in [1, 64], got 0"),
        ("ensemble", 2.5, "ensemble"),
        ("ensemble_kind", "bagging", "choose one of: batch, mini, packed"),
    ],
)
def test_ensemble_fields_are_checked_with_one_line_errors(field, value, expected):
    with pytest.raises(PlanError, match=expected.replace("[", r"\[")) as err:
        TrainConfig(**{field: value})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["batch", "mini", "packed"])
def test_model_pt_with_an_ensemble_loads_weights_only_and_predicts_as_trained(
    tmp_path, msd_file, kind
):
    write_tiny_plan(tmp_path)
    fixes = {
        "lr": "0.01",
        "weight_decay": "0",
        "activation": "relu",
        "norm": "none",
        "optimizer": "adam",
        "ensemble": "3",
        "ensemble_kind": kind,
    }
    from tuner.tune.final import run_final

    s = session(tmp_path, str(msd_file), fixes=fixes)
    assert run_final(s).state == "done"
    out = tmp_path / "models" / "tiny"
    bundle = torch.load(out / "model.pt", weights_only=True)
    assert bundle["config"]["ensemble"] == 3
    model = assert_model_predicts_as_scored(s, out, tmp_path)
    assert isinstance(model, PackedEnsemble if kind == "packed" else BatchEnsemble)


def test_the_lr_range_test_takes_the_mean_of_the_members_losses():
    from tuner.train.lr_range import range_test

    x, y, *_ = DATA
    result = range_test(_cfg(3, "batch"), (x, y), n_classes=N_CLASSES, seed=0, optimizer="adam")
    assert len(result.lrs) == len(result.losses) > 0
    assert all(np.isfinite(result.losses[:10]))
