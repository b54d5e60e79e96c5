"""Pure-torch twin of every kernel in ``spectriton.kernels``: the reference backend.

Each op here has a Triton launcher of the same name and signature; the tests compare the
two, forward and backward. Spectra are frequency-major (:mod:`spectriton.compressed`):
dense ones are complex ``(bins, batch, channels)`` tensors, compressed ones
:class:`~spectriton.compressed.CompressedSpectrum`. Kernels come as the per-frequency
product matrices ``K (bins, C, O)`` of :func:`spectriton.transforms.kernel_spectrum`, so
the product and both its gradients are batched complex GEMMs over frequency
(``torch.matmul``: MKL on CPU, cuBLAS on GPU), whose conjugate transposes BLAS applies
as it reads (no copies).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from spectriton import grouped
from spectriton.compressed import CompressedSpectrum, as_pairs, compact, compact_whole, unpack_bits
from spectriton.numerics import runs, scaled_threshold

KEEP_ENTRIES = 1 << 20  # entries thresholded at a time: the float temporaries stay a few MiB


def keep_mask(spectrum: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """Entries whose magnitude is above ``beta`` (strict), by the rule of
    :mod:`spectriton.numerics`: at ``beta`` 0 every entry; NaN and Inf are always kept.
    Decided a run of rows (frequencies) at a time, into one bool tensor, so that no float
    temporary the spectrum's size is made."""
    scale, beta2 = scaled_threshold(beta)
    if not isinstance(beta2, torch.Tensor) and beta2 == 0:
        return torch.ones(spectrum.shape, dtype=torch.bool, device=spectrum.device)
    if isinstance(scale, torch.Tensor):  # rounded as a Python float would be: to the entries' dtype
        scale, beta2 = scale.to(spectrum.real.dtype), beta2.to(spectrum.real.dtype)
    keep = torch.empty(spectrum.shape, dtype=torch.bool, device=spectrum.device)
    for rows in runs(spectrum.shape[0], max(1, KEEP_ENTRIES // max(math.prod(spectrum.shape[1:]), 1))):
        part = spectrum[rows]
        re, im = part.real, part.imag
        if isinstance(scale, torch.Tensor) or scale != 1:
            re, im = re * scale, im * scale
        torch.le(re.square().add_(im.square()), beta2, out=keep[rows]).logical_not_()
    if isinstance(beta2, torch.Tensor):  # a threshold computed on the device may be 0 too
        keep |= beta2 == 0
    return keep


def split_tanh(spectrum: torch.Tensor) -> torch.Tensor:
    """``tanh(re) + i tanh(im)``: odd in both parts, so conjugate symmetry survives."""
    return torch.complex(torch.tanh(spectrum.real), torch.tanh(spectrum.imag))


def threshold_compact(
    spectrum: torch.Tensor,
    beta: float | torch.Tensor,
    activation: bool,
    value_dtype: torch.dtype | None,
    grid: tuple[int, int],
) -> CompressedSpectrum:
    """Threshold a dense frequency-major product spectrum ``(bins, N, O)``, apply split tanh
    to the kept entries if asked, compress the result."""
    activate = torch.tanh if activation else (lambda kept: kept)
    if not isinstance(beta, torch.Tensor) and beta == 0:  # everything kept: nothing to select
        return compact_whole(spectrum, grid, activate, value_dtype)
    return compact(spectrum, keep_mask(spectrum, beta), grid, activate, value_dtype)


def product_threshold(
    inputs: CompressedSpectrum | torch.Tensor,
    kernel: torch.Tensor,
    bias_dc: torch.Tensor | None,
    beta: float,
    activation: bool,
    value_dtype: torch.dtype | None,
    grid: tuple[int, int],
) -> CompressedSpectrum:
    """A whole layer's forward: :func:`product`, then :func:`threshold_compact` (the Triton
    twin fuses the two)."""
    return threshold_compact(product(inputs, kernel, bias_dc), beta, activation, value_dtype, grid)


def activation_backward(values: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Paper eq. 10 on packed entries: ``(1 - Zr^2) gZr + i (1 - Zi^2) gZi``.

    ``values`` are the activated outputs Z, ``grad`` the packed gradient w.r.t. Z; the
    result is in ``grad``'s precision (at least float32).
    """
    dtype = torch.float64 if grad.dtype == torch.float64 else torch.float32
    out = values.to(dtype, copy=True)  # one buffer the size of the values, worked in place
    return out.square_().neg_().add_(1).mul_(grad)


def unpack(spectrum: CompressedSpectrum) -> torch.Tensor:
    """Compressed -> dense complex ``(bins, N, C)``."""
    return spectrum.to_frequency_major()


def unpack_tiles(spectrum: CompressedSpectrum, tiles: list[slice]) -> Iterator[torch.Tensor]:
    """:func:`unpack` of each run of frequencies in ``tiles``, one at a time: only a tile
    is ever dense."""
    for tile in tiles:
        yield spectrum.frequencies(tile)


def pack(dense: torch.Tensor, mask: torch.Tensor, nnz: int) -> torch.Tensor:
    """The ``nnz`` entries of a dense frequency-major spectrum that ``mask`` keeps, as
    packed pairs in stream order."""
    if nnz == dense.numel():  # every entry kept
        return as_pairs(dense.reshape(-1))
    return as_pairs(dense.resolve_conj().reshape(-1).masked_select(unpack_bits(mask, dense.numel())))


def operand(spectrum: CompressedSpectrum | torch.Tensor) -> torch.Tensor:
    """What this backend's products read best: a dense frequency-major spectrum. A layer's
    backward converts each spectrum once and hands it to every op that reads it."""
    return unpack(spectrum) if isinstance(spectrum, CompressedSpectrum) else spectrum


def product(
    inputs: CompressedSpectrum | torch.Tensor,
    kernel: torch.Tensor,
    bias_dc: torch.Tensor | None,
) -> torch.Tensor:
    """``Y[f] = X[f] K[f]``: ``Y[n, o] = sum_c X[n, c] conj(W[o, c])``, plus ``bias_dc[o]``
    on the DC bin. Dense complex ``(bins, N, O)``."""
    return _plus_bias(torch.matmul(operand(inputs), kernel), bias_dc)


def _plus_bias(y: torch.Tensor, bias_dc: torch.Tensor | None) -> torch.Tensor:
    """``y`` with ``bias_dc[o]`` added to its DC bin, in place."""
    if bias_dc is not None:
        y[0] += bias_dc.to(y.real.dtype)
    return y


def product_input_grad(
    grad: CompressedSpectrum | torch.Tensor,
    kernel_h: torch.Tensor,
    like: CompressedSpectrum | None,
) -> torch.Tensor:
    """``gX[f] = gY[f] K[f]^H`` (``kernel_h`` is ``K^H (bins, O, C)``): dense
    ``(bins, N, C)``, or packed at ``like``'s mask."""
    gx = torch.matmul(operand(grad), kernel_h)
    return gx if like is None else pack(gx, like.mask, like.nnz)


def product_weight_grad(
    inputs: CompressedSpectrum | torch.Tensor, grad: CompressedSpectrum | torch.Tensor
) -> torch.Tensor:
    """``gK[f] = X[f]^H gY[f]``, the gradient of the product matrices ``(bins, C, O)``, laid
    out as the weight is (:func:`spectriton.transforms.kernel_taps` reads it so)."""
    return torch.matmul(operand(grad).mT, operand(inputs).conj()).mT


def pointwise_weight_grad(
    inputs: CompressedSpectrum | torch.Tensor, grad: CompressedSpectrum | torch.Tensor
) -> torch.Tensor:
    """``sum_f X[f]^H gY[f]``: the gradient of a 1 x 1 kernel's one product matrix ``(C, O)``
    (:func:`spectriton.transforms.pointwise_kernel`), laid out as the weight is; one GEMM
    over frequencies and batch together."""
    x, g = operand(inputs), operand(grad)
    return (g.reshape(-1, g.shape[-1]).mT @ x.reshape(-1, x.shape[-1]).conj()).mT


def grouped_product(
    inputs: CompressedSpectrum | torch.Tensor, kernel: torch.Tensor, bias_dc: torch.Tensor | None, groups: int
) -> torch.Tensor:
    """:func:`product` of a grouped layer: ``kernel`` is ``K (bins, C / groups, O)``, each
    group's channels multiply only its own (:mod:`spectriton.grouped`)."""
    if groups == 1:
        return product(inputs, kernel, bias_dc)
    return _plus_bias(grouped.product(operand(inputs), kernel, groups), bias_dc)


def grouped_product_input_grad(
    grad: CompressedSpectrum | torch.Tensor,
    kernel_h: torch.Tensor,
    like: CompressedSpectrum | None,
    groups: int,
) -> torch.Tensor:
    """:func:`product_input_grad` of a grouped layer (``kernel_h`` is ``K^H (bins, O, C / groups)``)."""
    if groups == 1:
        return product_input_grad(grad, kernel_h, like)
    gx = grouped.input_grad(operand(grad), kernel_h, groups)
    return gx if like is None else pack(gx, like.mask, like.nnz)


def grouped_product_weight_grad(
    inputs: CompressedSpectrum | torch.Tensor, grad: CompressedSpectrum | torch.Tensor, groups: int
) -> torch.Tensor:
    """:func:`product_weight_grad` of a grouped layer: ``gK (bins, C / groups, O)``."""
    if groups == 1:
        return product_weight_grad(inputs, grad)
    return grouped.weight_grad(operand(inputs), operand(grad), groups)


def dense_block(
    x: torch.Tensor,
    weights: list[torch.Tensor],
    biases: list[torch.Tensor | None],
    shapes: list,
    betas: list[float],
    activations: list[str | None],
) -> torch.Tensor:
    """The block's maths with dense spectra and plain autograd (nothing compressed).

    The oracle the autograd functions are tested against, and the "FFT convolution without
    compression" that the memory benchmarks compare with.
    """
    from spectriton import transforms
    from spectriton.geometry import block_geometry

    geom = block_geometry(shapes, (x.shape[-2], x.shape[-1]))
    spectrum = transforms.map_spectrum(x, geom.grid)
    for index, (weight, bias, beta, activation) in enumerate(zip(weights, biases, betas, activations)):
        bias_dc = None if bias is None else bias * transforms.bias_scale(geom.grid)
        spectrum = product(spectrum, transforms.kernel_spectrum(weight, geom.grid), bias_dc)
        if index == len(weights) - 1 and geom.strided:  # a strided layer: its output's spectrum
            spectrum, geom = transforms.crop_spectrum(spectrum, geom), geom.of_output()
        spectrum = torch.where(keep_mask(spectrum.detach(), beta), spectrum, 0)
        if activation == "split_tanh":
            spectrum = split_tanh(spectrum)
    return transforms.to_space(spectrum, geom)
