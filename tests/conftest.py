"""Shared fixtures. Without CUDA, Triton kernels run under the interpreter."""

import os

import torch

if not torch.cuda.is_available():
    # Must be set before spectriton.kernels is imported: triton.jit reads it at decoration.
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Equality with the torch twin is tested on exact float32 tensor-core inputs; the TF32 and
# bf16 paths have their own tests, with the tolerance plain torch shows at that precision.
os.environ.setdefault("SPECTRITON_PRECISION", "ieee")

import contextlib  # noqa: E402

import pytest  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=["torch", "triton"])
def backend(request, monkeypatch):
    """Run the test once per backend (SPECTRITON_BACKEND)."""
    monkeypatch.setenv("SPECTRITON_BACKEND", request.param)
    return request.param


@contextlib.contextmanager
def poisoned_empty():
    """``torch.empty`` returns NaN-filled float and -1-filled integer tensors, so that an
    output element a kernel forgets to store shows up in the comparison."""
    empty = torch.empty

    def poisoned(*args, **kwargs):
        t = empty(*args, **kwargs)
        if t.is_floating_point() or t.is_complex():
            return t.fill_(float("nan"))
        return t.fill_(-1) if t.dtype != torch.bool else t

    torch.empty = poisoned
    try:
        yield
    finally:
        torch.empty = empty


def safe_beta(magnitudes: torch.Tensor, quantile: float, margin: float = 1e-3) -> float:
    """A threshold near ``quantile`` of ``magnitudes`` with no magnitude within ``margin``
    of it, so that finite differences never flip a keep decision."""
    m = magnitudes.flatten().double().sort().values
    target = int(quantile * (m.numel() - 1))
    gaps = m[1:] - m[:-1]
    order = sorted(range(gaps.numel()), key=lambda i: (gaps[i] < 2 * margin, abs(i - target)))
    i = order[0]
    if gaps[i] < 2 * margin:
        raise ValueError("no gap wide enough for a safe threshold")
    return float((m[i] + m[i + 1]) / 2)
