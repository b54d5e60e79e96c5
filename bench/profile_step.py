"""One profiled training step of a zoo model, for Nsight Systems or Nsight Compute.

    nsys profile --capture-range=cudaProfilerApi --capture-range-end=stop --trace=cuda,nvtx \\
        -o specvgg python bench/profile_step.py --model vgg16 --batch 64

The first ``--steps - 1`` steps are warmup (Triton compiles and autotunes there); the
last one runs between ``cudaProfilerStart`` and ``cudaProfilerStop`` inside NVTX ranges
``step``, ``step.forward``, ``step.backward`` and ``step.optimizer`` (spectriton adds its
own ``spectriton.*`` ranges inside). On CPU the same steps run, unprofiled. Where no
Nsight Systems works, ``--trace FILE`` profiles the last step with ``torch.profiler``
instead (CPU and CUDA): a Chrome trace (gzipped if FILE ends in .gz, for
https://ui.perfetto.dev) and a table of the ops that took the most time.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch
from torch import nn

from spectriton import models


def _range(name: str, cuda: bool):
    return torch.cuda.nvtx.range(name) if cuda else contextlib.nullcontext()


def step(model, optimizer, x, y, cuda: bool) -> None:
    with _range("step", cuda):
        optimizer.zero_grad(set_to_none=True)
        with _range("step.forward", cuda):
            loss = nn.functional.cross_entropy(model(x), y)
        with _range("step.backward", cuda):
            loss.backward()
        with _range("step.optimizer", cuda):
            optimizer.step()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=models.MODELS, default="vgg16")
    parser.add_argument(
        "--spatial", action="store_true", help="the spatial original instead of the Spec model"
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2, help="steps in all; the last one is profiled")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--trace", help="profile the last step with torch.profiler, Chrome trace here")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.steps < 1:
        parser.error("--batch and --steps must be positive")
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    torch.manual_seed(0)
    model = models.build(args.model, spectral=not args.spatial).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.95)
    size = models.input_size(args.model)
    x = torch.randn(args.batch, 1, size, size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    form = "spatial" if args.spatial else "spec"
    print(f"{args.model} ({form}), batch {args.batch}, {size}x{size}, on {device}")
    for i in range(args.steps):
        profiled = i == args.steps - 1
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            if profiled:
                torch.cuda.profiler.start()
        start = time.perf_counter()
        with _torch_profiler(cuda) if profiled and args.trace else contextlib.nullcontext() as profiler:
            step(model, optimizer, x, y, cuda)
            if cuda:
                torch.cuda.synchronize(device)
        if cuda and profiled:
            torch.cuda.profiler.stop()
        kind = ("profiled" if cuda else "last") if profiled else "warmup"
        line = f"step {i} ({kind}): {1e3 * (time.perf_counter() - start):.1f} ms"
        if cuda:
            line += f", peak {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB allocated"
        print(line, flush=True)
    if args.trace:
        profiler.export_chrome_trace(args.trace)
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(profiler.key_averages().table(sort_by=key, row_limit=25), flush=True)
    return 0


def _torch_profiler(cuda: bool):
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(activities=activities, record_shapes=True)


if __name__ == "__main__":
    sys.exit(main())
