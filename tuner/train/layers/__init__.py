"""The stacked MLP as a sequence of layers, each a forward and a hand-written backward pass over
the ``[K, ...]`` tensors of every member at once.

:func:`mlp` is the sequence the stack (:mod:`tuner.train.stack`) runs, the same network as
:func:`tuner.train.model.build_model`'s ``Linear -> [norm] -> act -> [dropout] -> ... ->
Linear``: the forward pass runs the layers in order, the backward pass in reverse, each layer
writing its gradients into the stack's buffers. A new kind of layer (a per-feature input
layer, per-member scalings) is one module with a :class:`~tuner.train.layers.base.Layer`
(its parameters gathered from and exported to the reference model, its forward, backward and
evaluation passes) and its place in :func:`mlp` -- and, for the tests' oracle, its module in
``build_model``.

* :mod:`~tuner.train.layers.base`: the :class:`~tuner.train.layers.base.Layer` interface, the
  tensors of a pass, the runs of members that share a norm or an activation;
* :mod:`~tuner.train.layers.linear`: Linear layers and the output layer (batched GEMMs);
* :mod:`~tuner.train.layers.hidden`: a hidden layer's normalisation, activation and dropout;
* :mod:`~tuner.train.layers.embed`: a numeric feature embedding before the first Linear layer.
"""

from __future__ import annotations

from tuner.train.layers.base import Layer
from tuner.train.layers.embed import Embed
from tuner.train.layers.hidden import Hidden
from tuner.train.layers.linear import Linear, Output


def mlp(n_hidden: int, precision: str, embedding: str | None = None) -> list[Layer]:
    """The layers of an MLP with ``n_hidden`` hidden layers, input first; ``embedding``: the
    numeric feature embedding in front (``None``: the first Linear layer reads the features)."""
    layers: list[Layer] = [] if embedding is None else [Embed(embedding)]
    first = embedding is None  # the first Linear layer's input needs no gradient
    for i in range(n_hidden):
        layers += [Linear(i, precision, first=first and i == 0), Hidden(i)]
    return [*layers, Output(n_hidden, precision, first=first and n_hidden == 0)]
