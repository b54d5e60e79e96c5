"""A normalised layer's maths on half spectra ``(bins, N, O)``: each channel's moments, the
normalisation and BatchNorm's affine step, in place, and the affine's gradient.

A channel's mean is its DC bin (times :func:`~spectriton.transforms.bias_scale`), its mean
square the sum of its power by Parseval; normalising centres the DC bin and scales the
whole spectrum by ``rsqrt(variance + eps)``.
"""

import torch
from torch import Tensor

from spectriton import transforms
from spectriton.numerics import half_spectrum

NORM_EPS = 1e-5  # added to a normalised layer's variance, as nn.BatchNorm2d's eps


def channel_moments(product: Tensor, grid: tuple[int, int]) -> Tensor:
    """Mean and mean square of each channel's maps on the grid, from their half spectra
    ``(bins, N, O)``: the mean from the DC bin, the mean square by Parseval (mirrored
    columns count twice). Float32 ``(2, O)``."""
    magnitude = (product.real.square() + product.imag.square()).view(*half_spectrum(grid), *product.shape[1:])
    power = transforms.scale_mirrored_(magnitude, grid, 2.0).sum((0, 1, 2)) / (
        grid[0] * grid[1] * product.shape[1]
    )
    mean = product[0].real.mean(0) / transforms.bias_scale(grid)
    return torch.stack([mean, power]).float()


def moments_used(moments: Tensor, batch_moments: Tensor) -> Tensor:
    """The moments a normalised layer uses: ``moments`` where calibrated, the batch's where NaN."""
    return torch.where(torch.isnan(moments), batch_moments, moments)


def moments_scale(moments: Tensor) -> Tensor:
    """A normalised layer's per-channel factor, ``rsqrt(variance + eps)``, from its moments."""
    mean, power = moments
    return torch.rsqrt((power - mean.square()).clamp(min=0) + NORM_EPS)


def normalise_(product: Tensor, moments: Tensor, grid: tuple[int, int]) -> None:
    """Centre each channel of ``product`` (its DC bin) and divide it by its standard
    deviation, from its ``moments`` (``(2, O)``), in place."""
    product[0] -= (moments[0] * transforms.bias_scale(grid)).to(product.real.dtype)
    product.mul_(moments_scale(moments).to(product.real.dtype))


def scale_shift_(product: Tensor, affine: Tensor, grid: tuple[int, int]) -> None:
    """BatchNorm's affine step on a normalised product, in place: each channel scaled by
    ``affine[0]``, ``affine[1]`` added to every pixel (to the DC bin)."""
    product.mul_(affine[0].to(product.real.dtype))
    product[0] += (affine[1] * transforms.bias_scale(grid)).to(product.real.dtype)


def affine_grad(inner: Tensor, dc: Tensor, moments: Tensor, grid: tuple[int, int]) -> Tensor:
    """Gradient of a normalised layer's ``affine`` ``(2, O)`` (BatchNorm's weight and bias).

    The weight's is the inner product of the gradient at the kept entries, ``G``, with the
    normalised product ``r (Y - mean)``: ``inner`` is ``<G, Y>`` per channel (from the
    kernel gradient and the bias, so ``Y`` is not computed again) and ``dc`` the sum of
    ``G``'s real parts at the DC entries, which the mean and the bias touch.
    """
    r = moments_scale(moments).to(inner.dtype)
    bias_scale = transforms.bias_scale(grid)
    return torch.stack([r * (inner - moments[0].to(inner.dtype) * bias_scale * dc), bias_scale * dc])
