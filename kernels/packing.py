"""Dense <-> compressed, in stream order: unpack before the inverse FFT, pack the spectral
gradient after its adjoint and the staged kept entries after a threshold. Each program
handles ``BLOCK`` consecutive stream entries.

Bytes moved: unpack reads ``E/8`` mask + ``v nnz`` values and writes ``8E``; pack reads the
mask and the kept entries of the dense input and writes ``v nnz``.
"""

from collections.abc import Iterator

import torch
import triton
import triton.language as tl
from spectriton.kernels._bits import rounded_to, stream_lookup

from spectriton.compressed import CompressedSpectrum, frequency_offsets, word_prefix
from spectriton.numerics import as_carried, spectrum_bins
from spectriton.nvtx import ranged

BLOCK = 512


@triton.jit
def spectral_unpack_kernel(values_ptr, mask_ptr, prefix_ptr, dense_ptr, numel, BLOCK: tl.constexpr):
    p = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = p < numel
    kept, index = stream_lookup(mask_ptr, prefix_ptr, p, inside)
    pair = tl.arange(0, 2)
    v = tl.load(values_ptr + 2 * index[:, None] + pair[None, :], mask=kept[:, None], other=0.0)
    tl.store(
        dense_ptr + 2 * p[:, None] + pair[None, :], v.to(dense_ptr.dtype.element_ty), mask=inside[:, None]
    )


@triton.jit
def spectral_pack_kernel(dense_ptr, mask_ptr, prefix_ptr, values_ptr, numel, BLOCK: tl.constexpr):
    p = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    kept, index = stream_lookup(mask_ptr, prefix_ptr, p, p < numel)
    pair = tl.arange(0, 2)
    v = tl.load(dense_ptr + 2 * p[:, None] + pair[None, :], mask=kept[:, None])
    v = rounded_to(v, values_ptr.dtype.element_ty)
    tl.store(values_ptr + 2 * index[:, None] + pair[None, :], v, mask=kept[:, None])


def _pack_into(values: torch.Tensor, pairs: torch.Tensor, mask: torch.Tensor, prefix: torch.Tensor) -> None:
    numel = pairs.shape[0]
    spectral_pack_kernel[(triton.cdiv(numel, BLOCK),)](pairs, mask, prefix, values, numel, BLOCK=BLOCK)


@ranged("unpack")
def unpack(spectrum: CompressedSpectrum) -> torch.Tensor:
    """Triton twin of :func:`spectriton.reference.unpack` (8-bit values read as bfloat16)."""
    shape = (spectrum.bins, spectrum.batch, spectrum.channels)
    dense = torch.empty(shape, dtype=spectrum.dense_dtype, device=spectrum.values.device)
    if spectrum.numel:
        spectral_unpack_kernel[(triton.cdiv(spectrum.numel, BLOCK),)](
            as_carried(spectrum.values), spectrum.mask, word_prefix(spectrum.mask), torch.view_as_real(dense),
            spectrum.numel, BLOCK=BLOCK,
        )  # fmt: skip
    return dense


def unpack_tiles(spectrum: CompressedSpectrum, tiles: list[slice]) -> Iterator[torch.Tensor]:
    """Twin of :func:`spectriton.reference.unpack_tiles` that unpacks the whole spectrum once
    (a tile alone would need its offsets read on the host) and yields its rows."""
    dense = unpack(spectrum)
    for tile in tiles:
        yield dense[tile]


@ranged("pack")
def pack(dense: torch.Tensor, mask: torch.Tensor, nnz: int) -> torch.Tensor:
    """Triton twin of :func:`spectriton.reference.pack`."""
    pairs = torch.view_as_real(dense.contiguous()).view(-1, 2)
    values = torch.empty(nnz, 2, dtype=pairs.dtype, device=dense.device)
    if nnz:
        _pack_into(values, pairs, mask, word_prefix(mask))
    return values


def compress_staged(
    staged: torch.Tensor, mask: torch.Tensor, batch: int, channels: int, grid, value_dtype
) -> CompressedSpectrum:
    """A compressed spectrum from its finished keep bits and a dense ``(E, 2)`` buffer that
    holds (at least) the kept entries. One host synchronisation: the count of kept entries,
    which sizes the values buffer."""
    prefix = word_prefix(mask)
    offsets = frequency_offsets(mask, prefix, spectrum_bins(grid), batch * channels)
    nnz = int(offsets[-1])
    values = torch.empty(nnz, 2, dtype=value_dtype or staged.dtype, device=staged.device)
    if nnz:
        _pack_into(values, staged, mask, prefix)
    return CompressedSpectrum._trusted(values, mask, offsets, batch, channels, grid)
