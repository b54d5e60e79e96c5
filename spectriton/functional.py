"""The functional API of a spectral block, on the ops of :mod:`spectriton.ops`.

A block is ``FFT -> [product -> threshold -> split tanh] x n -> IFFT -> crop``. Between
layers the spectrum flows compressed, as a :class:`SpectralFlow`: each layer is one
``spectriton::layer`` op whose output is the packed values (differentiable) plus the
bitmask and offsets of a :class:`~spectriton.compressed.CompressedSpectrum`, and whose
saved tensors are only

- its input: the block's spatial input (first layer) or the previous layer's compressed
  output (the same storages that layer saved, so they count once);
- its compressed output's mask and offsets, and its values when split tanh needs them;
- its weight (a parameter).

Gradients between layers flow packed too. Everything here traces under
``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from spectriton import _checks, provenance, transforms
from spectriton.exact_zeros import bias_where_dead_
from spectriton.geometry import BlockGeometry, LayerShape, block_geometry
from spectriton.nonfinite import mark_nonfinite, nonfinite_samples
from spectriton.numerics import EIGHT_BIT, compute_dtype
from spectriton.ops.layer import layer
from spectriton.ops.output import output
from spectriton.ops.spec import LayerSpec, to_named


@dataclass(frozen=True)
class SpectralFlow:
    """One source of a block's spectral layers: the block's spatial input (``mask`` is
    None) or a layer's compressed output. ``offset`` is the circular shift its crop reads
    with; ``beta`` the threshold the layer that made it used (a 0-d float64 tensor on the
    device); ``moments`` a normalised layer's batch moments per channel."""

    values: torch.Tensor
    mask: torch.Tensor | None
    offsets: torch.Tensor | None
    batch: int
    channels: int
    offset: tuple[int, int]
    geom: BlockGeometry
    dtype: torch.dtype
    beta: torch.Tensor | None = None
    memory_format: torch.memory_format = torch.contiguous_format
    nonfinite: torch.Tensor | None = None
    recipe: provenance.Recipe | None = None
    keeps_values: bool = False
    moments: torch.Tensor | None = None
    stored: torch.Tensor | None = None  # 8-bit values, what backward keeps of them

    @classmethod
    def start(cls, x: torch.Tensor, shapes: Sequence[LayerShape]) -> SpectralFlow:
        geom = block_geometry(shapes, (x.shape[-2], x.shape[-1]))
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        nonfinite = nonfinite_samples(x)  # their outputs are made NaN
        recipe = provenance.lookup(x)  # an earlier block's output: keep its recipe instead
        return cls(
            x, None, None, x.shape[0], x.shape[1], (0, 0), geom, x.dtype,
            memory_format=memory_format, nonfinite=nonfinite, recipe=recipe,
        )  # fmt: skip

    @property
    def density(self) -> float:
        """Fraction of the spectrum's entries that were kept."""
        if self.mask is None:
            return 1.0
        return self.values.shape[0] / max(self.batch * self.channels * self.geom.bins, 1)


def spectral_layer(
    sources: SpectralFlow | Sequence[SpectralFlow],
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: tuple[int, int],
    beta: float,
    activation: str | None,
    value_dtype: torch.dtype | None = None,
    density: float | None = None,
    running: torch.Tensor | None = None,
    groups: int = 1,
    dilation: tuple[int, int] = (1, 1),
    moments: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    stride: tuple[int, int] = (1, 1),
    affine: torch.Tensor | None = None,
) -> SpectralFlow:
    """One layer of a block: product with ``weight``'s spectrum, threshold, split tanh.

    With several ``sources`` (channels concatenated in order), each source's kernel is
    shifted so that the contributions line up before they are summed. ``running``, when
    given and not NaN, is the threshold a density budget uses instead of its quantile.
    ``weight`` is shaped as ``nn.Conv2d``'s with ``groups`` and ``dilation``. ``moments``
    normalises the layer and ``affine`` (``(2, O)``: scale and shift per channel, BatchNorm's
    weight and bias) then scales and shifts it (``spectriton::layer``'s arguments).
    ``residual``, a spatial batch shaped as the block's output (or broadcasting to it), is
    added to the product before the threshold and split tanh, in the spectral domain: a
    residual connection and the activation after it, with no spatial tensor kept for either.
    A layer with a ``stride`` (the last of its block) crops its product to its output first
    and keeps the spectrum of that, on a grid the output's size.
    """
    sources = [sources] if isinstance(sources, SpectralFlow) else list(sources)
    first = sources[0]
    if affine is not None and (moments is None or tuple(affine.shape) != (2, weight.shape[0])):
        raise ValueError(f"affine must be (2, {weight.shape[0]}) and come with moments")
    if groups > 1 and len(sources) > 1:  # each source's kernel would straddle the groups
        raise ValueError(f"a grouped layer (groups={groups}) reads one source, got {len(sources)}")
    channels = sum(s.channels for s in sources)
    if weight.shape[1] * groups != channels:
        raise ValueError(
            f"weight must have {channels // groups} in_channels per group (dim 1), got {weight.shape[1]}"
        )
    target = tuple(max(s.offset[a] for s in sources) + padding[a] for a in range(2))
    shifts = tuple(
        (target[0] - padding[0] - s.offset[0], target[1] - padding[1] - s.offset[1]) for s in sources
    )
    geom = first.geom
    crop = BlockGeometry(geom.size, geom.grid, target, geom.full, geom.stride)  # what a stride crops
    strided = tuple(stride) != (1, 1)
    if strided:  # the output's spectrum, on a grid of its size: read with no crop after this
        if tuple(stride) != geom.stride:
            raise ValueError(f"only a block's last layer may have a stride ({geom.stride}), got {stride}")
        geom, target = crop.of_output(), (0, 0)
    spec = LayerSpec(
        kernel=transforms.spread(weight.shape[2:], dilation),
        beta=beta,
        activation=activation == "split_tanh",
        value_dtype=value_dtype,
        channels=tuple(s.channels for s in sources),
        shifts=shifts,
        density=density,
        groups=groups,
        dilation=tuple(dilation),
        strided=strided,
    )
    spectrum = None
    if residual is not None:
        placed = BlockGeometry(geom.size, geom.grid, target, geom.full, geom.stride)  # where the crop reads
        expected = (first.batch, weight.shape[0], *placed.out)
        if residual.dim() > 4 or any(r not in (1, e) for r, e in zip(residual.shape[::-1], expected[::-1])):
            raise ValueError(
                f"residual must be shaped as the block's output {expected} or broadcast to it, "
                f"got {tuple(residual.shape)}"
            )
        residual = residual.expand(expected)  # as the add it stands for broadcasts it
        spectrum = transforms.place_spectrum(residual.to(compute_dtype(residual, weight)), placed)
    recipe = first.recipe if first.mask is None else None
    rebuild = recipe.tensors() if recipe is not None else None
    optional = {"running": running, "moments": moments, "affine": affine, "residual": spectrum}
    optional |= {f"rebuild{i}": part for i, part in enumerate(rebuild or [])}
    optional |= {f"stored{i}": s.stored for i, s in enumerate(sources)}
    names, named = to_named(optional)
    values, mask, offsets, used, batch_moments, stored = layer(
        spec.encode(), weight, bias, [s.values for s in sources], [s.mask for s in sources],
        [s.offsets for s in sources], named, names=names, beta=spec.beta, density=spec.density,
        geometry=crop.to_args(), batch=first.batch, recipe=recipe.args.encode() if rebuild else [],
    )  # fmt: skip
    return SpectralFlow(
        values, mask, offsets, first.batch, weight.shape[0], target, geom, first.dtype, used,
        first.memory_format, first.nonfinite, keeps_values=spec.activation,
        moments=batch_moments if moments is not None else None,
        stored=stored if value_dtype == EIGHT_BIT else None,
    )  # fmt: skip


def spectral_output(flow: SpectralFlow) -> torch.Tensor:
    """The spatial output of a source: a compressed one goes through the inverse FFT. Spectra
    are float32 whatever the autocast state; the output takes autocast's dtype, as
    ``nn.Conv2d``'s does."""
    if flow.mask is None:
        return flow.values
    geom = BlockGeometry(flow.geom.size, flow.geom.grid, flow.offset, flow.geom.full, flow.geom.stride)
    dtype, device = flow.dtype, flow.values.device.type
    if dtype == torch.float32 and torch.is_autocast_enabled(device):  # as nn.Conv2d under autocast
        dtype = torch.get_autocast_dtype(device)
    channels_last = flow.memory_format == torch.channels_last
    y = output(
        flow.values, flow.mask, flow.offsets, flow.stored, batch=flow.batch, channels=flow.channels,
        geometry=geom.to_args(), dtype=dtype, channels_last=channels_last, keep_values=flow.keeps_values,
    )  # fmt: skip
    if flow.nonfinite is None:
        return y
    y = mark_nonfinite(y, flow.nonfinite)  # split tanh saturates an infinite entry
    if flow.keeps_values and torch.is_grad_enabled():  # the next block may keep this recipe instead of y
        args = provenance.RecipeArgs(flow.batch, flow.channels, geom, channels_last)
        values = flow.values if flow.stored is None else flow.stored  # what the output op keeps
        provenance.record(y, provenance.Recipe.of(values, flow.mask, flow.offsets, flow.nonfinite, args))
    return y


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
        flow = spectral_layer(
            flow, weight, bias, shape.padding, beta, activation, value_dtype, stride=shape.stride
        )
    y = spectral_output(flow)
    if len(layers) == 1 and beta == 0 and activation is None:  # F.conv2d exactly
        y = bias_where_dead_(y, x, bias, shape.kernel, shape.padding, shape.stride, (1, 1), 1)
    return y


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
