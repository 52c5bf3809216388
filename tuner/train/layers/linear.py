"""Linear layers of the stack: one batched matrix product for every member at once.

Member ``k``'s weight is the contiguous view ``W[k]`` of a ``[K, out, in]`` tensor (the
``nn.Linear`` orientation) and ``torch.baddbmm`` runs the layer for every member in one call.
A batch shared by all members arrives as a stride-0 ``expand`` of one ``[batch, features]``
tensor, which MKL's batched GEMM reads without copying. At these shapes (``[K, 128, 256] x
[K, 256, 256]``) the products run at ~100-110 GFLOP/s on the 2-core development machine, ~60%
of a large square ``mm``, so from a few members on the step is bound by them.

The backward pass writes the weight gradient ``g^T h`` straight into the stack's gradient
buffer (``out=``) and the bias gradient as the sum over the batch; the first layer's input
gradient is never computed. The output layer computes its logits as ``(W @ h^T)^T``: with 10
classes as the GEMM's columns MKL is 3-4x slower than with them as its rows.

``precision="bf16"`` multiplies bfloat16 copies of activations, gradients and weights (what
``torch.autocast`` would do) and keeps fp32 results, master weights and everything else; the
evaluation pass stays in fp32 (:mod:`tuner.train.compute`).
"""

from __future__ import annotations

import torch
from torch import nn

from tuner.train.config import TrainConfig
from tuner.train.layers.base import Layer, Pass


def _linears(model: nn.Sequential) -> list[nn.Linear]:
    return [m for m in model if isinstance(m, nn.Linear)]


class Linear(Layer):
    """Linear layer ``index`` of the MLP (``h @ W^T + b`` per member): ``W`` [K, out, in],
    ``b`` [K, out]. ``first``: the input layer, whose input needs no gradient."""

    def __init__(self, index: int, precision: str, *, first: bool = False) -> None:
        self.index, self.precision, self.first = index, precision, first

    def stack(self, models, cfgs, params, running, device) -> None:
        lins = [_linears(model)[self.index] for model in models]
        w = torch.stack([lin.weight.detach() for lin in lins]).to(device)
        b = torch.stack([lin.bias.detach() for lin in lins]).to(device)
        self.ids = (len(params), len(params) + 1)
        params += [w.contiguous(), b.contiguous()]

    def forward(self, p: Pass, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w, b = (p.params[i] for i in self.ids)
        if self.precision == "bf16":
            z = torch.bmm(h.to(torch.bfloat16), w.to(torch.bfloat16).transpose(1, 2)).float()
            return z.add_(b.unsqueeze(1)), h
        return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2)), h

    def backward(self, p: Pass, g: torch.Tensor, saved: torch.Tensor) -> torch.Tensor | None:
        """``saved``: the layer's input ``h``."""
        w_i, b_i = self.ids
        torch.sum(g, 1, out=p.grads[b_i])
        w, gw = p.params[w_i], p.grads[w_i]
        if self.precision == "bf16":
            gb = g.to(torch.bfloat16)
            gw.copy_(torch.bmm(gb.transpose(1, 2), saved.to(torch.bfloat16)))
            return None if self.first else torch.bmm(gb, w.to(torch.bfloat16)).float()
        torch.bmm(g.transpose(1, 2), saved, out=gw)
        return None if self.first else torch.bmm(g, w)

    def forward_eval(self, p: Pass, h: torch.Tensor) -> torch.Tensor:
        w, b = (p.params[i] for i in self.ids)
        return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))

    def export(
        self,
        params: list[torch.Tensor],
        running: list[tuple[torch.Tensor, torch.Tensor]],
        pos: int,
        model: nn.Sequential,
        cfg: TrainConfig,
        n_steps: int,
    ) -> None:
        lin = _linears(model)[self.index]
        lin.weight.copy_(params[self.ids[0]][pos])
        lin.bias.copy_(params[self.ids[1]][pos])


class Output(Linear):
    """The output layer: logits [K, B, classes], computed as ``(W @ h^T)^T`` (few classes are
    several times faster as the GEMM's rows than as its columns)."""

    def forward(self, p: Pass, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w, b = (p.params[i] for i in self.ids)
        if self.precision == "bf16":
            zt = torch.bmm(w.to(torch.bfloat16), h.to(torch.bfloat16).transpose(1, 2)).float()
            return zt.add_(b.unsqueeze(2)).transpose(1, 2), h
        return torch.baddbmm(b.unsqueeze(2), w, h.transpose(1, 2)).transpose(1, 2), h

    def forward_eval(self, p: Pass, h: torch.Tensor) -> torch.Tensor:
        w, b = (p.params[i] for i in self.ids)
        return torch.baddbmm(b.unsqueeze(2), w, h.transpose(1, 2)).transpose(1, 2)
