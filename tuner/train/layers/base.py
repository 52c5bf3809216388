"""What a layer of the stack is: the interface every part of the stacked MLP implements.

A :class:`Layer` is one step of the MLP (a Linear layer, a hidden layer's normalisation and
activation, ...) for all ``K`` members at once. It owns no tensors: at construction it appends
its stacked parameters (``[K, ...]``, gathered from each member's reference model) to the
stack's parameter list and remembers their positions, and each pass hands it a :class:`Pass`,
the tensors of the whole stack or of a subset of its members (the stack then copies them back).

Members are sorted so that those sharing a normalisation or an activation are neighbours:
:class:`Layout` holds those runs (:class:`Segment`), which a layer applies run by run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from tuner.train.config import TrainConfig
from tuner.train.loss import LossSpec
from tuner.train.options import activations, norms
from tuner.train.options.activations import Activation
from tuner.train.options.norms import Norm

_E = TypeVar("_E", Activation, Norm)


@dataclass(frozen=True)
class Segment(Generic[_E]):
    """Members ``start:stop`` of a (sub)stack share ``kind`` (a normalisation or an activation
    entry of :mod:`tuner.train.options`)."""

    start: int
    stop: int
    kind: _E


def segments(kinds: Sequence[_E]) -> list[Segment[_E]]:
    """Runs of equal neighbours in ``kinds`` (one per member, stack order)."""
    segs: list[Segment[_E]] = []
    for k, kind in enumerate(kinds):
        if segs and segs[-1].kind == kind:
            segs[-1] = Segment(segs[-1].start, k + 1, kind)
        else:
            segs.append(Segment(k, k + 1, kind))
    return segs


def slices(segs: list[Segment[_E]]) -> list[tuple[_E, slice]]:
    return [(seg.kind, slice(seg.start, seg.stop)) for seg in segs]


@dataclass(frozen=True)
class Layout:
    """The normalisation runs and the activation runs of a (sub)stack. Members are sorted by
    (norm, activation), so both are runs; they are kept apart so that an activation shared by
    members with different norms (the normalisation stage) is one call over all of them."""

    norms: list[Segment[Norm]]
    acts: list[Segment[Activation]]

    @classmethod
    def of(cls, cfgs: Sequence[TrainConfig]) -> Layout:
        return cls(
            segments([norms.get(c.norm) for c in cfgs]),
            segments([activations.get(c.activation) for c in cfgs]),
        )


@dataclass
class Pass:
    """The tensors one pass over a (sub)stack reads and writes, indexed as the stack's
    parameter list: parameters, their gradients (written by the backward pass; unused in
    evaluation), the running statistics of each hidden layer, the members' runs and their
    dropout and loss settings (``None`` in evaluation: no dropout)."""

    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    running: list[tuple[torch.Tensor, torch.Tensor]]
    layout: Layout
    loss: LossSpec | None


class Layer(ABC):
    """One part of the stacked MLP, for every member at once (see the module docstring)."""

    ids: tuple[int, ...] = ()
    """Its parameters' positions in the stack's parameter list."""

    @abstractmethod
    def stack(
        self,
        models: Sequence[nn.Sequential],
        cfgs: Sequence[TrainConfig],
        params: list[torch.Tensor],
        running: list[tuple[torch.Tensor, torch.Tensor]],
        device: torch.device,
    ) -> None:
        """Append its parameters, stacked from the members' reference models (``build_model``,
        stack order), to ``params`` (running statistics to ``running``) and set :attr:`ids`."""

    @abstractmethod
    def forward(self, p: Pass, h: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Training-mode output for input ``h`` [K, B, in], and what :meth:`backward` needs."""

    @abstractmethod
    def backward(self, p: Pass, g: torch.Tensor, saved: Any) -> torch.Tensor | None:
        """Write its parameters' gradients into ``p.grads`` given ``g`` w.r.t. its output;
        return the gradient w.r.t. its input (``None`` where no layer before needs it)."""

    @abstractmethod
    def forward_eval(self, p: Pass, h: torch.Tensor) -> torch.Tensor:
        """Eval-mode output (running statistics, no dropout)."""

    @abstractmethod
    def export(
        self,
        params: list[torch.Tensor],
        running: list[tuple[torch.Tensor, torch.Tensor]],
        pos: int,
        model: nn.Sequential,
        cfg: TrainConfig,
        n_steps: int,
    ) -> None:
        """Copy stack position ``pos``'s parameters into ``model`` (a fresh ``build_model``
        of ``cfg``; the member has taken ``n_steps`` optimizer steps)."""

    def trained(self, cfg: TrainConfig) -> bool:
        """Whether a member configured by ``cfg`` trains this layer's parameters."""
        return True
