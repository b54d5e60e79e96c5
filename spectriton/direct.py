"""A small spatial map's product spectrum by its direct convolution (CPU).

A layer whose source is a spatial map ``x`` (``N x C x h x w``, written at the grid's
corner) multiplies its spectrum by the kernel spectrum: ``Y[f] = X[f] K[f]`` is the DFT on
the grid ``P`` of the circular cross-correlation of ``x`` with the kernel (DESIGN.md
section 2). Its full linear cross-correlation ``F.conv2d(x, w, padding=k - 1)`` has
``(h + k - 1) x (w + k - 1)`` outputs; output ``i`` lies at grid position
``(i - (k - 1) - shift) mod P`` (outputs that land on one position add: the circular
wrap), so :func:`spectriton.dft.analysis` at those positions gives ``Y``, and the adjoint
is :func:`spectriton.dft.synthesis` at the same positions followed by the convolution's
input and weight gradients. Same numbers as the spectral product, to rounding.

For maps of a few pixels that is the cheaper way: no kernel spectrum (``bins x C x O``
complex values, built in forward, replay and backward, a 512 -> 512 layer's 1.5 M entries
on a 1 x 1 map) and no complex products, but oneDNN's convolution on a map a handful of
pixels wide. :func:`applies` weighs the two (module constants below, measured: README,
"Small maps by direct convolution").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from spectriton import dft, transforms
from spectriton.backend import cpu_forms
from spectriton.numerics import runs, spectrum_bins

DIRECT_COST = 2  # multiply-adds of a direct convolution that cost one complex product's
KERNEL_ENTRY = 64  # one kernel-spectrum entry's building, in complex multiply-adds
BATCH = 32  # the batch the rule weighs at, whatever a call's batch (see applies)
RUN_BYTES = 2 << 20  # the most weight bytes of one convolution: a kernel tile's (ops.tiles)
BATCHED_PIXELS = 4  # maps up to this many pixels take the weight's gradient by a batched GEMM


def applies(
    x: Tensor, kernel: Sequence[int], grid: tuple[int, int], groups: int, shift: tuple[int, int] = (0, 0)
) -> bool:
    """Whether a layer's products with spatial source ``x`` (its kernel ``kh x kw``, dilated,
    on ``grid``, rolled by ``shift``) run direct: on CPU, one group, a grid the DFTs take as
    GEMMs (the layers compute in float32 or float64, which they take), a kernel with a
    spectrum to build (not an unshifted 1 x 1 one, whose spectral products are single
    GEMMs already), and the direct convolution's ``B h w kh kw`` multiply-adds (per input
    and output channel) at most ``DIRECT_COST`` times the spectral form's
    ``bins (B + KERNEL_ENTRY)`` at the batch ``B = BATCH``: a fixed batch, not ``x``'s, so
    that a sample takes the same path, and gives the same outputs, in every batch."""
    if groups != 1 or x.dim() != 4 or not cpu_forms(x.device) or max(grid) > dft.GEMM_GRID:
        return False
    if transforms.is_pointwise(kernel, shift):
        return False
    (height, width), taps = x.shape[-2:], kernel[0] * kernel[1]
    return BATCH * height * width * taps <= DIRECT_COST * spectrum_bins(grid) * (BATCH + KERNEL_ENTRY)


def is_spatial(operand) -> bool:
    """Whether a layer's operand is a spatial map (its products run direct) rather than a
    spectrum."""
    return isinstance(operand, Tensor) and not operand.is_complex() and operand.dim() == 4


def product(x: Tensor, weight: Tensor, grid: tuple[int, int], shift: tuple[int, int]) -> Tensor:
    """The product spectrum ``(bins, N, O)`` of ``x (N, C, h, w)`` with ``weight (O, C, kh,
    kw)`` on ``grid``, the kernel rolled by ``shift`` (as
    :func:`~spectriton.transforms.kernel_spectrum`)."""
    kernel = weight.shape[-2:]
    padding = (kernel[0] - 1, kernel[1] - 1)
    full = torch.cat([F.conv2d(x, weight[run], padding=padding) for run in _weight_runs(weight)], dim=1)
    return dft.analysis(full, grid, *_positions(x, kernel, grid, shift))


def gradients(
    x: Tensor,
    weight: Tensor,
    grad: Tensor,
    grid: tuple[int, int],
    shift: tuple[int, int],
    wants_input: bool,
    wants_weight: bool,
    scale: Tensor | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """The gradients of :func:`product` from its dense gradient ``grad (bins, N, O)``: the
    source's, spatial ``(N, C, h, w)``, with ``grad`` scaled per output channel by
    ``scale`` where given, and the weight's, unscaled; each where wanted (else None)."""
    grad_x = grad_w = None
    if not (wants_input or wants_weight):
        return grad_x, grad_w
    kernel = weight.shape[-2:]
    full = dft.synthesis(grad, grid, *_positions(x, kernel, grid, shift))  # the adjoint of analysis
    if wants_weight:
        grad_w = _weight_grad(x, full, weight)
    if wants_input:
        scaled = full if scale is None else full * scale.view(1, -1, 1, 1)
        padding = (kernel[0] - 1, kernel[1] - 1)
        for run in _weight_runs(weight):
            part = torch.nn.grad.conv2d_input(x.shape, weight[run], scaled[:, run], padding=padding)
            grad_x = part if grad_x is None else grad_x.add_(part)
    return grad_x, grad_w


def _weight_runs(weight: Tensor) -> list[slice]:
    """Runs of output channels whose weights hold at most ``RUN_BYTES``, one channel at
    least: oneDNN copies a convolution's weight into its own layout, so a layer's
    convolutions go a run at a time, as its kernel spectrum goes a tile at a time
    (:mod:`spectriton.ops.tiles`)."""
    return runs(weight.shape[0], max(1, RUN_BYTES // (weight[0].numel() * weight.element_size())))


def _weight_grad(x: Tensor, full: Tensor, weight: Tensor) -> Tensor:
    """The gradient of ``weight`` in ``F.conv2d(x, weight, padding=k - 1)`` from the full
    output's ``full``. On maps of up to ``BATCHED_PIXELS`` pixels, ``gw[o] (C, kh kw)`` is
    the map ``(N h w, C)`` transposed by each output channel's ``h x w`` windows of ``full``
    (``F.unfold``, taps reversed): one batched GEMM over output channels, laid out as the
    weight, where oneDNN's weight gradient is 3-10x slower; on larger maps, oneDNN's, a
    run of output channels at a time."""
    batch, channels, height, width = x.shape
    kernel = weight.shape[-2:]
    if height * width > BATCHED_PIXELS:
        padding = (kernel[0] - 1, kernel[1] - 1)
        parts = [
            torch.nn.grad.conv2d_weight(x, weight[run].shape, full[:, run], padding=padding)
            for run in _weight_runs(weight)
        ]
        return torch.cat(parts)
    out_channels, taps = full.shape[1], kernel[0] * kernel[1]
    windows = F.unfold(full, (height, width)).view(batch, out_channels, height * width, taps).flip(-1)
    rows = windows.permute(1, 0, 2, 3).reshape(out_channels, batch * height * width, taps)
    pixels = x.permute(0, 2, 3, 1).reshape(-1, channels)  # (N h w, C)
    return torch.bmm(pixels.T.expand(out_channels, -1, -1), rows).view(out_channels, channels, *kernel)


def _positions(x: Tensor, kernel, grid, shift) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The grid rows and columns of the full cross-correlation's outputs (module docstring)."""
    return tuple(
        tuple((i - (k - 1) - s) % period for i in range(size + k - 1))
        for size, k, s, period in zip(x.shape[-2:], kernel, shift, grid)
    )  # type: ignore[return-value]
