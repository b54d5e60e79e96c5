"""Transforms and layer steps with the DFTs as GEMMs (spectriton.dft) against the same
with FFTs, interleaved round by round in one process, one thread, on CPU.

    OMP_NUM_THREADS=1 python bench/dft_check.py [--rounds 9]

Prints, per grid side, the median milliseconds of a map spectrum and of its adjoint
(8 x 64 maps) by each path, where the crossover ``spectriton.dft.GEMM_GRID`` comes from;
then, for each layer, the median wall and CPU milliseconds of forward + backward by each
path and their ratio, and the depthwise layer's time as a fraction of the dense one's.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
from conftest import device_name  # bench/, this script's directory

import spectriton as st
from spectriton import dft, transforms

LAYERS = {  # name: (module, input shape)
    "depthwise 144 @ 16x16, b32": (
        lambda: st.SpectralConv2d(144, 144, 3, padding=1, groups=144),
        (32, 144, 16, 16),
    ),
    "dense 144 @ 16x16, b32": (lambda: st.SpectralConv2d(144, 144, 3, padding=1), (32, 144, 16, 16)),
    "dense 64 @ 32x32, b32": (lambda: st.SpectralConv2d(64, 64, 3, padding=1), (32, 64, 32, 32)),
    "dense 256 @ 8x8, b32": (lambda: st.SpectralConv2d(256, 256, 3, padding=1), (32, 256, 8, 8)),
    "stem 3 -> 64 7x7/2 @ 128x128, b8": (
        lambda: st.SpectralConv2d(3, 64, 7, stride=2, padding=3),
        (8, 3, 128, 128),
    ),
}


def _median_ms(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def transforms_table(rounds: int) -> None:
    """Map spectrum and its adjoint, GEMMs against FFTs, on square grids."""
    limit = dft.GEMM_GRID
    print(f"# {'grid':>4s} {'analysis gemm / fft ms':>24s} {'synthesis gemm / fft ms':>25s}")
    for side in (6, 10, 18, 26, 34, 40, 48, 56, 64):
        grid, size = (side, side), (side - 2, side - 2)
        x = torch.randn(8, 64, *size)
        spectrum = torch.randn(side * (side // 2 + 1), 8, 64, dtype=torch.complex64)
        row = []
        for gemm in (True, False):
            dft.GEMM_GRID = 1 << 30 if gemm else 0
            forward = functools.partial(transforms.map_spectrum, x, grid)
            adjoint = functools.partial(transforms.map_spectrum_adjoint, spectrum, grid, size)
            row += [_median_ms(forward, rounds), _median_ms(adjoint, rounds)]
        print(f"  {side:4d} {row[0]:11.2f} / {row[2]:6.2f} {row[1]:13.2f} / {row[3]:6.2f}")
    dft.GEMM_GRID = limit


def _step(module, x) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    module(x).square().mean().backward()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"# {device_name()}, torch {torch.__version__}, one thread")
    transforms_table(args.rounds)
    print(f"# {'layer':36s} {'fft ms':>14s} {'gemm ms':>14s} {'gemm/fft':>9s}   (wall / cpu)")
    limit = dft.GEMM_GRID
    cpu_ms = {}
    for name, (build, shape) in LAYERS.items():
        module, x = build(), torch.randn(*shape, requires_grad=True)
        times = {"fft": [], "gemm": []}
        for round_ in range(args.rounds + 1):  # the first round warms up
            for path in times:
                dft.GEMM_GRID = limit if path == "gemm" else 0
                measured = _step(module, x)
                if round_:
                    times[path].append(measured)
        dft.GEMM_GRID = limit
        med = {p: [statistics.median(t[i] for t in ts) * 1e3 for i in (0, 1)] for p, ts in times.items()}
        cpu_ms[name] = {p: m[1] for p, m in med.items()}
        print(
            f"  {name:36s} {med['fft'][0]:6.1f} / {med['fft'][1]:6.1f} {med['gemm'][0]:6.1f} / "
            f"{med['gemm'][1]:6.1f} {med['gemm'][1] / med['fft'][1]:9.2f}"
        )
    dw, dense = cpu_ms["depthwise 144 @ 16x16, b32"], cpu_ms["dense 144 @ 16x16, b32"]
    for path in ("fft", "gemm"):
        print(f"# depthwise / dense ({path}, cpu time): {dw[path] / dense[path]:.2f}")


if __name__ == "__main__":
    main()
