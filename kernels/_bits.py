"""Jit helpers shared by the kernels: keep bits, bit counting and reading frequency-major
spectra.

A compressed spectrum is one stream of entries, frequency-major: entry ``(n, c)`` of
frequency ``f`` is stream element ``p = (f * N + n) * C + c``. Its keep bit is bit ``p % 32``
of mask word ``p // 32``; its packed index is ``prefix[p // 32]`` plus the kept entries below
it in its own word, where ``prefix`` is the transient exclusive running count per word
built by :func:`spectriton.compressed.word_prefix`. A dense spectrum is the same stream
with every entry present, as interleaved (re, im) pairs.
"""

import os

import triton
import triton.language as tl

# Compiled for a GPU, not interpreted: the interpreter runs no PTX (no POPC, so it counts by
# SWAR) and truncates float32 to bfloat16 where a GPU rounds to nearest even.
COMPILED = tl.constexpr(os.environ.get("TRITON_INTERPRET") != "1")


@triton.jit
def popcount32(x):
    """Set bits of each uint32: one ``popc.b32`` on a GPU, the SWAR count interpreted."""
    if COMPILED:
        count = tl.inline_asm_elementwise("popc.b32 $0, $1;", "=r,r", [x], tl.uint32, is_pure=True, pack=1)
    else:
        x = x - ((x >> 1) & 0x55555555)
        x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
        x = (x + (x >> 4)) & 0x0F0F0F0F
        count = (x * 0x01010101) >> 24
    return count


@triton.jit
def rounded_to(v, dtype: tl.constexpr):
    """Float32 ``v`` in ``dtype``, rounded to nearest even as torch and a GPU round (the
    interpreter's bfloat16 conversion truncates, so there the bits are rounded first; NaN
    stays NaN)."""
    if not COMPILED and dtype == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        even = bits + 0x7FFF + ((bits >> 16) & 1)
        v = tl.where(v != v, v, (even & 0xFFFF0000).to(tl.float32, bitcast=True))
    return v.to(dtype)


@triton.jit
def keep_bits(re, im, scale, beta2, p, inside):
    """The threshold of :mod:`spectriton.numerics` on entries ``(re, im)`` at stream positions
    ``p`` (int64): (kept?, each entry's keep bit in place in its mask word, as uint32).

    ``(scale, beta2)`` come from :func:`spectriton.numerics.scaled_threshold`; kept iff
    ``(scale re)^2 + (scale im)^2 > beta2``, or always when ``beta2`` is 0 (no square to
    underflow, and the threshold is the identity); NaN is kept. ``inside`` masks positions
    out of range (not kept).
    """
    re_s = re * scale
    im_s = im * scale
    above = ((re_s * re_s + im_s * im_s) <= beta2) == 0
    keep = tl.where(beta2 == 0, inside, above & inside)
    return keep, keep.to(tl.uint32) << (p & 31).to(tl.uint32)


@triton.jit
def stream_lookup(mask_ptr, prefix_ptr, p, inside):
    """For stream positions ``p`` (int64): (kept?, packed index) of each entry.

    ``inside`` masks positions out of range; they come back as not kept.
    """
    word_index = p >> 5
    word = tl.load(mask_ptr + word_index, mask=inside, other=0).to(tl.uint32, bitcast=True)
    bit = (p & 31).to(tl.uint32)
    kept = ((word >> bit) & 1) != 0
    below = (word << (31 - bit)) << 1  # the bits under ``bit``, shifted to the top
    start = tl.load(prefix_ptr + word_index, mask=inside, other=0)
    return kept & inside, start + popcount32(below).to(tl.int64)


@triton.jit
def load_tile(
    values_ptr, mask_ptr, prefix_ptr, f, rows, cols, R, C, PACKED: tl.constexpr, TRANSPOSED: tl.constexpr
):
    """Rows ``rows`` x channels ``cols`` of frequency ``f`` of an ``(F, R, C)`` spectrum, as
    a real ``(rows, 2 cols)`` tile with (re, im) interleaved (``TRANSPOSED``: its transpose,
    ``(2 cols, rows)``, loaded in that layout), zeros where nothing is kept, and whether the
    tile holds any entry at all (all-zero tiles can be skipped).

    ``PACKED``: compressed (values, mask, prefix); else dense pairs (the mask and prefix
    pointers are unused).
    """
    if TRANSPOSED:
        r, c = rows[None, :], cols[:, None]
    else:
        r, c = rows[:, None], cols[None, :]
    inside = (r < R) & (c < C)
    p = (f.to(tl.int64) * R + r) * C + c
    if PACKED:
        kept, index = stream_lookup(mask_ptr, prefix_ptr, p, inside)
    else:
        kept, index = inside, p
    any_kept = tl.max(tl.max(kept.to(tl.int32), axis=1), axis=0) > 0
    pair = tl.arange(0, 2)
    if TRANSPOSED:
        pairs = tl.load(
            values_ptr + 2 * index[:, None, :] + pair[None, :, None], mask=kept[:, None, :], other=0.0
        )
        tile = tl.reshape(pairs, (2 * cols.shape[0], rows.shape[0]))
    else:
        pairs = tl.load(
            values_ptr + 2 * index[:, :, None] + pair[None, None, :], mask=kept[:, :, None], other=0.0
        )
        tile = tl.reshape(pairs, (rows.shape[0], 2 * cols.shape[0]))
    return tile, any_kept


@triton.jit
def real_form(pairs):
    """A ``(rows, cols, 2)`` tile of complex pairs ``b`` -> its
    real ``(2 rows, 2 cols)`` form: row ``2k`` is ``(br, bi)`` and row ``2k + 1`` is
    ``(-bi, br)`` per column pair, so that ``x_real @ real_form(b)`` is ``x @ b`` interleaved."""
    re, im = tl.split(pairs)
    rows: tl.constexpr = pairs.shape[0]
    cols: tl.constexpr = pairs.shape[1]
    even = tl.reshape(tl.join(re, im), (rows, 2 * cols))
    odd = tl.reshape(tl.join(-im, re), (rows, 2 * cols))
    return tl.reshape(tl.permute(tl.join(even, odd), (0, 2, 1)), (2 * rows, 2 * cols))


@triton.jit
def accumulator(rows: tl.constexpr, cols: tl.constexpr, out_ptr, PRECISION: tl.constexpr):
    """A zero ``(rows, cols)`` accumulator: float64 for exact float64 work, else float32."""
    if PRECISION == "ieee" and out_ptr.dtype.element_ty == tl.float64:
        acc = tl.zeros([rows, cols], dtype=tl.float64)
    else:
        acc = tl.zeros([rows, cols], dtype=tl.float32)
    return acc


@triton.jit
def dot(a, b, acc, PRECISION: tl.constexpr):
    """``acc + a @ b`` on tensor cores: ``"bf16"`` rounds the operands to bfloat16,
    ``"tf32"`` and ``"ieee"`` (exact float32, or float64) keep them."""
    if PRECISION == "bf16":
        out = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
    else:
        out = tl.dot(a.to(acc.dtype), b.to(acc.dtype), acc, input_precision=PRECISION)
    return out
