"""Swap spectral layers into an existing model, say what would change, and swap them back.

:func:`convert` walks the model once, container by container (a post-order walk in the
style of torchao's ``convert_to_float8_training``), and edits it in place:

- ``activation=None``: every eligible ``nn.Conv2d`` becomes a
  :class:`~spectriton.SpectralConv2d` sharing its parameters.
- ``activation="split_tanh"`` (SpecNet): each container's ``forward`` is traced with
  ``torch.fx`` (its children as leaves; see :mod:`spectriton.patterns`). A convolution
  followed by ``BatchNorm2d`` and/or ``ReLU`` becomes a spectral layer with split tanh,
  the BN and ReLU are bypassed (the BN's normalisation stays: the layer's
  :class:`~spectriton.norm.SpectralNorm` holds the BN's running statistics, weight and
  bias), and an :class:`~spectriton.converted.Absorbed` placeholder that runs nothing
  takes each bypassed module's name and state_dict keys;
  consecutive such convolutions at one resolution share one spectral block; a
  convolution followed by neither keeps a threshold but no activation.
  At the default ``beta`` (0.3 standard deviations of a normalised channel), a
  convolution that folds no BatchNorm is converted exactly instead (beta 0, no activation,
  what follows it stays): its spectrum has no scale for that beta (an absolute threshold
  keeps much or nothing of a layer's, as the weights' scale goes); a ``density`` budget or
  a ``beta`` the caller gives thresholds it.
  A dense block (DenseNet's pattern) becomes one spectral dense block: every source kept
  compressed once, no concatenated copies. ``MaxPool2d``
  (overlapping windows and padding included) becomes the compact pool, ``AvgPool2d`` one
  that keeps nothing. The container's class becomes ``Converted<Name>``
  (:mod:`spectriton.converted`), a subclass of its own whose ``forward`` is the rewritten
  graph's (children, buffers and attributes stay;
  pickle, ``torch.save`` and ``copy.deepcopy`` keep the change). Where a forward does not
  trace, its convolutions are swapped alone (no activation). A layer run inside a block is
  called on the block's ``SpectralFlow``, and a bypassed module is not called: their
  forward hooks see flows or do not run; the plan notes it and convert warns.

Ineligible layers are skipped with a reason: a padding mode other than zeros,
``filter_fn`` returning False. Grouped, dilated and 1x1 convolutions (a 1x1 kernel is a
per-frequency channel product) convert like any other.
:func:`plan` returns the same decisions without touching the model; :func:`revert`
undoes a conversion.

This module holds those three entry points. The decisions are made in
:mod:`spectriton.analysis` by the patterns of :data:`spectriton.registry.PATTERNS` (dense
block, pool, chain, convolution; their fx matching in :mod:`spectriton.patterns`) and the
rules of each layer's own module (``stays_spatial`` in :mod:`spectriton.conv` and
:mod:`spectriton.pooling`), reported by :mod:`spectriton.report` (:class:`Plan`,
:class:`PlanRow`, :data:`EXACT`, re-exported here) and applied by :mod:`spectriton.rewrite`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from spectriton import _checks
from spectriton.analysis import Analysis, options
from spectriton.conv import SpectralConv2d, SpectralDenseBlock, SpectralSequential
from spectriton.converted import Absorbed
from spectriton.pooling import CompactAvgPool2d, CompactMaxPool2d
from spectriton.report import EXACT, HOOKS, Plan, PlanRow, ordered, warn_about_hooks
from spectriton.rewrite import STATE, copy_hooks

__all__ = ["EXACT", "HOOKS", "Plan", "PlanRow", "convert", "plan", "revert"]


def plan(
    model: nn.Module,
    *,
    beta: float = _checks.CONVERT_BETA,
    activation: str | None = "split_tanh",
    density: float | None = None,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    value_dtype: torch.dtype | None = None,
    normalize: bool = True,
    affine: bool = True,
) -> Plan:
    """What :func:`convert` would do with the same options: one row per convolution,
    pool and bypassed layer (qualified name, type, action, reason). The model is not
    touched. Rows follow the order of ``model.named_modules()``."""
    opts = options(model, beta, activation, density, filter_fn, value_dtype, normalize, affine)
    return ordered(Analysis(model, opts).rows, model)


def convert(
    model: nn.Module,
    *,
    beta: float = _checks.CONVERT_BETA,
    activation: str | None = "split_tanh",
    density: float | None = None,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    value_dtype: torch.dtype | None = None,
    normalize: bool = True,
    affine: bool = True,
) -> nn.Module:
    """Swap spectral layers into ``model`` in place and return it (see the module doc).

    ``filter_fn(module, qualified_name) -> bool`` chooses which convolutions and pools to
    swap. ``beta`` is the threshold (in a layer that absorbs a BatchNorm, in standard
    deviations of each channel, elsewhere in the spectrum's own units); left at its
    default, a layer that absorbs no BatchNorm (linear mode: every layer) is converted
    exactly, with no threshold and no activation. ``density`` replaces it by a per-layer
    budget of kept entries.
    ``value_dtype`` None stores kept values as 8-bit pairs (``torch.float8_e4m3fn``, carried
    between layers as bfloat16; :mod:`spectriton.numerics`) in SpecNet mode and exactly in
    linear mode (``torch.complex64`` asks for full precision in both). ``normalize`` (SpecNet
    mode) makes each layer that absorbs a BatchNorm a normalised one
    (:class:`~spectriton.SpectralConv2d`'s ``normalize``): it divides each channel by its
    running RMS, as the BN did, so that what it keeps does not depend on the weights' scale
    and ``beta`` is relative to that RMS; False bypasses the BN only. ``affine`` (with
    ``normalize``): the layer also takes the BN's weight and bias, which scale and shift
    each normalised channel and keep training (unless the weight is all zero when the layer
    first runs: a zero-initialised residual branch). Parameters are shared, not copied; device, dtype,
    training flag, buffers and the hooks of swapped modules are kept (inside a spectral
    block they see ``SpectralFlow`` objects; a bypassed module's do not run: warned).
    """
    opts = options(model, beta, activation, density, filter_fn, value_dtype, normalize, affine)
    analysis = Analysis(model, opts)
    warn_about_hooks(ordered(analysis.rows, model))
    return analysis.apply(model)


def _to_conv(layer: SpectralConv2d) -> nn.Conv2d:
    conv = nn.Conv2d(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        layer.stride,
        layer.padding,
        dilation=layer.dilation,
        groups=layer.groups,
        bias=layer.bias is not None,
        device="meta",
    )
    conv.weight, conv.bias = layer.weight, layer.bias
    copy_hooks(layer, conv)
    return conv


def _reverted(module: nn.Module) -> nn.Module | None:
    """The spatial twin of a spectral module, or None if ``module`` is not spectral."""
    if isinstance(module, SpectralConv2d):
        return _to_conv(module)
    if isinstance(module, Absorbed):
        return module.restored()
    if isinstance(module, CompactMaxPool2d):
        return nn.MaxPool2d(module.kernel_size, module.stride, module.padding)
    if isinstance(module, CompactAvgPool2d):
        twin = nn.AvgPool2d(1)
        twin.__dict__.update(module.__dict__)
        return twin
    if isinstance(module, SpectralSequential):
        return nn.Sequential(*[_to_conv(layer) for layer in module])
    return None


def revert(model: nn.Module) -> nn.Module:
    """Spectral layers back to ``nn.Conv2d`` (current weights, shared), compact pools back to
    ``nn.MaxPool2d``, converted containers back to their own ``forward``, the modules
    :class:`Absorbed` placeholders stand for back at their names; returns the model.

    What cannot be undone: the weights trained in the spectral domain stay as trained;
    BN and ReLU layers that a SpecNet conversion bypassed come back as they were before
    it (their parameters did not train meanwhile), a BN a normalised layer absorbed with
    its weight, bias and running statistics as the layer trained them; a ``SpectralSequential`` becomes an
    ``nn.Sequential`` of its convolutions without activations, a ``SpectralDenseBlock``
    is left as it is (it has no spatial twin), and density thresholds and running powers
    are dropped.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    root = _reverted(model)
    if root is not None:
        return root
    for module in list(model.modules()):
        if hasattr(module, STATE):
            for p in getattr(module, STATE):
                p.requires_grad_(True)
            delattr(module, STATE)
            module.__class__ = type(module)._spectriton_class[0]
        if isinstance(module, SpectralDenseBlock):
            continue
        for name, child in list(module.named_children()):
            twin = _reverted(child)
            if twin is not None:
                setattr(module, name, twin)
    return model
