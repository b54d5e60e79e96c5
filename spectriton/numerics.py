"""Numerics shared by the ops: the dtype policy of spectra."""

import torch
from torch import Tensor


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32 (half precisions compute in float32)."""
    double = any(t is not None and t.dtype == torch.float64 for t in tensors)
    return torch.float64 if double else torch.float32


def exact(device: torch.device):
    """Autocast off: spectra and kernel spectra are computed in float32 (or float64) however
    the caller autocasts (the DFT matmuls would otherwise round to bfloat16)."""
    return torch.autocast(device_type=device.type, enabled=False)
