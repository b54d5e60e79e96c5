"""Grouped and depthwise spectral products on dense frequency-major operands.

A grouped convolution's weight ``(O, C / G, kh, kw)`` has the product matrices
``K (bins, Cg, O)`` of :func:`spectriton.transforms.kernel_spectrum`, read as
``(bins, Cg, G, Og)`` (``Cg = C / G`` channels in, ``Og = O / G`` out per group). With the
input ``X (bins, N, C)`` read as ``(bins, N, G, Cg)``, each group is its own product:

- ``Y[f, n, g, o] = sum_c X[f, n, g, c] K[f, c, g, o]``,
- ``gX[f, n, g, c] = sum_o gY[f, n, g, o] conj(K[f, c, g, o])`` (from ``K^H (bins, O, Cg)``),
- ``gK[f, c, g, o] = sum_n conj(X[f, n, g, c]) gY[f, n, g, o]``,

a batched GEMM over frequencies and groups; a depthwise layer (``Cg = 1``) is an
elementwise product per channel and frequency, with no reduction over channels at all.
No block-diagonal ``(O, C, kh, kw)`` weight or ``(bins, C, O)`` kernel spectrum is built.
Both backends run these (the Triton one on its unpacked operands).
"""

from __future__ import annotations

import torch


def product(x: torch.Tensor, kernel: torch.Tensor, groups: int) -> torch.Tensor:
    """``Y (bins, N, O)`` from ``X (bins, N, C)`` and ``K (bins, C / groups, O)``."""
    bins, batch, channels = x.shape
    per_group, out_channels = kernel.shape[1:]
    if per_group == 1 and out_channels == groups:  # depthwise: X[f, n, g] K[f, 0, g]
        return x * kernel
    if per_group == 1:  # with a multiplier: X[f, n, g] times each of the group's K[f, 0, g, o]
        y = x.unsqueeze(-1) * kernel.view(bins, 1, groups, out_channels // groups)
        return y.view(bins, batch, out_channels)
    y = torch.matmul(_by_group(x, groups), _by_group(kernel, groups))  # (bins, G, N, Og)
    return y.transpose(1, 2).reshape(bins, batch, out_channels)


def input_grad(grad: torch.Tensor, kernel_h: torch.Tensor, groups: int) -> torch.Tensor:
    """``gX (bins, N, C)`` from ``gY (bins, N, O)`` and ``K^H (bins, O, C / groups)``."""
    bins, batch, out_channels = grad.shape
    per_group = kernel_h.shape[2]
    if per_group == 1 and out_channels == groups:  # depthwise: gY[f, n, g] conj(K[f, 0, g])
        return grad * kernel_h.view(bins, 1, groups)
    if per_group == 1:  # with a multiplier: each gY[f, n, g, o] times conj(K[f, 0, g, o]), summed
        return (grad.view(bins, batch, groups, -1) * kernel_h.view(bins, 1, groups, -1)).sum(-1)
    gx = torch.matmul(_by_group(grad, groups), kernel_h.view(bins, groups, -1, per_group))
    return gx.transpose(1, 2).reshape(bins, batch, groups * per_group)


def weight_grad(x: torch.Tensor, grad: torch.Tensor, groups: int) -> torch.Tensor:
    """``gK (bins, C / groups, O)`` from ``X (bins, N, C)`` and ``gY (bins, N, O)``."""
    bins, batch, channels = x.shape
    out_channels = grad.shape[2]
    if channels == groups == out_channels:  # depthwise: sum_n conj(X[f, n, g]) gY[f, n, g]
        return torch.linalg.vecdot(x, grad, dim=1).view(bins, 1, out_channels)
    if channels == groups:  # with a multiplier: a sum over the batch of elementwise products
        gk = x.conj().unsqueeze(-1) * grad.view(bins, batch, groups, -1)
        return gk.sum(1).view(bins, 1, out_channels)
    gk = torch.matmul(_by_group(x, groups).mH, _by_group(grad, groups))  # (bins, G, Cg, Og)
    return gk.transpose(1, 2).reshape(bins, channels // groups, out_channels)


def _by_group(t: torch.Tensor, groups: int) -> torch.Tensor:
    """``(bins, rows, G * cols)`` -> ``(bins, G, rows, cols)`` (a view)."""
    bins, rows, cols = t.shape
    return t.view(bins, rows, groups, cols // groups).transpose(1, 2)
