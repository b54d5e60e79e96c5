"""Frequency tiles: a layer's kernel spectrum built, used and freed a run of bins at a time.

A layer's kernel spectrum ``K (bins, C / groups, O)`` can outweigh everything else the
layer holds: a 512 -> 512 layer on a 6 x 4 half spectrum has 48 MiB of kernel spectrum
(complex64) for a 9 MiB weight, while a batch of 8 makes a 0.75 MiB product spectrum.
A layer builds ``K``, ``K^H`` and the kernel gradient ``gK`` a tile of at most
``TILE_ENTRIES`` complex entries at a time (one bin at least) and sums the tiles' weight
gradients, so its kernel-spectrum transients stay within a few tiles (README, "Peak
memory"). The kernel tiles depend on the layer's shape and grid only, not on the batch
(a strided layer's :func:`output_runs` do depend on it).
"""

from __future__ import annotations

from torch import Tensor

from spectriton import transforms
from spectriton.numerics import runs

TILE_ENTRIES = 1 << 18  # complex entries of one kernel-spectrum tile: 2 MiB in complex64


def kernel_tiles(bins: int, channels: int, out_channels: int) -> list[slice]:
    """Runs of ``range(bins)`` whose kernel spectra (``channels x out_channels`` entries a
    bin, ``channels`` per group) hold at most ``TILE_ENTRIES``, one bin at least."""
    return runs(bins, max(1, TILE_ENTRIES // max(channels * out_channels, 1)))


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
    the DC bin. One tile: the backend's product on the operands as they are."""
    kernels = transforms.kernel_spectra(weight, grid, shift, False, tiles)
    if len(tiles) == 1:
        return ops.grouped_product(spectrum_in, next(kernels), bias_dc, groups)
    dense = ops.unpack(spectrum_in) if not isinstance(spectrum_in, Tensor) else spectrum_in
    out = None
    for tile, kernel in zip(tiles, kernels):
        part = ops.grouped_product(dense[tile], kernel, bias_dc if tile.start == 0 else None, groups)
        if out is None:
            out = part.new_empty(dense.shape[0], *part.shape[1:])
        out[tile] = part
        del kernel, part  # this tile's, before the next is made
    return out
