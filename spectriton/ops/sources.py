"""A layer's sources as spectra: a spatial batch's FFT, or an earlier layer's compressed
output as it is."""

import torch
from torch import Tensor

from spectriton import transforms
from spectriton.compressed import CompressedSpectrum, unpack_bits


def source_spectrum(
    inputs: Tensor, mask: Tensor | None, offsets: Tensor | None, batch: int, channels: int, grid, real
) -> CompressedSpectrum | Tensor:
    """A layer's input spectrum on ``grid``: the FFT of a spatial batch (``mask`` None; dense,
    frequency-major, in ``real``'s precision), or a compressed layer output (its values
    widened to float64 in a float64 layer, so that its products run in float64)."""
    if mask is None:
        return transforms.map_spectrum(inputs.to(real), grid)
    values = inputs.to(real) if real == torch.float64 else inputs
    return CompressedSpectrum._trusted(values, mask, offsets, batch, channels, grid)


def dc_real(spectrum: CompressedSpectrum | Tensor, batch: int, channels: int) -> Tensor:
    """Real part of each map's DC entry (zero where it was not kept), ``(batch, channels)``."""
    if not isinstance(spectrum, CompressedSpectrum):
        return spectrum[0].real
    first = batch * channels  # the DC frequency is the stream's first batch x channels entries
    values = spectrum.values
    if values.shape[0] == 0:
        return values.new_zeros(batch, channels)
    keep = unpack_bits(spectrum.mask, first)
    # the kept DC entries are the first values, in order: gathered by rank, no host read
    rank = keep.view(torch.uint8).cumsum(0).sub_(1).clamp_(0, values.shape[0] - 1)
    dc = torch.where(keep, values[:, 0].gather(0, rank), 0)
    return dc.view(batch, channels)
