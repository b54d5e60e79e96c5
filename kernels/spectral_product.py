"""The spectral product as per-frequency GEMMs on tensor cores, and its two gradients.

Spectra are frequency-major, so frequency ``f`` of a spectrum is an ``N x C`` complex
matrix, and the kernel's product matrix ``K[f]`` is ``C x O``
(:func:`spectriton.transforms.kernel_spectrum`). A complex GEMM runs as one real ``tl.dot``:
an ``N x C`` tile viewed as real with (re, im) interleaved is ``N x 2C``, and a ``C x O``
tile of ``K`` is expanded in registers into its ``2C x 2O`` real form
``[[Kr, Ki], [-Ki, Kr]]`` (per entry). One program computes a ``BLOCK_M x BLOCK_Q`` complex
output tile of one frequency:

- forward ``Y = X K`` (``X`` compressed or dense), with an epilogue that adds the DC bias
  and, fused, thresholds, applies split tanh, writes the keep bits and stores the kept
  activated entries (the dense product never goes to memory whole);
- input gradient ``gX = gY K^H`` (``K^H`` given), written dense or packed straight at the
  input's mask;
- kernel gradient ``gK = X^H gY``, both operands compressed or dense.

Compressed operands are decoded a tile at a time (bitmask + per-word prefix + popcount, in
registers) and a K-chunk whose tile keeps nothing is skipped. ``PRECISION`` picks the
tensor-core input type: ``"tf32"`` (the default on GPU, as cuDNN's convolutions),
``"bf16"``, or ``"ieee"`` (exact float32; what the tests compare with the torch twin).

Minimum bytes per layer (``B`` batch, ``C``/``O`` channels, ``F`` bins, density ``d``,
``v`` bytes per stored value): forward reads ``B C F (d v + 1/8)`` + ``8 C O F`` (``K``),
writes ``B O F (8 d + 1/8)``; FLOPs ``8 B C O F`` (four real multiply-adds per complex one).
"""

import os

import torch
import triton
import triton.language as tl
from spectriton.kernels._bits import accumulator, dot, keep_bits, load_tile, real_form, stream_lookup
from spectriton.kernels.packing import compress_staged
from spectriton.kernels.threshold import tanh

from spectriton.compressed import CompressedSpectrum, mask_words, word_prefix
from spectriton.numerics import scaled_threshold
from spectriton.nvtx import ranged

PLAIN, PACKED_AT_MASK, THRESHOLD = 0, 1, 2  # epilogues of the product kernel


def precision(dtype: torch.dtype) -> str:
    """Tensor-core input precision for ``dtype`` operands: ``SPECTRITON_PRECISION`` (``tf32``,
    ``bf16`` or ``ieee``), default ``tf32``; float64 and the interpreter always ``ieee``."""
    if dtype == torch.float64 or os.environ.get("TRITON_INTERPRET") == "1":
        return "ieee"
    chosen = os.environ.get("SPECTRITON_PRECISION", "tf32").strip().lower()
    if chosen not in ("tf32", "bf16", "ieee"):
        raise ValueError(f"SPECTRITON_PRECISION must be tf32, bf16 or ieee, got {chosen!r}")
    return chosen


def _configs(names: tuple[str, ...], sizes: list[tuple[int, ...]]) -> list[triton.Config]:
    """Autotune configs from ``(*block sizes, num_warps)``; the interpreter takes the first."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        sizes = sizes[:1]
    return [triton.Config(dict(zip(names, s[:-1])), num_warps=s[-1]) for s in sizes]


PRODUCT_CONFIGS = _configs(
    ("BLOCK_M", "BLOCK_K", "BLOCK_Q"), [(16, 16, 32, 4), (64, 16, 32, 4), (64, 32, 32, 8)]
)
WEIGHT_GRAD_CONFIGS = _configs(
    ("BLOCK_N", "BLOCK_K", "BLOCK_Q"), [(16, 16, 32, 4), (64, 16, 32, 4), (32, 16, 64, 4)]
)


@triton.autotune(configs=PRODUCT_CONFIGS, key=["N", "K", "Q", "X_PACKED", "EPILOGUE", "PRECISION"])
@triton.jit
def spectral_product_kernel(
    x_ptr,
    x_mask_ptr,
    x_prefix_ptr,
    k_ptr,
    stride_kf,
    stride_kk,
    stride_kq,
    bias_ptr,
    out_ptr,
    out_mask_ptr,
    out_prefix_ptr,
    N,
    K,
    Q,
    scale,
    beta2,
    X_PACKED: tl.constexpr,
    EPILOGUE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_Q: tl.constexpr,
):
    f = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    q = tl.program_id(2) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    col = tl.program_id(2) * 2 * BLOCK_Q + tl.arange(0, 2 * BLOCK_Q)  # real columns of Y
    acc = accumulator(BLOCK_M, 2 * BLOCK_Q, out_ptr, PRECISION)
    k_base = (
        k_ptr + f.to(tl.int64) * stride_kf + q[None, :, None] * stride_kq + tl.arange(0, 2)[None, None, :]
    )
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x, any_kept = load_tile(x_ptr, x_mask_ptr, x_prefix_ptr, f, n, k, N, K, X_PACKED, False)
        if any_kept:
            inside = (k < K)[:, None, None] & (q < Q)[None, :, None]
            pairs = tl.load(k_base + k[:, None, None] * stride_kk, mask=inside, other=0.0)
            acc = dot(x, real_form(pairs), acc, PRECISION)
    n_in = n < N
    if HAS_BIAS:
        bias = tl.load(bias_ptr + col // 2, mask=(col < 2 * Q) & (col % 2 == 0) & (f == 0), other=0.0)
        acc += bias.to(acc.dtype)[None, :]
    if EPILOGUE == 0:  # PLAIN: dense (F, N, 2Q)
        out = (f.to(tl.int64) * N + n[:, None]) * 2 * Q + col[None, :]
        tl.store(out_ptr + out, acc, mask=n_in[:, None] & (col < 2 * Q)[None, :])
    else:
        pair = tl.arange(0, 2)
        p = (f.to(tl.int64) * N + n[:, None]) * Q + q[None, :]
        inside = n_in[:, None] & (q < Q)[None, :]
        if EPILOGUE == 1:  # PACKED_AT_MASK: only the entries another spectrum's mask keeps
            kept, index = stream_lookup(out_mask_ptr, out_prefix_ptr, p, inside)
            pairs = tl.reshape(acc, (BLOCK_M, BLOCK_Q, 2))
            tl.store(out_ptr + 2 * index[:, :, None] + pair[None, None, :], pairs, mask=kept[:, :, None])
        else:  # THRESHOLD: keep bits + activated kept entries, staged at their dense place
            re, im = tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_Q, 2)))
            keep, bits = keep_bits(re, im, scale, beta2, p, inside)
            if ACTIVATION:
                re = tanh(re)
                im = tanh(im)
            # a mask word spans tiles: each entry ors its own bit in
            tl.atomic_or(out_mask_ptr + (p >> 5), bits.to(tl.int32, bitcast=True), mask=keep)
            z = tl.join(re, im).to(out_ptr.dtype.element_ty)
            tl.store(out_ptr + 2 * p[:, :, None] + pair[None, None, :], z, mask=keep[:, :, None])


@triton.autotune(configs=WEIGHT_GRAD_CONFIGS, key=["N", "K", "Q", "X_PACKED", "G_PACKED", "PRECISION"])
@triton.jit
def spectral_weight_grad_kernel(
    x_ptr,
    x_mask_ptr,
    x_prefix_ptr,
    g_ptr,
    g_mask_ptr,
    g_prefix_ptr,
    out_ptr,
    N,
    K,
    Q,
    X_PACKED: tl.constexpr,
    G_PACKED: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_Q: tl.constexpr,
):
    f = tl.program_id(0)
    k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    q = tl.program_id(2) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    acc = accumulator(2 * BLOCK_K, 2 * BLOCK_Q, out_ptr, PRECISION)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        g, g_any = load_tile(g_ptr, g_mask_ptr, g_prefix_ptr, f, n, q, N, Q, G_PACKED, False)
        if g_any:
            x_t, x_any = load_tile(x_ptr, x_mask_ptr, x_prefix_ptr, f, n, k, N, K, X_PACKED, True)
            if x_any:
                acc = dot(x_t, g, acc, PRECISION)
    # acc[2k + a, 2q + b] = sum_n X_a[n, k] G_b[n, q]; X^H G = (XrGr + XiGi) + i (XrGi - XiGr)
    rows = tl.split(tl.permute(tl.reshape(acc, (BLOCK_K, 2, 2 * BLOCK_Q)), (0, 2, 1)))
    top_re, top_im = tl.split(tl.reshape(rows[0], (BLOCK_K, BLOCK_Q, 2)))
    bottom_re, bottom_im = tl.split(tl.reshape(rows[1], (BLOCK_K, BLOCK_Q, 2)))
    pairs = tl.join(top_re + bottom_im, top_im - bottom_re)
    out = ((f.to(tl.int64) * K + k[:, None, None]) * Q + q[None, :, None]) * 2 + tl.arange(0, 2)[
        None, None, :
    ]
    tl.store(out_ptr + out, pairs, mask=(k < K)[:, None, None] & (q < Q)[None, :, None])


def operand(spectrum: CompressedSpectrum | torch.Tensor) -> CompressedSpectrum | torch.Tensor:
    """What these kernels read best: a compressed spectrum stays compressed (they decode it a
    tile at a time), a dense one stays dense. The twin of :func:`spectriton.reference.operand`."""
    return spectrum


def _arguments(spectrum: CompressedSpectrum | torch.Tensor):
    """Kernel arguments for a spectrum: (values, mask, prefix, packed?). Compressed ones are
    read compressed; dense ones as contiguous pairs."""
    if isinstance(spectrum, CompressedSpectrum):
        return spectrum.values, spectrum.mask, word_prefix(spectrum.mask), True
    pairs = torch.view_as_real(spectrum.contiguous())
    return pairs, pairs, pairs, False


def _launch_product(inputs, kernel, bias, out, out_mask, out_prefix, epilogue, **threshold):
    """Run the product kernel: ``X K`` for every frequency."""
    bins, batch = _dims(inputs)
    if kernel.dim() == 2:  # a 1 x 1 kernel's one matrix: the same at every frequency (stride 0)
        kernel = kernel.expand(bins, *kernel.shape)
    reduced, width = kernel.shape[1], kernel.shape[2]
    pairs = torch.view_as_real(kernel.resolve_conj())
    x, x_mask, x_prefix, packed = _arguments(inputs)

    def grid(meta):
        return (bins, triton.cdiv(batch, meta["BLOCK_M"]), triton.cdiv(width, meta["BLOCK_Q"]))

    spectral_product_kernel[grid](
        x, x_mask, x_prefix,
        pairs, pairs.stride(0), pairs.stride(1), pairs.stride(2),
        out if bias is None else bias,
        out, out_mask, out_prefix,
        batch, reduced, width,
        threshold.get("scale", 1.0), threshold.get("beta2", 0.0),
        X_PACKED=packed, EPILOGUE=epilogue, HAS_BIAS=bias is not None,
        ACTIVATION=threshold.get("activation", False), PRECISION=precision(pairs.dtype),
    )  # fmt: skip


def _dims(spectrum: CompressedSpectrum | torch.Tensor) -> tuple[int, int]:
    """(bins, batch) of a dense ``(bins, batch, channels)`` or compressed spectrum."""
    if isinstance(spectrum, CompressedSpectrum):
        return spectrum.bins, spectrum.batch
    return spectrum.shape[0], spectrum.shape[1]


@ranged("product")
def product(inputs, kernel: torch.Tensor, bias_dc: torch.Tensor | None) -> torch.Tensor:
    """Triton twin of :func:`spectriton.reference.product`."""
    bins, batch = _dims(inputs)
    out = torch.empty(bins, batch, kernel.shape[-1], dtype=kernel.dtype, device=kernel.device)
    if out.numel():
        bias = None if bias_dc is None else bias_dc.to(out.real.dtype).contiguous()
        real = torch.view_as_real(out)
        _launch_product(inputs, kernel, bias, real, real, real, PLAIN)
    return out


@ranged("product_threshold")
def product_threshold(
    inputs, kernel: torch.Tensor, bias_dc, beta: float, activation: bool, value_dtype, grid
) -> CompressedSpectrum:
    """Triton twin of :func:`spectriton.reference.product_threshold`: the product with the
    threshold, split tanh and keep bits fused into its epilogue, then one pack."""

    bins, batch = _dims(inputs)
    out_channels = kernel.shape[-1]
    numel = bins * batch * out_channels
    staged = torch.empty(numel, 2, dtype=kernel.real.dtype, device=kernel.device)
    mask = torch.zeros(mask_words(numel), dtype=torch.int32, device=kernel.device)
    if numel:
        scale, beta2 = scaled_threshold(beta)
        bias = None if bias_dc is None else bias_dc.to(staged.dtype).contiguous()
        _launch_product(
            inputs, kernel, bias, staged, mask, mask, THRESHOLD,
            scale=scale, beta2=beta2, activation=activation,
        )  # fmt: skip
    return compress_staged(staged, mask, batch, out_channels, grid, value_dtype)


@ranged("product_input_grad")
def product_input_grad(grad, kernel_h: torch.Tensor, like: CompressedSpectrum | None):
    """Triton twin of :func:`spectriton.reference.product_input_grad`."""
    bins, batch = _dims(grad)
    channels = kernel_h.shape[-1]
    if like is None:
        result = torch.empty(bins, batch, channels, dtype=kernel_h.dtype, device=kernel_h.device)
        out = out_mask = out_prefix = torch.view_as_real(result)
        epilogue = PLAIN
    else:
        result = out = torch.empty(like.nnz, 2, dtype=kernel_h.real.dtype, device=kernel_h.device)
        out_mask, out_prefix, epilogue = like.mask, word_prefix(like.mask), PACKED_AT_MASK
    if out.numel():
        _launch_product(grad, kernel_h, None, out, out_mask, out_prefix, epilogue)
    return result


@ranged("product_weight_grad")
def product_weight_grad(inputs, grad) -> torch.Tensor:
    """Triton twin of :func:`spectriton.reference.product_weight_grad`."""
    bins, batch = _dims(inputs)
    x, x_mask, x_prefix, x_packed = _arguments(inputs)
    g, g_mask, g_prefix, g_packed = _arguments(grad)
    channels = inputs.channels if x_packed else inputs.shape[2]
    out_channels = grad.channels if g_packed else grad.shape[2]
    dtype = torch.complex128 if torch.float64 in (g.dtype, x.dtype) else torch.complex64
    out = torch.empty(bins, channels, out_channels, dtype=dtype, device=g.device)
    if not out.numel():
        return out
    if not batch:
        return out.zero_()

    def grid(meta):
        return (bins, triton.cdiv(channels, meta["BLOCK_K"]), triton.cdiv(out_channels, meta["BLOCK_Q"]))

    spectral_weight_grad_kernel[grid](
        x, x_mask, x_prefix, g, g_mask, g_prefix, torch.view_as_real(out),
        batch, channels, out_channels,
        X_PACKED=x_packed, G_PACKED=g_packed, PRECISION=precision(out.real.dtype),
    )  # fmt: skip
    return out


@ranged("pointwise_weight_grad")
def pointwise_weight_grad(inputs, grad) -> torch.Tensor:
    """Triton twin of :func:`spectriton.reference.pointwise_weight_grad`: the per-frequency
    kernel gradient, summed over frequencies."""
    return product_weight_grad(inputs, grad).sum(0)
