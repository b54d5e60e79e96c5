"""Memory of a training step: the spatial model, the Spec model, and the anchors a user
would pick instead (``torch.utils.checkpoint``, ``torch.autograd.graph.save_on_cpu``).

Forms: ``spatial``, ``spec``, ``checkpoint`` (the spatial model with
``torch.utils.checkpoint`` around each block, :func:`spectriton.checkpointing.checkpoint_blocks`),
``spec+checkpoint`` (the Spec model under the same checkpointing) and ``save_on_cpu``.
Saved bytes are what the saved-tensor hooks see: a checkpointed block keeps its input;
``save_on_cpu`` keeps everything in host memory, so it shows 0 (on a CPU run that host
memory is the same memory, which is why on CUDA the peak of a step and the largest batch
that fits 8 GiB are the figures to read).
"""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, record, run
from torch import nn

from spectriton import models
from spectriton.checkpointing import checkpoint_blocks
from spectriton.memory import largest_batch, peak_step_bytes, saved_bytes

BUDGET = 8 * 2**30


class _Offloaded(nn.Module):
    """The spatial model with every saved tensor moved to (pinned) host memory."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        with torch.autograd.graph.save_on_cpu(pin_memory=DEVICE.type == "cuda"):
            return self.model(x)


def _variant(name: str, variant: str) -> nn.Module:
    torch.manual_seed(0)
    model = models.build(name, spectral=variant.startswith("spec"))
    wrap = {"checkpoint": checkpoint_blocks, "spec+checkpoint": checkpoint_blocks, "save_on_cpu": _Offloaded}
    return (wrap[variant](model) if variant in wrap else model).to(DEVICE)


@pytest.mark.parametrize("variant", ["spatial", "spec", "checkpoint", "spec+checkpoint", "save_on_cpu"])
@pytest.mark.parametrize("name", models.MODELS)
def test_memory_of_a_training_step(benchmark, quick, name, variant):
    if quick and name not in ("lenet5", "vgg16"):
        pytest.skip("--quick runs LeNet and VGG only")
    batch = 16 if quick else 64
    model = _variant(name, variant)
    size = models.input_size(name)
    x = torch.randn(batch, 1, size, size, device=DEVICE)
    y = torch.randint(0, 10, (batch,), device=DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)

    def step():
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()

    run(benchmark, step, rounds=3)
    extra = {"model": name, "batch": batch, "saved_bytes_per_sample": saved_bytes(model, x).per_sample}
    if DEVICE.type == "cuda":
        extra["peak_bytes"] = peak_step_bytes(model, x, y)

        def fits(b: int) -> bool:
            xb = torch.randn(b, 1, size, size, device=DEVICE)
            return peak_step_bytes(model, xb, torch.zeros(b, dtype=torch.long, device=DEVICE)) <= BUDGET

        extra["largest_batch_8GiB"] = largest_batch(fits, start=64)
    record(benchmark, provider=variant, **extra)
