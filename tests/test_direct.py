"""Small maps' products by direct convolution (spectriton.direct): the same product spectrum
and gradients as the spectral products (``DIRECT_COST = 0``), alone and in every layer mode,
and gradcheck."""

import pytest
import torch
from torch.autograd import gradcheck

import spectriton as st
from spectriton import direct, transforms

D = torch.float64


@pytest.mark.parametrize(
    "size, kernel, grid, shift",
    [
        ((1, 1), (3, 3), (3, 3), (0, 0)),  # a 1 x 1 map: the weight's gradient by a batched GEMM
        ((2, 2), (3, 3), (4, 4), (0, 0)),
        ((2, 3), (3, 2), (5, 4), (1, 0)),  # rectangular, shifted: oneDNN's weight gradient
        ((3, 2), (3, 3), (3, 3), (2, 1)),  # a grid smaller than the full output: it wraps
        ((4, 4), (1, 1), (4, 4), (0, 0)),
        ((2, 2), (3, 3), (7, 6), (1, 2)),
    ],
    ids=str,
)
def test_the_direct_product_and_its_gradients_are_the_spectral_ones(size, kernel, grid, shift):
    x = torch.randn(2, 3, *size, dtype=D, requires_grad=True)
    weight = torch.randn(4, 3, *kernel, dtype=D, requires_grad=True)
    spectral = torch.matmul(transforms.map_spectrum(x, grid), transforms.kernel_spectrum(weight, grid, shift))
    grad = torch.randn_like(spectral)
    expected = torch.autograd.grad(spectral, (x, weight), grad, retain_graph=True)
    torch.testing.assert_close(direct.product(x.detach(), weight.detach(), grid, shift), spectral.detach())
    scale = torch.rand(4, dtype=D)
    grad_x, grad_w = direct.gradients(x.detach(), weight.detach(), grad, grid, shift, True, True, scale)
    torch.testing.assert_close(grad_w, expected[1])
    scaled = torch.autograd.grad(spectral, x, grad * scale)[0]  # the scale reaches the source's only
    torch.testing.assert_close(grad_x, scaled)


def test_small_maps_run_direct_and_large_ones_spectral_in_every_batch():
    kernel = (3, 3)
    for batch in (1, 8, 256):  # a sample takes the same path in every batch
        assert direct.applies(torch.empty(batch, 512, 4, 4), kernel, (6, 6), 1)
        assert not direct.applies(torch.empty(batch, 512, 8, 8), kernel, (10, 10), 1)
    assert direct.applies(torch.empty(32, 512, 1, 1), kernel, (3, 3), 1)
    assert direct.applies(torch.empty(32, 512, 2, 2), kernel, (4, 4), 1)
    assert not direct.applies(torch.empty(32, 512, 16, 16), kernel, (18, 18), 1)
    assert not direct.applies(torch.empty(32, 512, 1, 1), kernel, (3, 3), 2)  # groups: spectral
    assert not direct.applies(torch.empty(32, 512, 1, 1), kernel, (48, 48), 1)  # FFT-sized grid
    pointwise = (1, 1)  # its spectral products are single GEMMs
    assert not direct.applies(torch.empty(32, 512, 1, 1), pointwise, (1, 1), 1)
    assert direct.applies(torch.empty(32, 512, 1, 1), pointwise, (3, 3), 1, shift=(1, 1))


def _count_calls(monkeypatch) -> list:
    """A list that ``direct.product`` appends to on each call."""
    calls, product = [], direct.product
    monkeypatch.setattr(direct, "product", lambda *a: calls.append(1) or product(*a))
    return calls


def _layer(**options):
    return st.SpectralConv2d(4, 6, 3, padding=1, dtype=D, **options)


CASES = {
    "plain": (lambda: _layer(beta=0.5, activation="split_tanh"), (2, 2)),
    "linear": (lambda: _layer(), (1, 1)),
    "normalised": (lambda: _layer(beta=0.3, activation="split_tanh", normalize=True, affine=True), (2, 2)),
    "strided": (lambda: st.SpectralConv2d(4, 6, 3, padding=1, stride=2, beta=0.4, dtype=D), (3, 3)),
    "density": (lambda: _layer(density=0.5, activation="split_tanh"), (2, 1)),
    "dilated": (lambda: st.SpectralConv2d(4, 6, 3, padding=2, dilation=2, beta=0.3, dtype=D), (2, 2)),
    "chain": (
        lambda: st.SpectralSequential(
            _layer(beta=0.3, activation="split_tanh"),
            st.SpectralConv2d(6, 5, 3, padding=1, beta=0.3, dtype=D),
        ),
        (2, 2),
    ),
    "dense block": (lambda: st.SpectralDenseBlock(4, 3, 2, beta=0.3).double(), (2, 2)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_layer_on_a_small_map_has_the_spectral_outputs_and_gradients(case, monkeypatch):
    """Each layer mode on a map of a few pixels: direct by default, spectral with
    ``DIRECT_COST = 0``; outputs and every gradient agree to float64 round-off."""
    build, size = CASES[case]
    torch.manual_seed(0)
    model = build()
    x = torch.randn(3, 4, *size, dtype=D, requires_grad=True)
    residual = case == "plain"  # a residual added before the threshold, on the plain layer
    r = torch.randn_like(model(x)) if residual else None

    def step():
        y = model(x, r) if residual else model(x)
        params = [x, *model.parameters()]
        return [y.detach(), *torch.autograd.grad(y.square().sum(), params)]

    calls = _count_calls(monkeypatch)
    by_direct = step()
    assert calls, "the direct products did not run"
    monkeypatch.setattr(direct, "DIRECT_COST", 0)
    calls.clear()
    by_spectra = step()
    assert not calls
    for a, b in zip(by_direct, by_spectra, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_the_triton_backend_runs_small_maps_direct_too(backend, monkeypatch):
    torch.manual_seed(0)
    layer = _layer(beta=0.5, activation="split_tanh")
    x = torch.randn(2, 4, 2, 2, dtype=D, requires_grad=True)

    def step():
        y = layer(x)
        return [y.detach(), *torch.autograd.grad(y.square().sum(), [x, layer.weight, layer.bias])]

    calls = _count_calls(monkeypatch)
    by_direct = step()
    assert calls, "the direct products did not run"
    monkeypatch.setattr(direct, "DIRECT_COST", 0)
    for a, b in zip(by_direct, step(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_a_converted_resnet_on_small_maps_steps_as_with_spectral_products(monkeypatch):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = st.convert(torchvision.models.resnet18(num_classes=4)).double()
    x = torch.randn(2, 3, 32, 32, dtype=D)

    def step():
        torch.manual_seed(0)
        y = model(x)
        return [y.detach(), *torch.autograd.grad(y.square().sum(), list(model.parameters()))]

    step()  # the running moments and kept densities move once, the same for both below
    state = {k: v.clone() for k, v in model.state_dict().items()}
    calls = _count_calls(monkeypatch)
    by_direct = step()
    assert calls, "the direct products did not run"
    model.load_state_dict(state)
    monkeypatch.setattr(direct, "DIRECT_COST", 0)
    for a, b in zip(by_direct, step(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-8)


def test_gradcheck_of_a_layer_on_a_small_map():
    torch.manual_seed(0)
    layer = st.SpectralConv2d(2, 3, 3, padding=1, beta=0.0, activation="split_tanh", dtype=D)
    x = torch.randn(2, 2, 2, 2, dtype=D, requires_grad=True)
    assert direct.applies(x, layer.kernel_size, (4, 4), 1)

    def f(x, weight, bias):
        return torch.func.functional_call(layer, {"weight": weight, "bias": bias}, (x,))

    assert gradcheck(f, (x, layer.weight, layer.bias))
