"""Grouped and depthwise products on the Triton backend: the torch maths of
:mod:`spectriton.grouped` (batched GEMMs over groups, elementwise for a depthwise layer) on
operands unpacked by this backend's kernel, results packed by it. A layer with one group
runs the tensor-core product of :mod:`spectriton.kernels.spectral_product`."""

import torch
from spectriton.kernels.packing import pack, unpack
from spectriton.kernels.spectral_product import product, product_input_grad, product_weight_grad

from spectriton import grouped
from spectriton.compressed import CompressedSpectrum


def _dense(spectrum: CompressedSpectrum | torch.Tensor) -> torch.Tensor:
    return unpack(spectrum) if isinstance(spectrum, CompressedSpectrum) else spectrum


def grouped_product(inputs, kernel: torch.Tensor, bias_dc: torch.Tensor | None, groups: int) -> torch.Tensor:
    """Triton-backend twin of :func:`spectriton.reference.grouped_product`."""
    if groups == 1:
        return product(inputs, kernel, bias_dc)
    y = grouped.product(_dense(inputs), kernel, groups)
    if bias_dc is not None:
        y[0] += bias_dc.to(y.real.dtype)
    return y


def grouped_product_input_grad(
    grad, kernel_h: torch.Tensor, like: CompressedSpectrum | None, groups: int
) -> torch.Tensor:
    """Triton-backend twin of :func:`spectriton.reference.grouped_product_input_grad`."""
    if groups == 1:
        return product_input_grad(grad, kernel_h, like)
    gx = grouped.input_grad(_dense(grad), kernel_h, groups)
    return gx if like is None else pack(gx, like.mask, like.nnz)


def grouped_product_weight_grad(inputs, grad, groups: int) -> torch.Tensor:
    """Triton-backend twin of :func:`spectriton.reference.grouped_product_weight_grad`."""
    if groups == 1:
        return product_weight_grad(inputs, grad)
    return grouped.weight_grad(_dense(inputs), _dense(grad), groups)
