"""Where fused groups train and in which precision: ``--device`` and ``--precision``.

``precision="bf16"`` runs the stack's GEMMs (forward and backward) on bfloat16 copies of
activations, gradients and weights, like ``torch.autocast("cpu", dtype=torch.bfloat16)`` would,
and keeps fp32 master weights, optimizer state, normalisation and the loss
(:mod:`tuner.train.layers.linear`). It pays only where the CPU has native bf16 dot products
(AVX512-BF16 / AMX); elsewhere oneDNN emulates them and it is far slower than fp32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")


def cpu_has_native_bf16() -> bool:
    """Whether the CPU has bf16 dot products (AVX512-BF16 or AMX) for oneDNN to use."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


@dataclass(frozen=True)
class Compute:
    """Where fused groups train and in which precision (``--device``, ``--precision``)."""

    device: str = "cpu"
    precision: str = "fp32"

    @classmethod
    def resolve(cls, device: str = "auto", precision: str = "fp32") -> Compute:
        """``device="auto"`` picks CUDA when torch sees a GPU. Raises ``ValueError`` for an
        unknown name, for ``cuda`` without a GPU, and for bf16 on a CPU without bf16 support."""
        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}")
        if precision not in PRECISIONS:
            raise ValueError(
                f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}"
            )
        has_cuda = torch.cuda.is_available()
        if device == "cuda" and not has_cuda:
            raise ValueError("--device cuda: torch sees no CUDA device here (try --device auto)")
        resolved = "cuda" if device == "cuda" or (device == "auto" and has_cuda) else "cpu"
        if precision == "bf16" and resolved == "cpu":
            if not torch.backends.mkldnn.is_available():
                raise ValueError("--precision bf16 needs oneDNN (mkldnn) on the CPU")
            if not cpu_has_native_bf16():
                logger.warning(
                    "--precision bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), so "
                    "oneDNN emulates it and training is several times slower than fp32"
                )
        return cls(resolved, precision)
