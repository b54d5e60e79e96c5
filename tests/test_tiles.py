"""Kernel tiles (spectriton.ops.tiles): kernel spectra built a run of bins by a run of output
channels at a time give what the whole kernel spectrum gives, and a layer whose kernel
spectrum is split into tiles has the outputs and gradients of the whole."""

import pytest
import torch
from torch.autograd import gradcheck

import spectriton as st
from spectriton import transforms
from spectriton.ops import tiles
from spectriton.ops.tiles import kernel_tiles

GRID = (6, 7)  # 24 bins


@pytest.mark.parametrize(
    "channels, out_channels, batch, groups",
    [(1, 1, 1, 1), (3, 4, 8, 1), (512, 512, 32, 1), (512, 512, 2, 1), (64, 512, 8, 4), (4096, 4096, 8, 1)],
)
def test_tiles_cover_the_kernel_spectrum_once_within_the_budget(channels, out_channels, batch, groups):
    bins = 24
    found = kernel_tiles(bins, channels, out_channels, batch, 9, groups)
    cells = [(b, o) for t in found for b in range(bins)[t.bins] for o in range(out_channels)[t.outs]]
    assert sorted(cells) == [(b, o) for b in range(bins) for o in range(out_channels)]
    starts = [(t.bins.start, t.outs.start) for t in found]
    assert starts == sorted(starts)  # frequency-major
    for t in found:
        size = (t.bins.stop - t.bins.start, t.outs.stop - t.outs.start)
        assert size == (1, 1) or size[0] * size[1] * channels <= tiles.TILE_ENTRIES
        if groups > 1:
            assert t.outs == slice(0, out_channels)  # a run would cut the groups
    assert (len(found) == 1) == (bins * channels * out_channels <= tiles.TILE_ENTRIES)


def test_tiles_of_a_small_grid_with_many_channels_are_runs_of_channels():
    """512 -> 512 on 6 bins (a 1 x 1 map): every bin in one run, so each channel's taps are
    read once and its rows of the weight's gradient written once."""
    found = kernel_tiles(6, 512, 512, 32, 9)
    assert all(t.bins == slice(0, 6) for t in found) and len(found) > 1


@pytest.mark.parametrize("adjoint", [False, True])
def test_kernel_spectra_by_tiles_are_the_whole_one(adjoint, monkeypatch):
    monkeypatch.setattr(tiles, "TILE_ENTRIES", 5 * 6)  # 5 bins by 2 channels a tile
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    found = kernel_tiles(24, 3, 4, batch=1, taps=9)
    assert len({t.bins.start for t in found}) > 1 and len({t.outs.start for t in found}) > 1
    whole = transforms.kernel_spectrum(weight, GRID, (1, 2), adjoint)
    joined = torch.zeros_like(whole)
    for t, part in zip(found, transforms.kernel_spectra(weight, GRID, (1, 2), adjoint, found), strict=True):
        joined[(t.bins, t.outs) if adjoint else (t.bins, slice(None), t.outs)] = part
    torch.testing.assert_close(joined, whole, atol=0, rtol=0)


def test_kernel_taps_by_tiles_add_up_to_the_adjoint(monkeypatch):
    monkeypatch.setattr(tiles, "TILE_ENTRIES", 1)  # a bin and a channel a tile
    g = torch.randn(24, 3, 4, dtype=torch.complex128)
    taps = torch.full((4 * 3, 9), float("nan"), dtype=torch.float64)
    for t in kernel_tiles(24, 3, 4):
        rows = taps[t.outs.start * 3 : t.outs.stop * 3]
        part = g[t.bins, :, t.outs]
        transforms.kernel_taps(part, GRID, (3, 3), (1, 0), t.bins, out=rows, add=t.bins.start > 0)
    expected = transforms.kernel_spectrum_adjoint(g, GRID, (3, 3), (1, 0))
    torch.testing.assert_close(transforms.taps_as_weight(taps, 4, (3, 3)), expected, atol=1e-12, rtol=0)


def _step(layer, x):
    y = layer(x)
    return [y, *torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])]


@pytest.mark.parametrize("entries", [1, 512], ids=["bin-and-channel", "runs-of-both"])
@pytest.mark.parametrize(
    "options",
    [{}, {"stride": 2}, {"normalize": True, "affine": True}, {"groups": 4}, {"groups": 4, "stride": 2}],
    ids=["plain", "strided", "normalised", "grouped", "grouped-strided"],
)
def test_a_layer_by_tiles_gives_the_whole_layers_outputs_and_gradients(options, entries, monkeypatch):
    """Tiles (a bin and a channel each; 2 runs of 16 bins by 2 of 4 channels) against one:
    outputs and every gradient, split tanh at beta 0
    (no keep decision for round-off to move), the second layer reading the first's
    compressed output."""
    torch.manual_seed(0)
    common = dict(padding=1, activation="split_tanh", dtype=torch.float64)
    model = st.SpectralSequential(
        st.SpectralConv2d(8, 8, 3, **common), st.SpectralConv2d(8, 4, 3, **common, **options)
    )
    x = torch.randn(2, 8, 6, 5, dtype=torch.float64, requires_grad=True)
    whole = _step(model, x)
    monkeypatch.setattr(tiles, "TILE_ENTRIES", entries)
    for a, b in zip(whole, _step(model, x), strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_gradcheck_through_tiles(monkeypatch):
    monkeypatch.setattr(tiles, "TILE_ENTRIES", 1)
    layer = st.SpectralConv2d(3, 2, 3, padding=1, dtype=torch.float64)
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        return torch.func.functional_call(layer, {"weight": w, "bias": b}, (x,))

    assert gradcheck(f, (x, layer.weight, layer.bias))


@pytest.mark.parametrize("stride", [1, 2], ids=["plain", "strided"])
def test_an_output_gradient_packed_a_channel_run_at_a_time_is_the_whole_one(stride, monkeypatch):
    """The block output's backward packs its gradient's spectrum a run of channels at a time
    (spectriton.ops.output) where the channels take several runs: the same packed values,
    so the same gradients, as packing the whole spectrum at once."""
    from spectriton import dft

    torch.manual_seed(0)
    layer = st.SpectralConv2d(3, 8, 3, padding=1, stride=stride, activation="split_tanh", dtype=torch.float64)
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64, requires_grad=True)
    whole = _step(layer, x)
    monkeypatch.setattr(dft, "CHUNK_BYTES", 1)  # a channel a run
    assert len(dft.channel_chunks(2, 8, (11, 9))) == 8
    for a, b in zip(whole, _step(layer, x), strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
