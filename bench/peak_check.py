"""The CPU step peak of a torchvision ResNet-18 and its conversion, or of a zoo network and
its Spec form, bare and checkpointed.

    MALLOC_MMAP_THRESHOLD_=65536 python bench/peak_check.py [--size 128] [--batch 8] [--budget-gib 2]
    python bench/peak_check.py --table [--size 128] [--batch 8] [--in-channels 3]
    python bench/peak_check.py --table --model vgg16 --batch 64

Prints, per form, ``peak_step_bytes`` (the profiler's allocation record) beside
``resident_step_bytes`` (growth of peak resident memory, large allocations through mmap);
with ``--table``, instead, each form's saved bytes per sample, step peak and step time
(median process time of three steps, one thread); with ``--budget-gib``, the peaks at the
batch and twice it and the largest batch whose step fits the budget by the linear fit
``compare`` uses on CPU. The forms: the original, the original checkpointed per stage and
stem (``torch.utils.checkpoint`` around the stem and each of ``layer1`` to ``layer4``, the
usual baseline), the conversion, and the conversion with its stages checkpointed; for a zoo
network (``--model``, one input channel at the zoo's size, as ``spectriton memory``), its
spatial form, that form checkpointed per block (:func:`~spectriton.checkpointing.checkpoint_blocks`),
its Spec form at the defaults, and the Spec form checkpointed per block.
"""

import argparse
import statistics
import time

import torch

from spectriton import models
from spectriton.checkpointing import checkpoint_blocks, checkpoint_stages
from spectriton.memory import peak_step_bytes, resident_step_bytes, saved_bytes


def forms(model: str, in_channels: int = 3) -> dict[str, torch.nn.Module]:
    """The four forms, each freshly built from the same seed (a ResNet-18's stem taking
    ``in_channels``, converted at ``convert``'s defaults)."""
    if model != "resnet18":
        return _zoo_forms(model)

    def resnet(spectral: bool) -> torch.nn.Module:
        torch.manual_seed(0)
        return models.build("resnet18", spectral=spectral, in_channels=in_channels)

    return {
        "original": resnet(False),
        "checkpoint": checkpoint_stages(resnet(False)),
        "converted": resnet(True),
        "converted+ckpt": checkpoint_stages(resnet(True)),
    }


def _zoo_forms(name: str) -> dict[str, torch.nn.Module]:
    def build(spectral: bool) -> torch.nn.Module:
        torch.manual_seed(0)
        return models.build(name, spectral=spectral, in_channels=1)

    return {
        "spatial": build(False),
        "checkpoint": checkpoint_blocks(build(False)),
        "spec": build(True),
        "spec+ckpt": checkpoint_blocks(build(True)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18", choices=["resnet18", *models.MODELS])
    parser.add_argument("--size", type=int, default=None, help="default: 128, or the zoo network's")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--in-channels", type=int, default=3, help="ResNet-18's input channels")
    parser.add_argument("--budget-gib", type=float, default=None)
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    zoo = args.model != "resnet18"
    size = args.size or (models.input_size(args.model) if zoo else 128)
    x = torch.randn(args.batch, 1 if zoo else args.in_channels, size, size)
    target = torch.zeros(args.batch, dtype=torch.long)
    if args.table:
        print(f"{'form':<15} {'saved B/sample':>15} {'peak MiB':>9} {'step ms':>8}")
    for name, model in forms(args.model, args.in_channels).items():
        if args.budget_gib is not None:
            print(f"{name:<15} {_largest_batch(model, x, target, args.budget_gib * 2**30)}")
        elif args.table:
            saved = saved_bytes(model, x).total // args.batch
            peak = peak_step_bytes(model, x, target)
            print(
                f"{name:<15} {saved:>15,} {peak / 2**20:9.2f} {_step_ms(model, x, target):8.1f}", flush=True
            )
        else:
            peak, resident = peak_step_bytes(model, x, target), resident_step_bytes(model, x, target)
            mib = f"peak_step_bytes {peak / 2**20:8.2f} MiB  resident_step_bytes {resident / 2**20:8.2f} MiB"
            print(f"{name:<15} {mib}", flush=True)


def _step_ms(model, x, target) -> float:
    """Median process time of three training steps (forward, cross-entropy, backward)."""
    times = []
    for _ in range(4):
        start = time.process_time()
        torch.nn.functional.cross_entropy(model(x), target).backward()
        times.append((time.process_time() - start) * 1e3)
        model.zero_grad(set_to_none=True)
    return statistics.median(times[1:])


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
