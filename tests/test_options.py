"""The option registries (tuner.train.options): every entry's fused half against torch's public
form on tiny tensors, the torch internals the fused halves call, and the registries' rules.

tests/test_fused.py trains every entry in both engines; these tests say which half of which
entry is wrong, and fail (never skip) when a torch release removes an internal an entry calls.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tuner.train.options import (
    FIELDS,
    activations,
    embeddings,
    inits,
    losses,
    norms,
    optimizers,
    schedules,
)
from tuner.train.options.registry import Option, registry


def _params(table) -> list:
    return [pytest.param(entry, id=name) for name, entry in table.items()]


def _resolve(path: str) -> object:
    obj: object = torch
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize(
    "entry, path",
    [
        pytest.param(entry, path, id=f"{field}={name}:torch.{path}")
        for field, table in FIELDS.items()
        for name, entry in table.items()
        for path in entry.private_apis
    ],
)
def test_the_torch_internals_an_entry_calls_exist(entry: Option, path: str):
    """Kept for measured speed (see each family's module docstring); the tests below call each
    one against torch's public form. If this fails after a torch upgrade, the entry needs the
    internal's new name or its public replacement."""
    try:
        _resolve(path)
    except (AttributeError, RuntimeError) as err:
        pytest.fail(
            f"torch {torch.__version__} has no torch.{path}, which {entry.name!r} calls: {err}"
        )


# -- activations ---------------------------------------------------------------------------


@pytest.mark.parametrize("act", _params(activations.REGISTRY))
def test_activation_forward_and_backward_match_autograd_through_its_module(act):
    torch.manual_seed(0)
    u = torch.randn(2, 5, 4, requires_grad=True)
    ref = act.module()(u)
    g = torch.randn_like(ref)
    (ref_grad,) = torch.autograd.grad(ref, u, g)
    u = u.detach()
    a = act.forward(u)
    torch.testing.assert_close(a, ref.detach())
    out = torch.empty_like(u)
    assert act.forward(u, out=out).data_ptr() == out.data_ptr()
    torch.testing.assert_close(out, ref.detach())
    torch.testing.assert_close(act.backward(g, u, a), ref_grad)
    out = torch.empty_like(u)
    act.backward(g, u, a, out=out)
    torch.testing.assert_close(out, ref_grad)


# -- normalizations ------------------------------------------------------------------------


@pytest.mark.parametrize("norm", _params(norms.REGISTRY))
def test_norm_passes_match_autograd_through_its_module(norm):
    """Training-mode output, running statistics, the three gradients and eval-mode output of
    two stacked members against each member's module."""
    k, n_batch, width = 2, 6, 4
    torch.manual_seed(0)
    z = torch.randn(k, n_batch, width)
    gamma, beta = 1 + 0.1 * torch.randn(k, width), 0.1 * torch.randn(k, width)
    rmean, rvar = torch.zeros(k, width), torch.ones(k, width)
    g = torch.randn(k, n_batch, width)
    g_gamma, g_beta = torch.zeros(k, width), torch.zeros(k, width)
    u, saved = norm.forward_train(z, gamma, beta, rmean, rvar)
    g_z = norm.backward(g.clone(), z, gamma, saved, g_gamma, g_beta)
    evaluated = norm.forward_eval(z, gamma, beta, rmean, rvar)
    for m in range(k):
        module = norm.module(width)
        assert (module is not None) == norm.has_params
        if module is None:
            torch.testing.assert_close(u[m], z[m])
            torch.testing.assert_close(g_z[m], g[m])
            torch.testing.assert_close(evaluated[m], z[m])
            continue
        assert isinstance(module, norm.module_type)
        assert norm.layers(nn.Sequential(nn.Linear(3, width), module)) == [module]
        with torch.no_grad():
            module.weight.copy_(gamma[m])
            module.bias.copy_(beta[m])
        zm = z[m].clone().requires_grad_()
        ref = module.train()(zm)
        grads = torch.autograd.grad(ref, (zm, module.weight, module.bias), g[m])
        torch.testing.assert_close(u[m], ref.detach())
        for got, want in zip((g_z[m], g_gamma[m], g_beta[m]), grads, strict=True):
            torch.testing.assert_close(got, want)
        if norm.running_stats:
            torch.testing.assert_close(rmean[m], module.running_mean)
            torch.testing.assert_close(rvar[m], module.running_var)
        with torch.no_grad():
            torch.testing.assert_close(evaluated[m], module.eval()(z[m]))


# -- optimizers ----------------------------------------------------------------------------


@pytest.mark.parametrize("hyper", [(0.01, 0.01, 0.9), (0.01, 0.0, 0.0)], ids=["decay", "plain"])
@pytest.mark.parametrize("opt", _params(optimizers.REGISTRY))
def test_optimizer_fused_step_matches_torch_optim(opt, hyper):
    """Three steps over two tensors, as the fused engine calls the step (its per-tensor step
    counts incremented before each call, zero state), against the ``torch.optim`` form."""
    lr, weight_decay, momentum = hyper
    torch.manual_seed(0)
    start = [torch.randn(3, 4), torch.randn(4)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(3)]
    ref = [p.clone().requires_grad_() for p in start]
    reference = opt.torch_optimizer(ref, lr=lr, weight_decay=weight_decay, momentum=momentum)
    fused = [p.clone() for p in start]
    lists = {
        "p": fused,
        "step": [torch.zeros(()) for _ in start],
        **{name: [torch.zeros_like(p) for p in start] for name in opt.state_names},
    }
    for step_grads in grads:
        for p, g in zip(ref, step_grads, strict=True):
            p.grad = g.clone()
        reference.step()
        lists["g"] = [g.clone() for g in step_grads]
        for count in lists["step"]:
            count += 1
        opt.step(lists, lr=lr, weight_decay=weight_decay, momentum=momentum)
        for got, want in zip(fused, ref, strict=True):
            torch.testing.assert_close(got, want.detach())


# -- schedules -----------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", _params(schedules.REGISTRY))
def test_schedule_closed_form_matches_torch_scheduler(schedule):
    lr, total = 0.01, 40
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = schedule.torch_scheduler(optimizer, lr=lr, total_steps=total)
    assert (scheduler is not None) == schedule.depends_on_step
    seen = set()
    for step in range(total):
        want = optimizer.param_groups[0]["lr"]
        assert schedule.lr_at(lr, step, total) == pytest.approx(want, rel=1e-9, abs=1e-15)
        seen.add(round(want, 12))
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    assert (len(seen) > 1) == schedule.depends_on_step


# -- inits and class weights (one half serves both engines) --------------------------------


@pytest.mark.parametrize("init", _params(inits.REGISTRY))
def test_init_draws_from_torchs_global_generator(init):
    """Both engines build a member's weights with build_model under its seed: an init draws
    from the global generator only, so the same seed gives the same weights."""
    drawn = []
    for _ in range(2):
        torch.manual_seed(0)
        lin = nn.Linear(9, 7)
        torch.manual_seed(1)
        init.apply(lin)
        drawn.append(lin)
    assert torch.equal(drawn[0].weight, drawn[1].weight)
    assert torch.equal(drawn[0].bias, drawn[1].bias)


def test_kaiming_normal_draws_what_torch_draws_for_the_rectifier():
    """The entry passes a=0 (the default nonlinearity's gain at slope 0) rather than naming the
    rectifier: the same gain to the bit, so the same weights."""
    lin = nn.Linear(90, 64)
    torch.manual_seed(0)
    inits.get("kaiming_normal").apply(lin)
    want = torch.empty(64, 90)
    torch.manual_seed(0)
    nn.init.kaiming_normal_(want, nonlinearity="relu")
    assert torch.equal(lin.weight, want)
    assert not lin.bias.any()


@pytest.mark.parametrize("weighting", _params(losses.REGISTRY))
def test_class_weights_are_float32_per_class_or_none(weighting):
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    w = weighting.weights(y, 4)
    assert w is None or (w.dtype == torch.float32 and w.shape == (4,) and bool((w >= 0).all()))


# -- the registries ------------------------------------------------------------------------


def test_every_field_default_is_registered_and_lookups_name_the_choices():
    modules = {
        "activation": activations,
        "norm": norms,
        "init": inits,
        "optimizer": optimizers,
        "class_weight": losses,
        "schedule": schedules,
        "embedding": embeddings,
    }
    assert set(modules) == set(FIELDS)
    for field, module in modules.items():
        assert module.REGISTRY is FIELDS[field]
        assert module.DEFAULT in module.REGISTRY
        for name, entry in module.REGISTRY.items():
            assert entry.name == name and module.get(name) is entry
        with pytest.raises(ValueError, match=f"choose one of: {', '.join(module.REGISTRY)}$"):
            module.get("no_such_choice")


def test_a_name_registered_twice_is_refused():
    with pytest.raises(ValueError, match="twice"):
        registry(activations.get(activations.DEFAULT), activations.get(activations.DEFAULT))


@pytest.mark.parametrize(
    "base, reference_half",
    [
        (activations.Activation, {"module": lambda self: nn.Identity()}),
        (norms.Norm, {"module": lambda self, width: None}),
        (optimizers.Optimizer, {"torch_optimizer": lambda self, params, **kw: None}),
        (schedules.Schedule, {"torch_scheduler": lambda self, optimizer, **kw: None}),
    ],
    ids=["activation", "norm", "optimizer", "schedule"],
)
def test_an_entry_without_its_fused_half_cannot_be_instantiated(base, reference_half):
    half_done = type("HalfDone", (base,), {"name": "half_done", **reference_half})
    with pytest.raises(TypeError, match="abstract"):
        half_done()
