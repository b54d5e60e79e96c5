"""Where a spatial tensor came from, so that a block keeps a recipe instead of the tensor.

A block's output is ``crop(IFFT(Z))`` of its last layer's compressed output ``Z``, maybe
max-pooled afterwards; backward keeps ``Z`` and the pool's window index anyway. When such
a tensor is the next block's input, the next block's first layer saves those instead of
the dense input and rebuilds it in backward (:func:`spectriton.custom_ops.rebuild_input`).

A recipe holds its tensors weakly: it is valid only while autograd keeps them (so under
``torch.utils.checkpoint``, or where nothing saved them, the next block keeps its input
as usual) and while the tensor it rebuilds is not modified in place (its version counter
is checked). Under ``torch.compile`` nothing is recorded.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace

import torch
from torch.utils.weak import WeakIdKeyDictionary


@dataclass(frozen=True)
class Recipe:
    """What rebuilds a spatial tensor: the ``spectriton::output`` op's tensors (``values,
    mask, offsets``, held weakly) and integer arguments, the samples made NaN, and a max
    pool's window positions (weakly), kernel, stride and padding when one followed."""

    refs: tuple[weakref.ref, ...]
    nonfinite: torch.Tensor
    args: tuple[int, ...]
    version: int = field(default=0, compare=False)

    @classmethod
    def of(cls, values, mask, offsets, nonfinite, args) -> Recipe:
        """The recipe of a block output; ``args`` are the output op's integer arguments."""
        return cls(
            tuple(weakref.ref(t) for t in (values, mask, offsets)), nonfinite, (*args, *[0] * POOL_ARGS)
        )

    @property
    def pooled_already(self) -> bool:
        return len(self.refs) > 3

    def pooled(self, index: torch.Tensor, window) -> Recipe:
        """The recipe of this tensor max-pooled with ``window`` (kernel, stride and padding
        pairs), ``index`` its packed window positions."""
        pool = [n for pair in window for n in pair]
        return replace(self, refs=(*self.refs, weakref.ref(index)), args=(*self.args[:-POOL_ARGS], *pool))

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


POOL_ARGS = 6  # the last arguments: a max pool's kernel, stride and padding (zeros: none)
_RECIPES = WeakIdKeyDictionary()


def record(tensor: torch.Tensor, recipe: Recipe) -> None:
    """Say how ``tensor`` can be rebuilt (eager only)."""
    if not torch.compiler.is_compiling():
        _RECIPES[tensor] = replace(recipe, version=tensor._version)


def lookup(tensor: torch.Tensor) -> Recipe | None:
    """The recipe of ``tensor`` if it has one, was not modified since, and autograd still
    keeps its parts."""
    if torch.compiler.is_compiling():
        return None
    recipe = _RECIPES.get(tensor)
    if recipe is None or recipe.version != tensor._version or recipe.tensors() is None:
        return None
    return recipe
