"""The comparison's figures: the paper's Figure 3 (memory and accuracy against beta),
Figure 4 (memory over the epochs of training), and the plane users choose in: memory
against step time for every form, checkpointing included."""

from __future__ import annotations

from pathlib import Path


def plot_comparison(rows: list[dict], out: Path) -> list[Path]:
    """Write ``figure3.png``, ``figure4.png`` and ``tradeoff.png`` under ``out``; returns
    their paths."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    spatial = next(r for r in rows if not r["spectral"] and not r.get("checkpoint"))
    spec = [r for r in rows if r["spectral"] and not r.get("checkpoint")]
    by_beta = sorted((r for r in spec if r["density"] is None), key=lambda r: r["beta"])
    by_density = [r for r in spec if r["density"] is not None]
    title = f"{spatial['model']} on {spatial['dataset']}, {spatial['epochs']} epochs"

    fig, (mem, acc) = plt.subplots(1, 2, figsize=(9, 3.6))
    betas = [r["beta"] for r in by_beta]
    mem.plot(betas, [r["relative_memory"] for r in by_beta], "o-", label="Spec, fixed beta")
    acc.plot(betas, [r["accuracy"] for r in by_beta], "o-", label="Spec, fixed beta")
    acc.axhline(spatial["accuracy"], color="k", ls="--", label="spatial")
    for r, style in zip(by_density, [":", "-.", (0, (1, 3))] * 4):
        mem.axhline(r["relative_memory"], color="C2", ls=style, label=f"Spec, density {r['density']}")
        acc.axhline(r["accuracy"], color="C2", ls=style, label=f"Spec, density {r['density']}")
    mem.set(xlabel="beta", ylabel="saved bytes / spatial", title="relative memory")
    acc.set(xlabel="beta", ylabel="test accuracy (%)", title="accuracy")
    for ax in (mem, acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    figure3 = out / "figure3.png"
    fig.savefig(figure3, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.6))
    base = [h["saved_bytes"] for h in spatial["history"]]
    for r in rows:
        if r["spectral"]:
            epochs = [h["epoch"] for h in r["history"]]
            ax.plot(epochs, [h["saved_bytes"] / b for h, b in zip(r["history"], base)], "o-", label=r["form"])
    ax.set(xlabel="epoch", ylabel="saved bytes / spatial")
    figure4 = _save(fig, ax, f"memory during training ({title})", out / "figure4.png", legend=7)

    fig, ax = plt.subplots(figsize=(5, 3.8))
    for r in rows:
        time, memory = r.get("relative_time"), r["relative_memory"]
        if time is None:
            continue
        marker = "s" if r.get("checkpoint") else ("o" if r["spectral"] else "D")
        ax.plot(time, memory, marker, ms=7, label=f"{r['form']} ({r['accuracy']:.1f} %)")
    ax.set(xlabel="step time / spatial", ylabel="saved bytes / spatial")
    ax.set_ylim(bottom=0)
    tradeoff = _save(fig, ax, f"memory against time ({title})", out / "tradeoff.png", legend=6)
    return [figure3, figure4, tradeoff]


def _save(fig, ax, title: str, path: Path, legend: int) -> Path:
    """A one-plot figure's title, grid and legend, written to ``path``."""
    from matplotlib import pyplot as plt

    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
