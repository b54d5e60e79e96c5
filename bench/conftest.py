"""Shared pieces of the benchmark suites: device, sizes, and what every record carries.

``pytest bench`` runs everything the device allows; ``pytest bench --quick`` a small set
(CI). On CPU the Triton providers are skipped (the interpreter is for correctness, not
speed) and large sizes are left out.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import pytest
import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# Peak HBM bandwidth (bytes/s) by device-name fragment, for the fraction-of-peak column.
PEAK_BANDWIDTH = {"H200": 4.8e12, "H100 SXM": 3.35e12, "H100 PCIe": 2.0e12, "H100": 3.35e12, "A100": 2.0e12}


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true", help="the small set of benchmarks (CI)")


@pytest.fixture(scope="session")
def quick(request) -> bool:
    return request.config.getoption("--quick")


@functools.cache
def _cpu_model() -> str:
    """The processor's model name (``platform.processor()`` is empty on most Linux systems)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def device_name() -> str:
    if DEVICE.type == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu ({_cpu_model()}, {os.cpu_count()} threads)"


def peak_bandwidth() -> float | None:
    if DEVICE.type != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((bw for key, bw in PEAK_BANDWIDTH.items() if key in name), None)


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def record(benchmark, *, provider: str, bytes_moved: int | None = None, **extra) -> None:
    """Fill ``benchmark.extra_info`` with the device, versions, bytes moved, achieved GB/s
    and fraction of peak bandwidth (CUDA), and any ``extra`` figures."""
    import triton

    info = benchmark.extra_info
    info.update(device=device_name(), torch=torch.__version__, triton=triton.__version__, provider=provider)
    info.update(extra)
    if bytes_moved is not None and benchmark.stats is not None:  # None under --benchmark-disable
        seconds = benchmark.stats.stats.median
        info["bytes_moved"] = int(bytes_moved)
        info["GB/s"] = bytes_moved / seconds / 1e9
        peak = peak_bandwidth()
        info["fraction_of_peak"] = bytes_moved / seconds / peak if peak else None


def run(benchmark, fn, *, setup=None, rounds: int = 5, warmup: int = 1):
    """``benchmark.pedantic`` with CUDA synchronised inside the timed function."""

    def timed(*args):
        out = fn(*args)
        sync()
        return out

    return benchmark.pedantic(timed, setup=setup, rounds=rounds, warmup_rounds=warmup)


def needs_triton(provider: str) -> None:
    if provider == "triton" and DEVICE.type != "cuda":
        pytest.skip("Triton providers run on CUDA only (the interpreter is not a benchmark)")
