"""Max pooling windows: each window's maximum, its position packed in a few bits, and the
pooled map read again at those positions. Pure maths, shared by :mod:`spectriton.pooling`
and the rebuild of a pooled block output (:mod:`spectriton.ops.rebuild`). Nothing here
materialises the windows or a padded copy of the map: positions become input indices by
arithmetic on the window's corner."""

import torch
from torch import nn


def index_bits(kernel: tuple[int, int]) -> int:
    """Bits per window position: 2 for up to 4 positions, 4 up to 16, 8 up to 256."""
    positions = kernel[0] * kernel[1]
    return 2 if positions <= 4 else 4 if positions <= 16 else 8


def _shifts(bits: int, device: torch.device) -> torch.Tensor:
    return torch.arange(0, 8, bits, dtype=torch.uint8, device=device)


def _corners(pooled: tuple[int, int], stride, padding, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The input row of each window's top and column of its left edge (negative in the
    padding), int32 ``(H_out, 1)`` and ``(W_out,)``."""
    top = torch.arange(pooled[0], dtype=torch.int32, device=device).view(-1, 1) * stride[0] - padding[0]
    left = torch.arange(pooled[1], dtype=torch.int32, device=device) * stride[1] - padding[1]
    return top, left


def window_max(x: torch.Tensor, kernel, stride, padding) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pooling window's maximum (``nn.functional.max_pool2d``, floor mode, padding read
    as -inf) and its position in the window, packed :func:`index_bits` to the position in a
    flat uint8 tensor (low bits first). The position is the one ``max_pool2d`` picks, never
    in the padding. No autograd graph."""
    with torch.no_grad():
        maxima, flat = nn.functional.max_pool2d(x, kernel, stride, padding, return_indices=True)
        width = x.shape[-1]
        flat = flat.to(torch.int32)  # the index in the input plane
        top, left = _corners(maxima.shape[-2:], stride, padding, x.device)
        index = ((flat // width - top) * kernel[1] + flat % width - left).to(torch.uint8).reshape(-1)
        bits = index_bits(kernel)
        per_byte = 8 // bits
        index = torch.cat([index, index.new_zeros(-index.numel() % per_byte)]).view(-1, per_byte)
        return maxima, (index << _shifts(bits, x.device)).sum(-1).to(torch.uint8)


def input_indices(packed: torch.Tensor, kernel, stride, padding, pooled: torch.Size, size) -> torch.Tensor:
    """:func:`window_max`'s packed positions as indices into the input plane of ``size``,
    int64 ``(N, C, H_out W_out)`` for a pooled map of shape ``pooled``.

    A position in the padding (only ever packed by hand) is clamped to the input's edge,
    which lies in the same window: every window overlaps the input, padding being at most
    half the kernel."""
    bits = index_bits(kernel)
    position = (packed.unsqueeze(-1) >> _shifts(bits, packed.device)) & ((1 << bits) - 1)
    position = position.reshape(-1)[: pooled.numel()].view(pooled)
    top, left = _corners(pooled[-2:], stride, padding, packed.device)
    rows = (top + position // kernel[1]).clamp_(0, size[0] - 1)
    cols = (left + position % kernel[1]).clamp_(0, size[1] - 1)
    return rows.mul_(size[1]).add_(cols).view(*pooled[:2], -1).long()


def _pooled_shape(x: torch.Tensor, kernel, stride, padding) -> torch.Size:
    """The shape of ``x`` max-pooled (floor mode)."""
    sizes = [(x.shape[2 + a] + 2 * padding[a] - kernel[a]) // stride[a] + 1 for a in range(2)]
    return torch.Size((*x.shape[:2], *sizes))


def window_values(x: torch.Tensor, packed: torch.Tensor, kernel, stride, padding) -> torch.Tensor:
    """The pooled map again: each window's entry at its packed position (what the forward's
    max read), gathered from ``x``."""
    pooled = _pooled_shape(x, kernel, stride, padding)
    flat = input_indices(packed, kernel, stride, padding, pooled, x.shape[-2:])
    return x.reshape(*pooled[:2], -1).gather(2, flat).view(pooled)
