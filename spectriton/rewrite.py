"""How :func:`spectriton.convert` edits a model once the analysis
(:mod:`spectriton.analysis`) has decided: each container's :class:`ContainerEdit` (child
swaps and, maybe, a rewritten forward) is applied in place, the container's class
becoming ``Converted<Name>`` (:mod:`spectriton.converted`), each module the new forward no
longer calls an :class:`~spectriton.converted.Absorbed` placeholder, and the parameters of
bypassed modules frozen (``revert`` reads them back from :data:`STATE`)."""

from __future__ import annotations

import types
from dataclasses import dataclass, field

from torch import fx, nn

from spectriton.converted import Absorbed, converted_class

STATE = "_spectriton_converted"  # on a container whose forward convert replaced: its frozen parameters


def join(prefix: str, name: str) -> str:
    """The qualified name of ``name`` under ``prefix``."""
    return f"{prefix}.{name}" if prefix else name


@dataclass
class ContainerEdit:
    """What convert does to one container: child swaps and, maybe, a new forward."""

    fqn: str
    module: nn.Module
    swaps: dict[str, nn.Module] = field(default_factory=dict)
    graph: fx.Graph | None = None
    frozen: list[nn.Parameter] = field(default_factory=list)
    absorbed: dict[str, str] = field(default_factory=dict)  # child modules the graph stops calling: why

    def apply(self) -> None:
        """Swap the children in and give the container the new forward, if there is one."""
        for name, new in self.swaps.items():
            parent, _, child = name.rpartition(".")
            setattr(self.module.get_submodule(parent), child, new)
        if self.graph is not None:
            _replace_forward(self.module, self.graph, self.frozen)
            _place_absorbed(self)


def copy_hooks(source: nn.Module, target: nn.Module) -> None:
    """``source``'s forward and backward hooks, also on ``target``."""
    for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
        getattr(target, attr).update(getattr(source, attr))


def frozen(bypassed: nn.Module, layers) -> list[nn.Parameter]:
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


def _place_absorbed(edit: ContainerEdit) -> None:
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
            role = f"normalised by the spectral layer at {join(edit.fqn, layer)}, whose norm holds its state"
        parent, _, child = name.rpartition(".")
        setattr(edit.module.get_submodule(parent), child, Absorbed(module, role, norm))


def _replace_forward(module: nn.Module, graph: fx.Graph, bypassed: list[nn.Parameter]) -> None:
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
    for p in bypassed:
        p.requires_grad_(False)
    setattr(module, STATE, bypassed)
