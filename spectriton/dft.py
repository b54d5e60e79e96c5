"""Two-dimensional real DFTs between chosen spatial positions and a half spectrum, as GEMMs.

Every transform of :mod:`spectriton.transforms` reads or writes a window of a zero-padded
grid: a map written at the grid's top-left corner (:func:`analysis` of ``range(h)``), or the
circular, strided crop a block's output reads (its ``positions``). On CPU and small grids
two GEMMs on cached DFT tables do that faster than pocketFFT: they skip the padding and
everything outside the crop, need no permuting copies (the half spectrum comes out
frequency-major, ``(bins, N, C)``), and at 6 to 40 points per side run 2x to 5x faster
(``bench/dft_check.py``). Larger grids, other devices and other dtypes keep the FFT
(:func:`use_gemm`).

With ``P`` the grid, ``r_i`` and ``c_j`` the positions, ``w_v`` the column weights and
``s = (P0 P1)^-1/2`` (orthonormal):

- ``analysis``:  ``X[u, v] = s w_v sum_ij x[i, j] exp(-2 pi i (u r_i / P0 + v c_j / P1))``
- ``synthesis``: ``y[i, j] = s Re sum_uv w_v X[u, v] exp(+2 pi i (u r_i / P0 + v c_j / P1))``

``mirrored`` is ``w_v`` on the columns that a real inverse transform counts twice (all but
the first and, on an even grid, the last); the others weigh 1. So ``irfft2`` followed by a
crop is ``synthesis(mirrored=2)``, and the adjoint of ``analysis(mirrored=w)`` is
``synthesis(mirrored=w)``.
"""

from __future__ import annotations

import functools
import math

import torch

from spectriton.backend import cpu_forms
from spectriton.numerics import complex_dtype, half_spectrum, runs, snap_zeros

GEMM_GRID = 40  # the largest grid side (points) transformed by GEMMs; above, FFTs


def use_gemm(t: torch.Tensor, grid: tuple[int, int]) -> bool:
    """Whether :func:`analysis` and :func:`synthesis` beat the FFT for ``t`` on ``grid``:
    CPU tensors in float32 or float64 (complex64 or complex128) on grids up to
    ``GEMM_GRID`` points a side."""
    real = t.real.dtype if t.is_complex() else t.dtype
    return cpu_forms(t.device) and real in (torch.float32, torch.float64) and max(grid) <= GEMM_GRID


CHUNK_BYTES = 4 << 20  # the most bytes of one transform's complex grid: larger batches go by runs


def channel_chunks(batch: int, channels: int, grid: tuple[int, int]) -> list[slice]:
    """Runs of channels whose complex grids (``batch x run x grid``) fit ``CHUNK_BYTES``, one
    channel at least: a transform's transients (its intermediate products, the permuting
    copies) stay within a few chunks however large the batch (README, "Peak memory")."""
    return runs(channels, max(1, CHUNK_BYTES // max(batch * grid[0] * grid[1] * 8, 1)))


def sample_chunks(batch: int, channels: int, grid: tuple[int, int]) -> list[slice]:
    """Runs of samples whose complex grids (``run x channels x grid``) fit ``CHUNK_BYTES``,
    one sample at least: how :func:`analysis` and :func:`synthesis` bound their transients.
    A run of samples is, at each frequency, one contiguous block of the frequency-major
    spectrum, so their GEMMs read and write it in place (a run of channels would be copied)."""
    return runs(batch, max(1, CHUNK_BYTES // max(channels * grid[0] * grid[1] * 8, 1)))


def analysis(
    x: torch.Tensor,
    grid: tuple[int, int],
    rows: tuple[int, ...],
    cols: tuple[int, ...],
    mirrored: float = 1.0,
) -> torch.Tensor:
    """Real maps ``(N, C, len(rows), len(cols))`` at grid positions ``rows x cols`` ->
    half spectra ``(bins, N, C)`` (module docstring), by :func:`sample_chunks`.
    Differentiable: its gradient is :func:`synthesis` (the adjoint), and it keeps nothing."""
    return _Analysis.apply(x, grid, rows, cols, mirrored)


def synthesis(
    spectrum: torch.Tensor,
    grid: tuple[int, int],
    rows: tuple[int, ...],
    cols: tuple[int, ...],
    mirrored: float = 1.0,
) -> torch.Tensor:
    """Half spectra ``(bins, N, C)`` -> real maps ``(N, C, len(rows), len(cols))`` at grid
    positions ``rows x cols`` (module docstring), by :func:`sample_chunks`.
    Differentiable: its gradient is :func:`analysis` (the adjoint), and it keeps nothing."""
    return _Synthesis.apply(spectrum, grid, rows, cols, mirrored)


class _Analysis(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, grid, rows, cols, mirrored):
        ctx.args = (grid, rows, cols, mirrored)
        batch, channels = x.shape[:2]
        out = x.new_empty(*half_spectrum(grid), batch, channels, dtype=complex_dtype(x.dtype))
        for run in sample_chunks(batch, channels, grid):
            _analyse(x[run], grid, rows, cols, mirrored, out[:, :, run])
        return out.view(-1, batch, channels)

    @staticmethod
    def backward(ctx, g):
        return synthesis(g, *ctx.args), None, None, None, None


class _Synthesis(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spectrum, grid, rows, cols, mirrored):
        ctx.args = (grid, rows, cols, mirrored)
        _, batch, channels = spectrum.shape
        halves = spectrum.view(*half_spectrum(grid), batch, channels)
        out = spectrum.real.new_empty(batch, channels, len(rows), len(cols))
        for run in sample_chunks(batch, channels, grid):
            _synthesise(halves[:, :, run], grid, rows, cols, mirrored, out[run])
        return out

    @staticmethod
    def backward(ctx, g):
        return analysis(g, *ctx.args), None, None, None, None


def _analyse(x, grid, rows, cols, mirrored, out) -> None:
    """:func:`analysis` of a run of samples ``x``, written to their ``(half rows, half cols,
    n, C)`` part ``out`` of the whole spectrum."""
    height, width = x.shape[2:]
    row_table, col_table = _tables(grid, rows, cols, mirrored, -1, x.dtype, x.device)
    # along the columns, one real GEMM into interleaved (re, im) pairs: (n C, h, half cols)
    pairs = (x.reshape(-1, width) @ col_table).view(-1, height, col_table.shape[1] // 2, 2)
    stacked = torch.view_as_complex(pairs).permute(1, 2, 0).contiguous()  # (h, half cols, n C)
    # along the rows, complex GEMMs written in place: one for the whole batch, else one a column
    if out.is_contiguous():
        torch.mm(row_table, stacked.view(height, -1), out=out.view(row_table.shape[0], -1))
    else:
        torch.matmul(row_table, stacked.transpose(0, 1), out=out.flatten(2).transpose(0, 1))


def _synthesise(halves, grid, rows, cols, mirrored, out) -> None:
    """:func:`synthesis` of a run of samples' part ``halves`` ``(half rows, half cols, n, C)``
    of a spectrum, written to their maps ``out``."""
    real = halves.real.dtype
    row_table, col_table = _tables(grid, rows, cols, mirrored, 1, real, halves.device)
    # along the rows, complex GEMMs read in place: one for the whole batch, else one a column
    half_rows = halves.new_empty(len(rows), *halves.shape[1:])  # (h, half cols, n, C)
    if halves.is_contiguous():
        torch.mm(row_table, halves.view(row_table.shape[1], -1), out=half_rows.view(len(rows), -1))
    else:
        torch.matmul(row_table, halves.flatten(2).transpose(0, 1), out=half_rows.flatten(2).transpose(0, 1))
    half_rows = half_rows.flatten(2)
    # along the columns, the real part of a batched complex GEMM, permuted as it is written
    y = torch.matmul(half_rows.transpose(1, 2), col_table).real  # (h, n C, w)
    out.copy_(y.permute(1, 0, 2).view(out.shape))


@functools.lru_cache(maxsize=512)
def _tables(grid, rows, cols, mirrored, sign, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The row table (complex ``(half rows, h)`` for analysis, ``(h, half rows)`` for
    synthesis) and the column table (real ``(w, 2 half cols)`` interleaving cosine and sine
    for analysis, complex ``(half cols, w)`` for synthesis), in ``dtype``'s precision."""
    half_rows, half_cols = half_spectrum(grid)
    weights = torch.full((half_cols,), float(mirrored), dtype=torch.float64)
    weights[0] = 1.0
    if grid[1] % 2 == 0:
        weights[-1] = 1.0
    row_phase = _phase(half_rows, rows, grid[0], sign) / math.sqrt(grid[0])  # (half rows, h)
    col_phase = _phase(half_cols, cols, grid[1], sign) * (weights / math.sqrt(grid[1])).view(-1, 1)
    precision = complex_dtype(dtype)
    with torch.inference_mode(False):  # a cached table must be usable by autograd later
        if sign < 0:
            row_table = row_phase.to(precision)
            col_table = torch.view_as_real(col_phase.T.contiguous()).reshape(len(cols), -1).to(dtype)
        else:
            row_table = row_phase.T.contiguous().to(precision)
            col_table = col_phase.to(precision)
        return row_table.to(device), col_table.to(device)


def _phase(frequencies: int, positions: tuple[int, ...], size: int, sign: int) -> torch.Tensor:
    """``exp(sign 2 pi i f p / size)``, complex128 ``(frequencies, len(positions))``, from
    exact integer phases modulo ``size``."""
    f = torch.arange(frequencies, dtype=torch.int64).view(-1, 1)
    p = torch.tensor(positions, dtype=torch.int64).view(1, -1)
    angle = (2 * math.pi / size) * (f * p % size).double()
    return snap_zeros(torch.polar(torch.ones_like(angle), sign * angle))
