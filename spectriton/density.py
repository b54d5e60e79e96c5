"""A density budget's threshold: the quantile of a spectrum's magnitudes."""

import torch
from torch import Tensor


def density_threshold(spectrum: Tensor, density: float, sample: int = 1 << 16) -> Tensor | float:
    """The beta that keeps about a fraction ``density`` of ``spectrum``'s entries, as a
    float64 tensor on the spectrum's device (no host synchronisation).

    A quantile of the magnitudes of the finite entries (NaN where there are none), estimated
    on at most ``sample`` entries spread over the whole spectrum by a golden-ratio sequence
    (so the sample never aliases with a row length), in float64 so that huge magnitudes do
    not overflow to an infinite threshold.
    """
    if density >= 1:
        return 0.0
    flat = spectrum.reshape(-1)
    if flat.numel() > sample:
        steps = torch.arange(sample, dtype=torch.float64, device=flat.device)
        flat = flat[((steps * 0.6180339887498949) % 1 * flat.numel()).long()]
    magnitude = flat.to(torch.complex128).abs()
    magnitude = torch.where(torch.isfinite(magnitude), magnitude, float("nan"))
    return torch.nanquantile(magnitude, 1 - density, interpolation="lower")


def drop_by_sample_(spectrum: Tensor, density: float) -> float:
    """Zero, in place, each sample's entries of ``spectrum`` (``(bins, N, C)``) at or below
    that sample's own quantile: a density budget with no running threshold yet (eval
    before any training step), so that a sample's output does not depend on its batch.
    Returns the threshold that then keeps exactly what is left: the dtype's smallest normal
    magnitude (the entries dropped are zeros, or below their sample's quantile anyway)."""
    for n in range(spectrum.shape[1]):
        part = spectrum[:, n]
        beta = density_threshold(part, density)
        part.masked_fill_(part.abs() <= beta, 0)
    return torch.finfo(spectrum.real.dtype).tiny
