"""Activation checkpointing the usual way, as the baseline Spec is measured against.

:func:`checkpoint_blocks` wraps each block of a zoo network (a stage up to its pool, or a
dense layer) in ``torch.utils.checkpoint`` (non-reentrant): backward recomputes the block
from its input, which is all the block keeps. :func:`checkpoint_stages` does a ResNet's
stem and stages.

The checkpoint's input is handed to autograd too (:func:`spectriton.recompute.recomputed`),
so that :func:`spectriton.memory.saved_bytes` counts what checkpointing really keeps.
"""

from __future__ import annotations

import torch
from torch import nn

from spectriton.conv import SpectralConv2d
from spectriton.models import DenseLayer
from spectriton.pooling import CompactMaxPool2d
from spectriton.recompute import recomputed

_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, CompactMaxPool2d)


class Checkpointed(nn.Module):
    """``body`` under ``torch.utils.checkpoint``: keeps its input, recomputes the rest."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self.body(x)
        return recomputed(self.body, x)


def checkpoint_children(model: nn.Module, names: list[str]) -> nn.Module:
    """``model`` with each named submodule (a dotted path, e.g. ``layer1``) replaced by
    itself under ``torch.utils.checkpoint`` (:class:`Checkpointed`), in place: a stage of
    any network checkpointed the way :func:`checkpoint_blocks` does the zoo's."""
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, Checkpointed(getattr(owner, child)))
    return model


STAGES = ("layer1", "layer2", "layer3", "layer4")  # a ResNet's, as torchvision names them


def checkpoint_stages(model: nn.Module) -> nn.Module:
    """A ResNet as torchvision lays it out with its stem (``conv1``, ``bn1``, ``relu`` and
    ``maxpool``, made one module in ``conv1``'s place) and each of its stages checkpointed,
    in place: the usual baseline. A converted ResNet's stages only: its stem is one
    spectral block already, in a rewritten forward."""
    if any(isinstance(m, SpectralConv2d) for m in model.modules()):
        return checkpoint_children(model, list(STAGES))
    model.conv1 = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    model.bn1, model.relu, model.maxpool = nn.Identity(), nn.Identity(), nn.Identity()
    return checkpoint_children(model, ["conv1", *STAGES])


def checkpoint_blocks(model: nn.Sequential) -> nn.Sequential:
    """A zoo network (``features`` then ``classifier``) with each block of its features
    checkpointed: the modules up to and including each pool, and each spatial dense layer
    (with the pool that follows the last one). The parameters are shared, not copied."""
    blocks, current = [], []
    features = list(model.features)
    for module, after in zip(features, [*features[1:], None]):
        current.append(module)
        if isinstance(module, _POOLS) or (isinstance(module, DenseLayer) and not isinstance(after, _POOLS)):
            blocks.append(Checkpointed(nn.Sequential(*current)))
            current = []
    if current:
        blocks.append(Checkpointed(nn.Sequential(*current)))
    return nn.Sequential(nn.Sequential(*blocks), model.classifier)
