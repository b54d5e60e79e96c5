"""What ``spectriton.convert`` does to torchvision models, at its defaults (beta 0.7) and
with a density budget of 0.1: convolutions converted, bytes saved for backward against
the original's (train mode, batch 8, 3 x 32 x 32, freshly initialised), and the median
fraction of its spectrum a converted layer keeps. Prints a Markdown table (README,
Converting a model)."""

import copy
import statistics
import warnings

import torch
import torchvision
from torch import nn

import spectriton as st
from spectriton.memory import saved_bytes

MODELS = ("resnet18", "resnet50", "densenet121", "mobilenet_v2")


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32)
    print("| model | convs converted | options | saved bytes, converted / original | median layer kept |")
    print("|---|---|---|---|---|")
    for name in MODELS:
        original = getattr(torchvision.models, name)(num_classes=10).train()
        convs = sum(isinstance(m, nn.Conv2d) for m in original.modules())
        base = saved_bytes(original, x).total
        for label, options in (("defaults", {}), ("density=0.1", {"density": 0.1})):
            converted = st.convert(copy.deepcopy(original), **options)
            ratio = saved_bytes(converted, x).total / base
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the starved-layer warnings: the table says it
                converted(x)
            layers = [m for m in converted.modules() if isinstance(m, st.SpectralConv2d)]
            kept = statistics.median(m.last_density for m in layers)
            print(f"| {name} | {len(layers)} of {convs} | {label} | {ratio:.3f} | {kept:.1%} |")


if __name__ == "__main__":
    main()
