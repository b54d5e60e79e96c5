"""What :func:`spectriton.convert` would do to a model, found without touching it: the
conversion's :class:`Options` (each layer's settings), and :class:`Analysis`, which walks
the model's containers, matches the patterns of :mod:`spectriton.patterns` in each, and
returns a plan row per module (:mod:`spectriton.report`) and a
:class:`~spectriton.rewrite.ContainerEdit` per container to apply."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from spectriton import _checks, patterns, pooling
from spectriton.conv import SpectralConv2d, SpectralDenseBlock, SpectralSequential, stays_spatial
from spectriton.report import Plan, PlanRow, hooks_note, layer_reason
from spectriton.rewrite import ContainerEdit, copy_hooks, frozen, join


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
    default_beta = beta is _checks.DEFAULT_BETA
    beta, density = _checks.beta_or_density(beta, density)
    activation = _checks.activation(activation)
    if value_dtype is None and activation is not None:  # SpecNet mode: bfloat16 values by default
        value_dtype = torch.bfloat16
    normalize, affine = _checks.boolean(normalize, "normalize"), _checks.boolean(affine, "affine")
    value_dtype = _checks.value_dtype(value_dtype)
    return Options(beta, density, activation, value_dtype, filter_fn, normalize, affine, default_beta)


class Analysis:
    """The plan rows (``rows``) and container edits (``edits``) for converting ``model``; a
    bare convolution, which has no container, is swapped whole (``root_swap``)."""

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
        done: set[str] = set()  # the layers of a dense block already rewritten
        for fqn, module in model.named_modules():
            if isinstance(module, (SpectralConv2d, SpectralSequential, SpectralDenseBlock)):
                continue
            if fqn in done or fqn.rpartition(".")[0] in done:
                done.add(fqn)
                continue
            if opts.activation is not None and self._dense_block(fqn, module):
                done.update(join(fqn, name) for name, _ in module.named_children())
                continue
            self._container(fqn, module)

    def _dense_block(self, fqn: str, module: nn.Module) -> bool:
        """Rewrite ``module`` as one spectral dense block if it is one (see
        :mod:`spectriton.patterns`); returns whether it was."""

        def eligible(conv: nn.Conv2d, name: str) -> bool:
            return not self.opts.skip_reason(conv, join(fqn, name))

        layers = patterns.dense_block(module, eligible) if len(module._modules) else None
        if layers is None:
            return False
        if self.opts.exact_unnormalised and not (
            self.opts.normalize and all(all(layer.normalized) for layer in layers)
        ):
            return False  # a layer without a BatchNorm converts exactly, its BN and ReLU kept
        edit = ContainerEdit(fqn, module)
        head = fqn or "(root)"
        pre = "pre-activation: the sources are kept activated by the layers that made them"
        stages = []
        for index, layer in enumerate(layers):
            child = module.get_submodule(layer.name)
            bottleneck, features = (join(layer.name, name) for name in layer.convs)
            bypassed = [(name, pre) for name in layer.pre]
            bypassed += [
                (name, f"absorbed by the layer at {join(fqn, bottleneck)}") for name in layer.between
            ]
            for qualified, activated, normalized, norm, role in zip(
                (bottleneck, features),
                layer.activated,
                layer.normalized,
                layer.norms,
                ("bottleneck", "output"),
            ):
                conv = module.get_submodule(qualified)
                norm = None if norm is None else child.get_submodule(norm)
                swap = self.opts.layer(conv, "split_tanh" if activated else None, normalized, norm)
                edit.swaps[qualified] = swap
                action = "spectral layer" if activated else "spectral conv"
                reason = layer_reason(swap, self.opts)
                reason += f"; {role} of layer {index} of the dense block at {head}" + hooks_note(conv)
                self.rows.append(PlanRow(join(fqn, qualified), "Conv2d", action, reason))
            stages.append([bottleneck, features])
            for name, why in bypassed:
                norm = child.get_submodule(name)
                why += hooks_note(norm, bypassed=True)
                self.rows.append(
                    PlanRow(join(fqn, join(layer.name, name)), type(norm).__name__, "bypassed", why)
                )
                edit.frozen += frozen(norm, edit.swaps.values())
                edit.absorbed[join(layer.name, name)] = why
        edit.graph = patterns.dense_graph(module, stages)
        self.edits.append(edit)
        return True

    def _children(self, module: nn.Module, fqn: str):
        convs, pools = {}, {}
        for name, child in module.named_children():
            child_fqn = join(fqn, name)
            if type(child) is nn.Conv2d:
                convs[name] = (child, self.opts.skip_reason(child, child_fqn))
            elif type(child) in (nn.MaxPool2d, nn.AvgPool2d) and self.opts.activation is not None:
                pools[name] = (child, self.opts.skip_reason(child, child_fqn))
        return convs, pools

    def _container(self, fqn: str, module: nn.Module) -> None:
        convs, pools = self._children(module, fqn)
        if not convs and not pools:
            return
        edit = ContainerEdit(fqn, module)
        for name, (pool, reason) in pools.items():
            kind = type(pool).__name__
            self.rows.append(PlanRow(join(fqn, name), kind, "skip" if reason else "compact pool", reason))
            if not reason:
                edit.swaps[name] = pooling.compact_pool(pool)
                copy_hooks(pool, edit.swaps[name])
        eligible = {name: conv for name, (conv, reason) in convs.items() if not reason}
        for name, (_, reason) in convs.items():
            if reason:
                self.rows.append(PlanRow(join(fqn, name), "Conv2d", "skip", reason))
        exact = self.opts.exact_unnormalised and not self.opts.normalize  # no layer could fold a BN
        if self.opts.activation is None or exact or not eligible:
            context = "linear" if self.opts.activation is None else "normalize=False"
            for name, conv in eligible.items():
                edit.swaps[name] = self.opts.layer(conv, None)
                reason = layer_reason(edit.swaps[name], self.opts, context)
                self.rows.append(PlanRow(join(fqn, name), "Conv2d", "spectral conv", reason))
        else:
            self._specnet(edit, eligible)
        self.edits.append(edit)

    def _specnet(self, edit: ContainerEdit, eligible: dict[str, nn.Conv2d]) -> None:
        fqn, module = edit.fqn, edit.module
        try:
            graph = patterns.trace(module)
        except Exception as error:  # any failure to trace means: swap the convolutions alone
            why = f"forward does not trace ({type(error).__name__}): conv swapped alone"
            for name, conv in eligible.items():
                edit.swaps[name] = self.opts.layer(conv, None)
                reason = layer_reason(edit.swaps[name], self.opts, why)
                self.rows.append(PlanRow(join(fqn, name), "Conv2d", "spectral conv", reason))
            return
        calls = patterns.module_calls(graph)
        for name, conv in list(eligible.items()):
            if name not in calls:
                self.rows.append(PlanRow(join(fqn, name), "Conv2d", "skip", "not called by forward"))
            elif calls[name] != 1:
                edit.swaps[name] = self.opts.layer(conv, None)
                reason = layer_reason(edit.swaps[name], self.opts, "called more than once")
                self.rows.append(PlanRow(join(fqn, name), "Conv2d", "spectral conv", reason))
            if calls.get(name, 0) != 1:
                del eligible[name]
        unnormalised = not self.opts.exact_unnormalised  # else only a BN lets a conv absorb what follows
        chains = patterns.find_chains(graph, module, eligible, unnormalised)
        for chain in chains:
            head = join(fqn, chain.convs[0])
            for index, name in enumerate(chain.convs):
                activated, norm = chain.activated[index], chain.norms[index]
                swap = self.opts.layer(
                    eligible[name],
                    "split_tanh" if activated else None,
                    norm is not None,
                    None if norm is None else module.get_submodule(norm),
                )
                edit.swaps[name] = swap
                action = "spectral layer" if activated else "spectral conv"
                reason = layer_reason(swap, self.opts)
                if len(chain.convs) > 1:
                    reason += f"; layer {index} of the block at {head}"
                if chain.residual is not None and index == len(chain.convs) - 1:
                    reason += f"; adds the shortcut ({chain.residual.name}) before it, spectrally"
                if chain.absorbed or len(chain.convs) > 1:  # run inside a block
                    reason += hooks_note(eligible[name])
                self.rows.append(PlanRow(join(fqn, name), "Conv2d", action, reason))
            for name in chain.absorbed:
                why = f"absorbed by the layer at {head}"
                if name in calls:  # a child module
                    child = module.get_submodule(name)
                    row = PlanRow(join(fqn, name), type(child).__name__, "bypassed", why)
                    row.reason += hooks_note(child, bypassed=True)
                else:  # a function or method called in the container's forward
                    row = PlanRow(fqn or "(root)", name, "bypassed", why)
                self.rows.append(row)
                if name in calls:
                    edit.absorbed[name] = row.reason
        if any(chain.absorbed or len(chain.convs) > 1 for chain in chains):
            patterns.rewrite_chains(graph, chains)
            edit.graph = graph
            for chain in chains:
                for name in chain.absorbed:
                    if name in calls and calls[name] == 1:
                        edit.frozen += frozen(module.get_submodule(name), edit.swaps.values())

    def apply(self, model: nn.Module) -> nn.Module:
        """Make the edits in place; returns the converted model."""
        if self.root_swap is not None:
            return self.root_swap
        for edit in self.edits:
            edit.apply()
        return model
