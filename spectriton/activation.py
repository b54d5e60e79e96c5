"""Split tanh on dense spectra (the layers apply it fused with the threshold)."""

from __future__ import annotations

import torch
from torch import nn

from spectriton.reference import split_tanh


class SplitTanhFunction(torch.autograd.Function):
    """``tanh(re) + i tanh(im)``; backward (paper eq. 10) needs only the output."""

    @staticmethod
    def forward(ctx, spectrum: torch.Tensor):
        out = split_tanh(spectrum)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (out,) = ctx.saved_tensors
        return torch.complex((1 - out.real.square()) * grad.real, (1 - out.imag.square()) * grad.imag)


class SplitTanh(nn.Module):
    """The SpecNet activation on a complex spectrum: odd in both parts, so the conjugate
    symmetry of a real map's spectrum survives and the inverse FFT stays real."""

    def forward(self, spectrum: torch.Tensor) -> torch.Tensor:
        if not isinstance(spectrum, torch.Tensor) or not spectrum.is_complex():
            raise TypeError(
                f"SplitTanh expects a complex spectrum, got {getattr(spectrum, 'dtype', type(spectrum))}"
            )
        return SplitTanhFunction.apply(spectrum)
