"""Memory accounting: what a training step keeps for backward (DESIGN.md section 4).

:func:`saved_bytes` runs a training forward pass under
``torch.autograd.graph.saved_tensors_hooks`` and counts each distinct storage once,
attributed to the innermost module running when it was first saved. Parameters and buffers
are left out: they do not grow with the batch. On CUDA, :func:`peak_step_bytes` gives the
peak of a whole training step above what the model and optimizer hold anyway, and
:func:`largest_batch` searches for the biggest batch that fits a budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from spectriton import _checks

ROOT = "(root)"


@dataclass
class MemoryReport:
    """Bytes saved for backward by one forward pass, per module (qualified name) and in all."""

    batch: int
    per_module: dict[str, int] = field(default_factory=dict)
    tensors: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.per_module.values())

    @property
    def per_sample(self) -> float:
        return self.total / max(self.batch, 1)

    def table(self, title: str = "saved for backward") -> str:
        """A plain-text table: one row per module, then the total."""
        name_width = max([len(title), len("total"), *map(len, self.per_module)])
        lines = [f"{title:<{name_width}}  {'tensors':>7}  {'bytes':>12}  {'share':>6}"]
        lines.append("-" * len(lines[0]))
        for name, nbytes in self.per_module.items():
            share = nbytes / self.total if self.total else 0.0
            lines.append(f"{name:<{name_width}}  {self.tensors[name]:>7}  {nbytes:>12,}  {share:>6.1%}")
        lines.append("-" * len(lines[0]))
        lines.append(f"{'total':<{name_width}}  {sum(self.tensors.values()):>7}  {self.total:>12,}  {'':>6}")
        lines.append(f"{'per sample':<{name_width}}  {'':>7}  {self.per_sample:>12,.0f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _storage_key(t: torch.Tensor) -> tuple[str, int] | None:
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    return (str(t.device), storage.data_ptr()) if storage.nbytes() else None


def _check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def saved_bytes(model: nn.Module, *inputs: torch.Tensor, loss_fn: Callable | None = None) -> MemoryReport:
    """Run ``model(*inputs)`` in training mode and count what autograd keeps for backward.

    No side effects: the training flag and every buffer (batch-norm statistics, density
    thresholds) are restored afterwards, and no backward pass is run. ``loss_fn``
    (applied to the output) includes the loss's own saved tensors. Returns a
    :class:`MemoryReport`.
    """
    model = _check_model(model)
    if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
        raise TypeError("saved_bytes needs the model's inputs as tensors after the model")
    if loss_fn is not None:
        _checks.function(loss_fn, "loss_fn", "loss_fn(output)")
    batch = inputs[0].shape[0] if inputs[0].dim() else 1
    report = MemoryReport(batch=batch)
    excluded = {_storage_key(t) for t in (*model.parameters(), *model.buffers())}
    seen: set[tuple[str, int]] = set()
    stack = [ROOT]
    names = {module: name or ROOT for name, module in model.named_modules()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key is not None and key not in excluded and key not in seen:
            seen.add(key)
            name = stack[-1]
            report.per_module[name] = report.per_module.get(name, 0) + t.untyped_storage().nbytes()
            report.tensors[name] = report.tensors.get(name, 0) + 1
        return t

    def enter(module, _args):
        stack.append(names[module])

    def leave(_module, _args, _output):
        stack.pop()

    handles = []
    for module in names:
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))
    was_training = model.training
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            output = model(*inputs)
            if loss_fn is not None:
                stack.append("loss")
                loss_fn(output)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
    return report


def compare_table(reports: dict[str, MemoryReport], baseline: str) -> str:
    """Totals of several reports side by side, relative to ``reports[baseline]``."""
    if not isinstance(reports, dict) or not all(isinstance(r, MemoryReport) for r in reports.values()):
        raise TypeError("reports must be a dict of name -> MemoryReport")
    if baseline not in reports:
        raise ValueError(f"baseline must be one of the reports' names {list(reports)}, got {baseline!r}")
    base = reports[baseline].total
    width = max(len(name) for name in reports)
    lines = [f"{'model':<{width}}  {'saved bytes':>12}  {'per sample':>12}  {'relative':>8}"]
    for name, report in reports.items():
        relative = report.total / base if base else float("nan")
        lines.append(f"{name:<{width}}  {report.total:>12,}  {report.per_sample:>12,.0f}  {relative:>8.3f}")
    return "\n".join(lines)


def _training_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor, optimizer) -> None:
    optimizer.zero_grad(set_to_none=False)
    loss = nn.functional.cross_entropy(model(x), target)
    loss.backward()
    optimizer.step()


def peak_step_bytes(model: nn.Module, x: torch.Tensor, target: torch.Tensor, optimizer=None) -> int:
    """Peak CUDA memory of one training step (cross-entropy, SGD by default) above the
    parameters, gradients and optimizer state, which a first step allocates."""
    model = _check_model(model)
    for name, t in (("x", x), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not x.is_cuda:
        raise ValueError("peak_step_bytes measures CUDA memory; x must be a CUDA tensor")
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    model.train()
    _training_step(model, x, target, optimizer)
    torch.cuda.synchronize(x.device)
    base = torch.cuda.memory_allocated(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    _training_step(model, x, target, optimizer)
    torch.cuda.synchronize(x.device)
    return torch.cuda.max_memory_allocated(x.device) - base


def largest_batch(fits: Callable[[int], bool], start: int = 1, limit: int = 1 << 20) -> int:
    """The largest batch ``b <= limit`` with ``fits(b)``: doubling, then bisection.

    ``fits`` returns False (or raises ``torch.cuda.OutOfMemoryError``) when ``b`` does not
    fit. Returns 0 if even ``start`` does not fit.
    """
    _checks.function(fits, "fits", "fits(batch) -> bool")
    _checks.positive_int(start, "start")
    if _checks.positive_int(limit, "limit") < start:
        raise ValueError(f"limit must be >= start ({start}), got {limit}")

    def ok(b: int) -> bool:
        try:
            return fits(b)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return False

    if not ok(start):
        return 0
    low, high = start, start * 2
    while high <= limit and ok(high):
        low, high = high, high * 2
    high = min(high, limit + 1)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if ok(mid) else (low, mid)
    return low
