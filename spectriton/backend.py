"""Which implementation runs an op: the Triton kernels or the pure-torch reference.

CUDA tensors take the Triton kernels, CPU tensors the reference. ``SPECTRITON_BACKEND``
(``torch`` or ``triton``) forces one; the Triton kernels run on CPU tensors only under
``TRITON_INTERPRET=1``. The choice is read at every call, so it can be changed at run time.
"""

from __future__ import annotations

import os
from types import ModuleType

import torch

BACKENDS = ("torch", "triton")


def backend_name(device: torch.device) -> str:
    """``"torch"`` or ``"triton"`` for tensors on ``device``."""
    forced = os.environ.get("SPECTRITON_BACKEND", "").strip().lower()
    if forced and forced not in BACKENDS:
        raise ValueError(f"SPECTRITON_BACKEND must be one of {BACKENDS}, got {forced!r}")
    name = forced or ("triton" if device.type == "cuda" else "torch")
    if name == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "SPECTRITON_BACKEND=triton on CPU tensors needs TRITON_INTERPRET=1 set before "
            "spectriton.kernels is imported"
        )
    return name


def cpu_forms(device: torch.device) -> bool:
    """Whether the CPU-only forms run for tensors on ``device`` (DFTs as GEMMs, a block
    output's gradient packed by channel runs): on CPU tensors, unless
    ``SPECTRITON_CPU_FORMS=0``, which runs the ops the CUDA path runs (what
    ``bench/launches.py`` traces)."""
    return device.type == "cpu" and os.environ.get("SPECTRITON_CPU_FORMS", "1") != "0"


def ops(device: torch.device) -> ModuleType:
    """The module holding the backend's ops for tensors on ``device``.

    Both modules expose the same functions: ``threshold_compact``, ``activation_backward``,
    ``product``, ``product_threshold``, ``product_input_grad``, ``product_weight_grad``,
    ``pointwise_weight_grad`` (a 1 x 1 kernel's, summed over frequencies), ``operand``,
    ``pack``, ``unpack``, ``unpack_tiles``, and ``grouped_product``,
    ``grouped_product_input_grad``, ``grouped_product_weight_grad`` (a grouped layer's, per
    group: :mod:`spectriton.grouped`).
    """
    if backend_name(device) == "triton":
        from spectriton import kernels

        return kernels
    from spectriton import reference

    return reference
