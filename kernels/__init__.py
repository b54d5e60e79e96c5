"""Triton kernels of spectriton, installed as ``spectriton.kernels``.

The launchers here have the names and signatures of their pure-torch twins in
:mod:`spectriton.reference`; :mod:`spectriton.backend` picks one or the other.
"""

from spectriton.kernels.grouped import (
    grouped_product,
    grouped_product_input_grad,
    grouped_product_weight_grad,
)
from spectriton.kernels.packing import pack, unpack, unpack_tiles
from spectriton.kernels.spectral_product import (
    operand,
    pointwise_weight_grad,
    product,
    product_input_grad,
    product_threshold,
    product_weight_grad,
)
from spectriton.kernels.threshold import activation_backward, threshold_compact

__all__ = [
    "activation_backward",
    "grouped_product",
    "grouped_product_input_grad",
    "grouped_product_weight_grad",
    "pack",
    "operand",
    "pointwise_weight_grad",
    "product",
    "product_threshold",
    "product_input_grad",
    "product_weight_grad",
    "threshold_compact",
    "unpack",
    "unpack_tiles",
]
