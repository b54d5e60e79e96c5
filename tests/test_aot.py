"""Every kernel builds ahead of time for sm_80 and sm_90, specialised as the JIT launches it:
zero spills, tensor-core instructions in the product kernels (no GPU needed)."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def _report(*args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(
        [sys.executable, "-m", "spectriton.kernels", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )


def test_every_kernel_builds_for_sm80_and_sm90_without_spills_and_on_tensor_cores(tmp_path):
    result = _report("--cubin-dir", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("spectral_")]
    kernels = {row[0].split("[")[0] for row in rows}
    assert kernels == {
        "spectral_threshold_kernel",
        "spectral_activation_backward_kernel",
        "spectral_unpack_kernel",
        "spectral_pack_kernel",
        "spectral_product_kernel",
        "spectral_weight_grad_kernel",
    }
    assert {row[1] for row in rows} == {"sm_80", "sm_90"}
    assert all(row[3] == "0" for row in rows), "a kernel spills"
    for name, arch, _regs, _spills, _shared, hmma, hgmma, _loads, popc in rows:
        if "PACKED=1" in name or name.startswith(("spectral_pack_kernel", "spectral_unpack_kernel")):
            assert int(popc) > 0, f"{name} on {arch} counts bits without POPC"
        if name.startswith(("spectral_product_kernel", "spectral_weight_grad_kernel")):
            tensor_core = int(hmma) + (int(hgmma) if arch == "sm_90" else 0)
            assert tensor_core > 0, f"{name} on {arch} has no tensor-core instruction"
            assert arch == "sm_90" or int(hgmma) == 0
    assert "all kernels built, no spills" in result.stdout
    cubins = sorted(p.name for p in tmp_path.iterdir())
    assert len(cubins) == len(rows)
    assert all(name.endswith((".sm_80.cubin", ".sm_90.cubin")) for name in cubins)


def test_refuses_to_build_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "spectriton.kernels"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 2 and "TRITON_INTERPRET" in result.stderr


@pytest.mark.interpreter
def test_the_build_covers_every_call_site(monkeypatch):
    """Issue 25: the build is what runs. Every kernel specialisation the launchers produce
    (argument types: bfloat16 or float32 values, dense or packed operands, i32 sizes, a first
    layer's one input channel as the constant 1; constexprs) at the recorded call sites is
    in ``kernels/call_sites.json``, which the build's variants are made from."""
    from spectriton.kernels import build

    monkeypatch.setenv("SPECTRITON_BACKEND", "triton")
    monkeypatch.setenv("SPECTRITON_CPU_FORMS", "0")
    recorded = build.record_call_sites()
    committed = json.loads(build.CALL_SITES.read_text())
    missing = [site for site in recorded if site not in committed]
    assert not missing, f"not built (python -m spectriton.kernels --record): {missing}"
    kinds = {(s["kernel"], s["types"].get("x_ptr"), s["types"].get("K")) for s in recorded}
    assert ("spectral_product_kernel", "*bf16", "i32") in kinds  # packed bfloat16 values
    assert ("spectral_product_kernel", "*fp32", "1") in kinds  # a first layer on one channel
