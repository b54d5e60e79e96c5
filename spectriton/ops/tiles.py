"""Kernel tiles: a layer's kernel spectrum built, used and freed a tile at a time.

A layer's kernel spectrum ``K (bins, C / groups, O)`` can outweigh everything else the
layer holds: a 512 -> 512 layer on a 6 x 4 half spectrum has 48 MiB of kernel spectrum
(complex64) for a 9 MiB weight, while a batch of 8 makes a 0.75 MiB product spectrum.
A layer builds ``K``, ``K^H`` and the kernel gradient ``gK`` a tile of at most
``TILE_ENTRIES`` complex entries at a time (one bin and one output channel at least): a
run of frequencies by a run of output channels. Each tile reads only its channels' taps
and writes only their rows of the weight's gradient; the frequency runs are taken in
order, the channel runs inside each, so that a source's dense tile is made once per
frequency run and its gradient summed over the channel runs. So the kernel-spectrum
transients stay within a few tiles (README, "Peak memory"), and :func:`kernel_tiles`
shapes the tiles for the least traffic besides. A strided layer's :func:`output_runs`
bound its dense product spectrum instead.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from torch import Tensor

from spectriton import transforms
from spectriton.numerics import runs

TILE_ENTRIES = 1 << 18  # complex entries of one kernel-spectrum tile: 2 MiB in complex64


class Tile(NamedTuple):
    """A run of frequencies and a run of output channels of a layer's kernel spectrum."""

    bins: slice
    outs: slice


def kernel_tiles(
    bins: int, channels: int, out_channels: int, batch: int = 1, taps: int = 1, groups: int = 1
) -> list[Tile]:
    """Tiles of ``range(bins) x range(out_channels)`` whose kernel spectra (``channels``
    entries a bin and output channel, ``channels`` per group) hold at most
    ``TILE_ENTRIES``, one bin and one channel at least; frequency-major.

    A frequency run reads every channel's taps (``O C taps`` reals) and adds to the
    weight's gradient; a channel run adds to the sources' gradient on its frequencies
    (``bins N C`` complex). With ``b`` bins a tile, the traffic ``12 O C taps bins / b +
    16 bins N C^2 O b / TILE_ENTRIES`` (bytes) is least at ``b = sqrt(3 taps TILE_ENTRIES /
    (4 N C))``; a grouped layer's channel runs are whole (a run would cut its groups)."""
    if bins * channels * out_channels <= TILE_ENTRIES:
        return [Tile(slice(0, bins), slice(0, out_channels))]
    step_outs = out_channels
    if groups == 1:
        per_tile = channels * _tile_bins(bins, channels, batch, taps)
        step_outs = min(out_channels, max(1, TILE_ENTRIES // per_tile))
    step_bins = max(1, TILE_ENTRIES // (channels * step_outs))
    return [Tile(b, o) for b in runs(bins, step_bins) for o in runs(out_channels, step_outs)]


def weight_tiles(bins: int, part: Tensor, batch: int, groups: int = 1) -> list[Tile]:
    """:func:`kernel_tiles` of a weight's part ``(O, C / groups, kh, kw)`` (a layer's, or its
    channels for one source or one run of outputs) on ``bins`` frequencies."""
    return kernel_tiles(bins, part.shape[1], part.shape[0], batch, part[0, 0].numel(), groups)


def _tile_bins(bins: int, channels: int, batch: int, taps: int) -> int:
    """The frequencies a tile of a layer with channel runs takes (:func:`kernel_tiles`)."""
    best = math.sqrt(3 * taps * TILE_ENTRIES / (4 * max(batch, 1) * channels))
    return min(bins, max(1, round(best)))


def output_runs(bins: int, batch: int, out_channels: int, groups: int = 1) -> list[slice]:
    """Runs of output channels whose dense product spectra (``bins x batch`` entries a
    channel) hold at most ``TILE_ENTRIES``, one channel at least: a strided layer's product
    (forward) and gradient (backward) on its block's grid, cropped a run at a time. A grouped
    layer runs whole (a run would cut its groups)."""
    return runs(out_channels, out_channels if groups > 1 else max(1, TILE_ENTRIES // max(bins * batch, 1)))


def part_of(t: Tensor | None, run: slice) -> Tensor | None:
    """``t``'s entries in ``run`` (a per-output-channel bias or scale), or None."""
    return None if t is None else t[run]


def tiled_product(ops, weight: Tensor, spectrum_in, grid, shift, bias_dc, groups: int, tiles) -> Tensor:
    """The product spectrum ``(bins, N, O)`` of ``spectrum_in`` with ``weight``'s kernel
    spectrum on ``grid``, built over ``tiles`` (:func:`kernel_tiles`); ``bias_dc`` goes to
    the DC bin. One tile: the backend's product on the operands as they are; an unshifted
    1 x 1 kernel: one product with its one matrix (:func:`~spectriton.transforms.pointwise_kernel`)."""
    if groups == 1 and transforms.is_pointwise(weight.shape[2:], shift):
        return ops.product(spectrum_in, transforms.pointwise_kernel(weight), bias_dc)
    kernels = transforms.kernel_spectra(weight, grid, shift, False, tiles)
    if len(tiles) == 1:
        return ops.grouped_product(spectrum_in, next(kernels), bias_dc, groups)
    dense = ops.unpack(spectrum_in) if not isinstance(spectrum_in, Tensor) else spectrum_in
    out = None
    for tile, kernel in zip(tiles, kernels):
        bias_part = part_of(bias_dc, tile.outs) if tile.bins.start == 0 else None
        part = ops.grouped_product(dense[tile.bins], kernel, bias_part, groups)
        if out is None:
            out = part.new_empty(dense.shape[0], dense.shape[1], weight.shape[0])
        out[tile.bins, :, tile.outs] = part
        del kernel, part  # this tile's, before the next is made
    return out
