"""Max pooling whose backward keeps only the position of each window's maximum, bit-packed:
2 bits per output for 2 x 2 windows, 4 bits up to 16 positions (3 x 3), 8 up to 256;
average pooling that keeps nothing; which ``torch.nn`` pools they stand in for
(:func:`stays_spatial`, :func:`compact_pool`, as :func:`spectriton.convert` swaps them)."""

from __future__ import annotations

import torch
from torch import nn

from spectriton import _checks, provenance
from spectriton.nvtx import annotate, ranged
from spectriton.tracing import traced_module
from spectriton.windows import input_indices, window_max


class CompactMaxPoolFunction(torch.autograd.Function):
    """Max pooling of ``x`` given its result, ``maxima`` at packed window positions ``index``
    (:func:`~spectriton.windows.window_max`); saves the positions and nothing else."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor, maxima: torch.Tensor, kernel, stride, padding):
        ctx.save_for_backward(index)  # an input: the same tensor a recipe refers to
        ctx.window, ctx.size = (kernel, stride, padding), x.shape[-2:]
        return maxima.clone()  # a new tensor, not an input: it may be modified in place

    @staticmethod
    @ranged("pool.backward")
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        (h, w), (n, c) = ctx.size, grad.shape[:2]
        flat = input_indices(index, *ctx.window, grad.shape, (h, w))
        like = grad.new_empty(n, c, h, w)  # read for its shape only
        kernel, stride, padding = ctx.window
        # nn.MaxPool2d's own backward: overlapping windows sum in its order and precision
        grad_x = torch.ops.aten.max_pool2d_with_indices_backward(
            grad, like, kernel, stride, padding, (1, 1), False, flat.view(grad.shape)
        )
        return grad_x, None, None, None, None, None


class CompactMaxPool2d(nn.Module):
    """Drop-in for ``nn.MaxPool2d(kernel_size, stride, padding)`` (floor mode, no dilation),
    overlapping windows included (e.g. ResNet's 3 x 3, stride 2, padding 1).

    Same output and gradient as ``nn.MaxPool2d``; for backward it keeps the position of
    each window's maximum, 2 bits per output for 2 x 2 windows and 4 for 3 x 3 (see
    :func:`~spectriton.windows.index_bits`), instead of the input and an int64 index. After a spectral block,
    its output's recipe (:mod:`spectriton.provenance`) is the block's plus those positions,
    so the next block need not keep it.
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int] = 2,
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.kernel_size = _checks.pair(kernel_size, "kernel_size", minimum=1)
        if self.kernel_size[0] * self.kernel_size[1] > 256:
            raise ValueError(f"kernel_size {self.kernel_size} has more than 256 positions for an 8-bit index")
        self.stride = self.kernel_size if stride is None else _checks.pair(stride, "stride", minimum=1)
        self.padding = _checks.pair(padding, "padding", minimum=0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"padding {self.padding} must be at most half of kernel_size {self.kernel_size}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        node = traced_module(self, x)
        if node is not None:  # fx tracing: a leaf of the graph
            return node
        _checks.spatial_input(x, None)
        padded = [x.shape[-2 + a] + 2 * self.padding[a] for a in range(2)]
        if padded[0] < self.kernel_size[0] or padded[1] < self.kernel_size[1]:
            raise ValueError(
                f"input of size {tuple(x.shape[-2:])} is smaller than kernel_size {self.kernel_size}"
            )
        window = (self.kernel_size, self.stride, self.padding)
        recipe = provenance.lookup(x)
        with annotate("pool.forward"):
            maxima, index = window_max(x, *window)
            values = CompactMaxPoolFunction.apply(x, index, maxima, *window)
        if recipe is not None and not recipe.pooled_already:  # a block's output: extend its recipe
            provenance.record(values, recipe.pooled(index, window))
        return values

    def extra_repr(self) -> str:
        text = f"kernel_size={self.kernel_size}"
        if self.stride != self.kernel_size:
            text += f", stride={self.stride}"
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        return text


class CompactAvgPoolFunction(torch.autograd.Function):
    """``F.avg_pool2d`` whose backward keeps nothing but the input's shape (the gradient of
    an average does not depend on the values averaged)."""

    @staticmethod
    @ranged("avg_pool.forward")
    def forward(ctx, x: torch.Tensor, options: tuple):
        ctx.options, ctx.shape = options, x.shape
        return nn.functional.avg_pool2d(x, *options)

    @staticmethod
    @ranged("avg_pool.backward")
    def backward(ctx, grad: torch.Tensor):
        like = grad.new_empty(ctx.shape)  # read for its shape only
        return torch.ops.aten.avg_pool2d_backward(grad.contiguous(), like, *ctx.options), None


class CompactAvgPool2d(nn.AvgPool2d):
    """Drop-in for ``nn.AvgPool2d`` (same arguments and outputs) that keeps nothing for
    backward; ``nn.AvgPool2d`` keeps its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        node = traced_module(self, x)
        if node is not None:  # fx tracing: a leaf of the graph
            return node
        _checks.spatial_input(x, None)
        if not torch.is_grad_enabled() or not x.requires_grad:
            return super().forward(x)
        options = (
            _checks.pair(self.kernel_size, "kernel_size", minimum=1),
            _checks.pair(self.stride or self.kernel_size, "stride", minimum=1),
            _checks.pair(self.padding, "padding", minimum=0),
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )
        return CompactAvgPoolFunction.apply(x, options)


def stays_spatial(pool: nn.MaxPool2d | nn.AvgPool2d) -> str:
    """Why ``pool`` has no compact twin, or "" if :func:`compact_pool` takes it."""
    if isinstance(pool, nn.AvgPool2d):
        return ""
    k, padding = _pair(pool.kernel_size), _pair(pool.padding)
    if _pair(pool.dilation) != (1, 1) or pool.ceil_mode or pool.return_indices:
        return "dilation, ceil_mode or return_indices set"
    if k[0] * k[1] > 256:
        return "window of more than 256 positions"
    if any(2 * p > n for p, n in zip(padding, k)):
        return f"padding {padding} over half the kernel {k}"
    return ""


def compact_pool(pool: nn.MaxPool2d | nn.AvgPool2d) -> nn.Module:
    """``pool``'s compact twin, with its options."""
    if isinstance(pool, nn.AvgPool2d):  # keeps nothing for backward
        options = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
        return CompactAvgPool2d(**{name: getattr(pool, name) for name in options})
    return CompactMaxPool2d(pool.kernel_size, pool.stride or None, pool.padding)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)
