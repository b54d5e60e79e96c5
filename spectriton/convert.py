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
  At the default ``beta`` (standard deviations of a normalised channel), a convolution
  that folds no BatchNorm is converted exactly instead (beta 0, no activation, what
  follows it stays): its spectrum has no scale for that beta (absolute, 0.7 keeps nothing
  of a deep layer's); a ``density`` budget or a ``beta`` the caller gives thresholds it.
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
"""

from __future__ import annotations

import inspect
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from spectriton import _checks, patterns
from spectriton.blocks import run_dense_layers, run_layers
from spectriton.conv import SpectralConv2d, SpectralDenseBlock, SpectralSequential
from spectriton.converted import Absorbed, converted_class
from spectriton.pooling import CompactAvgPool2d, CompactMaxPool2d

_STATE = "_spectriton_converted"  # on a container whose forward convert replaced


@dataclass
class PlanRow:
    """What :func:`convert` does to one module."""

    name: str
    kind: str
    action: str
    reason: str = ""


class Plan(list):
    """Rows of :class:`PlanRow`, printable as a table."""

    def table(self) -> str:
        widths = [max([len(h)] + [len(getattr(r, f)) for r in self]) for h, f in _COLUMNS]
        lines = ["  ".join(h.ljust(w) for (h, _), w in zip(_COLUMNS, widths)).rstrip()]
        lines.append("-" * len(lines[0]))
        for row in self:
            lines.append("  ".join(getattr(row, f).ljust(w) for (_, f), w in zip(_COLUMNS, widths)).rstrip())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


_COLUMNS = [("module", "name"), ("type", "kind"), ("action", "action"), ("reason", "reason")]


@dataclass(frozen=True)
class _Options:
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
        _copy_hooks(conv, layer)
        return layer


def _options(model, beta, activation, density, filter_fn, value_dtype, normalize, affine) -> _Options:
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
    return _Options(beta, density, activation, value_dtype, filter_fn, normalize, affine, default_beta)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _conv_skip_reason(conv: nn.Conv2d, fqn: str, opts: _Options) -> str:
    """Why ``conv`` stays spatial, or "" if it can be converted."""
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} (the spectral grid is zero-padded)"
    if conv.padding == "same" and any(k % 2 == 0 for k in conv.kernel_size):
        return "padding='same' with an even kernel (asymmetric padding)"
    if opts.filter_fn is not None and not opts.filter_fn(conv, fqn):
        return "filter_fn returned False"
    return ""


def _pool_skip_reason(pool: nn.MaxPool2d, fqn: str, opts: _Options) -> str:
    k, padding = _pair(pool.kernel_size), _pair(pool.padding)
    if _pair(pool.dilation) != (1, 1) or pool.ceil_mode or pool.return_indices:
        return "dilation, ceil_mode or return_indices set"
    if k[0] * k[1] > 256:
        return "window of more than 256 positions"
    if any(2 * p > n for p, n in zip(padding, k)):
        return f"padding {padding} over half the kernel {k}"
    if opts.filter_fn is not None and not opts.filter_fn(pool, fqn):
        return "filter_fn returned False"
    return ""


def _compact_pool(pool: nn.MaxPool2d | nn.AvgPool2d) -> nn.Module:
    if isinstance(pool, nn.AvgPool2d):  # keeps nothing for backward
        options = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
        return CompactAvgPool2d(**{name: getattr(pool, name) for name in options})
    return CompactMaxPool2d(pool.kernel_size, pool.stride or None, pool.padding)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


@dataclass
class _ContainerEdit:
    """What convert does to one container: child swaps and, maybe, a new forward."""

    fqn: str
    module: nn.Module
    swaps: dict[str, nn.Module] = field(default_factory=dict)
    graph: fx.Graph | None = None
    frozen: list[nn.Parameter] = field(default_factory=list)
    absorbed: dict[str, str] = field(default_factory=dict)  # child modules the graph stops calling: why


class _Analysis:
    def __init__(self, model: nn.Module, opts: _Options) -> None:
        self.opts, self.rows, self.edits = opts, Plan(), []
        self.root_swap: nn.Module | None = None
        if isinstance(model, nn.Conv2d):  # a bare convolution: nothing to trace
            reason = _conv_skip_reason(model, "", opts)
            if reason:
                self.rows.append(PlanRow("(root)", "Conv2d", "skip", reason))
                return
            self.root_swap = opts.layer(model, None)
            reason = _layer_reason(self.root_swap, opts, "a convolution alone")
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
                done.update(_join(fqn, name) for name, _ in module.named_children())
                continue
            self._container(fqn, module)

    def _dense_block(self, fqn: str, module: nn.Module) -> bool:
        """Rewrite ``module`` as one spectral dense block if it is one (see
        :mod:`spectriton.patterns`); returns whether it was."""

        def eligible(conv: nn.Conv2d, name: str) -> bool:
            return not _conv_skip_reason(conv, _join(fqn, name), self.opts)

        layers = patterns.dense_block(module, eligible) if len(module._modules) else None
        if layers is None:
            return False
        if self.opts.exact_unnormalised and not (
            self.opts.normalize and all(all(layer.normalized) for layer in layers)
        ):
            return False  # a layer without a BatchNorm converts exactly, its BN and ReLU kept
        edit = _ContainerEdit(fqn, module, graph=fx.Graph())
        x = edit.graph.placeholder(next(iter(inspect.signature(module.forward).parameters)))
        head = fqn or "(root)"
        pre = "pre-activation: the sources are kept activated by the layers that made them"
        stages = []
        for index, layer in enumerate(layers):
            child = module.get_submodule(layer.name)
            bottleneck, features = (_join(layer.name, name) for name in layer.convs)
            bypassed = [(name, pre) for name in layer.pre]
            bypassed += [
                (name, f"absorbed by the layer at {_join(fqn, bottleneck)}") for name in layer.between
            ]
            stage = []
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
                stage.append(edit.graph.get_attr(qualified))
                action = "spectral layer" if activated else "spectral conv"
                reason = _layer_reason(swap, self.opts)
                reason += f"; {role} of layer {index} of the dense block at {head}" + _hooks_note(conv)
                self.rows.append(PlanRow(_join(fqn, qualified), "Conv2d", action, reason))
            stages.append(stage)
            for name, why in bypassed:
                norm = child.get_submodule(name)
                why += _hooks_note(norm, bypassed=True)
                self.rows.append(
                    PlanRow(_join(fqn, _join(layer.name, name)), type(norm).__name__, "bypassed", why)
                )
                edit.frozen += _frozen(norm, edit.swaps.values())
                edit.absorbed[_join(layer.name, name)] = why
        edit.graph.output(edit.graph.call_function(run_dense_layers, (stages, x)))
        self.edits.append(edit)
        return True

    def _children(self, module: nn.Module, fqn: str):
        convs, pools = {}, {}
        for name, child in module.named_children():
            child_fqn = _join(fqn, name)
            if type(child) is nn.Conv2d:
                convs[name] = (child, _conv_skip_reason(child, child_fqn, self.opts))
            elif type(child) is nn.MaxPool2d and self.opts.activation is not None:
                pools[name] = (child, _pool_skip_reason(child, child_fqn, self.opts))
            elif type(child) is nn.AvgPool2d and self.opts.activation is not None:
                filtered = self.opts.filter_fn is not None and not self.opts.filter_fn(child, child_fqn)
                pools[name] = (child, "filter_fn returned False" if filtered else "")
        return convs, pools

    def _container(self, fqn: str, module: nn.Module) -> None:
        convs, pools = self._children(module, fqn)
        if not convs and not pools:
            return
        edit = _ContainerEdit(fqn, module)
        for name, (pool, reason) in pools.items():
            kind = type(pool).__name__
            self.rows.append(PlanRow(_join(fqn, name), kind, "skip" if reason else "compact pool", reason))
            if not reason:
                edit.swaps[name] = _compact_pool(pool)
                _copy_hooks(pool, edit.swaps[name])
        eligible = {name: conv for name, (conv, reason) in convs.items() if not reason}
        for name, (_, reason) in convs.items():
            if reason:
                self.rows.append(PlanRow(_join(fqn, name), "Conv2d", "skip", reason))
        exact = self.opts.exact_unnormalised and not self.opts.normalize  # no layer could fold a BN
        if self.opts.activation is None or exact or not eligible:
            context = "linear" if self.opts.activation is None else "normalize=False"
            for name, conv in eligible.items():
                edit.swaps[name] = self.opts.layer(conv, None)
                reason = _layer_reason(edit.swaps[name], self.opts, context)
                self.rows.append(PlanRow(_join(fqn, name), "Conv2d", "spectral conv", reason))
        else:
            self._specnet(edit, eligible)
        self.edits.append(edit)

    def _specnet(self, edit: _ContainerEdit, eligible: dict[str, nn.Conv2d]) -> None:
        fqn, module = edit.fqn, edit.module
        try:
            graph = patterns.trace(module)
        except Exception as error:  # any failure to trace means: swap the convolutions alone
            why = f"forward does not trace ({type(error).__name__}): conv swapped alone"
            for name, conv in eligible.items():
                edit.swaps[name] = self.opts.layer(conv, None)
                reason = _layer_reason(edit.swaps[name], self.opts, why)
                self.rows.append(PlanRow(_join(fqn, name), "Conv2d", "spectral conv", reason))
            return
        calls = patterns.module_calls(graph)
        for name, conv in list(eligible.items()):
            if name not in calls:
                self.rows.append(PlanRow(_join(fqn, name), "Conv2d", "skip", "not called by forward"))
            elif calls[name] != 1:
                edit.swaps[name] = self.opts.layer(conv, None)
                reason = _layer_reason(edit.swaps[name], self.opts, "called more than once")
                self.rows.append(PlanRow(_join(fqn, name), "Conv2d", "spectral conv", reason))
            if calls.get(name, 0) != 1:
                del eligible[name]
        unnormalised = not self.opts.exact_unnormalised  # else only a BN lets a conv absorb what follows
        chains = patterns.find_chains(graph, module, eligible, unnormalised)
        for chain in chains:
            head = _join(fqn, chain.convs[0])
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
                reason = _layer_reason(swap, self.opts)
                if len(chain.convs) > 1:
                    reason += f"; layer {index} of the block at {head}"
                if chain.residual is not None and index == len(chain.convs) - 1:
                    reason += f"; adds the shortcut ({chain.residual.name}) before it, spectrally"
                if chain.absorbed or len(chain.convs) > 1:  # run inside a block
                    reason += _hooks_note(eligible[name])
                self.rows.append(PlanRow(_join(fqn, name), "Conv2d", action, reason))
            for name in chain.absorbed:
                why = f"absorbed by the layer at {head}"
                if name in calls:  # a child module
                    child = module.get_submodule(name)
                    row = PlanRow(_join(fqn, name), type(child).__name__, "bypassed", why)
                    row.reason += _hooks_note(child, bypassed=True)
                else:  # a function or method called in the container's forward
                    row = PlanRow(fqn or "(root)", name, "bypassed", why)
                self.rows.append(row)
                if name in calls:
                    edit.absorbed[name] = row.reason
        if any(chain.absorbed or len(chain.convs) > 1 for chain in chains):
            _rewrite(graph, chains)
            edit.graph = graph
            for chain in chains:
                for name in chain.absorbed:
                    if name in calls and calls[name] == 1:
                        edit.frozen += _frozen(module.get_submodule(name), edit.swaps.values())

    def apply(self, model: nn.Module) -> nn.Module:
        if self.root_swap is not None:
            return self.root_swap
        for edit in self.edits:
            for name, new in edit.swaps.items():
                parent, _, child = name.rpartition(".")
                setattr(edit.module.get_submodule(parent), child, new)
            if edit.graph is not None:
                _replace_forward(edit.module, edit.graph, edit.frozen)
                _place_absorbed(edit)
        return model


EXACT = (
    "exact (no threshold, no activation): no BatchNorm folded, whose standard deviations the "
    "default beta counts; density= or beta= thresholds it"
)


def _layer_reason(layer: SpectralConv2d, opts: _Options, context: str | None = None) -> str:
    """How ``layer`` thresholds; ``context`` says why it was swapped alone, if it was."""
    if not layer.normalize and opts.exact_unnormalised:
        return EXACT if context is None else f"{EXACT}; {context}"
    scale = " (density budget)" if layer.density is not None else " at an absolute beta (no BatchNorm folded)"
    if layer.activation is None:
        return f"{context or 'no BN/ReLU after it'}: threshold only{scale}"
    if not layer.normalize:
        return "split tanh" + scale
    return "split tanh, normalised for its BN" + (" (with its weight and bias)" if layer.affine else "")


HOOKS = "; module hooks: "


def _hooks_note(module: nn.Module, bypassed: bool = False) -> str:
    """A plan note for ``module``'s hooks, if it has any: run inside a spectral block, its
    forward hooks see ``SpectralFlow`` objects and its backward hooks do not run (no tensor
    goes in or out); bypassed, none runs."""
    forward = module._forward_hooks or module._forward_pre_hooks
    backward = module._backward_hooks or module._backward_pre_hooks
    if not (forward or backward):
        return ""
    if bypassed:
        return HOOKS + "none runs (bypassed)"
    notes = (
        ["forward hooks see SpectralFlow objects (a block's spectral state), not tensors"] if forward else []
    )
    return HOOKS + ", ".join(notes + (["backward hooks do not run"] if backward else []))


def _warn_about_hooks(rows: Plan) -> None:
    changed = [f"{r.name}: {r.reason.rpartition(HOOKS)[2]}" for r in rows if HOOKS in r.reason]
    if changed:
        warnings.warn(
            "convert changes what these modules' hooks see: " + "; ".join(changed) + " (spectriton.plan)",
            stacklevel=3,
        )


def _frozen(bypassed: nn.Module, layers) -> list[nn.Parameter]:
    """The trainable parameters of a bypassed module, unless the norm of one of ``layers``
    applies them (a normalised layer's BatchNorm weight and bias): they stop training."""
    norm = _holder(bypassed, layers)
    if norm is not None and norm.affine:
        return []
    return [p for p in bypassed.parameters() if p.requires_grad]


def _holder(bypassed: nn.Module, layers):
    """The norm of one of ``layers`` that holds ``bypassed``'s tensors (a BatchNorm the
    layer absorbed), or None."""
    own = {id(t) for t in (*bypassed.parameters(), *bypassed.buffers())}
    for layer in layers:
        norm = getattr(layer, "norm", None)
        if norm is not None and any(id(t) in own for t in (*norm.parameters(), *norm.buffers())):
            return norm
    return None


def _place_absorbed(edit: _ContainerEdit) -> None:
    """An :class:`Absorbed` placeholder at the name of each module the new forward no
    longer calls, holding its state_dict keys."""
    called = {node.target for node in edit.graph.nodes if node.op == "call_module"}
    for name, role in edit.absorbed.items():
        if name in called:
            continue
        module = edit.module.get_submodule(name)
        norm = _holder(module, edit.swaps.values())
        if norm is not None:
            layer = next(key for key, swap in edit.swaps.items() if getattr(swap, "norm", None) is norm)
            role = f"normalised by the spectral layer at {_join(edit.fqn, layer)}, whose norm holds its state"
        parent, _, child = name.rpartition(".")
        setattr(edit.module.get_submodule(parent), child, Absorbed(module, role, norm))


def _rewrite(graph: fx.Graph, chains: list[patterns.Chain]) -> None:
    """Replace each chain's nodes by one call running its layers as a spectral block."""
    for chain in chains:
        if not chain.absorbed and len(chain.convs) == 1:
            continue
        first, last = chain.nodes[0], chain.nodes[-1]
        with graph.inserting_before(last):  # after the shortcut, which may come late
            layers = [graph.get_attr(name) for name in chain.convs]
            residual = {} if chain.residual is None else {"residual": chain.residual}
            block = graph.call_function(run_layers, (layers, first.args[0]), residual)
        last.replace_all_uses_with(block)
        for node in reversed(chain.nodes):
            graph.erase_node(node)
    graph.lint()


def _replace_forward(module: nn.Module, graph: fx.Graph, frozen: list[nn.Parameter]) -> None:
    """Give ``module`` the rewritten graph's forward: its class becomes a subclass of its own
    (``Converted<Name>``, :mod:`spectriton.converted`) whose ``forward`` is the graph's code,
    so that the change is part of the model (pickle, ``torch.save`` and ``copy.deepcopy``
    keep it) and children, buffers and attributes stay where they were."""
    code = graph.python_code(root_module="self")
    names = {
        name: (value.__name__, True) if isinstance(value, types.ModuleType) else (value, False)
        for name, value in code.globals.items()
        if name != "__builtins__"
    }
    module.__class__ = converted_class(type(module), code.src, names)
    for p in frozen:
        p.requires_grad_(False)
    setattr(module, _STATE, frozen)


def _copy_hooks(source: nn.Module, target: nn.Module) -> None:
    for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
        getattr(target, attr).update(getattr(source, attr))


def plan(
    model: nn.Module,
    *,
    beta: float = _checks.DEFAULT_BETA,
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
    opts = _options(model, beta, activation, density, filter_fn, value_dtype, normalize, affine)
    return _ordered(_Analysis(model, opts).rows, model)


def _ordered(rows: Plan, model: nn.Module) -> Plan:
    """``rows`` in the order of ``model.named_modules()``."""
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return Plan(sorted(rows, key=lambda row: order.get(row.name, len(order))))


def convert(
    model: nn.Module,
    *,
    beta: float = _checks.DEFAULT_BETA,
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
    ``value_dtype`` None stores kept values as bfloat16 pairs in SpecNet mode and exactly in
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
    opts = _options(model, beta, activation, density, filter_fn, value_dtype, normalize, affine)
    analysis = _Analysis(model, opts)
    _warn_about_hooks(_ordered(analysis.rows, model))
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
    _copy_hooks(layer, conv)
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
        if hasattr(module, _STATE):
            for p in getattr(module, _STATE):
                p.requires_grad_(True)
            delattr(module, _STATE)
            module.__class__ = type(module)._spectriton_class[0]
        if isinstance(module, SpectralDenseBlock):
            continue
        for name, child in list(module.named_children()):
            twin = _reverted(child)
            if twin is not None:
                setattr(module, name, twin)
    return model
