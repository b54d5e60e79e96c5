"""The spectral block's ops, registered with ``torch.library``.

- ``spectriton::layer``: product with a kernel spectrum, threshold (fixed, or a density
  budget's quantile), split tanh and compaction. Returns the packed values, bitmask and
  offsets of a :class:`~spectriton.compressed.CompressedSpectrum`, and the threshold used.
- ``spectriton::output``: compressed spectrum -> spatial output (inverse FFT, crop, stride).
- ``spectriton::layer_backward`` and ``spectriton::output_backward``: their gradients.

Each op has a fake implementation, so ``torch.compile`` captures a spectral model as one
graph: the number of kept entries is data-dependent and the fake ``layer`` declares it as a
new dynamic size. The ops themselves stay opaque to the compiler; on CUDA the Triton
kernels run inside them (:mod:`spectriton.backend` picks them at each call).

The autograd formulas save only what DESIGN.md section 3 allows, through
``ctx.save_for_backward``: a layer keeps its weight, its sources (the block's spatial input,
or that input's recipe when an earlier block made it, or an earlier layer's compressed
output, whose storages count once), its output's mask and offsets, and its values when
split tanh needs them; the output op keeps the mask, and the values and offsets a split
tanh layer keeps anyway (so that a later block can rebuild its input from them).
"""

import math
from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor

from spectriton import transforms
from spectriton.backend import ops
from spectriton.compressed import CompressedSpectrum, kept_positions, mask_words, unpack_bits
from spectriton.geometry import BlockGeometry
from spectriton.nvtx import annotate
from spectriton.pooling import window_values
from spectriton.reference import unpack

NORM_EPS = 1e-5  # added to a normalised layer's variance, as nn.BatchNorm2d's eps


@dataclass(frozen=True)
class LayerConfig:
    """What one layer needs besides tensors.

    A layer reads one or more sources (several in a dense block); ``channels[s]`` and
    ``shifts[s]`` give each source's channel count and kernel shift. ``density``, when set,
    replaces ``beta`` by the threshold that keeps that fraction of the product's entries.
    ``crop`` (a strided layer: the ``offset``, ``full`` and ``stride`` pairs of its block's
    crop, else empty): the threshold and split tanh act on the spectrum of the layer's
    cropped, strided output, on a grid the output's size (``out_grid``), so that the layer
    keeps what its output needs, not a spectrum on its input's grid ``stride**2`` times larger.
    """

    grid: tuple[int, int]
    size: tuple[int, int]
    batch: int
    kernel: tuple[int, int]
    beta: float
    activation: bool
    value_dtype: torch.dtype | None
    channels: tuple[int, ...]
    shifts: tuple[tuple[int, int], ...]
    density: float | None = None
    groups: int = 1
    dilation: tuple[int, int] = (1, 1)
    crop: tuple[int, ...] = ()

    def describe(self, weight: Tensor) -> str:
        """A short label for profiler ranges, e.g. ``64->128 3x3 grid 34x34``."""
        kernel, grid = "x".join(map(str, self.kernel)), "x".join(map(str, self.grid))
        return f"{weight.shape[1] * self.groups}->{weight.shape[0]} {kernel} grid {grid}"

    @property
    def cropped(self) -> BlockGeometry | None:
        """The block geometry a strided layer's output is cropped with (None: not strided)."""
        return _cropped(self.grid, self.size, self.crop)

    @property
    def out_grid(self) -> tuple[int, int]:
        """The grid of the layer's output spectrum: the block's, or a strided layer's output."""
        return _out_grid(self.grid, self.size, self.crop)

    def op_args(self) -> tuple:
        """The config as the ops' trailing arguments (see :func:`_config`)."""
        shifts = [s for shift in self.shifts for s in shift]
        return (
            list(self.grid), list(self.size), self.batch, list(self.channels), shifts,
            self.beta, self.activation, self.value_dtype, self.density, self.groups, list(self.dilation),
            list(self.crop),
        )  # fmt: skip


def _cropped(grid, size, crop) -> BlockGeometry | None:
    if not crop:
        return None
    offset, full, stride = (tuple(crop[i : i + 2]) for i in range(0, 6, 2))
    return BlockGeometry(tuple(size), tuple(grid), offset, full, stride)  # type: ignore[arg-type]


def _out_grid(grid, size, crop) -> tuple[int, int]:
    cropped = _cropped(grid, size, crop)
    return tuple(grid) if cropped is None else cropped.out  # type: ignore[return-value]


def _config(*args) -> LayerConfig:
    """:class:`LayerConfig` back from ``weight`` and :meth:`LayerConfig.op_args`."""
    weight, grid, size, batch, channels, shifts, beta, activation, value_dtype, density, groups, dilation = (
        args[:12]
    )
    return LayerConfig(
        grid=tuple(grid),
        size=tuple(size),
        batch=batch,
        kernel=transforms.spread(weight.shape[2:], dilation),
        beta=beta,
        activation=activation,
        value_dtype=value_dtype,
        channels=tuple(channels),
        shifts=tuple(zip(shifts[::2], shifts[1::2])),
        density=density,
        groups=groups,
        dilation=tuple(dilation),
        crop=tuple(args[12]),
    )


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32 (half precisions compute in float32)."""
    double = any(t is not None and t.dtype == torch.float64 for t in tensors)
    return torch.float64 if double else torch.float32


def _exact(device: torch.device):
    """Autocast off: spectra and kernel spectra are computed in float32 (or float64) however
    the caller autocasts (the DFT matmuls would otherwise round to bfloat16)."""
    return torch.autocast(device_type=device.type, enabled=False)


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


def _dc_real(spectrum: CompressedSpectrum | Tensor, batch: int, channels: int) -> Tensor:
    """Real part of each map's DC entry (zero where it was not kept), ``(batch, channels)``."""
    if not isinstance(spectrum, CompressedSpectrum):
        return spectrum[0].real
    first = batch * channels  # the DC frequency is the stream's first batch x channels entries
    dc = spectrum.values.new_zeros(first)
    dc[unpack_bits(spectrum.mask, first)] = spectrum.values[: int(spectrum.offsets[1]), 0]
    return dc.view(batch, channels)


def _layer_input(inputs, mask, offsets, batch, channels, grid, real) -> CompressedSpectrum | Tensor:
    """A layer's input spectrum: the FFT of a spatial batch (dense, frequency-major), or a
    compressed layer output."""
    if mask is None:
        return transforms.map_spectrum(inputs.to(real), grid)
    return CompressedSpectrum._trusted(inputs, mask, offsets, batch, channels, grid)


# ---------------------------------------------------------------------------------------
# spectriton::layer


def _fused_forward(backend, weight, bias, cfg, real, inputs, mask, offsets) -> CompressedSpectrum:
    """One source at a fixed beta: the product with the threshold in its epilogue."""
    spectrum_in = _layer_input(inputs, mask, offsets, cfg.batch, cfg.channels[0], cfg.grid, real)
    kernel = transforms.kernel_spectrum(weight.to(real), cfg.grid, cfg.shifts[0])
    bias_dc = None if bias is None else bias.to(real) * transforms.bias_scale(cfg.grid)
    return backend.product_threshold(
        spectrum_in, kernel, bias_dc, cfg.beta, cfg.activation, cfg.value_dtype, cfg.grid
    )


def _summed_forward(
    backend, weight, bias, cfg, real, sources, moments, affine, residual
) -> tuple[CompressedSpectrum, Tensor | float, Tensor]:
    """Several sources (a dense block), a density budget, a normalised layer, a residual or
    a stride: the dense product first (cropped to a strided layer's output). With
    ``moments`` (see :func:`layer`), the product is normalised per channel (and scaled and
    shifted by ``affine``), then ``residual`` is added; returns the compressed output, the
    threshold used and the batch's moments."""
    product = _dense_product(backend, weight, bias, cfg, real, sources)
    if cfg.cropped is not None:
        product = transforms.crop_spectrum(product, cfg.cropped)
    batch_moments = product.real.new_empty(0)
    if moments is not None:
        batch_moments = channel_moments(product, cfg.out_grid)
        _normalise_(product, moments_used(moments, batch_moments), cfg.out_grid)
    if affine is not None:
        _scale_shift_(product, affine, cfg.out_grid)
    if residual is not None:
        product.add_(residual.to(product.dtype))
    beta = cfg.beta if cfg.density is None else density_threshold(product, cfg.density)
    out = backend.threshold_compact(product, beta, cfg.activation, cfg.value_dtype, cfg.out_grid)
    return out, beta, batch_moments


def _dense_product(backend, weight, bias, cfg, real, sources) -> Tensor:
    """The layer's product spectrum ``(bins, N, O)``, summed over its sources."""
    product, start = None, 0
    for (inputs, mask, offsets), channels, shift in zip(sources, cfg.channels, cfg.shifts):
        spectrum_in = _layer_input(inputs, mask, offsets, cfg.batch, channels, cfg.grid, real)
        kernel = transforms.kernel_spectrum(weight[:, start : start + channels].to(real), cfg.grid, shift)
        bias_dc = None
        if bias is not None and product is None:
            bias_dc = bias.to(real) * transforms.bias_scale(cfg.grid)
        part = backend.grouped_product(spectrum_in, kernel, bias_dc, cfg.groups)
        product = part if product is None else product.add_(part)
        start += channels
    return product


def _scale_shift_(product: Tensor, affine: Tensor, grid: tuple[int, int]) -> None:
    """BatchNorm's affine step on a normalised product, in place: each channel scaled by
    ``affine[0]``, ``affine[1]`` added to every pixel (to the DC bin)."""
    product.mul_(affine[0].to(product.real.dtype))
    product[0] += (affine[1] * transforms.bias_scale(grid)).to(product.real.dtype)


def _normalise_(product: Tensor, moments: Tensor, grid: tuple[int, int]) -> None:
    """Centre each channel of ``product`` (its DC bin) and divide it by its standard
    deviation, from its ``moments`` (``(2, O)``), in place."""
    product[0] -= (moments[0] * transforms.bias_scale(grid)).to(product.real.dtype)
    product.mul_(moments_scale(moments).to(product.real.dtype))


def channel_moments(product: Tensor, grid: tuple[int, int]) -> Tensor:
    """Mean and mean square of each channel's maps on the grid, from their half spectra
    ``(bins, N, O)``: the mean from the DC bin, the mean square by Parseval (mirrored
    columns count twice). Float32 ``(2, O)``."""
    magnitude = (product.real.square() + product.imag.square()).view(
        *transforms.half(grid), *product.shape[1:]
    )
    power = transforms.scale_mirrored_(magnitude, grid, 2.0).sum((0, 1, 2)) / (
        grid[0] * grid[1] * product.shape[1]
    )
    mean = product[0].real.mean(0) / transforms.bias_scale(grid)
    return torch.stack([mean, power]).float()


def moments_used(moments: Tensor, batch_moments: Tensor) -> Tensor:
    """The moments a normalised layer uses: ``moments`` where calibrated, the batch's where NaN."""
    return torch.where(torch.isnan(moments), batch_moments, moments)


def moments_scale(moments: Tensor) -> Tensor:
    """A normalised layer's per-channel factor, ``rsqrt(variance + eps)``, from its moments."""
    mean, power = moments
    return torch.rsqrt((power - mean.square()).clamp(min=0) + NORM_EPS)


@torch.library.custom_op("spectriton::layer", mutates_args=())
def layer(
    weight: Tensor,
    bias: Optional[Tensor],
    inputs: list[Tensor],
    masks: list[Optional[Tensor]],
    offsets: list[Optional[Tensor]],
    grid: list[int],
    size: list[int],
    batch: int,
    channels: list[int],
    shifts: list[int],
    beta: float,
    activation: bool,
    value_dtype: Optional[torch.dtype],
    density: Optional[float],
    groups: int,
    dilation: list[int],
    crop: list[int],
    running: Optional[Tensor],
    moments: Optional[Tensor],
    affine: Optional[Tensor],
    residual: Optional[Tensor],
    rebuild: list[Tensor],
    rebuild_args: list[int],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One layer on the spectral grid; returns ``(values, mask, offsets, threshold, moments)``.

    Each source is ``(inputs[s], masks[s], offsets[s])``: a spatial batch (mask None) or an
    earlier layer's compressed output. ``weight`` is shaped as ``nn.Conv2d``'s with
    ``groups`` and ``dilation``. ``running``, when given and calibrated (not NaN),
    is the threshold to use instead of the density budget's quantile (eval mode).
    ``moments``, when given (``(2, O)``: each channel's mean and mean square on the grid),
    normalises the layer as BatchNorm does: each output channel's mean is taken from its DC
    bin and its product divided by its standard deviation before the threshold, using
    ``moments`` where calibrated, the batch's where NaN; the batch's moments are returned
    (else empty). ``affine`` (``(2, O)``, with ``moments`` only) then scales each channel by
    ``affine[0]`` and adds ``affine[1]`` to it, as BatchNorm's weight and bias do.
    ``residual``, a dense complex ``(bins, N, O)`` spectrum on the output's grid, is added
    after that (a residual connection, whose sum the threshold and split tanh then act on).
    ``crop`` (a strided layer, see :class:`LayerConfig`) puts the output on a grid of the
    layer's output size.
    ``rebuild`` and ``rebuild_args``, when not empty, are the recipe of the spatial source
    ``inputs[0]`` (:mod:`spectriton.provenance`): backward keeps them instead of it.
    """
    cfg = _config(
        weight, grid, size, batch, channels, shifts, beta, activation, value_dtype, density, groups, dilation,
        crop,
    )  # fmt: skip
    if running is not None:
        calibrated = float(running)  # one host read, as sizing the values needs anyway
        if not math.isnan(calibrated):
            cfg = replace(cfg, beta=calibrated, density=None)
    weight = transforms.dense_weight(weight, dilation)
    with annotate(lambda: f"layer.forward {cfg.describe(weight)}"), _exact(weight.device):
        backend = ops(weight.device)
        real = compute_dtype(weight, *inputs)
        sources = list(zip(inputs, masks, offsets))
        fused = not cfg.crop and cfg.density is None and moments is None and residual is None and groups == 1
        if len(sources) == 1 and fused:
            out, used = _fused_forward(backend, weight, bias, cfg, real, *sources[0]), cfg.beta
            batch_moments = weight.new_empty(0, dtype=torch.float32)
        else:
            out, used, batch_moments = _summed_forward(
                backend, weight, bias, cfg, real, sources, moments, affine, residual
            )
    threshold = torch.as_tensor(used, dtype=torch.float64, device=weight.device).clone()
    return out.values, out.mask, out.offsets, threshold, batch_moments


@layer.register_fake
def _(weight, bias, inputs, masks, offsets, grid, size, batch, channels, shifts, beta, activation,
      value_dtype, density, groups, dilation, crop, running, moments, affine, residual, rebuild,
      rebuild_args):  # fmt: skip
    out_channels, bins = weight.shape[0], math.prod(transforms.half(_out_grid(grid, size, crop)))
    nnz = torch.library.get_ctx().new_dynamic_size()
    real = compute_dtype(weight, *inputs)
    values = weight.new_empty(nnz, 2, dtype=value_dtype or real)
    mask = weight.new_empty(mask_words(batch * out_channels * bins), dtype=torch.int32)
    return (
        values,
        mask,
        weight.new_empty(bins + 1, dtype=torch.int64),
        weight.new_empty((), dtype=torch.float64),
        weight.new_empty((0,) if moments is None else (2, out_channels), dtype=torch.float32),
    )


def _setup_layer(ctx, inputs, output) -> None:
    (
        weight,
        bias,
        sources,
        masks,
        offsets,
        *config,
        _running,
        moments,
        affine,
        residual,
        rebuild,
        rebuild_args,
    ) = inputs
    values, mask, out_offsets, _, batch_moments = output
    ctx.config, ctx.has_bias, ctx.sources = config, bias is not None, len(sources)
    ctx.residual = residual is not None
    used = None if moments is None else moments_used(moments, batch_moments)
    ctx.rebuild = (rebuild_args, sources[0].dtype)
    if rebuild:
        sources = [None, *sources[1:]]  # kept as its recipe
    keep = values if _config(weight, *config).activation else None  # split tanh's derivative reads them
    ctx.save_for_backward(
        weight, bias, keep, mask, out_offsets, used, affine, *sources, *masks, *offsets, *rebuild
    )


def _layer_grad(ctx, grad_values, _grad_mask, _grad_offsets, _grad_threshold, _grad_moments):
    weight, bias, values, mask, out_offsets, moments, affine, *saved = ctx.saved_tensors
    count, (rebuild_args, dtype) = ctx.sources, ctx.rebuild
    sources, masks = saved[:count], saved[count : 2 * count]
    offsets, rebuild = saved[2 * count : 3 * count], saved[3 * count :]
    if rebuild:  # the spatial source was kept as its recipe
        sources[0] = rebuild_input(rebuild, rebuild_args, dtype)
    wanted = ctx.needs_input_grad
    needs = [wanted[0], ctx.has_bias and wanted[1], *wanted[2], ctx.residual and wanted[20], wanted[19]]
    grads = layer_backward(
        grad_values,
        weight,
        bias,
        values,
        mask,
        out_offsets,
        sources,
        masks,
        offsets,
        *ctx.config,
        moments,
        affine,
        needs,
    )
    grads = [g if need else None for g, need in zip(grads, needs)]
    config = [_no_grads(arg) if isinstance(arg, list) and not arg else None for arg in ctx.config]
    rest = [
        _no_grads(masks),
        _no_grads(offsets),
        *config,
        None,  # running
        None,  # moments
        grads[-1],  # affine
        grads[-2],  # residual
        _no_grads(rebuild),
        _no_grads(rebuild_args),
    ]
    return grads[0], grads[1], grads[2:-2], *rest


def _no_grads(items: list) -> list | None:
    """The gradient of a non-differentiable list argument, shaped as autograd flattened it:
    a list of Nones for a list of tensors (or an empty list), one None for any other list."""
    return [None] * len(items) if all(isinstance(t, Tensor) for t in items) else None


layer.register_autograd(_layer_grad, setup_context=_setup_layer)


# ---------------------------------------------------------------------------------------
# spectriton::layer_backward


@torch.library.custom_op("spectriton::layer_backward", mutates_args=())
def layer_backward(
    grad_values: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    values: Optional[Tensor],
    out_mask: Tensor,
    out_offsets: Tensor,
    inputs: list[Tensor],
    masks: list[Optional[Tensor]],
    offsets: list[Optional[Tensor]],
    grid: list[int],
    size: list[int],
    batch: int,
    channels: list[int],
    shifts: list[int],
    beta: float,
    activation: bool,
    value_dtype: Optional[torch.dtype],
    density: Optional[float],
    groups: int,
    dilation: list[int],
    crop: list[int],
    moments: Optional[Tensor],
    affine: Optional[Tensor],
    needs: list[bool],
) -> list[Tensor]:
    """Gradients of :func:`layer`: ``[weight, bias, *inputs, residual, affine]``, each empty
    where ``needs`` (same order) says it is not wanted. ``moments`` are those a normalised
    layer used."""
    cfg = _config(
        weight, grid, size, batch, channels, shifts, beta, activation, value_dtype, density, groups, dilation,
        crop,
    )  # fmt: skip
    with annotate(lambda: f"layer.backward {cfg.describe(weight)}"), _exact(weight.device):
        return _layer_backward(
            cfg, needs, grad_values, weight, bias, values, out_mask, out_offsets, inputs, masks, offsets,
            moments, affine,
        )  # fmt: skip


def _layer_backward(
    cfg,
    needs,
    grad_values,
    grouped,
    bias,
    values,
    out_mask,
    out_offsets,
    inputs,
    masks,
    offsets,
    moments,
    affine,
):
    weight = transforms.dense_weight(grouped, cfg.dilation)
    backend, real = ops(weight.device), compute_dtype(weight, *inputs)
    if cfg.activation:
        grad_values = backend.activation_backward(values, grad_values)
    out_channels = weight.shape[0]
    grad_residual = weight.new_empty(0)
    if needs[-2]:  # the residual was added as it is: its gradient is the sum's, dense
        summed = CompressedSpectrum._trusted(
            grad_values.to(real), out_mask, out_offsets, cfg.batch, out_channels, cfg.out_grid
        )
        grad_residual = unpack(summed)
    scale = None if affine is None else affine[0].to(real)  # BatchNorm's weight, per output channel
    wants_affine = affine is not None and needs[-1]
    if moments is not None:  # scaled by channel: the kept entries' channels, read off the mask
        numel = math.prod(transforms.half(cfg.out_grid)) * cfg.batch * out_channels
        positions = kept_positions(out_mask, numel)
        channel = positions % out_channels
        if wants_affine:  # the real parts at the DC entries (frequency 0 comes first), per channel
            is_dc = (positions < cfg.batch * out_channels).to(real)
            dc = torch.zeros(out_channels, dtype=real, device=weight.device)
            dc.index_add_(0, channel, grad_values[:, 0].to(real) * is_dc)
        grad_values = grad_values * moments_scale(moments)[channel].unsqueeze(1).to(grad_values.dtype)
    grad_out = CompressedSpectrum._trusted(
        grad_values.to(real), out_mask, out_offsets, cfg.batch, out_channels, cfg.out_grid
    )
    if cfg.cropped is not None:  # back from the output's grid to the block's, dense
        grad_out = transforms.crop_spectrum_adjoint(backend.unpack(grad_out), cfg.cropped)
    grad_out = backend.operand(grad_out)  # converted once, read by every product below
    grad_sources, grad_kernels, start = [], [], 0
    inner = torch.zeros(out_channels, dtype=real, device=weight.device)  # <grad_out, product> per channel
    for index, (source, mask, offset, channels, shift) in enumerate(
        zip(inputs, masks, offsets, cfg.channels, cfg.shifts)
    ):
        spectrum_in = None  # the FFT of a spatial input only when the kernel gradient needs it
        if mask is not None or needs[0] or wants_affine:
            spectrum_in = _layer_input(source, mask, offset, cfg.batch, channels, cfg.grid, real)
        part = weight[:, start : start + channels].to(real)
        start += channels
        kernel = None
        if needs[2 + index] or (wants_affine and not needs[0]):  # else the affine reads the taps
            kernel = transforms.kernel_spectrum(part, cfg.grid, shift, adjoint=True)
        grad_source = source.new_empty(0)
        if needs[2 + index]:
            scaled = kernel if scale is None else kernel * scale.view(1, -1, 1)
            if mask is None:
                grad_spectrum = backend.grouped_product_input_grad(grad_out, scaled, None, cfg.groups)
                grad_source = transforms.map_spectrum_adjoint(grad_spectrum, cfg.grid, cfg.size)
            else:
                grad_source = backend.grouped_product_input_grad(grad_out, scaled, spectrum_in, cfg.groups)
            grad_source = grad_source.to(source.dtype)
        grad_sources.append(grad_source)
        if needs[0] or wants_affine:
            grad_kernel = backend.grouped_product_weight_grad(
                backend.operand(spectrum_in), grad_out, cfg.groups
            )
            taps = None
            if needs[0]:
                taps = transforms.kernel_spectrum_adjoint(grad_kernel, cfg.grid, cfg.kernel, shift)
                grad_kernels.append(taps)
            if wants_affine:  # <G, X K> = Re sum K^H (X^H G): no product needed again
                if taps is not None:  # = <w, adjoint of that>, per output channel: taps already made
                    inner += (taps * part).sum((1, 2, 3))
                else:
                    inner += torch.einsum("foc,fco->o", kernel, grad_kernel).real
    grad_weight = weight.new_empty(0)
    if needs[0]:
        grad_weight = grad_kernels[0] if len(grad_kernels) == 1 else torch.cat(grad_kernels, dim=1)
        if scale is not None:
            grad_weight = grad_weight * scale.view(-1, 1, 1, 1)
        grad_weight = transforms.dense_weight_adjoint(grad_weight.to(weight.dtype), cfg.dilation)
    grad_bias = weight.new_empty(0)
    if needs[1] or (wants_affine and bias is not None):  # the bias's gradient before the scale
        dc_grid = _dc_real(grad_out, cfg.batch, out_channels).sum(0) * transforms.bias_scale(cfg.grid)
        inner += 0 if bias is None else bias.to(real) * dc_grid
        grad_bias = (dc_grid if scale is None else dc_grid * scale).to(weight.dtype)
    grad_affine = weight.new_empty(0)
    if wants_affine:
        grad_affine = _affine_grad(inner, dc, moments, cfg.out_grid).to(affine.dtype)
    return [grad_weight, grad_bias, *grad_sources, grad_residual, grad_affine]


def _affine_grad(inner: Tensor, dc: Tensor, moments: Tensor, grid: tuple[int, int]) -> Tensor:
    """Gradient of a normalised layer's ``affine`` ``(2, O)`` (BatchNorm's weight and bias).

    The weight's is the inner product of the gradient at the kept entries, ``G``, with the
    normalised product ``r (Y - mean)``: ``inner`` is ``<r G, Y>`` per channel (from the
    kernel gradient and the bias, so ``Y`` is not computed again) and ``dc`` the sum of
    ``G``'s real parts at the DC entries, which the mean and the bias touch.
    """
    r = moments_scale(moments).to(inner.dtype)
    bias_scale = transforms.bias_scale(grid)
    return torch.stack([inner - moments[0].to(inner.dtype) * bias_scale * r * dc, bias_scale * dc])


@layer_backward.register_fake
def _(grad_values, weight, bias, values, out_mask, out_offsets, inputs, masks, offsets, grid, size, batch,
      channels, shifts, beta, activation, value_dtype, density, groups, dilation, crop, moments, affine,
      needs):  # fmt: skip
    bins = math.prod(transforms.half(_out_grid(grid, size, crop)))
    complex_dtype = torch.complex128 if compute_dtype(weight, *inputs) == torch.float64 else torch.complex64
    residual = weight.new_empty(bins, batch, weight.shape[0], dtype=complex_dtype)
    affine_like = weight.new_empty(2, weight.shape[0]) if affine is None else affine
    likes = [weight, weight.new_empty(weight.shape[0]), *inputs, residual, affine_like]
    return [torch.empty_like(like) if need else like.new_empty(0) for like, need in zip(likes, needs)]


# ---------------------------------------------------------------------------------------
# spectriton::output and spectriton::output_backward


def geometry_args(geom: BlockGeometry) -> list[int]:
    """A block geometry as the output ops' ``geometry`` argument."""
    return [*geom.size, *geom.grid, *geom.offset, *geom.full, *geom.stride]


def _geometry(args: list[int]) -> BlockGeometry:
    pairs = [tuple(args[i : i + 2]) for i in range(0, 10, 2)]
    return BlockGeometry(*pairs)


@torch.library.custom_op("spectriton::output", mutates_args=())
def output(
    values: Tensor,
    mask: Tensor,
    offsets: Tensor,
    batch: int,
    channels: int,
    geometry: list[int],
    dtype: torch.dtype,
    channels_last: bool,
    keep_values: bool,
) -> Tensor:
    """Compressed spectrum -> spatial output ``(batch, channels, *out)`` in ``dtype``: inverse
    FFT, circular crop, stride (laid out channels-last when asked).

    Backward needs only the mask. With ``keep_values`` (set where a split tanh layer keeps
    the values anyway: the same storage, counted once) the op keeps the values and offsets
    too, so that a later block can rebuild this output from them (:mod:`spectriton.provenance`).
    """
    geom = _geometry(geometry)
    spectrum = CompressedSpectrum._trusted(values, mask, offsets, batch, channels, geom.grid)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with annotate("output.forward"):
        return transforms.to_space(ops(values.device).unpack(spectrum), geom, fmt).to(dtype)


def mark_nonfinite(y: Tensor, nonfinite: Tensor) -> Tensor:
    """``y`` with the samples where ``nonfinite`` is set made NaN (an addition: nothing is
    saved for it)."""
    return y + torch.where(nonfinite, float("nan"), 0.0).to(y.dtype).view(-1, 1, 1, 1)


def rebuild_input(tensors: list[Tensor], args: list[int], dtype: torch.dtype) -> Tensor:
    """A block input again from its recipe (:class:`spectriton.provenance.Recipe`): the
    earlier block's output, NaN where that block's input was not finite, max-pooled by
    window index when a pool followed. Bitwise the tensor the forward read."""
    values, mask, offsets, nonfinite, *index = tensors
    batch, channels, *geometry, channels_last, kh, kw, sh, sw, ph, pw = args
    y = output(values, mask, offsets, batch, channels, geometry, dtype, bool(channels_last), False)
    y = mark_nonfinite(y, nonfinite)
    return window_values(y, index[0], (kh, kw), (sh, sw), (ph, pw)) if index else y


@output.register_fake
def _(values, mask, offsets, batch, channels, geometry, dtype, channels_last, keep_values):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = _geometry(geometry).out
    return torch.empty(batch, channels, *out, dtype=dtype, device=values.device, memory_format=fmt)


def _setup_output(ctx, inputs, output) -> None:
    values, mask, offsets, batch, channels, geometry, _dtype, _channels_last, keep_values = inputs
    ctx.save_for_backward(mask, *([values, offsets] if keep_values else []))
    ctx.nnz, ctx.real, ctx.shape = values.shape[0], compute_dtype(values), (batch, channels, geometry)


def _output_grad(ctx, grad_y):
    mask = ctx.saved_tensors[0]
    grad_values = output_backward(grad_y, mask, ctx.nnz, *ctx.shape, ctx.real)
    return grad_values, None, None, None, None, None, None, None, None


output.register_autograd(_output_grad, setup_context=_setup_output)


@torch.library.custom_op("spectriton::output_backward", mutates_args=())
def output_backward(
    grad_y: Tensor, mask: Tensor, nnz: int, batch: int, channels: int, geometry: list[int], real: torch.dtype
) -> Tensor:
    """Gradient of :func:`output` with respect to the packed values ``(nnz, 2)``."""
    with annotate("output.backward"):
        grad_spectrum = transforms.to_space_adjoint(grad_y.to(real), _geometry(geometry))
        return ops(mask.device).pack(grad_spectrum, mask, nnz)


@output_backward.register_fake
def _(grad_y, mask, nnz, batch, channels, geometry, real):
    return grad_y.new_empty(nnz, 2, dtype=real)
