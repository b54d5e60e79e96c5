"""NVTX ranges, so that Nsight Systems timelines name every spectral step.

On by default where CUDA is available (a push and a pop per range: microseconds, next to
kernels that take tens of them); ``SPECTRITON_NVTX=0`` turns them off. Ranges read
``spectriton/<what>``: module forwards, autograd backwards and each kernel launch.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch


def enabled() -> bool:
    return os.environ.get("SPECTRITON_NVTX", "1") != "0" and torch.cuda.is_available()


@contextlib.contextmanager
def annotate(name: str):
    """An NVTX range named ``spectriton/<name>`` around the block, when enabled."""
    if not enabled():
        yield
        return
    torch.cuda.nvtx.range_push(f"spectriton/{name}")
    try:
        yield
    finally:
        torch.cuda.nvtx.range_pop()


def ranged(name: str):
    """Decorator: the function runs inside :func:`annotate` ``(name)``."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            with annotate(name):
                return fn(*args, **kwargs)

        return run

    return wrap
