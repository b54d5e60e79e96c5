"""Where a spatial tensor came from, so that a block keeps a recipe instead of the tensor.

A block's output is ``crop(IFFT(Z))`` of its last layer's compressed output ``Z``, maybe
max-pooled afterwards; backward keeps ``Z`` and the pool's window index anyway. When such
a tensor is the next block's input, the next block's first layer saves those instead of
the dense input and rebuilds it in backward (:func:`spectriton.ops.rebuild.rebuild_input`).

A recipe travels with the tensor it describes, as an attribute of that tensor: a view, a
copy or a detached alias has none (the next block keeps it as usual), and none survives
pickling. It holds its tensors weakly: it is valid only while autograd keeps them (so under
``torch.utils.checkpoint``, or where nothing saved them, the next block keeps its input as
usual) and while the tensor it rebuilds is not modified in place (its version counter is
checked). Under ``torch.compile`` nothing is recorded.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace

import torch

from spectriton.geometry import BlockGeometry

Window = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # a max pool's kernel, stride, padding


@dataclass(frozen=True)
class RecipeArgs:
    """The integers of a recipe: the ``spectriton::output`` op's batch, channels, geometry
    and layout, and the max pool that followed (None: none). They travel as one list of
    ints (:meth:`encode`), an op argument."""

    batch: int
    channels: int
    geom: BlockGeometry
    channels_last: bool
    pool: Window | None = None

    def encode(self) -> list[int]:
        """``[batch, channels, *geometry, channels_last, *pool]`` (pool: six zeros for none)."""
        pool = [n for pair in self.pool for n in pair] if self.pool else [0] * POOL_ARGS
        return [self.batch, self.channels, *self.geom.to_args(), int(self.channels_last), *pool]

    @classmethod
    def decode(cls, args: list[int]) -> RecipeArgs:
        """The recipe's integers back from :meth:`encode`."""
        batch, channels, *geometry, channels_last, kh, kw, sh, sw, ph, pw = args
        pool = ((kh, kw), (sh, sw), (ph, pw)) if kh else None
        return cls(batch, channels, BlockGeometry.from_args(geometry), bool(channels_last), pool)


@dataclass(frozen=True)
class Recipe:
    """What rebuilds a spatial tensor: the ``spectriton::output`` op's tensors (``values,
    mask, offsets``, held weakly) and :class:`RecipeArgs`, the samples made NaN, and a max
    pool's window positions (weakly) when one followed."""

    refs: tuple[weakref.ref, ...]
    nonfinite: torch.Tensor
    args: RecipeArgs
    version: int = field(default=0, compare=False)

    @classmethod
    def of(cls, values, mask, offsets, nonfinite, args: RecipeArgs) -> Recipe:
        """The recipe of a block output, ``spectriton::output(values, mask, offsets)``."""
        return cls(tuple(weakref.ref(t) for t in (values, mask, offsets)), nonfinite, args)

    @property
    def pooled_already(self) -> bool:
        return self.args.pool is not None

    def pooled(self, index: torch.Tensor, window: Window) -> Recipe:
        """The recipe of this tensor max-pooled with ``window`` (kernel, stride and padding
        pairs), ``index`` its packed window positions."""
        args = replace(self.args, pool=tuple(tuple(pair) for pair in window))
        return replace(self, refs=(*self.refs, weakref.ref(index)), args=args)

    def rebind(self, tensors: list[torch.Tensor]) -> Recipe:
        """This recipe over ``tensors`` (as :meth:`tensors` gives them): the same parts handed
        on, as a checkpoint hands on what it kept."""
        values, mask, offsets, nonfinite, *index = tensors
        refs = tuple(weakref.ref(t) for t in (values, mask, offsets, *index))
        return replace(self, refs=refs, nonfinite=nonfinite)

    def tensors(self) -> list[torch.Tensor] | None:
        """``[values, mask, offsets, nonfinite(, index)]``, or None if autograd no longer
        keeps one of them."""
        held = [ref() for ref in self.refs]
        if any(t is None for t in held):
            return None
        return [*held[:3], self.nonfinite, *held[3:]]

    def __reduce__(self):
        return type(None), ()  # copied or pickled, a tensor leaves autograd's parts behind


POOL_ARGS = 6  # the last arguments: a max pool's kernel, stride and padding (zeros: none)
_ATTRIBUTE = "_spectriton_recipe"  # where a tensor carries its recipe


def record(tensor: torch.Tensor, recipe: Recipe) -> None:
    """Say how ``tensor`` can be rebuilt (eager only)."""
    if not torch.compiler.is_compiling():
        setattr(tensor, _ATTRIBUTE, replace(recipe, version=tensor._version))


def lookup(tensor: torch.Tensor) -> Recipe | None:
    """The recipe of ``tensor`` if it has one, was not modified since, and autograd still
    keeps its parts."""
    if torch.compiler.is_compiling():
        return None
    recipe = getattr(tensor, _ATTRIBUTE, None)
    if recipe is None or recipe.version != tensor._version or recipe.tensors() is None:
        return None
    return recipe
