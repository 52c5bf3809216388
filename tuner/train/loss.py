"""The training loss of a stack, member by member, and its gradient; dropout masks.

:class:`LossSpec` holds what the members of a (sub)stack may differ in beyond their weights
and optimizer: dropout, label smoothing and class weights. :func:`loss_and_grad` computes
each member's training loss (what ``nn.CrossEntropyLoss(weight, label_smoothing)`` gives) and
its gradient w.r.t. the logits in closed form, so the backward pass starts without autograd.
Dropout masks come from a generator per member, seeded from its seed
(``seed ^`` :data:`DROPOUT_SEED`), so a member draws the same masks in any group, and members
that share a seed share their masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DROPOUT_SEED = 0x5EED  # a member's dropout masks come from a generator seeded seed ^ this


@dataclass
class LossSpec:
    """Per-member dropout and training-loss settings of a (sub)stack, in stack order."""

    dropout: list[float] | None  # None: no member drops out
    generators: list[torch.Generator]  # each member's dropout generator
    smoothing: torch.Tensor | None  # [K] label smoothing; None: none
    weights: torch.Tensor | None  # [K, classes] class weights; None: unweighted

    def masks(self, k: int, n_batch: int, width: int, device: torch.device) -> torch.Tensor | None:
        """Inverted-dropout masks [K, B, width]: 0 or ``1/(1-p)``, one generator per member."""
        if self.dropout is None:
            return None
        mask = torch.ones(k, n_batch, width, device=device)
        for m, p in enumerate(self.dropout):
            if p > 0:
                dropout_mask(p, (n_batch, width), self.generators[m], out=mask[m])
        return mask


def dropout_mask(
    p: float, shape: tuple[int, ...], generator: torch.Generator, out: torch.Tensor | None = None
) -> torch.Tensor:
    """One member's inverted-dropout mask: ``(u >= p) / (1 - p)`` for ``u ~ U[0, 1)`` drawn
    from ``generator``; kept activations are scaled so the expectation is unchanged."""
    u = torch.rand(shape, generator=generator, device=generator.device, out=out)
    return u.ge_(p).mul_(1.0 / (1.0 - p))


def loss_and_grad(
    logits: torch.Tensor, yb: torch.Tensor, spec: LossSpec, minus_one: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training loss per member [K] and its gradient w.r.t. ``logits`` [K, B, C].

    Plain cross-entropy (the mean over the batch) has the gradient ``(softmax - onehot) / B``.
    With class weights ``w`` and label smoothing ``e`` the loss is torch's: per row
    ``(1-e) w_y (-log p_y) + e/C sum_c w_c (-log p_c)``, summed and divided by ``sum w_y``; its
    gradient is ``[p ((1-e) w_y + e/C sum_c w_c) - (1-e) w_y onehot - e/C w] / sum w_y``."""
    logp = torch.log_softmax(logits, dim=2)
    target = yb.unsqueeze(2)
    n_batch, n_classes = logits.shape[1], logits.shape[2]
    if spec.smoothing is None and spec.weights is None:
        loss = logp.gather(2, target).squeeze(2).mean(1).neg_()
        g = logp.exp_()
        g.scatter_add_(2, target, minus_one.expand(target.shape))
        return loss, g.mul_(1.0 / n_batch)
    k = logits.shape[0]
    eps = spec.smoothing if spec.smoothing is not None else logits.new_zeros(k)
    w = spec.weights if spec.weights is not None else logits.new_ones(k, n_classes)
    wy = w.gather(1, yb)  # [K, B]
    total = wy.sum(1)  # [K]
    keep = (1 - eps)[:, None] * wy  # [K, B]: (1-e) w_y
    share = (eps / n_classes)[:, None]  # [K, 1]: e/C
    nll = logp.gather(2, target).squeeze(2).neg_()  # [K, B]
    smooth = torch.einsum("kbc,kc->kb", logp, w).neg_()  # [K, B]: sum_c w_c (-log p_c)
    loss = (keep * nll + share * smooth).sum(1) / total
    coef = keep + share * w.sum(1, keepdim=True)  # [K, B]
    g = logp.exp_().mul_(coef.unsqueeze(2))
    g.scatter_add_(2, target, keep.neg().unsqueeze(2))
    g.sub_((share * w).unsqueeze(1))
    return loss, g.div_(total[:, None, None])
