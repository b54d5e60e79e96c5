"""Jit helpers shared by the kernels: bit counting and packed-value indexing.

A compressed map stores a bitmask (int32 words, bit ``j`` of word ``w`` keeps entry
``32 * w + j``) and its kept entries packed in row-major order from ``offsets[map]``. The
packed index of a kept entry ``f`` is ``offsets[map] + prefix[map, f // 32]`` plus the
kept entries below ``f`` in its own word, where ``prefix`` is the transient per-word
running count built by :func:`spectriton.compressed.word_prefix`.
"""

import triton
import triton.language as tl


@triton.jit
def popcount32(x):
    """Set bits of each uint32 (the SWAR count: no libdevice, so it also interprets)."""
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return (x * 0x01010101) >> 24


@triton.jit
def packed_index(mask_ptr, prefix_ptr, offsets_ptr, maps, f, inside, words_per_map):
    """For maps ``maps`` and entries ``f`` (broadcastable): (kept?, packed index) of each.

    ``inside`` masks entries out of range; they come back as not kept.
    """
    maps = maps.to(tl.int64) + f * 0  # broadcast to the shape of the entries
    word_index = maps * words_per_map + f // 32
    word = tl.load(mask_ptr + word_index, mask=inside, other=0).to(tl.uint32)
    bit = (f % 32).to(tl.uint32)
    kept = ((word >> bit) & 1) != 0
    below = (word << (31 - bit)) << 1  # the bits under ``bit``, shifted to the top
    start = tl.load(offsets_ptr + maps, mask=inside, other=0)
    start += tl.load(prefix_ptr + word_index, mask=inside, other=0)
    return kept & inside, start + popcount32(below).to(tl.int64)
