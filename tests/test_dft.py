"""DFTs as GEMMs (spectriton.dft) against torch.fft on a zero-padded grid, their adjoint
pairing, and the transforms built on them against their FFT form."""

import math

import pytest
import torch

from spectriton import dft, transforms
from spectriton.geometry import LayerShape, block_geometry

CASES = [  # grid, row positions, column positions: corner windows, wrapped and strided crops
    ((6, 6), (0, 1, 2, 3), (0, 1, 2, 3)),
    ((7, 9), (5, 6, 0, 1, 2), (8, 1, 3, 5)),
    ((10, 5), (0, 3, 6, 9), (4, 0, 1)),
]


def _weights(grid, mirrored):
    cols = grid[1] // 2 + 1
    w = torch.full((cols,), mirrored, dtype=torch.float64)
    w[0] = 1
    if grid[1] % 2 == 0:
        w[-1] = 1
    return w


def _placed(x, grid, rows, cols):
    full = x.new_zeros(*x.shape[:2], *grid)
    full[:, :, torch.tensor(rows).view(-1, 1), torch.tensor(cols).view(1, -1)] = x
    return full


@pytest.mark.parametrize("mirrored", [1.0, 2.0])
@pytest.mark.parametrize("grid, rows, cols", CASES)
def test_analysis_is_the_fft_of_the_placed_maps(grid, rows, cols, mirrored):
    x = torch.randn(2, 3, len(rows), len(cols), dtype=torch.float64)
    expected = torch.fft.rfft2(_placed(x, grid, rows, cols), norm="ortho") * _weights(grid, mirrored)
    got = dft.analysis(x, grid, rows, cols, mirrored)
    torch.testing.assert_close(got, expected.permute(2, 3, 0, 1).reshape(-1, 2, 3), atol=1e-12, rtol=0)


@pytest.mark.parametrize("grid, rows, cols", CASES)
def test_synthesis_is_the_inverse_fft_read_at_the_positions(grid, rows, cols):
    """With the mirrored columns weighted 2, synthesis is irfft2 then a gather."""
    spectrum = torch.fft.rfft2(torch.randn(2, 3, *grid, dtype=torch.float64), norm="ortho")
    space = torch.fft.irfft2(spectrum, s=grid, norm="ortho")
    expected = space[:, :, torch.tensor(rows).view(-1, 1), torch.tensor(cols).view(1, -1)]
    got = dft.synthesis(spectrum.permute(2, 3, 0, 1).reshape(-1, 2, 3), grid, rows, cols, mirrored=2.0)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("mirrored", [1.0, 2.0])
@pytest.mark.parametrize("grid, rows, cols", CASES)
def test_synthesis_is_the_adjoint_of_analysis(grid, rows, cols, mirrored):
    """``Re <analysis(x), g> = <x, synthesis(g)>`` for real ``x`` and complex ``g``."""
    x = torch.randn(2, 3, len(rows), len(cols), dtype=torch.float64)
    bins = grid[0] * (grid[1] // 2 + 1)
    g = torch.randn(bins, 2, 3, dtype=torch.complex128)
    left = (dft.analysis(x, grid, rows, cols, mirrored).conj() * g).real.sum()
    right = (x * dft.synthesis(g, grid, rows, cols, mirrored)).sum()
    assert math.isclose(left.item(), right.item(), rel_tol=1e-10)


def test_large_grids_and_other_dtypes_keep_the_fft():
    x = torch.randn(1, 1, 4, 4)
    assert dft.use_gemm(x, (dft.GEMM_GRID, 8)) and not dft.use_gemm(x, (dft.GEMM_GRID + 1, 8))
    assert not dft.use_gemm(x.half(), (8, 8)) and dft.use_gemm(x.double(), (8, 8))


@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "by-channel"])
@pytest.mark.parametrize("stride", [1, 2])
def test_transforms_give_what_their_fft_form_gives(stride, chunked, monkeypatch):
    """Every transform on a strided, cropped block geometry, by GEMMs and by FFTs (whole,
    or a channel at a time)."""
    geom = block_geometry([LayerShape((3, 3), (1, 1), (stride, stride))], (9, 7))
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    out = torch.randn(2, 3, *geom.out, dtype=torch.float64)
    spectrum = torch.randn(geom.bins, 2, 3, dtype=torch.complex128)

    def run():
        return [
            transforms.map_spectrum(x, geom.grid),
            transforms.map_spectrum_adjoint(spectrum, geom.grid, (9, 7)),
            transforms.to_space(spectrum, geom),
            transforms.to_space_adjoint(out, geom),
            transforms.place_spectrum(out, geom),
        ]

    if chunked:
        monkeypatch.setattr(dft, "CHUNK_BYTES", 1)
    by_gemm = run()
    monkeypatch.setattr(dft, "GEMM_GRID", 0)
    for a, b in zip(by_gemm, run(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
