"""What :func:`spectriton.convert` leaves in a model beside the library's own modules: the
classes it generates for containers whose ``forward`` it rewrote (``Converted<Name>``),
and :class:`Absorbed`, the placeholder of a module whose work a spectral layer took over."""

from __future__ import annotations

import importlib

from torch import nn

from spectriton.norm import SpectralNorm

_CLASSES: dict[tuple[type, str], type] = {}


def converted_class(base: type, source: str, names: dict[str, tuple]) -> type:
    """``Converted<Name>``: ``base`` with the forward defined by ``source`` (fx's code for a
    graph), whose global ``names`` map to ``(object, False)`` or ``(module name, True)``; one
    class per pair. Its instances pickle as the base class, the source and their state."""
    key = (base, source)
    if key not in _CLASSES:
        namespace = {
            name: importlib.import_module(value) if is_module else value
            for name, (value, is_module) in names.items()
        }
        exec(compile(source, f"<spectriton: converted {base.__qualname__}>", "exec"), namespace)
        _CLASSES[key] = type(
            f"Converted{base.__name__}",
            (base,),
            {
                "forward": namespace["forward"],
                "__module__": __name__,
                "__reduce_ex__": _reduce_converted,
                "_spectriton_class": (base, source, names),
            },
        )
    return _CLASSES[key]


def _reduce_converted(module: nn.Module, protocol: int):
    _, _, *state = object.__reduce_ex__(module, protocol)
    return (_new_converted, type(module)._spectriton_class, *state)


def _new_converted(base: type, source: str, names: dict[str, tuple]) -> nn.Module:
    cls = converted_class(base, source, names)
    return cls.__new__(cls)


class Absorbed(nn.Module):
    """A module that no longer runs, at its old name: a BatchNorm or ReLU whose work a
    spectral layer does (``role`` says how), shown for what it was. Calling it raises.

    It keeps the module's state_dict keys: a BatchNorm a normalised layer absorbed by
    delegating them to that layer's :class:`~spectriton.norm.SpectralNorm` (``norm``,
    which holds the BatchNorm's tensors and trains them; its own keys under the layer are
    left out), any other module (bypassed: its parameters no longer train) by holding its
    tensors itself. ``module`` is kept without its tensors; :meth:`restored` gives it back
    with the current ones."""

    def __init__(self, module: nn.Module, role: str, norm: SpectralNorm | None = None) -> None:
        super().__init__()
        self.shown = f"{module!r}: {role}"  # before its tensors are taken
        object.__setattr__(self, "_module", module)  # not a child: it no longer runs
        object.__setattr__(self, "_norm", norm)  # not a child: the layer owns it
        self._taken = [
            (kind, name, name not in module._non_persistent_buffers_set)
            for kind in ("_parameters", "_buffers")
            for name, tensor in getattr(module, kind).items()
            if tensor is not None
        ]
        for kind, name, persistent in self._taken:
            tensor = getattr(module, kind)[name]
            getattr(module, kind)[name] = None
            if norm is not None:
                continue
            if kind == "_parameters":
                self.register_parameter(name, tensor)
            else:
                self.register_buffer(name, tensor, persistent=persistent)
        if norm is not None:
            norm._keys_elsewhere = True

    def forward(self, *args, **kwargs):
        raise RuntimeError(f"this module runs no more: {self.shown}")

    def restored(self) -> nn.Module:
        """The module with its current tensors (shared, not copied)."""
        holder = self if self._norm is None else self._norm
        for kind, name, _ in self._taken:
            getattr(self._module, kind)[name] = getattr(holder, kind)[name]
        return self._module

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        if self._norm is None:
            super()._save_to_state_dict(destination, prefix, keep_vars)
        else:
            self._norm.save_state(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        if self._norm is None:
            super()._load_from_state_dict(state_dict, prefix, *args)
        else:
            self._norm.load_state(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return self.shown
