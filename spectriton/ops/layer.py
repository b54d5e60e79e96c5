"""``spectriton::layer``: one layer on the spectral grid, its fake and its autograd glue.

Product with a kernel spectrum, threshold (fixed, or a density budget's quantile), split
tanh and compaction; returns the packed values, bitmask and offsets of a
:class:`~spectriton.compressed.CompressedSpectrum`, the threshold used and a normalised
layer's batch moments. Its gradient is :mod:`spectriton.ops.layer_backward`'s op.

Tensors are positional (``torch.library`` takes no keyword-only tensor): the weight and
bias, the sources' values, masks and offsets, and the optional tensors in one list named
by a string; the rest is keyword-only, and backward looks every gradient up by name. It
keeps, through ``ctx.save_for_backward``, only what DESIGN.md section 3 allows: the
weight, the sources (the block's spatial input, or that input's recipe when an earlier
block made it, or an earlier layer's compressed output, whose storages count once), the
output's mask and offsets, and its values when split tanh needs them.
"""

import math
from dataclasses import replace
from typing import Optional

import torch
from torch import Tensor

from spectriton import backend, direct, transforms
from spectriton.compressed import CompressedSpectrum, mask_words
from spectriton.density import density_threshold, drop_by_sample_
from spectriton.geometry import BlockGeometry
from spectriton.moments import channel_moments, moments_used, normalise_, scale_shift_
from spectriton.numerics import (
    EIGHT_BIT,
    as_carried,
    carried_dtype,
    compute_dtype,
    exact,
    spectrum_bins,
    stored_as,
)
from spectriton.nvtx import annotate
from spectriton.ops.layer_backward import gradient_names, layer_backward
from spectriton.ops.rebuild import rebuild_input
from spectriton.ops.sources import source_spectrum
from spectriton.ops.spec import LayerSpec, from_named, to_named
from spectriton.ops.tiles import output_runs, part_of, tiled_product, weight_tiles
from spectriton.provenance import RecipeArgs


@torch.library.custom_op("spectriton::layer", mutates_args=())
def layer(
    spec: str,
    weight: Tensor,
    bias: Optional[Tensor],
    inputs: list[Tensor],
    masks: list[Optional[Tensor]],
    offsets: list[Optional[Tensor]],
    named: list[Tensor],
    *,
    names: str,
    beta: float,
    density: Optional[float],
    geometry: list[int],
    batch: int,
    recipe: list[int],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One layer on the spectral grid; returns ``(values, mask, offsets, threshold, moments,
    stored)``.

    ``spec``, ``beta`` and ``density`` are a :class:`LayerSpec`, ``geometry`` the block's
    :class:`~spectriton.geometry.BlockGeometry` (as :meth:`~BlockGeometry.to_args`; a
    strided layer's crop) and ``batch`` its batch size. Each source is ``(inputs[s],
    masks[s], offsets[s])``: a spatial batch (mask None) or an earlier layer's compressed
    output. ``weight`` is shaped as ``nn.Conv2d``'s with the spec's groups and dilation.
    ``named`` holds the optional tensors given, named by ``names`` (comma-separated, see
    :func:`~spectriton.ops.spec.to_named`):

    - ``running`` (eval mode): the threshold to use instead of the density budget's
      quantile; when NaN (uncalibrated), each sample's own quantile instead of the batch's;
    - ``moments`` (``(2, O)``: each channel's mean and mean square on the grid): normalises
      the layer as BatchNorm does: each output channel's mean is taken from its DC bin and
      its product divided by its standard deviation before the threshold, using ``moments``
      where calibrated, the batch's where NaN; the batch's moments are returned (else empty);
    - ``affine`` (``(2, O)``, with ``moments`` only): then scales each channel by
      ``affine[0]`` and adds ``affine[1]`` to it, as BatchNorm's weight and bias do;
    - ``residual``, a dense complex ``(bins, N, O)`` spectrum on the output's grid: added
      after that (a residual connection, whose sum the threshold and split tanh act on);
    - ``rebuild<i>``, with the integers ``recipe``: the recipe of the spatial source
      ``inputs[0]`` (:mod:`spectriton.provenance`), which backward keeps instead of it;
    - ``stored<s>``: source ``s``'s 8-bit values, which backward keeps instead of its
      bfloat16 ones (the same numbers).

    With the 8-bit value dtype (:data:`~spectriton.numerics.EIGHT_BIT`) the values are
    rounded to it: ``stored`` holds them in it, what backward keeps, and ``values`` the same
    numbers as bfloat16, which carry the gradient between layers (an 8-bit gradient would
    underflow; ``stored`` gets none). Otherwise ``stored`` is empty.
    """
    cfg, geom = LayerSpec.decode(spec, beta, density), BlockGeometry.from_args(geometry)
    eight_bit = cfg.value_dtype == EIGHT_BIT
    cfg = replace(cfg, value_dtype=carried_dtype(cfg.value_dtype))
    optional = from_named(names, named)
    running, moments, affine, residual = (
        optional.get(n) for n in ("running", "moments", "affine", "residual")
    )
    by_sample = False  # an uncalibrated budget in eval: each sample's own quantile
    if running is not None:
        calibrated = float(running)  # one host read, as sizing the values needs anyway
        if not math.isnan(calibrated):
            cfg = replace(cfg, beta=calibrated, density=None)
        by_sample = math.isnan(calibrated)
    weight = transforms.dense_weight(weight, cfg.dilation)
    with annotate(lambda: f"layer.forward {cfg.describe(weight, geom.grid)}"), exact(weight.device):
        ops = backend.ops(weight.device)
        real = compute_dtype(weight, *inputs)
        sources = list(zip(inputs, masks, offsets))
        fused = not cfg.strided and cfg.density is None and moments is None and residual is None
        fused = fused and cfg.groups == 1  # the fused Triton product has no groups
        if len(sources) == 1 and fused:
            out, used = _fused_forward(ops, weight, bias, cfg, geom, batch, real, *sources[0]), cfg.beta
            batch_moments = weight.new_empty(0, dtype=torch.float32)
        else:
            out, used, batch_moments = _summed_forward(
                ops, weight, bias, cfg, geom, batch, real, sources, moments, affine, residual, by_sample
            )
    threshold = torch.as_tensor(used, dtype=torch.float64, device=weight.device).clone()
    values, stored = out.values, out.values.new_empty(0, 2, dtype=torch.float32)
    if eight_bit:
        stored = stored_as(values, EIGHT_BIT)
        values = as_carried(stored)
    return values, out.mask, out.offsets, threshold, batch_moments, stored


def _fused_forward(ops, weight, bias, cfg, geom, batch, real, inputs, mask, offsets) -> CompressedSpectrum:
    """One source at a fixed beta: the product with the threshold in its epilogue."""
    spectrum_in = _operand(
        inputs, mask, offsets, batch, cfg.channels[0], weight, cfg.shifts[0], cfg, geom, real
    )
    bias_dc = None if bias is None else bias.to(real) * transforms.bias_scale(geom.grid)
    if direct.is_spatial(spectrum_in):  # a small map: the direct product, then the threshold
        product = _direct_product(spectrum_in, weight.to(real), bias_dc, geom.grid, cfg.shifts[0])
        return ops.threshold_compact(product, cfg.beta, cfg.activation, cfg.value_dtype, geom.grid)
    if transforms.is_pointwise(cfg.kernel, cfg.shifts[0]):
        kernel = transforms.pointwise_kernel(weight.to(real))
    else:
        tiles = weight_tiles(geom.bins, weight, batch)
        if len(tiles) > 1:  # a large kernel spectrum: by tiles, then the threshold
            product = tiled_product(
                ops, weight.to(real), spectrum_in, geom.grid, cfg.shifts[0], bias_dc, 1, tiles
            )
            return ops.threshold_compact(product, cfg.beta, cfg.activation, cfg.value_dtype, geom.grid)
        kernel = transforms.kernel_spectrum(weight.to(real), geom.grid, cfg.shifts[0])
    return ops.product_threshold(
        spectrum_in, kernel, bias_dc, cfg.beta, cfg.activation, cfg.value_dtype, geom.grid
    )


def _summed_forward(
    ops, weight, bias, cfg, geom, batch, real, sources, moments, affine, residual, by_sample
) -> tuple[CompressedSpectrum, Tensor | float, Tensor]:
    """Several sources (a dense block), a density budget, a normalised layer, a residual or
    a stride: the dense product first (cropped to a strided layer's output). With
    ``moments`` (see :func:`layer`), the product is normalised per channel (and scaled and
    shifted by ``affine``), then ``residual`` is added; a density budget thresholds at the
    batch's quantile, or each sample's (``by_sample``); returns the compressed output, the
    threshold used and the batch's moments."""
    spectra = [
        _operand(inputs, mask, offsets, batch, channels, weight, shift, cfg, geom, real)
        for (inputs, mask, offsets), channels, shift in zip(sources, cfg.channels, cfg.shifts)
    ]
    if cfg.strided:  # cropped to the output's grid a run of output channels at a time
        runs = output_runs(geom.bins, batch, weight.shape[0], cfg.groups)
        product = torch.cat(
            [
                transforms.crop_spectrum(
                    _dense_product(ops, weight[run], part_of(bias, run), cfg, geom, batch, real, spectra),
                    geom,
                )
                for run in runs
            ],
            dim=2,
        )  # each run's grid-sized product let go once cropped, the crops once joined
    else:
        product = _dense_product(ops, weight, bias, cfg, geom, batch, real, spectra)
    out_grid = cfg.out_grid(geom)
    batch_moments = product.real.new_empty(0)
    if moments is not None:
        batch_moments = channel_moments(product, out_grid)
        normalise_(product, moments_used(moments, batch_moments), out_grid)
    if affine is not None:
        scale_shift_(product, affine, out_grid)
    if residual is not None:
        product.add_(residual.to(product.dtype))
    if cfg.density is None:
        beta = cfg.beta
    elif by_sample:
        beta = drop_by_sample_(product, cfg.density)
    else:
        beta = density_threshold(product, cfg.density)
    out = ops.threshold_compact(product, beta, cfg.activation, cfg.value_dtype, out_grid)
    return out, beta, batch_moments


def _dense_product(ops, weight, bias, cfg, geom, batch, real, spectra) -> Tensor:
    """The product spectrum ``(bins, N, O)`` of ``weight``'s output channels, summed over
    the sources' ``spectra`` (each a spectrum, or a small map whose product runs direct)."""
    product, start = None, 0
    for spectrum_in, channels, shift in zip(spectra, cfg.channels, cfg.shifts):
        part = weight[:, start : start + channels].to(real)
        bias_dc = None
        if bias is not None and product is None:
            bias_dc = bias.to(real) * transforms.bias_scale(geom.grid)
        if direct.is_spatial(spectrum_in):
            part = _direct_product(spectrum_in, part, bias_dc, geom.grid, shift)
        else:
            tiles = weight_tiles(geom.bins, part, batch, cfg.groups)
            part = tiled_product(ops, part, spectrum_in, geom.grid, shift, bias_dc, cfg.groups, tiles)
        product = part if product is None else product.add_(part)
        start += channels
    return product


def _operand(
    inputs, mask, offsets, batch, channels, weight, shift, cfg, geom, real
) -> CompressedSpectrum | Tensor:
    """A source as the products read it: a small spatial map itself, where its products with
    the layer's (dilated) ``weight`` run direct (:func:`spectriton.direct.applies`), else
    its spectrum (:func:`~spectriton.ops.sources.source_spectrum`)."""
    if mask is None and direct.applies(inputs, weight.shape[-2:], geom.grid, cfg.groups, shift):
        return inputs.to(real)
    return source_spectrum(inputs, mask, offsets, batch, channels, geom.grid, real)


def _direct_product(x, weight, bias_dc, grid, shift) -> Tensor:
    """:func:`spectriton.direct.product`, ``bias_dc`` added to the DC bin."""
    product = direct.product(x, weight, grid, shift)
    if bias_dc is not None:
        product[0] += bias_dc.to(product.dtype)
    return product


@layer.register_fake
def _(spec, weight, bias, inputs, masks, offsets, named, *, names, beta, density, geometry, batch, recipe):
    cfg, geom = LayerSpec.decode(spec, beta, density), BlockGeometry.from_args(geometry)
    out_channels, bins = weight.shape[0], spectrum_bins(cfg.out_grid(geom))
    nnz = torch.library.get_ctx().new_dynamic_size()
    values = weight.new_empty(nnz, 2, dtype=carried_dtype(cfg.value_dtype) or compute_dtype(weight, *inputs))
    eight_bit = cfg.value_dtype == EIGHT_BIT
    stored = weight.new_empty(nnz if eight_bit else 0, 2, dtype=EIGHT_BIT if eight_bit else torch.float32)
    mask = weight.new_empty(mask_words(batch * out_channels * bins), dtype=torch.int32)
    return (
        values,
        mask,
        weight.new_empty(bins + 1, dtype=torch.int64),
        weight.new_empty((), dtype=torch.float64),
        weight.new_empty(
            (2, out_channels) if "moments" in from_named(names, named) else (0,), dtype=torch.float32
        ),
        stored,
    )


_POSITIONAL = ("spec", "weight", "bias", "inputs", "masks", "offsets", "named")  # layer's, in order
_SAVED = ("weight", "bias", "values", "mask", "offsets", "moments", "affine")  # then the sources'


def _setup_layer(ctx, inputs, keyword_only_inputs, output) -> None:
    args = dict(zip(_POSITIONAL, inputs), **keyword_only_inputs)
    optional = from_named(args["names"], args["named"])
    values, mask, out_offsets, _, batch_moments, stored = output
    moments, sources = optional.get("moments"), list(args["inputs"])
    rebuild = [tensor for name, tensor in optional.items() if name.startswith("rebuild")]
    for name, tensor in optional.items():  # a source's 8-bit values: kept instead of its bfloat16 ones
        if name.startswith("stored"):
            sources[int(name.removeprefix("stored"))] = tensor
    ctx.spec, ctx.names, ctx.geometry = args["spec"], args["names"], args["geometry"]
    ctx.batch, ctx.numbers = args["batch"], {"beta": args["beta"], "density": args["density"]}
    ctx.sources, ctx.recipe, ctx.source_dtype = len(sources), args["recipe"], sources[0].dtype
    used = None if moments is None else moments_used(moments, batch_moments)
    if rebuild:
        sources[0] = None  # kept as its recipe
    cfg = LayerSpec.decode(args["spec"], args["beta"], args["density"])
    if cfg.value_dtype == EIGHT_BIT:  # backward reads them as the bfloat16 numbers they are
        values = stored
    keep = values if cfg.activation else None  # split tanh's derivative reads them
    ctx.save_for_backward(
        args["weight"], args["bias"], keep, mask, out_offsets, used, optional.get("affine"),
        *sources, *args["masks"], *args["offsets"], *rebuild,
    )  # fmt: skip


def _layer_grad(ctx, grad_values, _grad_mask, _grad_offsets, _grad_threshold, _grad_moments, _grad_stored):
    tensors = ctx.saved_tensors  # read once: a checkpoint unpacks each saved tensor once
    saved, rest, count = dict(zip(_SAVED, tensors)), tensors[len(_SAVED) :], ctx.sources
    sources, masks = list(rest[:count]), rest[count : 2 * count]
    offsets, rebuild = rest[2 * count : 3 * count], rest[3 * count :]
    if rebuild:  # the spatial source was kept as its recipe
        sources[0] = rebuild_input(list(rebuild), RecipeArgs.decode(ctx.recipe), ctx.source_dtype)
    wanted = dict(zip(_POSITIONAL, ctx.needs_input_grad))
    wanted |= {f"inputs.{i}": need for i, need in enumerate(wanted["inputs"])}
    wanted |= from_named(ctx.names, wanted["named"])
    names = gradient_names(count)
    needs = [name for name in names if wanted.get(name, False)]
    saved_names, saved_named = to_named(
        {n: saved[n] for n in ("values", "mask", "offsets", "moments", "affine")}
    )
    grads = layer_backward(
        ctx.spec, grad_values, saved["weight"], saved["bias"], sources, list(masks), list(offsets),
        saved_named, names=saved_names, **ctx.numbers, geometry=ctx.geometry, batch=ctx.batch,
        needs=",".join(needs),
    )  # fmt: skip
    grad = {name: g for name, g in zip(names, grads) if name in needs}
    grad["inputs"] = [grad.get(f"inputs.{i}") for i in range(count)]
    grad["masks"], grad["offsets"] = _no_grads(masks), _no_grads(offsets)
    grad["named"] = [grad.get(name) for name in ctx.names.split(",")] if ctx.names else []
    return tuple(grad.get(name) for name in _POSITIONAL)


def _no_grads(items) -> list | None:
    """The gradient of a list of tensors that gets none, shaped as autograd flattened it: a
    list of Nones for a list of tensors, one None for a list holding a None."""
    return [None] * len(items) if all(isinstance(t, Tensor) for t in items) else None


layer.register_autograd(_layer_grad, setup_context=_setup_layer)
