"""Max pooling whose backward keeps only the index of each window's maximum, bit-packed:
2 bits per output for 2 x 2 windows, 4 bits up to 16 positions, 8 up to 256."""

from __future__ import annotations

import torch
from torch import nn

from spectriton import _checks, provenance
from spectriton.nvtx import ranged


def _windows(x: torch.Tensor, k: tuple[int, int]) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, C, H // kh, W // kw, kh * kw)`` non-overlapping windows."""
    n, c, h, w = x.shape
    ho, wo = h // k[0], w // k[1]
    x = x[..., : ho * k[0], : wo * k[1]].reshape(n, c, ho, k[0], wo, k[1])
    return x.permute(0, 1, 2, 4, 3, 5).reshape(n, c, ho, wo, k[0] * k[1])


def index_bits(kernel: tuple[int, int]) -> int:
    """Bits per window index: 2 for up to 4 positions, 4 up to 16, 8 up to 256."""
    positions = kernel[0] * kernel[1]
    return 2 if positions <= 4 else 4 if positions <= 16 else 8


def _shifts(bits: int, device: torch.device) -> torch.Tensor:
    return torch.arange(0, 8, bits, dtype=torch.uint8, device=device)


def window_index(x: torch.Tensor, kernel: tuple[int, int]) -> torch.Tensor:
    """The position of each non-overlapping window's maximum (the first one on ties, NaN
    counting as largest, as ``nn.MaxPool2d``), packed :func:`index_bits` to the position
    in a flat uint8 tensor (low bits first)."""
    with torch.no_grad():
        index = _windows(x, kernel).argmax(-1).to(torch.uint8).reshape(-1)
        bits = index_bits(kernel)
        per_byte = 8 // bits
        index = torch.cat([index, index.new_zeros(-index.numel() % per_byte)]).view(-1, per_byte)
        return (index << _shifts(bits, x.device)).sum(-1).to(torch.uint8)


def _unpacked(packed: torch.Tensor, kernel: tuple[int, int], shape) -> torch.Tensor:
    """:func:`window_index`'s positions as int64, shaped ``shape`` (the pooled map's)."""
    bits = index_bits(kernel)
    index = (packed.unsqueeze(-1) >> _shifts(bits, packed.device)) & ((1 << bits) - 1)
    return index.reshape(-1)[: shape.numel()].view(shape).long()


def window_values(x: torch.Tensor, packed: torch.Tensor, kernel: tuple[int, int]) -> torch.Tensor:
    """The pooled map again: each window's entry at its packed index (what the forward's max
    read)."""
    windows = _windows(x, kernel)
    index = _unpacked(packed, kernel, windows.shape[:-1])
    return windows.gather(-1, index.unsqueeze(-1)).squeeze(-1)


class CompactMaxPoolFunction(torch.autograd.Function):
    """Max pooling at given window positions (:func:`window_index`); saves those, packed,
    and nothing else."""

    @staticmethod
    @ranged("pool.forward")
    def forward(ctx, x: torch.Tensor, index: torch.Tensor, kernel: tuple[int, int]):
        ctx.save_for_backward(index)  # an input: the same tensor a recipe refers to
        ctx.kernel, ctx.size = kernel, x.shape[-2:]
        return window_values(x, index, kernel).clone()  # not a view: may be modified in place

    @staticmethod
    @ranged("pool.backward")
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        (kh, kw), (h, w) = ctx.kernel, ctx.size
        n, c, ho, wo = grad.shape
        windows = grad.new_zeros(n, c, ho, wo, kh * kw)
        windows.scatter_(-1, _unpacked(index, ctx.kernel, grad.shape).unsqueeze(-1), grad.unsqueeze(-1))
        windows = windows.view(n, c, ho, wo, kh, kw).permute(0, 1, 2, 4, 3, 5).reshape(n, c, ho * kh, wo * kw)
        return nn.functional.pad(windows, (0, w - wo * kw, 0, h - ho * kh)), None, None


class CompactMaxPool2d(nn.Module):
    """Drop-in for ``nn.MaxPool2d(k)`` (stride = kernel, no padding, floor mode).

    Same output and gradient as ``nn.MaxPool2d``; for backward it keeps the position of
    each window's maximum, 2 bits per output for 2 x 2 windows (see :func:`index_bits`),
    instead of the input and an int64 index. After a spectral block, its
    output's recipe (:mod:`spectriton.provenance`) is the block's plus that index, so the
    next block need not keep it.
    """

    def __init__(
        self, kernel_size: int | tuple[int, int] = 2, stride: int | tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        self.kernel_size = _checks.pair(kernel_size, "kernel_size", minimum=1)
        if self.kernel_size[0] * self.kernel_size[1] > 256:
            raise ValueError(f"kernel_size {self.kernel_size} has more than 256 positions for an 8-bit index")
        if stride is not None and _checks.pair(stride, "stride", minimum=1) != self.kernel_size:
            raise ValueError(f"stride must equal kernel_size {self.kernel_size}, got {stride!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _checks.spatial_input(x, None)
        if x.shape[-2] < self.kernel_size[0] or x.shape[-1] < self.kernel_size[1]:
            raise ValueError(
                f"input of size {tuple(x.shape[-2:])} is smaller than kernel_size {self.kernel_size}"
            )
        recipe = provenance.lookup(x)
        index = window_index(x, self.kernel_size)
        values = CompactMaxPoolFunction.apply(x, index, self.kernel_size)
        if recipe is not None and recipe.pool == (0, 0):  # a block's output: the pool extends its recipe
            provenance.record(values, recipe.pooled(index, self.kernel_size))
        return values

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"
