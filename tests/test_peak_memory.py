"""The CPU peak of a training step (the profiler's allocation record) agrees with an
independent measure: the growth of resident memory, with large allocations through mmap."""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")

SCRIPT = textwrap.dedent(
    """
    import torch
    from torch import nn
    import spectriton
    from spectriton.memory import peak_step_bytes, resident_step_bytes

    torch.manual_seed(0)
    torch.set_num_threads(1)
    spatial = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )
    spec = spectriton.convert(spatial)
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    for model in (spatial, spec):
        print(peak_step_bytes(model, x, y), resident_step_bytes(model, x, y))
    """
)


def test_cpu_peak_agrees_with_resident_memory_within_10_percent():
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [tuple(map(int, line.split())) for line in result.stdout.splitlines() if line.strip()]
    assert len(rows) == 2
    for peak, resident in rows:
        assert peak > 4 * 2**20  # a step's worth of activations, far above allocator noise
        assert abs(peak - resident) <= 0.1 * resident, (peak, resident)
