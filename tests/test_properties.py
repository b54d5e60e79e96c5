"""Property tests (hypothesis): random shapes, strides, paddings, betas and value dtypes.

- the compressed spectrum round-trips exactly (up to the value dtype's rounding);
- a linear layer (beta 0, no activation) is ``F.conv2d``, forward and backward;
- a block equals the dense oracle, and half-precision values stay within their rounding;
- the Triton kernels (interpreted on CPU) agree with the reference path.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import safe_beta

pytest.importorskip("hypothesis")  # in the test extra; absent where only torch is installed
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import spectriton
from spectriton import reference, transforms
from spectriton.compressed import CompressedSpectrum, mask_words, popcount, unpack_bits
from spectriton.functional import SpectralFlow
from spectriton.geometry import LayerShape, block_geometry

VALUE_DTYPES = [None, torch.complex64, torch.bfloat16, torch.float16]
ROUNDING = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}  # unit round-off
SETTINGS = dict(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
seeds = st.integers(0, 2**31 - 1)


def _randn(seed, *shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=40, **SETTINGS)
@given(
    batch=st.integers(0, 3),
    channels=st.integers(1, 3),
    grid=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    zeros=st.sampled_from([0.0, 0.5, 1.0]),
    value_dtype=st.sampled_from(VALUE_DTYPES),
    seed=seeds,
)
def test_compressed_round_trip(batch, channels, grid, zeros, value_dtype, seed):
    half = (grid[0], grid[1] // 2 + 1)
    dense = _randn(seed, batch, channels, *half, dtype=torch.complex64)
    dense[_randn(seed + 1, *dense.shape).abs() < zeros * 10] = 0
    c = CompressedSpectrum.from_dense(dense, grid, value_dtype=value_dtype)
    assert c.shape == dense.shape and c.nnz == int((dense != 0).sum())
    assert c.mask.shape == (mask_words(c.numel),) and c.offsets.shape == (c.bins + 1,)
    counts = c.offsets.diff()
    assert c.offsets[0] == 0 and c.offsets[-1] == c.nnz and bool((counts >= 0).all())
    assert int(popcount(c.mask).sum()) == c.nnz
    # frequency-major: each frequency's run holds that frequency's kept entries
    assert torch.equal(counts, (dense != 0).permute(2, 3, 0, 1).reshape(c.bins, -1).sum(-1))
    assert not unpack_bits(c.mask, c.mask.numel() * 32)[c.numel :].any()  # no stray bits
    value_bytes = 4 if value_dtype in ROUNDING else 8
    budget = c.nnz * value_bytes + math.ceil(c.numel / 8) + 16 * c.maps + 8 * c.bins + 1024
    assert c.nbytes <= budget
    expected = dense
    if value_dtype in ROUNDING:
        expected = torch.view_as_complex(torch.view_as_real(dense).to(value_dtype).float())
    assert torch.equal(c.to_dense(), expected)


@st.composite
def conv_cases(draw):
    """A valid ``nn.Conv2d`` geometry: kernel, stride, padding (0..k) and input size."""
    k = draw(st.tuples(st.integers(1, 5), st.integers(1, 5)))
    p = tuple(draw(st.integers(0, k[a])) for a in range(2))
    size = tuple(draw(st.integers(max(1, k[a] - 2 * p[a]), 12)) for a in range(2))
    s = draw(st.tuples(st.integers(1, 2), st.integers(1, 2)))
    return size, k, p, s


@settings(max_examples=30, **SETTINGS)
@given(
    case=conv_cases(),
    channels=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    batch=st.integers(1, 2),
    bias=st.booleans(),
    seed=seeds,
)
def test_linear_layer_is_conv2d(case, channels, batch, bias, seed, monkeypatch):
    monkeypatch.setenv("SPECTRITON_BACKEND", "torch")
    size, k, p, s = case
    torch.manual_seed(seed)
    layer = spectriton.SpectralConv2d(*channels, k, stride=s, padding=p, bias=bias)
    x = torch.randn(batch, channels[0], *size, requires_grad=True)
    params = [x, layer.weight] + ([layer.bias] if bias else [])
    expected = F.conv2d(x, layer.weight, layer.bias, stride=s, padding=p)
    got = layer(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(expected)
    scale = max(1.0, size[0] * size[1] / 49)  # weight gradients sum over every output pixel
    for a, b in zip(torch.autograd.grad(expected, params, grad), torch.autograd.grad(got, params, grad)):
        torch.testing.assert_close(b, a, atol=1e-4 * scale, rtol=1e-4)


@st.composite
def blocks(draw, max_layers=3, max_size=10):
    """Layers chained on one grid: odd kernels, any padding, a stride on the last only."""
    n = draw(st.integers(1, max_layers))
    channels = draw(st.lists(st.integers(1, 3), min_size=n + 1, max_size=n + 1))
    shapes = []
    for i in range(n):
        k = draw(st.sampled_from([1, 3, 5]))
        p = draw(st.integers(0, k // 2))
        s = draw(st.integers(1, 2)) if i == n - 1 else 1
        shapes.append(LayerShape((k, k), (p, p), (s, s)))
    size = tuple(draw(st.integers(3, max_size)) for _ in range(2))
    try:
        block_geometry(shapes, size)
    except ValueError:  # a kernel larger than its padded input
        assume(False)
    return channels, shapes, size


def _weights(channels, shapes, seed):
    torch.manual_seed(seed)
    weights = [0.5 * torch.randn(o, c, *s.kernel) for c, o, s in zip(channels, channels[1:], shapes)]
    return weights, [0.1 * torch.randn(o) for o in channels[1:]]


@settings(max_examples=25, **SETTINGS)
@given(
    block=blocks(),
    betas=st.lists(st.floats(0, 1.5), min_size=3, max_size=3),
    activation=st.sampled_from([None, "split_tanh"]),
    seed=seeds,
)
def test_block_equals_the_dense_oracle(block, betas, activation, seed, monkeypatch):
    monkeypatch.setenv("SPECTRITON_BACKEND", "torch")
    channels, shapes, size = block
    weights, biases = _weights(channels, shapes, seed)
    x = _randn(seed, 2, channels[0], *size)
    args = (x, weights, biases, shapes, betas[: len(shapes)], [activation] * len(shapes))
    expected = reference.dense_block(*args)
    torch.testing.assert_close(spectriton.functional.spectral_block(*args), expected, atol=1e-5, rtol=1e-5)


def _one_layer(x, weight, bias, shape, beta, activation, value_dtype):
    flow = SpectralFlow.start(x, [shape])
    flow = spectriton.functional.spectral_layer(
        flow, weight, bias, shape.padding, beta, activation, value_dtype
    )
    return flow, spectriton.functional.spectral_output(flow)


@settings(max_examples=25, **SETTINGS)
@given(
    block=blocks(max_layers=1),
    beta=st.floats(0, 1.5),
    activation=st.sampled_from([None, "split_tanh"]),
    value_dtype=st.sampled_from([torch.bfloat16, torch.float16]),
    seed=seeds,
)
def test_half_values_change_the_output_by_their_rounding_only(block, beta, activation, value_dtype, seed):
    """Orthonormal inverse FFT: ||dy|| <= sqrt(2) ||dZ|| <= sqrt(2) u ||Z|| (+ subnormals)."""
    channels, shapes, size = block
    (weight,), (bias,) = _weights(channels, shapes, seed)
    x = _randn(seed, 2, channels[0], *size)
    exact, y = _one_layer(x, weight, bias, shapes[0], beta, activation, None)
    rounded, y_half = _one_layer(x, weight, bias, shapes[0], beta, activation, value_dtype)
    assert rounded.values.dtype == value_dtype and torch.equal(rounded.mask, exact.mask)
    rounding = ROUNDING[value_dtype] * exact.values.norm() + 2**-25 * math.sqrt(exact.values.numel())
    bound = math.sqrt(2) * rounding
    assert (y_half - y).norm() <= bound + 1e-6


def _safe_betas(x, weights, biases, shapes, quantiles, activation):
    """Thresholds in a gap of each layer's magnitudes (dense reference), so that float32
    round-off between backends never flips a keep decision; None if there is no gap."""
    grid = block_geometry(shapes, x.shape[-2:]).grid
    spectrum, betas = transforms.map_spectrum(x, grid), []
    for w, b, q in zip(weights, biases, quantiles):
        y = reference.product(spectrum, transforms.kernel_spectrum(w, grid), b * transforms.bias_scale(grid))
        try:
            betas.append(safe_beta(y.abs(), q))
        except ValueError:
            return None
        spectrum = torch.where(reference.keep_mask(y, betas[-1]), y, 0)
        spectrum = reference.split_tanh(spectrum) if activation else spectrum
    return betas


@settings(max_examples=20, **SETTINGS)
@given(
    block=blocks(max_layers=2, max_size=8),
    quantiles=st.lists(st.floats(0.0, 0.9), min_size=2, max_size=2),
    activation=st.sampled_from([None, "split_tanh"]),
    value_dtype=st.sampled_from(VALUE_DTYPES),
    seed=seeds,
)
def test_triton_kernels_match_the_reference(block, quantiles, activation, value_dtype, seed, monkeypatch):
    pytest.importorskip("spectriton.kernels")
    channels, shapes, size = block
    assume(len(shapes) == 1 or value_dtype not in ROUNDING)  # a rounding step may flip a later keep
    weights, biases = _weights(channels, shapes, seed)
    x = _randn(seed, 2, channels[0], *size)
    betas = _safe_betas(x, weights, biases, shapes, quantiles, activation)
    assume(betas is not None)
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("SPECTRITON_BACKEND", backend)
        inputs = [t.clone().requires_grad_() for t in (x, *weights, *biases)]
        n = len(weights)
        y = spectriton.functional.spectral_block(
            inputs[0], inputs[1 : 1 + n], inputs[1 + n :], shapes, betas, [activation] * n, value_dtype
        )
        results[backend] = (y, torch.autograd.grad(y.square().sum(), inputs))
    (y_ref, g_ref), (y_tri, g_tri) = results["torch"], results["triton"]
    # Half values: both backends round float32 values that may differ in their last bit.
    u = ROUNDING.get(value_dtype, 0.0)
    out_tol, grad_tol = 1e-5 + 4 * u, 1e-4 + 16 * u
    torch.testing.assert_close(
        y_tri, y_ref, atol=out_tol * max(1.0, float(y_ref.detach().abs().max())), rtol=out_tol
    )
    for a, b in zip(g_ref, g_tri):
        torch.testing.assert_close(
            b, a, atol=grad_tol * max(1.0, float(a.detach().abs().max())), rtol=grad_tol
        )
