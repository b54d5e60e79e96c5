"""A block input rebuilt from its recipe (:mod:`spectriton.provenance`): what a layer keeps
instead of a spatial input an earlier block made."""

import torch
from torch import Tensor

from spectriton.nonfinite import mark_nonfinite_
from spectriton.ops.output import output
from spectriton.provenance import RecipeArgs
from spectriton.windows import window_values


def rebuild_input(tensors: list[Tensor], args: RecipeArgs, dtype: torch.dtype) -> Tensor:
    """A block input again from its recipe's ``tensors`` (``values, mask, offsets,
    nonfinite(, index)``) and ``args``: the earlier block's output, NaN where that block's
    input was not finite, max-pooled by window index when a pool followed. Bitwise the
    tensor the forward read (8-bit values unpack as the bfloat16 numbers the forward
    carried)."""
    values, mask, offsets, nonfinite, *index = tensors
    y = output(
        values, mask, offsets, None, batch=args.batch, channels=args.channels, geometry=args.geom.to_args(),
        dtype=dtype, channels_last=args.channels_last, keep_values=False,
    )  # fmt: skip
    y = mark_nonfinite_(y, nonfinite)  # y is this call's own
    return window_values(y, index[0], *args.pool) if args.pool else y
