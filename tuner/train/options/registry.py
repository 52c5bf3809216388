"""What every option family shares: the entry base class, the registry and its lookup.

A family (activations, normalizations, ...) is one module of this package with an abstract
base class, its entries and ``REGISTRY``, a dict from the name a plan writes to the entry, in
the order error messages list the choices. Entries are immutable (frozen dataclasses whose
fields are the option's constants) and every registry is built once at import: they are the
only module-level state of the package.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, TypeVar


class Option:
    """One choice of a :class:`~tuner.train.config.TrainConfig` field, for every engine."""

    name: ClassVar[str]
    """What a plan writes (``activation = "..."``); unique within the family."""

    private_apis: ClassVar[tuple[str, ...]] = ()
    """Torch internals the entry calls, as dotted paths under ``torch`` (``"_fused_adam_"``,
    ``"ops.aten.gelu_backward.grad_input"``). Each is kept for a measured speed-up (said where
    it is called); ``tests/test_options.py`` fails, rather than skips, if a torch release
    removes one."""


E = TypeVar("E", bound=Option)


def registry(*entries: E) -> dict[str, E]:
    """``name -> entry`` in the given order; a name given twice is an error."""
    table: dict[str, E] = {}
    for entry in entries:
        if entry.name in table:
            raise ValueError(f"option {entry.name!r} is registered twice")
        table[entry.name] = entry
    return table


def lookup(table: Mapping[str, E], name: str, family: str) -> E:
    """The entry called ``name``; ``ValueError`` naming the registered choices otherwise."""
    try:
        return table[name]
    except KeyError:
        choices = ", ".join(table)
        raise ValueError(f"unknown {family} {name!r}; choose one of: {choices}") from None
