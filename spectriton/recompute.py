"""Keeping a block's input and recomputing the block in backward (``torch.utils.checkpoint``).

A checkpoint keeps its inputs in its own frame, out of sight of saved-tensor hooks;
:func:`recomputed` hands them to autograd as well (the same tensors: no extra bytes), so
that hooks and :func:`spectriton.memory.saved_bytes` see what it really keeps. Used by the
checkpointing baseline (:mod:`spectriton.checkpointing`) and by spectral blocks whose kept
spectra would outweigh their input (:func:`spectriton.blocks.run_layers`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint


class _Keep(torch.autograd.Function):
    """Identity on ``y`` that saves ``kept`` (what the checkpoint keeps) for backward."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, *kept: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(*kept)
        ctx.count = len(kept)
        return y.clone()  # a new tensor, not a view: later layers may work in place

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, *([None] * ctx.count)


def recomputed(body: Callable[..., torch.Tensor], *inputs) -> torch.Tensor:
    """``body(*inputs)`` under non-reentrant ``torch.utils.checkpoint``: keeps the tensors
    among ``inputs`` (handed to autograd too) and runs ``body`` again in backward."""
    y = checkpoint(body, *inputs, use_reentrant=False)
    return _Keep.apply(y, *(t for t in inputs if isinstance(t, torch.Tensor)))
