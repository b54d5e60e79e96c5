"""NVTX ranges, so that Nsight timelines name every spectral step.

On by default where CUDA is available; ``SPECTRITON_NVTX=0`` turns them off. A range costs
about a microsecond of host time (``python bench/nvtx_cost.py``), next to kernels that take
tens of them. Ranges read ``spectriton.<what>``: module forwards, autograd backwards and
each kernel launch (no ``/`` in names, which Nsight Compute's NVTX filters use to nest).
Under ``torch.compile`` the spectral custom ops keep theirs (they run opaque inside the
graph); what the compiler traces has none: its kernels carry their own names.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch

PREFIX = "spectriton."


def enabled() -> bool:
    """Whether ranges are pushed: CUDA present, not turned off, not inside a compiled graph."""
    if torch.compiler.is_compiling():
        return False
    return os.environ.get("SPECTRITON_NVTX", "1") != "0" and torch.cuda.is_available()


class _Range:
    """Context manager: one NVTX range ``spectriton.<name>``, pushed only when enabled.

    ``name`` may be a zero-argument callable, so that a label that takes work to build
    (layer shapes, say) is built only when the range is pushed.
    """

    __slots__ = ("name", "pushed")

    def __init__(self, name: str | Callable[[], str]) -> None:
        self.name = name

    def __enter__(self) -> None:
        self.pushed = enabled()
        if self.pushed:
            torch.cuda.nvtx.range_push(PREFIX + (self.name() if callable(self.name) else self.name))

    def __exit__(self, *exc) -> None:
        if self.pushed:
            torch.cuda.nvtx.range_pop()


def annotate(name: str | Callable[[], str]) -> _Range:
    """An NVTX range named ``spectriton.<name>`` around a ``with`` block, when enabled."""
    return _Range(name)


def ranged(name: str):
    """Decorator: the function runs inside an NVTX range ``spectriton.<name>``, when enabled.

    The per-call path is spelled out rather than going through :func:`annotate`: kernel
    launches are frequent, and this keeps a disabled range to one :func:`enabled` check.
    """
    label = PREFIX + name

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            if not enabled():
                return fn(*args, **kwargs)
            torch.cuda.nvtx.range_push(label)
            try:
                return fn(*args, **kwargs)
            finally:
                torch.cuda.nvtx.range_pop()

        return run

    return wrap
