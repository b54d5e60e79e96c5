"""A fixed, warmed set of timings for bench/gpu_check.sh: SpecVGG's layer shapes against
cuDNN's ``nn.Conv2d``, a SpecVGG training step against the spatial VGG and its
checkpointed form, and a converted torchvision ResNet-18 step against the original.

Each case runs twice untimed first (Triton autotunes and compiles each shape once there,
and a converted block learns what it keeps), then ``--rounds`` times, timed with CUDA
events (on CPU, the host clock); the median is reported with the step's peak memory
(``torch.cuda.max_memory_allocated`` above what was allocated before it). Each row is
printed and written to ``--json`` as soon as it is measured, so a run cut short keeps what
it measured. ``--tiny`` is the CPU rehearsal: tiny shapes, one warm-up, and with
``SPECTRITON_BACKEND=triton TRITON_INTERPRET=1`` the layer rows run the kernels
interpreted, while the model rows take the torch twin (interpreted, a whole model's step
takes minutes).

    python bench/gpu_timings.py --json timings.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import spectriton as st
from spectriton import models
from spectriton.checkpointing import checkpoint_blocks

# SpecVGG's first three stages: (channels, side) at batch 64; --tiny: batch 2.
LAYERS = [(64, 32), (128, 16), (256, 8)]
TINY_LAYERS = [(2, 4)]


def measure(step, device: torch.device, rounds: int, warmups: int = 2) -> tuple[float, int | None]:
    """Median milliseconds of ``step()`` after ``warmups`` calls, and its peak bytes."""
    cuda = device.type == "cuda"
    for _ in range(warmups):
        step()
    if cuda:
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(rounds):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            step()
            times.append(1e3 * (time.perf_counter() - begin))
    peak = torch.cuda.max_memory_allocated(device) - before if cuda else None
    return statistics.median(times), peak


def training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    def step():
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()

    return step


def layer_step(layer: nn.Module, x: torch.Tensor):
    def step():
        layer.zero_grad(set_to_none=True)
        out = layer(x.requires_grad_())
        out.square().sum().backward()

    return step


def cases(tiny: bool, device: torch.device):
    """(name, form, shape, make_step) for every row, in order."""
    batch = 2 if tiny else 64
    for channels, side in TINY_LAYERS if tiny else LAYERS:
        shape = f"B{batch} C{channels} {side}x{side} 3x3"
        for form in ("spec", "cudnn"):

            def make(channels=channels, side=side, form=form):
                torch.manual_seed(0)
                if form == "spec":
                    options = dict(beta=0.5, activation="split_tanh")
                    layer = st.SpectralConv2d(channels, channels, 3, padding=1, **options)
                else:
                    layer = nn.Conv2d(channels, channels, 3, padding=1)
                x = torch.randn(batch, channels, side, side, device=device)
                return layer_step(layer.to(device), x)

            yield "vgg layer", form, shape, make
    name = "lenet5" if tiny else "vgg16"
    size = models.input_size(name)
    for form in ("spec", "spatial", "checkpoint"):

        def make(form=form):
            torch.manual_seed(0)
            model = models.build(name, spectral=form == "spec")
            model = checkpoint_blocks(model) if form == "checkpoint" else model
            x = torch.randn(batch, 1, size, size, device=device)
            return training_step(model.to(device), x, torch.randint(0, 10, (batch,), device=device))

        yield f"{name} step", form, f"B{batch} 1x{size}x{size}", make
    side = 16 if tiny else 32
    for form in ("converted", "original"):

        def make(form=form):
            import torchvision

            torch.manual_seed(0)
            model = torchvision.models.resnet18(num_classes=10)
            model = st.convert(model) if form == "converted" else model
            x = torch.randn(batch, 3, side, side, device=device)
            y = torch.randint(0, 10, (batch,), device=device)
            return training_step(model.to(device), x, y)

        yield "resnet18 step", form, f"B{batch} 3x{side}x{side}", make


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, for a CPU rehearsal")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", type=Path, help="where the rows go (rewritten after each)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    backend = os.environ.get("SPECTRITON_BACKEND")
    rows, failed = [], 0
    print("| case | form | shape | median ms | peak MiB |\n|---|---|---|---|---|", flush=True)
    for case, form, shape, make in cases(args.tiny, device):
        row = {"case": case, "form": form, "shape": shape, "device": str(device)}
        if args.tiny and backend and case != "vgg layer":
            os.environ["SPECTRITON_BACKEND"] = "torch"
        try:
            row["median_ms"], row["peak_bytes"] = measure(make(), device, args.rounds, 1 if args.tiny else 2)
        except Exception as error:  # a row that fails is reported; the others still run
            row["error"] = f"{type(error).__name__}: {error}"
            failed = 1
        rows.append(row)
        peak = "" if row.get("peak_bytes") is None else f"{row['peak_bytes'] / 2**20:.0f}"
        ms = f"{row['median_ms']:.3g}" if "median_ms" in row else row["error"][:80]
        print(f"| {case} | {form} | {shape} | {ms} | {peak} |", flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
    return failed


if __name__ == "__main__":
    sys.exit(main())
