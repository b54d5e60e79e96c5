"""The multi-channel spectral product with compressed inputs, and its two backwards.

``Y[n, q, f] = sum_r X[n, r, f] * op(W[q, r, f])``, where ``X`` is compressed (bitmask +
popcount prefix decompressed in registers; blocks whose mask words are all zero are
skipped) or dense. The same kernel serves

- the forward: ``q = o``, ``r = c``, ``op = conj``, plus the bias on the DC bin;
- the input gradient: ``X = gY`` (compressed), ``q = c``, ``r = o``, ``op = identity``,
  written dense (first layer) or packed at the input's mask (later layers: no dense
  gradient is materialised).

The kernel gradient ``gW[o, c, f] = sum_n X[n, c, f] * conj(gY[n, o, f])`` has its own
kernel reading both operands compressed.

Bytes moved (``B`` batch, ``R``/``Q`` reduced/output channels, ``F`` entries, density
``d``, ``v`` bytes per stored value): forward reads ``B R F (d v + 1/8)`` of input and
``Q R F 8`` of kernel spectrum per batch tile (cached in L2 across the batch), writes
``8 B Q F``. A skipped block reads only its mask words.
"""

import os

import torch
import triton
import triton.language as tl
from spectriton.kernels._bits import packed_index

from spectriton.compressed import CompressedSpectrum, word_prefix, words_per_map
from spectriton.nvtx import ranged


def _configs(names: tuple[str, ...], sizes: list[tuple[int, ...]]) -> list[triton.Config]:
    if os.environ.get("TRITON_INTERPRET") == "1":
        sizes = sizes[:1]
    return [triton.Config(dict(zip(names, s)), num_warps=4) for s in sizes]


@triton.autotune(
    configs=_configs(("BLOCK_Q", "BLOCK_F"), [(8, 64), (16, 64), (4, 128), (16, 128), (32, 32)]),
    key=["R", "Q", "bins", "X_PACKED", "OUT_PACKED"],
)
@triton.jit
def spectral_product_kernel(
    x_ptr,
    x_mask_ptr,
    x_prefix_ptr,
    x_offsets_ptr,
    w_ptr,
    stride_wq,
    stride_wr,
    bias_ptr,
    out_ptr,
    out_mask_ptr,
    out_prefix_ptr,
    out_offsets_ptr,
    R,
    Q,
    bins,
    words,
    X_PACKED: tl.constexpr,
    OUT_PACKED: tl.constexpr,
    CONJ_W: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    n = tl.program_id(0)
    q = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    f = tl.program_id(2) * BLOCK_F + tl.arange(0, BLOCK_F)
    q_in = q < Q
    f_in = f < bins
    acc_dtype = out_ptr.dtype.element_ty
    acc_re = tl.zeros([BLOCK_Q, BLOCK_F], dtype=acc_dtype)
    acc_im = tl.zeros([BLOCK_Q, BLOCK_F], dtype=acc_dtype)
    w_rows = q.to(tl.int64)[:, None] * stride_wq + f[None, :]
    w_in = q_in[:, None] & f_in[None, :]
    for r in range(R):
        m = n * R + r
        if X_PACKED:
            kept, index = packed_index(x_mask_ptr, x_prefix_ptr, x_offsets_ptr, m, f, f_in, words)
            active = tl.max(kept.to(tl.int32), axis=0) > 0
        else:
            kept = f_in
            index = m.to(tl.int64) * bins + f
            active = True
        if active:
            x_re = tl.load(x_ptr + index * 2, mask=kept, other=0.0).to(acc_dtype)
            x_im = tl.load(x_ptr + index * 2 + 1, mask=kept, other=0.0).to(acc_dtype)
            w_index = (w_rows + r * stride_wr) * 2
            w_re = tl.load(w_ptr + w_index, mask=w_in, other=0.0).to(acc_dtype)
            w_im = tl.load(w_ptr + w_index + 1, mask=w_in, other=0.0).to(acc_dtype)
            if CONJ_W:
                w_im = -w_im
            acc_re += x_re[None, :] * w_re - x_im[None, :] * w_im
            acc_im += x_re[None, :] * w_im + x_im[None, :] * w_re
    if HAS_BIAS:
        bias = tl.load(bias_ptr + q, mask=q_in, other=0.0).to(acc_dtype)
        acc_re += tl.where(f[None, :] == 0, bias[:, None], 0.0)
    out_maps = n * Q + q[:, None]
    if OUT_PACKED:
        store, index = packed_index(
            out_mask_ptr, out_prefix_ptr, out_offsets_ptr, out_maps, f[None, :], w_in, words
        )
    else:
        store = w_in
        index = out_maps.to(tl.int64) * bins + f[None, :]
    tl.store(out_ptr + index * 2, acc_re, mask=store)
    tl.store(out_ptr + index * 2 + 1, acc_im, mask=store)


@triton.autotune(
    configs=_configs(("BLOCK_O", "BLOCK_C", "BLOCK_F"), [(4, 4, 64), (8, 8, 32), (4, 8, 64), (8, 4, 64)]),
    key=["batch", "O", "C", "bins", "X_PACKED"],
)
@triton.jit
def spectral_weight_grad_kernel(
    x_ptr,
    x_mask_ptr,
    x_prefix_ptr,
    x_offsets_ptr,
    g_ptr,
    g_mask_ptr,
    g_prefix_ptr,
    g_offsets_ptr,
    out_ptr,
    batch,
    O,
    C,
    bins,
    words,
    X_PACKED: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    o = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    f = tl.program_id(2) * BLOCK_F + tl.arange(0, BLOCK_F)
    f_in = f[None, :] < bins
    g_in = (o < O)[:, None] & f_in
    x_in = (c < C)[:, None] & f_in
    acc_dtype = out_ptr.dtype.element_ty
    acc_re = tl.zeros([BLOCK_O, BLOCK_C, BLOCK_F], dtype=acc_dtype)
    acc_im = tl.zeros([BLOCK_O, BLOCK_C, BLOCK_F], dtype=acc_dtype)
    for n in range(batch):
        g_kept, g_index = packed_index(
            g_mask_ptr, g_prefix_ptr, g_offsets_ptr, n * O + o[:, None], f[None, :], g_in, words
        )
        if X_PACKED:
            x_kept, x_index = packed_index(
                x_mask_ptr, x_prefix_ptr, x_offsets_ptr, n * C + c[:, None], f[None, :], x_in, words
            )
            active = (tl.max(tl.max(g_kept.to(tl.int32), axis=1), axis=0) > 0) & (
                tl.max(tl.max(x_kept.to(tl.int32), axis=1), axis=0) > 0
            )
        else:
            x_kept = x_in
            x_index = (n * C + c[:, None]).to(tl.int64) * bins + f[None, :]
            active = tl.max(tl.max(g_kept.to(tl.int32), axis=1), axis=0) > 0
        if active:
            g_re = tl.load(g_ptr + g_index * 2, mask=g_kept, other=0.0).to(acc_dtype)[:, None, :]
            g_im = tl.load(g_ptr + g_index * 2 + 1, mask=g_kept, other=0.0).to(acc_dtype)[:, None, :]
            x_re = tl.load(x_ptr + x_index * 2, mask=x_kept, other=0.0).to(acc_dtype)[None, :, :]
            x_im = tl.load(x_ptr + x_index * 2 + 1, mask=x_kept, other=0.0).to(acc_dtype)[None, :, :]
            acc_re += g_re * x_re + g_im * x_im
            acc_im += g_re * x_im - g_im * x_re
    index = ((o[:, None, None] * C + c[None, :, None]).to(tl.int64) * bins + f[None, None, :]) * 2
    store = (o < O)[:, None, None] & (c < C)[None, :, None] & (f < bins)[None, None, :]
    tl.store(out_ptr + index, acc_re, mask=store)
    tl.store(out_ptr + index + 1, acc_im, mask=store)


def _operand(spectrum: CompressedSpectrum | torch.Tensor):
    """Kernel arguments for an input spectrum: (values, mask, prefix, offsets, packed?)."""
    if isinstance(spectrum, CompressedSpectrum):
        return spectrum.values, spectrum.mask, word_prefix(spectrum.mask), spectrum.offsets, True
    pairs = torch.view_as_real(spectrum.contiguous())
    return pairs, pairs, pairs, pairs, False


def _run_product(inputs, kernel_pairs, stride_wq, stride_wr, conj, bias, batch, R, Q, bins, words, out, like):
    x, x_mask, x_prefix, x_offsets, x_packed = _operand(inputs)
    if like is None:
        o_mask = o_prefix = o_offsets = out
    else:
        o_mask, o_prefix, o_offsets = like.mask, word_prefix(like.mask), like.offsets

    def grid(meta):
        return (batch, triton.cdiv(Q, meta["BLOCK_Q"]), triton.cdiv(bins, meta["BLOCK_F"]))

    spectral_product_kernel[grid](
        x, x_mask, x_prefix, x_offsets,
        kernel_pairs, stride_wq, stride_wr,
        out if bias is None else bias,
        out, o_mask, o_prefix, o_offsets,
        R, Q, bins, words,
        X_PACKED=x_packed, OUT_PACKED=like is not None, CONJ_W=conj, HAS_BIAS=bias is not None,
    )  # fmt: skip


def _sizes(spectrum: CompressedSpectrum | torch.Tensor) -> tuple[int, int, int, int]:
    """(batch, channels, bins, mask words per map) of a dense or compressed spectrum."""
    batch, channels, rows, cols = spectrum.shape
    return batch, channels, rows * cols, words_per_map(rows * cols)


@ranged("product")
def product(inputs, kernel: torch.Tensor, bias_dc: torch.Tensor | None) -> torch.Tensor:
    """Triton twin of :func:`spectriton.reference.product`."""
    batch, channels, bins, words = _sizes(inputs)
    out_channels = kernel.shape[0]
    out = torch.empty(batch, out_channels, *kernel.shape[2:], dtype=kernel.dtype, device=kernel.device)
    if out.numel():
        pairs = torch.view_as_real(kernel.contiguous())
        bias = None if bias_dc is None else bias_dc.to(pairs.dtype).contiguous()
        _run_product(
            inputs, pairs, channels * bins, bins, True, bias, batch, channels, out_channels, bins, words,
            torch.view_as_real(out), None,
        )  # fmt: skip
    return out


@ranged("product_input_grad")
def product_input_grad(grad: CompressedSpectrum, kernel: torch.Tensor, like: CompressedSpectrum | None):
    """Triton twin of :func:`spectriton.reference.product_input_grad`."""
    batch, out_channels, bins, words = _sizes(grad)
    channels = kernel.shape[1]
    real = torch.view_as_real(kernel).dtype
    if like is None:
        result = torch.empty(batch, channels, *kernel.shape[2:], dtype=kernel.dtype, device=kernel.device)
        out = torch.view_as_real(result)
    else:
        result = out = torch.empty(like.nnz, 2, dtype=real, device=kernel.device)
    if out.numel():
        pairs = torch.view_as_real(kernel.contiguous())
        _run_product(
            grad,
            pairs,
            bins,
            channels * bins,
            False,
            None,
            batch,
            out_channels,
            channels,
            bins,
            words,
            out,
            like,
        )
    return result


@ranged("product_weight_grad")
def product_weight_grad(inputs, grad: CompressedSpectrum) -> torch.Tensor:
    """Triton twin of :func:`spectriton.reference.product_weight_grad`."""
    batch, channels, bins, words = _sizes(inputs)
    out_channels = grad.channels
    dtype = torch.complex128 if grad.values.dtype == torch.float64 else torch.complex64
    out = torch.empty(out_channels, channels, *grad.half, dtype=dtype, device=grad.values.device)
    if not out.numel():
        return out
    x, x_mask, x_prefix, x_offsets, x_packed = _operand(inputs)

    def grid(meta):
        return (
            triton.cdiv(out_channels, meta["BLOCK_O"]),
            triton.cdiv(channels, meta["BLOCK_C"]),
            triton.cdiv(bins, meta["BLOCK_F"]),
        )

    spectral_weight_grad_kernel[grid](
        x, x_mask, x_prefix, x_offsets,
        grad.values, grad.mask, word_prefix(grad.mask), grad.offsets,
        torch.view_as_real(out), batch, out_channels, channels, bins, words,
        X_PACKED=x_packed,
    )  # fmt: skip
    return out
