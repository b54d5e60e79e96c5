"""Median time of one Spec training step (forward, loss, backward) of a zoo model on CPU,
for comparing two versions of the package under the same load:

    git worktree add /tmp/before <commit>
    python bench/step_time.py --src /tmp/before vgg16; python bench/step_time.py vgg16
"""

import argparse
import statistics
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--src", help="a source tree to import spectriton from (default: installed)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.src:
        sys.path.insert(0, args.src)
    import torch

    from spectriton import models

    torch.manual_seed(0)
    model = models.build(args.model, spectral=True)
    size = models.input_size(args.model)
    x, y = torch.randn(args.batch, 1, size, size), torch.randint(0, 10, (args.batch,))

    def step() -> float:
        start = time.perf_counter()
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        return time.perf_counter() - start

    step()  # warm-up
    print(f"{args.model}: {statistics.median(step() for _ in range(args.rounds)) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
