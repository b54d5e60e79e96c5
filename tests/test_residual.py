"""Residual connections added in the spectral domain (``residual=``)."""

import pytest
import torch
import torch.nn.functional as F

import spectriton as st
from spectriton import transforms
from spectriton.blocks import run_layers
from spectriton.geometry import BlockGeometry


@pytest.mark.parametrize("offset", [(0, 0), (2, 1), (5, 3)], ids=str)
def test_a_placed_residual_adds_to_the_cropped_output(offset):
    torch.manual_seed(0)
    geom = BlockGeometry(size=(6, 5), grid=(8, 7), offset=offset, full=(6, 5), stride=(1, 1))
    y = torch.randn(geom.bins, 2, 3, dtype=torch.complex64)
    r = torch.randn(2, 3, 6, 5)
    torch.testing.assert_close(
        transforms.to_space(y + transforms.place_spectrum(r, geom), geom),
        transforms.to_space(y, geom) + r,
        atol=1e-5,
        rtol=1e-5,
    )


def test_linear_block_with_a_residual_is_the_convolutions_plus_the_residual():
    torch.manual_seed(0)
    a = st.SpectralConv2d(3, 4, 3, padding=1)
    b = st.SpectralConv2d(4, 4, 3, padding=1)
    x, r = torch.randn(2, 3, 7, 7), torch.randn(2, 4, 7, 7)
    expected = b(a(x)) + r  # two blocks of one layer: no circular wrap between them
    single = run_layers([b], a(x), residual=r)
    torch.testing.assert_close(single, expected, atol=1e-4, rtol=1e-4)
    conv = F.conv2d(F.conv2d(x, a.weight, a.bias, padding=1), b.weight, b.bias, padding=1) + r
    torch.testing.assert_close(single, conv, atol=1e-4, rtol=1e-4)


def test_the_activation_acts_on_the_sum():
    """Split tanh after the add: with beta 0 and exact values, tanh of the sum's spectrum."""
    torch.manual_seed(0)
    layer = st.SpectralConv2d(3, 4, 1, activation="split_tanh", value_dtype=torch.complex64)
    x, r = torch.randn(2, 3, 6, 6), torch.randn(2, 4, 6, 6)
    spectrum = transforms.map_spectrum(F.conv2d(x, layer.weight, layer.bias) + r, (6, 6))
    activated = torch.complex(spectrum.real.tanh(), spectrum.imag.tanh())
    geom = BlockGeometry((6, 6), (6, 6), (0, 0), (6, 6), (1, 1))
    torch.testing.assert_close(layer(x, r), transforms.to_space(activated, geom), atol=1e-5, rtol=1e-5)


def test_a_residual_of_the_wrong_shape_is_refused():
    layer = st.SpectralConv2d(3, 4, 3, padding=1)
    with pytest.raises(ValueError, match="residual must be shaped as the block's output"):
        layer(torch.randn(2, 3, 6, 6), torch.randn(2, 4, 5, 5))
    strided = st.SpectralConv2d(3, 4, 3, padding=1, stride=2)
    with pytest.raises(ValueError, match=r"output \(2, 4, 3, 3\)"):
        strided(torch.randn(2, 3, 6, 6), torch.randn(2, 4, 6, 6))


def test_a_strided_linear_layer_adds_its_residual_to_its_output():
    torch.manual_seed(0)
    layer = st.SpectralConv2d(3, 4, 3, padding=1, stride=2)
    x, r = torch.randn(2, 3, 7, 7), torch.randn(2, 4, 4, 4)
    expected = F.conv2d(x, layer.weight, layer.bias, stride=2, padding=1) + r
    torch.testing.assert_close(layer(x, r), expected, atol=1e-4, rtol=1e-4)
