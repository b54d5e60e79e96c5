"""``bench/launches.py`` counts what a step issues on the CUDA path: aten launches, Triton
launches and host synchronisations, each given to the spectral op it runs in."""

import sys
from pathlib import Path

import torch
from torch import nn

import spectriton as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import launches  # noqa: E402


def test_syncs_and_launches_are_counted_once_and_views_not_at_all():
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        x = torch.tensor([1.0, 0.0, 2.0])
        x.nonzero()
        x.sum().item()
        (x * 2).view(3, 1).t()
        x[x > 0]  # a boolean index: nonzero inside
    table = launches.tally(prof.events())
    glue = table["glue"]
    assert glue["syncs"] == 3 and glue["aten::nonzero"] == 2 and glue["aten::_local_scalar_dense"] == 1
    assert glue["aten"] == 5  # nonzero, sum, mul (not its scalar), gt, index; no view, transpose or item


def test_a_spectral_layer_step_on_the_cuda_path_is_given_to_its_ops(monkeypatch):
    monkeypatch.setenv("SPECTRITON_BACKEND", "triton")
    monkeypatch.setenv("SPECTRITON_CPU_FORMS", "0")
    torch.manual_seed(0)
    layer = st.SpectralConv2d(1, 2, 3, padding=1, beta=0.1, activation="split_tanh", keep="spectra")
    model = nn.Sequential(layer, nn.Flatten(), nn.Linear(2 * 6 * 6, 10))
    table = launches.trace_step(model, torch.randn(2, 1, 6, 6))
    assert table["spectriton::layer"]["calls"] == 1 and table["spectriton::layer"]["triton"] >= 1
    assert table["spectriton::layer_backward"]["triton"] >= 1
    assert table["glue"]["triton"] == 0  # every Triton launch runs inside a spectral op
    assert "launches" in launches.report(table, layers=1)
