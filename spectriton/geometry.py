"""Grid, crop and stride of a spectral block (DESIGN.md section 2).

A block pads its input once to a grid ``P``, runs its layers as circular
cross-correlations on that grid and reads its output back with a crop: output row ``i``
reads circular row ``(i - offset) mod P0``, where ``offset`` is the sum of the layers'
paddings, then keeps every ``stride``-th row. For one layer this is exactly ``F.conv2d``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from spectriton.numerics import half_spectrum, spectrum_bins


@dataclass(frozen=True)
class LayerShape:
    """What the geometry needs of one layer: kernel, padding and stride, as (rows, cols)."""

    kernel: tuple[int, int]
    padding: tuple[int, int]
    stride: tuple[int, int]


@dataclass(frozen=True)
class BlockGeometry:
    """Sizes of one block for one input size; all pairs are (rows, cols).

    ``grid`` is the FFT size, ``offset`` the circular shift of the crop, ``full`` the
    output size before the stride and ``out`` after it.
    """

    size: tuple[int, int]
    grid: tuple[int, int]
    offset: tuple[int, int]
    full: tuple[int, int]
    stride: tuple[int, int]

    @property
    def out(self) -> tuple[int, int]:
        return tuple(-(-f // s) for f, s in zip(self.full, self.stride))  # type: ignore[return-value]

    @property
    def half(self) -> tuple[int, int]:
        """Shape of a half spectrum on the grid (what ``rfft2`` returns)."""
        return half_spectrum(self.grid)

    @property
    def bins(self) -> int:
        """Number of complex entries in one half-spectrum map."""
        return spectrum_bins(self.grid)

    @property
    def strided(self) -> bool:
        return self.stride != (1, 1)

    def to_args(self) -> list[int]:
        """The geometry as ten integers (an op's ``geometry`` argument): size, grid, offset,
        full and stride, rows then columns."""
        return [*self.size, *self.grid, *self.offset, *self.full, *self.stride]

    @classmethod
    def from_args(cls, args: Sequence[int]) -> BlockGeometry:
        """The geometry back from :meth:`to_args`."""
        size, grid, offset, full, stride = (tuple(args[i : i + 2]) for i in range(0, 10, 2))
        return cls(size, grid, offset, full, stride)  # type: ignore[arg-type]

    def of_output(self) -> BlockGeometry:
        """The geometry of a spectrum taken of this block's output itself (what a strided
        layer keeps): its grid is the output, read with no crop and no stride."""
        out = self.out
        return BlockGeometry(size=out, grid=out, offset=(0, 0), full=out, stride=(1, 1))


def block_geometry(layers: Sequence[LayerShape], size: tuple[int, int]) -> BlockGeometry:
    """The geometry of ``layers`` chained on an input of spatial ``size``.

    Raises ``ValueError`` when a kernel is larger than its padded input or when a layer
    other than the last has a stride.
    """
    for index, layer in enumerate(layers[:-1]):
        if layer.stride != (1, 1):
            raise ValueError(
                f"stride must be 1 for every layer of a block but the last; "
                f"layer {index} has stride {layer.stride}"
            )
    grid, offset, full = [], [], []
    for axis in range(2):
        n = size[axis]
        sizes = []
        for index, layer in enumerate(layers):
            k, p = layer.kernel[axis], layer.padding[axis]
            if k > n + 2 * p:
                raise ValueError(
                    f"kernel_size {layer.kernel} of layer {index} is larger than its padded "
                    f"input ({n} + 2 * {p} along {'rows' if axis == 0 else 'columns'})"
                )
            n = n + 2 * p - k + 1
            sizes.append(n)
        kmax = max(layer.kernel[axis] for layer in layers)
        grid.append(max(size[axis] + kmax - 1, *sizes))
        offset.append(sum(layer.padding[axis] for layer in layers))
        full.append(sizes[-1])
    return BlockGeometry(
        size=tuple(size),  # type: ignore[arg-type]
        grid=tuple(grid),  # type: ignore[arg-type]
        offset=tuple(offset),  # type: ignore[arg-type]
        full=tuple(full),  # type: ignore[arg-type]
        stride=layers[-1].stride,
    )
