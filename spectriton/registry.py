"""The rewrites :func:`spectriton.convert` knows, in one table: :data:`PATTERNS`.

A :class:`Pattern` looks at one container at a time (a :class:`Site`): ``match(analysis,
site)`` returns what it found there, or None; ``rewrite(analysis, site, found)`` records
what becomes of it: the child swaps and the new forward in ``site.edit``
(:class:`~spectriton.rewrite.ContainerEdit`), a plan row per module in ``analysis.rows``.
The analysis (:class:`~spectriton.analysis.Analysis`) tries the patterns in the table's
order; a ``whole`` one that matches converts the container with its children, and no later
pattern looks at it. A new pattern is a class with static ``match`` and ``rewrite``,
added with :func:`register` where it belongs in the order; its fx matching and graph
building go in :mod:`spectriton.patterns`, what makes a module eligible in that module's
own file (``stays_spatial``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import fx, nn

from spectriton import patterns, pooling
from spectriton.report import PlanRow, hooks_note, layer_reason
from spectriton.rewrite import ContainerEdit, copy_hooks, frozen, join

if TYPE_CHECKING:
    from spectriton.analysis import Analysis


@dataclass
class Site:
    """A container as the patterns see it: its edit, the child convolutions that may
    convert and that no pattern has taken yet (by child name), and why one left to the
    last pattern converts alone."""

    edit: ContainerEdit
    convs: dict[str, nn.Conv2d]
    alone: dict[str, str] = field(default_factory=dict)

    @property
    def fqn(self) -> str:
        return self.edit.fqn

    @property
    def module(self) -> nn.Module:
        return self.edit.module


@dataclass(frozen=True)
class Pattern:
    """One rewrite: ``match`` finds it in a :class:`Site`, ``rewrite`` records it
    (module docstring). ``specnet``: looked for only with an activation; ``whole``: a match
    converts the container's children too."""

    name: str
    match: Callable[[Analysis, Site], Any]
    rewrite: Callable[[Analysis, Site, Any], None]
    specnet: bool = False
    whole: bool = False


PATTERNS: dict[str, Pattern] = {}


def register(name: str, *, specnet: bool = False, whole: bool = False):
    """Add a class's static ``match`` and ``rewrite`` to :data:`PATTERNS` as ``name``, tried
    after the patterns registered before it."""

    def add(cls: type) -> type:
        PATTERNS[name] = Pattern(name, cls.match, cls.rewrite, specnet, whole)
        return cls

    return add


@register("dense block", specnet=True, whole=True)
class DenseBlock:
    """A container that calls its children on the list of its input and every earlier
    output and concatenates them (DenseNet's): one spectral dense block, every source kept
    compressed once (:func:`spectriton.patterns.dense_block`)."""

    @staticmethod
    def match(analysis: Analysis, site: Site) -> list[patterns.DenseLayer] | None:
        opts, fqn = analysis.opts, site.fqn
        if not len(site.module._modules):
            return None

        def eligible(conv: nn.Conv2d, name: str) -> bool:
            return not opts.skip_reason(conv, join(fqn, name))

        layers = patterns.dense_block(site.module, eligible)
        if layers is None:
            return None
        if opts.exact_unnormalised and not (
            opts.normalize and all(all(layer.normalized) for layer in layers)
        ):
            return None  # a layer without a BatchNorm converts exactly, its BN and ReLU kept
        return layers

    @staticmethod
    def rewrite(analysis: Analysis, site: Site, layers: list[patterns.DenseLayer]) -> None:
        edit, fqn, module = site.edit, site.fqn, site.module
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
                swap = analysis.opts.layer(conv, "split_tanh" if activated else None, normalized, norm)
                edit.swaps[qualified] = swap
                action = "spectral layer" if activated else "spectral conv"
                reason = layer_reason(swap, analysis.opts)
                reason += f"; {role} of layer {index} of the dense block at {head}" + hooks_note(conv)
                analysis.rows.append(PlanRow(join(fqn, qualified), "Conv2d", action, reason))
            stages.append([bottleneck, features])
            for name, why in bypassed:
                norm = child.get_submodule(name)
                why += hooks_note(norm, bypassed=True)
                analysis.rows.append(
                    PlanRow(join(fqn, join(layer.name, name)), type(norm).__name__, "bypassed", why)
                )
                edit.frozen += frozen(norm, edit.swaps.values())
                edit.absorbed[join(layer.name, name)] = why
        edit.graph = patterns.dense_graph(module, stages)


@register("pool", specnet=True)
class Pool:
    """``MaxPool2d`` (overlapping windows and padding included) and ``AvgPool2d`` children:
    compact pools (:func:`spectriton.pooling.compact_pool`)."""

    @staticmethod
    def match(analysis: Analysis, site: Site) -> dict[str, nn.Module] | None:
        pools = {
            name: child
            for name, child in site.module.named_children()
            if type(child) in (nn.MaxPool2d, nn.AvgPool2d)
        }
        return pools or None

    @staticmethod
    def rewrite(analysis: Analysis, site: Site, pools: dict[str, nn.Module]) -> None:
        for name, pool in pools.items():
            reason = analysis.opts.skip_reason(pool, join(site.fqn, name))
            kind = type(pool).__name__
            analysis.rows.append(
                PlanRow(join(site.fqn, name), kind, "skip" if reason else "compact pool", reason)
            )
            if not reason:
                site.edit.swaps[name] = pooling.compact_pool(pool)
                copy_hooks(pool, site.edit.swaps[name])


@dataclass
class Chains:
    """What :class:`Chain` found in a traced forward."""

    graph: fx.Graph | None = None
    error: str = ""  # why the forward did not trace
    calls: dict[str, int] = field(default_factory=dict)
    chains: list[patterns.Chain] = field(default_factory=list)


@register("chain", specnet=True)
class Chain:
    """``conv [BN] [ReLU]``, then the next convolution at the same resolution, and a residual
    block's shortcut add and ReLU after the last: one spectral block
    (:func:`spectriton.patterns.find_chains`). A convolution called more than once, or in a
    forward that does not trace, is left to :class:`Convolution`; one never called stays."""

    @staticmethod
    def match(analysis: Analysis, site: Site) -> Chains | None:
        opts = analysis.opts
        if not site.convs or (opts.exact_unnormalised and not opts.normalize):  # no layer could fold a BN
            return None
        try:
            graph = patterns.trace(site.module)
        except Exception as error:  # any failure to trace means: swap the convolutions alone
            return Chains(error=type(error).__name__)
        calls = patterns.module_calls(graph)
        once = {name: conv for name, conv in site.convs.items() if calls.get(name, 0) == 1}
        unnormalised = not opts.exact_unnormalised  # else only a BN lets a conv absorb what follows
        return Chains(graph, "", calls, patterns.find_chains(graph, site.module, once, unnormalised))

    @staticmethod
    def rewrite(analysis: Analysis, site: Site, found: Chains) -> None:
        fqn, module, edit, convs = site.fqn, site.module, site.edit, site.convs
        if found.error:
            for name in convs:
                site.alone[name] = f"forward does not trace ({found.error}): conv swapped alone"
            return
        for name in list(convs):
            if name not in found.calls:
                analysis.rows.append(PlanRow(join(fqn, name), "Conv2d", "skip", "not called by forward"))
                del convs[name]
            elif found.calls[name] != 1:
                site.alone[name] = "called more than once"
        for chain in found.chains:
            _rewrite_chain(analysis, site, chain, found.calls)
        if any(chain.absorbed or len(chain.convs) > 1 for chain in found.chains):
            patterns.rewrite_chains(found.graph, found.chains)
            edit.graph = found.graph
            for chain in found.chains:
                for name in chain.absorbed:
                    if name in found.calls and found.calls[name] == 1:
                        edit.frozen += frozen(module.get_submodule(name), edit.swaps.values())


def _rewrite_chain(analysis: Analysis, site: Site, chain: patterns.Chain, calls: dict[str, int]) -> None:
    """One chain's swaps and rows: its convolutions, then what it absorbs."""
    fqn, module, edit = site.fqn, site.module, site.edit
    head = join(fqn, chain.convs[0])
    for index, name in enumerate(chain.convs):
        conv = site.convs.pop(name)
        activated, norm = chain.activated[index], chain.norms[index]
        swap = analysis.opts.layer(
            conv,
            "split_tanh" if activated else None,
            norm is not None,
            None if norm is None else module.get_submodule(norm),
        )
        edit.swaps[name] = swap
        action = "spectral layer" if activated else "spectral conv"
        reason = layer_reason(swap, analysis.opts)
        if len(chain.convs) > 1:
            reason += f"; layer {index} of the block at {head}"
        if chain.residual is not None and index == len(chain.convs) - 1:
            reason += f"; adds the shortcut ({chain.residual.name}) before it, spectrally"
        if chain.absorbed or len(chain.convs) > 1:  # run inside a block
            reason += hooks_note(conv)
        analysis.rows.append(PlanRow(join(fqn, name), "Conv2d", action, reason))
    for name in chain.absorbed:
        why = f"absorbed by the layer at {head}"
        if name in calls:  # a child module
            child = module.get_submodule(name)
            row = PlanRow(join(fqn, name), type(child).__name__, "bypassed", why)
            row.reason += hooks_note(child, bypassed=True)
        else:  # a function or method called in the container's forward
            row = PlanRow(fqn or "(root)", name, "bypassed", why)
        analysis.rows.append(row)
        if name in calls:
            edit.absorbed[name] = row.reason


@register("convolution")
class Convolution:
    """Every convolution no earlier pattern took: a spectral layer of its own (no activation;
    linear mode, ``normalize=False``, or what :class:`Chain` left)."""

    @staticmethod
    def match(analysis: Analysis, site: Site) -> dict[str, nn.Conv2d] | None:
        return dict(site.convs) or None

    @staticmethod
    def rewrite(analysis: Analysis, site: Site, convs: dict[str, nn.Conv2d]) -> None:
        context = "linear" if analysis.opts.activation is None else "normalize=False"
        for name, conv in convs.items():
            site.edit.swaps[name] = swap = analysis.opts.layer(conv, None)
            reason = layer_reason(swap, analysis.opts, site.alone.get(name, context))
            analysis.rows.append(PlanRow(join(site.fqn, name), "Conv2d", "spectral conv", reason))
            del site.convs[name]
