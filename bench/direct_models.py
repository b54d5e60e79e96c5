"""Whole training steps of converted torchvision models and the zoo's Spec forms with small
maps' products direct (spectriton.direct, the default) against spectral products
(``DIRECT_COST = 0``), interleaved round by round in one process, one thread, on CPU; the
original's step alongside for the ratios.

    OMP_NUM_THREADS=1 python bench/direct_models.py [--rounds 3] [model:side:batch ...]
    python bench/direct_models.py --peak resnet18:128:8 resnet18:32:32 vgg16:32:64

A model is a torchvision name (converted with ``spectriton.convert``) or a zoo name (its
Spec form, which takes one channel); the defaults are the issue tables' cases. A step is
forward, cross-entropy and backward; the first round warms up; process CPU time, medians.
With ``--peak``, instead, the Spec form's step peak and saved bytes with each kind of
products (``spectriton.memory``: the profiler's allocation record, CPU).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from conftest import device_name  # bench/, this script's directory

import spectriton
from spectriton import direct, models

CASES = [
    "resnet18:32:32",
    "resnet18:128:8",
    "resnet18:224:16",
    "resnet50:32:32",
    "densenet121:32:32",
    "vgg16:32:64",
]


def _pair(name: str):
    """The original and its Spec form."""
    if name in models.MODELS:
        return models.build(name), models.build(name, spectral=True)
    import torchvision

    build = getattr(torchvision.models, name)
    return build(num_classes=10), spectriton.convert(build(num_classes=10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peak", action="store_true", help="peak and saved bytes instead of times")
    parser.add_argument("cases", nargs="*", default=CASES)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.peak:
        return _peaks(args.cases)
    default = direct.DIRECT_COST
    print(f"# {device_name()}, torch {torch.__version__}, one thread, {args.rounds} rounds, medians")
    print("# model         side batch  original ms  spectral ms  direct ms  direct/spectral  to original")
    for case in args.cases:
        name, side, batch = case.split(":")
        torch.manual_seed(0)
        original, spec = _pair(name)
        channels = 1 if name in models.MODELS else 3  # the zoo's take Fashion-MNIST
        x = torch.randn(int(batch), channels, int(side), int(side))
        target = torch.randint(0, 10, (int(batch),))
        forms = {"original": (original, default), "spectral": (spec, 0), "direct": (spec, default)}
        times: dict[str, list[float]] = {form: [] for form in forms}
        for round_ in range(args.rounds + 1):  # the first round warms up
            for form, (model, cost) in forms.items():
                direct.DIRECT_COST = cost
                start = time.process_time()
                torch.nn.functional.cross_entropy(model(x), target).backward()
                model.zero_grad(set_to_none=True)
                if round_:
                    times[form].append(time.process_time() - start)
        direct.DIRECT_COST = default
        ms = {form: statistics.median(t) * 1e3 for form, t in times.items()}
        print(
            f"{name:14s} {side:>4s} {batch:>5s} {ms['original']:11.1f} {ms['spectral']:12.1f}"
            f" {ms['direct']:10.1f} {ms['direct'] / ms['spectral']:16.2f}"
            f"   {ms['spectral'] / ms['original']:.2f} -> {ms['direct'] / ms['original']:.2f}"
        )


def _peaks(cases: list[str]) -> None:
    from spectriton.memory import peak_step_bytes, saved_bytes

    default = direct.DIRECT_COST
    print("# model         side batch  products  peak MiB  saved MiB")
    for case in cases:
        name, side, batch = case.split(":")
        for label, cost in (("spectral", 0), ("default", default)):
            direct.DIRECT_COST = cost
            torch.manual_seed(0)
            spec = _pair(name)[1]
            channels = 1 if name in models.MODELS else 3
            x = torch.randn(int(batch), channels, int(side), int(side))
            target = torch.randint(0, 10, (int(batch),))
            peak, saved = peak_step_bytes(spec, x, target), saved_bytes(spec, x).total
            print(f"{name:14s} {side:>4s} {batch:>5s}  {label:8s} {peak / 2**20:9.2f} {saved / 2**20:10.2f}")
        direct.DIRECT_COST = default


if __name__ == "__main__":
    main()
