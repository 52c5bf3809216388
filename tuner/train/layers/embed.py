"""The numeric feature embedding in front of the stack's first Linear layer.

Every member of a stack has the same embedding kind and shape (the stack checks it); what it
computes is the entry's stacked half (:mod:`tuner.train.options.embeddings`): a forward over
``[K, B, F]`` features and a hand-written backward that writes the gradients of the trained
tensors. The member's constants (the piecewise-linear encoding of its bin edges, fitted on its
own training rows) sit in the stack's parameter list too, so that dropping members and passes
over a subset slice them like everything else, but they are not in :attr:`ids`: no optimizer
steps them and their gradient buffers stay zero.
"""

from __future__ import annotations

import torch

from tuner.train.layers.base import Layer, Pass
from tuner.train.options import embeddings


class Embed(Layer):
    """The embedding ``kind`` (an entry of :mod:`tuner.train.options.embeddings`)."""

    def __init__(self, kind: str) -> None:
        self.kind = embeddings.get(kind)
        self.consts: tuple[int, ...] = ()

    def stack(self, models, cfgs, params, running, device) -> None:
        parts = [self.kind.tensors(model[0]) for model in models]
        n_trained, n_consts = len(parts[0][0]), len(parts[0][1])
        trained = [torch.stack([p[0][j].detach() for p in parts]) for j in range(n_trained)]
        consts = [torch.stack([p[1][j] for p in parts]) for j in range(n_consts)]
        self.ids = tuple(range(len(params), len(params) + n_trained))
        self.consts = tuple(range(len(params) + n_trained, len(params) + n_trained + n_consts))
        params += [t.to(device).contiguous() for t in (*trained, *consts)]

    def _tensors(self, p: Pass) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return [p.params[i] for i in self.ids], [p.params[i] for i in self.consts]

    def forward(self, p: Pass, x: torch.Tensor):
        return self.kind.forward(x, *self._tensors(p))

    def backward(self, p: Pass, g: torch.Tensor, saved) -> None:
        trained, _ = self._tensors(p)
        self.kind.backward(g, trained, saved, [p.grads[i] for i in self.ids])
        return None

    def forward_eval(self, p: Pass, x: torch.Tensor) -> torch.Tensor:
        return self.kind.forward(x, *self._tensors(p))[0]

    def export(self, params, running, pos, model, cfg, n_steps) -> None:
        trained, _ = self.kind.tensors(model[0])
        for t, i in zip(trained, self.ids, strict=True):
            t.copy_(params[i][pos])
