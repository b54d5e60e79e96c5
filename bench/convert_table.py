"""What ``spectriton.convert`` at its defaults does to torchvision models: convolutions
converted, bytes saved for backward against the original's (train mode, batch 8,
3 x 32 x 32, freshly initialised), and the median fraction of its spectrum a converted
layer keeps. Prints a Markdown table (README, Converting a model)."""

import copy
import statistics

import torch
import torchvision
from torch import nn

import spectriton as st
from spectriton.memory import saved_bytes

MODELS = ("resnet18", "resnet50", "densenet121", "mobilenet_v2")


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32)
    print("| model | convs converted | saved bytes, converted / original | median layer kept |")
    print("|---|---|---|---|")
    for name in MODELS:
        original = getattr(torchvision.models, name)(num_classes=10).train()
        convs = sum(isinstance(m, nn.Conv2d) for m in original.modules())
        converted = st.convert(copy.deepcopy(original))
        ratio = saved_bytes(converted, x).total / saved_bytes(original, x).total
        converted(x)
        layers = [m for m in converted.modules() if isinstance(m, st.SpectralConv2d)]
        kept = statistics.median(m.last_density for m in layers)
        print(f"| {name} | {len(layers)} of {convs} | {ratio:.3f} | {kept:.1%} |")


if __name__ == "__main__":
    main()
