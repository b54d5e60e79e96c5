"""What spectriton's NVTX ranges cost: per range, and per training step.

    python bench/nvtx_cost.py [--model lenet5] [--batch 64] [--steps 20]

Runs itself twice, with ``SPECTRITON_NVTX=0`` and ``=1``, and prints for each what a call
through a ``ranged`` wrapper takes beyond the bare call, the ranges one forward + backward
pushes, and the median time of such a step. Without CUDA, spectriton's cached CUDA check
is made to answer yes, so the ``torch.cuda.nvtx`` calls run (as no-ops: no profiler is
attached). ``SPECTRITON_BACKEND=triton TRITON_INTERPRET=1`` counts
the ranges of the Triton path on CPU (its times are the interpreter's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import timeit


def measure(model_name: str, batch: int, steps: int) -> dict:
    import torch
    from torch import nn

    from spectriton import models, nvtx

    cuda = torch.cuda.is_available()
    if not cuda:
        nvtx._cuda = lambda: True  # what the cached CUDA check answers on a CUDA machine

    def per_call(fn) -> float:
        return min(timeit.repeat(fn, number=100_000, repeat=5)) / 100_000 * 1e9

    bare = lambda: None
    wrapper_ns = per_call(nvtx.ranged("layer.forward 6->16 5x5 grid 18x18")(bare)) - per_call(bare)

    torch.manual_seed(0)
    device = "cuda" if cuda else "cpu"
    model = models.build(model_name, spectral=True).to(device)
    size = models.input_size(model_name)
    x = torch.randn(batch, 1, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        nn.functional.cross_entropy(model(x), y).backward()
        if cuda:
            torch.cuda.synchronize()

    pushes = 0
    push = torch.cuda.nvtx.range_push

    def counted(message):
        nonlocal pushes
        pushes += 1
        return push(message)

    torch.cuda.nvtx.range_push = counted
    step()  # warmup, and the count
    torch.cuda.nvtx.range_push = push
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"wrapper_ns": wrapper_ns, "ranges": pushes, "step_ms": statistics.median(times) * 1e3}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.model, args.batch, args.steps)))
        return 0
    command = [sys.executable, __file__, "--child", *(argv if argv is not None else sys.argv[1:])]
    results = {}
    for value in ("0", "1"):
        env = {**os.environ, "SPECTRITON_NVTX": value}
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode:
            print(done.stdout + done.stderr, file=sys.stderr)
            return done.returncode
        results[value] = json.loads(done.stdout.splitlines()[-1])
    print(f"{args.model} spec, batch {args.batch}: forward + backward, median of {args.steps} steps")
    print("| SPECTRITON_NVTX | ranged wrapper, per call | ranges per step | step |")
    print("|---|---|---|---|")
    for value, r in results.items():
        print(f"| {value} | {r['wrapper_ns']:.0f} ns | {r['ranges']} | {r['step_ms']:.1f} ms |")
    extra = results["1"]["ranges"] * results["1"]["wrapper_ns"] * 1e-6
    share = 100 * extra / results["1"]["step_ms"]
    print(f"ranges x wrapper (on) = {extra * 1e3:.1f} us per step, {share:.3f} % of the step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
