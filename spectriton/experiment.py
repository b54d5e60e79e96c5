"""Training runs and the spatial-vs-Spec comparison behind ``spectriton train`` / ``compare``.

The paper's protocol by default (SGD with momentum 0.95, batch 64, learning rate halved
every 50 epochs) except the learning rate: 0.02 instead of the paper's 0.1, at which the
spatial LeNet-5 diverged in our runs (30.0% against 79.4% test accuracy after 8 epochs on
the embedded sample), which would flatter the Spec forms. Each run checkpoints after every
epoch and resumes from its checkpoint; ``compare`` writes its rows as each run finishes, so an interrupted
comparison loses at most the epoch in progress.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from spectriton import datasets, models
from spectriton.checkpointing import checkpoint_blocks, checkpoint_stages
from spectriton.conv import SpectralConv2d
from spectriton.memory import largest_batch, peak_step_bytes, saved_bytes

RESULTS = "results.json"
CSV_COLUMNS = [
    "model", "spectral", "checkpoint", "beta", "density", "accuracy", "saved_bytes", "relative_memory",
    "epoch_time", "relative_time", "epochs", "min_layer_density", "peak_bytes", "largest_batch", "dataset",
    "train_size", "test_size", "device",
]  # fmt: skip


@dataclass(frozen=True)
class Settings:
    """Everything a run depends on besides its model form."""

    model: str = "lenet5"
    dataset: str = "sample"
    data_dir: str | None = None
    download: bool = False
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.02
    momentum: float = 0.95
    lr_step: int = 50
    seed: int = 0
    limit_train: int | None = None
    limit_test: int | None = None
    device: str = "cpu"
    value_dtype: str | None = "bfloat16"
    normalize: bool = models.NORMALIZE  # the zoo's Spec layers normalised where the spatial ones have BN
    memory_batch: int = 64
    memory_budget_gib: float = 8.0
    progress: bool = True


class ResumeError(ValueError):
    """A run that ``--resume`` cannot continue: unreadable files, or other settings."""


# Settings that do not change what a run computes, so a resume may change them.
_FREE_SETTINGS = ("device", "progress", "data_dir", "download", "memory_budget_gib")
# Settings added since runs were first saved, with the value those runs had.
_ADDED_SETTINGS = {"normalize": False}


def _check_same_settings(saved: dict, settings: Settings, where: Path, free: tuple[str, ...] = ()) -> None:
    """Refuse to resume ``where`` under settings that change what it computed (``free`` ones
    may change too)."""
    current, saved = asdict(settings), {**_ADDED_SETTINGS, **saved}
    differ = [
        f"{k} {saved.get(k)!r} -> {current[k]!r}"
        for k in current
        if k not in _FREE_SETTINGS + free and saved.get(k) != current[k]
    ]
    if differ:
        raise ResumeError(
            f"cannot resume {where}: it was made with other settings ({', '.join(differ)}); "
            f"run with the same settings, or without --resume to start over"
        )


@dataclass(frozen=True)
class Form:
    """One model form of a comparison: spatial, or Spec at a beta or a density; either with
    ``torch.utils.checkpoint`` around each block when ``checkpoint`` is set."""

    spectral: bool
    beta: float | None = None
    density: float | None = None
    checkpoint: bool = False

    @property
    def name(self) -> str:
        if not self.spectral:
            return "checkpoint" if self.checkpoint else "spatial"
        budget = f"beta{self.beta}" if self.density is None else f"density{self.density}"
        return f"spec+checkpoint-{budget}" if self.checkpoint else f"spec-{budget}"


@dataclass
class Data:
    train: torch.utils.data.Dataset
    test: torch.utils.data.Dataset
    channels: int
    memory_batch: torch.Tensor = field(repr=False)


def load_data(settings: Settings) -> Data:
    """Train and test sets at the model's input size, limited as asked."""
    size = models.input_size(settings.model)
    kwargs = dict(data_dir=settings.data_dir, download=settings.download, image_size=size)
    train = datasets.load_dataset(settings.dataset, train=True, **kwargs)
    test = datasets.load_dataset(settings.dataset, train=False, augment=False, **kwargs)
    train, test = (
        _limit(train, settings.limit_train, settings.seed),
        _limit(test, settings.limit_test, settings.seed),
    )
    first = torch.stack([train[i][0] for i in range(min(settings.memory_batch, len(train)))])
    return Data(train, test, first.shape[1], first)


def _limit(dataset, limit: int | None, seed: int):
    if limit is None or limit >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return torch.utils.data.Subset(dataset, order[:limit].tolist())


def build_model(settings: Settings, form: Form, channels: int) -> nn.Module:
    options = dict(spectral=form.spectral, in_channels=channels, num_classes=10)
    if form.spectral:
        options["value_dtype"] = getattr(torch, settings.value_dtype or "complex64")
        options.update(density=form.density) if form.density is not None else options.update(beta=form.beta)
        if settings.model in models.MODELS:  # a converted model is normalised where it has BN
            options["normalize"] = settings.normalize
    model = models.build(settings.model, **options)
    if not form.checkpoint:
        return model
    return checkpoint_stages(model) if settings.model in models.CONVERTED else checkpoint_blocks(model)


def evaluate(model: nn.Module, dataset, settings: Settings) -> float:
    """Top-1 accuracy on ``dataset``, in percent."""
    model.eval()
    correct = 0
    loader = torch.utils.data.DataLoader(dataset, batch_size=256)
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x.to(settings.device)).argmax(1).cpu() == y).sum().item()
    return 100.0 * correct / max(len(dataset), 1)


def _layer_densities(model: nn.Module) -> dict[str, float]:
    return {
        name: m.last_density
        for name, m in model.named_modules()
        if isinstance(m, SpectralConv2d) and m.last_density is not None
    }


def _step_memory(model: nn.Module, data: Data, settings: Settings) -> tuple[int, int | None]:
    """Peak bytes of a training step at the run's batch size (:func:`peak_step_bytes`), and
    the largest batch whose step fits ``memory_budget_gib``: on CUDA by search (doubling,
    then bisection), on CPU from the peaks at the run's batch and at twice it (a step's peak
    grows linearly with the batch: activations, gradients and transients all scale with it)."""
    x = data.memory_batch[:1].to(settings.device)

    def step_bytes(batch: int) -> int:
        xs = x.expand(batch, *x.shape[1:]).contiguous()
        target = torch.zeros(batch, dtype=torch.long, device=settings.device)
        return peak_step_bytes(model, xs, target)

    batch, budget = settings.batch_size, settings.memory_budget_gib * 2**30
    peak = step_bytes(batch)
    if settings.device.startswith("cuda"):
        return peak, largest_batch(lambda b: step_bytes(b) <= budget, start=16)
    per_sample = (step_bytes(2 * batch) - peak) / batch
    return peak, int(batch + (budget - peak) // per_sample) if per_sample > 0 else None


def train_run(settings: Settings, form: Form, data: Data, checkpoint: Path | None = None) -> dict:
    """Train one model form; returns its result row (``relative_memory`` left to compare).

    With ``checkpoint`` given, the run is saved there after every epoch and resumed from
    there if the file exists.
    """
    torch.manual_seed(settings.seed)
    model = build_model(settings, form, data.channels).to(settings.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings.lr_step, gamma=0.5)
    history: list[dict] = []
    if checkpoint is not None and checkpoint.exists():
        try:
            state = torch.load(checkpoint, map_location=settings.device, weights_only=False)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            history = state["history"]
        except Exception as error:  # a damaged file or another model's: say which, and what to do
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ResumeError(
                f"cannot resume from {checkpoint}: {first}; delete it or run without --resume"
            ) from None
        if "settings" in state:  # older checkpoints do not record them
            # more (or fewer) epochs continue the same run; anything else would mix two runs
            _check_same_settings(state["settings"], settings, checkpoint, free=("epochs",))
    memory_x = data.memory_batch.to(settings.device)
    label = f"{settings.model} {form.name}"
    for epoch in range(len(history), settings.epochs):
        start = time.perf_counter()
        loss, train_acc = _train_epoch(model, optimizer, data, settings, epoch, label, history)
        scheduler.step()
        epoch_time = time.perf_counter() - start
        report = saved_bytes(model, memory_x)
        history.append(
            {
                "epoch": epoch + 1,
                "loss": loss,
                "train_accuracy": train_acc,
                "test_accuracy": evaluate(model, data.test, settings),
                "saved_bytes": report.per_sample,
                "epoch_time": epoch_time,
                "layer_density": _layer_densities(model),
            }
        )
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            state = dict(model=model.state_dict(), optimizer=optimizer.state_dict(), history=history)
            state.update(scheduler=scheduler.state_dict(), settings=asdict(settings))
            torch.save(state, checkpoint)
    last = history[-1]
    peak, biggest = _step_memory(model, data, settings)
    densities = last["layer_density"].values()
    return {
        "model": settings.model,
        "spectral": form.spectral,
        "checkpoint": form.checkpoint,
        "beta": form.beta,
        "density": form.density,
        "normalize": form.spectral and settings.normalize and settings.model in models.MODELS,
        "accuracy": last["test_accuracy"],
        "saved_bytes": last["saved_bytes"],
        "relative_memory": None,
        "epoch_time": sum(h["epoch_time"] for h in history) / len(history),
        "relative_time": None,
        "epochs": len(history),
        "min_layer_density": min(densities) if densities else None,
        "peak_bytes": peak,
        "largest_batch": biggest,
        "dataset": settings.dataset,
        "train_size": len(data.train),
        "test_size": len(data.test),
        "device": settings.device,
        "history": history,
    }


def _train_epoch(model, optimizer, data: Data, settings: Settings, epoch: int, label: str, history) -> tuple:
    model.train()
    generator = torch.Generator().manual_seed(settings.seed * 100_003 + epoch)
    loader = torch.utils.data.DataLoader(data.train, settings.batch_size, shuffle=True, generator=generator)
    memory = f"{history[-1]['saved_bytes'] / 1e3:.1f}kB" if history else "?"
    bar = tqdm(
        loader, desc=f"{label} {epoch + 1}/{settings.epochs}", disable=not settings.progress, leave=False
    )
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in bar:
        x, y = x.to(settings.device), y.to(settings.device)
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{100 * correct / seen:.1f}", saved=memory)
    return total_loss / max(seen, 1), 100.0 * correct / max(seen, 1)


def forms(betas: list[float], densities: list[float], checkpoint: bool = True) -> list[Form]:
    """The spatial original, then Spec at each beta and each density. With ``checkpoint``,
    also the original with each block checkpointed (right after it), and Spec under the
    same checkpointing at the last budget (density if any, else beta) last."""
    spec = [Form(True, beta=b) for b in betas] + [Form(True, density=d) for d in densities]
    if not checkpoint:
        return [Form(False), *spec]
    last = [replace(spec[-1], checkpoint=True)] if spec else []
    return [Form(False), Form(False, checkpoint=True), *spec, *last]


def compare(
    settings: Settings,
    betas: list[float],
    densities: list[float],
    out: Path,
    resume: bool = False,
    data: Data | None = None,
    checkpoint: bool = True,
) -> list[dict]:
    """Train every form (:func:`forms`) on the same data and budget; write results.json,
    results.csv and the three figures under ``out``; return the rows. ``data`` defaults to
    ``load_data(settings)``; with ``resume``, rows already in ``out/results.json`` are kept
    and not trained again."""
    out.mkdir(parents=True, exist_ok=True)
    results = out / RESULTS
    done = {}
    if resume and results.exists():
        try:
            saved = json.loads(results.read_text())
            done = {row["form"]: row for row in saved["rows"]}
        except (ValueError, KeyError, TypeError) as error:
            raise ResumeError(
                f"cannot resume from {results}: not a results file ({error}); delete it or run "
                f"without --resume"
            ) from None
        _check_same_settings(saved.get("settings", {}), settings, results)
    data = data or load_data(settings)
    rows = []
    for form in forms(betas, densities, checkpoint):
        if form.name in done:
            rows.append(done[form.name])
            continue
        row = train_run(settings, form, data, out / "checkpoints" / f"{form.name}.pt")
        rows.append({"form": form.name, **row})
        _write(out, settings, _relative(rows))
    rows = _relative(rows)
    _write(out, settings, rows)
    from spectriton.plots import plot_comparison

    plot_comparison(rows, out)
    return rows


def _relative(rows: list[dict]) -> list[dict]:
    """Memory and step time relative to the spatial original's."""
    spatial = next((r for r in rows if not r["spectral"] and not r.get("checkpoint")), None)
    memory, time = (spatial["saved_bytes"], spatial["epoch_time"]) if spatial else (math.nan, math.nan)
    return [
        {
            **r,
            "relative_memory": r["saved_bytes"] / memory if memory else None,
            "relative_time": r["epoch_time"] / time if time else None,
        }
        for r in rows
    ]


def _write(out: Path, settings: Settings, rows: list[dict]) -> None:
    (out / RESULTS).write_text(json.dumps({"settings": asdict(settings), "rows": rows}, indent=2))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["form", *CSV_COLUMNS], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def results_table(rows: list[dict]) -> str:
    """The comparison as a plain-text table."""
    header = (
        f"{'form':<28} {'accuracy %':>10} {'saved B/sample':>15} {'relative':>8} {'peak MiB':>9} "
        f"{'largest batch':>13} {'min layer kept':>14} {'s/epoch':>8} {'time x':>6}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        kept = "" if r["min_layer_density"] is None else f"{r['min_layer_density']:.3f}"
        peak = "" if r.get("peak_bytes") is None else f"{r['peak_bytes'] / 2**20:.1f}"
        largest = "" if r.get("largest_batch") is None else f"{r['largest_batch']:,}"
        lines.append(
            f"{r['form']:<28} {r['accuracy']:>10.2f} {r['saved_bytes']:>15,.0f} {r['relative_memory']:>8.3f} "
            f"{peak:>9} {largest:>13} {kept:>14} {r['epoch_time']:>8.1f} {r['relative_time']:>6.2f}"
        )
    return "\n".join(lines)
