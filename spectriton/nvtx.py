"""NVTX ranges, so that Nsight timelines name every spectral step.

On by default where CUDA is available; ``SPECTRITON_NVTX=0`` turns them off. A range costs
about a microsecond of host time (``python bench/nvtx_cost.py``), next to kernels that take
tens of them. Ranges read ``spectriton.<what>``: module forwards, autograd backwards and
each kernel launch (no ``/`` in names, which Nsight Compute's NVTX filters use to nest).
Inside ``torch.compile`` graphs there are none: the compiled kernels carry their own names.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch


@functools.cache
def _cuda() -> bool:
    return torch.cuda.is_available()


def enabled() -> bool:
    """Whether ranges are pushed: CUDA present, not turned off, not inside a compiled graph."""
    if torch.compiler.is_compiling():
        return False
    return os.environ.get("SPECTRITON_NVTX", "1") != "0" and _cuda()


@contextlib.contextmanager
def annotate(name: str):
    """An NVTX range named ``spectriton.<name>`` around the block, when enabled."""
    if not enabled():
        yield
        return
    torch.cuda.nvtx.range_push(f"spectriton.{name}")
    try:
        yield
    finally:
        torch.cuda.nvtx.range_pop()


def ranged(name: str):
    """Decorator: the function runs inside an NVTX range ``spectriton.<name>``, when enabled."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            if not enabled():
                return fn(*args, **kwargs)
            torch.cuda.nvtx.range_push(f"spectriton.{name}")
            try:
                return fn(*args, **kwargs)
            finally:
                torch.cuda.nvtx.range_pop()

        return run

    return wrap
