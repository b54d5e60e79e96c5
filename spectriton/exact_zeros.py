"""Where a plain layer's exact output is its bias alone: the positions whose receptive field
holds only zeros (a dead ReLU region, zero padding, a blank border).

``nn.Conv2d`` returns exactly the bias there. The spectral product returns the bias plus the
FFT's round-off, of either sign, which a following ReLU reads as a kink crossed (about half
of those positions pass a gradient the original blocks) and a max pool reads as a broken
tie. A linear layer (no threshold, no activation, no normalisation) therefore sets its
output there to the bias; its gradient is left as it is, since the round-off is a constant
of the forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spectriton.backend import cpu_forms


def dead_positions(
    x: torch.Tensor,
    kernel: tuple[int, int],
    padding: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """``(N, groups, 1, H_out, W_out)``: True where every input a group's output reads is 0."""
    n, c, h, w = x.shape
    zero = x == 0
    if c != groups:
        zero = zero.reshape(n, groups, c // groups, h, w).all(2)
    live = F.pad(torch.logical_not(zero).view(torch.uint8), (padding[1], padding[1], padding[0], padding[0]))
    for axis in (-2, -1):  # a separable window: any along the rows, then the columns
        live = _any_along(live, axis, kernel[axis], stride[axis], dilation[axis])
    return (live == 0).unsqueeze(2)


def _any_along(t: torch.Tensor, axis: int, taps: int, stride: int, dilation: int) -> torch.Tensor:
    """Whether any of the ``taps`` entries of each window along ``axis`` is set (uint8)."""
    out = (t.shape[axis] - dilation * (taps - 1) - 1) // stride + 1
    found = None
    for tap in range(taps):
        start = tap * dilation
        part = t.narrow(axis, start, (out - 1) * stride + 1)
        part = part[..., ::stride, :] if axis == -2 else part[..., ::stride]
        found = part if found is None else found | part
    return found


def bias_where_dead_(
    y: torch.Tensor,
    x: torch.Tensor,
    bias: torch.Tensor | None,
    kernel: tuple[int, int],
    padding: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """``y``, a linear layer's output from input ``x``, set in place to its exact value (the
    bias, or 0) where the receptive field is all zeros. Outside autograd: the gradient passes
    as through ``y``."""
    with torch.no_grad():
        if _none_dead(x, kernel, padding, dilation):
            return y
        dead = dead_positions(x, kernel, padding, stride, dilation, groups)
        n, o, h, w = y.shape
        grouped = y.view(n, groups, o // groups, h, w)
        if bias is None:
            grouped.masked_fill_(dead, 0)
        else:
            exact = bias.to(y.dtype).view(groups, o // groups, 1, 1)
            grouped.copy_(torch.where(dead, exact, grouped))
    return y


def _none_dead(x: torch.Tensor, kernel, padding, dilation) -> bool:
    """Whether no receptive field is all zeros, where that is known without a device
    synchronisation (eager, on CPU): ``x`` holds no exact zero and every window reaches a
    pixel of the map. Elsewhere False (a compiled graph has no branch on data), and
    :func:`dead_positions` decides."""
    if torch.compiler.is_compiling() or not cpu_forms(x.device):
        return False
    reaches = all(  # past the padding, and no taps straddle a map narrower than their spacing
        p < d * (k - 1) + 1 and (k == 1 or size >= d)
        for k, p, d, size in zip(kernel, padding, dilation, x.shape[-2:])
    )
    return reaches and not bool((x == 0).any())
