"""``spectriton::output``: compressed spectrum -> spatial output, its gradient op
``spectriton::output_backward``, their fakes and the autograd glue.

Backward keeps the mask, and the values and offsets a split tanh layer keeps anyway (so
that a later block can rebuild its input from them, :mod:`spectriton.ops.rebuild`): its
8-bit values where it stores them so.
"""

from typing import Optional

import torch
from torch import Tensor

from spectriton import backend, dft, transforms
from spectriton.compressed import CompressedSpectrum, unpack_bits
from spectriton.geometry import BlockGeometry
from spectriton.numerics import complex_dtype, compute_dtype, spectrum_bins
from spectriton.nvtx import annotate
from spectriton.ops.first_order import refuse_double_backward


@torch.library.custom_op("spectriton::output", mutates_args=())
def output(
    values: Tensor,
    mask: Tensor,
    offsets: Tensor,
    stored: Optional[Tensor],
    *,
    batch: int,
    channels: int,
    geometry: list[int],
    dtype: torch.dtype,
    channels_last: bool,
    keep_values: bool,
) -> Tensor:
    """Compressed spectrum -> spatial output ``(batch, channels, *out)`` in ``dtype``: inverse
    FFT, circular crop and stride of ``geometry`` (a :class:`BlockGeometry`'s
    :meth:`~BlockGeometry.to_args`), laid out channels-last when asked.

    Backward needs only the mask. With ``keep_values`` (set where a split tanh layer keeps
    the values anyway: the same storage, counted once) the op keeps the values (``stored``,
    the 8-bit ones, where given) and offsets too, so that a later block can rebuild this
    output from them.
    """
    geom = BlockGeometry.from_args(geometry)
    spectrum = CompressedSpectrum._trusted(values, mask, offsets, batch, channels, geom.grid)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with annotate("output.forward"):
        return transforms.to_space(backend.ops(values.device).unpack(spectrum), geom, fmt).to(dtype)


@output.register_fake
def _(values, mask, offsets, stored, *, batch, channels, geometry, dtype, channels_last, keep_values):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = BlockGeometry.from_args(geometry).out
    return torch.empty(batch, channels, *out, dtype=dtype, device=values.device, memory_format=fmt)


def _setup_output(ctx, inputs, keyword_only_inputs, output) -> None:
    values, mask, offsets, stored = inputs
    args = keyword_only_inputs
    kept = values if stored is None else stored
    ctx.save_for_backward(mask, *([kept, offsets] if args["keep_values"] else []))
    ctx.nnz, ctx.real = values.shape[0], compute_dtype(values)
    ctx.batch, ctx.channels, ctx.geometry = args["batch"], args["channels"], args["geometry"]


def _output_grad(ctx, grad_y):
    mask = ctx.saved_tensors[0]
    grad_values = output_backward(
        grad_y,
        mask,
        nnz=ctx.nnz,
        batch=ctx.batch,
        channels=ctx.channels,
        geometry=ctx.geometry,
        real=ctx.real,
    )
    return grad_values, None, None, None


output.register_autograd(_output_grad, setup_context=_setup_output)


@torch.library.custom_op("spectriton::output_backward", mutates_args=())
def output_backward(
    grad_y: Tensor,
    mask: Tensor,
    *,
    nnz: int,
    batch: int,
    channels: int,
    geometry: list[int],
    real: torch.dtype,
) -> Tensor:
    """Gradient of :func:`output` with respect to the packed values ``(nnz, 2)``."""
    geom = BlockGeometry.from_args(geometry)
    with annotate("output.backward"):
        grad_y = grad_y.to(real)
        runs = len(dft.channel_chunks(batch, channels, geom.grid))
        whole = nnz == spectrum_bins(geom.grid) * batch * channels  # the packed values are dense
        if backend.cpu_forms(grad_y.device) and not whole and runs > 1:
            return _packed_by_channels(grad_y, geom, mask, nnz)
        return backend.ops(mask.device).pack(transforms.to_space_adjoint(grad_y, geom), mask, nnz)


def _packed_by_channels(grad_y: Tensor, geom: BlockGeometry, mask: Tensor, nnz: int) -> Tensor:
    """:func:`~spectriton.transforms.to_space_adjoint` of ``grad_y`` packed at ``mask``, a
    run of channels at a time (:func:`~spectriton.dft.channel_chunks`), so that the whole
    dense spectrum is never made beside the packed values (CPU: the stream positions are
    found by index). A kept entry's position is the count kept before its (frequency,
    sample) row, plus before its run in the row, plus its rank in the run."""
    batch, channels = grad_y.shape[:2]
    bins = spectrum_bins(geom.grid)
    keep = unpack_bits(mask, bins * batch * channels).view(bins, batch, channels)
    counts = keep.view(torch.uint8).sum(-1, dtype=torch.int64)
    starts = (counts.view(-1).cumsum(0) - counts.view(-1)).view(bins, batch, 1)  # before each row
    values = grad_y.new_empty(nnz, dtype=complex_dtype(grad_y.dtype))
    for run in dft.channel_chunks(batch, channels, geom.grid):
        part = keep[..., run]
        spectrum = transforms.to_space_adjoint(grad_y[:, run], geom).view(part.shape)
        ranks = part.cumsum(-1).add_(starts - 1).masked_select(part)  # masked_select: 2x a bool index
        values[ranks] = spectrum.masked_select(part)
        starts += part.view(torch.uint8).sum(-1, keepdim=True, dtype=torch.int64)
    return torch.view_as_real(values)


@output_backward.register_fake
def _(grad_y, mask, *, nnz, batch, channels, geometry, real):
    return grad_y.new_empty(nnz, 2, dtype=real)


refuse_double_backward(output_backward, "output")
