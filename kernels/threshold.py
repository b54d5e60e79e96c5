"""Fused threshold + compaction + split tanh, and its backward (paper eq. 10).

Forward, one pass over the dense product spectrum: each program owns one map, walks it in
row-major blocks, reads each complex entry once and writes the keep-bitmask words, the
activated kept values packed in place at the front of the map, and the map's count. A
second, small kernel copies each map's run into the exact-size values buffer at offsets
from a prefix sum of the counts (deterministic: the same input gives the same bytes).

Bytes moved for ``M`` maps of ``F`` entries, ``nnz`` kept, ``v`` bytes per stored value:
``8MF`` read + ``MF/8`` mask + ``8 nnz`` in-place write (threshold kernel), then
``8 nnz`` read + ``v nnz`` write (gather kernel).
"""

import torch
import triton
import triton.language as tl

from spectriton.compressed import CompressedSpectrum, offsets_from_counts, words_per_map
from spectriton.nvtx import ranged
from spectriton.reference import scaled_threshold


@triton.jit
def _tanh(x):
    """tanh without libdevice: an odd series near 0, the exp form elsewhere (both exact
    to float32 round-off; NaN stays NaN, +-Inf gives +-1)."""
    ax = tl.abs(x)
    t = tl.exp(-2.0 * ax)
    far = (1.0 - t) / (1.0 + t)
    x2 = x * x
    near = ax * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))))
    r = tl.where(ax < 0.1, near, far)
    return tl.where(x < 0, -r, r)


@triton.jit
def spectral_threshold_compact_kernel(
    y_ptr,
    mask_ptr,
    counts_ptr,
    bins,
    words,
    scale,
    beta2,
    ACTIVATION: tl.constexpr,
    BLOCK: tl.constexpr,
):
    m = tl.program_id(0)
    base = m.to(tl.int64) * bins
    lane = tl.arange(0, BLOCK)
    pair = tl.arange(0, 2)
    running = tl.zeros([], dtype=tl.int64)
    for start in range(0, bins, BLOCK):
        f = start + lane
        inside = f < bins
        y = tl.load(y_ptr + 2 * (base + f)[:, None] + pair[None, :], mask=inside[:, None], other=0.0)
        re, im = tl.split(y)
        re_s = re * scale
        im_s = im * scale
        keep = ((re_s * re_s + im_s * im_s) <= beta2) == 0
        keep = keep & inside
        bits = keep.to(tl.uint32) << (f % 32).to(tl.uint32)
        word = tl.sum(tl.reshape(bits, [BLOCK // 32, 32]), axis=1)
        w = start // 32 + tl.arange(0, BLOCK // 32)
        tl.store(mask_ptr + m.to(tl.int64) * words + w, word.to(tl.int32), mask=w < words)
        if ACTIVATION:
            re = _tanh(re)
            im = _tanh(im)
        kept = keep.to(tl.int32)
        position = base + running + (tl.cumsum(kept, axis=0) - kept).to(tl.int64)
        z = tl.join(re, im).to(y_ptr.dtype.element_ty)
        tl.store(y_ptr + 2 * position[:, None] + pair[None, :], z, mask=keep[:, None])
        running += tl.sum(kept, axis=0).to(tl.int64)
    tl.store(counts_ptr + m, running)


@triton.jit
def spectral_gather_runs_kernel(
    staged_ptr,
    offsets_ptr,
    values_ptr,
    bins,
    BLOCK: tl.constexpr,
):
    m = tl.program_id(0)
    i = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    start = tl.load(offsets_ptr + m)
    inside = i < tl.load(offsets_ptr + m + 1) - start
    src = (m.to(tl.int64) * bins + i) * 2
    dst = (start + i) * 2
    for part in tl.static_range(2):
        v = tl.load(staged_ptr + src + part, mask=inside)
        tl.store(values_ptr + dst + part, v.to(values_ptr.dtype.element_ty), mask=inside)


@triton.jit
def spectral_activation_backward_kernel(z_ptr, grad_ptr, out_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = i < n
    z = tl.load(z_ptr + i, mask=inside).to(out_ptr.dtype.element_ty)
    g = tl.load(grad_ptr + i, mask=inside).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + i, (1 - z * z) * g, mask=inside)


def _block(bins: int) -> tuple[int, int]:
    """Entries per step of the map walk, and warps: one map's walk is one program."""
    block = max(32, min(1024, triton.next_power_of_2(bins)))
    return block, 8 if block >= 512 else 4


@ranged("threshold_compact")
def threshold_compact(
    spectrum: torch.Tensor,
    beta: float,
    activation: bool,
    value_dtype: torch.dtype | None,
    grid: tuple[int, int],
) -> CompressedSpectrum:
    """Triton twin of :func:`spectriton.reference.threshold_compact`.

    Consumes ``spectrum`` (a contiguous complex ``(N, C, P0, P1 // 2 + 1)`` buffer that
    the caller owns): the kept values are staged in place before the final copy.
    """
    batch, channels = spectrum.shape[:2]
    maps, bins = batch * channels, spectrum.shape[2] * spectrum.shape[3]
    staged = torch.view_as_real(spectrum.contiguous())
    words = words_per_map(bins)
    mask = torch.empty(maps, words, dtype=torch.int32, device=spectrum.device)
    counts = torch.empty(maps, dtype=torch.int64, device=spectrum.device)
    if maps:
        block, warps = _block(bins)
        scale, beta2 = scaled_threshold(beta)
        spectral_threshold_compact_kernel[(maps,)](
            staged,
            mask,
            counts,
            bins,
            words,
            scale,
            beta2,
            ACTIVATION=activation,
            BLOCK=block,
            num_warps=warps,
        )
    offsets = offsets_from_counts(counts)
    nnz = int(offsets[-1]) if maps else 0
    values = torch.empty(nnz, 2, dtype=value_dtype or staged.dtype, device=spectrum.device)
    if nnz:
        block = 256
        spectral_gather_runs_kernel[(maps, triton.cdiv(bins, block))](
            staged, offsets, values, bins, BLOCK=block
        )
    return CompressedSpectrum._trusted(values, mask, offsets, batch, channels, grid)


@ranged("activation_backward")
def activation_backward(values: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Triton twin of :func:`spectriton.reference.activation_backward`."""
    dtype = torch.float64 if grad.dtype == torch.float64 else torch.float32
    out = torch.empty(grad.shape, dtype=dtype, device=grad.device)
    n = grad.numel()
    if n:
        block = 1024
        spectral_activation_backward_kernel[(triton.cdiv(n, block),)](
            values.contiguous(), grad.contiguous(), out, n, BLOCK=block
        )
    return out
