"""NVTX ranges: named, balanced, and absent when turned off (CUDA faked on CPU)."""

from __future__ import annotations

import pytest
import torch

import spectriton
from spectriton import nvtx


@pytest.fixture
def pushed(monkeypatch):
    names, depth = [], [0]

    def push(name):
        names.append(name)
        depth[0] += 1

    def pop():
        depth[0] -= 1

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda.nvtx, "range_push", push)
    monkeypatch.setattr(torch.cuda.nvtx, "range_pop", pop)
    return names, depth


def _step():
    block = torch.nn.Sequential(
        spectriton.SpectralSequential(spectriton.SpectralConv2d(2, 3, 3, padding=1, activation="split_tanh")),
        spectriton.CompactMaxPool2d(2),
    )
    x = torch.randn(2, 2, 8, 8, requires_grad=True)
    block(x).sum().backward()


def test_ranges_name_each_forward_and_backward(pushed, monkeypatch):
    monkeypatch.delenv("SPECTRITON_NVTX", raising=False)
    names, depth = pushed
    _step()
    assert depth[0] == 0
    assert all(name.startswith("spectriton.") and "/" not in name for name in names)
    kinds = {name.split()[0] for name in names}
    assert {"spectriton.layer.forward", "spectriton.layer.backward"} <= kinds
    assert {"spectriton.pool.forward", "spectriton.pool.backward"} <= kinds


def test_spectriton_nvtx_0_turns_them_off(pushed, monkeypatch):
    monkeypatch.setenv("SPECTRITON_NVTX", "0")
    names, _ = pushed
    _step()
    assert names == []


def test_a_callable_label_is_built_only_when_pushed(pushed, monkeypatch):
    names, _ = pushed
    built = []

    def label():
        built.append(1)
        return "layer.forward 2->3"

    monkeypatch.setenv("SPECTRITON_NVTX", "0")
    with nvtx.annotate(label):
        pass
    assert built == [] and names == []
    monkeypatch.setenv("SPECTRITON_NVTX", "1")
    with nvtx.annotate(label):
        pass
    assert built == [1] and names == ["spectriton.layer.forward 2->3"]
