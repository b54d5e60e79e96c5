"""Convolution layer forward + backward: SpectralConv2d against its peers on identical shapes
(SpecVGG's 3x3 stages at batch 64: C64/H32, C128/H16, C256/H8).

Peers: ``nn.Conv2d`` (cuDNN on GPU, oneDNN on CPU), ``fft-conv-pytorch``'s FFT
convolution, and the same spectral maths with dense spectra and plain autograd (an FFT
convolution without compression). Saved bytes come from the saved-tensor hooks.
"""

from __future__ import annotations

import statistics
import time

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


def _depthwise_providers(channels: int) -> dict[str, nn.Module]:
    """A depthwise 3x3 layer, spectral and spatial, and the dense spectral layer of its width."""
    return {
        "spectral_depthwise": st.SpectralConv2d(channels, channels, 3, padding=1, groups=channels),
        "spectral_dense": st.SpectralConv2d(channels, channels, 3, padding=1),
        "nn.Conv2d_depthwise": nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
    }


DEPTHWISE = (32, 144, 16)  # batch, channels, map size: MobileNetV2's 144-channel stage


@pytest.mark.parametrize("provider", list(_depthwise_providers(1)))
def test_depthwise_forward_backward(benchmark, quick, provider):
    """A depthwise layer is a per-channel product per frequency (spectriton.grouped): its
    step against the dense spectral layer of the same width and nn.Conv2d's depthwise one."""
    batch, channels, size = (8, 16, 8) if quick else DEPTHWISE
    torch.manual_seed(0)
    module = _depthwise_providers(channels)[provider].to(DEVICE)
    x = torch.randn(batch, channels, size, size, device=DEVICE, requires_grad=True)

    def step():
        module(x).square().mean().backward()

    run(benchmark, step, rounds=3 if quick else 7)
    record(benchmark, provider=provider, shape=f"B{batch}-C{channels}-H{size}-k3")


def depthwise_medians(rounds: int = 15) -> dict[str, tuple[float, float]]:
    """Median wall and CPU seconds of each depthwise provider's step on CPU, one thread, the
    providers interleaved round by round (so that a change of load reaches all of them)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    batch, channels, size = DEPTHWISE
    modules = _depthwise_providers(channels)
    x = torch.randn(batch, channels, size, size, requires_grad=True)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in modules}
    for round_ in range(rounds + 1):  # the first round warms up
        for name, module in modules.items():
            wall, cpu = time.perf_counter(), time.process_time()
            module(x).square().mean().backward()
            if round_:
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {name: tuple(statistics.median(t[i] for t in ts) for i in (0, 1)) for name, ts in times.items()}


if __name__ == "__main__":  # OMP_NUM_THREADS=1 python bench/test_layers_bench.py
    from conftest import device_name

    medians = depthwise_medians()
    dense = medians["spectral_dense"]
    print(f"B{DEPTHWISE[0]}-C{DEPTHWISE[1]}-H{DEPTHWISE[2]}-k3 fwd+bwd, {device_name()}, torch threads 1")
    for name, (wall, cpu) in medians.items():
        ratios = f"({wall / dense[0]:.2f} of dense)  cpu {cpu * 1e3:6.1f} ms ({cpu / dense[1]:.2f})"
        print(f"{name:22s} wall {wall * 1e3:6.1f} ms {ratios}")
