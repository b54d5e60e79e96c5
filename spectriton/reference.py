"""Pure-torch twin of every kernel in ``spectriton.kernels``: the reference backend.

Each function here has a Triton launcher of the same name and signature; the tests compare
the two, forward and backward. Dense spectra are complex ``(N, C, P0, P1 // 2 + 1)``
tensors; compressed ones are :class:`~spectriton.compressed.CompressedSpectrum`.
"""

from __future__ import annotations

import math

import torch

from spectriton.compressed import CompressedSpectrum, as_pairs, offsets_from_counts, pack_bits, unpack_bits


def scaled_threshold(beta: float) -> tuple[float, float]:
    """``(scale, beta2)``: an entry is kept iff ``(scale re)^2 + (scale im)^2 > beta2``.

    ``scale`` is the power of two that brings ``beta`` into [0.5, 1), so a square overflows
    (or underflows) only where the entry is far above (or below) the threshold. Elsewhere
    the decision is exactly that of ``re^2 + im^2 > beta^2``: scaling by a power of two does
    not change rounding.
    """
    if beta == 0:
        return 1.0, 0.0
    scale = 2.0 ** min(max(-math.frexp(beta)[1], -126), 126)
    return scale, (beta * scale) ** 2


def keep_mask(spectrum: torch.Tensor, beta: float) -> torch.Tensor:
    """Entries whose magnitude is above ``beta`` (strict); NaN and Inf are always kept."""
    scale, beta2 = scaled_threshold(beta)
    re, im = spectrum.real, spectrum.imag
    if scale != 1:
        re, im = re * scale, im * scale
    return ~(re.square() + im.square() <= beta2)


def split_tanh(spectrum: torch.Tensor) -> torch.Tensor:
    """``tanh(re) + i tanh(im)``: odd in both parts, so conjugate symmetry survives."""
    return torch.complex(torch.tanh(spectrum.real), torch.tanh(spectrum.imag))


def threshold_compact(
    spectrum: torch.Tensor,
    beta: float,
    activation: bool,
    value_dtype: torch.dtype | None,
    grid: tuple[int, int],
) -> CompressedSpectrum:
    """Threshold a dense product spectrum, apply split tanh if asked, compress the result."""
    keep = keep_mask(spectrum, beta)
    batch, channels = spectrum.shape[:2]
    flat = spectrum.reshape(batch * channels, spectrum.shape[2] * spectrum.shape[3])
    keep = keep.reshape(flat.shape)
    kept = flat[keep]
    values = as_pairs(split_tanh(kept) if activation else kept)
    if value_dtype is not None:
        values = values.to(value_dtype)
    offsets = offsets_from_counts(keep.sum(-1))
    return CompressedSpectrum._trusted(values, pack_bits(keep), offsets, batch, channels, grid)


def activation_backward(values: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Paper eq. 10 on packed entries: ``(1 - Zr^2) gZr + i (1 - Zi^2) gZi``.

    ``values`` are the activated outputs Z, ``grad`` the packed gradient w.r.t. Z; the
    result is in ``grad``'s precision (at least float32).
    """
    dtype = torch.float64 if grad.dtype == torch.float64 else torch.float32
    z = values.to(dtype)
    return (1 - z * z) * grad.to(dtype)


def unpack(spectrum: CompressedSpectrum) -> torch.Tensor:
    """Compressed -> dense complex half spectrum."""
    return spectrum.to_dense()


def pack(dense: torch.Tensor, mask: torch.Tensor, offsets: torch.Tensor, nnz: int) -> torch.Tensor:
    """The ``nnz`` entries of a dense half spectrum that ``mask`` keeps, as packed pairs."""
    flat = dense.reshape(mask.shape[0], dense.shape[-2] * dense.shape[-1])
    return as_pairs(flat[unpack_bits(mask, flat.shape[1])])


def _dense(spectrum: CompressedSpectrum | torch.Tensor) -> torch.Tensor:
    if isinstance(spectrum, CompressedSpectrum):
        return unpack(spectrum)
    return spectrum


def product(
    inputs: CompressedSpectrum | torch.Tensor,
    kernel: torch.Tensor,
    bias_dc: torch.Tensor | None,
) -> torch.Tensor:
    """``Y[n, o] = sum_c X[n, c] * conj(W[o, c])``, plus ``bias_dc[o]`` on the DC bin."""
    x = _dense(inputs)
    y = torch.einsum("ncij,ocij->noij", x, kernel.conj())
    if bias_dc is not None:
        y[:, :, 0, 0] += bias_dc.to(y.real.dtype)
    return y


def product_input_grad(
    grad: CompressedSpectrum,
    kernel: torch.Tensor,
    like: CompressedSpectrum | None,
) -> torch.Tensor:
    """``gX[n, c] = sum_o gY[n, o] * W[o, c]``: dense, or packed like ``like`` when given."""
    gx = torch.einsum("noij,ocij->ncij", unpack(grad), kernel)
    return gx if like is None else pack(gx, like.mask, like.offsets, like.nnz)


def product_weight_grad(inputs: CompressedSpectrum | torch.Tensor, grad: CompressedSpectrum) -> torch.Tensor:
    """``gW[o, c] = sum_n X[n, c] * conj(gY[n, o])``, dense ``(O, C, P0, P1 // 2 + 1)``."""
    return torch.einsum("ncij,noij->ocij", _dense(inputs), unpack(grad).conj())


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
    for weight, bias, beta, activation in zip(weights, biases, betas, activations):
        bias_dc = None if bias is None else bias * transforms.bias_scale(geom.grid)
        spectrum = product(spectrum, transforms.kernel_spectrum(weight, geom.grid), bias_dc)
        spectrum = torch.where(keep_mask(spectrum.detach(), beta), spectrum, 0)
        if activation == "split_tanh":
            spectrum = split_tanh(spectrum)
    return transforms.to_space(spectrum, geom)
