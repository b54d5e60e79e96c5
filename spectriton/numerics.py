"""Numerics that the ops, the torch twin and the Triton launchers share, so that neither
twin imports the other: the dtype policy of spectra, the half-spectrum size, the
threshold's scaling and clean DFT tables.

An entry ``Y`` is kept iff ``|Y| > beta`` (DESIGN.md section 2), decided on squares without
a square root: with ``(scale, beta2) = scaled_threshold(beta)``, it is kept iff
``(scale re)^2 + (scale im)^2 > beta2``. When ``beta2`` is 0 (``beta == 0``, the exact
drop-in) every entry is kept: the threshold is then the identity, whose gradient is 1 at
an exact zero too (an all-zero input map's gradient is ``nn.Conv2d``'s), and an entry
whose square underflows still counts. NaN entries are always kept.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

EXPONENT_LIMIT = 126  # the scale stays a normal float32 (kernels take it as a float32 scalar)


def half_spectrum(grid: tuple[int, int]) -> tuple[int, int]:
    """Shape of a half spectrum on ``grid`` (what ``rfft2`` returns): ``(P0, P1 // 2 + 1)``."""
    return grid[0], grid[1] // 2 + 1


def spectrum_bins(grid: tuple[int, int]) -> int:
    """Number of complex entries in one half-spectrum map on ``grid``."""
    rows, cols = half_spectrum(grid)
    return rows * cols


def scaled_threshold(beta: float | torch.Tensor):
    """``(scale, beta2)`` of the keep rule in this module's docstring.

    ``scale`` is the power of two that brings ``beta`` into [0.5, 1), so a square overflows
    (or underflows) only where the entry is far above (or below) the threshold. Elsewhere
    the decision is exactly that of ``re^2 + im^2 > beta^2``: scaling by a power of two does
    not change rounding. A ``beta`` tensor (a threshold computed on the device) gives
    float64 tensors, with no host synchronisation.
    """
    if isinstance(beta, torch.Tensor):
        beta = beta.double()
        exponent = (-torch.frexp(beta).exponent).clamp(-EXPONENT_LIMIT, EXPONENT_LIMIT)
        scale = torch.pow(2.0, exponent.double())
        return scale, (beta * scale).square()
    if beta == 0:
        return 1.0, 0.0
    scale = 2.0 ** min(max(-math.frexp(beta)[1], -EXPONENT_LIMIT), EXPONENT_LIMIT)
    scaled = beta * scale
    return scale, scaled * scaled


EIGHT_BIT = torch.float8_e4m3fn  # the 8-bit value dtype: kept as it is, carried as bfloat16


def carried_dtype(value_dtype: torch.dtype | None) -> torch.dtype | None:
    """The dtype kept values flow in between layers: 8-bit values flow as bfloat16 (each an
    exact 8-bit number), so that their gradients stay bfloat16; any other as it is stored."""
    return torch.bfloat16 if value_dtype == EIGHT_BIT else value_dtype


def as_carried(values: Tensor) -> Tensor:
    """Kept values as layers compute with them: 8-bit ones as the bfloat16 numbers they are.

    On CPU, where torch converts 8-bit floats one at a time, ``(n, 2)`` pairs are read as
    16-bit codes and looked up in a table of every pair's bfloat16 pair (256 KiB, built by
    torch's own conversion, so the numbers are the same): four times faster."""
    if values.dtype != EIGHT_BIT:
        return values
    if values.device.type != "cpu" or values.dim() != 2 or values.shape[1] != 2 or not values.is_contiguous():
        return values.to(torch.bfloat16)
    codes = values.view(torch.uint16).view(-1).long()
    return torch.take(_eight_bit_pairs(), codes).view(torch.bfloat16).view(values.shape)


@functools.cache
def _eight_bit_pairs() -> Tensor:
    """Each 16-bit code's two 8-bit values as a pair of bfloat16 numbers, one int32 each."""
    with torch.inference_mode(False):  # a cached table must be usable by autograd later
        codes = torch.arange(1 << 16, dtype=torch.int32).to(torch.uint16)
        return codes.view(EIGHT_BIT).to(torch.bfloat16).view(torch.int32)


def stored_as(values: Tensor, dtype: torch.dtype | None) -> Tensor:
    """Kept values in the value dtype ``dtype`` (None: as they are). The 8-bit one saturates:
    a magnitude above its largest finite number becomes that number (a plain conversion
    makes it NaN); NaN stays NaN."""
    if dtype == EIGHT_BIT:
        largest = torch.finfo(dtype).max
        values = values.clamp(-largest, largest)
    return values if dtype is None else values.to(dtype)


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32 (half precisions compute in float32)."""
    double = any(t is not None and t.dtype == torch.float64 for t in tensors)
    return torch.float64 if double else torch.float32


def exact(device: torch.device):
    """Autocast off: spectra and kernel spectra are computed in float32 (or float64) however
    the caller autocasts (the DFT matmuls would otherwise round to bfloat16)."""
    return torch.autocast(device_type=device.type, enabled=False)


def complex_dtype(real: torch.dtype) -> torch.dtype:
    """The complex dtype of ``real``'s precision: complex128 for float64, else complex64."""
    return torch.complex128 if real == torch.float64 else torch.complex64


def runs(total: int, step: int) -> list[slice]:
    """``range(total)`` as consecutive slices ``step`` long (the last may be shorter): the
    tiles, chunks and runs that bound a layer's transients."""
    return [slice(start, min(start + step, total)) for start in range(0, total, step)]


def snap_zeros(table: Tensor) -> Tensor:
    """A DFT table (real, or complex viewed as real) with the cosines and sines of quarter
    turns set to the zero they are: computed, they come out near 6e-17, and their products
    with small gradients fall to subnormals, which slow every later GEMM on CPU threefold.
    A true nonzero entry of a table on grids up to thousands of points is far above 1e-12."""
    real = torch.view_as_real(table) if table.is_complex() else table
    snapped = real.masked_fill(real.abs() < 1e-12, 0.0)
    return torch.view_as_complex(snapped) if table.is_complex() else snapped
