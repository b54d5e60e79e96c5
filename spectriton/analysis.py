"""What :func:`spectriton.convert` would do to a model, found without touching it: the
conversion's :class:`Options` (each layer's settings), and :class:`Analysis`, which walks
the model's containers, tries the patterns of :data:`spectriton.registry.PATTERNS` on each,
and returns a plan row per module (:mod:`spectriton.report`) and a
:class:`~spectriton.rewrite.ContainerEdit` per container to apply."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from spectriton import _checks, pooling
from spectriton.conv import SpectralConv2d, SpectralDenseBlock, SpectralSequential, stays_spatial
from spectriton.numerics import EIGHT_BIT
from spectriton.registry import PATTERNS, Site
from spectriton.report import Plan, PlanRow, layer_reason
from spectriton.rewrite import ContainerEdit, copy_hooks, join


@dataclass(frozen=True)
class Options:
    """The checked arguments of :func:`spectriton.convert` (see :func:`options`), and the
    spectral layer they make of each convolution (:meth:`layer`)."""

    beta: float
    density: float | None
    activation: str | None
    value_dtype: torch.dtype | None
    filter_fn: Callable[[nn.Module, str], bool] | None
    normalize: bool = True
    affine: bool = True
    default_beta: bool = False  # beta left at its default, which counts standard deviations

    @property
    def exact_unnormalised(self) -> bool:
        """Whether a layer that folds no BatchNorm converts exactly (beta 0, no activation):
        at the default beta, which counts standard deviations of a normalised channel, such
        a layer has no scale (an absolute 0.7 keeps nothing of a deep layer's spectrum).
        A density budget, or a beta the caller chose, thresholds it."""
        return self.default_beta and self.density is None

    def layer(
        self, conv: nn.Conv2d, activation: str | None, normalize: bool = False, norm: nn.Module | None = None
    ) -> SpectralConv2d:
        """``conv`` as a spectral layer; ``normalize`` when it absorbs a BatchNorm, ``norm``
        that BatchNorm, whose state the layer's norm holds (``SpectralConv2d.from_conv``).
        Not normalised at the default beta, it is exact (see :attr:`exact_unnormalised`)."""
        normalize = normalize and self.normalize
        options = dict(
            beta=self.beta, density=self.density, activation=activation, value_dtype=self.value_dtype
        )
        if not normalize and self.exact_unnormalised:
            options = dict(beta=0.0, density=None, activation=None, value_dtype=None)
        held = normalize and norm is not None
        options.update({"affine": self.affine} if held else {"normalize": normalize})
        layer = SpectralConv2d.from_conv(conv, norm if normalize else None, **options)
        copy_hooks(conv, layer)
        return layer

    def skip_reason(self, module: nn.Module, fqn: str) -> str:
        """Why the convolution or pool ``module`` (at ``fqn``) stays spatial, or "" if it
        converts: its own rules (:func:`spectriton.conv.stays_spatial`,
        :func:`spectriton.pooling.stays_spatial`), then ``filter_fn``."""
        reason = (stays_spatial if isinstance(module, nn.Conv2d) else pooling.stays_spatial)(module)
        if not reason and self.filter_fn is not None and not self.filter_fn(module, fqn):
            return "filter_fn returned False"
        return reason


def options(model, beta, activation, density, filter_fn, value_dtype, normalize, affine) -> Options:
    """The arguments of :func:`spectriton.convert` and :func:`spectriton.plan`, checked."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if filter_fn is not None:
        _checks.function(filter_fn, "filter_fn", "filter_fn(module, qualified_name) -> bool")
    default_beta = beta is _checks.CONVERT_BETA
    beta, density = _checks.beta_or_density(beta, density)
    activation = _checks.activation(activation)
    if value_dtype is None and activation is not None:  # SpecNet mode: 8-bit values by default
        value_dtype = EIGHT_BIT
    normalize, affine = _checks.boolean(normalize, "normalize"), _checks.boolean(affine, "affine")
    value_dtype = _checks.value_dtype(value_dtype)
    return Options(beta, density, activation, value_dtype, filter_fn, normalize, affine, default_beta)


class Analysis:
    """The plan rows (``rows``) and container edits (``edits``) for converting ``model``; a
    bare convolution, which has no container, is swapped whole (``root_swap``).

    Each container not already taken is a :class:`~spectriton.registry.Site`: its child
    convolutions that ``skip_reason`` lets convert (a row for each that it does not), then
    the patterns of :data:`~spectriton.registry.PATTERNS` in their order."""

    def __init__(self, model: nn.Module, opts: Options) -> None:
        self.opts, self.rows, self.edits = opts, Plan(), []
        self.root_swap: nn.Module | None = None
        if isinstance(model, nn.Conv2d):  # a bare convolution: nothing to trace
            reason = opts.skip_reason(model, "")
            if reason:
                self.rows.append(PlanRow("(root)", "Conv2d", "skip", reason))
                return
            self.root_swap = opts.layer(model, None)
            reason = layer_reason(self.root_swap, opts, "a convolution alone")
            self.rows.append(PlanRow("(root)", "Conv2d", "spectral conv", reason))
            return
        done: set[str] = set()  # the children of a container a whole pattern converted
        for fqn, module in model.named_modules():
            if isinstance(module, (SpectralConv2d, SpectralSequential, SpectralDenseBlock)):
                continue
            if fqn in done or fqn.rpartition(".")[0] in done:
                done.add(fqn)
                continue
            site = self._site(fqn, module)
            matched = False
            for pattern in PATTERNS.values():
                if pattern.specnet and opts.activation is None:
                    continue
                found = pattern.match(self, site)
                if found is None:
                    continue
                pattern.rewrite(self, site, found)
                matched = True
                if pattern.whole:
                    done.update(join(fqn, name) for name, _ in module.named_children())
                    break
            if matched:
                self.edits.append(site.edit)

    def _site(self, fqn: str, module: nn.Module) -> Site:
        """``module`` as the patterns see it, with a skip row for each child convolution
        that stays spatial."""
        convs = {}
        for name, child in module.named_children():
            if type(child) is not nn.Conv2d:
                continue
            reason = self.opts.skip_reason(child, join(fqn, name))
            if reason:
                self.rows.append(PlanRow(join(fqn, name), "Conv2d", "skip", reason))
            else:
                convs[name] = child
        return Site(ContainerEdit(fqn, module), convs)

    def apply(self, model: nn.Module) -> nn.Module:
        """Make the edits in place; returns the converted model."""
        if self.root_swap is not None:
            return self.root_swap
        for edit in self.edits:
            edit.apply()
        return model
