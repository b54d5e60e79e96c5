"""Between space and spectrum: the FFTs of DESIGN.md section 2 and their adjoints.

Both backends use these (cuFFT or pocketFFT through ``torch.fft``). The adjoints are what
the autograd functions need in backward; each matches what ``torch.autograd`` computes
through the forward transform, which the tests check.
"""

from __future__ import annotations

import torch

from spectriton.geometry import BlockGeometry


def map_spectrum(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Spatial maps ``(N, C, H, W)`` -> half spectra on ``grid`` (zero-padded, orthonormal)."""
    return torch.fft.rfft2(x, s=grid, norm="ortho")


def map_spectrum_adjoint(g: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Adjoint of :func:`map_spectrum`: half-spectrum gradient -> spatial gradient of ``size``."""
    full = g.new_zeros(*g.shape[:-1], grid[1])
    full[..., : g.shape[-1]] = g
    return torch.fft.ifft2(full, norm="ortho").real[..., : size[0], : size[1]]


def kernel_spectrum(
    weight: torch.Tensor, grid: tuple[int, int], shift: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """Spatial kernels ``(O, C, kh, kw)`` -> unnormalised half spectra on ``grid``.

    ``shift`` rolls the zero-padded kernel first: a layer that sums sources whose crops
    differ (a dense block) shifts each source's kernel so their outputs line up.
    """
    if shift == (0, 0):
        return torch.fft.rfft2(weight, s=grid)
    padded = weight.new_zeros(*weight.shape[:2], *grid)
    padded[..., : weight.shape[2], : weight.shape[3]] = weight
    return torch.fft.rfft2(torch.roll(padded, shift, dims=(-2, -1)))


def kernel_spectrum_adjoint(
    g: torch.Tensor, grid: tuple[int, int], kernel: tuple[int, int], shift: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """Adjoint of :func:`kernel_spectrum`, cropped to the kernel (paper, eq. 4)."""
    full = g.new_zeros(*g.shape[:-1], grid[1])
    full[..., : g.shape[-1]] = g
    space = torch.fft.ifft2(full, norm="forward").real
    if shift != (0, 0):
        space = torch.roll(space, (-shift[0], -shift[1]), dims=(-2, -1))
    return space[..., : kernel[0], : kernel[1]]


def _crop_index(geom: BlockGeometry, axis: int, device: torch.device) -> torch.Tensor:
    """Circular rows (or columns) that the block's output reads, in output order."""
    kept = torch.arange(0, geom.full[axis], geom.stride[axis], device=device)
    return (kept - geom.offset[axis]) % geom.grid[axis]


def to_space(spectrum: torch.Tensor, geom: BlockGeometry) -> torch.Tensor:
    """Half spectra -> spatial output of the block: inverse FFT, circular crop, stride.

    The result is a compact tensor of the output's size, not a view of the grid, so
    whatever later saves it holds only the output's bytes.
    """
    y = torch.fft.irfft2(spectrum, s=geom.grid, norm="ortho")
    y = y.index_select(-2, _crop_index(geom, 0, y.device))
    return y.index_select(-1, _crop_index(geom, 1, y.device))


def to_space_adjoint(g: torch.Tensor, geom: BlockGeometry) -> torch.Tensor:
    """Adjoint of :func:`to_space`: spatial output gradient -> half-spectrum gradient."""
    rows = g.new_zeros(*g.shape[:-2], geom.grid[0], g.shape[-1])
    rows.index_copy_(-2, _crop_index(geom, 0, g.device), g)
    full = g.new_zeros(*g.shape[:-2], *geom.grid)
    full.index_copy_(-1, _crop_index(geom, 1, g.device), rows)
    spectrum = torch.fft.rfft2(full, norm="ortho")
    mirrored = geom.grid[1] - spectrum.shape[-1]  # columns irfft2 counts twice
    if mirrored > 0:
        spectrum[..., 1 : 1 + mirrored] *= 2
    return spectrum


def bias_scale(grid: tuple[int, int]) -> float:
    """What a bias of 1 adds to the DC bin so that it adds 1 to every output pixel."""
    return float(grid[0] * grid[1]) ** 0.5
