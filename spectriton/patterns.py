"""What :func:`spectriton.convert` looks for in a container's traced forward, and the
graph that runs what it found as a spectral block.

Each container is traced with ``torch.fx``, its children as leaves. Two patterns become
spectral blocks, each matched here (:func:`find_chains`, :func:`dense_block`) and written as
a new graph here (:func:`rewrite_chains`, :func:`dense_graph`):

- **chains**: ``conv [BN] [ReLU]``, then the next convolution when the previous one keeps
  the resolution, and, where the last one's output is added to a shortcut whose sum goes
  through a ReLU (a residual block), that add and ReLU. ``nn.Identity`` children (timm's
  placeholders for drop-block, anti-aliasing, squeeze-excitation) are looked through, and
  a BatchNorm that carries its activation (timm's ``BatchNormAct2d``) counts as both.
- **dense blocks**: a container that calls its children in turn, each on the list of the
  block input and every earlier child's output, and returns their concatenation
  (torchvision's ``_DenseBlock``, timm's ``DenseBlock``), whose children are pre-activation
  bottlenecks: ``cat -> BN -> ReLU -> conv -> BN -> ReLU -> conv``.
"""

from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from spectriton.blocks import run_dense_layers, run_layers

ACTIVATIONS = (nn.ReLU, nn.ReLU6)
RELU_FUNCTIONS = (torch.relu, torch.relu_, nn.functional.relu, nn.functional.relu6)


class ChildTracer(fx.Tracer):
    """Traces one container's own forward: every submodule call stays a leaf."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


def trace(module: nn.Module, concrete_args: dict | None = None) -> fx.Graph:
    """``module``'s forward with its children as leaves, called with positional arguments
    where they take them (``self.conv(input=x)`` reads as ``self.conv(x)``), and its
    ``nn.Identity`` calls dropped. Tracing changes nothing: a forward that updates its own
    buffers as it runs (timm's ``BatchNormAct2d`` counts ``num_batches_tracked``) gets them
    back as they were."""
    buffers = {name: b.clone() for name, b in module.named_buffers(recurse=False)}
    try:
        graph = ChildTracer().trace(module, concrete_args=concrete_args)
    finally:
        with torch.no_grad():
            for name, b in module.named_buffers(recurse=False):
                b.copy_(buffers[name])
    for node in list(graph.nodes):
        if node.op == "call_module" and node.kwargs:
            node.args, node.kwargs = _positional(module.get_submodule(node.target), node)
        if node.op == "call_module" and type(module.get_submodule(node.target)) is nn.Identity and node.args:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    return graph


def _positional(child: nn.Module, node: fx.Node) -> tuple[tuple, dict]:
    """A call's arguments with those that can be positional made so (as they bind to
    ``child.forward``); unchanged where they do not bind."""
    try:
        bound = inspect.signature(child.forward).bind(*node.args, **node.kwargs)
    except TypeError:  # the call fails as the forward runs, as it did before converting
        return node.args, node.kwargs
    return tuple(bound.args), dict(bound.kwargs)


def module_calls(graph: fx.Graph) -> dict[str, int]:
    """How many times each child module is called in the traced forward."""
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    return calls


def norm_kind(module: nn.Module) -> str | None:
    """ "bn" for a BatchNorm2d, "bn+act" for one that applies a ReLU after it (timm's
    ``BatchNormAct2d``: an ``act`` child), None for anything else."""
    if not isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        return None
    if type(module) in (nn.BatchNorm2d, nn.SyncBatchNorm):
        return "bn"
    act, drop = getattr(module, "act", None), getattr(module, "drop", None)
    if drop is not None and type(drop) is not nn.Identity:
        return None
    if act is None or type(act) is nn.Identity:
        return "bn" if set(dict(module.named_children())) <= {"act", "drop"} else None
    return "bn+act" if type(act) in ACTIVATIONS and len(list(module.children())) <= 2 else None


def is_activation(node: fx.Node, module: nn.Module) -> bool:
    if node.op == "call_module":
        return type(module.get_submodule(node.target)) in ACTIVATIONS
    if node.op == "call_function":
        return node.target in RELU_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "relu_", "relu6")


def node_norm(node: fx.Node, module: nn.Module) -> str | None:
    return norm_kind(module.get_submodule(node.target)) if node.op == "call_module" else None


def call_name(node: fx.Node) -> str:
    """A readable name for a call: the child's name, ``torch.relu``, ``Tensor.relu_()``."""
    if node.op == "call_module":
        return node.target
    if node.op == "call_method":
        return f"Tensor.{node.target}()"
    target = node.target
    module = getattr(target, "__module__", None) or "torch"
    return f"{module.lstrip('_')}.{getattr(target, '__name__', target)}"


def only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    if len(users) != 1 or users[0].args[:1] != (node,):
        return None
    return users[0]


def keeps_size(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` maps a map to one of its size (odd kernel, stride 1, half padding)."""
    spread = [d * (k - 1) + 1 for k, d in zip(conv.kernel_size, conv.dilation)]
    return (
        conv.stride == (1, 1)
        and all(k % 2 == 1 for k in spread)
        and conv.padding in ("same", tuple(k // 2 for k in spread))
    )


@dataclass
class Chain:
    """Convolutions (child names) that become one spectral block, and the nodes they replace."""

    convs: list[str] = field(default_factory=list)
    nodes: list[fx.Node] = field(default_factory=list)
    absorbed: list[str] = field(default_factory=list)
    activated: list[bool] = field(default_factory=list)
    norms: list[str | None] = field(default_factory=list)  # the BatchNorm each conv absorbs
    residual: fx.Node | None = None  # the shortcut added before the last layer's activation


def _absorb_after(
    node: fx.Node, module: nn.Module, chain: Chain, unnormalised: bool
) -> tuple[fx.Node, bool, str | None]:
    """Take ``[BN] [ReLU]`` (or a BN with its ReLU) after ``node`` into ``chain``, a ReLU
    alone only if ``unnormalised``; returns the last node taken, whether any was (split
    tanh then stands for them) and the BN taken, if one was."""
    end, activated, normalized = node, False, None
    for kind in ("bn", "act"):
        user = only_user(end)
        if user is None:
            break
        norm = node_norm(user, module)
        if kind == "bn" and norm is None and not unnormalised:
            break
        if (kind == "bn" and norm is not None) or (kind == "act" and is_activation(user, module)):
            chain.nodes.append(user)
            chain.absorbed.append(call_name(user))
            end, activated = user, True
            normalized = user.target if norm is not None else normalized
            if norm == "bn+act":
                break
    return end, activated, normalized


def find_chains(
    graph: fx.Graph, module: nn.Module, eligible: dict[str, nn.Conv2d], unnormalised: bool = True
) -> list[Chain]:
    """Convolution chains in the traced graph: conv [BN] [ReLU], then the next conv when
    the previous one keeps the resolution. Without ``unnormalised``, a convolution absorbs
    what follows it (a ReLU, a shortcut's add) only after a BatchNorm."""
    chains, used = [], set()
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in eligible or node in used:
            continue
        chain, current = Chain(), node
        while True:
            chain.convs.append(current.target)
            chain.nodes.append(current)
            used.add(current)
            end, activated, normalized = _absorb_after(current, module, chain, unnormalised)
            chain.activated.append(activated)
            chain.norms.append(normalized)
            user = only_user(end)
            if not (activated and keeps_size(eligible[current.target]) and user is not None):
                break
            if user.op != "call_module" or user.target not in eligible or user in used or len(user.args) != 1:
                break
            current = user
        residual = _residual_after(end, module)
        normalised = unnormalised or chain.norms[-1] is not None
        if residual is not None and normalised and eligible[chain.convs[-1]].stride == (1, 1):
            add, act, chain.residual = residual
            chain.nodes += [add, act]
            chain.absorbed += [call_name(add), call_name(act)]
            chain.activated[-1] = True
        chains.append(chain)
    return chains


ADDS = (operator.add, operator.iadd, torch.add)


def _residual_after(end: fx.Node, module: nn.Module) -> tuple[fx.Node, fx.Node, fx.Node] | None:
    """``(add, activation, shortcut)`` when ``end``'s only use is an add of a shortcut whose
    only use is an activation (a residual block's ``relu(out + identity)``), else None."""
    users = list(end.users)
    if len(users) != 1:
        return None
    add = users[0]
    is_add = (add.op == "call_function" and add.target in ADDS) or (
        add.op == "call_method" and add.target in ("add", "add_")
    )
    if not is_add or len(add.args) != 2 or add.kwargs:
        return None
    other = add.args[1] if add.args[0] is end else add.args[0] if add.args[1] is end else None
    act = only_user(add)
    if not isinstance(other, fx.Node) or other is end or act is None or not is_activation(act, module):
        return None
    return add, act, other


def rewrite_chains(graph: fx.Graph, chains: list[Chain]) -> None:
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


@dataclass
class DenseLayer:
    """One bottleneck of a dense block: its convolutions' names (relative to the layer),
    whether each is followed by an activation and by a BatchNorm, the BatchNorm whose
    weight and bias each takes (the bottleneck's own; the output's consumers each normalise
    it with their own), and the modules bypassed before each."""

    name: str
    convs: list[str]
    activated: list[bool]
    normalized: list[bool]
    norms: list[str | None]
    pre: list[str]
    between: list[str]


def dense_block(module: nn.Module, eligible) -> list[DenseLayer] | None:
    """The layers of ``module`` if it is a dense block whose convolutions all convert
    (``eligible(conv, name relative to module)``), else None."""
    try:
        graph = trace(module)
    except Exception:  # not traceable: not a dense block we can read
        return None
    nodes = list(graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    calls = [n for n in nodes if n.op == "call_module"]
    if len(inputs) != 1 or not calls or len(nodes) != len(calls) + 3:
        return None
    features = [inputs[0]]
    for call in calls:
        if len(call.args) != 1 or call.kwargs or not isinstance(call.args[0], (list, tuple)):
            return None
        if list(call.args[0]) != features:
            return None
        features.append(call)
    cat = nodes[-2]
    if cat.target is not torch.cat or not isinstance(cat.args[0], (list, tuple)):
        return None
    if list(cat.args[0]) != features or _cat_dim(cat) != 1:
        return None
    layers = [_dense_layer(call.target, module.get_submodule(call.target), eligible) for call in calls]
    return layers if all(layers) else None


def dense_graph(module: nn.Module, stages: list[list[str]]) -> fx.Graph:
    """A forward for ``module`` that runs its dense layers' convolutions (``stages``: each
    layer's two, by qualified name) as one spectral dense block."""
    graph = fx.Graph()
    x = graph.placeholder(next(iter(inspect.signature(module.forward).parameters)))
    layers = [[graph.get_attr(name) for name in stage] for stage in stages]
    graph.output(graph.call_function(run_dense_layers, (layers, x)))
    return graph


def _cat_dim(node: fx.Node):
    return node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)


def _dense_layer(name: str, layer: nn.Module, eligible) -> DenseLayer | None:
    """``layer`` read as ``cat -> pre -> conv -> between -> conv``, where ``pre`` and
    ``between`` are BN and ReLU calls, or None."""
    try:
        first = next(iter(inspect.signature(layer.forward).parameters))
        graph = trace(layer, concrete_args={first: [fx.PH, fx.PH]})
    except Exception:  # not traceable on a list of features
        return None
    nodes = [n for n in graph.nodes if n.op not in ("placeholder", "output")]
    if not nodes or nodes[0].target is not torch.cat or _cat_dim(nodes[0]) != 1:
        return None
    convs, parts = [], [[]]
    for previous, node in zip(nodes, nodes[1:]):
        if only_user(previous) is not node or node.op != "call_module":
            return None
        child = layer.get_submodule(node.target)
        reads_sources = not convs  # the first convolution reads every source: one group only
        if (
            type(child) is nn.Conv2d
            and not (reads_sources and child.groups > 1)
            and eligible(child, f"{name}.{node.target}")
            and keeps_size(child)
        ):
            convs.append(node.target)
            parts.append([])
        elif norm_kind(child) is not None or type(child) in ACTIVATIONS:
            parts[-1].append(node.target)
        else:
            return None
    if len(convs) != 2 or parts[2]:
        return None

    def norm(names: list[str]) -> str | None:
        return next((n for n in names if norm_kind(layer.get_submodule(n)) is not None), None)

    # the second convolution's output is activated (and normalised) for the consumers' pre-activation
    activated = [bool(parts[1]), bool(parts[0])]
    normalized = [norm(parts[1]) is not None, norm(parts[0]) is not None]
    return DenseLayer(name, convs, activated, normalized, [norm(parts[1]), None], parts[0], parts[1])
