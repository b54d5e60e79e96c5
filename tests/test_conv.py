"""SpectralConv2d as a drop-in for nn.Conv2d, and SpectralSequential blocks."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spectriton as st
from spectriton.geometry import LayerShape, block_geometry

# (H, W, k, padding, stride): odd sizes, the paper's sizes, every padding 0..k-1.
CASES = [
    (7, 7, 3, 0, 1),
    (7, 9, 3, 1, 2),
    (9, 9, 3, 2, 1),
    (9, 9, 5, 4, 2),
    (33, 33, 3, 1, 1),
    (33, 9, 5, 2, 2),
    (28, 28, 5, 0, 1),  # LeNet conv1
    (12, 12, 5, 0, 1),  # LeNet conv2
    (32, 32, 3, 1, 1),  # AlexNet / VGG / DenseNet
    (16, 16, 3, 1, 2),
    (8, 8, 4, 3, 1),  # padding > k - 1: a larger grid
    (6, 10, (3, 5), (1, 2), (2, 1)),
]


def _id(case):
    h, w, k, p, s = case
    return f"H{h}-W{w}-k{k}-p{p}-s{s}".replace(" ", "")


@pytest.mark.parametrize("case", CASES, ids=_id)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_matches_conv2d(case, bias):
    h, w, k, p, s = case
    conv = nn.Conv2d(3, 4, k, stride=s, padding=p, bias=bias)
    layer = st.SpectralConv2d(3, 4, k, stride=s, padding=p, bias=bias)
    layer.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, h, w, requires_grad=True)
    expected, got = conv(x), layer(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-5)
    grad = torch.randn_like(expected)
    params = [x, conv.weight] + ([conv.bias] if bias else [])
    mine = [x, layer.weight] + ([layer.bias] if bias else [])
    for a, b in zip(torch.autograd.grad(expected, params, grad), torch.autograd.grad(got, mine, grad)):
        # Weight gradients sum over every output pixel: round-off grows with the map.
        torch.testing.assert_close(b, a, atol=1e-4 * h * w / 49, rtol=1e-4)


@pytest.mark.parametrize(
    "groups,dilation,stride,padding",
    [(2, 1, 1, 1), (4, 1, 2, 1), (1, 2, 1, 2), (2, (2, 3), 1, (2, 3)), (4, 2, 2, "valid"), (1, 2, 1, "same")],
    ids=str,
)
def test_groups_and_dilation_match_conv2d(groups, dilation, stride, padding):
    """A grouped product is block-diagonal over channels, a dilated kernel a larger one with
    zeros between its taps (groups=4 here is depthwise); float64, forward and gradients."""
    conv = nn.Conv2d(4, 8, 3, stride=stride, padding=padding, dilation=dilation, groups=groups).double()
    layer = st.SpectralConv2d.from_conv(conv)
    assert layer.weight is conv.weight and layer.weight.shape == (8, 4 // groups, 3, 3)
    x = torch.randn(2, 4, 11, 10, dtype=torch.float64, requires_grad=True)
    expected, got = conv(x), layer(x)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-10)
    grad = torch.randn_like(expected)
    for a, b in zip(
        torch.autograd.grad(expected, [x, conv.weight, conv.bias], grad),
        torch.autograd.grad(got, [x, layer.weight, layer.bias], grad),
    ):
        torch.testing.assert_close(b, a, atol=1e-11, rtol=1e-10)
    assert "groups" in repr(layer) or groups == 1


def test_a_grouped_layer_saves_no_dense_weight():
    """The block-diagonal weight is built inside the op, in forward and again in backward."""
    layer = st.SpectralConv2d(8, 8, 3, padding=1, groups=8, beta=0.5, activation="split_tanh")
    x = torch.randn(2, 8, 6, 6)
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        layer(x)
    assert (8, 8, 3, 3) not in shapes and (8, 1, 3, 3) in shapes


def test_padding_strings_match_conv2d():
    x = torch.randn(1, 2, 9, 9)
    for padding in ("same", "valid"):
        conv = nn.Conv2d(2, 3, 3, padding=padding)
        layer = st.SpectralConv2d(2, 3, 3, padding=padding)
        layer.load_state_dict(conv.state_dict())
        torch.testing.assert_close(layer(x), conv(x), atol=2e-6, rtol=1e-5)


def test_state_dict_round_trips_with_conv2d():
    conv = nn.Conv2d(3, 5, 3, padding=1)
    layer = st.SpectralConv2d(3, 5, 3, padding=1, beta=0.5, activation="split_tanh")
    assert set(layer.state_dict()) == set(conv.state_dict())
    layer.load_state_dict(conv.state_dict())
    back = nn.Conv2d(3, 5, 3, padding=1)
    back.load_state_dict(layer.state_dict())
    for key, value in conv.state_dict().items():
        assert torch.equal(back.state_dict()[key], value)
        assert layer.state_dict()[key].shape == value.shape


def test_from_conv_shares_parameters():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    layer = st.SpectralConv2d.from_conv(conv)
    assert layer.weight is conv.weight and layer.bias is conv.bias
    x = torch.randn(1, 3, 7, 7)
    torch.testing.assert_close(layer(x), conv(x), atol=2e-6, rtol=1e-5)


def test_initialisation_matches_conv2d_statistics():
    torch.manual_seed(1)
    a = nn.Conv2d(16, 32, 3).weight
    torch.manual_seed(1)
    b = st.SpectralConv2d(16, 32, 3).weight
    assert torch.equal(a, b)


def test_block_is_one_fft_per_block_and_matches_dense_reference():
    from spectriton.reference import dense_block

    block = st.SpectralSequential(
        st.SpectralConv2d(3, 8, 3, padding=1, beta=0.3, activation="split_tanh"),
        st.SpectralConv2d(8, 6, 3, padding=1, beta=0.3, activation="split_tanh"),
    )
    x = torch.randn(2, 3, 32, 32)
    y = block(x)
    assert y.shape == (2, 6, 32, 32)
    expected = dense_block(
        x,
        [m.weight for m in block],
        [m.bias for m in block],
        [m.shape for m in block],
        [m.beta for m in block],
        [m.activation for m in block],
    )
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


def test_block_geometry_follows_the_paper():
    # Table 5: 32 -> FFT 34 -> IFFT 32; Table 3: 28 -> 32 -> 24 and 12 -> 16 -> 8.
    same = LayerShape((3, 3), (1, 1), (1, 1))
    geom = block_geometry([same, same], (32, 32))
    assert geom.grid == (34, 34) and geom.out == (32, 32) and geom.offset == (2, 2)
    valid5 = LayerShape((5, 5), (0, 0), (1, 1))
    assert block_geometry([valid5], (28, 28)).grid == (32, 32)
    assert block_geometry([valid5], (28, 28)).out == (24, 24)
    assert block_geometry([valid5], (12, 12)).out == (8, 8)


def test_single_layer_block_equals_the_layer():
    layer = st.SpectralConv2d(3, 4, 3, padding=1, beta=0.2, activation="split_tanh")
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(st.SpectralSequential(layer)(x), layer(x))


def test_empty_batch_returns_empty_output():
    layer = st.SpectralConv2d(3, 4, 3, stride=2, padding=1)
    x = torch.randn(0, 3, 9, 9, requires_grad=True)
    y = layer(x)
    assert y.shape == (0, 4, 5, 5)
    y.sum().backward()
    assert layer.weight.grad is not None and torch.all(layer.weight.grad == 0)
    assert layer.bias.grad is not None and torch.all(layer.bias.grad == 0)  # as nn.Conv2d's


@pytest.mark.parametrize("stride", [1, 2])
def test_channels_last_in_channels_last_out(stride):
    conv = nn.Conv2d(3, 4, 3, stride=stride, padding=1)
    layer = st.SpectralConv2d.from_conv(conv)
    x = torch.randn(2, 3, 9, 9).contiguous(memory_format=torch.channels_last)
    y = layer(x)
    assert y.is_contiguous(memory_format=torch.channels_last) == conv(x).is_contiguous(
        memory_format=torch.channels_last
    )
    torch.testing.assert_close(y, conv(x), atol=1e-5, rtol=1e-5)
    assert layer(x.contiguous()).is_contiguous()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_reach_the_output(bad):
    layer = st.SpectralConv2d(1, 2, 3, padding=1, beta=5.0, activation="split_tanh")
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = bad
    y = layer(x)
    assert not torch.isfinite(y).all()


def test_half_inputs_compute_in_float32_and_keep_their_dtype():
    conv = nn.Conv2d(2, 3, 3, padding=1)
    layer = st.SpectralConv2d.from_conv(conv)
    x = torch.randn(1, 2, 9, 9)
    for dtype in (torch.float16, torch.bfloat16):
        y = layer(x.to(dtype))
        assert y.dtype == dtype
        torch.testing.assert_close(y.float(), conv(x.to(dtype).float()), atol=1e-2, rtol=1e-2)


def test_functional_api_matches_conv2d():
    x, w, b = torch.randn(2, 3, 9, 9), torch.randn(4, 3, 3, 3), torch.randn(4)
    y = st.functional.spectral_conv2d(x, w, b, stride=2, padding=1)
    torch.testing.assert_close(y, F.conv2d(x, w, b, stride=2, padding=1), atol=2e-6, rtol=1e-5)


def test_threshold_keeps_only_entries_above_beta():
    from spectriton.functional import SpectralFlow, spectral_layer

    x, w = torch.randn(2, 3, 9, 9), torch.randn(4, 3, 3, 3)
    flow = SpectralFlow.start(x, [LayerShape((3, 3), (0, 0), (1, 1))])
    out = spectral_layer(flow, w, None, (0, 0), 1.0, None)
    grid = flow.geom.grid
    # DESIGN.md section 2, written out independently of the library's transforms
    y = torch.einsum(
        "ncij,ocij->noij", torch.fft.rfft2(x, s=grid, norm="ortho"), torch.fft.rfft2(w, s=grid).conj()
    )
    compressed = st.CompressedSpectrum(out.values, out.mask, out.offsets, 2, 4, grid)
    kept = (y.abs() - 1.0).abs() > 1e-4  # away from the threshold, float32 round-off cannot flip it
    assert torch.equal(compressed.to_dense().ne(0)[kept], (y.abs() > 1.0)[kept])
    torch.testing.assert_close(compressed.to_dense()[kept], torch.where(y.abs() > 1.0, y, 0)[kept])


def test_dense_block_lines_up_its_sources():
    """Linear layers (beta 0, no activation): away from the circular border, a dense
    block equals DenseNet's spatial concatenation of convolutions."""
    block = st.SpectralDenseBlock(3, 4, layers=2, activation=None)
    x = torch.randn(2, 3, 16, 16)
    y = block(x)
    assert y.shape == (2, 3 + 2 * 4, 16, 16)
    features = [x]
    for layer in block.layers:
        features.append(F.conv2d(torch.cat(features, 1), layer.weight, layer.bias, padding=1))
    expected = torch.cat(features, 1)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    torch.testing.assert_close(y[inner], expected[inner], atol=1e-5, rtol=1e-5)
    # The first layer alone is exact everywhere: its input is zero-padded, not circular.
    torch.testing.assert_close(y[:, 3:7], expected[:, 3:7], atol=1e-5, rtol=1e-5)


def test_dense_block_trains_a_step_in_specnet_mode():
    block = st.SpectralDenseBlock(4, 8, layers=3, beta=0.3)
    x = torch.randn(2, 4, 16, 16)
    block(x).square().mean().backward()
    assert all(layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0 for layer in block.layers)
