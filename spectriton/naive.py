"""One spectral layer in plain torch, dense, with torch autograd: the oracle the whole layer
(normalised, scaled and shifted, with a residual, thresholded, split tanh, strided) is
tested against, output and every gradient, as flash-linear-attention's ``naive.py``.

It uses none of spectriton's ops (no compressed spectra, no kernel-spectrum GEMMs, no
hand-written adjoints): only DESIGN.md section 2's conventions, written out here.

- Grid ``P``: a map of ``H x W`` is zero-padded to ``(H + k - 1, W + k - 1)``, more where
  the padding exceeds ``k - 1`` (then the layer's full output ``H + 2p - k + 1`` sets it).
- ``X = rfft2(x, s=P, norm="ortho")``, ``Wf = rfft2(w, s=P)``, product
  ``Y[n, o] = sum_c X[n, c] conj(Wf[o, c])`` (a circular cross-correlation on the grid); the
  bias adds to every pixel of the grid. Output row ``i`` reads circular grid row
  ``(i * stride - padding) mod P0`` (columns alike).
- Normalisation (``moments``, ``(2, O)``: each channel's mean and mean square on the grid,
  constants of the step): ``(y - mean) / sqrt(mean square - mean^2 + eps)`` per channel, then
  the affine ``weight * . + bias``, then the residual, added where the output reads the grid.
- Threshold: an entry of the orthonormal half spectrum is kept iff ``|Y| > beta`` (NaN
  kept), every entry at beta 0 (the identity); its gradient is the keep mask. Split tanh:
  ``tanh(re) + i tanh(im)``.
- A strided layer crops its map to its output first; normalisation, residual, threshold and
  split tanh then act on that output, on a grid the output's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NORM_EPS = 1e-5  # as nn.BatchNorm2d's eps


def grid_size(size: tuple[int, int], kernel: tuple[int, int], padding: tuple[int, int]) -> tuple[int, int]:
    """The FFT grid of one layer on maps of spatial ``size``."""
    return tuple(max(n + k - 1, n + 2 * p - k + 1) for n, k, p in zip(size, kernel, padding))  # type: ignore[return-value]


def _crop(
    y: torch.Tensor, padding: tuple[int, int], full: tuple[int, int], stride: tuple[int, int]
) -> torch.Tensor:
    """Output pixel ``i`` of a map on the grid: circular pixel ``(i * stride - padding) mod P``."""
    rolled = torch.roll(y, shifts=tuple(padding), dims=(-2, -1))
    return rolled[..., : full[0] : stride[0], : full[1] : stride[1]]


def _place(r: torch.Tensor, padding: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """A zero map on the grid with ``r`` where an unstrided crop reads."""
    padded = F.pad(r, (0, grid[1] - r.shape[-1], 0, grid[0] - r.shape[-2]))
    return torch.roll(padded, shifts=(-padding[0], -padding[1]), dims=(-2, -1))


def _thresholded_map(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: tuple[int, int],
    stride: tuple[int, int],
    moments: torch.Tensor | None,
    affine: tuple[torch.Tensor, torch.Tensor] | None,
    residual: torch.Tensor | None,
) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """The spatial map the threshold acts on the spectrum of ``(N, O, *grid)``, and the
    padding and full size its output is cropped with (none left for a strided layer)."""
    kernel = tuple(weight.shape[-2:])
    size = tuple(x.shape[-2:])
    grid = grid_size(size, kernel, padding)
    full = tuple(n + 2 * p - k + 1 for n, k, p in zip(size, kernel, padding))
    spectrum = torch.einsum(
        "nchw,ochw->nohw", torch.fft.rfft2(x, s=grid, norm="ortho"), torch.fft.rfft2(weight, s=grid).conj()
    )
    y = torch.fft.irfft2(spectrum, s=grid, norm="ortho")
    if bias is not None:
        y = y + bias[:, None, None]
    if tuple(stride) != (1, 1):  # the output is the grid from here on
        y = _crop(y, padding, full, stride)
        padding, full = (0, 0), tuple(y.shape[-2:])
    if moments is not None:
        mean, power = moments
        y = (y - mean[:, None, None]) * torch.rsqrt((power - mean * mean).clamp(min=0) + NORM_EPS)[
            :, None, None
        ]
    if affine is not None:
        y = y * affine[0][:, None, None] + affine[1][:, None, None]
    if residual is not None:
        y = y + _place(residual, padding, tuple(y.shape[-2:]))
    return y, padding, full


def layer_spectrum(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    padding: tuple[int, int] = (0, 0),
    stride: tuple[int, int] = (1, 1),
    moments: torch.Tensor | None = None,
    affine: tuple[torch.Tensor, torch.Tensor] | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """The orthonormal half spectrum ``(N, O, P0, P1 // 2 + 1)`` that the layer thresholds
    (arguments as :func:`spectral_layer`'s)."""
    y, _, _ = _thresholded_map(x, weight, bias, padding, stride, moments, affine, residual)
    return torch.fft.rfft2(y, norm="ortho")


def spectral_layer(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    padding: tuple[int, int] = (0, 0),
    stride: tuple[int, int] = (1, 1),
    beta: float | torch.Tensor = 0.0,
    activation: str | None = None,
    moments: torch.Tensor | None = None,
    affine: tuple[torch.Tensor, torch.Tensor] | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """One spectral layer, spatial ``(N, C, H, W)`` in, spatial ``(N, O, H_out, W_out)`` out.

    ``weight`` ``(O, C, kh, kw)`` and ``bias`` ``(O,)`` as ``nn.Conv2d``'s; ``moments`` (see
    the module docstring) normalises, ``affine`` (``(weight, bias)``, each ``(O,)``) then
    scales and shifts; ``residual`` is shaped as the output; ``beta`` is the threshold (a
    density budget's is a constant of the step: give the one the layer used);
    ``activation`` is None or ``"split_tanh"``.
    """
    y, padding, full = _thresholded_map(x, weight, bias, padding, stride, moments, affine, residual)
    spectrum = torch.fft.rfft2(y, norm="ortho")
    dropped = (spectrum.detach().abs() <= beta) & (torch.as_tensor(beta) > 0)  # beta 0: the identity
    kept = torch.where(dropped, 0, spectrum)
    if activation == "split_tanh":
        kept = torch.complex(torch.tanh(kept.real), torch.tanh(kept.imag))
    z = torch.fft.irfft2(kept, s=tuple(y.shape[-2:]), norm="ortho")
    return _crop(z, padding, full, (1, 1))
