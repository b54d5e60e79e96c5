"""Spectral ops at SpecVGG's layer shapes against their peers on the same work.

Providers: ``torch`` (the reference backend: batched GEMMs over frequency), ``triton`` (the
tensor-core kernels, CUDA only), ``einsum`` (the product as one dense complex einsum in
NCHW layout, what the previous format ran) and ``nn.Conv2d`` (the spatial convolution the
layer replaces, cuDNN / oneDNN). Each record carries FLOPs (four real multiply-adds per
complex one), the algorithmic minimum of bytes moved (a compressed spectrum at its size:
values, bitmask and offsets) and the achieved rates; README's roofline table reads these.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DEVICE, needs_triton, record, run

from spectriton import reference, transforms

DENSITY = 0.10
BETA = math.sqrt(math.log(1 / DENSITY))  # |z| > beta for a fraction DENSITY of unit complex normals
# SpecVGG's 3x3 stages (batch, channels, map size): grid = size + 2
SIZES = {"vgg-c64-h32": (64, 64, 32), "vgg-c128-h16": (64, 128, 16), "vgg-c256-h8": (64, 256, 8)}
QUICK = {"small": (8, 16, 8)}


def _sizes(quick: bool) -> dict[str, tuple[int, int, int]]:
    if quick:
        return QUICK
    if DEVICE.type == "cuda":  # the paper's batch on GPU
        return {name: (128, c, h) for name, (_, c, h) in SIZES.items()}
    return SIZES


@pytest.fixture(params=[*SIZES, *QUICK])
def size(request, quick):
    sizes = _sizes(quick)
    if request.param not in sizes:
        pytest.skip(f"size {request.param} not in this run")
    return request.param, sizes[request.param]


def _ops(provider: str):
    needs_triton(provider)
    if provider == "triton":
        from spectriton import kernels

        return kernels
    return reference


def _operands(batch, channels, map_size):
    grid = (map_size + 2, map_size + 2)
    bins = grid[0] * (grid[1] // 2 + 1)
    spectrum = torch.randn(bins, batch, channels, dtype=torch.complex64, device=DEVICE)
    x = reference.threshold_compact(spectrum, BETA, True, None, grid)
    weight = torch.randn(channels, channels, 3, 3, device=DEVICE) / (3 * math.sqrt(channels))
    return grid, x, weight


def _record(benchmark, provider, size, flops, moved, **extra):
    name, (batch, channels, map_size) = size
    record(
        benchmark,
        provider=provider,
        size=name,
        shape=f"B{batch} C{channels} H{map_size} k3",
        flops=flops,
        bytes_moved=moved,
        **extra,
    )


@pytest.mark.parametrize("provider", ["torch", "triton"])
def test_threshold_compact_split_tanh(benchmark, size, provider):
    ops = _ops(provider)
    _, (batch, channels, map_size) = size
    grid, _, _ = _operands(1, 1, map_size)
    bins = grid[0] * (grid[1] // 2 + 1)
    y = torch.randn(bins, batch, channels, dtype=torch.complex64, device=DEVICE)
    out = run(
        benchmark,
        lambda y: ops.threshold_compact(y, BETA, True, None, grid),
        setup=lambda: ((y.clone(),), {}),
    )
    dense = y.numel() * y.element_size()
    _record(benchmark, provider, size, None, dense + out.nbytes, density=out.density)


@pytest.mark.parametrize("provider", ["torch", "triton", "einsum", "nn.Conv2d"])
def test_product_forward(benchmark, size, provider):
    """The layer's forward product: compressed input at density 0.1, dense output (the
    ``triton`` provider also thresholds in its epilogue: ``product_threshold``)."""
    _, (batch, channels, map_size) = size
    grid, x, weight = _operands(batch, channels, map_size)
    kernel = transforms.kernel_spectrum(weight, grid)
    flops = 8 * batch * channels * channels * x.bins
    if provider == "einsum":
        dense = x.to_dense().contiguous()
        spectrum = torch.fft.rfft2(weight, s=grid)
        run(benchmark, lambda: torch.einsum("ncij,ocij->noij", dense, spectrum.conj()))
    elif provider == "nn.Conv2d":
        conv = torch.nn.Conv2d(channels, channels, 3, padding=1, device=DEVICE)
        spatial = torch.randn(batch, channels, map_size, map_size, device=DEVICE)
        with torch.no_grad():
            run(benchmark, lambda: conv(spatial))
        flops = 2 * batch * channels * channels * 9 * map_size * map_size
    elif provider == "triton":
        ops = _ops(provider)
        run(benchmark, lambda: ops.product_threshold(x, kernel, None, BETA, True, None, grid))
    else:
        run(benchmark, lambda: reference.product(x, kernel, None))
    moved = x.nbytes + kernel.numel() * 8 + batch * channels * x.bins * 8  # + the dense output
    _record(benchmark, provider, size, flops, moved, density=x.density)


@pytest.mark.parametrize("provider", ["torch", "triton"])
@pytest.mark.parametrize("gradient", ["input", "weight"])
def test_product_backward(benchmark, size, provider, gradient):
    ops = _ops(provider)
    _, (batch, channels, map_size) = size
    grid, x, weight = _operands(batch, channels, map_size)
    _, grad, _ = _operands(batch, channels, map_size)
    flops = 8 * batch * channels * channels * x.bins
    if gradient == "input":
        kernel_h = transforms.kernel_spectrum(weight, grid, adjoint=True)
        grad_operand = ops.operand(grad)
        run(benchmark, lambda: ops.product_input_grad(grad_operand, kernel_h, x))
        moved = grad.nbytes + kernel_h.numel() * 8 + x.mask.nbytes + 8 * x.nnz  # packed at x's mask
    else:
        x_operand, grad_operand = ops.operand(x), ops.operand(grad)
        run(benchmark, lambda: ops.product_weight_grad(x_operand, grad_operand))
        moved = x.nbytes + grad.nbytes + channels * channels * x.bins * 8  # + the kernel gradient
    _record(benchmark, provider, size, flops, moved, density=x.density)
