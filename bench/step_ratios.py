"""Training-step time of Spec forms against their originals, in one process, one thread:
converted torchvision models (``tv``: ResNet-18, ResNet-50, DenseNet-121, MobileNetV2 at
3 x 32 x 32, batch 32) or the zoo's Spec networks against their spatial forms (``zoo``,
batch 64). A step is forward, cross-entropy and backward; two warm-up steps each, then
``rounds`` rounds alternating original and Spec; process CPU time, medians. To compare
checkouts, run each with its own ``PYTHONPATH``, alternating, and compare the ratios:

    OMP_NUM_THREADS=1 PYTHONPATH=<checkout> python bench/step_ratios.py tv|zoo [rounds] [model ...]

``SPEC_OPTIONS="beta=0.7;value_dtype=bfloat16"`` converts with those options instead of
``convert``'s defaults (``bench/convert_table.py``'s syntax).
"""

import os
import statistics
import sys
import time

import torch
from torch import nn

import spectriton
from spectriton import models

sys.path.insert(0, os.path.dirname(__file__))
from convert_table import options_of  # noqa: E402

TORCHVISION = ["resnet18", "resnet50", "densenet121", "mobilenet_v2"]
ZOO = ["lenet5", "alexnet", "vgg16", "densenet"]


def pair(suite: str, name: str) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """The original, its Spec form and a seeded batch."""
    torch.manual_seed(0)
    if suite == "tv":
        import torchvision

        build = getattr(torchvision.models, name)
        options = options_of(os.environ.get("SPEC_OPTIONS", "defaults"))
        original, spec = build(num_classes=10), spectriton.convert(build(num_classes=10), **options)
        shape = (32, 3, 32, 32)
    else:
        original, spec = models.build(name), models.build(name, spectral=True)
        size = models.input_size(name)
        shape = (64, 1, size, size)
    return original.train(), spec.train(), torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def step_ms(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> float:
    start = time.process_time()
    nn.functional.cross_entropy(model(x), target).backward()
    model.zero_grad(set_to_none=True)
    return (time.process_time() - start) * 1e3


def main() -> None:
    suite = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    names = sys.argv[3:] or (TORCHVISION if suite == "tv" else ZOO)
    torch.set_num_threads(1)
    print(f"# {spectriton.__file__}, torch {torch.__version__}, one thread, {rounds} rounds")
    for name in names:
        original, spec, x = pair(suite, name)
        target = torch.randint(0, 10, (x.shape[0],), generator=torch.Generator().manual_seed(2))
        for _ in range(2):
            step_ms(original, x, target), step_ms(spec, x, target)
        times = [(step_ms(original, x, target), step_ms(spec, x, target)) for _ in range(rounds)]
        first = statistics.median(t[0] for t in times)
        second = statistics.median(t[1] for t in times)
        print(f"{name:14s} batch {x.shape[0]:3d}  original {first:8.1f} ms  spec {second:8.1f} ms  "
              f"ratio {second / first:6.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
