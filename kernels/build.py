"""Ahead-of-time build of every kernel for real GPUs, without a GPU.

``python -m spectriton.kernels`` compiles each kernel, in each variant and autotune
config the launchers can pick, for sm_80 and sm_90 with ``triton.compile`` and a
``GPUTarget``, then reads registers, local memory (spills) and shared memory from the
cubin with the ``cuobjdump`` shipped in the triton wheel. Exit status 1 when a kernel
fails to build or spills.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ARCHS = (80, 90)


@dataclass(frozen=True)
class Variant:
    """One compilation of a kernel: argument types, constexprs and launch options."""

    name: str
    kernel: object
    signature: dict[str, str]
    constexprs: dict[str, object]
    num_warps: int = 4


def _autotune_configs(kernel) -> list[tuple[dict[str, object], int]]:
    return [(dict(c.kwargs), c.num_warps) for c in kernel.configs]


def _signature(fn, types: dict[str, str]) -> dict[str, str]:
    """Every argument of ``fn``: constexprs as such, ``types`` where given, else ``i32``.

    Pointer names (``*_ptr``) default to ``*fp32``, except masks, prefixes (``*i32``) and
    offsets or counts (``*i64``).
    """

    def default(name: str) -> str:
        if not name.endswith("_ptr"):
            return "i32"
        if "mask" in name or "prefix" in name:
            return "*i32"
        return "*i64" if "offsets" in name or "counts" in name else "*fp32"

    return {p.name: "constexpr" if p.is_constexpr else types.get(p.name, default(p.name)) for p in fn.params}


def variants() -> list[Variant]:
    """Every kernel in every variant its launcher uses."""
    from spectriton.kernels import packing, spectral_product, threshold

    out: list[Variant] = []

    def add(name, fn, constexprs, num_warps=4, **types):
        out.append(Variant(name, fn, _signature(fn, types), constexprs, num_warps))

    for activation in (False, True):
        add(
            f"spectral_threshold_compact_kernel[act={int(activation)}]",
            threshold.spectral_threshold_compact_kernel,
            {"ACTIVATION": activation, "BLOCK": 1024},
            num_warps=8,
            scale="fp32",
            beta2="fp32",
        )
    for dtype in ("fp32", "bf16"):
        add(
            f"spectral_gather_runs_kernel[{dtype}]",
            threshold.spectral_gather_runs_kernel,
            {"BLOCK": 256},
            values_ptr=f"*{dtype}",
        )
    add(
        "spectral_activation_backward_kernel[bf16]",
        threshold.spectral_activation_backward_kernel,
        {"BLOCK": 1024},
        z_ptr="*bf16",
    )
    for name in ("spectral_unpack_kernel", "spectral_pack_kernel"):
        add(name, getattr(packing, name), {"BLOCK": packing.BLOCK})
    roles = {
        "forward": dict(X_PACKED=True, OUT_PACKED=False, CONJ_W=True, HAS_BIAS=True),
        "forward_dense": dict(X_PACKED=False, OUT_PACKED=False, CONJ_W=True, HAS_BIAS=True),
        "input_grad_packed": dict(X_PACKED=True, OUT_PACKED=True, CONJ_W=False, HAS_BIAS=False),
        "input_grad_dense": dict(X_PACKED=True, OUT_PACKED=False, CONJ_W=False, HAS_BIAS=False),
    }
    product = spectral_product.spectral_product_kernel
    for role, flags in roles.items():
        for config, warps in _autotune_configs(product):
            tag = ",".join(f"{k}={v}" for k, v in config.items())
            add(f"spectral_product_kernel[{role},{tag}]", product.fn, {**flags, **config}, warps)
    wgrad = spectral_product.spectral_weight_grad_kernel
    for packed in (True, False):
        for config, warps in _autotune_configs(wgrad):
            tag = ",".join(f"{k}={v}" for k, v in config.items())
            add(
                f"spectral_weight_grad_kernel[packed={int(packed)},{tag}]",
                wgrad.fn,
                {"X_PACKED": packed, **config},
                warps,
            )
    return out


def _cuobjdump() -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def resource_usage(cubin: bytes) -> dict[str, int]:
    """Registers, stack, local (spill) and shared bytes of the only function in ``cubin``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [_cuobjdump(), "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text.split("Function", 1)[1]))
    return {k.lower(): int(v) for k, v in fields.items()}


def build(variant: Variant, arch: int) -> dict[str, object]:
    """Compile ``variant`` for ``sm_<arch>``; a row of the report."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(fn=variant.kernel, signature=variant.signature, constexprs=variant.constexprs)
    compiled = triton.compile(
        source, target=GPUTarget("cuda", arch, 32), options={"num_warps": variant.num_warps}
    )
    usage = resource_usage(compiled.asm["cubin"])
    return {
        "kernel": variant.name,
        "arch": f"sm_{arch}",
        "registers": usage["reg"],
        "spills": usage["local"] + usage["stack"],
        "shared": max(usage["shared"], compiled.metadata.shared),
        "cubin_bytes": len(compiled.asm["cubin"]),
    }


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the ahead-of-time build needs the compiler", file=sys.stderr)
        return 2
    failed = 0
    all_variants = variants()
    width = max(len(v.name) for v in all_variants)
    header = f"{'kernel':<{width}} {'arch':<6} {'regs':>5} {'spills':>6} {'shared':>7} {'cubin':>7}"
    print(header)
    print("-" * len(header))
    for variant in all_variants:
        for arch in ARCHS:
            try:
                row = build(variant, arch)
            except Exception as error:  # a kernel that does not build is a row, not a crash
                failed += 1
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                print(f"{variant.name:<{width}} sm_{arch:<3} FAILED: {first}")
                continue
            failed += row["spills"] > 0
            print(
                f"{row['kernel']:<{width}} {row['arch']:<6} {row['registers']:>5} {row['spills']:>6} "
                f"{row['shared']:>7} {row['cubin_bytes']:>7}",
                flush=True,
            )
    print(f"{failed} failure(s)" if failed else "all kernels built, no spills")
    return 1 if failed else 0
