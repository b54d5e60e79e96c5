"""``spectriton::layer_backward``: the gradients of ``spectriton::layer``, by name, and its fake.

Gradients flow packed: the incoming gradient is the packed values' (split tanh's
derivative applied first), the kernel gradient is one product per source and the DFT's
adjoint, a spatial source's gradient goes back through the FFT's adjoint and a compressed
source's stays packed on its mask. A normalised layer's per-channel factor (from the
moments it used) scales the kernel, the weight's and the bias's gradients as BatchNorm's
weight does, not the incoming gradient; its affine's gradient comes from the same products.
"""

from itertools import accumulate
from typing import Optional

import torch
from torch import Tensor

from spectriton import backend, direct, transforms
from spectriton.compressed import CompressedSpectrum
from spectriton.geometry import BlockGeometry
from spectriton.moments import affine_grad, moments_scale
from spectriton.numerics import as_carried, carried_dtype, complex_dtype, compute_dtype, exact, spectrum_bins
from spectriton.nvtx import annotate
from spectriton.ops.first_order import refuse_double_backward
from spectriton.ops.sources import dc_real, source_spectrum
from spectriton.ops.spec import LayerSpec, from_named
from spectriton.ops.tiles import output_runs, part_of, weight_tiles


def gradient_names(sources: int) -> tuple[str, ...]:
    """The gradients :func:`layer_backward` returns, in order: ``inputs.<s>`` for source ``s``."""
    return ("weight", "bias", "residual", "affine", *(f"inputs.{s}" for s in range(sources)))


@torch.library.custom_op("spectriton::layer_backward", mutates_args=())
def layer_backward(
    spec: str,
    grad_values: Tensor,
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
    needs: str,
) -> list[Tensor]:
    """Gradients of ``spectriton::layer`` named by :func:`gradient_names`, each empty unless
    ``needs`` (comma-separated names) asks for it. ``named`` holds, named by ``names``
    (:func:`~spectriton.ops.spec.to_named`), the layer's output ``mask`` and ``offsets``,
    its ``values`` (split tanh only), the ``moments`` a normalised layer used and its
    ``affine``; the other arguments are the layer's (``beta`` and ``density`` complete
    its spec)."""
    cfg, geom = LayerSpec.decode(spec, beta, density), BlockGeometry.from_args(geometry)
    saved = from_named(names, named)
    values, out_mask, out_offsets, moments, affine = (
        saved.get(name) for name in ("values", "mask", "offsets", "moments", "affine")
    )
    wanted = set(needs.split(","))
    with annotate(lambda: f"layer.backward {cfg.describe(weight, geom.grid)}"), exact(weight.device):
        grads = _layer_backward(
            cfg, geom, batch, wanted, grad_values, weight, bias, values, out_mask, out_offsets, inputs, masks,
            offsets, moments, affine,
        )  # fmt: skip
    return [grads.get(name, weight.new_empty(0)) for name in gradient_names(len(inputs))]


def _layer_backward(
    cfg, geom, batch, wanted, grad_values, grouped, bias, values, out_mask, out_offsets, inputs, masks,
    offsets, moments, affine,
) -> dict[str, Tensor]:  # fmt: skip
    weight = transforms.dense_weight(grouped, cfg.dilation)
    ops, real = backend.ops(weight.device), compute_dtype(weight, *inputs)
    out_grid, grads = cfg.out_grid(geom), {}
    if cfg.activation:  # 8-bit values read as bfloat16 here only: no copy held through backward
        grad_values = ops.activation_backward(as_carried(values), grad_values)
    out_channels = weight.shape[0]
    grad_out = CompressedSpectrum._trusted(
        grad_values.to(real), out_mask, out_offsets, batch, out_channels, out_grid
    )
    del grad_values  # held by grad_out, which lets it go once unpacked
    if "residual" in wanted:  # the residual was added as it is: its gradient is the sum's, dense
        grads["residual"] = grad_out = ops.unpack(grad_out)  # which the products read too
    scale = None if affine is None else affine[0].to(real)  # BatchNorm's weight, per output channel
    wants_affine = affine is not None and "affine" in wanted
    if moments is not None:  # rsqrt(variance + eps) joins BatchNorm's scale: the gradient is not copied
        factor = moments_scale(moments).to(real)
        scale = factor if scale is None else scale * factor
        if wants_affine:  # the real parts at the DC bin (frequency 0 comes first), per channel
            dc = dc_real(grad_out, batch, out_channels).sum(0)
    wants_weight = "weight" in wanted
    wants_bias = "bias" in wanted or (wants_affine and bias is not None)

    def spectrum_of(index: int):  # a small map itself; a spatial map's FFT where the kernel gradient needs it
        source, mask, offset, channels = inputs[index], masks[index], offsets[index], cfg.channels[index]
        if mask is None and direct.applies(
            source, weight.shape[-2:], geom.grid, cfg.groups, cfg.shifts[index]
        ):
            return source.to(real)  # a small map, whose products run direct
        if mask is None and not (wants_weight or wants_affine):
            return None
        return source_spectrum(as_carried(source), mask, offset, batch, channels, geom.grid, real)

    if cfg.strided:  # computed once for every run of output channels below
        runs = output_runs(geom.bins, batch, out_channels, cfg.groups)
        spectra = [spectrum_of(index) for index in range(len(inputs))]
        first, starts = weight[runs[0]], accumulate(cfg.channels, initial=0)
        parts = [first[:, s : s + c] for s, c in zip(starts, cfg.channels)]  # as _products_backward's
        if all(len(weight_tiles(geom.bins, part, batch, cfg.groups)) == 1 for part in parts):
            spectra = [ops.operand(spectrum) for spectrum in spectra]  # each run reads it whole: unpack once
        spectra_of = spectra.__getitem__
    else:  # computed as each is needed, let go after
        spectra_of = spectrum_of
    wants = (wants_weight, wants_bias, wants_affine)
    computed = weight.to(real)  # in the products' precision
    computed_bias = None if bias is None else bias.to(real)
    if cfg.strided:  # back from the output's grid to the block's, dense: a run of channels at a time
        grad_out = grad_out if isinstance(grad_out, Tensor) else ops.unpack(grad_out)
        found, per_run = {}, {}
        for run in runs:
            grid_grad = transforms.crop_spectrum_adjoint(grad_out[..., run], geom)
            part = _products_backward(
                ops, cfg, geom, batch, wanted, computed[run], part_of(computed_bias, run),
                part_of(scale, run), grid_grad, masks, spectra_of, wants, packed=False,
            )  # fmt: skip
            for key, value in part.items():  # the sources' gradients summed as the runs go
                if key.startswith("inputs."):
                    found[key] = value if key not in found else found[key].add_(value)
                else:
                    per_run.setdefault(key, []).append(value)
            del part, grid_grad
        found |= {key: torch.cat(values) for key, values in per_run.items()}
    else:
        grad_out = ops.operand(grad_out)  # the packed values let go where it is unpacked
        found = _products_backward(
            ops, cfg, geom, batch, wanted, computed, computed_bias, scale, grad_out, masks, spectra_of,
            wants, packed=True,
        )  # fmt: skip
    del grad_out  # before the sources' gradients are finished
    for index, source in enumerate(inputs):
        grad = found.pop(f"inputs.{index}", None)
        if grad is None:
            continue
        if grad.is_complex() and masks[index] is None:  # a spatial source: back from its spectrum
            grad = transforms.map_spectrum_adjoint(grad, geom.grid, geom.size)
        elif grad.is_complex():  # a compressed source's dense gradient, packed on its mask
            grad = ops.pack(grad, masks[index], source.shape[0])
        grads[f"inputs.{index}"] = grad.to(carried_dtype(source.dtype))  # 8-bit: its bfloat16 carrier's
    if wants_weight:
        grads["weight"] = transforms.dense_weight_adjoint(found["weight"].to(weight.dtype), cfg.dilation)
    if wants_bias:
        grads["bias"] = found["bias"].to(weight.dtype)
    if wants_affine:
        grads["affine"] = affine_grad(found["inner"], dc, moments, out_grid).to(affine.dtype)
    return grads


def _products_backward(
    ops, cfg, geom, batch, wanted, weight, bias, scale, grad_out, masks, spectra_of, wants, packed,
) -> dict[str, Tensor]:  # fmt: skip
    """The gradients that go through the products, for ``weight``'s output channels and
    ``grad_out`` on the block's grid: each source's (``inputs.<s>``, its spectrum on the
    grid: dense, or packed on its mask where ``packed`` lets a whole product do it), the
    weight's and the bias's (scaled by BatchNorm's ``scale``), and the affine's ``inner``
    (``<G, X K>`` per channel, the bias's share included). ``spectra_of(s)``: source
    ``s``'s spectrum (None where no product reads it)."""
    wants_weight, wants_bias, wants_affine = wants
    out_channels, found, taps_parts, start = weight.shape[0], {}, [], 0
    inner = torch.zeros(out_channels, dtype=weight.dtype, device=weight.device)  # <grad_out, product>
    for index, (mask, channels, shift) in enumerate(zip(masks, cfg.channels, cfg.shifts)):
        spectrum_in = spectra_of(index)
        wants_source = f"inputs.{index}" in wanted
        part = weight[:, start : start + channels]
        start += channels
        packed_source = packed and mask is not None
        if direct.is_spatial(spectrum_in):  # a small map: its products ran direct
            grad_source, taps = _direct_gradients(
                ops, part, scale, grad_out, spectrum_in, geom.grid, shift, wants_source,
                wants_weight or wants_affine,
            )  # fmt: skip
            inner_part = None
        elif cfg.groups == 1 and transforms.is_pointwise(cfg.kernel, shift):
            wants_taps = wants_weight or wants_affine
            grad_source, taps, inner_part = _pointwise_gradients(
                ops, part, scale, grad_out, spectrum_in, packed_source, wants_source, wants_taps
            )
        else:
            tiles = weight_tiles(geom.bins, part, batch, cfg.groups)
            grad_source, taps, inner_part = _source_gradients(
                ops, cfg, geom, part, shift, scale, grad_out, spectrum_in, packed_source, tiles,
                wants_source, wants_weight, wants_affine,
            )  # fmt: skip
        if wants_source:
            found[f"inputs.{index}"] = grad_source
        if wants_weight:
            taps_parts.append(taps)
        if wants_affine:  # <G, X K> = Re sum K^H (X^H G): no product needed again
            inner += inner_part if taps is None else _rowwise_dot(taps, part)
    if wants_weight:
        grad_weight = taps_parts[0] if len(taps_parts) == 1 else torch.cat(taps_parts, dim=1)
        found["weight"] = grad_weight if scale is None else grad_weight.mul_(scale.view(-1, 1, 1, 1))
    if wants_bias:  # the bias's gradient before the scale
        dc_grid = dc_real(grad_out, batch, out_channels).sum(0) * transforms.bias_scale(geom.grid)
        inner += 0 if bias is None else bias * dc_grid
        found["bias"] = dc_grid if scale is None else dc_grid * scale
    if wants_affine:
        found["inner"] = inner
    return found


def _rowwise_dot(a: Tensor, b: Tensor) -> Tensor:
    """``sum(a[o] * b[o])`` for each output channel ``o`` of two weight-shaped tensors, with
    no weight-sized product made."""
    rows = a.shape[0]
    return torch.bmm(a.reshape(rows, 1, -1), b.reshape(rows, 1, -1).mT).view(rows)  # BLAS reads b's rows


def _direct_gradients(
    ops, part, scale, grad_out, x, grid, shift, wants_source, wants_taps
) -> tuple[Tensor | None, Tensor | None]:
    """:func:`_source_gradients` of a small map whose products ran direct
    (:mod:`spectriton.direct`): its gradient spatial (BatchNorm's ``scale`` on it), the
    taps' unscaled; the affine reads the taps."""
    grad = grad_out if isinstance(grad_out, Tensor) else ops.unpack(grad_out)
    return direct.gradients(x, part, grad, grid, shift, wants_source, wants_taps, scale)


def _pointwise_gradients(
    ops, part, scale, grad_out, spectrum_in, packed, wants_source, wants_taps
) -> tuple[Tensor | None, Tensor | None, None]:
    """:func:`_source_gradients` of an unshifted 1 x 1 kernel, whose spectrum is one matrix
    (:func:`~spectriton.transforms.pointwise_kernel`): the source's gradient is one product
    with ``K^H``, the taps' gradient ``Re sum_f X[f]^H gY[f]`` one GEMM over frequencies and
    batch (every phase is 1); the affine reads the taps."""
    grad_in = taps = None
    if wants_source:
        kernel_h = transforms.pointwise_kernel(part, adjoint=True)
        scaled = kernel_h if scale is None else kernel_h * scale.view(-1, 1)
        grad_in = ops.product_input_grad(grad_out, scaled, spectrum_in if packed else None)
    if wants_taps:
        summed = ops.pointwise_weight_grad(ops.operand(spectrum_in), grad_out)  # (C, O), laid out (O, C)
        taps = summed.mT.real.contiguous().view(part.shape)
    return grad_in, taps, None


def _source_gradients(
    ops, cfg, geom, part, shift, scale, grad_out, spectrum_in, packed, tiles, wants_source, wants_weight,
    wants_affine,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:  # fmt: skip
    """One source's gradient on the block's grid, its kernel's taps gradient and, without
    those, the affine's ``<G, X K>`` per channel, over kernel ``tiles``
    (:mod:`spectriton.ops.tiles`): with one tile the backend's products read the operands
    as they are (with ``packed``, the compressed source's gradient packed on its mask by the
    product), with several they read dense tiles, the source's gradient is dense and summed
    over a frequency run's channel runs, and each tile writes its rows of the taps."""
    whole = len(tiles) == 1
    if not whole:
        grad_out = ops.unpack(grad_out) if isinstance(grad_out, CompressedSpectrum) else grad_out
    source_tiles = None  # a compressed source's frequency runs, unpacked one at a time
    if not whole and isinstance(spectrum_in, CompressedSpectrum) and (wants_weight or wants_affine):
        source_tiles = ops.unpack_tiles(spectrum_in, [tile.bins for tile in tiles if tile.outs.start == 0])
    out_channels, channels = part.shape[:2]
    grad_in = taps = inner = source_tile = None
    if not whole and wants_weight:
        taps = part.new_empty(out_channels * channels, part[0, 0].numel())
    if wants_affine and not wants_weight:
        inner = part.new_zeros(out_channels)
    needs_kernel = wants_source or (wants_affine and not wants_weight)  # else the affine reads the taps
    kernels = transforms.kernel_spectra(part, geom.grid, shift, True, tiles) if needs_kernel else None
    for tile in tiles:
        new_bins = tile.outs.start == 0  # the first tile of a run of frequencies
        grad_tile = grad_out if whole else grad_out[tile.bins, :, tile.outs]
        kernel = next(kernels) if needs_kernel else None
        if wants_source:
            # BatchNorm's scale: on a whole layer's kernel (its gradient may be compressed),
            # else on the tile's dense gradient, which is smaller than the tile's kernel
            scaled = kernel if scale is None or not whole else kernel * scale.view(1, -1, 1)
            grad_scaled = grad_tile if scale is None or whole else grad_tile * scale[tile.outs].view(1, 1, -1)
            like = spectrum_in if whole and packed else None
            grad = ops.grouped_product_input_grad(grad_scaled, scaled, like, cfg.groups)
            if whole:
                grad_in = grad
            else:
                grad_in = grad.new_empty(geom.bins, *grad.shape[1:]) if grad_in is None else grad_in
                if new_bins:
                    grad_in[tile.bins] = grad
                else:
                    grad_in[tile.bins] += grad
            del scaled, grad_scaled, grad
        if wants_weight or wants_affine:
            if whole:
                source_tile = ops.operand(spectrum_in)
            elif new_bins:
                source_tile = None  # the last run's, before this one's is made
                source_tile = spectrum_in[tile.bins] if source_tiles is None else next(source_tiles)
            grad_kernel = ops.grouped_product_weight_grad(source_tile, grad_tile, cfg.groups)
            if wants_weight:
                rows = None if whole else taps[tile.outs.start * channels : tile.outs.stop * channels]
                tile_taps = transforms.kernel_taps(
                    grad_kernel, geom.grid, cfg.kernel, shift, tile.bins, out=rows, add=tile.bins.start > 0
                )
                taps = tile_taps if whole else taps
            else:
                inner[tile.outs] += torch.einsum("foc,fco->o", kernel, grad_kernel).real
            del grad_kernel
        del kernel  # this tile's transients, before the next tile's are made
    if wants_weight:
        taps = transforms.taps_as_weight(taps, out_channels, cfg.kernel)
    return grad_in, taps, inner


@layer_backward.register_fake
def _(spec, grad_values, weight, bias, inputs, masks, offsets, named, *, names, beta, density, geometry,
      batch, needs):  # fmt: skip
    affine = from_named(names, named).get("affine")
    cfg, geom = LayerSpec.decode(spec, beta, density), BlockGeometry.from_args(geometry)
    bins = spectrum_bins(cfg.out_grid(geom))
    precision = complex_dtype(compute_dtype(weight, *inputs))
    likes = {
        "weight": weight,
        "bias": weight.new_empty(weight.shape[0]),
        "residual": weight.new_empty(bins, batch, weight.shape[0], dtype=precision),
        "affine": weight.new_empty(2, weight.shape[0]) if affine is None else affine,
        **{
            f"inputs.{s}": source.new_empty(source.shape, dtype=carried_dtype(source.dtype))
            for s, source in enumerate(inputs)
        },
    }
    wanted = set(needs.split(","))
    names = gradient_names(len(inputs))
    return [torch.empty_like(likes[n]) if n in wanted else weight.new_empty(0) for n in names]


refuse_double_backward(layer_backward, "layer")
