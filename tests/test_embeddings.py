"""Numeric feature embeddings (tuner.train.options.embeddings): bin edges fitted on the training
rows, the fused halves against autograd, both engines trained side by side, and model.pt."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests._util import assert_model_predicts_as_scored, session, write_tiny_plan
from tuner.train.config import TrainConfig
from tuner.train.loop import train_group
from tuner.train.model import build_model, fit_inputs, fitted_of, seeded
from tuner.train.options import embeddings
from tuner.train.options.embeddings import quantile_edges
from tuner.train.reference import train
from tuner.train.stack import FusedGroup
from tuner.train.tensors import as_tensors

N_CLASSES = 10
RTOL = 1e-4


def _data(n: int = 600, n_val: int = 200, seed: int = 0):
    """10 classes over 20 features (class c lifts feature c and c + 10), with a constant
    column (3) and a 0/1 column (4)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, n + n_val)
    x = rng.normal(size=(n + n_val, 20)) + 1.5 * (y[:, None] == (np.arange(20) % N_CLASSES))
    x[:, 3] = 2.0
    x[:, 4] = x[:, 4] > 0
    xt, yt = as_tensors(x.astype(np.float32), y)
    return xt[:n], yt[:n], xt[n:], yt[n:]


DATA = _data()


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (see conftest)


def trained_as_alone(cfgs: list[TrainConfig], seeds: list[int], rows: list[torch.Tensor]) -> list:
    """Histories of ``cfgs`` trained as one fused group for 3 epochs on ``rows`` of DATA,
    each checked (:func:`_same`) against the reference engine training it alone."""
    x, y, vx, vy = DATA
    fused = train_group(
        cfgs, x, y, vx, vy, epochs=3, seeds=seeds, n_classes=N_CLASSES, train_idx=rows
    ).histories
    for cfg, seed, r, hist in zip(cfgs, seeds, rows, fused, strict=True):
        _, alone = train(cfg, (x[r], y[r]), (vx, vy), epochs=3, seed=seed, n_classes=N_CLASSES)
        _same(hist, alone, str(cfg))
    return fused


def _cfg(embedding: str, **kw) -> TrainConfig:
    kw = {"embedding_dim": 8, "bins": 12, "frequency_scale": 0.1, "lr": 3e-3, **kw}
    return TrainConfig(hidden=(32, 32), batch_size=64, embedding=embedding, **kw)


def test_quantile_edges_dedupe_and_survive_constant_and_one_hot_columns():
    x = np.array([[0.0, 5.0, 1.0], [1.0, 5.0, 0.0], [2.0, 5.0, 0.0], [3.0, 5.0, 1.0]])
    edges = quantile_edges(x, 3)
    assert edges[0] == [0.0, 1.0, 2.0, 3.0]
    assert edges[1] == [5.0, 6.0]  # constant: one trivial bin
    assert edges[2] == [0.0, 1.0]  # 0/1: one bin
    for e in edges:
        assert all(a < b for a, b in zip(e, e[1:], strict=False))
    enc = embeddings.ple_encode(
        torch.tensor(x, dtype=torch.float32), *embeddings.ple_constants(edges, 3)
    )
    assert torch.isfinite(enc).all()
    # feature 0 value 2.0: two full bins (first component, then the middle), last empty
    torch.testing.assert_close(enc[2, 0], torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(enc[:, 1], torch.zeros(4, 3))  # constant: 0, padding 0
    torch.testing.assert_close(enc[:, 2, -1], torch.tensor(x[:, 2], dtype=torch.float32))


@pytest.mark.parametrize("name", ["ple", "plr"])
def test_fused_half_matches_autograd_through_the_module(name):
    """The stacked forward and the hand-written backward of each member equal its reference
    module's output and autograd's gradients."""
    x, *_ = DATA
    cfg = _cfg(name)
    fitted = fit_inputs(cfg, x)
    entry = embeddings.get(name)
    mods = []
    for seed in (0, 1):
        with seeded(seed):
            mods.append(build_model(cfg, 20, N_CLASSES, fitted)[0])
    xb = x[:16]
    outs = [m(xb) for m in mods]
    g = torch.randn(2, *outs[0].shape)
    ref = [
        torch.autograd.grad(o, entry.tensors(m)[0], gk)
        for o, m, gk in zip(outs, mods, g, strict=True)
    ]
    parts = [entry.tensors(m) for m in mods]
    trained = [torch.stack([p[0][j].detach() for p in parts]) for j in range(len(parts[0][0]))]
    consts = [torch.stack([p[1][j] for p in parts]) for j in range(len(parts[0][1]))]
    out, saved = entry.forward(xb.expand(2, *xb.shape), trained, consts)
    torch.testing.assert_close(out, torch.stack(outs).detach(), rtol=1e-5, atol=1e-6)
    grads = [torch.zeros_like(t) for t in trained]
    entry.backward(g.clone(), trained, saved, grads)
    for j, grad in enumerate(grads):
        torch.testing.assert_close(grad, torch.stack([r[j] for r in ref]), rtol=1e-4, atol=1e-6)


def test_bins_come_from_the_training_rows_only():
    x, y, vx, vy = DATA
    cfg = _cfg("ple")
    model, _ = train(cfg, (x, y), (vx, vy), epochs=1, seed=0, n_classes=N_CLASSES)
    assert fitted_of(model) == {"edges": quantile_edges(x, cfg.bins)}
    assert fitted_of(model) != {"edges": quantile_edges(torch.cat([x, vx]), cfg.bins)}
    rows = [torch.arange(0, 300), torch.arange(300, 600)]  # two folds' training rows
    result = train_group(
        [cfg, cfg], x, y, vx, vy, epochs=1, seeds=[0, 0], n_classes=10, train_idx=rows
    )
    for k, r in enumerate(rows):
        assert fitted_of(result.export(k)) == {"edges": quantile_edges(x[r], cfg.bins)}


def _same(fused, alone, what):
    assert len(fused.epochs) == len(alone.epochs), what
    for f, a in zip(fused.epochs, alone.epochs, strict=True):
        np.testing.assert_allclose(f.train_loss, a.train_loss, rtol=RTOL, err_msg=what)
        np.testing.assert_allclose(f.val_loss, a.val_loss, rtol=RTOL, err_msg=what)
        assert abs(f.val_acc - a.val_acc) <= 1 / 200 + 1e-12, what


@pytest.mark.parametrize("name", ["ple", "plr"])
def test_embedded_members_train_in_a_stack_as_in_the_reference_engine(name):
    """Alone, and in a stack with their own rows (folds), learning rates, norms and seeds."""
    cfgs = [
        _cfg(name),
        _cfg(name, lr=1e-2, norm="layer", activation="gelu"),
        _cfg(name, optimizer="sgd", lr=0.05, frequency_scale=0.5),
    ]
    seeds = [3, 3, 4]
    rows = [torch.arange(0, 600), torch.arange(0, 450), torch.arange(150, 600)]
    fused = trained_as_alone(cfgs, seeds, rows)
    assert max(h.final_acc for h in fused) > 0.2  # it learns (chance: 0.1)


def test_a_stage_grid_over_embeddings_trains_one_stack_per_shape():
    from tuner.tune.runs import fusable

    cfgs = [_cfg("none"), _cfg("ple"), _cfg("ple", bins=8), _cfg("ple"), _cfg("plr"), _cfg("none")]
    assert fusable(cfgs) == [[0, 5], [1, 3], [2], [4]]


def test_a_stack_refuses_members_with_different_embedding_shapes():
    with pytest.raises(ValueError, match="embedding"):
        FusedGroup(
            [_cfg("ple"), _cfg("ple", bins=8)],
            20,
            N_CLASSES,
            seeds=[0, 0],
            fitted=[{"edges": [[0.0, 1.0]] * 20}] * 2,
        )
    with pytest.raises(ValueError, match="embedding"):
        FusedGroup([_cfg("plr"), _cfg("none")], 20, N_CLASSES, seeds=[0, 0])


def test_new_fields_at_their_defaults_leave_the_identity_dict_unchanged():
    d = TrainConfig().to_dict()
    assert not {"embedding", "embedding_dim", "bins", "frequency_scale"} & set(d)
    assert TrainConfig().with_params(d) == TrainConfig()
    assert _cfg("plr").to_dict()["embedding"] == "plr"
    assert set(TrainConfig().to_dict(full=True)) >= {"embedding", "bins"}


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("embedding", "spline", "choose one of: none, ple, plr"),
        ("embedding_dim", 0, "embedding_dim must be in [1, 1024], got 0"),
        ("bins", 1, "bins must be in [2, 1024], got 1"),
        ("frequency_scale", 0.0, "frequency_scale must be in (0, 100], got 0.0"),
    ],
)
def test_embedding_fields_are_checked_with_one_line_errors(field, value, expected):
    from tuner.errors import PlanError

    with pytest.raises(PlanError, match=expected.replace("(", r"\(").replace("[", r"\[")):
        TrainConfig(**{field: value})


def test_model_pt_with_an_embedding_loads_weights_only_and_predicts_as_trained(tmp_path, msd_file):
    write_tiny_plan(tmp_path)
    fixes = {
        "lr": "0.01",
        "weight_decay": "0",
        "activation": "relu",
        "norm": "none",
        "optimizer": "adam",
        "embedding": "ple",
        "bins": "8",
        "embedding_dim": "4",
    }
    from tuner.tune.final import run_final

    s = session(tmp_path, str(msd_file), fixes=fixes)
    assert run_final(s).state == "done"
    out = tmp_path / "models" / "tiny"
    bundle = torch.load(out / "model.pt", weights_only=True)
    data = s.data()
    assert bundle["fitted"] == {"edges": quantile_edges(data.train[0], 8)}
    assert not any("scale" in k or "shift" in k for k in bundle["state_dict"])  # edges: lists
    assert_model_predicts_as_scored(s, out, tmp_path)
