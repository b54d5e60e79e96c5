"""What :func:`spectriton.plan` and :func:`spectriton.convert` say about each module: the
:class:`Plan` table and its :class:`PlanRow` rows, the reason a converted layer's row gives,
the note on the hooks a conversion changes, and the warning ``convert`` gives about them."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from spectriton.analysis import Options
    from spectriton.conv import SpectralConv2d


@dataclass
class PlanRow:
    """What :func:`convert` does to one module."""

    name: str
    kind: str
    action: str
    reason: str = ""


class Plan(list):
    """Rows of :class:`PlanRow`, printable as a table."""

    def table(self) -> str:
        widths = [max([len(h)] + [len(getattr(r, f)) for r in self]) for h, f in _COLUMNS]
        lines = ["  ".join(h.ljust(w) for (h, _), w in zip(_COLUMNS, widths)).rstrip()]
        lines.append("-" * len(lines[0]))
        for row in self:
            lines.append("  ".join(getattr(row, f).ljust(w) for (_, f), w in zip(_COLUMNS, widths)).rstrip())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


_COLUMNS = [("module", "name"), ("type", "kind"), ("action", "action"), ("reason", "reason")]


def ordered(rows: Plan, model: nn.Module) -> Plan:
    """``rows`` in the order of ``model.named_modules()``."""
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return Plan(sorted(rows, key=lambda row: order.get(row.name, len(order))))


EXACT = (
    "exact (no threshold, no activation): no BatchNorm folded, whose standard deviations the "
    "default beta counts; density= or beta= thresholds it"
)


def layer_reason(layer: SpectralConv2d, opts: Options, context: str | None = None) -> str:
    """How ``layer`` thresholds; ``context`` says why it was swapped alone, if it was."""
    if not layer.normalize and opts.exact_unnormalised:
        return EXACT if context is None else f"{EXACT}; {context}"
    scale = " (density budget)" if layer.density is not None else " at an absolute beta (no BatchNorm folded)"
    if layer.activation is None:
        return f"{context or 'no BN/ReLU after it'}: threshold only{scale}"
    if not layer.normalize:
        return "split tanh" + scale
    return "split tanh, normalised for its BN" + (" (with its weight and bias)" if layer.affine else "")


HOOKS = "; module hooks: "


def hooks_note(module: nn.Module, bypassed: bool = False) -> str:
    """A plan note for ``module``'s hooks, if it has any: run inside a spectral block, its
    forward hooks see ``SpectralFlow`` objects and its backward hooks do not run (no tensor
    goes in or out); bypassed, none runs."""
    forward = module._forward_hooks or module._forward_pre_hooks
    backward = module._backward_hooks or module._backward_pre_hooks
    if not (forward or backward):
        return ""
    if bypassed:
        return HOOKS + "none runs (bypassed)"
    notes = (
        ["forward hooks see SpectralFlow objects (a block's spectral state), not tensors"] if forward else []
    )
    return HOOKS + ", ".join(notes + (["backward hooks do not run"] if backward else []))


def warn_about_hooks(rows: Plan) -> None:
    """Warn (at the caller of ``convert``) about the modules whose hooks the plan notes."""
    changed = [f"{r.name}: {r.reason.rpartition(HOOKS)[2]}" for r in rows if HOOKS in r.reason]
    if changed:
        warnings.warn(
            "convert changes what these modules' hooks see: " + "; ".join(changed) + " (spectriton.plan)",
            stacklevel=3,
        )
