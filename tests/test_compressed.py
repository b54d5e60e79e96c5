"""The compressed spectrum: frequency-major layout, round trip, byte budget, bit helpers."""

import math

import pytest
import torch

from spectriton.compressed import (
    CompressedSpectrum,
    frequency_offsets,
    mask_words,
    pack_bits,
    popcount,
    unpack_bits,
    word_prefix,
)


def _budget(c: CompressedSpectrum, value_bytes: int) -> int:
    """DESIGN.md section 3."""
    return c.nnz * value_bytes + math.ceil(c.numel / 8) + 16 * c.maps + 8 * c.bins + 1024


@pytest.mark.parametrize("grid", [(7, 7), (9, 9), (33, 33), (34, 34), (32, 32)], ids=str)
@pytest.mark.parametrize(
    "value_dtype,value_bytes",
    [(None, 8), (torch.bfloat16, 4), (torch.float16, 4), (torch.float8_e4m3fn, 2)],
)
def test_round_trip_and_budget(grid, value_dtype, value_bytes):
    dense = torch.randn(3, 5, grid[0], grid[1] // 2 + 1, dtype=torch.complex64)
    dense[dense.abs() < 1.0] = 0
    c = CompressedSpectrum.from_dense(dense, grid, value_dtype=value_dtype)
    assert c.nnz == int((dense != 0).sum()) and c.shape == dense.shape
    assert c.nbytes <= _budget(c, value_bytes)
    tol = {None: 0, torch.float8_e4m3fn: 2**-4}.get(value_dtype, 1e-2)  # half a step of 3 or 8 bits
    torch.testing.assert_close(c.to_dense(), dense, atol=tol, rtol=tol)
    assert c.density == pytest.approx(c.nnz / dense.numel())


def test_frequency_major_order():
    """Entry (n, c, f) sits at stream position (f * N + n) * C + c; values follow it."""
    dense = torch.zeros(2, 2, 2, 2, dtype=torch.complex64)  # N, C, P0, P1 // 2 + 1
    dense[1, 0, 0, 0] = 1  # f 0: position 2
    dense[0, 1, 0, 0] = 2  # f 0: position 1
    dense[0, 0, 1, 1] = 3  # f 3: position 12
    dense[1, 1, 0, 1] = 4  # f 1: position 7
    c = CompressedSpectrum.from_dense(dense, (2, 2))
    assert c.values[:, 0].tolist() == [2, 1, 4, 3]
    assert c.keep().nonzero().view(-1).tolist() == [1, 2, 7, 12]
    assert c.mask.tolist() == [(1 << 1) | (1 << 2) | (1 << 7) | (1 << 12)]
    assert c.offsets.tolist() == [0, 2, 3, 3, 4]
    assert torch.equal(c.to_frequency_major()[0], dense[:, :, 0, 0])


def test_all_zero_and_fully_dense_frequencies():
    dense = torch.randn(2, 2, 5, 3, dtype=torch.complex64)
    dense[:, :, 0, 0] = 0  # the DC frequency keeps nothing
    c = CompressedSpectrum.from_dense(dense, (5, 4))
    assert c.offsets.tolist() == [0] + [4 * f for f in range(15)]
    torch.testing.assert_close(c.to_dense(), dense)


def test_unchecked_builder_matches_the_constructor():
    c = CompressedSpectrum.from_dense(torch.randn(2, 3, 5, 3, dtype=torch.complex64), (5, 4))
    fields = (c.values, c.mask, c.offsets, c.batch, c.channels, c.grid)
    for built in (CompressedSpectrum(*fields), CompressedSpectrum._trusted(*fields)):
        assert all(a is b for a, b in zip(built.tensors(), fields)) and built.shape == c.shape
        torch.testing.assert_close(built.to_dense(), c.to_dense())


@pytest.mark.parametrize("numel", [1, 31, 32, 33, 100, 1000])
def test_bit_helpers(numel):
    keep = torch.rand(numel) > 0.5
    mask = pack_bits(keep)
    assert mask.dtype == torch.int32 and mask.shape == (mask_words(numel),)
    assert torch.equal(unpack_bits(mask, numel), keep)
    expected = torch.tensor([bin(w & 0xFFFFFFFF).count("1") for w in mask.tolist()], dtype=torch.int32)
    assert torch.equal(popcount(mask), expected)
    prefix = word_prefix(mask)
    assert prefix[0] == 0 and prefix[-1] + popcount(mask[-1]) == keep.sum()


@pytest.mark.parametrize("bins,per_bin", [(1, 5), (7, 3), (4, 32), (3, 40), (10, 1)])
def test_frequency_offsets_from_the_mask(bins, per_bin):
    keep = torch.rand(bins * per_bin) > 0.4
    mask = pack_bits(keep)
    offsets = frequency_offsets(mask, word_prefix(mask), bins, per_bin)
    counts = keep.view(bins, per_bin).sum(-1)
    assert offsets.tolist() == [0, *counts.cumsum(0).tolist()]
