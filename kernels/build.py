"""Ahead-of-time build of every kernel for real GPUs, without a GPU.

``python -m spectriton.kernels`` compiles each kernel, in each variant and autotune config
the launchers can pick, for sm_80 and sm_90 with ``triton.compile`` and a ``GPUTarget``,
with the specialisation the JIT gives those launches: every pointer 16-byte aligned and the
integer arguments that are multiples of 16 at the paper's shapes (batch, channels, strides)
marked divisible by 16, as Triton's launcher marks them. From the cubin it reads registers,
local memory (spills) and shared memory (``cuobjdump --dump-resource-usage``) and, from the
SASS (``cuobjdump -sass``), the tensor-core instructions (HMMA on sm_80, HGMMA or HMMA on
sm_90) and the vector global loads (64 or 128 bits). ``--cubin-dir DIR`` writes every cubin
there as ``<kernel>[<variant>].sm_<arch>.cubin``. Exit status 1 when a kernel fails to build
or spills.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ARCHS = (80, 90)
PRECISIONS = ("tf32", "bf16")  # what the launchers pick on GPU ("ieee" is the tests' exact mode)


@dataclass(frozen=True)
class Variant:
    """One compilation of a kernel: argument types, constexprs, aligned arguments and options."""

    name: str
    kernel: object
    signature: dict[str, str]
    constexprs: dict[str, object]
    aligned: tuple[str, ...]
    num_warps: int = 4


def _tuned(kernel):
    """(config, num_warps, precision, tag) for every autotune config of ``kernel``: each in
    TF32, the first also in bf16."""
    for index, c in enumerate(kernel.configs):
        tag = ",".join(f"{k}={v}" for k, v in c.kwargs.items())
        for precision in PRECISIONS[: 2 if index == 0 else 1]:
            yield dict(c.kwargs), c.num_warps, precision, tag


def _signature(fn, types: dict[str, str]) -> dict[str, str]:
    """Every argument of ``fn``: constexprs as such, ``types`` where given, else ``i32``.

    Pointer names (``*_ptr``) default to ``*fp32``, except masks (``*i32``) and prefixes
    (``*i64``).
    """

    def default(name: str) -> str:
        if not name.endswith("_ptr"):
            return "i32"
        if "mask" in name:
            return "*i32"
        return "*i64" if "prefix" in name else "*fp32"

    return {p.name: "constexpr" if p.is_constexpr else types.get(p.name, default(p.name)) for p in fn.params}


def variants() -> list[Variant]:
    """Every kernel in every variant its launcher uses."""
    from spectriton.kernels import packing, spectral_product, threshold

    out: list[Variant] = []

    def add(name, fn, constexprs, num_warps=4, divisible=(), **types):
        signature = _signature(fn, types)
        aligned = tuple(k for k, v in signature.items() if v.startswith("*")) + tuple(divisible)
        out.append(Variant(name, fn, signature, constexprs, aligned, num_warps))

    for activation, on_device in ((False, False), (True, False), (True, True)):
        add(
            f"spectral_threshold_kernel[act={int(activation)},beta_on_device={int(on_device)}]",
            threshold.spectral_threshold_kernel,
            {"ACTIVATION": activation, "BETA_ON_DEVICE": on_device, "BLOCK": threshold.THRESHOLD_BLOCK},
            num_warps=8,
            divisible=("numel",),
            numel="i64",
            scale="fp32",
            beta2="fp32",
        )
    add(
        "spectral_activation_backward_kernel[bf16]",
        threshold.spectral_activation_backward_kernel,
        {"BLOCK": 1024},
        z_ptr="*bf16",
    )
    add("spectral_unpack_kernel[fp32]", packing.spectral_unpack_kernel, {"BLOCK": packing.BLOCK}, numel="i64")
    for dtype in ("fp32", "bf16"):
        add(
            f"spectral_pack_kernel[{dtype}]",
            packing.spectral_pack_kernel,
            {"BLOCK": packing.BLOCK},
            values_ptr=f"*{dtype}",
            numel="i64",
        )
    P = spectral_product
    roles = {
        "forward": dict(X_PACKED=True, EPILOGUE=P.THRESHOLD, HAS_BIAS=True, ACTIVATION=True),
        "forward_dense_input": dict(X_PACKED=False, EPILOGUE=P.THRESHOLD, HAS_BIAS=True, ACTIVATION=True),
        "product": dict(X_PACKED=True, EPILOGUE=P.PLAIN, HAS_BIAS=True, ACTIVATION=False),
        "input_grad_packed": dict(X_PACKED=True, EPILOGUE=P.PACKED_AT_MASK, HAS_BIAS=False, ACTIVATION=False),
        "input_grad_dense": dict(X_PACKED=True, EPILOGUE=P.PLAIN, HAS_BIAS=False, ACTIVATION=False),
    }
    product = P.spectral_product_kernel
    for role, flags in roles.items():
        for config, warps, precision, tag in _tuned(product):
            add(
                f"spectral_product_kernel[{role},{precision},{tag}]",
                product.fn,
                {**flags, **config, "PRECISION": precision},
                warps,
                divisible=("stride_kf", "stride_kk", "N", "K", "Q"),
                scale="fp32",
                beta2="fp32",
            )
    wgrad = P.spectral_weight_grad_kernel
    for x_packed in (True, False):
        for config, warps, precision, tag in _tuned(wgrad):
            add(
                f"spectral_weight_grad_kernel[x_packed={int(x_packed)},{precision},{tag}]",
                wgrad.fn,
                {"X_PACKED": x_packed, "G_PACKED": True, "PRECISION": precision, **config},
                warps,
                divisible=("N", "K", "Q"),
            )
    return out


def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def _cuobjdump(cubin: bytes, *flags: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run(
            [_tool("cuobjdump"), *flags, f.name], capture_output=True, text=True, check=True
        ).stdout


def resource_usage(cubin: bytes) -> dict[str, int]:
    """Registers, stack, local (spill) and shared bytes of the only function in ``cubin``."""
    text = _cuobjdump(cubin, "--dump-resource-usage")
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text.split("Function", 1)[1]))
    return {k.lower(): int(v) for k, v in fields.items()}


def sass_counts(cubin: bytes) -> dict[str, int]:
    """Tensor-core instructions (HMMA, HGMMA) and vector global loads (LDG of 64 or 128 bits)
    in the SASS of ``cubin``."""
    sass = _cuobjdump(cubin, "-sass")
    return {
        "hmma": len(re.findall(r"\bHMMA\.", sass)),
        "hgmma": len(re.findall(r"\bHGMMA\.", sass)),
        "vector_loads": len(re.findall(r"\bLDG\.E\.(?:64|128)\b", sass)),
    }


def compile_variant(variant: Variant, arch: int):
    """The compiled kernel of ``variant`` for ``sm_<arch>``, specialised as the JIT would."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(variant.signature)
    attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in variant.aligned}
    source = ASTSource(
        fn=variant.kernel, signature=variant.signature, constexprs=variant.constexprs, attrs=attrs
    )
    return triton.compile(
        source, target=GPUTarget("cuda", arch, 32), options={"num_warps": variant.num_warps}
    )


def build(variant: Variant, arch: int, cubin_dir: Path | None = None) -> dict[str, object]:
    """Compile ``variant`` for ``sm_<arch>``; a row of the report."""
    compiled = compile_variant(variant, arch)
    cubin = compiled.asm["cubin"]
    if cubin_dir is not None:
        (cubin_dir / f"{variant.name}.sm_{arch}.cubin").write_bytes(cubin)
    usage = resource_usage(cubin)
    return {
        "kernel": variant.name,
        "arch": f"sm_{arch}",
        "registers": usage["reg"],
        "spills": usage["local"] + usage["stack"],
        "shared": max(usage["shared"], compiled.metadata.shared),
        **sass_counts(cubin),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spectriton.kernels", description=__doc__.split("\n")[0])
    parser.add_argument("--cubin-dir", type=Path, help="write every compiled cubin into this folder")
    parser.add_argument("--only", help="build only the variants whose name contains this text")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the ahead-of-time build needs the compiler", file=sys.stderr)
        return 2
    if args.cubin_dir is not None:
        args.cubin_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    chosen = [v for v in variants() if args.only is None or args.only in v.name]
    width = max(len(v.name) for v in chosen)
    header = (
        f"{'kernel':<{width}} {'arch':<6} {'regs':>5} {'spills':>6} {'shared':>7} "
        f"{'HMMA':>5} {'HGMMA':>5} {'LDG64+':>6}"
    )
    print(header)
    print("-" * len(header))
    for variant in chosen:
        for arch in ARCHS:
            try:
                row = build(variant, arch, args.cubin_dir)
            except Exception as error:  # a kernel that does not build is a row, not a crash
                failed += 1
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                print(f"{variant.name:<{width}} sm_{arch:<3} FAILED: {first}")
                continue
            failed += row["spills"] > 0
            print(
                f"{row['kernel']:<{width}} {row['arch']:<6} {row['registers']:>5} {row['spills']:>6} "
                f"{row['shared']:>7} {row['hmma']:>5} {row['hgmma']:>5} {row['vector_loads']:>6}",
                flush=True,
            )
    print(f"{failed} failure(s)" if failed else "all kernels built, no spills")
    return 1 if failed else 0
