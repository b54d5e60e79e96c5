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


def kernel_spectrum(weight: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Spatial kernels ``(O, C, kh, kw)`` -> unnormalised half spectra on ``grid``."""
    return torch.fft.rfft2(weight, s=grid)


def kernel_spectrum_adjoint(g: torch.Tensor, grid: tuple[int, int], kernel: tuple[int, int]) -> torch.Tensor:
    """Adjoint of :func:`kernel_spectrum`, cropped to the kernel (paper, eq. 4)."""
    full = g.new_zeros(*g.shape[:-1], grid[1])
    full[..., : g.shape[-1]] = g
    return torch.fft.ifft2(full, norm="forward").real[..., : kernel[0], : kernel[1]]


def to_space(spectrum: torch.Tensor, geom: BlockGeometry) -> torch.Tensor:
    """Half spectra -> spatial output of the block: inverse FFT, circular crop, stride."""
    y = torch.fft.irfft2(spectrum, s=geom.grid, norm="ortho")
    y = torch.roll(y, shifts=geom.offset, dims=(-2, -1))
    return y[..., : geom.full[0] : geom.stride[0], : geom.full[1] : geom.stride[1]]


def to_space_adjoint(g: torch.Tensor, geom: BlockGeometry) -> torch.Tensor:
    """Adjoint of :func:`to_space`: spatial output gradient -> half-spectrum gradient."""
    full = g.new_zeros(*g.shape[:-2], *geom.grid)
    full[..., : geom.full[0] : geom.stride[0], : geom.full[1] : geom.stride[1]] = g
    full = torch.roll(full, shifts=(-geom.offset[0], -geom.offset[1]), dims=(-2, -1))
    spectrum = torch.fft.rfft2(full, norm="ortho")
    mirrored = geom.grid[1] - spectrum.shape[-1]  # columns irfft2 counts twice
    if mirrored > 0:
        spectrum[..., 1 : 1 + mirrored] *= 2
    return spectrum


def bias_scale(grid: tuple[int, int]) -> float:
    """What a bias of 1 adds to the DC bin so that it adds 1 to every output pixel."""
    return float(grid[0] * grid[1]) ** 0.5
