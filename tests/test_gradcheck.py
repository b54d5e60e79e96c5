"""torch.autograd.gradcheck in float64 for every autograd function (reference path).

Thresholds are chosen in a gap of the spectrum's magnitudes, so finite differences never
flip a keep decision (the threshold's derivative is the keep-mask almost everywhere).
"""

from dataclasses import replace

import pytest
import torch
from conftest import safe_beta
from torch.autograd import gradcheck

from spectriton import transforms
from spectriton.activation import SplitTanhFunction
from spectriton.functional import SpectralFlow, spectral_block, spectral_layer, spectral_output
from spectriton.geometry import LayerShape, block_geometry
from spectriton.pooling import CompactMaxPool2d

D = torch.float64


def _product_magnitudes(x, w, b, grid):
    from spectriton.reference import product

    kernel = transforms.kernel_spectrum(w, grid)
    return product(transforms.map_spectrum(x, grid), kernel, b * transforms.bias_scale(grid)).abs()


@pytest.mark.parametrize("activation", [False, True], ids=["linear", "split_tanh"])
@pytest.mark.parametrize("size,k,p", [((5, 5), 3, 1), ((6, 7), 3, 0), ((7, 7), 5, 2)], ids=str)
def test_first_layer(size, k, p, activation):
    x = torch.randn(2, 2, *size, dtype=D, requires_grad=True)
    w = (0.4 * torch.randn(3, 2, k, k, dtype=D)).requires_grad_()
    b = torch.randn(3, dtype=D, requires_grad=True)
    geom = block_geometry([LayerShape((k, k), (p, p), (1, 1))], size)
    beta = safe_beta(_product_magnitudes(x.detach(), w.detach(), b.detach(), geom.grid), 0.4)
    act = "split_tanh" if activation else None

    def f(x, w, b):
        flow = SpectralFlow.start(x, [LayerShape((k, k), (p, p), (1, 1))])
        return spectral_output(spectral_layer(flow, w, b, (p, p), beta, act))

    assert gradcheck(f, (x, w, b))


def test_block_of_three_layers_with_stride():
    shapes = [LayerShape((3, 3), (1, 1), (1, 1))] * 2 + [LayerShape((3, 3), (1, 1), (2, 2))]
    x = torch.randn(2, 2, 6, 6, dtype=D, requires_grad=True)
    ws = [
        (0.3 * torch.randn(c_out, c_in, 3, 3, dtype=D)).requires_grad_()
        for c_in, c_out in [(2, 3), (3, 3), (3, 2)]
    ]
    bs = [torch.randn(c, dtype=D, requires_grad=True) for c in (3, 3, 2)]
    betas = _safe_block_betas(x.detach(), [w.detach() for w in ws], [b.detach() for b in bs], shapes)

    def f(x, *params):
        return spectral_block(x, params[:3], params[3:], shapes, betas, ["split_tanh"] * 3)

    assert gradcheck(f, (x, *ws, *bs))


def _safe_block_betas(x, weights, biases, shapes, quantile=0.3):
    """Per-layer safe thresholds, found layer after layer on the dense reference."""
    from spectriton.reference import keep_mask, product, split_tanh

    grid = block_geometry(shapes, x.shape[-2:]).grid
    spectrum, betas = transforms.map_spectrum(x, grid), []
    for w, b in zip(weights, biases):
        y = product(spectrum, transforms.kernel_spectrum(w, grid), b * transforms.bias_scale(grid))
        betas.append(safe_beta(y.abs(), quantile))
        spectrum = split_tanh(torch.where(keep_mask(y, betas[-1]), y, 0))
    return betas


def test_later_layer_input_gradient_is_packed():
    shape = LayerShape((3, 3), (1, 1), (1, 1))
    x = torch.randn(2, 2, 5, 5, dtype=D)
    w1 = 0.5 * torch.randn(3, 2, 3, 3, dtype=D)
    first = spectral_layer(SpectralFlow.start(x, [shape, shape]), w1, None, (1, 1), 0.0, "split_tanh")
    values = first.values.detach().requires_grad_()
    w2 = (0.5 * torch.randn(2, 3, 3, 3, dtype=D)).requires_grad_()

    def f(values, w2):
        flow = replace(first, values=values)
        return spectral_output(spectral_layer(flow, w2, None, (1, 1), 0.0, "split_tanh"))

    assert gradcheck(f, (values, w2))


@pytest.mark.parametrize("normalised", [False, True], ids=["plain", "normalised"])
def test_dense_block_layer_with_two_sources(normalised):
    """A layer reading the block input and an earlier layer's output (DenseNet style);
    normalised, with BatchNorm's scale and shift and a bias."""
    shape = LayerShape((3, 3), (1, 1), (1, 1))
    x = torch.randn(2, 2, 5, 5, dtype=D, requires_grad=True)
    w1 = (0.5 * torch.randn(3, 2, 3, 3, dtype=D)).requires_grad_()
    w2 = (0.5 * torch.randn(2, 5, 3, 3, dtype=D)).requires_grad_()
    b2 = torch.randn(2, dtype=D, requires_grad=True)
    affine = torch.tensor([[0.7, -1.2], [0.1, 0.3]], dtype=D, requires_grad=True)
    moments = torch.tensor([[0.2, -0.1], [1.5, 0.5]], dtype=torch.float32) if normalised else None

    def f(x, w1, w2, b2, affine):
        start = SpectralFlow.start(x, [shape, shape])
        first = spectral_layer(start, w1, None, (1, 1), 0.0, "split_tanh")
        options = dict(moments=moments, affine=affine) if normalised else {}
        return spectral_output(spectral_layer([start, first], w2, b2, (1, 1), 0.0, "split_tanh", **options))

    assert gradcheck(f, (x, w1, w2, b2, affine))


def test_compact_max_pool():
    x = torch.randn(2, 3, 7, 9, dtype=D, requires_grad=True)
    assert gradcheck(CompactMaxPool2d(2), (x,))
    assert gradcheck(CompactMaxPool2d(3, 2, 1), (x,))  # overlapping, padded


def test_split_tanh():
    z = torch.randn(3, 5, dtype=torch.complex128, requires_grad=True)
    assert gradcheck(SplitTanhFunction.apply, (z,))


@pytest.mark.parametrize("beta", [0.0, 0.5], ids=["beta0", "beta0.5"])
def test_normalised_layer(beta):
    """A normalised layer (``moments`` given: each channel's product centred and divided by
    its running standard deviation) differentiates through those constants."""
    shape = LayerShape((3, 3), (1, 1), (1, 1))
    x = torch.randn(2, 2, 5, 5, dtype=D, requires_grad=True)
    w = (0.5 * torch.randn(3, 2, 3, 3, dtype=D)).requires_grad_()
    b = torch.randn(3, dtype=D, requires_grad=True)
    moments = torch.tensor([[0.0, 0.0, 0.0], [0.5, 2.0, 4.0]], dtype=torch.float32)
    geom = block_geometry([shape], (5, 5))
    scale = moments[1].rsqrt().to(D)[None, None]  # zero means; eps is below the gap finite differences need
    beta = (
        safe_beta(_product_magnitudes(x.detach(), w.detach(), b.detach(), geom.grid) * scale, 0.4)
        if beta
        else 0.0
    )

    def f(x, w, b):
        flow = SpectralFlow.start(x, [shape])
        return spectral_output(spectral_layer(flow, w, b, (1, 1), beta, "split_tanh", moments=moments))

    assert gradcheck(f, (x, w, b))


def test_residual_added_in_the_spectral_domain():
    """A block's last layer with a residual: the sum's threshold and split tanh act on the
    product plus the residual's spectrum; gradients reach the input, weights and residual."""
    shape = LayerShape((3, 3), (1, 1), (1, 1))
    x = torch.randn(2, 2, 5, 5, dtype=D, requires_grad=True)
    w1 = (0.5 * torch.randn(3, 2, 3, 3, dtype=D)).requires_grad_()
    w2 = (0.5 * torch.randn(3, 3, 3, 3, dtype=D)).requires_grad_()
    r = torch.randn(2, 3, 5, 5, dtype=D, requires_grad=True)

    def f(x, w1, w2, r):
        flow = SpectralFlow.start(x, [shape, shape])
        flow = spectral_layer(flow, w1, None, (1, 1), 0.0, "split_tanh")
        return spectral_output(spectral_layer(flow, w2, None, (1, 1), 0.0, "split_tanh", residual=r))

    assert gradcheck(f, (x, w1, w2, r))


@pytest.mark.parametrize("normalised", [False, True], ids=["plain", "normalised"])
def test_strided_layer_on_its_outputs_grid(normalised):
    """A strided layer thresholds the spectrum of its cropped, strided output (an odd-sized
    one here), with a residual added there (normalised: with BatchNorm's scale and shift,
    a zero scale included): gradcheck passes."""
    shapes = [LayerShape((3, 3), (1, 1), (1, 1)), LayerShape((3, 3), (1, 1), (2, 2))]
    x = torch.randn(2, 2, 7, 7, dtype=D, requires_grad=True)
    w1 = (0.5 * torch.randn(3, 2, 3, 3, dtype=D)).requires_grad_()
    w2 = (0.5 * torch.randn(2, 3, 3, 3, dtype=D)).requires_grad_()
    b2 = torch.randn(2, dtype=D, requires_grad=True)
    r = torch.randn(2, 2, 4, 4, dtype=D, requires_grad=True)
    moments = torch.tensor([[0.1, -0.2], [0.5, 2.0]], dtype=torch.float32) if normalised else None
    affine = torch.tensor([[1.5, 0.0], [0.3, -0.2]], dtype=D, requires_grad=True) if normalised else None

    def f(x, w1, w2, b2, r, affine):
        flow = spectral_layer(SpectralFlow.start(x, shapes), w1, None, (1, 1), 0.0, "split_tanh")
        last = spectral_layer(
            flow, w2, b2, (1, 1), 0.0, "split_tanh", moments=moments, residual=r, stride=(2, 2), affine=affine
        )
        assert last.geom.grid == (4, 4)  # the output's own grid
        return spectral_output(last)

    assert gradcheck(f, (x, w1, w2, b2, r, affine))


def test_strided_block_matches_the_dense_oracle():
    """Forward and gradients of a strided block equal the dense-spectrum oracle's, which
    crops the last product to the output before its threshold and split tanh."""
    from spectriton.reference import dense_block

    shapes = [LayerShape((3, 3), (1, 1), (1, 1)), LayerShape((3, 3), (1, 1), (2, 2))]
    x = torch.randn(2, 2, 9, 9, dtype=D, requires_grad=True)
    weights = [
        torch.randn(3, 2, 3, 3, dtype=D, requires_grad=True),
        torch.randn(2, 3, 3, 3, dtype=D, requires_grad=True),
    ]
    biases = [None, torch.randn(2, dtype=D, requires_grad=True)]
    args = (shapes, [0.3, 0.3], ["split_tanh"] * 2)
    got = spectral_block(x, weights, biases, *args)
    want = dense_block(x, weights, biases, *args)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    inputs = [x, *weights, biases[1]]
    for a, b in zip(torch.autograd.grad(got.sum(), inputs), torch.autograd.grad(want.sum(), inputs)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("activation", [None, "split_tanh"])
def test_double_backward_is_refused_with_a_clear_error(activation):
    """A gradient penalty or a Hessian-vector product differentiates a gradient: the first
    gradient (``create_graph=True``) is the plain one, differentiating it again raises an
    error that says so, not torch's internal "no autograd formula"."""
    from spectriton import SpectralConv2d

    torch.manual_seed(0)
    layer = SpectralConv2d(2, 3, 3, padding=1, beta=0.1, activation=activation).double()
    x = torch.randn(2, 2, 6, 6, dtype=D, requires_grad=True)
    (plain,) = torch.autograd.grad(layer(x).square().sum(), x)
    (grad,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    torch.testing.assert_close(grad, plain, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="double backward .* is not supported by spectral layers"):
        grad.square().sum().backward()
