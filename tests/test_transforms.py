"""The transforms between space and frequency-major spectra, against their definitions
(DESIGN.md section 2) and their adjoints by the inner-product identity and against
torch.autograd."""

import pytest
import torch

from spectriton import transforms
from spectriton.geometry import LayerShape, block_geometry

D = torch.float64
GRIDS = [(7, 7), (9, 8), (10, 11), (34, 34)]


def _frequency_major(spectrum):
    return spectrum.permute(2, 3, 0, 1).reshape(-1, *spectrum.shape[:2])


@pytest.mark.parametrize("grid", GRIDS, ids=str)
@pytest.mark.parametrize("shift", [(0, 0), (1, 2)], ids=["no_shift", "shift"])
def test_kernel_spectrum_is_the_conjugated_transposed_fft(grid, shift):
    w = torch.randn(4, 3, 3, 2, dtype=D)
    padded = w.new_zeros(4, 3, *grid)
    padded[..., :3, :2] = w
    expected = _frequency_major(torch.fft.rfft2(torch.roll(padded, shift, dims=(-2, -1))))
    kernel = transforms.kernel_spectrum(w, grid, shift)
    assert kernel.shape == (expected.shape[0], 3, 4) and kernel.mT.is_contiguous()  # as the weight is
    torch.testing.assert_close(kernel, expected.conj().transpose(1, 2))
    adjoint = transforms.kernel_spectrum(w, grid, shift, adjoint=True)
    assert adjoint.is_contiguous()
    torch.testing.assert_close(adjoint, kernel.mH)


def _check_adjoint(forward, adjoint, x, g):
    """<forward(x), g> == <x, adjoint(g)> in the real inner product, and autograd through
    ``forward`` gives ``adjoint(g)`` (the GEMM transforms' own backward is their adjoint)."""
    x = x.clone().requires_grad_()
    y = forward(x)
    (by_autograd,) = torch.autograd.grad(y, x, g)
    back = adjoint(g)
    torch.testing.assert_close(_inner(y.detach(), g), _inner(x.detach(), back))
    torch.testing.assert_close(back, by_autograd)


def _inner(a, b):
    """The real inner product ``Re sum conj(a) b``."""
    as_real = (lambda t: torch.view_as_real(t)) if a.is_complex() else (lambda t: t)
    return (as_real(a) * as_real(b)).sum()


@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_kernel_spectrum_adjoint(grid):
    w = torch.randn(4, 3, 3, 3, dtype=D)
    g = torch.randn(grid[0] * (grid[1] // 2 + 1), 3, 4, dtype=torch.complex128)
    _check_adjoint(
        lambda w: transforms.kernel_spectrum(w, grid, (1, 0)),
        lambda g: transforms.kernel_spectrum_adjoint(g, grid, (3, 3), (1, 0)),
        w,
        g,
    )


@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_map_spectrum_and_its_adjoint(grid):
    x = torch.randn(2, 3, grid[0] - 2, grid[1] - 1, dtype=D)
    spectrum = transforms.map_spectrum(x, grid)
    torch.testing.assert_close(spectrum, _frequency_major(torch.fft.rfft2(x, s=grid, norm="ortho")))
    g = torch.randn_like(spectrum)
    _check_adjoint(
        lambda x: transforms.map_spectrum(x, grid),
        lambda g: transforms.map_spectrum_adjoint(g, grid, x.shape[-2:]),
        x,
        g,
    )


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("size,k,p", [((9, 9), 3, 1), ((8, 11), 5, 2), ((7, 7), 3, 3)], ids=str)
def test_to_space_crops_circularly_and_its_adjoint(size, k, p, stride):
    geom = block_geometry([LayerShape((k, k), (p, p), (stride, stride))], size)
    spectrum = torch.randn(geom.bins, 2, 3, dtype=torch.complex128)
    space = torch.fft.irfft2(spectrum.view(*geom.half, 2, 3).permute(2, 3, 0, 1), s=geom.grid, norm="ortho")
    rows = (torch.arange(0, geom.full[0], stride) - geom.offset[0]) % geom.grid[0]
    cols = (torch.arange(0, geom.full[1], stride) - geom.offset[1]) % geom.grid[1]
    y = transforms.to_space(spectrum, geom)
    torch.testing.assert_close(y, space[:, :, rows][:, :, :, cols])
    _check_adjoint(
        lambda s: transforms.to_space(s, geom),
        lambda g: transforms.to_space_adjoint(g, geom),
        spectrum,
        torch.randn_like(y),
    )
