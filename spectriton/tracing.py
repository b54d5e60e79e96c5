"""Symbolic tracing (``torch.fx.symbolic_trace``, torchvision's ``create_feature_extractor``)
of models holding spectral modules.

A spectral block cannot run on fx Proxies (its ops size buffers from the data), so under
tracing each block is one node of the graph: a call of the function or module that runs
it, on the Proxies it was given, its layers referred to by their place in the model. The
traced graph then runs each block as the model does."""

from __future__ import annotations

from typing import Any

import torch
from torch import fx


def _tracer(args: tuple, kwargs: dict) -> fx.proxy.TracerBase | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, fx.Proxy):
            return value.tracer
    return None


def traced_function(fn, *args, **kwargs) -> Any:
    """The graph node of ``fn(*args, **kwargs)`` when an argument is an fx Proxy, else None."""
    tracer = _tracer(args, kwargs)
    return None if tracer is None else tracer.create_proxy("call_function", fn, args, kwargs)


def traced_module(module: torch.nn.Module, *args, **kwargs) -> Any:
    """The graph node of ``module(*args, **kwargs)`` when an argument is an fx Proxy, else None."""
    tracer = _tracer(args, kwargs)
    if tracer is None:
        return None
    return tracer.create_proxy("call_module", tracer.path_of_module(module), args, kwargs)
