"""Autograd functions of a spectral block, and the functional API built on them.

A block is ``FFT -> [product -> threshold -> split tanh] x n -> IFFT -> crop``. Between
layers the spectrum flows compressed: each layer is one autograd function whose output is
the packed values (differentiable) plus the bitmask and offsets of a
:class:`~spectriton.compressed.CompressedSpectrum`, and whose saved tensors are only

- its input: the block's spatial input (first layer) or the previous layer's compressed
  output (the same storages that layer saved, so they count once);
- its compressed output's mask and offsets, and its values when split tanh needs them;
- its weight (a parameter).

Gradients between layers flow packed too. The heavy ops come from :mod:`spectriton.backend`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from spectriton import _checks, transforms
from spectriton.backend import ops
from spectriton.compressed import CompressedSpectrum, unpack_bits
from spectriton.geometry import BlockGeometry, LayerShape, block_geometry
from spectriton.nvtx import annotate


@dataclass(frozen=True)
class LayerConfig:
    """What one layer's autograd function needs besides tensors.

    A layer reads one or more sources (several in a dense block); ``channels[s]`` and
    ``shifts[s]`` give each source's channel count and kernel shift. ``density``, when set,
    replaces ``beta`` by the threshold that keeps that fraction of the product's entries.
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

    def describe(self, weight: torch.Tensor) -> str:
        """A short label for profiler ranges, e.g. ``64->128 3x3 grid 34x34``."""
        kernel, grid = "x".join(map(str, self.kernel)), "x".join(map(str, self.grid))
        return f"{weight.shape[1]}->{weight.shape[0]} {kernel} grid {grid}"


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32 (half precisions compute in float32)."""
    double = any(t is not None and t.dtype == torch.float64 for t in tensors)
    return torch.float64 if double else torch.float32


def _dc_real(spectrum: CompressedSpectrum | torch.Tensor, batch: int, channels: int) -> torch.Tensor:
    """Real part of each map's DC entry (zero where it was not kept), ``(batch, channels)``."""
    if not isinstance(spectrum, CompressedSpectrum):
        return spectrum[0].real
    first = batch * channels  # the DC frequency is the stream's first batch x channels entries
    dc = spectrum.values.new_zeros(first)
    dc[unpack_bits(spectrum.mask, first)] = spectrum.values[: int(spectrum.offsets[1]), 0]
    return dc.view(batch, channels)


def density_threshold(spectrum: torch.Tensor, density: float, sample: int = 1 << 16) -> torch.Tensor | float:
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


def _exact(device: torch.device):
    """Autocast off: spectra and kernel spectra are computed in float32 (or float64) however
    the caller autocasts (the DFT matmuls would otherwise round to bfloat16)."""
    return torch.autocast(device_type=device.type, enabled=False)


def _sources(tensors: tuple) -> list[tuple]:
    return [tensors[i : i + 3] for i in range(0, len(tensors), 3)]


def _layer_input(inputs, mask, offsets, batch, channels, grid, real) -> CompressedSpectrum | torch.Tensor:
    """A layer's input spectrum: the FFT of a spatial batch (dense, frequency-major), or a
    compressed layer output."""
    if mask is None:
        return transforms.map_spectrum(inputs.to(real), grid)
    return CompressedSpectrum._trusted(inputs, mask, offsets, batch, channels, grid)


class SpectralLayerFunction(torch.autograd.Function):
    """One convolution + threshold (+ split tanh) layer on the spectral grid.

    Arguments: ``weight, bias, cfg`` then ``(inputs, mask, offsets)`` per source, where a
    source is a spatial batch (``mask`` and ``offsets`` None: the block's input) or the
    packed values, mask and offsets of an earlier layer's output. Returns the packed
    values, mask and offsets of this layer's output, and the threshold it used.
    """

    @staticmethod
    def forward(ctx, weight, bias, cfg: LayerConfig, *sources):
        with annotate(lambda: f"layer.forward {cfg.describe(weight)}"), _exact(weight.device):
            return SpectralLayerFunction._forward(ctx, weight, bias, cfg, *sources)

    @staticmethod
    def _forward(ctx, weight, bias, cfg: LayerConfig, *sources):
        backend = ops(weight.device)
        real = _compute_dtype(weight, *sources[::3])
        if len(cfg.channels) == 1 and cfg.density is None:
            out = SpectralLayerFunction._fused_forward(backend, weight, bias, cfg, real, *sources)
            beta = cfg.beta
        else:
            out, beta = SpectralLayerFunction._summed_forward(backend, weight, bias, cfg, real, *sources)
        ctx.save_for_backward(weight, out.values if cfg.activation else None, out.mask, out.offsets, *sources)
        ctx.cfg, ctx.real, ctx.has_bias = cfg, real, bias is not None
        on_device = [beta] if isinstance(beta, torch.Tensor) else []
        ctx.mark_non_differentiable(out.mask, out.offsets, *on_device)
        return out.values, out.mask, out.offsets, beta

    @staticmethod
    def _fused_forward(backend, weight, bias, cfg, real, inputs, mask, offsets) -> CompressedSpectrum:
        """One source at a fixed beta: the product with the threshold in its epilogue."""
        spectrum_in = _layer_input(inputs, mask, offsets, cfg.batch, cfg.channels[0], cfg.grid, real)
        kernel = transforms.kernel_spectrum(weight.to(real), cfg.grid, cfg.shifts[0])
        bias_dc = None if bias is None else bias.to(real) * transforms.bias_scale(cfg.grid)
        return backend.product_threshold(
            spectrum_in, kernel, bias_dc, cfg.beta, cfg.activation, cfg.value_dtype, cfg.grid
        )

    @staticmethod
    def _summed_forward(backend, weight, bias, cfg, real, *sources):
        """Several sources (a dense block) or a density budget: the dense product first."""
        product, start = None, 0
        for (inputs, mask, offsets), channels, shift in zip(_sources(sources), cfg.channels, cfg.shifts):
            spectrum_in = _layer_input(inputs, mask, offsets, cfg.batch, channels, cfg.grid, real)
            kernel = transforms.kernel_spectrum(weight[:, start : start + channels].to(real), cfg.grid, shift)
            bias_dc = None
            if bias is not None and product is None:
                bias_dc = bias.to(real) * transforms.bias_scale(cfg.grid)
            part = backend.product(spectrum_in, kernel, bias_dc)
            product = part if product is None else product.add_(part)
            start += channels
        del spectrum_in, part, kernel
        beta = cfg.beta if cfg.density is None else density_threshold(product, cfg.density)
        return backend.threshold_compact(product, beta, cfg.activation, cfg.value_dtype, cfg.grid), beta

    @staticmethod
    def backward(ctx, grad_values, _grad_mask, _grad_offsets, _grad_beta):
        saved = ctx.saved_tensors  # unpacked once: checkpointing refuses a second unpack
        with annotate(lambda: f"layer.backward {ctx.cfg.describe(saved[0])}"), _exact(saved[0].device):
            return SpectralLayerFunction._backward(ctx, grad_values, *saved)

    @staticmethod
    def _backward(ctx, grad_values, weight, values, out_mask, out_offsets, *sources):
        cfg, real = ctx.cfg, ctx.real
        backend = ops(weight.device)
        if cfg.activation:
            grad_values = backend.activation_backward(values, grad_values)
        out_channels = weight.shape[0]
        grad_out = CompressedSpectrum._trusted(
            grad_values.to(real), out_mask, out_offsets, cfg.batch, out_channels, cfg.grid
        )
        grad_out = backend.operand(grad_out)  # converted once, read by every product below
        grad_sources, grad_kernels, start = [], [], 0
        for index, ((inputs, mask, offsets), channels, shift) in enumerate(
            zip(_sources(tuple(sources)), cfg.channels, cfg.shifts)
        ):
            spectrum_in = None  # the FFT of a spatial input only when the kernel gradient needs it
            if mask is not None or ctx.needs_input_grad[0]:
                spectrum_in = _layer_input(inputs, mask, offsets, cfg.batch, channels, cfg.grid, real)
            part = weight[:, start : start + channels].to(real)
            start += channels
            grad_inputs = None
            if ctx.needs_input_grad[3 + 3 * index]:
                kernel = transforms.kernel_spectrum(part, cfg.grid, shift, adjoint=True)
                if mask is None:
                    grad_spectrum = backend.product_input_grad(grad_out, kernel, None)
                    grad_inputs = transforms.map_spectrum_adjoint(grad_spectrum, cfg.grid, cfg.size)
                else:
                    grad_inputs = backend.product_input_grad(grad_out, kernel, spectrum_in)
                grad_inputs = grad_inputs.to(inputs.dtype)
            grad_sources += [grad_inputs, None, None]
            if ctx.needs_input_grad[0]:
                grad_kernel = backend.product_weight_grad(backend.operand(spectrum_in), grad_out)
                grad_kernels.append(
                    transforms.kernel_spectrum_adjoint(grad_kernel, cfg.grid, cfg.kernel, shift)
                )
        grad_weight = torch.cat(grad_kernels, dim=1).to(weight.dtype) if grad_kernels else None
        grad_bias = None
        if ctx.has_bias and ctx.needs_input_grad[1]:
            grad_bias = _dc_real(grad_out, cfg.batch, out_channels).sum(0) * transforms.bias_scale(cfg.grid)
            grad_bias = grad_bias.to(weight.dtype)
        return grad_weight, grad_bias, None, *grad_sources


class SpectralOutputFunction(torch.autograd.Function):
    """Compressed spectrum -> spatial output: inverse FFT, circular crop, stride.

    Saves only the mask (already saved by the last layer).
    """

    @staticmethod
    def forward(ctx, values, mask, offsets, batch: int, channels: int, geom: BlockGeometry, out_dtype, fmt):
        spectrum = CompressedSpectrum._trusted(values, mask, offsets, batch, channels, geom.grid)
        with annotate("output.forward"):
            y = transforms.to_space(ops(values.device).unpack(spectrum), geom, fmt)
        ctx.save_for_backward(mask)
        ctx.geom, ctx.nnz, ctx.real = geom, values.shape[0], y.dtype
        return y.to(out_dtype)

    @staticmethod
    def backward(ctx, grad_y):
        (mask,) = ctx.saved_tensors
        with annotate("output.backward"):
            grad_spectrum = transforms.to_space_adjoint(grad_y.to(ctx.real), ctx.geom)
            grad_values = ops(mask.device).pack(grad_spectrum, mask, ctx.nnz)
        return grad_values, None, None, None, None, None, None, None


@dataclass(frozen=True)
class SpectralFlow:
    """One source of a block's spectral layers: the block's spatial input (``mask`` is
    None) or a layer's compressed output. ``offset`` is the circular shift its crop reads
    with; ``beta`` the threshold the layer that made it used (a device tensor when a
    density budget computed it)."""

    values: torch.Tensor
    mask: torch.Tensor | None
    offsets: torch.Tensor | None
    batch: int
    channels: int
    offset: tuple[int, int]
    geom: BlockGeometry
    dtype: torch.dtype
    beta: float | torch.Tensor | None = None
    memory_format: torch.memory_format = torch.contiguous_format
    nonfinite: torch.Tensor | None = None

    @classmethod
    def start(cls, x: torch.Tensor, shapes: Sequence[LayerShape]) -> SpectralFlow:
        geom = block_geometry(shapes, (x.shape[-2], x.shape[-1]))
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # which samples hold a NaN or Inf: their outputs are made NaN, since split tanh would
        # saturate an infinite spectral entry to a finite one
        nonfinite = ~torch.isfinite(x.detach()).flatten(1).all(1)
        return cls(
            x, None, None, x.shape[0], x.shape[1], (0, 0), geom, x.dtype,
            memory_format=memory_format, nonfinite=nonfinite,
        )  # fmt: skip

    @property
    def density(self) -> float:
        """Fraction of the spectrum's entries that were kept."""
        if self.mask is None:
            return 1.0
        return self.values.shape[0] / max(self.batch * self.channels * self.geom.bins, 1)


@torch.compiler.disable  # eager inside: data-dependent sizes (issue 17 registers custom ops)
def spectral_layer(
    sources: SpectralFlow | Sequence[SpectralFlow],
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: tuple[int, int],
    beta: float,
    activation: str | None,
    value_dtype: torch.dtype | None = None,
    density: float | None = None,
) -> SpectralFlow:
    """One layer of a block: product with ``weight``'s spectrum, threshold, split tanh.

    With several ``sources`` (channels concatenated in order), each source's kernel is
    shifted so that the contributions line up before they are summed.
    """
    sources = [sources] if isinstance(sources, SpectralFlow) else list(sources)
    first = sources[0]
    channels = sum(s.channels for s in sources)
    if weight.shape[1] != channels:
        raise ValueError(f"weight must have {channels} in_channels (dim 1), got {weight.shape[1]}")
    target = tuple(max(s.offset[a] for s in sources) + padding[a] for a in range(2))
    cfg = LayerConfig(
        grid=first.geom.grid,
        size=first.geom.size,
        batch=first.batch,
        kernel=(weight.shape[2], weight.shape[3]),
        beta=beta,
        activation=activation == "split_tanh",
        value_dtype=value_dtype,
        channels=tuple(s.channels for s in sources),
        shifts=tuple(
            (target[0] - padding[0] - s.offset[0], target[1] - padding[1] - s.offset[1]) for s in sources
        ),
        density=density,
    )
    tensors = [t for s in sources for t in (s.values, s.mask, s.offsets)]
    values, mask, offsets, used = SpectralLayerFunction.apply(weight, bias, cfg, *tensors)
    return SpectralFlow(
        values, mask, offsets, first.batch, weight.shape[0], target, first.geom, first.dtype, used,
        first.memory_format, first.nonfinite,
    )  # fmt: skip


@torch.compiler.disable
def spectral_output(flow: SpectralFlow) -> torch.Tensor:
    """The spatial output of a source: a compressed one goes through the inverse FFT. Spectra
    are float32 whatever the autocast state; the output takes autocast's dtype, as
    ``nn.Conv2d``'s does."""
    if flow.mask is None:
        return flow.values
    geom = replace(flow.geom, offset=flow.offset)
    dtype, device = flow.dtype, flow.values.device.type
    if dtype == torch.float32 and torch.is_autocast_enabled(device):  # as nn.Conv2d under autocast
        dtype = torch.get_autocast_dtype(device)
    y = SpectralOutputFunction.apply(
        flow.values, flow.mask, flow.offsets, flow.batch, flow.channels, geom, dtype, flow.memory_format
    )
    if flow.nonfinite is None:
        return y
    # NaN where the sample's input was not finite: an addition, so nothing more is saved
    return y + torch.where(flow.nonfinite, float("nan"), 0.0).to(y.dtype).view(-1, 1, 1, 1)


def empty_output(x: torch.Tensor, parameters: Sequence[torch.Tensor], channels: int, size) -> torch.Tensor:
    """The output of a block for an empty batch, still connected to the block's parameters
    (their gradients are zeros, as ``nn.Conv2d``'s are)."""
    anchor = sum(p.sum() for p in parameters) * 0 + x.sum() * 0
    return anchor.to(x.dtype).expand(0, channels, *size)


def spectral_block(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    shapes: Sequence[LayerShape],
    betas: Sequence[float],
    activations: Sequence[str | None],
    value_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Run layers in the spectral domain between one FFT and one IFFT; spatial in and out.

    ``weights[i]`` is shaped like ``nn.Conv2d.weight``; ``shapes[i]`` gives its kernel,
    padding and stride. Returns ``(N, O, H_out, W_out)`` in ``x``'s dtype.
    """
    layers = _block_layers(weights, biases, shapes, betas, activations)
    value_dtype = _checks.value_dtype(value_dtype)
    _checks.spatial_input(x, weights[0].shape[1])
    flow = SpectralFlow.start(x, shapes)
    if x.shape[0] == 0:
        parameters = [*weights, *(b for b in biases if b is not None)]
        return empty_output(x, parameters, weights[-1].shape[0], flow.geom.out)
    for weight, bias, shape, beta, activation in layers:
        flow = spectral_layer(flow, weight, bias, shape.padding, beta, activation, value_dtype)
    return spectral_output(flow)


def _block_layers(weights, biases, shapes, betas, activations) -> list[tuple]:
    """Check :func:`spectral_block`'s per-layer lists; one checked tuple per layer."""
    lists = {
        "weights": weights,
        "biases": biases,
        "shapes": shapes,
        "betas": betas,
        "activations": activations,
    }
    for name, items in lists.items():
        if not isinstance(items, Sequence) or isinstance(items, str):
            raise TypeError(f"{name} must be a list with one entry per layer, got {type(items).__name__}")
    if not weights or len({len(items) for items in lists.values()}) != 1:
        lengths = ", ".join(f"{name} {len(items)}" for name, items in lists.items())
        raise ValueError(
            f"weights, biases, shapes, betas and activations must be non-empty lists of one "
            f"length, got {lengths}"
        )
    layers = []
    for i, (w, b, shape, beta, activation) in enumerate(zip(*lists.values())):
        w = _checks.weight(w, f"weights[{i}]")
        if i and w.shape[1] != weights[i - 1].shape[0]:
            raise ValueError(
                f"weights[{i}] must have {weights[i - 1].shape[0]} in_channels (dim 1), the out_channels "
                f"of weights[{i - 1}], got {w.shape[1]}"
            )
        if not isinstance(shape, LayerShape) or shape.kernel != tuple(w.shape[2:]):
            raise ValueError(
                f"shapes[{i}] must be a LayerShape with kernel {tuple(w.shape[2:])}, got {shape!r}"
            )
        layers.append(
            (
                w,
                _checks.bias(b, w.shape[0], f"biases[{i}]"),
                shape,
                _checks.beta(beta),
                _checks.activation(activation),
            )
        )
    return layers


def spectral_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
    *,
    beta: float = 0.0,
    activation: str | None = None,
    value_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Functional :class:`~spectriton.SpectralConv2d`: ``F.conv2d`` at beta 0 with no activation."""
    kernel = (_checks.weight(weight).shape[2], weight.shape[3])
    _checks.bias(bias, weight.shape[0])
    stride = _checks.pair(stride, "stride", minimum=1)
    shape = LayerShape(kernel=kernel, padding=_checks.conv_padding(padding, kernel, stride), stride=stride)
    return spectral_block(x, [weight], [bias], [shape], [beta], [activation], value_dtype)
