"""Kernels against the torch reference of the same op (and the dense einsum for the product).

Bytes moved are the algorithmic minimum: what the op must read and write, a compressed
spectrum counted at its size (values, bitmask and offsets: ``CompressedSpectrum.nbytes``).
The kernels' module docstrings say what the Triton versions actually move.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DEVICE, needs_triton, record, run

from spectriton import reference

# (batch, channels, grid): the paper's VGG first stage, and a large one (> 200 MB dense).
SIZES = {"paper": (64, 64, (34, 34)), "large": (128, 128, (64, 64))}
DENSITY = 0.10
BETA = math.sqrt(math.log(1 / DENSITY))  # |z| > beta for a fraction DENSITY of unit complex normals


def _sizes(quick: bool):
    if quick:
        return {"small": (16, 16, (18, 18))}
    return SIZES if DEVICE.type == "cuda" else {"paper": SIZES["paper"]}


def _ops(provider: str):
    needs_triton(provider)
    if provider == "triton":
        from spectriton import kernels

        return kernels
    return reference


def _record(benchmark, provider, size, moved: int, density: float, **extra) -> None:
    name, (batch, channels, grid) = size
    shape = f"B{batch} C{channels} P{grid[0]}x{grid[1]}"
    record(benchmark, provider=provider, size=name, shape=shape, bytes_moved=moved, density=density, **extra)


def _spectrum(batch, channels, grid):
    return torch.randn(batch, channels, grid[0], grid[1] // 2 + 1, dtype=torch.complex64, device=DEVICE)


def _compressed(batch, channels, grid):
    return reference.threshold_compact(_spectrum(batch, channels, grid), BETA, True, None, grid)


@pytest.fixture(params=["paper", "large", "small"])
def size(request, quick):
    sizes = _sizes(quick)
    if request.param not in sizes:
        pytest.skip(f"size {request.param} not in this run")
    return request.param, sizes[request.param]


@pytest.mark.parametrize("provider", ["torch", "triton"])
def test_threshold_compact_split_tanh(benchmark, size, provider):
    ops = _ops(provider)
    _, (batch, channels, grid) = size
    y = _spectrum(batch, channels, grid)
    out = run(
        benchmark,
        lambda y: ops.threshold_compact(y, BETA, True, None, grid),
        setup=lambda: ((y.clone(),), {}),
    )
    dense = y.numel() * y.element_size()
    # read the dense product, write the compressed output
    _record(benchmark, provider, size, dense + out.nbytes, out.density, dense_bytes=dense)


@pytest.mark.parametrize("provider", ["torch", "triton", "dense_einsum"])
def test_sparse_product_forward(benchmark, size, provider):
    _, (batch, channels, grid) = size
    x = _compressed(batch, channels, grid)
    kernel = _spectrum(channels, channels, grid)
    if provider == "dense_einsum":
        dense = x.to_dense()
        run(benchmark, lambda: torch.einsum("ncij,ocij->noij", dense, kernel.conj()))
    else:
        ops = _ops(provider)
        run(benchmark, lambda: ops.product(x, kernel, None))
    moved = x.nbytes + kernel.nbytes + batch * channels * x.bins * 8  # + the dense output
    _record(benchmark, provider, size, moved, x.density)


@pytest.mark.parametrize("provider", ["torch", "triton"])
@pytest.mark.parametrize("gradient", ["input", "weight"])
def test_sparse_product_backward(benchmark, size, provider, gradient):
    ops = _ops(provider)
    _, (batch, channels, grid) = size
    x, grad = _compressed(batch, channels, grid), _compressed(batch, channels, grid)
    kernel = _spectrum(channels, channels, grid)
    if gradient == "input":
        run(benchmark, lambda: ops.product_input_grad(grad, kernel, x))
        # written packed at the input's mask: that mask and its offsets are read too
        moved = grad.nbytes + kernel.nbytes + x.mask.nbytes + x.offsets.nbytes + 8 * x.nnz
    else:
        run(benchmark, lambda: ops.product_weight_grad(x, grad))
        moved = x.nbytes + grad.nbytes + kernel.nbytes  # + the dense kernel gradient
    _record(benchmark, provider, size, moved, x.density)
