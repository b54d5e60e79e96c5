"""Frequency tiles (spectriton.ops.tiles): kernel spectra built a run of bins at a time give
what the whole kernel spectrum gives, and a layer whose kernel spectrum is split into tiles
has the outputs and gradients of the whole."""

import pytest
import torch
from torch.autograd import gradcheck

import spectriton as st
from spectriton import transforms
from spectriton.ops import tiles
from spectriton.ops.tiles import kernel_tiles

GRID = (6, 7)  # 24 bins


@pytest.mark.parametrize("channels, out_channels", [(1, 1), (3, 4), (512, 512), (4096, 4096)])
def test_tiles_cover_the_bins_within_the_budget(channels, out_channels):
    bins = 24
    runs = kernel_tiles(bins, channels, out_channels)
    assert [b for t in runs for b in range(t.start, t.stop)] == list(range(bins))
    for t in runs:
        entries = (t.stop - t.start) * channels * out_channels
        assert t.stop - t.start == 1 or entries <= tiles.TILE_ENTRIES
    assert (len(runs) == 1) == (bins * channels * out_channels <= tiles.TILE_ENTRIES)


@pytest.mark.parametrize("adjoint", [False, True])
def test_kernel_spectra_by_tiles_are_the_whole_one(adjoint, monkeypatch):
    monkeypatch.setattr(tiles, "TILE_ENTRIES", 5 * 12)  # 5 bins a tile
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    runs = kernel_tiles(24, 3, 4)
    assert len(runs) == 5
    parts = list(transforms.kernel_spectra(weight, GRID, (1, 2), adjoint, runs))
    whole = transforms.kernel_spectrum(weight, GRID, (1, 2), adjoint)
    torch.testing.assert_close(torch.cat(parts), whole, atol=0, rtol=0)


def test_kernel_taps_by_tiles_add_up_to_the_adjoint(monkeypatch):
    monkeypatch.setattr(tiles, "TILE_ENTRIES", 1)  # a bin a tile
    g = torch.randn(24, 3, 4, dtype=torch.complex128)
    taps = None
    for t in kernel_tiles(24, 3, 4):
        taps = transforms.kernel_taps(g[t], GRID, (3, 3), (1, 0), t, out=taps)
    expected = transforms.kernel_spectrum_adjoint(g, GRID, (3, 3), (1, 0))
    torch.testing.assert_close(transforms.taps_as_weight(taps, 4, (3, 3)), expected, atol=1e-12, rtol=0)


def _step(layer, x):
    y = layer(x)
    return [y, *torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])]


@pytest.mark.parametrize(
    "options",
    [{}, {"stride": 2}, {"normalize": True, "affine": True}, {"groups": 4}, {"groups": 4, "stride": 2}],
    ids=["plain", "strided", "normalised", "grouped", "grouped-strided"],
)
def test_a_layer_by_tiles_gives_the_whole_layers_outputs_and_gradients(options, monkeypatch):
    """A bin a tile against one tile: outputs and every gradient, split tanh at beta 0
    (no keep decision for round-off to move), the second layer reading the first's
    compressed output."""
    torch.manual_seed(0)
    common = dict(padding=1, activation="split_tanh", dtype=torch.float64)
    model = st.SpectralSequential(
        st.SpectralConv2d(8, 8, 3, **common), st.SpectralConv2d(8, 4, 3, **common, **options)
    )
    x = torch.randn(2, 8, 6, 5, dtype=torch.float64, requires_grad=True)
    whole = _step(model, x)
    monkeypatch.setattr(tiles, "TILE_ENTRIES", 1)
    for a, b in zip(whole, _step(model, x), strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_gradcheck_through_tiles(monkeypatch):
    monkeypatch.setattr(tiles, "TILE_ENTRIES", 1)
    layer = st.SpectralConv2d(3, 2, 3, padding=1, dtype=torch.float64)
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        return torch.func.functional_call(layer, {"weight": w, "bias": b}, (x,))

    assert gradcheck(f, (x, layer.weight, layer.bias))
