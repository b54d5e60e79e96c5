"""The same SpecNet layers give the same outputs, gradients and saved bytes on both backends."""

import pytest
import torch
from conftest import keep, two_block_specnet

import spectriton as st
from spectriton.memory import saved_bytes

pytest.importorskip("spectriton.kernels")


def _run(model, x, backend, monkeypatch):
    monkeypatch.setenv("SPECTRITON_BACKEND", backend)
    keep(model, "spectra")  # both runs keep spectra
    report = saved_bytes(model, x)
    y = model(x)
    grads = torch.autograd.grad(y.square().sum(), [x, *model.parameters()])
    return y, grads, report


def test_specnet_block_matches_across_backends(monkeypatch):
    model = two_block_specnet(None)
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    model(x)  # a first step: what each layer keeps, which decides what a block keeps, is known
    y_t, g_t, r_t = _run(model, x, "torch", monkeypatch)
    y_k, g_k, r_k = _run(model, x, "triton", monkeypatch)
    torch.testing.assert_close(y_k, y_t, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_t, g_k):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    assert r_k.per_module == r_t.per_module


def test_normalised_layers_with_their_affine_match_across_backends(monkeypatch):
    model = two_block_specnet(None, normalize=True)
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    with torch.no_grad():
        model(x)  # calibrates the running moments; eval mode then uses them as they are
        for layer in model.modules():
            if isinstance(layer, st.SpectralConv2d):
                layer.norm_weight.uniform_(0.5, 1.5)
                layer.norm_bias.uniform_(-0.3, 0.3)
    model.eval()
    y_t, g_t, _ = _run(model, x, "torch", monkeypatch)
    y_k, g_k, _ = _run(model, x, "triton", monkeypatch)
    torch.testing.assert_close(y_k, y_t, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_t, g_k):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "value_dtype,step", [(torch.bfloat16, 2**-7), (torch.float8_e4m3fn, 2**-3)], ids=["bfloat16", "e4m3"]
)
def test_low_precision_values_match_layer_by_layer(value_dtype, step, monkeypatch):
    """Both backends round to bfloat16 (then to e4m3); a value one rounding step apart may
    flip a keep decision downstream, so compare each layer's compressed output, not the
    block's end. 8-bit values are carried as bfloat16 and kept as e4m3 on both."""
    from spectriton.functional import SpectralFlow

    block = two_block_specnet(value_dtype)[0]
    flow = SpectralFlow.start(torch.randn(2, 3, 9, 9), [layer.shape for layer in block])
    for layer in block:  # each layer gets the same (reference) input on both backends
        monkeypatch.setenv("SPECTRITON_BACKEND", "triton")
        b = layer(flow)
        monkeypatch.setenv("SPECTRITON_BACKEND", "torch")
        a = flow = layer(flow)
        assert b.values.dtype == torch.bfloat16 and torch.equal(a.mask, b.mask)
        assert (b.stored is None) == (value_dtype == torch.bfloat16)
        torch.testing.assert_close(b.values.float(), a.values.float(), atol=0, rtol=step)


def test_lenet_sized_layer_matches_across_backends(monkeypatch):
    layer = st.SpectralConv2d(1, 6, 5, beta=0.7, activation="split_tanh")
    x = torch.randn(2, 1, 28, 28, requires_grad=True)
    y_t, g_t, r_t = _run(layer, x, "torch", monkeypatch)
    y_k, g_k, r_k = _run(layer, x, "triton", monkeypatch)
    torch.testing.assert_close(y_k, y_t, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_t, g_k):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    assert r_k.total == r_t.total


def test_backend_default_follows_the_device(monkeypatch):
    from spectriton.backend import backend_name

    monkeypatch.delenv("SPECTRITON_BACKEND", raising=False)
    assert backend_name(torch.device("cpu")) == "torch"
    assert backend_name(torch.device("cuda")) == "triton"
