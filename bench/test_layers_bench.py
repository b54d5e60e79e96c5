"""Convolution layer forward + backward: SpectralConv2d against its peers on identical shapes
(SpecVGG's 3x3 stages at batch 64: C64/H32, C128/H16, C256/H8).

Peers: ``nn.Conv2d`` (cuDNN on GPU, oneDNN on CPU), ``fft-conv-pytorch``'s FFT
convolution, and the same spectral maths with dense spectra and plain autograd (an FFT
convolution without compression). Saved bytes come from the saved-tensor hooks.
"""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, record, run
from torch import nn

import spectriton as st
from spectriton.memory import saved_bytes
from spectriton.reference import dense_block

try:
    from fft_conv_pytorch import fft_conv
except ImportError:  # in the test extra; the other providers run without it
    fft_conv = None


class _FFTConv(nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return fft_conv(x, self.conv.weight, self.conv.bias, padding=self.conv.padding)


class _DenseSpectral(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        m = self.layer
        return dense_block(x, [m.weight], [m.bias], [m.shape], [m.beta], [m.activation])


def _providers(conv: nn.Conv2d) -> dict[str, nn.Module]:
    return {
        "nn.Conv2d": conv,
        "fft_conv_pytorch": _FFTConv(conv),
        "spectral_linear": st.SpectralConv2d.from_conv(conv),
        "spectral_specnet": st.SpectralConv2d.from_conv(conv, beta=0.7, activation="split_tanh"),
        "spectral_specnet_density0.1": st.SpectralConv2d.from_conv(
            conv, density=0.1, activation="split_tanh"
        ),
        "dense_spectral_specnet": _DenseSpectral(
            st.SpectralConv2d.from_conv(conv, beta=0.7, activation="split_tanh")
        ),
    }


@pytest.mark.parametrize(
    "provider",
    [
        "nn.Conv2d",
        "fft_conv_pytorch",
        "spectral_linear",
        "spectral_specnet",
        "spectral_specnet_density0.1",
        "dense_spectral_specnet",
    ],
)
@pytest.mark.parametrize("shape", ["C64-H32", "C128-H16", "C256-H8"])
def test_conv_forward_backward(benchmark, quick, provider, shape):
    if provider == "fft_conv_pytorch" and fft_conv is None:
        pytest.skip("fft-conv-pytorch is not installed (pip install -e '.[test]')")
    if quick and shape != "C64-H32":
        pytest.skip("--quick runs one shape")
    if provider in ("fft_conv_pytorch", "dense_spectral_specnet") and shape != "C64-H32":
        pytest.skip("the slow peers run at C64/H32 only")
    channels, size = (int(part[1:]) for part in shape.split("-"))
    batch = 64
    if quick:
        batch, channels, size = 16, 16, 16
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, channels, 3, padding=1).to(DEVICE)
    module = _providers(conv)[provider]
    x = torch.randn(batch, channels, size, size, device=DEVICE, requires_grad=True)

    def step():
        module(x).square().mean().backward()

    run(benchmark, step, rounds=3 if quick else 5)
    report = saved_bytes(module, x)
    record(benchmark, provider=provider, shape=f"B{batch}-C{channels}-H{size}-k3", saved_bytes=report.total)
