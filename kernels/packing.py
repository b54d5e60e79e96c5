"""Dense <-> compressed for the block's ends: unpack before the inverse FFT, pack the
spectral gradient after its adjoint. Each program handles one block of one map.

Bytes moved: unpack reads ``MF/8`` mask + ``v nnz`` values and writes ``8MF``; pack reads
the mask and the kept entries of the dense gradient and writes ``8 nnz``.
"""

import torch
import triton
import triton.language as tl
from spectriton.kernels._bits import packed_index

from spectriton.compressed import CompressedSpectrum, word_prefix
from spectriton.nvtx import ranged

BLOCK = 256


@triton.jit
def spectral_unpack_kernel(
    values_ptr, mask_ptr, prefix_ptr, offsets_ptr, dense_ptr, bins, words, BLOCK: tl.constexpr
):
    m = tl.program_id(0)
    f = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = f < bins
    kept, index = packed_index(mask_ptr, prefix_ptr, offsets_ptr, m, f, inside, words)
    dst = (m.to(tl.int64) * bins + f) * 2
    for part in tl.static_range(2):
        v = tl.load(values_ptr + index * 2 + part, mask=kept, other=0.0)
        tl.store(dense_ptr + dst + part, v.to(dense_ptr.dtype.element_ty), mask=inside)


@triton.jit
def spectral_pack_kernel(
    dense_ptr, mask_ptr, prefix_ptr, offsets_ptr, values_ptr, bins, words, BLOCK: tl.constexpr
):
    m = tl.program_id(0)
    f = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = f < bins
    kept, index = packed_index(mask_ptr, prefix_ptr, offsets_ptr, m, f, inside, words)
    src = (m.to(tl.int64) * bins + f) * 2
    for part in tl.static_range(2):
        v = tl.load(dense_ptr + src + part, mask=kept)
        tl.store(values_ptr + index * 2 + part, v.to(values_ptr.dtype.element_ty), mask=kept)


@ranged("unpack")
def unpack(spectrum: CompressedSpectrum) -> torch.Tensor:
    """Triton twin of :func:`spectriton.reference.unpack`."""
    dense = torch.empty(spectrum.shape, dtype=spectrum.dense_dtype, device=spectrum.values.device)
    if spectrum.numel:
        words = spectrum.mask.shape[1]
        spectral_unpack_kernel[(spectrum.maps, triton.cdiv(spectrum.bins, BLOCK))](
            spectrum.values,
            spectrum.mask,
            word_prefix(spectrum.mask),
            spectrum.offsets,
            torch.view_as_real(dense),
            spectrum.bins,
            words,
            BLOCK=BLOCK,
        )
    return dense


@ranged("pack")
def pack(dense: torch.Tensor, mask: torch.Tensor, offsets: torch.Tensor, nnz: int) -> torch.Tensor:
    """Triton twin of :func:`spectriton.reference.pack`."""
    pairs = torch.view_as_real(dense.contiguous())
    maps, words = mask.shape
    bins = dense.numel() // max(maps, 1)
    values = torch.empty(nnz, 2, dtype=pairs.dtype, device=dense.device)
    if nnz:
        spectral_pack_kernel[(maps, triton.cdiv(bins, BLOCK))](
            pairs, mask, word_prefix(mask), offsets, values, bins, words, BLOCK=BLOCK
        )
    return values
