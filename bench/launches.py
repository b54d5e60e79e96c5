"""What a training step issues on the CUDA path, traced on CPU: for each spectral op
(forward and backward), the aten kernels it launches, its Triton launches and its host
synchronisations.

    python bench/launches.py vgg16 --batch 4
    python bench/launches.py resnet18 --size 64 --batch 2

A zoo name (``lenet5``, ``alexnet``, ``vgg16``, ``densenet``) runs the Spec model, a
torchvision name the converted model. The step runs on CPU tensors with the Triton backend
under Triton's interpreter (``SPECTRITON_BACKEND=triton``, ``TRITON_INTERPRET=1``) and the
CPU-only forms off (``SPECTRITON_CPU_FORMS=0``), so it issues what it issues on a GPU. One
warm-up step, then one step under ``torch.profiler``: each aten op that launches a kernel
(views, allocations and composites counted once, by their leaves) and each Triton launch is
attributed to the ``spectriton::`` op around it, or to the glue between ops. A host
synchronisation is an op that makes the host wait for the device on CUDA: reading a number
(``item``, ``int()``, ``float()``, ``bool()``), ``nonzero``, ``masked_select``, a boolean
index (through ``nonzero``), ``unique``, ``repeat_interleave`` with a tensor of counts.
Launch counts depend on the batch only through the kernel tiles (more, smaller tiles at
larger batches).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections import Counter, defaultdict

import torch
from torch import nn

# Ops that make the host wait for a CUDA device.
SYNCS = {
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "aten::masked_select",
    "aten::unique",
    "aten::_unique2",
    "aten::unique_consecutive",
    "aten::repeat_interleave",
    "aten::equal",
    "aten::is_nonzero",
}
# Aten ops that launch no kernel: views, metadata and bare allocations.
NO_LAUNCH = {
    "aten::view", "aten::_unsafe_view", "aten::reshape", "aten::as_strided", "aten::t",
    "aten::transpose", "aten::permute", "aten::expand", "aten::unsqueeze", "aten::squeeze",
    "aten::slice", "aten::select", "aten::detach", "aten::detach_", "aten::alias", "aten::view_as_real",
    "aten::view_as_complex", "aten::_reshape_alias", "aten::empty", "aten::empty_strided",
    "aten::empty_like", "aten::resize_", "aten::split", "aten::chunk", "aten::unbind",
    "aten::narrow", "aten::lift_fresh", "aten::_conj", "aten::conj", "aten::resolve_conj",
    "aten::resolve_neg", "aten::real", "aten::imag", "aten::unflatten", "aten::flatten",
    "aten::contiguous", "aten::to", "aten::_to_copy", "aten::result_type", "aten::set_",
    "aten::_has_compatible_shallow_copy_type", "aten::unfold", "aten::view_as",
    "aten::expand_as", "aten::movedim", "aten::split_with_sizes", "aten::numpy_T",
    "aten::dim", "aten::size", "aten::stride", "aten::is_complex", "aten::new_empty",
    "aten::new_empty_strided", "aten::_local_scalar_dense", "aten::item",
}  # fmt: skip
TRITON = "triton::"


@contextlib.contextmanager
def _triton_ranges():
    """Each interpreted Triton launch inside a profiler range named after its kernel."""
    from triton.runtime.interpreter import InterpretedFunction

    run = InterpretedFunction.run

    def traced(self, *args, **kwargs):
        with torch.profiler.record_function(TRITON + self.fn.__name__):
            return run(self, *args, **kwargs)

    InterpretedFunction.run = traced
    try:
        yield
    finally:
        InterpretedFunction.run = run


def _launches(event, inside_aten: bool = False) -> int:
    """Kernels ``event`` launches on CUDA: its children's, or itself where they launch none
    (a composite counts by its leaves). A dtype conversion inside an aten op is an
    operand's (a Python scalar's on CPU): none."""
    if event.name.startswith(TRITON):
        return 1  # the interpreter's own work below it is not a launch
    aten = event.name.startswith("aten::")
    if aten and inside_aten and event.name == "aten::to":
        return 0
    below = sum(_launches(child, inside_aten or aten) for child in event.cpu_children)
    return below or int(aten and event.name not in NO_LAUNCH)


def _syncs(event) -> Counter:
    if event.name.startswith(TRITON):
        return Counter()
    found = Counter({event.name: 1}) if event.name in SYNCS else Counter()
    for child in event.cpu_children:
        found += _syncs(child)
    return found


def tally(events) -> dict[str, Counter]:
    """Per owner (a ``spectriton::`` op, or ``glue`` for what runs outside them): ``calls``
    of the op, its ``aten`` and ``triton`` launches and ``syncs``, and each synchronising
    op by name. Ops nested in a spectral op (its backward's replay of a layer) count there."""
    table: dict[str, Counter] = defaultdict(Counter)

    def visit(event, owner: str) -> None:
        if event.name.startswith("spectriton::"):
            table[event.name]["calls"] += 1
            for child in event.cpu_children:
                visit(child, event.name)
            return
        if event.name.startswith(TRITON):
            table[owner]["triton"] += 1
        elif event.name.startswith("aten::"):
            table[owner]["aten"] += _launches(event)
            syncs = _syncs(event)
            table[owner].update(syncs)
            table[owner]["syncs"] += sum(syncs.values())
        else:  # a profiler range of the library's or the user's: look inside
            for child in event.cpu_children:
                visit(child, owner)

    for event in events:
        if event.cpu_parent is None:
            visit(event, "glue")
    return table


def _model(name: str, size: int):
    """The Spec zoo model ``name``, or torchvision's ``name`` converted; and its input size."""
    import spectriton as st
    from spectriton import models

    if name in models.MODELS:
        side = models.input_size(name)
        return models.build(name, spectral=True), (1, side, side)  # Fashion-MNIST's one channel
    import torchvision

    return st.convert(getattr(torchvision.models, name)(num_classes=10)), (3, size, size)


def trace_step(model: nn.Module, x: torch.Tensor, steps: int = 1) -> dict[str, Counter]:
    """Warm up (``steps`` steps), then trace one training step of ``model`` on ``x``
    (run with the environment :func:`main` sets)."""
    target = torch.zeros(len(x), dtype=torch.long)
    model.train()
    for _ in range(steps):
        nn.functional.cross_entropy(model(x), target).backward()
    model.zero_grad(set_to_none=True)
    activities = [torch.profiler.ProfilerActivity.CPU]
    with _triton_ranges(), torch.profiler.profile(activities=activities) as prof:
        nn.functional.cross_entropy(model(x), target).backward()
    return tally(prof.events())


def report(table: dict[str, Counter], layers: int) -> str:
    """The table, one row per owner (``glue``: the model's own layers, its loss and what
    lies between spectral ops), and the spectral ops' launches and syncs per layer."""
    rows = [f"{'op':30s} {'calls':>6s} {'aten':>6s} {'triton':>7s} {'syncs':>6s}  synchronising ops"]
    spectral = Counter()
    for name in sorted(table, key=lambda n: (n == "glue", n)):
        counts = table[name]
        if name != "glue":
            spectral.update({k: counts[k] for k in ("aten", "triton", "syncs")})
        which = ", ".join(f"{op[6:]} {n}" for op, n in sorted(counts.items()) if op in SYNCS)
        rows.append(
            f"{name:30s} {counts['calls']:6d} {counts['aten']:6d} {counts['triton']:7d} "
            f"{counts['syncs']:6d}  {which}"
        )
    per_layer = max(layers, 1)
    rows.append(
        f"spectral ops, {layers} layers: {spectral['aten']} aten + {spectral['triton']} Triton "
        f"launches, {spectral['syncs']} host synchronisations; a layer forward + backward: "
        f"{(spectral['aten'] + spectral['triton']) / per_layer:.1f} launches, "
        f"{spectral['syncs'] / per_layer:.1f} syncs"
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a zoo name (lenet5, alexnet, vgg16, densenet) or a torchvision name")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=32, help="input side for torchvision models")
    args = parser.parse_args(argv)
    cuda_path = {"TRITON_INTERPRET": "1", "SPECTRITON_BACKEND": "triton", "SPECTRITON_CPU_FORMS": "0"}
    for name, value in cuda_path.items():
        os.environ.setdefault(name, value)  # before spectriton.kernels is imported
    import spectriton as st

    torch.manual_seed(0)
    model, shape = _model(args.model, args.size)
    layers = sum(isinstance(m, st.SpectralConv2d) for m in model.modules())
    table = trace_step(model, torch.randn(args.batch, *shape))
    print(f"{args.model}, batch {args.batch}, input {tuple(shape)}: the CUDA path traced on CPU")
    print(report(table, layers))


if __name__ == "__main__":
    sys.exit(main())
