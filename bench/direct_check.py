"""A layer's training step on small maps with its products direct (spectriton.direct, the
default where its rule applies) against the same layer with spectral products, interleaved
round by round in one process, one thread, on CPU.

    OMP_NUM_THREADS=1 python bench/direct_check.py [--rounds 5]

Each row: a normalised 3 x 3 layer (beta 0.3, split tanh, affine), C -> C channels on an
h x h map, batch N; the median milliseconds of forward + backward with spectral products
(``DIRECT_COST = 0``) and by default, whether the rule picks direct, and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from conftest import device_name  # bench/, this script's directory

import spectriton as st
from spectriton import direct

CASES = [  # batch, channels, map side
    (8, 64, 32),
    (8, 128, 16),
    (8, 256, 8),
    (8, 512, 4),
    (32, 64, 16),
    (32, 64, 8),
    (32, 128, 4),
    (32, 256, 2),
    (32, 512, 1),
    (64, 128, 8),
    (64, 256, 4),
    (64, 512, 2),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    default = direct.DIRECT_COST
    print(f"# {device_name()}, torch {torch.__version__}, one thread, {args.rounds} rounds")
    print("# N    C    map   spectral ms  default ms  direct  default/spectral")
    for batch, channels, side in CASES:
        torch.manual_seed(0)
        layer = st.SpectralConv2d(
            channels, channels, 3, padding=1, bias=False, beta=0.3, activation="split_tanh",
            normalize=True, affine=True,
        )  # fmt: skip
        x = torch.randn(batch, channels, side, side, requires_grad=True)
        times: dict[int, list[float]] = {0: [], default: []}
        for round_ in range(args.rounds + 1):  # the first round warms up
            for cost in times:
                direct.DIRECT_COST = cost
                start = time.process_time()
                layer(x).square().mean().backward()
                if round_:
                    times[cost].append(time.process_time() - start)
        direct.DIRECT_COST = default
        spectral, chosen = (statistics.median(times[c]) * 1e3 for c in (0, default))
        applies = direct.applies(x, layer.kernel_size, (side + 2, side + 2), 1)
        print(
            f"{batch:3d} {channels:4d} {side:3d}x{side:<3d} {spectral:10.1f} {chosen:11.1f}"
            f"  {'yes' if applies else 'no':>6}  {chosen / spectral:8.2f}"
        )


if __name__ == "__main__":
    main()
