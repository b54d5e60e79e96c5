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
from dataclasses import dataclass

import torch

from spectriton import _checks, transforms
from spectriton.backend import ops
from spectriton.compressed import CompressedSpectrum
from spectriton.geometry import BlockGeometry, LayerShape, block_geometry


@dataclass(frozen=True)
class LayerConfig:
    """What one layer's autograd function needs besides tensors."""

    grid: tuple[int, int]
    size: tuple[int, int]
    kernel: tuple[int, int]
    beta: float
    activation: bool
    value_dtype: torch.dtype | None


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32 (half precisions compute in float32)."""
    return (
        torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32
    )


def _dc_real(spectrum: CompressedSpectrum) -> torch.Tensor:
    """Real part of each map's DC entry (zero where it was not kept), ``(batch, channels)``."""
    values = spectrum.values
    if values.shape[0] == 0:
        return values.new_zeros(spectrum.batch, spectrum.channels)
    kept = (spectrum.mask[:, 0] & 1).bool()
    first = spectrum.offsets[:-1].clamp(max=values.shape[0] - 1)
    return torch.where(kept, values[first, 0], 0).view(spectrum.batch, spectrum.channels)


def _layer_input(inputs, mask, offsets, channels, grid, real) -> CompressedSpectrum | torch.Tensor:
    """A layer's input spectrum: the FFT of a spatial batch, or the previous compressed output."""
    if mask is None:
        return transforms.map_spectrum(inputs.to(real), grid)
    return CompressedSpectrum(inputs, mask, offsets, mask.shape[0] // channels, channels, grid)


class SpectralLayerFunction(torch.autograd.Function):
    """One convolution + threshold (+ split tanh) layer on the spectral grid.

    Input: a spatial batch ``x`` (first layer: ``mask`` and ``offsets`` are None) or the
    packed values of the previous layer's output. Output: packed values, mask, offsets.
    """

    @staticmethod
    def forward(ctx, inputs, mask, offsets, weight, bias, cfg: LayerConfig):
        backend = ops(weight.device)
        real = _compute_dtype(inputs, weight)
        spectrum_in = _layer_input(inputs, mask, offsets, weight.shape[1], cfg.grid, real)
        kernel = transforms.kernel_spectrum(weight.to(real), cfg.grid)
        bias_dc = None if bias is None else bias.to(real) * transforms.bias_scale(cfg.grid)
        product = backend.product(spectrum_in, kernel, bias_dc)
        del spectrum_in
        out = backend.threshold_compact(product, cfg.beta, cfg.activation, cfg.value_dtype, cfg.grid)
        ctx.save_for_backward(
            inputs, mask, offsets, weight, out.values if cfg.activation else None, out.mask, out.offsets
        )
        ctx.cfg, ctx.real, ctx.has_bias = cfg, real, bias is not None
        ctx.mark_non_differentiable(out.mask, out.offsets)
        return out.values, out.mask, out.offsets

    @staticmethod
    def backward(ctx, grad_values, _grad_mask, _grad_offsets):
        inputs, mask, offsets, weight, values, out_mask, out_offsets = ctx.saved_tensors
        cfg, real = ctx.cfg, ctx.real
        backend = ops(weight.device)
        if cfg.activation:
            grad_values = backend.activation_backward(values, grad_values)
        batch = out_mask.shape[0] // weight.shape[0]
        grad_out = CompressedSpectrum(
            grad_values.to(real), out_mask, out_offsets, batch, weight.shape[0], cfg.grid
        )
        spectrum_in = _layer_input(inputs, mask, offsets, weight.shape[1], cfg.grid, real)
        kernel = transforms.kernel_spectrum(weight.to(real), cfg.grid)
        grad_inputs = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            if mask is None:
                grad_spectrum = backend.product_input_grad(grad_out, kernel, None)
                grad_inputs = transforms.map_spectrum_adjoint(grad_spectrum, cfg.grid, cfg.size)
            else:
                grad_inputs = backend.product_input_grad(grad_out, kernel, spectrum_in)
            grad_inputs = grad_inputs.to(inputs.dtype)
        if ctx.needs_input_grad[3]:
            grad_kernel = backend.product_weight_grad(spectrum_in, grad_out)
            grad_weight = transforms.kernel_spectrum_adjoint(grad_kernel, cfg.grid, cfg.kernel).to(
                weight.dtype
            )
        if ctx.has_bias and ctx.needs_input_grad[4]:
            grad_bias = _dc_real(grad_out).sum(0) * transforms.bias_scale(cfg.grid)
            grad_bias = grad_bias.to(weight.dtype)
        return grad_inputs, None, None, grad_weight, grad_bias, None


class SpectralOutputFunction(torch.autograd.Function):
    """Compressed spectrum -> spatial output: inverse FFT, circular crop, stride.

    Saves only the mask and offsets (already saved by the last layer).
    """

    @staticmethod
    def forward(ctx, values, mask, offsets, channels: int, geom: BlockGeometry, out_dtype: torch.dtype):
        batch = mask.shape[0] // channels
        spectrum = CompressedSpectrum(values, mask, offsets, batch, channels, geom.grid)
        y = transforms.to_space(ops(values.device).unpack(spectrum), geom)
        ctx.save_for_backward(mask, offsets)
        ctx.geom, ctx.nnz, ctx.real = geom, values.shape[0], y.dtype
        return y.to(out_dtype)

    @staticmethod
    def backward(ctx, grad_y):
        mask, offsets = ctx.saved_tensors
        grad_spectrum = transforms.to_space_adjoint(grad_y.to(ctx.real), ctx.geom)
        grad_values = ops(mask.device).pack(grad_spectrum, mask, offsets, ctx.nnz)
        return grad_values, None, None, None, None, None


@dataclass(frozen=True)
class SpectralFlow:
    """What passes between the layers of a block: the block's spatial input before the
    first layer (``mask`` is None), then the compressed output of the last layer run."""

    values: torch.Tensor
    mask: torch.Tensor | None
    offsets: torch.Tensor | None
    geom: BlockGeometry
    dtype: torch.dtype

    @classmethod
    def start(cls, x: torch.Tensor, shapes: Sequence[LayerShape]) -> SpectralFlow:
        return cls(x, None, None, block_geometry(shapes, (x.shape[-2], x.shape[-1])), x.dtype)


def spectral_layer(
    flow: SpectralFlow,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    beta: float,
    activation: str | None,
    value_dtype: torch.dtype | None = None,
) -> SpectralFlow:
    """One layer of a block: product with ``weight``'s spectrum, threshold, split tanh."""
    cfg = LayerConfig(
        grid=flow.geom.grid,
        size=flow.geom.size,
        kernel=(weight.shape[2], weight.shape[3]),
        beta=beta,
        activation=activation == "split_tanh",
        value_dtype=value_dtype,
    )
    values, mask, offsets = SpectralLayerFunction.apply(
        flow.values, flow.mask, flow.offsets, weight, bias, cfg
    )
    return SpectralFlow(values, mask, offsets, flow.geom, flow.dtype)


def spectral_output(flow: SpectralFlow, channels: int) -> torch.Tensor:
    """The block's spatial output from the last layer's compressed spectrum."""
    return SpectralOutputFunction.apply(flow.values, flow.mask, flow.offsets, channels, flow.geom, flow.dtype)


def empty_output(x: torch.Tensor, weights: Sequence[torch.Tensor], geom: BlockGeometry) -> torch.Tensor:
    """The output of a block for an empty batch, still connected to the weights."""
    anchor = sum(w.sum() for w in weights) * 0 + x.sum() * 0
    return anchor.to(x.dtype).expand(0, weights[-1].shape[0], *geom.out)


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
    flow = SpectralFlow.start(x, shapes)
    if x.shape[0] == 0:
        return empty_output(x, weights, flow.geom)
    for weight, bias, beta, activation in zip(weights, biases, betas, activations):
        flow = spectral_layer(flow, weight, bias, beta, activation, value_dtype)
    return spectral_output(flow, weights[-1].shape[0])


def spectral_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    *,
    beta: float = 0.0,
    activation: str | None = None,
    value_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Functional :class:`~spectriton.SpectralConv2d`: ``F.conv2d`` at beta 0 with no activation."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        raise TypeError("weight must be a 4-D tensor (out_channels, in_channels, kh, kw)")
    _checks.spatial_input(x, weight.shape[1])
    shape = LayerShape(
        kernel=(weight.shape[2], weight.shape[3]),
        padding=_checks.pair(padding, "padding", minimum=0),
        stride=_checks.pair(stride, "stride", minimum=1),
    )
    return spectral_block(
        x,
        [weight],
        [bias],
        [shape],
        [_checks.beta(beta)],
        [_checks.activation(activation)],
        _checks.value_dtype(value_dtype),
    )
