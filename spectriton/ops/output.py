"""``spectriton::output``: compressed spectrum -> spatial output, its gradient op
``spectriton::output_backward``, their fakes and the autograd glue.

Backward keeps the mask, and the values and offsets a split tanh layer keeps anyway (so
that a later block can rebuild its input from them, :mod:`spectriton.ops.rebuild`).
"""

import torch
from torch import Tensor

from spectriton import backend, transforms
from spectriton.compressed import CompressedSpectrum
from spectriton.geometry import BlockGeometry
from spectriton.numerics import compute_dtype
from spectriton.nvtx import annotate
from spectriton.ops.first_order import refuse_double_backward


@torch.library.custom_op("spectriton::output", mutates_args=())
def output(
    values: Tensor,
    mask: Tensor,
    offsets: Tensor,
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
    the values anyway: the same storage, counted once) the op keeps the values and offsets
    too, so that a later block can rebuild this output from them.
    """
    geom = BlockGeometry.from_args(geometry)
    spectrum = CompressedSpectrum._trusted(values, mask, offsets, batch, channels, geom.grid)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with annotate("output.forward"):
        return transforms.to_space(backend.ops(values.device).unpack(spectrum), geom, fmt).to(dtype)


@output.register_fake
def _(values, mask, offsets, *, batch, channels, geometry, dtype, channels_last, keep_values):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = BlockGeometry.from_args(geometry).out
    return torch.empty(batch, channels, *out, dtype=dtype, device=values.device, memory_format=fmt)


def _setup_output(ctx, inputs, keyword_only_inputs, output) -> None:
    values, mask, offsets = inputs
    args = keyword_only_inputs
    ctx.save_for_backward(mask, *([values, offsets] if args["keep_values"] else []))
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
    return grad_values, None, None


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
    with annotate("output.backward"):
        grad_spectrum = transforms.to_space_adjoint(grad_y.to(real), BlockGeometry.from_args(geometry))
        return backend.ops(mask.device).pack(grad_spectrum, mask, nnz)


@output_backward.register_fake
def _(grad_y, mask, *, nnz, batch, channels, geometry, real):
    return grad_y.new_empty(nnz, 2, dtype=real)


refuse_double_backward(output_backward, "output")
