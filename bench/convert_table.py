"""What ``spectriton.convert`` does to real models at its defaults: convolutions converted,
bytes saved for backward and step time against the original's (train mode, 3 x 32 x 32
inputs, freshly initialised, measured after one training step: a converted block decides
what it keeps from what its layers kept in the step before), the median fraction of its
spectrum a layer keeps, at the defaults and with a density budget of 0.1; with
``--train N``, the test accuracy of the original and the converted model
(``--train-models``) after ``--epochs`` (1) from scratch on N Fashion-MNIST images (padded
to 32 x 32, 3 channels; SGD, lr 0.02, momentum 0.9, batch 64; 1,000 test images). Prints a
Markdown table (README, Converting a model) and writes it as JSON with ``--json``.

    python bench/convert_table.py --train 1920 --json bench/results/convert-table.json
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import statistics
import time
import warnings

import torch
from torch import nn

import spectriton as st
from spectriton.datasets import load_dataset
from spectriton.memory import saved_bytes

MODELS = {
    "torchvision": ("resnet18", "resnet50", "densenet121", "mobilenet_v2"),
    "timm": ("resnet18", "resnet50", "densenet121", "mobilenetv2_100"),
}


def build(library: str, name: str) -> nn.Module:
    torch.manual_seed(0)
    if library == "timm":
        import timm

        return timm.create_model(name, num_classes=10)
    import torchvision

    return getattr(torchvision.models, name)(num_classes=10)


def step_time(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rounds: int = 3) -> float:
    """Median seconds of a training step (forward, loss, backward), after one warm-up."""
    times = []
    for _ in range(rounds + 1):
        start = time.perf_counter()
        nn.functional.cross_entropy(model(x), y).backward()
        times.append(time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    return statistics.median(times[1:])


class FashionMNIST32:
    """Fashion-MNIST padded to 32 x 32 and repeated over 3 channels, as tensors."""

    def __init__(self, train: int, test: int = 1000) -> None:
        generator = torch.Generator().manual_seed(0)
        self.train = self._take(load_dataset("fashion-mnist", image_size=32), train, generator)
        self.test = self._take(load_dataset("fashion-mnist", train=False, image_size=32), test, generator)

    @staticmethod
    def _take(dataset, n: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randperm(len(dataset), generator=generator)[:n].tolist()
        images, labels = zip(*(dataset[i] for i in index))
        return torch.stack(images).expand(-1, 3, -1, -1).contiguous(), torch.tensor(labels)


def short_run(model: nn.Module, data: FashionMNIST32, epochs: int = 1, batch: int = 64) -> float:
    """Test accuracy (%) after ``epochs`` from scratch."""
    torch.manual_seed(1)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
    images, labels = data.train
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(len(labels)).split(batch):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(images[index]), labels[index]).backward()
            optimizer.step()
    model.eval()
    images, labels = data.test
    with torch.no_grad():
        correct = sum(
            (model(x).argmax(1) == y).sum().item() for x, y in zip(images.split(250), labels.split(250))
        )
    return 100.0 * correct / len(labels)


def options_of(text: str) -> dict:
    """``convert``'s keyword arguments from ``defaults`` or ``name=value[;name=value]``
    (``density=0.1``, ``beta=0.3;affine=False``, ``value_dtype=bfloat16``: a dtype by name)."""
    if text == "defaults":
        return {}
    pairs = (item.split("=", 1) for item in text.split(";"))
    return {
        name: getattr(torch, value) if name == "value_dtype" else ast.literal_eval(value)
        for name, value in pairs
    }


def row(
    library: str, name: str, options: str, data: FashionMNIST32 | None, epochs: int = 1, timed: bool = True
) -> dict:
    original = build(library, name).train()
    convs = sum(isinstance(m, nn.Conv2d) for m in original.modules())
    converted = st.convert(copy.deepcopy(original), **options_of(options))
    x = torch.randn(8, 3, 32, 32)
    for model in (original, converted):  # one step first: the steady state, not the first call
        nn.functional.cross_entropy(model(x), torch.arange(8) % 10).backward()
        model.zero_grad(set_to_none=True)
    ratio = saved_bytes(converted, x).total / saved_bytes(original, x).total
    time_ratio = None
    if timed:
        xb, yb = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
        time_ratio = step_time(converted, xb, yb) / step_time(original, xb, yb)
    layers = [m for m in converted.modules() if isinstance(m, st.SpectralConv2d)]
    result = {
        "library": library,
        "model": name,
        "options": options,
        "convs_converted": len(layers),
        "convs": convs,
        "saved_bytes_ratio": ratio,
        "step_time_ratio": time_ratio,
        "median_layer_kept": statistics.median(m.last_density for m in layers),
    }
    if data is not None:
        result["train_images"], result["epochs"] = len(data.train[1]), epochs
        result["accuracy_original"] = short_run(build(library, name), data, epochs)
        converted = st.convert(build(library, name), **options_of(options))
        result["accuracy_converted"] = short_run(converted, data, epochs)
    return result


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.1f}x"


def table(rows: list[dict]) -> str:
    lines = [
        "| library | model | options | convs converted | saved bytes, converted / original | step time, "
        "converted / original | median layer kept | accuracy from scratch, original / converted |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        accuracy = (
            f"{r['accuracy_original']:.1f} % / {r['accuracy_converted']:.1f} %"
            if "accuracy_original" in r
            else "-"
        )
        lines.append(
            f"| {r['library']} | {r['model']} | {r['options']} | {r['convs_converted']} of {r['convs']} | "
            f"{r['saved_bytes_ratio']:.3f} | {_times(r['step_time_ratio'])} | {r['median_layer_kept']:.1%} | "
            f"{accuracy} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--train", type=int, default=0, help="images of the short from-scratch runs (0: none)"
    )
    parser.add_argument("--train-models", default="resnet18", help="comma-separated models to train")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the from-scratch runs")
    parser.add_argument("--models", help="comma-separated models (default: all of each library's)")
    parser.add_argument(
        "--options",
        default="defaults,density=0.1",
        help="comma-separated: defaults, or convert's keyword arguments as name=value[;name=value]",
    )
    parser.add_argument("--libraries", default="torchvision,timm", help="comma-separated: torchvision, timm")
    parser.add_argument("--no-time", action="store_true", help="leave out the step timings")
    parser.add_argument("--json", help="write the rows there too")
    args = parser.parse_args()
    data = FashionMNIST32(args.train) if args.train else None
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the starved-layer warnings: the table says what is kept
        for library in args.libraries.split(","):
            for name in MODELS[library]:
                if args.models and name not in args.models.split(","):
                    continue
                for options in args.options.split(","):
                    train = data if name in args.train_models.split(",") else None
                    rows.append(row(library, name, options, train, args.epochs, not args.no_time))
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    if args.json:
        info = {"device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__}
        with open(args.json, "w") as f:
            json.dump({"setup": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
