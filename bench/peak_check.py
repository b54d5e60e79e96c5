"""The CPU step peak two ways, for a torchvision ResNet-18 and its conversion.

    MALLOC_MMAP_THRESHOLD_=65536 python bench/peak_check.py [--size 128] [--batch 8] [--budget-gib 2]

Prints, per form, ``peak_step_bytes`` (the profiler's allocation record) beside
``resident_step_bytes`` (growth of peak resident memory, large allocations through mmap);
with ``--budget-gib``, instead, the peaks at the batch and twice it and the largest batch
whose step fits the budget by the linear fit ``compare`` uses on CPU.
"""

import argparse

import torch
import torchvision

import spectriton
from spectriton.memory import peak_step_bytes, resident_step_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--budget-gib", type=float, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x = torch.randn(args.batch, 3, args.size, args.size)
    target = torch.zeros(args.batch, dtype=torch.long)
    original = torchvision.models.resnet18(num_classes=10)
    forms = {
        "original": original,
        "converted": spectriton.convert(torchvision.models.resnet18(num_classes=10)),
    }
    for name, model in forms.items():
        if args.budget_gib is not None:
            print(f"{name:<10} {_largest_batch(model, x, target, args.budget_gib * 2**30)}")
            continue
        peak, resident = peak_step_bytes(model, x, target), resident_step_bytes(model, x, target)
        mib = f"peak_step_bytes {peak / 2**20:8.2f} MiB  resident_step_bytes {resident / 2**20:8.2f} MiB"
        print(f"{name:<10} {mib}")


def _largest_batch(model, x, target, budget: float) -> str:
    """The peaks at ``x``'s batch and twice it, and the batch whose peak fits ``budget`` on
    the line through them (``experiment._step_memory``'s CPU rule)."""
    batch = x.shape[0]
    peak = peak_step_bytes(model, x, target)
    doubled = peak_step_bytes(model, torch.cat([x, x]), torch.cat([target, target]))
    per_sample = (doubled - peak) / batch
    largest = int(batch + (budget - peak) // per_sample)
    return (
        f"peak {peak / 2**20:8.2f} MiB at {batch}, {doubled / 2**20:8.2f} MiB at {2 * batch}, "
        f"{per_sample / 2**20:5.2f} MiB a sample: largest batch {largest}"
    )


if __name__ == "__main__":
    main()
