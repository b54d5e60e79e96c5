"""Between space and spectrum: the transforms of DESIGN.md section 2 and their adjoints.

Spectra are frequency-major (:mod:`spectriton.compressed`): a map's FFT lands as complex
``(bins, batch, channels)``, and a kernel's spectrum as the per-frequency **product
matrices** ``K (bins, C, O)`` with ``K[f, c, o] = conj(W[o, c, f])``, ``W = rfft2(w)``, so that
the spectral product is ``Y[f] = X[f] K[f]`` (``Y[n, o] = sum_c X[n, c] conj(W[o, c])``:
cross-correlation), the input gradient ``gY[f] K[f]^H`` (``K^H`` built directly, not
transposed) and the kernel gradient ``X[f]^H gY[f]``: three GEMMs per frequency. ``K`` is a small DFT
over the ``k x k`` taps computed as one real matmul, not an FFT of zero-padded kernels.
The transforms are GEMMs on cached DFT tables on CPU and small grids (:mod:`spectriton.dft`),
FFTs otherwise (cuFFT or pocketFFT through ``torch.fft``); each adjoint matches what
``torch.autograd`` computes through its forward (the tests check).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence

import torch

from spectriton import dft
from spectriton.geometry import BlockGeometry
from spectriton.numerics import complex_dtype, half_spectrum, snap_zeros


def map_spectrum(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Spatial maps ``(N, C, H, W)`` -> frequency-major half spectra ``(bins, N, C)`` on
    ``grid`` (zero-padded, orthonormal)."""
    if dft.use_gemm(x, grid):
        return dft.analysis(x, grid, _span(x.shape[-2]), _span(x.shape[-1]))
    batch, channels = x.shape[:2]
    out = x.new_empty(*half_spectrum(grid), batch, channels, dtype=complex_dtype(x.dtype))
    for chunk in dft.channel_chunks(batch, channels, grid):
        out[..., chunk] = torch.fft.rfft2(x[:, chunk], s=grid, norm="ortho").permute(2, 3, 0, 1)
    return out.view(-1, batch, channels)


def scale_mirrored_(g: torch.Tensor, grid: tuple[int, int], factor: float, dim: int = 1) -> torch.Tensor:
    """Scale, in place, the half-spectrum columns (``dim``: 1 of ``(rows, cols, ...)``) that
    a real inverse transform counts twice."""
    mirrored = grid[1] - half_spectrum(grid)[1]
    if mirrored > 0:
        g.narrow(dim, 1, mirrored).mul_(factor)
    return g


def map_spectrum_adjoint(g: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Adjoint of :func:`map_spectrum`: ``(bins, N, C)`` gradient -> ``(N, C, *size)``.

    The adjoint of a real-input FFT is an inverse real FFT of the gradient with the columns
    that it mirrors weighted by one half (a real transform, half the work of a complex one).
    """
    if dft.use_gemm(g, grid):
        return dft.synthesis(g, grid, _span(size[0]), _span(size[1]))
    batch, channels = g.shape[1:]
    halves = g.view(*half_spectrum(grid), batch, channels)
    out = g.real.new_empty(batch, channels, *size)
    for chunk in dft.channel_chunks(batch, channels, grid):
        spectrum = scale_mirrored_(halves[..., chunk].permute(2, 3, 0, 1).clone(), grid, 0.5, dim=3)
        out[:, chunk] = torch.fft.irfft2(spectrum, s=grid, norm="ortho")[..., : size[0], : size[1]]
    return out


def kernel_spectrum(
    weight: torch.Tensor, grid: tuple[int, int], shift: tuple[int, int] = (0, 0), adjoint: bool = False
) -> torch.Tensor:
    """Spatial kernels ``(O, C, kh, kw)`` -> product matrices ``K (bins, C, O)`` on ``grid``
    (module docstring), complex in ``weight``'s precision, laid out as the weight is (a
    transposed view of a contiguous ``(bins, O, C)``: BLAS reads either); with ``adjoint``,
    their conjugate transposes ``K^H (bins, O, C)`` (what the input gradient multiplies
    by), contiguous.

    ``shift`` rolls the kernel on the grid first: a layer that sums sources whose crops
    differ (a dense block) shifts each source's kernel so their outputs line up.
    """
    return next(kernel_spectra(weight, grid, shift, adjoint, [(slice(None), slice(None))]))


def kernel_spectra(
    weight: torch.Tensor,
    grid: tuple[int, int],
    shift: tuple[int, int],
    adjoint: bool,
    tiles: Sequence[tuple[slice, slice]],
) -> Iterator[torch.Tensor]:
    """:func:`kernel_spectrum` of each tile in ``tiles``, one at a time: a tile is a run of
    frequencies and a run of output channels (a layer's tiles: :mod:`spectriton.ops.tiles`).

    ``K^T[f] = sum_t E[f, t] w_t``: one real GEMM of the ``[cos | sin]`` rows of ``E``
    (``[cos | -sin]`` for ``K^H``) by the tile's output channels of the weight in its own
    ``(O, C taps)`` layout, no copy of the weight, then the two planes interleaved: the
    transient is the tile's planes, and a tile reads only its channels' taps."""
    out_channels, channels, kh, kw = weight.shape
    table = _planes(grid, (kh, kw), tuple(shift), weight.dtype, weight.device, adjoint)
    rows = weight.reshape(out_channels, -1)
    for bins, outs in tiles:  # nothing of a tile held here once it is yielded
        yield _tile_spectra(table[bins], rows[outs].reshape(-1, kh * kw), channels, adjoint)


def _tile_spectra(table: torch.Tensor, flat: torch.Tensor, channels: int, adjoint: bool) -> torch.Tensor:
    """One tile of :func:`kernel_spectra` from its rows of ``_planes`` and its output
    channels' ``(O C, taps)``: the real planes, then interleaved."""
    planes = (table.reshape(-1, flat.shape[1]) @ flat.T).view(table.shape[0], 2, -1)
    spectra = torch.complex(planes[:, 0], planes[:, 1]).view(table.shape[0], -1, channels)
    return spectra if adjoint else spectra.mT


def is_pointwise(kernel: Sequence[int], shift: Sequence[int]) -> bool:
    """Whether a kernel is 1 x 1 and unshifted: its spectrum is then the same matrix at every
    frequency (every phase is 1), :func:`pointwise_kernel`."""
    return tuple(kernel) == (1, 1) and tuple(shift) == (0, 0)


def pointwise_kernel(weight: torch.Tensor, adjoint: bool = False) -> torch.Tensor:
    """:func:`kernel_spectrum` of an unshifted 1 x 1 kernel (:func:`is_pointwise`) as the one
    matrix it is at every frequency: ``K (C, O)``, a transposed view of the weight as complex
    ``(O, C)``, or ``K^H (O, C)`` itself with ``adjoint``. A product with it is one GEMM over
    frequencies and batch together."""
    matrix = weight.reshape(weight.shape[0], -1).to(complex_dtype(weight.dtype))
    return matrix if adjoint else matrix.mT


def kernel_spectrum_adjoint(
    g: torch.Tensor, grid: tuple[int, int], kernel: tuple[int, int], shift: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """Adjoint of :func:`kernel_spectrum`: ``(bins, C, O)`` -> ``(O, C, kh, kw)`` (eq. 4),
    contiguous: ``Re(g^T conj(E))``, one real GEMM (:func:`kernel_taps`)."""
    return taps_as_weight(kernel_taps(g, grid, kernel, shift), g.shape[2], kernel)


def kernel_taps(
    g: torch.Tensor,
    grid: tuple[int, int],
    kernel: tuple[int, int],
    shift: tuple[int, int] = (0, 0),
    bins: slice = slice(None),
    out: torch.Tensor | None = None,
    add: bool = False,
) -> torch.Tensor:
    """:func:`kernel_spectrum_adjoint` of the frequencies ``bins`` that ``g`` holds (a
    tile's): the taps' gradient, real ``(O C, taps)``, written to ``out`` when given (the
    tile's rows of one buffer that is the weight's gradient: :func:`taps_as_weight` views
    it), added to it with ``add`` (the tiles of later frequencies).

    ``Re(g[f] conj(E[f])) = Re g[f] cos + Im g[f] sin``: one real GEMM of ``g``'s planes
    (a copy the size of ``g``, read as the weight is laid out) by ``E``'s ``[cos, sin]``
    planes, so no complex ``(O C, taps)`` is ever made."""
    count = g.shape[0]
    table = _planes(grid, tuple(kernel), tuple(shift), g.real.dtype, g.device, False)[bins]  # E: [cos, sin]
    pairs = torch.view_as_real(g.mT.resolve_conj().reshape(count, -1))  # (bins, O C, 2)
    planes = pairs.permute(0, 2, 1).reshape(2 * count, -1)  # rows (f, re | im)
    table = table.reshape(2 * count, -1)
    if out is None:
        return planes.T @ table
    return out.addmm_(planes.T, table) if add else torch.mm(planes.T, table, out=out)


def taps_as_weight(taps: torch.Tensor, out_channels: int, kernel: tuple[int, int]) -> torch.Tensor:
    """:func:`kernel_taps` -> a weight ``(O, C, kh, kw)`` (a view)."""
    return taps.view(out_channels, -1, *kernel)


@functools.lru_cache(maxsize=256)
def _phases(grid, kernel, shift, dtype, device) -> torch.Tensor:
    """``exp(-i angle)`` of the DFT angles, complex ``(bins, kh kw)`` in ``dtype``'s
    precision: row ``f``, column tap ``(i, j)`` holds the phase of tap ``(i + shift0, j +
    shift1)`` at frequency ``f`` (``conj(E)``; ``K^T = E w``)."""
    rows, cols = half_spectrum(grid)
    u = torch.arange(rows, dtype=torch.int64).view(rows, 1, 1, 1)
    v = torch.arange(cols, dtype=torch.int64).view(1, cols, 1, 1)
    i = torch.arange(kernel[0], dtype=torch.int64).view(1, 1, -1, 1) + shift[0]
    j = torch.arange(kernel[1], dtype=torch.int64).view(1, 1, 1, -1) + shift[1]
    # exact integer phases modulo the grid, so the angle stays in [0, 2 pi)
    turns = (u * i % grid[0]).double() / grid[0] + (v * j % grid[1]).double() / grid[1]
    angle = (2 * math.pi * turns).reshape(rows * cols, kernel[0] * kernel[1])
    with torch.inference_mode(False):  # a cached table must be usable by autograd later
        phases = snap_zeros(torch.polar(torch.ones_like(angle), -angle))
        return phases.to(dtype=complex_dtype(dtype), device=device)


@functools.lru_cache(maxsize=256)
def _planes(grid, kernel, shift, dtype, device, adjoint: bool) -> torch.Tensor:
    """:func:`_phases` as real planes ``(bins, 2, kh kw)``: ``[cos, sin]`` (``E``, for
    ``K``) or ``[cos, -sin]`` (``conj(E)``, for ``K^H``), in ``dtype``."""
    phases = _phases(grid, kernel, shift, dtype, device)
    with torch.inference_mode(False):
        planes = torch.view_as_real(phases if adjoint else phases.conj().resolve_conj())
        return planes.permute(0, 2, 1).contiguous()


def _span(size: int) -> tuple[int, ...]:
    return tuple(range(size))


def _positions(geom: BlockGeometry, axis: int) -> tuple[int, ...]:
    """The grid index each output index reads along ``axis``: ``(i * stride - offset) mod P``."""
    size, stride, offset = geom.grid[axis], geom.stride[axis], geom.offset[axis]
    return tuple((i * stride - offset) % size for i in range(geom.out[axis]))


def _crop_slices(geom: BlockGeometry, axis: int) -> list[tuple[slice, slice]]:
    """(grid slice, output slice) pairs along ``axis``: output index ``i`` reads circular
    grid index ``(i * stride - offset) mod P``, which is at most two strided runs."""
    size, stride, offset = geom.grid[axis], geom.stride[axis], geom.offset[axis] % geom.grid[axis]
    count = geom.out[axis]
    wrapped = min(-(-offset // stride), count)  # outputs that read before the grid's start
    runs = []
    if wrapped:
        start = size - offset
        runs.append((slice(start, start + (wrapped - 1) * stride + 1, stride), slice(0, wrapped)))
    if count > wrapped:
        start = wrapped * stride - offset
        runs.append((slice(start, start + (count - wrapped - 1) * stride + 1, stride), slice(wrapped, count)))
    return runs


def to_space(
    spectrum: torch.Tensor, geom: BlockGeometry, memory_format: torch.memory_format = torch.contiguous_format
) -> torch.Tensor:
    """Frequency-major half spectra ``(bins, N, C)`` -> the block's spatial output
    ``(N, C, H_out, W_out)``: inverse FFT, circular crop, stride, back to NCHW (laid out in
    ``memory_format``: channels-last in, channels-last out, as ``nn.Conv2d``).

    The result is a compact tensor of the output's size, not a view of the grid, so
    whatever later saves it holds only the output's bytes.
    """
    batch, channels = spectrum.shape[1:]
    if dft.use_gemm(spectrum, geom.grid):
        y = dft.synthesis(spectrum, geom.grid, _positions(geom, 0), _positions(geom, 1), mirrored=2.0)
        return y.contiguous(memory_format=memory_format)
    halves = spectrum.view(*geom.half, batch, channels)
    real = spectrum.real.dtype
    out = torch.empty(
        batch, channels, *geom.out, dtype=real, device=spectrum.device, memory_format=memory_format
    )
    for chunk in dft.channel_chunks(batch, channels, geom.grid):
        y = torch.fft.irfft2(halves[..., chunk].permute(2, 3, 0, 1), s=geom.grid, norm="ortho")
        for rows, out_rows in _crop_slices(geom, 0):
            for cols, out_cols in _crop_slices(geom, 1):
                out[:, chunk, out_rows, out_cols] = y[:, :, rows, cols]
    return out


def _place(r: torch.Tensor, geom: BlockGeometry, mirrored: float = 1.0) -> torch.Tensor:
    """Half spectra ``(bins, N, C)`` of a zero grid with ``r`` written where the crop reads,
    the columns a real inverse transform mirrors scaled by ``mirrored``."""
    batch, channels = r.shape[:2]
    if dft.use_gemm(r, geom.grid):
        return dft.analysis(r, geom.grid, _positions(geom, 0), _positions(geom, 1), mirrored)
    spectrum = r.new_empty(*geom.half, batch, channels, dtype=complex_dtype(r.dtype))
    for chunk in dft.channel_chunks(batch, channels, geom.grid):
        full = r.new_zeros(batch, chunk.stop - chunk.start, *geom.grid)
        for rows, out_rows in _crop_slices(geom, 0):
            for cols, out_cols in _crop_slices(geom, 1):
                full[:, :, rows, cols] = r[:, chunk, out_rows, out_cols]
        spectrum[..., chunk] = torch.fft.rfft2(full, norm="ortho").permute(2, 3, 0, 1)
    if mirrored != 1.0:
        scale_mirrored_(spectrum, geom.grid, mirrored)
    return spectrum.view(-1, batch, channels)


class _PlaceSpectrum(torch.autograd.Function):
    """:func:`place_spectrum` with its adjoint as backward (autograd's own would keep the grid)."""

    @staticmethod
    def forward(ctx, r: torch.Tensor, geom: BlockGeometry) -> torch.Tensor:
        ctx.geom = geom
        return _place(r, geom)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        geom = ctx.geom
        halved = scale_mirrored_(g.reshape(*geom.half, *g.shape[1:]).clone(), geom.grid, 0.5)
        return to_space(halved.view(g.shape), geom), None


def place_spectrum(r: torch.Tensor, geom: BlockGeometry) -> torch.Tensor:
    """Spatial maps ``(N, C, H_out, W_out)`` -> half spectra ``(bins, N, C)`` of a zero grid
    with ``r`` written where the block's crop reads, so that :func:`to_space` of
    ``Y + place_spectrum(r)`` is ``to_space(Y) + r`` (a residual added in the spectral
    domain). Differentiable; autograd keeps nothing for it."""
    return _PlaceSpectrum.apply(r, geom)


def to_space_adjoint(g: torch.Tensor, geom: BlockGeometry) -> torch.Tensor:
    """Adjoint of :func:`to_space`: ``(N, C, H_out, W_out)`` -> ``(bins, N, C)``."""
    return _place(g, geom, mirrored=2.0)


def crop_spectrum(spectrum: torch.Tensor, geom: BlockGeometry) -> torch.Tensor:
    """Half spectra ``(bins, N, C)`` on the block's grid -> the half spectra of its cropped,
    strided output, on a grid the output's size (``geom.of_output()``): what a strided
    layer's threshold and split tanh act on, ``stride**2`` times smaller than its grid."""
    return map_spectrum(to_space(spectrum, geom), geom.out)


def crop_spectrum_adjoint(g: torch.Tensor, geom: BlockGeometry) -> torch.Tensor:
    """Adjoint of :func:`crop_spectrum`: ``(out bins, N, C)`` -> ``(bins, N, C)``."""
    return to_space_adjoint(map_spectrum_adjoint(g, geom.out, geom.out), geom)


def bias_scale(grid: tuple[int, int]) -> float:
    """What a bias of 1 adds to the DC bin so that it adds 1 to every output pixel."""
    return float(grid[0] * grid[1]) ** 0.5


def spread(kernel: Sequence[int], dilation: Sequence[int]) -> tuple[int, int]:
    """A dilated kernel's extent: ``dilation * (kernel - 1) + 1`` along each axis."""
    return tuple(d * (k - 1) + 1 for d, k in zip(dilation, kernel))  # type: ignore[return-value]


def dense_weight(weight: torch.Tensor, dilation: tuple[int, int]) -> torch.Tensor:
    """A dilated ``nn.Conv2d`` weight ``(O, C / groups, kh, kw)`` as the spectral product
    reads it, ``(O, C / groups, dh (kh - 1) + 1, dw (kw - 1) + 1)``: zeros between the
    taps. ``weight`` itself when not dilated. Groups stay apart: each is its own product
    (:mod:`spectriton.grouped`), never a block-diagonal weight."""
    if tuple(dilation) == (1, 1):
        return weight
    (dh, dw), (out_channels, per_group, kh, kw) = dilation, weight.shape
    dense = weight.new_zeros(out_channels, per_group, *spread((kh, kw), dilation))
    dense[:, :, ::dh, ::dw] = weight
    return dense


def dense_weight_adjoint(grad: torch.Tensor, dilation: tuple[int, int]) -> torch.Tensor:
    """Adjoint of :func:`dense_weight`: the gradient of the dilated weight from the gradient
    of the dense one (its entries on the taps)."""
    if tuple(dilation) == (1, 1):
        return grad
    dh, dw = dilation
    return grad[:, :, ::dh, ::dw].contiguous()
