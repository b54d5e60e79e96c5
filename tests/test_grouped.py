"""Grouped and depthwise layers: each group its own product (spectriton.grouped), never a
block-diagonal weight; on both backends, forward and every gradient."""

import pytest
import torch
from conftest import safe_beta
from torch import nn
from torch.autograd import gradcheck

import spectriton as st
from spectriton import grouped, transforms
from spectriton.functional import SpectralFlow, spectral_layer, spectral_output
from spectriton.geometry import LayerShape

D = torch.float64


def _block_diagonal(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The ``groups=1`` weight that a grouped one is equal to (the test's oracle only)."""
    out_channels, per_group = weight.shape[:2]
    dense = weight.new_zeros(out_channels, per_group * groups, *weight.shape[2:])
    step = out_channels // groups
    for g in range(groups):
        rows, cols = slice(g * step, (g + 1) * step), slice(g * per_group, (g + 1) * per_group)
        dense[rows, cols] = weight[rows]
    return dense


@pytest.mark.parametrize(
    "channels,out_channels,groups,dilation",
    [(6, 6, 1, 1), (6, 4, 2, 1), (6, 6, 6, 1), (6, 12, 6, 1), (6, 6, 6, 2), (6, 9, 3, (2, 1))],
    ids=str,
)
def test_grouped_layers_match_conv2d(backend, channels, out_channels, groups, dilation):
    """Beta 0, no activation: ``F.conv2d``'s output and every gradient, float64, for dense,
    grouped, depthwise and depthwise-with-multiplier layers (dilated too)."""
    conv = nn.Conv2d(channels, out_channels, 3, padding=dilation, dilation=dilation, groups=groups).double()
    layer = st.SpectralConv2d.from_conv(conv)
    x = torch.randn(2, channels, 7, 6, dtype=D, requires_grad=True)
    expected, got = conv(x), layer(x)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-10)  # float64 round-off of two FFTs
    grad = torch.randn_like(expected)
    for a, b in zip(
        torch.autograd.grad(expected, [x, conv.weight, conv.bias], grad),
        torch.autograd.grad(got, [x, layer.weight, layer.bias], grad),
    ):
        torch.testing.assert_close(b, a, atol=1e-11, rtol=1e-10)


@pytest.mark.parametrize("groups", [2, 4], ids=["grouped", "depthwise"])
def test_grouped_products_equal_the_block_diagonal_ones(groups):
    """The three per-group products against the dense ones of the block-diagonal weight."""
    grid, channels, out_channels = (5, 6), 4, 8
    bins = grid[0] * (grid[1] // 2 + 1)  # the half spectrum, written out
    weight = torch.randn(out_channels, channels // groups, 3, 3, dtype=D)
    dense = _block_diagonal(weight, groups)
    x = torch.randn(bins, 3, channels, dtype=torch.complex128)
    grad = torch.randn(bins, 3, out_channels, dtype=torch.complex128)
    kernel, kernel_dense = transforms.kernel_spectrum(weight, grid), transforms.kernel_spectrum(dense, grid)
    kernel_h = transforms.kernel_spectrum(weight, grid, adjoint=True)
    torch.testing.assert_close(grouped.product(x, kernel, groups), x @ kernel_dense)
    torch.testing.assert_close(grouped.input_grad(grad, kernel_h, groups), grad @ kernel_dense.mH)
    taps = transforms.kernel_spectrum_adjoint(grouped.weight_grad(x, grad, groups), grid, (3, 3))
    taps_dense = transforms.kernel_spectrum_adjoint(x.mH @ grad, grid, (3, 3))
    torch.testing.assert_close(taps, _diagonal_blocks(taps_dense, groups))


def _grouped_block(groups, **options):
    """Two layers in one block, the second grouped: it reads the first's compressed output."""
    torch.manual_seed(1)
    return st.SpectralSequential(
        st.SpectralConv2d(3, 6, 3, padding=1, **options),
        st.SpectralConv2d(6, 6, 3, padding=1, groups=groups, **options),
    )


@pytest.mark.parametrize("groups", [2, 6], ids=["grouped", "depthwise"])
def test_grouped_layers_with_split_tanh_and_normalised_match_their_block_diagonal_twin(backend, groups):
    """With split tanh, normalisation and affine, a grouped layer (reading a compressed
    spectrum) gives the output and gradients of a ``groups=1`` layer with the block-diagonal
    weight, on both backends; the grouped weight's gradient is that one's diagonal blocks."""
    options = dict(beta=0.3, activation="split_tanh", normalize=True, affine=True)
    model, twin = _grouped_block(groups, **options).double(), _grouped_block(1, **options).double()
    with torch.no_grad():
        twin[0].weight.copy_(model[0].weight)
        twin[1].weight.copy_(_block_diagonal(model[1].weight, groups))
        for a, b in zip(model.modules(), twin.modules()):
            if isinstance(a, st.SpectralConv2d):
                a.norm_weight.uniform_(0.5, 1.5)
                a.norm_bias.uniform_(-0.3, 0.3)
                b.norm_weight.copy_(a.norm_weight)
                b.norm_bias.copy_(a.norm_bias)
                b.bias.copy_(a.bias)
    x = torch.randn(2, 3, 7, 7, dtype=D, requires_grad=True)
    y, y_twin = model(x), twin(x)  # training mode: the batch's moments, from one product
    torch.testing.assert_close(y, y_twin, atol=1e-10, rtol=1e-8)
    grad = torch.randn_like(y)
    params, params_twin = list(model.parameters()), list(twin.parameters())
    grads = torch.autograd.grad(y, [x, *params], grad)
    grads_twin = list(torch.autograd.grad(y_twin, [x, *params_twin], grad))
    index = 1 + next(i for i, p in enumerate(params_twin) if p is twin[1].weight)
    grads_twin[index] = _diagonal_blocks(grads_twin[index], groups)
    for a, b in zip(grads_twin, grads):
        torch.testing.assert_close(b, a, atol=1e-10, rtol=1e-8)


def _diagonal_blocks(dense: torch.Tensor, groups: int) -> torch.Tensor:
    out_channels, channels = dense.shape[:2]
    step, per_group = out_channels // groups, channels // groups
    blocks = [dense[g * step : (g + 1) * step, g * per_group : (g + 1) * per_group] for g in range(groups)]
    return torch.cat(blocks)


@pytest.mark.parametrize("activation", [None, "split_tanh"])
def test_grouped_block_passes_gradcheck(activation):
    """A first layer and a depthwise one reading its compressed output, thresholds in gaps
    of the products' magnitudes (finite differences flip no keep decision)."""
    shapes = [LayerShape((3, 3), (1, 1), (1, 1))] * 2
    x = torch.randn(2, 2, 5, 5, dtype=D, requires_grad=True)
    w1 = (0.5 * torch.randn(4, 2, 3, 3, dtype=D)).requires_grad_()
    w2 = (0.5 * torch.randn(4, 1, 3, 3, dtype=D)).requires_grad_()
    b2 = torch.randn(4, dtype=D, requires_grad=True)

    def f(x, w1, w2, b2):
        flow = SpectralFlow.start(x, shapes)
        flow = spectral_layer(flow, w1, None, (1, 1), 0.0, activation)
        return spectral_output(spectral_layer(flow, w2, b2, (1, 1), beta, activation, groups=4))

    grid = (7, 7)
    with torch.no_grad():  # the depthwise layer's product, for a threshold in a gap of it
        first = transforms.map_spectrum(x, grid) @ transforms.kernel_spectrum(w1, grid)
        first = torch.complex(first.real.tanh(), first.imag.tanh()) if activation else first
        second = grouped.product(first, transforms.kernel_spectrum(w2, grid), 4)
        second[0] += b2 * transforms.bias_scale(grid)
    beta = safe_beta(second.abs(), 0.3)
    assert gradcheck(f, (x, w1, w2, b2))


def test_a_depthwise_layer_builds_no_dense_weight_nor_kernel_spectrum():
    """No op of a depthwise layer's forward and backward reads or makes an ``(O, C, k, k)``
    weight or a ``(bins, C, O)`` kernel spectrum (every op's shapes, from the profiler)."""
    layer = st.SpectralConv2d(8, 8, 3, padding=1, groups=8, beta=0.2, activation="split_tanh")
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    bins = 8 * (8 // 2 + 1)
    with torch.profiler.profile(record_shapes=True) as prof:
        layer(x).sum().backward()
    shapes = {tuple(shape) for event in prof.events() for shape in event.input_shapes if shape}
    assert (8, 1, 3, 3) in shapes and (bins, 1, 8) in shapes  # what it reads instead
    assert not {(8, 8, 3, 3), (bins, 8, 8)} & shapes


def test_a_grouped_layer_reads_one_source():
    flows = [SpectralFlow.start(torch.randn(1, 2, 5, 5), [LayerShape((3, 3), (1, 1), (1, 1))])] * 2
    with pytest.raises(ValueError, match="grouped layer"):
        spectral_layer(flows, torch.randn(4, 1, 3, 3), None, (1, 1), 0.0, None, groups=4)
