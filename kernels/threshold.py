"""Fused threshold + split tanh + keep bits, and the split-tanh backward (paper eq. 10).

Forward, one pass over a dense frequency-major product spectrum (the standalone op; the
product kernel fuses the same epilogue): each program owns ``BLOCK`` consecutive stream
entries (whole mask words), reads each complex entry once, writes its keep-bitmask words
and the activated kept entries in place; :func:`spectriton.kernels.packing.compress_staged`
then packs the kept entries (reading only those) into the exact-size values buffer.

Bytes moved for ``E`` entries, ``nnz`` kept, ``v`` bytes per stored value: ``8E`` read +
``E/8`` mask + ``8 nnz`` in-place write, then ``8 nnz`` read + ``v nnz`` write.
"""

import torch
import triton
import triton.language as tl
from spectriton.kernels._bits import keep_bits
from spectriton.kernels.packing import compress_staged

from spectriton.compressed import CompressedSpectrum, mask_words
from spectriton.numerics import scaled_threshold
from spectriton.nvtx import ranged


@triton.jit
def tanh(x):
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
def spectral_threshold_kernel(
    y_ptr,
    mask_ptr,
    numel,
    scale,
    beta2,
    threshold_ptr,
    ACTIVATION: tl.constexpr,
    BETA_ON_DEVICE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    if BETA_ON_DEVICE:  # (scale, beta2) computed on the device: no host round trip
        scale = tl.load(threshold_ptr)
        beta2 = tl.load(threshold_ptr + 1)
    p = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = p < numel
    pair = tl.arange(0, 2)
    y = tl.load(y_ptr + 2 * p[:, None] + pair[None, :], mask=inside[:, None], other=0.0)
    re, im = tl.split(y)
    keep, bits = keep_bits(re, im, scale, beta2, p, inside)
    word = tl.sum(tl.reshape(bits, [BLOCK // 32, 32]), axis=1)  # the program's whole words
    w = tl.program_id(0).to(tl.int64) * (BLOCK // 32) + tl.arange(0, BLOCK // 32)
    tl.store(mask_ptr + w, word.to(tl.int32, bitcast=True), mask=w * 32 < numel)
    if ACTIVATION:
        re = tanh(re)
        im = tanh(im)
    tl.store(y_ptr + 2 * p[:, None] + pair[None, :], tl.join(re, im), mask=keep[:, None])


@triton.jit
def spectral_activation_backward_kernel(z_ptr, grad_ptr, out_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = i < n
    z = tl.load(z_ptr + i, mask=inside).to(out_ptr.dtype.element_ty)
    g = tl.load(grad_ptr + i, mask=inside).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + i, (1 - z * z) * g, mask=inside)


THRESHOLD_BLOCK = 1024


@ranged("threshold_compact")
def threshold_compact(
    spectrum: torch.Tensor,
    beta: float | torch.Tensor,
    activation: bool,
    value_dtype: torch.dtype | None,
    grid: tuple[int, int],
) -> CompressedSpectrum:
    """Triton twin of :func:`spectriton.reference.threshold_compact`.

    Consumes ``spectrum`` (a contiguous complex ``(bins, N, C)`` buffer that the caller
    owns): the activated kept entries are staged in place before the final pack.
    """
    bins, batch, channels = spectrum.shape
    staged = torch.view_as_real(spectrum.contiguous()).view(-1, 2)
    numel = staged.shape[0]
    mask = torch.empty(mask_words(numel), dtype=torch.int32, device=spectrum.device)
    if numel:
        scale, beta2 = scaled_threshold(beta)
        on_device = isinstance(beta, torch.Tensor)
        threshold = torch.stack([scale, beta2]).to(staged) if on_device else staged
        spectral_threshold_kernel[(triton.cdiv(numel, THRESHOLD_BLOCK),)](
            staged, mask, numel, 1.0 if on_device else scale, 0.0 if on_device else beta2, threshold,
            ACTIVATION=activation, BETA_ON_DEVICE=on_device, BLOCK=THRESHOLD_BLOCK, num_warps=8,
        )  # fmt: skip
    return compress_staged(staged, mask, batch, channels, grid, value_dtype)


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
