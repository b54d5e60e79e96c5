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


def dead_positions(
    x: torch.Tensor,
    kernel: tuple[int, int],
    padding: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """``(N, groups, H_out, W_out)``: True where every input a group's output reads is 0."""
    n, c, h, w = x.shape
    live = (x != 0).reshape(n, groups, c // groups, h, w).any(2).to(torch.float32)
    live = F.pad(live, (padding[1], padding[1], padding[0], padding[0]))  # zeros: nothing there
    return F.max_pool2d(live, kernel, stride, dilation=dilation) == 0


def bias_where_dead(
    y: torch.Tensor,
    x: torch.Tensor,
    bias: torch.Tensor | None,
    kernel: tuple[int, int],
    padding: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """``y``, a linear layer's output from input ``x``, with its exact value (the bias, or 0)
    where the receptive field is all zeros; the gradient passes as through ``y``."""
    with torch.no_grad():
        dead = dead_positions(x, kernel, padding, stride, dilation, groups)
        dead = dead.repeat_interleave(y.shape[1] // groups, dim=1)
        exact = torch.zeros((), dtype=y.dtype, device=y.device) if bias is None else bias.view(-1, 1, 1)
        correction = torch.where(dead, exact.to(y.dtype) - y, 0)
    return y + correction
