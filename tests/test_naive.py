"""The whole layer against its plain-torch oracle (:mod:`spectriton.naive`), in float64:
normalised, scaled and shifted, with a residual, a density budget and split tanh, unstrided
and strided, output and every gradient, on both backends."""

import pytest
import torch
import torch.nn.functional as F

import spectriton as st
from spectriton import naive

pytest.importorskip("spectriton.kernels")

# (kernel, padding, stride, input size): odd sizes, a padding wider than k - 1, a stride
# 1 x 1 kernels: one product matrix at every frequency (transforms.pointwise_kernel)
CASES = [(3, 1, 1, (9, 7)), (3, 2, 1, (8, 8)), (3, 1, 2, (9, 9)), (1, 0, 1, (9, 7)), (1, 0, 2, (9, 9))]
CASE_IDS = ["k3-p1-s1-9x7", "k3-p2-s1-8x8", "k3-p1-s2-9x9", "k1-p0-s1-9x7", "k1-p0-s2-9x9"]


@pytest.mark.parametrize(
    "kernel,padding,stride,size", CASES + [(5, 3, 3, (10, 11))], ids=CASE_IDS + ["k5-p3-s3"]
)
def test_naive_layer_at_beta0_is_conv2d(kernel, padding, stride, size):
    """The oracle's own conventions, checked against ``F.conv2d`` (not against spectriton)."""
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    weight = torch.randn(4, 3, kernel, kernel, dtype=torch.float64)
    bias = torch.randn(4, dtype=torch.float64)
    got = naive.spectral_layer(x, weight, bias, padding=(padding,) * 2, stride=(stride,) * 2)
    expected = F.conv2d(x, weight, bias, padding=padding, stride=stride)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)  # float64 FFT round-off


def _isolated_density(magnitudes: torch.Tensor, target: float, margin: float = 1e-6) -> float:
    """A density budget near ``target`` whose quantile lands on an entry that no other comes
    within ``margin`` (relative) of: not one of a conjugate pair (the half spectrum holds both
    ``Y[u, 0]`` and ``Y[-u, 0]``), so round-off can decide at most that entry."""
    m = magnitudes.flatten().sort().values
    n = m.numel()
    assert n <= 1 << 16  # the layer takes its quantile over every entry, not a sample
    apart = (m[1:] - m[:-1]) > margin * m[1:]
    isolated = [k for k in range(1, n - 1) if apart[k - 1] and apart[k]]
    k = min(isolated, key=lambda k: abs(k - (1 - target) * (n - 1)))
    return 1 - (k + 0.5) / (n - 1)  # torch.nanquantile(..., interpolation="lower") picks entry k


def _naive_beta(magnitudes: torch.Tensor, used: float, kept: int, band: float = 1e-9) -> float:
    """The threshold that gives the oracle the layer's keep decisions.

    The layer thresholds at its quantile entry's own magnitude, so that entry's decision is
    round-off; the layer's kept count says which way it went. The oracle gets a threshold a
    hair (``band``, relative: far above float64 round-off, below the isolation margin) on
    that side.
    """
    above = [int((magnitudes > used * (1 + s * band)).sum()) for s in (1, -1)]
    assert above[1] - above[0] == 1, "the quantile's entry alone within the band"
    assert kept in above, (kept, above)
    return used * (1 + band) if kept == above[0] else used * (1 - band)


@pytest.mark.parametrize("kernel,padding,stride,size", CASES, ids=CASE_IDS)
def test_normalised_layer_with_affine_residual_and_density_matches_the_oracle(
    kernel, padding, stride, size, backend
):
    layer = st.SpectralConv2d(
        3, 4, kernel, stride=stride, padding=padding, activation="split_tanh", density=0.4,
        normalize=True, affine=True,
    ).double()  # fmt: skip
    with torch.no_grad():
        layer.norm_weight.uniform_(0.5, 1.5)
        layer.norm_bias.normal_(0, 0.3)
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    out = [-(-(n + 2 * padding - kernel + 1) // stride) for n in size]
    residual = torch.randn(2, 4, *out, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        layer(x, residual)  # calibrates running_moments on this batch
    inputs = dict(padding=(padding,) * 2, stride=(stride,) * 2, residual=residual)
    inputs.update(moments=layer.running_moments.clone(), affine=(layer.norm_weight, layer.norm_bias))
    magnitudes = naive.layer_spectrum(x, layer.weight, layer.bias, **inputs).detach().abs()
    layer.density = _isolated_density(magnitudes, 0.4)
    layer.threshold.fill_(float("nan"))  # so that it holds this step's threshold afterwards
    y = layer(x, residual)
    kept = round(layer.last_density * magnitudes.numel())
    assert abs(kept / magnitudes.numel() - 0.4) < 0.05  # the budget
    beta = _naive_beta(magnitudes, float(layer.threshold), kept)
    expected = naive.spectral_layer(x, layer.weight, layer.bias, beta=beta, activation="split_tanh", **inputs)
    # float64 round-off of two different FFT routes (measured at most 5e-14, relative, over
    # output and gradients); a flipped keep decision would be off by about beta / sqrt(grid)
    torch.testing.assert_close(y, expected, atol=1e-10, rtol=1e-10)
    grad = torch.randn_like(y)
    wrt = {
        "input": x,
        "weight": layer.weight,
        "bias": layer.bias,
        "norm_weight": layer.norm_weight,
        "norm_bias": layer.norm_bias,
        "residual": residual,
    }
    got = torch.autograd.grad(y, list(wrt.values()), grad)
    want = torch.autograd.grad(expected, list(wrt.values()), grad)
    for name, a, b in zip(wrt, got, want):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("kernel,padding", [(1, 0), (3, 1)], ids=["k1", "k3"])
def test_plain_layer_at_a_fixed_beta_matches_the_oracle(kernel, padding, backend):
    """The fused forward (one source, a fixed beta, no normalisation), output and every
    gradient; beta 0 (no keep decision for round-off to move)."""
    layer = st.SpectralConv2d(3, 4, kernel, padding=padding, activation="split_tanh", beta=0.0).double()
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    expected = naive.spectral_layer(
        x, layer.weight, layer.bias, padding=(padding,) * 2, beta=0.0, activation="split_tanh"
    )
    torch.testing.assert_close(y, expected, atol=1e-10, rtol=1e-10)
    grad = torch.randn_like(y)
    wrt = [x, layer.weight, layer.bias]
    for a, b in zip(torch.autograd.grad(y, wrt, grad), torch.autograd.grad(expected, wrt, grad), strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
