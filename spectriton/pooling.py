"""Max pooling whose backward keeps one byte per output: the index inside its window."""

from __future__ import annotations

import torch
from torch import nn

from spectriton import _checks
from spectriton.nvtx import ranged


def _windows(x: torch.Tensor, k: tuple[int, int]) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, C, H // kh, W // kw, kh * kw)`` non-overlapping windows."""
    n, c, h, w = x.shape
    ho, wo = h // k[0], w // k[1]
    x = x[..., : ho * k[0], : wo * k[1]].reshape(n, c, ho, k[0], wo, k[1])
    return x.permute(0, 1, 2, 4, 3, 5).reshape(n, c, ho, wo, k[0] * k[1])


class CompactMaxPoolFunction(torch.autograd.Function):
    """Non-overlapping max pooling; saves a uint8 window index per output, nothing else."""

    @staticmethod
    @ranged("pool.forward")
    def forward(ctx, x: torch.Tensor, kernel: tuple[int, int]):
        values, index = _windows(x, kernel).max(-1)
        index = index.to(torch.uint8)
        ctx.save_for_backward(index)
        ctx.kernel, ctx.size = kernel, x.shape[-2:]
        return values

    @staticmethod
    @ranged("pool.backward")
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        (kh, kw), (h, w) = ctx.kernel, ctx.size
        n, c, ho, wo = grad.shape
        windows = grad.new_zeros(n, c, ho, wo, kh * kw)
        windows.scatter_(-1, index.long().unsqueeze(-1), grad.unsqueeze(-1))
        windows = windows.view(n, c, ho, wo, kh, kw).permute(0, 1, 2, 4, 3, 5).reshape(n, c, ho * kh, wo * kw)
        return nn.functional.pad(windows, (0, w - wo * kw, 0, h - ho * kh)), None


class CompactMaxPool2d(nn.Module):
    """Drop-in for ``nn.MaxPool2d(k)`` (stride = kernel, no padding, floor mode).

    Same output and gradient as ``nn.MaxPool2d``; for backward it keeps a 1-byte window
    index per output instead of the input and an int64 index.
    """

    def __init__(
        self, kernel_size: int | tuple[int, int] = 2, stride: int | tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        self.kernel_size = _checks.pair(kernel_size, "kernel_size", minimum=1)
        if self.kernel_size[0] * self.kernel_size[1] > 256:
            raise ValueError(f"kernel_size {self.kernel_size} has more than 256 positions for a 1-byte index")
        if stride is not None and _checks.pair(stride, "stride", minimum=1) != self.kernel_size:
            raise ValueError(f"stride must equal kernel_size {self.kernel_size}, got {stride!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _checks.spatial_input(x, None)
        if x.shape[-2] < self.kernel_size[0] or x.shape[-1] < self.kernel_size[1]:
            raise ValueError(
                f"input of size {tuple(x.shape[-2:])} is smaller than kernel_size {self.kernel_size}"
            )
        return CompactMaxPoolFunction.apply(x, self.kernel_size)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"
