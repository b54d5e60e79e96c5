"""Every kernel builds ahead of time for sm_80 and sm_90, with zero spills (no GPU needed)."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def test_every_kernel_builds_for_sm80_and_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-m", "spectriton.kernels"], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("spectral_")]
    kernels = {row[0].split("[")[0] for row in rows}
    assert kernels == {
        "spectral_threshold_compact_kernel",
        "spectral_gather_runs_kernel",
        "spectral_activation_backward_kernel",
        "spectral_unpack_kernel",
        "spectral_pack_kernel",
        "spectral_product_kernel",
        "spectral_weight_grad_kernel",
    }
    assert {row[1] for row in rows} == {"sm_80", "sm_90"}
    assert all(row[3] == "0" for row in rows), "a kernel spills"
    assert "all kernels built, no spills" in result.stdout


def test_refuses_to_build_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "spectriton.kernels"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 2 and "TRITON_INTERPRET" in result.stderr
