"""A layer's configuration as one typed value, :class:`LayerSpec`, and its encoding as the
ops' ``spec`` argument (a string: ``torch.library`` ops take strings, and the compiler
keeps one as a constant of the graph)."""

import ast
import dataclasses
import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from spectriton.geometry import BlockGeometry

NUMBERS = ("beta", "density")  # the fields that travel as float op arguments, not in the string


@dataclass(frozen=True)
class LayerSpec:
    """What one layer needs besides tensors and the sizes of its input.

    A layer reads one or more sources (several in a dense block); ``channels[s]`` and
    ``shifts[s]`` give each source's channel count and kernel shift. ``kernel`` is the
    weight's taps spread by ``dilation``. ``density``, when set, replaces ``beta`` by the
    threshold that keeps that fraction of the product's entries. A ``strided`` layer (the
    last of a strided block) crops its product to the block's output first: the threshold
    and split tanh act on the spectrum of that output, on a grid of the output's size, so
    that the layer keeps what its output needs, not a spectrum ``stride**2`` times larger.

    The op arguments are :meth:`encode`'s string plus ``beta`` and ``density`` (the floats,
    :data:`NUMBERS`), and the sizes that follow the input (the block's geometry, the batch):
    those travel as plain op arguments, so that the compiler may keep them symbolic.
    """

    kernel: tuple[int, int]
    beta: float
    activation: bool
    value_dtype: torch.dtype | None
    channels: tuple[int, ...]
    shifts: tuple[tuple[int, int], ...]
    density: float | None = None
    groups: int = 1
    dilation: tuple[int, int] = (1, 1)
    strided: bool = False

    def encode(self) -> str:
        """The ops' ``spec`` argument: the fields but :data:`NUMBERS`, by name."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in NUMBERS}
        dtype = self.value_dtype
        fields["value_dtype"] = None if dtype is None else str(dtype).removeprefix("torch.")
        return repr(fields)

    @staticmethod
    @functools.lru_cache(maxsize=1024)
    def decode(text: str, beta: float, density: float | None) -> "LayerSpec":
        """The spec back from :meth:`encode` and the ops' ``beta`` and ``density``."""
        fields = ast.literal_eval(text)
        if fields["value_dtype"] is not None:
            fields["value_dtype"] = getattr(torch, fields["value_dtype"])
        return LayerSpec(beta=beta, density=density, **fields)

    def cropped(self, geom: BlockGeometry) -> BlockGeometry | None:
        """The crop a strided layer's product is read with, ``geom`` (None: not strided)."""
        return geom if self.strided else None

    def out_grid(self, geom: BlockGeometry) -> tuple[int, int]:
        """The grid of the layer's output spectrum: the block's, or a strided layer's output."""
        return geom.of_output().grid if self.strided else geom.grid

    def describe(self, weight: Tensor, grid: tuple[int, int]) -> str:
        """A short label for profiler ranges, e.g. ``64->128 3x3 grid 34x34``."""
        kernel, grid_text = "x".join(map(str, self.kernel)), "x".join(map(str, grid))
        return f"{weight.shape[1] * self.groups}->{weight.shape[0]} {kernel} grid {grid_text}"


def to_named(tensors: dict[str, Tensor | None]) -> tuple[str, list[Tensor]]:
    """Optional tensors as an op's ``names`` and ``named`` arguments: the given ones (not
    None) in order, their names comma-separated (:func:`from_named` reads them back)."""
    given = {name: tensor for name, tensor in tensors.items() if tensor is not None}
    return ",".join(given), list(given.values())


def from_named(names: str, named: list) -> dict:
    """``{name: tensor}`` from an op's ``names`` and ``named`` arguments (also for a list
    shaped as ``named``, such as its entries' ``needs_input_grad``)."""
    return dict(zip(names.split(","), named)) if names else {}
