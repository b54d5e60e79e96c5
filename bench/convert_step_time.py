"""Training-step time of converted torchvision ResNet-18 and ResNet-50 against the originals
(batch 32, 3 x 32 x 32; forward, loss, backward; median of 3 after one warm-up step), one
line per checkout, to compare checkouts side by side on one machine:

    PYTHONPATH=<checkout> python bench/convert_step_time.py <label>
"""

import statistics
import sys
import time
import warnings

import torch
import torchvision
from torch import nn

import spectriton as st

warnings.simplefilter("ignore")
torch.manual_seed(0)
out = []
for name in ["resnet18", "resnet50"]:
    o = getattr(torchvision.models, name)(num_classes=10).train()
    m = st.convert(getattr(torchvision.models, name)(num_classes=10)).train()
    x = torch.randn(32, 3, 32, 32)
    y = torch.randint(0, 10, (32,))

    def t(model, x=x, y=y):
        ts = []
        for _ in range(4):
            s = time.perf_counter()
            nn.functional.cross_entropy(model(x), y).backward()
            ts.append(time.perf_counter() - s)
        return statistics.median(ts[1:])

    to, tc = t(o), t(m)
    out.append(f"{name}: original {to * 1e3:.0f} ms, converted {tc * 1e3:.0f} ms ({tc / to:.1f}x)")
print(sys.argv[1], "|", "; ".join(out), flush=True)
