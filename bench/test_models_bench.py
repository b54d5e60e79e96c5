"""Training step of each zoo model, spatial against Spec: time, saved bytes, peak (CUDA)."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, record, run
from torch import nn

from spectriton import models
from spectriton.memory import peak_step_bytes, saved_bytes

BATCH = 64


def _step_inputs(name: str, batch: int):
    size = models.input_size(name)
    torch.manual_seed(0)
    return torch.randn(batch, 1, size, size, device=DEVICE), torch.randint(0, 10, (batch,), device=DEVICE)


@pytest.mark.parametrize("form", ["spatial", "spec"])
@pytest.mark.parametrize("name", models.MODELS)
def test_training_step(benchmark, quick, name, form):
    if quick and name not in ("lenet5", "alexnet"):
        pytest.skip("--quick runs LeNet and AlexNet only")
    batch = 16 if quick else BATCH
    torch.manual_seed(0)
    model = models.build(name, spectral=form == "spec").to(DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.95)
    x, y = _step_inputs(name, batch)

    def step():
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    run(benchmark, step, rounds=3)
    extra = {"batch": batch, "saved_bytes_per_sample": saved_bytes(model, x).per_sample}
    if DEVICE.type == "cuda":
        extra["peak_bytes"] = peak_step_bytes(model, x, y)
    record(benchmark, provider=form, model=name, **extra)
