"""Max pooling windows: each window's maximum, its position packed in a few bits, and the
pooled map read again at those positions. Pure maths, shared by :mod:`spectriton.pooling`
and the rebuild of a pooled block output (:mod:`spectriton.ops.rebuild`)."""

import torch
from torch import nn


def _windows(x: torch.Tensor, kernel, stride, padding) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, C, H_out, W_out, kh * kw)``: each pooling window's entries in
    row-major order, padding read as -inf (as ``nn.MaxPool2d``), floor mode."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    if ph or pw:
        x = nn.functional.pad(x, (pw, pw, ph, ph), value=-float("inf"))
    windows = x.unfold(2, kh, sh).unfold(3, kw, sw)
    return windows.reshape(*windows.shape[:4], kh * kw)


def index_bits(kernel: tuple[int, int]) -> int:
    """Bits per window position: 2 for up to 4 positions, 4 up to 16, 8 up to 256."""
    positions = kernel[0] * kernel[1]
    return 2 if positions <= 4 else 4 if positions <= 16 else 8


def _shifts(bits: int, device: torch.device) -> torch.Tensor:
    return torch.arange(0, 8, bits, dtype=torch.uint8, device=device)


def window_max(x: torch.Tensor, kernel, stride, padding) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pooling window's maximum, and its position (the first one on ties, NaN counting
    as largest, as ``nn.MaxPool2d``) packed :func:`index_bits` to the position in a flat
    uint8 tensor (low bits first). No autograd graph."""
    with torch.no_grad():
        maxima, index = _windows(x, kernel, stride, padding).max(-1)
        index = index.to(torch.uint8).reshape(-1)
        bits = index_bits(kernel)
        per_byte = 8 // bits
        index = torch.cat([index, index.new_zeros(-index.numel() % per_byte)]).view(-1, per_byte)
        return maxima, (index << _shifts(bits, x.device)).sum(-1).to(torch.uint8)


def unpacked_positions(packed: torch.Tensor, kernel, shape) -> torch.Tensor:
    """:func:`window_max`'s positions as int64, shaped ``shape`` (the pooled map's)."""
    bits = index_bits(kernel)
    index = (packed.unsqueeze(-1) >> _shifts(bits, packed.device)) & ((1 << bits) - 1)
    return index.reshape(-1)[: shape.numel()].view(shape).long()


def window_values(x: torch.Tensor, packed: torch.Tensor, kernel, stride, padding) -> torch.Tensor:
    """The pooled map again: each window's entry at its packed position (what the forward's
    max read)."""
    windows = _windows(x, kernel, stride, padding)
    index = unpacked_positions(packed, kernel, windows.shape[:-1])
    return windows.gather(-1, index.unsqueeze(-1)).squeeze(-1)
