"""The samples whose input held a NaN or Inf: their outputs are made NaN, since split tanh
would saturate an infinite spectral entry to a finite one."""

import torch
from torch import Tensor


def nonfinite_samples(x: Tensor) -> Tensor:
    """Which samples of a spatial batch hold a NaN or Inf, ``(N,)`` bool (no autograd): those
    whose largest entry is NaN or +Inf or whose smallest is -Inf (two reductions, in any
    memory format, no bool map of the batch)."""
    dims = tuple(range(1, x.dim()))
    x = x.detach()
    return ~(torch.isfinite(x.amax(dims)) & torch.isfinite(x.amin(dims)))


def mark_nonfinite(y: Tensor, nonfinite: Tensor) -> Tensor:
    """``y`` with the samples where ``nonfinite`` is set made NaN (an addition: nothing is
    saved for it)."""
    return y + _marks(nonfinite, y.dtype)


def mark_nonfinite_(y: Tensor, nonfinite: Tensor) -> Tensor:
    """:func:`mark_nonfinite` in place, for a ``y`` outside autograd that nothing else reads."""
    return y.add_(_marks(nonfinite, y.dtype))


def _marks(nonfinite: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.where(nonfinite, float("nan"), 0.0).to(dtype).view(-1, 1, 1, 1)
