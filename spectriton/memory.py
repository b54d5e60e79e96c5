"""Memory accounting: what a training step keeps for backward (DESIGN.md section 4).

:func:`saved_bytes` runs a training forward pass under
``torch.autograd.graph.saved_tensors_hooks`` and counts each distinct storage once,
attributed to the innermost module running when it was first saved. Parameters and buffers
are left out: they do not grow with the batch. :func:`peak_step_bytes` gives the peak of a
whole training step above what the model and optimizer hold anyway, on CUDA from the caching
allocator's statistics and on CPU from the profiler's record of every allocation and free;
:func:`resident_step_bytes` measures the CPU figure independently, from the process's
resident memory. :func:`largest_batch` searches for the biggest batch that fits a budget.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from spectriton import _checks

ROOT = "(root)"


@dataclass
class MemoryReport:
    """Bytes saved for backward by one forward pass, per module (qualified name) and in all;
    ``peak``, when measured (:func:`peak_step_bytes`), the peak of a whole training step."""

    batch: int
    per_module: dict[str, int] = field(default_factory=dict)
    tensors: dict[str, int] = field(default_factory=dict)
    peak: int | None = None

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
        if self.peak is not None:
            lines.append(f"{'step peak':<{name_width}}  {'':>7}  {self.peak:>12,}")
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
    """Totals of several reports side by side, relative to ``reports[baseline]``: saved bytes,
    and the step's peak where the reports have it (each ratio says which it is of)."""
    if not isinstance(reports, dict) or not all(isinstance(r, MemoryReport) for r in reports.values()):
        raise TypeError("reports must be a dict of name -> MemoryReport")
    if baseline not in reports:
        raise ValueError(f"baseline must be one of the reports' names {list(reports)}, got {baseline!r}")
    base = reports[baseline]
    peaks = all(r.peak is not None for r in reports.values())
    width = max(len(name) for name in reports)
    header = f"{'model':<{width}}  {'saved bytes':>12}  {'per sample':>12}"
    header += f"  {'step peak':>12}  {'peak x':>6}" if peaks else ""
    lines = [header + f"  {'relative':>8}"]
    for name, report in reports.items():
        line = f"{name:<{width}}  {report.total:>12,}  {report.per_sample:>12,.0f}"
        if peaks:
            line += f"  {report.peak:>12,}  {_ratio(report.peak, base.peak):>6.3f}"
        lines.append(line + f"  {_ratio(report.total, base.total):>8.3f}")
    return "\n".join(lines)


def _ratio(value: float, base: float) -> float:
    return value / base if base else float("nan")


def _training_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor, optimizer) -> None:
    optimizer.zero_grad(set_to_none=False)
    loss = nn.functional.cross_entropy(model(x), target)
    loss.backward()
    optimizer.step()


def _warmed_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor, optimizer) -> Callable[[], None]:
    """Check the arguments, run two warm-up steps (the first allocates gradients and the
    optimizer's state, which then stay) and return the step to measure."""
    model = _check_model(model)
    for name, t in (("x", x), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"a training step's memory is measured on CPU or CUDA, got x on {x.device}")
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    model.train()

    def step() -> None:
        _training_step(model, x, target, optimizer)

    for _ in range(2):
        step()
    return step


def peak_step_bytes(model: nn.Module, x: torch.Tensor, target: torch.Tensor, optimizer=None) -> int:
    """Peak memory of one training step (cross-entropy, SGD with momentum and learning rate 0
    by default, so the model does not change) above the parameters, gradients and optimizer
    state, measured after two warm-up steps, on ``x``'s device.

    CUDA: ``torch.cuda.max_memory_allocated`` over the step. CPU: the running total of the
    profiler's allocation events (``profile_memory=True``: every allocation and free of
    torch's CPU allocator, in order, temporaries inside ops included), whose maximum is the
    step's peak of live tensor memory; :func:`resident_step_bytes` checks it independently.
    """
    step = _warmed_step(model, x, target, optimizer)
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
        base = torch.cuda.memory_allocated(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        step()
        torch.cuda.synchronize(x.device)
        return torch.cuda.max_memory_allocated(x.device) - base
    return _allocation_peak(step)


def _allocation_peak(fn: Callable[[], None]) -> int:
    """The largest net number of bytes torch's CPU allocator had handed out at any moment
    while ``fn`` ran, counted from its start (the profiler's memory events, read from its
    exported trace)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())
    events = events["traceEvents"] if isinstance(events, dict) else events
    changes = [
        (e["ts"], e["args"]["Bytes"])
        for e in events
        if e.get("name") == "[memory]" and e["args"].get("Device Type", 0) == 0
    ]
    live = peak = 0
    for _, nbytes in sorted(changes, key=lambda change: change[0]):
        live += nbytes
        peak = max(peak, live)
    return peak


def resident_step_bytes(model: nn.Module, x: torch.Tensor, target: torch.Tensor, optimizer=None) -> int:
    """Growth of the process's peak resident memory over one CPU training step (Linux):
    an independent check of :func:`peak_step_bytes` on CPU.

    Meaningful only when large allocations go through ``mmap`` and go back to the system when
    freed (run the process with ``MALLOC_MMAP_THRESHOLD_=65536``); the peak is reset through
    ``/proc/self/clear_refs`` just before the step.
    """
    step = _warmed_step(model, x, target, optimizer)
    before = _status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark back to the current RSS
    step()
    return _status_bytes("VmHWM") - before


def _status_bytes(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1)) * 1024


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
