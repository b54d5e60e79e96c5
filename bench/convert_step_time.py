"""Training-step time of converted torchvision models (ResNet-18 and ResNet-50 unless named)
(batch 32, 3 x 32 x 32; :func:`convert_table.step_time`: forward, loss, backward, median of
3 after one warm-up step), one line per checkout, to compare checkouts side by side on one
machine:

    PYTHONPATH=<checkout> python bench/convert_step_time.py <label> [torchvision model name ...]
"""

import sys
import warnings

import torch
from convert_table import build, step_time

import spectriton as st

warnings.simplefilter("ignore")
line = []
for name in sys.argv[2:] or ["resnet18", "resnet50"]:
    original, converted = build("torchvision", name).train(), st.convert(build("torchvision", name)).train()
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    t_original, t_converted = step_time(original, x, y), step_time(converted, x, y)
    line.append(
        f"{name}: original {t_original * 1e3:.0f} ms, converted {t_converted * 1e3:.0f} ms "
        f"({t_converted / t_original:.1f}x)"
    )
print(sys.argv[1], "|", "; ".join(line), flush=True)
