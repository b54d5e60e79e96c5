"""Running spectral layers as one block, and what the block keeps for backward.

A block is one FFT in, its layers on the spectral flow, one IFFT out (:func:`run_layers`;
a dense block: :func:`run_dense_layers`). It keeps its layers' compressed spectra, or, where
those would outweigh the maps they stand for (maps of a pixel or two, whose spectra lie on
grids several times the map), its input and shortcut only, and is replayed in backward
through ``torch.utils.checkpoint`` (:func:`_outweighs_input` decides, from what its layers
kept in the step before).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from spectriton import _checks, provenance
from spectriton.exact_zeros import bias_where_dead_
from spectriton.functional import SpectralFlow, empty_output, spectral_output
from spectriton.geometry import block_geometry
from spectriton.ops.rebuild import rebuild_input
from spectriton.recompute import recomputed
from spectriton.tracing import traced_function

if TYPE_CHECKING:
    from spectriton.conv import SpectralConv2d


def _parameters(layers: list[SpectralConv2d]) -> list[torch.Tensor]:
    return [p for layer in layers for p in (layer.weight, layer.bias) if p is not None]


def run_layers(
    layers: list[SpectralConv2d], x: torch.Tensor, hooks: bool = True, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """Check ``x`` and run ``layers`` as one spectral block.

    With ``hooks``, each layer is called as a module, so hooks (and the memory accounting)
    see each one, with :class:`SpectralFlow` objects as input and output. ``residual``
    (broadcasting to the output) is added to the last layer's product before its threshold and
    activation: a residual block whose add and activation stay in the spectral domain.

    What the block keeps for backward is its first layer's ``keep`` (see
    :class:`~spectriton.SpectralConv2d`); ``"auto"`` keeps its input where its spectra
    would outweigh it (:func:`_outweighs_input`). Compiled, a block keeps its spectra.
    Under fx tracing it is one node of the graph (:mod:`spectriton.tracing`).
    """
    node = traced_function(run_layers, layers, x, hooks=hooks, residual=residual)
    if node is not None:
        return node
    _checks.spatial_input(x, layers[0].in_channels)
    keeps_input = _keeps_input(layers, x, residual)
    if not torch.compiler.is_compiling():
        layers[0].last_keep = "input" if keeps_input else "spectra"
    if keeps_input:
        return _run_recomputed(layers, x, hooks, residual)
    return _run_block(layers, x, hooks, residual)


def _keeps_input(layers: list[SpectralConv2d], x: torch.Tensor, residual: torch.Tensor | None) -> bool:
    """Whether this forward keeps the block's input and runs it again in backward (only
    where autograd records it), by the first layer's ``keep``. Compiled, a block keeps its
    spectra.

    ``"auto"`` decides at the first forward after a backward reached the block's parameters
    (and wherever the input's shape or the mode changes), from what its layers kept in the
    step before: an outer ``torch.utils.checkpoint`` that runs the block again in backward,
    before its parameters' gradients, finds the forward's decision though the layers
    measured new densities since (the replay must save what the forward saved)."""
    first = layers[0]
    if torch.compiler.is_compiling() or not torch.is_grad_enabled() or first.keep == "spectra":
        return False
    if first.keep == "input":
        return True
    key = (first.training, tuple(x.shape), x.dtype)
    if first._plan is None or first._plan.key != key:
        if first._plan is not None:
            first._plan.handle.remove()
        first._plan = _Plan(key, _outweighs_input(layers, x, residual), layers)
    return first._plan.keeps_input


class _Plan:
    """``keep="auto"``'s decision for a block, held by its first layer until a backward
    reaches the block's parameters."""

    def __init__(self, key: tuple, keeps_input: bool, layers: list[SpectralConv2d]) -> None:
        self.key, self.keeps_input = key, keeps_input
        first = layers[0]
        trained = [p for p in _parameters(layers) if p.requires_grad]

        def done(_grad) -> None:
            self.handle.remove()
            if first._plan is self:
                first._plan = None

        self.handle = torch.autograd.graph.register_multi_grad_hook(trained, done, mode="any")

    def __reduce__(self):
        return type(None), ()  # a copied or pickled layer decides afresh


def _run_block(
    layers: list[SpectralConv2d],
    x: torch.Tensor,
    hooks: bool,
    residual: torch.Tensor | None,
    replays: list[tuple] | None = None,
):
    """The block's layers on its flow; ``replays``: each layer's ``(moments, training)`` when
    a checkpoint runs the block again in backward (:meth:`SpectralConv2d.step`)."""
    flow = SpectralFlow.start(x, [layer.shape for layer in layers])
    if x.shape[0] == 0:
        anchor = empty_output(x, _parameters(layers), layers[-1].out_channels, flow.geom.out)
        return anchor if residual is None else anchor + residual.sum() * 0
    for index, layer in enumerate(layers):
        extra = residual if index == len(layers) - 1 else None
        if replays is not None:
            flow = layer.step([flow], extra, replay=replays[index])
        else:
            flow = layer(flow, extra) if hooks else layer.step([flow], extra)
    y = spectral_output(flow)
    if len(layers) == 1 and residual is None and layers[0].linear:  # nn.Conv2d exactly
        layer = layers[0]
        shape = (layer.kernel_size, layer.padding, layer.stride, layer.dilation, layer.groups)
        y = bias_where_dead_(y, x, layer.bias, *shape)
    return y


def _outweighs_input(layers: list[SpectralConv2d], x: torch.Tensor, residual: torch.Tensor | None) -> bool:
    """Whether the block's kept values, at the fractions its layers kept in their last
    training step, would outweigh what recomputing it in backward keeps instead: its output
    (which the next block then keeps, having no spectrum to rebuild it from) and a shortcut
    that is neither its input nor rebuildable. Its input costs the same either way (itself,
    or the recipe both forms keep: the earlier block's spectrum). Then keeping those and
    recomputing is the smaller exact form (DESIGN.md section 3): maps of a few pixels, whose
    spectra lie on grids several times the map."""
    if not (torch.is_grad_enabled() and layers[0].training):
        return False
    if any(layer.last_density is None for layer in layers):
        return False
    geom = block_geometry([layer.shape for layer in layers], tuple(x.shape[-2:]))
    real = 8 if x.dtype == torch.float64 else 4
    spectral = 0.0
    for index, layer in enumerate(layers):
        if layer.activation is None:  # keeps no values
            continue
        strided = index == len(layers) - 1 and geom.strided
        bins = geom.of_output().bins if strided else geom.bins
        pair = 2 * (layer.value_dtype.itemsize if layer.value_dtype is not None else real)
        spectral += layer.last_density * x.shape[0] * layer.out_channels * bins * pair
    dense = x.shape[0] * layers[-1].out_channels * math.prod(geom.out) * x.element_size()
    if residual is not None and residual is not x and provenance.lookup(residual) is None:
        dense += residual.numel() * residual.element_size()
    return spectral > dense


def _run_recomputed(
    layers: list[SpectralConv2d], x: torch.Tensor, hooks: bool, residual: torch.Tensor | None
):
    """:func:`_run_block` keeping its input and shortcut only, each as the recipe it can be
    rebuilt from where it has one (kept already by the block that made it), run again in
    backward with the moments the forward used (handed to the checkpoint: the running ones
    move on)."""
    moments = [None if layer.norm is None else layer.norm.moments(layer.training) for layer in layers]
    modes = [layer.training for layer in layers]
    same = residual is x
    kept = [_Kept(x)] + ([_Kept(residual)] if residual is not None and not same else [])
    forward = [x, residual]  # the forward's own tensors, let go once it ran

    def body(*inputs):
        if forward:
            x, residual = forward
            forward.clear()
            return _run_block(layers, x, hooks, residual)
        spatial = []
        for tensor in kept:
            spatial.append(tensor.rebuilt(inputs[: len(tensor.parts)]))
            inputs = inputs[len(tensor.parts) :]
        x = spatial[0]
        residual = x if same else (spatial[1] if len(spatial) > 1 else None)
        replays = list(zip(inputs, modes, strict=True))
        return _run_block(layers, x, False, residual, replays)  # no module hooks: the forward ran them

    return recomputed(body, *(part for tensor in kept for part in tensor.parts), *moments)


class _Kept:
    """A spatial tensor a recomputed block keeps: itself, or the parts of its recipe
    (:mod:`spectriton.provenance`), which the block that made it keeps anyway."""

    def __init__(self, t: torch.Tensor) -> None:
        self.recipe = provenance.lookup(t)
        self.parts = [t] if self.recipe is None else self.recipe.tensors()
        self.dtype, self.requires_grad = t.dtype, t.requires_grad

    def rebuilt(self, parts) -> torch.Tensor:
        """The tensor again from ``parts`` (as the checkpoint hands them back), with its
        recipe, so that the replayed block keeps what its forward kept."""
        if self.recipe is None:
            return parts[0]
        with torch.no_grad():  # the replay saves what its forward saved, no more
            y = rebuild_input(list(parts), self.recipe.args, self.dtype)
        y.requires_grad_(self.requires_grad)
        provenance.record(y, self.recipe.rebind(list(parts)))
        return y


def run_dense_layers(stages: list[list[SpectralConv2d]], x: torch.Tensor) -> torch.Tensor:
    """Run a dense block in the spectral domain: stage ``i``'s first layer reads ``x`` and
    every earlier stage's output (channels concatenated in that order), its later layers
    (a bottleneck's) read the layer before. Returns ``x`` and every stage's output
    concatenated. Each source stays compressed once; no concatenated copy is made before
    the output."""
    node = traced_function(run_dense_layers, stages, x)
    if node is not None:  # fx tracing: one node
        return node
    _checks.spatial_input(x, stages[0][0].in_channels)
    layers = [layer for stage in stages for layer in stage]
    flows = [SpectralFlow.start(x, [layer.shape for layer in layers])]
    if x.shape[0] == 0:
        channels = x.shape[1] + sum(stage[-1].out_channels for stage in stages)
        return empty_output(x, _parameters(layers), channels, x.shape[-2:])
    for stage in stages:
        flow = stage[0](flows)
        for layer in stage[1:]:
            flow = layer(flow)
        flows.append(flow)
    return torch.cat([spectral_output(flow) for flow in flows], dim=1)
