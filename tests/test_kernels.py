"""Each Triton kernel against its pure-torch twin (under TRITON_INTERPRET=1 on CPU).

Outputs are allocated NaN-filled (see ``poisoned_empty``) so a missed store shows, and
compressed outputs are compared map by map.
"""

import pytest
import torch
from conftest import DEVICE, poisoned_empty

from spectriton import reference as ref
from spectriton.compressed import CompressedSpectrum

kernels = pytest.importorskip("spectriton.kernels")

# (batch, channels, grid): odd sizes 7, 9, 33 and the paper's grids (LeNet 32, VGG 34, 18).
GRIDS = [
    (2, 3, (7, 7)),
    (2, 3, (9, 9)),
    (1, 2, (33, 33)),
    (2, 2, (32, 32)),
    (1, 2, (34, 34)),
    (2, 5, (18, 18)),
]
IDS = [f"B{b}-C{c}-P{g[0]}" for b, c, g in GRIDS]


def _spectrum(batch, channels, grid, scale=1.0):
    return scale * torch.randn(
        batch, channels, grid[0], grid[1] // 2 + 1, dtype=torch.complex64, device=DEVICE
    )


def _compressed(batch, channels, grid, beta=0.8):
    """A compressed spectrum whose first map keeps nothing (its mask words are all zero)."""
    spectrum = _spectrum(batch, channels, grid)
    spectrum[0, 0] *= 1e-3
    return ref.threshold_compact(spectrum, beta, True, None, grid)


def _assert_same_compressed(a: CompressedSpectrum, b: CompressedSpectrum, atol=0.0):
    assert a.shape == b.shape and a.nnz == b.nnz
    assert torch.equal(a.mask, b.mask)
    counts_a, counts_b = a.offsets.diff(), b.offsets.diff()
    assert torch.equal(counts_a, counts_b)
    for m in range(a.maps):  # per map: where a map's run lands may differ, its content may not
        run_a = a.values[a.offsets[m] : a.offsets[m + 1]].float()
        run_b = b.values[b.offsets[m] : b.offsets[m + 1]].float()
        torch.testing.assert_close(run_b, run_a, atol=atol, rtol=0)


@pytest.mark.parametrize("batch,channels,grid", GRIDS, ids=IDS)
@pytest.mark.parametrize("activation", [False, True], ids=["threshold", "split_tanh"])
@pytest.mark.parametrize("beta", [0.0, 0.9, 1e3], ids=["beta0", "beta0.9", "beta_above_all"])
def test_threshold_compact(batch, channels, grid, activation, beta):
    spectrum = _spectrum(batch, channels, grid)
    spectrum[0, 0] = 0  # an all-zero map
    expected = ref.threshold_compact(spectrum.clone(), beta, activation, None, grid)
    with poisoned_empty():
        got = kernels.threshold_compact(spectrum.clone(), beta, activation, None, grid)
    _assert_same_compressed(expected, got, atol=2e-7)  # tanh: float32 round-off
    if beta == 1e3:
        assert got.nnz == 0
    if beta == 0.0:
        assert got.nnz == expected.numel - grid[0] * (grid[1] // 2 + 1)  # all but the zero map


@pytest.mark.parametrize("value_dtype", [torch.bfloat16, torch.float16])
def test_threshold_compact_low_precision_values(value_dtype):
    grid = (9, 9)
    spectrum = _spectrum(2, 3, grid)
    expected = ref.threshold_compact(spectrum.clone(), 0.5, True, value_dtype, grid)
    got = kernels.threshold_compact(spectrum.clone(), 0.5, True, value_dtype, grid)
    assert got.values.dtype == value_dtype
    _assert_same_compressed(expected, got, atol=float(torch.finfo(value_dtype).eps))


def test_threshold_keeps_nan_and_inf():
    grid = (7, 7)
    spectrum = _spectrum(1, 2, grid, scale=0.01)
    spectrum[0, 0, 1, 1] = complex(float("nan"), 0)
    spectrum[0, 1, 2, 2] = complex(float("inf"), 1)
    got = kernels.threshold_compact(spectrum.clone(), 0.5, True, None, grid)
    assert got.nnz == 2
    assert torch.isnan(got.values[0]).any() and got.values[1, 0] == 1.0


def test_fully_dense_maps():
    grid = (9, 9)
    spectrum = _spectrum(2, 2, grid) + 5  # every magnitude above beta
    got = kernels.threshold_compact(spectrum.clone(), 1.0, False, None, grid)
    assert got.nnz == got.numel and bool((got.mask[:, :-1] == -1).all())
    torch.testing.assert_close(got.to_dense(), spectrum)


@pytest.mark.parametrize("batch,channels,grid", GRIDS, ids=IDS)
@pytest.mark.parametrize("packed", [True, False], ids=["compressed_input", "dense_input"])
def test_product(batch, channels, grid, packed):
    x = _compressed(batch, channels, grid)
    assert x.offsets[1] == 0
    inputs = x if packed else x.to_dense()
    kernel = _spectrum(4, channels, grid)
    bias = torch.randn(4, device=DEVICE)
    expected = ref.product(inputs, kernel, bias)
    with poisoned_empty():
        got = kernels.product(inputs, kernel, bias)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch,channels,grid", GRIDS, ids=IDS)
@pytest.mark.parametrize("packed_out", [True, False], ids=["packed_grad", "dense_grad"])
def test_product_input_grad(batch, channels, grid, packed_out):
    grad = _compressed(batch, 4, grid)
    kernel = _spectrum(4, channels, grid)
    like = _compressed(batch, channels, grid) if packed_out else None
    expected = ref.product_input_grad(grad, kernel, like)
    with poisoned_empty():
        got = kernels.product_input_grad(grad, kernel, like)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch,channels,grid", GRIDS, ids=IDS)
@pytest.mark.parametrize("packed", [True, False], ids=["compressed_input", "dense_input"])
def test_product_weight_grad(batch, channels, grid, packed):
    x = _compressed(batch, channels, grid)
    inputs = x if packed else x.to_dense()
    grad = _compressed(batch, 4, grid, beta=1.2)
    expected = ref.product_weight_grad(inputs, grad)
    with poisoned_empty():
        got = kernels.product_weight_grad(inputs, grad)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_product_with_all_zero_input_gives_bias_only():
    grid = (9, 9)
    x = ref.threshold_compact(_spectrum(2, 3, grid), 1e3, True, None, grid)
    bias = torch.randn(4, device=DEVICE)
    got = kernels.product(x, _spectrum(4, 3, grid), bias)
    expected = torch.zeros_like(got)
    expected[:, :, 0, 0] = bias
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("batch,channels,grid", GRIDS[:3], ids=IDS[:3])
def test_pack_and_unpack(batch, channels, grid):
    x = _compressed(batch, channels, grid)
    with poisoned_empty():
        dense = kernels.unpack(x)
    torch.testing.assert_close(dense, ref.unpack(x), atol=0, rtol=0)
    other = _spectrum(batch, channels, grid)
    with poisoned_empty():
        packed = kernels.pack(other, x.mask, x.offsets, x.nnz)
    assert torch.equal(packed, ref.pack(other, x.mask, x.offsets, x.nnz))


def test_activation_backward():
    x = _compressed(2, 3, (9, 9))
    grad = torch.randn_like(x.values)
    for values in (x.values, x.values.to(torch.bfloat16)):
        with poisoned_empty():
            got = kernels.activation_backward(values, grad)
        torch.testing.assert_close(got, ref.activation_backward(values, grad), atol=1e-6, rtol=1e-6)
