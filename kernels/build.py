"""Ahead-of-time build of every kernel for real GPUs, without a GPU, as its call sites launch it.

``python -m spectriton.kernels`` compiles each call site of :data:`CALL_SITES` (the argument
types and constexprs the launchers produce, recorded by ``--record`` under the interpreter),
in each autotune config, for sm_80 and sm_90 with ``triton.compile`` and a ``GPUTarget``,
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
import contextlib
import inspect
import json
import multiprocessing
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


# The specialisations the launchers produce at the call sites :func:`record_call_sites` runs
# (``python -m spectriton.kernels --record`` writes it; a test fails when it misses one).
CALL_SITES = Path(__file__).with_name("call_sites.json")
# Integer arguments marked divisible by 16, as the JIT marks them at the paper's shapes.
DIVISIBLE = {
    "spectral_product_kernel": ("stride_kf", "stride_kk", "N", "K", "Q"),
    "spectral_weight_grad_kernel": ("N", "K", "Q"),
    "spectral_threshold_kernel": ("numel",),
}
WARPS = {"spectral_threshold_kernel": 8}
# What a call site's key leaves out: the tests' exact precision ("ieee"; the build makes the
# GPU's "tf32" and "bf16") and the autotune config (the build makes each). Launch options
# (num_warps, ...) are not kernel parameters, so never recorded.
UNKEYED = ("PRECISION", "BLOCK_M", "BLOCK_N", "BLOCK_K", "BLOCK_Q")
_CODES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64", "int32": "i32",
          "int64": "i64", "uint8": "u8", "int8": "i8", "bool": "i1"}  # fmt: skip


def _tuned(kernel):
    """(config, num_warps, precision, tag) for every autotune config of ``kernel``: each in
    TF32, the first also in bf16."""
    for index, c in enumerate(kernel.configs):
        tag = ",".join(f"{k}={v}" for k, v in c.kwargs.items())
        for precision in PRECISIONS[: 2 if index == 0 else 1]:
            yield dict(c.kwargs), c.num_warps, precision, tag


def argument_type(value) -> str:
    """The signature type Triton's JIT gives an argument: ``*<dtype>`` for a tensor, ``i32``
    or ``i64`` for an int by its range (an int equal to 1 is a constant: the JIT specialises
    on it), ``fp32`` for a float."""
    if hasattr(value, "dtype") and hasattr(value, "data_ptr"):
        return "*" + _CODES[str(value.dtype).removeprefix("torch.")]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "1" if value == 1 else ("i32" if -(2**31) <= value < 2**31 else "i64")
    return "fp32" if isinstance(value, float) else type(value).__name__


@contextlib.contextmanager
def recorded_launches():
    """Under ``TRITON_INTERPRET=1``: every kernel launch made inside as a call site
    (``{"kernel", "types", "constexprs"}``, not divisibility by 16, which follows each call's
    shapes), collected into the list yielded, each once."""
    from triton.runtime.interpreter import InterpretedFunction

    run, sites = InterpretedFunction.run, []

    def recording(self, *args, grid, warmup, **kwargs):
        parameters = inspect.signature(self.fn).parameters
        values = {k: v for k, v in {**dict(zip(self.arg_names, args)), **kwargs}.items() if k in parameters}
        constexprs = {k: v for k, v in values.items() if "constexpr" in str(parameters[k].annotation)}
        site = {
            "kernel": self.fn.__name__,
            "types": {k: argument_type(v) for k, v in values.items() if k not in constexprs},
            "constexprs": {k: v for k, v in constexprs.items() if k not in UNKEYED},
        }
        if site not in sites:
            sites.append(site)
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = recording
    try:
        yield sites
    finally:
        InterpretedFunction.run = run


def record_call_sites() -> list[dict]:
    """The call sites of a training step and an eval forward of small layers and models
    holding every kind of call the zoo and converted models make (bfloat16 values, a first
    layer reading 1 channel, normalised, strided, residual, 1 x 1, density, dense block,
    linear), on the Triton backend under the interpreter, in a stable order."""
    import torch
    from torch import nn

    import spectriton as st

    spec = dict(activation="split_tanh", beta=0.5, value_dtype=torch.bfloat16)
    torch.manual_seed(0)
    models = [
        (nn.Sequential(st.SpectralConv2d(1, 16, 5, **spec), st.CompactMaxPool2d(2)), (16, 1, 12, 12)),
        (st.SpectralSequential(*(st.SpectralConv2d(16, 16, 3, 1, 1, **spec) for _ in "ab")), (16, 16, 6, 6)),
        (st.convert(_residual_block()), (16, 16, 8, 8)),
        (st.SpectralConv2d(16, 16, 3, padding=1, activation="split_tanh", density=0.2), (16, 16, 6, 6)),
        (st.SpectralDenseBlock(16, 16, 2, beta=0.3, value_dtype=torch.bfloat16), (16, 16, 6, 6)),
        (st.SpectralConv2d(16, 16, 3, padding=1), (16, 16, 6, 6)),
    ]  # fmt: skip
    with recorded_launches() as sites:
        for model, shape in models:
            x = torch.randn(shape)
            model.train()(x).square().mean().backward()
            with torch.no_grad():
                model.eval()(x)
    return sorted(sites, key=lambda site: json.dumps(site, sort_keys=True))


def _residual_block():
    """A ResNet basic block with a strided 1 x 1 shortcut, as torchvision writes it."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(16, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32)
            self.conv2, self.bn2 = nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32)
            self.relu = nn.ReLU()
            self.downsample = nn.Sequential(nn.Conv2d(16, 32, 1, 2, bias=False), nn.BatchNorm2d(32))

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + self.downsample(x))

    return Block()


def variants() -> list[Variant]:
    """Every call site of :data:`CALL_SITES` as the build compiles it: an autotuned kernel in
    each of its configs (:func:`_tuned`), constant arguments as constexprs."""
    from spectriton.kernels import packing, spectral_product, threshold

    kernels = {
        k.fn.__name__ if hasattr(k, "configs") else k.__name__: k
        for k in (
            threshold.spectral_threshold_kernel, threshold.spectral_activation_backward_kernel,
            packing.spectral_pack_kernel, packing.spectral_unpack_kernel,
            spectral_product.spectral_product_kernel, spectral_product.spectral_weight_grad_kernel,
        )
    }  # fmt: skip
    out: list[Variant] = []
    for site in json.loads(CALL_SITES.read_text()):
        name, kernel = site["kernel"], kernels[site["kernel"]]
        fn = kernel.fn if hasattr(kernel, "configs") else kernel
        types = site["types"]
        constants = {k: int(t) for k, t in types.items() if t == "1"}
        signature = {
            p.name: "constexpr" if p.is_constexpr or p.name in constants else types[p.name] for p in fn.params
        }
        aligned = tuple(k for k, t in signature.items() if t.startswith("*"))
        aligned += tuple(k for k in DIVISIBLE.get(name, ()) if signature.get(k) in ("i32", "i64"))
        flags = ",".join(
            [f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in site["constexprs"].items()]
            + [f"{k}=1" for k in constants]
            + [f"{k.removesuffix('_ptr')}={t[1:]}" for k, t in types.items() if t in ("*bf16", "*fp16")]
        )
        base = {**site["constexprs"], **constants}
        if not hasattr(kernel, "configs"):
            out.append(Variant(f"{name}[{flags}]", fn, signature, base, aligned, WARPS.get(name, 4)))
            continue
        for config, warps, precision, tag in _tuned(kernel):
            constexprs = {**base, **config, "PRECISION": precision}
            label = f"{name}[{flags},{precision},{tag}]"
            out.append(Variant(label, fn, signature, constexprs, aligned, warps))
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
        "popc": len(re.findall(r"\bPOPC\b", sass)),
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


_JOBS: list[tuple] = []  # (variant, arch, cubin folder): what main's forked workers build


def _built_row(job: int) -> tuple[str, int, dict | str]:
    """(variant name, arch, :func:`build`'s row or the error's first line) of ``_JOBS[job]``."""
    variant, arch, cubin_dir = _JOBS[job]
    try:
        return variant.name, arch, build(variant, arch, cubin_dir)
    except Exception as error:
        text = str(error).strip()
        return variant.name, arch, text.splitlines()[0] if text else type(error).__name__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spectriton.kernels", description=__doc__.split("\n")[0])
    parser.add_argument("--cubin-dir", type=Path, help="write every compiled cubin into this folder")
    parser.add_argument("--only", help="build only the variants whose name contains this text")
    parser.add_argument(
        "--record", action="store_true", help=f"record the call sites into {CALL_SITES.name} (interpreter)"
    )
    args = parser.parse_args(argv)
    if args.record:
        if os.environ.get("TRITON_INTERPRET") != "1":
            print("set TRITON_INTERPRET=1: the call sites are recorded on CPU", file=sys.stderr)
            return 2
        os.environ["SPECTRITON_BACKEND"] = "triton"
        os.environ["SPECTRITON_CPU_FORMS"] = "0"
        CALL_SITES.write_text(json.dumps(record_call_sites(), indent=1) + "\n")
        return 0
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
        f"{'HMMA':>5} {'HGMMA':>5} {'LDG64+':>6} {'POPC':>5}"
    )
    print(header)
    print("-" * len(header))
    _JOBS[:] = [(variant, arch, args.cubin_dir) for variant in chosen for arch in ARCHS]
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:  # forked: they see _JOBS
        for variant, arch, row in pool.imap(_built_row, range(len(_JOBS))):
            if isinstance(row, str):  # a kernel that does not build is a row, not a crash
                failed += 1
                print(f"{variant:<{width}} sm_{arch:<3} FAILED: {row}")
                continue
            failed += row["spills"] > 0
            counts = (row["shared"], row["hmma"], row["hgmma"], row["vector_loads"], row["popc"])
            print(
                f"{row['kernel']:<{width}} {row['arch']:<6} {row['registers']:>5} {row['spills']:>6} "
                + "{:>7} {:>5} {:>5} {:>6} {:>5}".format(*counts),
                flush=True,
            )
    print(f"{failed} failure(s)" if failed else "all kernels built, no spills")
    return 1 if failed else 0
