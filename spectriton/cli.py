"""The ``spectriton`` command (also ``python -m spectriton``): train, compare, memory.

Run with no arguments, ``spectriton compare`` trains spatial LeNet-5 against SpecLeNet on
the Fashion-MNIST sample shipped with the package: a few minutes on two CPU cores, no
network, no data folder. Bad arguments and missing data give one line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from spectriton import datasets, models
from spectriton._checks import CONVERT_BETA, DEFAULT_BETA, MAX_BETA

EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake in the command line or its environment: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers like 0.5,0.7,1.0, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _betas(text: str) -> list[float]:
    values = _float_list(text)
    if any(not 0 <= v <= MAX_BETA for v in values):
        raise argparse.ArgumentTypeError(f"betas must be in [0, {MAX_BETA:.4g}], got {text!r}")
    return values


def _densities(text: str) -> list[float]:
    values = _float_list(text)
    if any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"densities must be in (0, 1], got {text!r}")
    return values


def _single(parse):
    """One number checked like ``parse`` checks a list of them."""

    def check(text: str) -> float:
        values = parse(text)
        if len(values) != 1:
            raise argparse.ArgumentTypeError(f"expected one number, got {text!r}")
        return values[0]

    return check


def _fraction(text: str) -> float:
    value = _single(_float_list)(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _single(_float_list)(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _choice(options: tuple[str, ...], what: str):
    def check(text: str) -> str:
        if text not in options:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; choose one of {', '.join(options)}")
        return text

    return check


def _training_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=_choice(models.MODELS + models.CONVERTED, "model"), default="lenet5")
    parser.add_argument("--dataset", type=_choice(datasets.DATASETS, "dataset"), default="sample")
    parser.add_argument("--data-dir", help="folder holding the dataset's files")
    parser.add_argument("--download", action="store_true", help="fetch the dataset with torchvision")
    parser.add_argument("--epochs", type=_positive, default=10)
    parser.add_argument("--batch-size", type=_positive, default=64)
    parser.add_argument(
        "--lr", type=_positive_float, default=0.02, help="the paper's 0.1 diverges for spatial LeNet-5"
    )
    parser.add_argument("--momentum", type=_fraction, default=0.95)
    parser.add_argument(
        "--lr-step", type=_positive, default=50, help="halve the learning rate every N epochs"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-train", type=_positive, help="train on a random subset of N images")
    parser.add_argument("--limit-test", type=_positive, help="test on a random subset of N images")
    parser.add_argument("--device", type=_device, default="cuda" if torch.cuda.is_available() else "cpu")
    _value_dtype_argument(parser)
    _normalize_argument(parser)
    parser.add_argument(
        "--memory-budget",
        type=_positive_float,
        default=8.0,
        help="GiB of activation memory, for the largest batch (CUDA: by search; CPU: from the step's "
        "peak at two batches)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="spectriton", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)

    train = commands.add_parser("train", help="train one model form")
    _training_arguments(train)
    train.add_argument("--spectral", action="store_true", help="the Spec form (default: spatial)")
    group = train.add_mutually_exclusive_group()
    group.add_argument("--beta", type=_single(_betas), help="default 0.7, or 0.3 with --normalize")
    group.add_argument("--density", type=_single(_densities))
    train.add_argument("--out", type=Path, default=Path("runs/train"))

    compare = commands.add_parser(
        "compare", help="spatial original, checkpointed, and Spec at several thresholds"
    )
    _training_arguments(compare)
    compare.add_argument("--betas", type=_betas, default=[0.5, 0.7, 1.0], help="e.g. 0.5,0.7,1.0")
    compare.add_argument("--density", type=_densities, default=[0.1], help="e.g. 0.05,0.1 (budget mode)")
    compare.add_argument("--out", type=Path, default=Path("runs/compare"))
    compare.add_argument(
        "--no-checkpoint",
        action="store_true",
        help="leave out the checkpoint and spec+checkpoint forms (torch.utils.checkpoint per block)",
    )

    memory = commands.add_parser("memory", help="per-layer saved bytes of both forms")
    memory.add_argument(
        "--model",
        type=_choice((*models.MODELS, "all"), "model"),
        default="lenet5",
        help="one model, or 'all' for a one-line summary of each",
    )
    memory.add_argument("--batch", type=_positive, default=64)
    _value_dtype_argument(memory)
    _normalize_argument(memory)
    memory.add_argument("--beta", type=_single(_betas), help="default 0.7, or 0.3 with --normalize")
    memory.add_argument("--density", type=_single(_densities))
    memory.add_argument("--in-channels", type=_positive, default=1)
    memory.add_argument("--seed", type=int, default=0)
    return parser


def _device(text: str) -> str:
    """A device torch knows and this machine has, e.g. cpu, cuda, cuda:1."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a device such as cpu or cuda:0, got {text!r}") from None
    if device.type == "cuda" and (
        not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    ):
        raise argparse.ArgumentTypeError(f"device {text!r}: no such CUDA device on this machine")
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected a cpu or cuda device, got {text!r}")
    return text


def _writable(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".spectriton-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UsageError(
            f"cannot write to --out {folder}: {error.strerror}; choose a writable folder"
        ) from None
    return folder


def _settings(args):
    from spectriton.experiment import Settings

    if args.normalize and args.model in models.CONVERTED:
        raise UsageError(f"--normalize is for the zoo's models ({args.model} is normalised at its BN)")
    return Settings(
        model=args.model,
        dataset=args.dataset,
        data_dir=args.data_dir,
        download=args.download,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        lr_step=args.lr_step,
        seed=args.seed,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        device=args.device,
        value_dtype=args.value_dtype,
        normalize=args.normalize,
        memory_budget_gib=args.memory_budget,
        progress=not args.no_progress,
    )


def _data_errors(call):
    """Run ``call``; missing or malformed data becomes a one-line usage error."""
    try:
        return call()
    except (FileNotFoundError, ImportError, ValueError) as error:
        raise UsageError(str(error)) from None


def _resume_errors(call):
    """Run ``call``; what cannot be resumed becomes a one-line usage error."""
    from spectriton.experiment import ResumeError

    try:
        return call()
    except ResumeError as error:
        raise UsageError(str(error)) from None


def _train(args) -> None:
    from spectriton import experiment

    settings, out = _settings(args), _writable(args.out)
    if args.spectral and args.density is not None:
        form = experiment.Form(True, density=args.density)
    else:
        form = experiment.Form(args.spectral, beta=_beta(args, args.model) if args.spectral else None)
    data = _data_errors(lambda: experiment.load_data(settings))
    checkpoint = out / f"{form.name}.pt"
    if not args.resume:
        checkpoint.unlink(missing_ok=True)
    row = _resume_errors(lambda: experiment.train_run(settings, form, data, checkpoint))
    (out / f"{form.name}.json").write_text(json.dumps(row, indent=2))
    saved = f"{row['saved_bytes']:,.0f} B/sample"
    print(f"{settings.model} {form.name}: accuracy {row['accuracy']:.2f}%, saved {saved}")


def _compare(args) -> None:
    from spectriton import experiment

    settings, out = _settings(args), _writable(args.out)
    if not args.resume:
        for stale in [out / experiment.RESULTS, *(out / "checkpoints").glob("*.pt")]:
            stale.unlink(missing_ok=True)
    data = _data_errors(lambda: experiment.load_data(settings))
    rows = _resume_errors(
        lambda: experiment.compare(
            settings, args.betas, args.density, out, args.resume, data, checkpoint=not args.no_checkpoint
        )
    )
    print(experiment.results_table(rows))
    names = [experiment.RESULTS, "results.csv", "figure3.png", "figure4.png", "tradeoff.png"]
    print("wrote " + ", ".join(str(out / name) for name in names))


def _memory(args) -> None:
    from spectriton.memory import compare_table

    if args.model == "all":
        print(_memory_summary(args))
        return
    reports = {form: report for form, (_, report) in _memory_reports(args.model, args).items()}
    for name, report in reports.items():
        print(report.table(f"{args.model} {name}, batch {args.batch}"))
        print()
    print(compare_table(reports, baseline="spatial"))


def _normalize_argument(parser) -> None:
    parser.add_argument(
        "--normalize",
        action="store_true",
        help="zoo models: Spec layers normalised as BatchNorm does where the spatial form has BN "
        "(then --beta defaults to 0.3, in standard deviations of a channel, for every layer)",
    )


def _beta(args, model: str) -> float:
    """``--beta`` as given, else the default: 0.3 where ``--normalize`` normalises layers of
    ``model``, else 0.7."""
    if args.beta is not None:
        return args.beta
    normalised = args.normalize and model in models.WITH_BATCHNORM
    return float(CONVERT_BETA) if normalised else float(DEFAULT_BETA)


def _value_dtype_argument(parser) -> None:
    parser.add_argument(
        "--value-dtype",
        choices=("bfloat16", "float16", "float8_e4m3fn", "complex64"),
        default="bfloat16",
        help="how Spec forms store kept values (default bfloat16: 4 bytes; float8_e4m3fn: 2; "
        "complex64: 8, full precision)",
    )


def _memory_reports(name: str, args) -> dict:
    """Saved bytes and the training step's peak of one zoo model on a seeded random batch:
    spatial, spatial with each block checkpointed, and Spec."""
    from spectriton.checkpointing import checkpoint_blocks
    from spectriton.memory import peak_step_bytes, saved_bytes

    size = models.input_size(name)
    torch.manual_seed(args.seed)
    x = torch.randn(args.batch, args.in_channels, size, size)
    target = torch.zeros(args.batch, dtype=torch.long)
    beta = DEFAULT_BETA if args.density is not None else _beta(args, name)
    try:
        spec = models.build(
            name, spectral=True, beta=beta, density=args.density, in_channels=args.in_channels,
            value_dtype=getattr(torch, args.value_dtype), normalize=args.normalize,
        )  # fmt: skip
    except ValueError as error:
        raise UsageError(str(error)) from None
    spatial = models.build(name, in_channels=args.in_channels)
    forms = {"spatial": spatial, "checkpoint": checkpoint_blocks(spatial), "spec": spec}
    reports = {}
    for form, model in forms.items():
        report = saved_bytes(model, x)
        report.peak = peak_step_bytes(model, x, target)
        reports[form] = (model, report)
    return reports


def _memory_summary(args) -> str:
    """One row per zoo model: parameters, saved bytes per sample and step peaks of its
    forms; the last column is Spec's saved bytes relative to the spatial form's."""
    header = (
        f"{'model':<9}  {'params spatial':>14}  {'params spec':>11}  {'spatial B/sample':>16}  "
        f"{'spec B/sample':>13}  {'peak MiB spatial':>16}  {'checkpoint':>10}  {'spec':>7}  {'relative':>8}"
    )
    lines = [header, "-" * len(header)]
    for name in models.MODELS:
        (spatial, a), (_, c), (spec, b) = _memory_reports(name, args).values()
        lines.append(
            f"{name:<9}  {_count(spatial):>14,}  {_count(spec):>11,}  {a.per_sample:>16,.0f}  "
            f"{b.per_sample:>13,.0f}  {a.peak / 2**20:>16.2f}  {c.peak / 2**20:>10.2f}  "
            f"{b.peak / 2**20:>7.2f}  {b.total / a.total:>8.3f}"
        )
    return "\n".join(lines)


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0, 2 for usage errors, 130 when interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv) or ["compare"]
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise UsageError("choose a command: train, compare or memory (see 'spectriton --help')")
        {"train": _train, "compare": _compare, "memory": _memory}[args.command](args)
    except UsageError as error:
        print(f"spectriton: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(
            "spectriton: interrupted; run again with --resume to continue from the last checkpoint",
            file=sys.stderr,
        )
        return 130
    return 0
