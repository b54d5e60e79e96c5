"""Per-layer roofline of the spectral product at SpecVGG's shapes, for reading a GPU run.

``python bench/roofline.py [--batch 128] [--density 0.1] [--value-bytes 8]`` prints a
Markdown table: for each 3x3 layer of SpecVGG, the FLOPs of the spectral product (four real
multiply-adds per complex one, per frequency bin) and of the spatial convolution it
replaces, the minimum bytes each spectral kernel must move (compressed operands at the
given density, mask bits, the product matrices), and the time each would take at the
roofline of an H200 (TF32 and bf16 dense tensor-core peaks, HBM bandwidth): the larger of
FLOPs / peak and bytes / bandwidth. Measured kernel times (``bench/gpu_check.sh``) read
against it.
"""

from __future__ import annotations

import argparse

PEAK_TF32 = 494e12  # dense TF32 tensor-core FLOP/s (H100/H200 SXM)
PEAK_BF16 = 989e12  # dense bf16
HBM = 4.8e12  # H200 bytes/s

# SpecVGG's 3x3 layers: (in channels, out channels, map size), paper appendix Table 4
LAYERS = [(1, 64, 32), (64, 64, 32), (64, 128, 16), (128, 128, 16), (128, 256, 8), (256, 256, 8)]


def layer_row(batch: int, c_in: int, c_out: int, size: int, density: float, value_bytes: int) -> dict:
    grid = size + 2
    bins = grid * (grid // 2 + 1)
    compressed = lambda channels: batch * channels * bins * (density * value_bytes + 1 / 8)  # noqa: E731
    kernel = 8 * c_in * c_out * bins  # complex64 product matrices
    flops = 8 * batch * c_in * c_out * bins
    conv_flops = 2 * batch * c_in * c_out * 9 * size * size
    moved = {
        # forward: compressed X and K in, activated kept entries + keep bits out (fused epilogue)
        "forward": compressed(c_in) + kernel + compressed(c_out),
        # input gradient: compressed dY and K^H in, packed at X's mask out
        "input_grad": compressed(c_out) + kernel + compressed(c_in),
        # kernel gradient: compressed X and dY in, dense product-matrix gradient out
        "weight_grad": compressed(c_in) + compressed(c_out) + kernel,
    }
    return {
        "layer": f"{c_in}->{c_out} @{size}x{size} (grid {grid}, {bins} bins)",
        "gflop": flops / 1e9,
        "conv_gflop": conv_flops / 1e9,
        "moved": moved,
        "flops": flops,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--value-bytes", type=int, default=8)
    args = parser.parse_args(argv)
    print(
        "| layer | product GFLOP | conv GFLOP | min MB fwd / dX / dW | "
        "us at roofline, TF32 fwd / dX / dW | us, bf16 fwd | bound | conv us at TF32 roofline |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for c_in, c_out, size in LAYERS:
        row = layer_row(args.batch, c_in, c_out, size, args.density, args.value_bytes)
        times = {k: max(row["flops"] / PEAK_TF32, b / HBM) * 1e6 for k, b in row["moved"].items()}
        bf16 = max(row["flops"] / PEAK_BF16, row["moved"]["forward"] / HBM) * 1e6
        bound = "memory" if row["moved"]["forward"] / HBM > row["flops"] / PEAK_TF32 else "compute"
        mb = " / ".join(f"{b / 1e6:.1f}" for b in row["moved"].values())
        us = " / ".join(f"{t:.1f}" for t in times.values())
        print(
            f"| {row['layer']} | {row['gflop']:.2f} | {row['conv_gflop']:.2f} | {mb} | {us} | {bf16:.1f} "
            f"| {bound} | {row['conv_gflop'] * 1e9 / PEAK_TF32 * 1e6:.1f} |"
        )


if __name__ == "__main__":
    main()
