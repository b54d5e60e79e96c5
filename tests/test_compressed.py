"""The compressed spectrum: layout, round trip, byte budget."""

import math

import pytest
import torch

from spectriton.compressed import CompressedSpectrum, pack_bits, popcount, unpack_bits, word_prefix


def _budget(c: CompressedSpectrum, value_bytes: int) -> int:
    """DESIGN.md section 3."""
    return c.nnz * value_bytes + math.ceil(c.numel / 8) + 16 * c.maps + 1024


@pytest.mark.parametrize("grid", [(7, 7), (9, 9), (33, 33), (34, 34), (32, 32)], ids=str)
@pytest.mark.parametrize("value_dtype,value_bytes", [(None, 8), (torch.bfloat16, 4), (torch.float16, 4)])
def test_round_trip_and_budget(grid, value_dtype, value_bytes):
    dense = torch.randn(3, 5, grid[0], grid[1] // 2 + 1, dtype=torch.complex64)
    dense[dense.abs() < 1.0] = 0
    c = CompressedSpectrum.from_dense(dense, grid, value_dtype=value_dtype)
    assert c.nnz == int((dense != 0).sum()) and c.shape == dense.shape
    assert c.nbytes <= _budget(c, value_bytes)
    tol = 0 if value_dtype is None else 1e-2
    torch.testing.assert_close(c.to_dense(), dense, atol=tol, rtol=tol)
    assert c.density == pytest.approx(c.nnz / dense.numel())


def test_row_major_packing_per_map():
    dense = torch.zeros(1, 2, 3, 3, dtype=torch.complex64)
    dense[0, 0, 2, 1], dense[0, 0, 0, 2], dense[0, 1, 1, 0] = 1, 2, 3
    c = CompressedSpectrum.from_dense(dense, (3, 4))
    assert c.offsets.tolist() == [0, 2, 3]
    assert c.values[:, 0].tolist() == [2, 1, 3]  # map 0 in row-major order, then map 1


def test_all_zero_and_fully_dense_maps():
    dense = torch.randn(2, 2, 5, 3, dtype=torch.complex64)
    dense[0] = 0
    c = CompressedSpectrum.from_dense(dense, (5, 4))
    assert c.offsets.tolist() == [0, 0, 0, 15, 30]
    torch.testing.assert_close(c.to_dense(), dense)


def test_unchecked_builder_matches_the_constructor():
    c = CompressedSpectrum.from_dense(torch.randn(2, 3, 5, 3, dtype=torch.complex64), (5, 4))
    fields = (c.values, c.mask, c.offsets, c.batch, c.channels, c.grid)
    for built in (CompressedSpectrum(*fields), CompressedSpectrum._trusted(*fields)):
        assert all(a is b for a, b in zip(built.tensors(), fields)) and built.shape == c.shape
        torch.testing.assert_close(built.to_dense(), c.to_dense())


@pytest.mark.parametrize("bins", [1, 31, 32, 33, 100])
def test_bit_helpers(bins):
    keep = torch.rand(4, bins) > 0.5
    mask = pack_bits(keep)
    assert mask.dtype == torch.int32 and mask.shape == (4, math.ceil(bins / 32))
    assert torch.equal(unpack_bits(mask, bins), keep)
    assert torch.equal(popcount(mask).sum(-1), keep.sum(-1))
    prefix = word_prefix(mask)
    assert prefix[:, 0].eq(0).all()
    assert torch.equal(prefix[:, -1] + popcount(mask[:, -1]), keep.sum(-1).to(prefix.dtype))
