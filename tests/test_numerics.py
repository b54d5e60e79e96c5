"""Numerics: NaN and Inf are never hidden, half precisions compute in float32, huge values
neither overflow nor poison the threshold, and the torch path is deterministic."""

import math

import pytest
import torch
from torch import nn

import spectriton as st
from spectriton import reference
from spectriton.functional import SpectralFlow, spectral_conv2d

pytest.importorskip("spectriton.kernels")
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # NaN on purpose


def _layer(**options):
    return st.SpectralConv2d(2, 3, 3, padding=1, **{"beta": 0.5, "activation": "split_tanh", **options})


def _block(value_dtype=None):
    return st.SpectralSequential(
        _layer(value_dtype=value_dtype),
        st.SpectralConv2d(3, 3, 3, padding=1, beta=0.5, activation="split_tanh"),
    )


def _saved_dtypes(module, x):
    """(dtypes of the non-parameter tensors a training forward saves, its output)."""
    params, dtypes = {p.data_ptr() for p in module.parameters()}, set()

    def pack(t):
        if t.data_ptr() not in params:
            dtypes.add(t.dtype)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = module(x)
    return dtypes, y


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("make", [_layer, _block], ids=["layer", "block"])
@pytest.mark.parametrize("where", [(3, 4), (0, 0)], ids=["inside", "origin"])
def test_nan_and_inf_in_the_input_reach_that_sample_only(make, bad, where, backend):
    """An Inf at the origin transforms to infinite entries with no NaN, which split tanh
    alone would saturate to +-1: the block marks the sample's output instead."""
    module = make()
    x = torch.randn(2, 2, 8, 8)
    x[0, 1, where[0], where[1]] = bad
    y = module(x)
    assert not torch.isfinite(y[0]).any()  # beta > 0 and tanh hide nothing
    assert torch.isfinite(y[1]).all()


@pytest.mark.parametrize("bad", [float("nan"), -float("inf")], ids=["nan", "-inf"])
@pytest.mark.parametrize("make", [_layer, _block], ids=["layer", "block"])
def test_nan_and_inf_in_a_weight_reach_the_output(make, bad, backend):
    module = make()
    with torch.no_grad():
        next(module.parameters())[0, 0, 1, 1] = bad
    y = module(torch.randn(2, 2, 8, 8))
    assert not torch.isfinite(y[:, 0]).any()  # every sample of the poisoned output channel
    if make is _layer:
        assert torch.isfinite(y[:, 1:]).all()


def test_nan_survives_the_compact_pool_after_a_block():
    model = nn.Sequential(_block(), st.CompactMaxPool2d(2))
    x = torch.randn(1, 2, 8, 8)
    x[0, 0, 0, 0] = float("nan")
    assert torch.isnan(model(x)).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_inputs_keep_float32_spectra_and_their_own_dtype(dtype, backend):
    block = _block()
    x = torch.randn(2, 2, 8, 8).to(dtype).requires_grad_()
    saved, y = _saved_dtypes(block, x)
    assert y.dtype == dtype and saved == {dtype, torch.float32, torch.int32, torch.int64}
    y.float().square().sum().backward()
    assert x.grad.dtype == dtype and all(p.grad.dtype == torch.float32 for p in block.parameters())
    torch.testing.assert_close(y.float(), block(x.detach().float()), atol=1e-2, rtol=1e-2)


def test_cpu_autocast_bfloat16_keeps_float32_spectra():
    torch.manual_seed(0)
    model = nn.Sequential(_block(), st.CompactMaxPool2d(2), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    x = torch.randn(2, 2, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        saved, y = _saved_dtypes(model[0], x)
        features = model[0](x)
        logits = model(x)
        conv_dtype = nn.Conv2d(2, 3, 3)(x).dtype
    assert torch.float32 in saved and not saved & {torch.bfloat16, torch.float16}
    assert features.dtype == conv_dtype == torch.bfloat16  # spectra in float32, output as nn.Conv2d
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(features.float(), model[0](x), atol=1e-2, rtol=1e-2)  # bf16 rounding
    logits.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("make", [_layer, _block], ids=["layer", "block"])
def test_huge_inputs_saturate_split_tanh_without_overflow(make, backend):
    layers = [m for m in make().modules() if isinstance(m, st.SpectralConv2d)]
    flows = []
    for layer in layers:
        layer.register_forward_hook(lambda _m, _i, out: flows.append(out))
    y = st.SpectralSequential(*layers)(1e30 * torch.randn(2, 2, 8, 8))
    grid = flows[0].geom.grid
    assert torch.isfinite(y).all()
    # split tanh bounds each kept entry by sqrt(2); the orthonormal inverse FFT then bounds
    # every output pixel by the energy of the full spectrum (twice the half spectrum's).
    assert y.abs().max() <= math.sqrt(2 * 2 * grid[0] * (grid[1] // 2 + 1))
    assert flows[0].density > 0.9  # every huge entry is above beta
    assert all(flow.values.abs().max() <= 1 for flow in flows)


def test_huge_inputs_keep_a_density_budget_finite(backend):
    layer = _layer(beta=0.0, density=0.3)
    layer(1e30 * torch.randn(2, 2, 8, 8))
    assert math.isfinite(layer.threshold) and layer.threshold > 1e29  # no inf from squaring
    assert layer.last_density == pytest.approx(0.3, abs=0.05)
    layer.eval()
    assert torch.isfinite(layer(1e30 * torch.randn(2, 2, 8, 8))).all()


@pytest.mark.parametrize("beta", [3e-25, 0.3, 5e24], ids=["tiny", "usual", "huge"])
def test_threshold_decision_is_exact_far_from_float32_range(beta, backend):
    """Magnitudes just above and below beta: kept iff above, whatever their squares do."""
    from spectriton.backend import ops

    magnitudes = torch.tensor([0.5, 0.99, 1.01, 2.0]) * beta
    spectrum = magnitudes * torch.tensor([1, 1j, -1, 1 + 1j]) / torch.tensor([1, 1, 1, math.sqrt(2)])
    spectrum = spectrum.to(torch.complex64).view(4, 1, 1)  # frequency-major: 4 bins of one map
    out = ops(spectrum.device).threshold_compact(spectrum.clone(), beta, False, None, (2, 2))
    assert out.keep().view(-1).tolist() == [False, False, True, True]
    assert reference.keep_mask(spectrum, beta).view(-1).tolist() == [False, False, True, True]


@pytest.mark.parametrize("beta", [0.4, torch.tensor(0.4, dtype=torch.float64), torch.tensor(0.0)], ids=str)
def test_threshold_decided_by_runs_of_rows_is_the_whole_decision(beta, monkeypatch):
    """``keep_mask`` thresholds a few rows at a time (``KEEP_ENTRIES``): the runs, the last
    one short, decide as one pass would, NaN and Inf kept, and every entry at beta 0."""
    spectrum = torch.randn(7, 3, 5, dtype=torch.complex64)
    spectrum[2, 1, 3], spectrum[6, 0, 0], spectrum[0, 0, 1] = float("nan"), float("inf"), 0
    re, im = spectrum.real.double(), spectrum.imag.double()
    whole = ~(re.square() + im.square() <= float(beta) ** 2) | spectrum.isnan()
    if float(beta) == 0:
        whole = torch.ones_like(whole)
    monkeypatch.setattr(reference, "KEEP_ENTRIES", 2 * 15)  # two rows a run: runs 2, 2, 2, 1
    assert torch.equal(reference.keep_mask(spectrum, beta), whole)


@pytest.mark.parametrize(
    "dtype,scale",
    [(torch.float32, 1e-21), (torch.float32, 1e-24), (torch.float64, 1e-170)],
    ids=["float32-1e-21", "float32-1e-24", "float64-1e-170"],
)
def test_tiny_inputs_are_scaled_not_dropped_by_the_exact_drop_in(dtype, scale, backend):
    """At beta 0 with no activation the layer is ``F.conv2d`` for inputs of any scale: a
    spectral entry whose square underflows is still kept."""
    layer = st.SpectralConv2d(3, 4, 3, padding=1, bias=False, dtype=dtype)
    x = (scale * torch.randn(2, 3, 8, 8, dtype=dtype)).requires_grad_()
    y, expected = layer(x), nn.functional.conv2d(x, layer.weight, padding=1)
    grad = torch.randn_like(y)
    got = (y, *torch.autograd.grad(y, [x, layer.weight], grad))
    want = (expected, *torch.autograd.grad(expected, [x, layer.weight], grad))
    # FFT round-off: a few eps of the largest entry (measured at most 3 eps at scale 1)
    tol = 16 * torch.finfo(dtype).eps
    for name, a, b in zip(("output", "input grad", "weight grad"), got, want):
        assert (a - b).abs().max() <= tol * b.abs().max(), name


def test_an_input_without_zeros_leaves_only_windows_in_the_padding_dead():
    """An input with no exact zero (no ReLU before it) skips the search for dead receptive
    fields, except that a window wholly in the padding still gives exactly the bias."""
    torch.manual_seed(0)
    layer = st.SpectralConv2d(2, 3, 3, padding=3, dtype=torch.float64)
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    assert not (x == 0).any()
    y = layer(x)
    assert torch.equal(y[:, :, 0], layer.bias.view(1, -1, 1).expand(2, 3, y.shape[-1]))
    assert torch.equal(y[:, :, :, -1], layer.bias.view(1, -1, 1).expand(2, 3, y.shape[-2]))
    dilated = st.SpectralConv2d(2, 3, 2, padding=2, dilation=3, dtype=torch.float64)
    y = dilated(torch.randn(2, 2, 1, 5, dtype=torch.float64))  # every window's taps straddle the row
    assert torch.equal(y, dilated.bias.view(1, -1, 1, 1).expand_as(y))


@pytest.mark.parametrize(
    "options",
    [dict(bias=False), dict(stride=2), dict(groups=3, dilation=2), dict(padding=3)],
    ids=["plain", "bias-strided", "grouped-dilated", "wide-padding"],
)
def test_an_all_zero_receptive_field_gives_the_exact_output_and_relu_kink(options):
    """Where every input ``nn.Conv2d`` reads is zero (a dead ReLU region, padding) its output is
    exactly the bias; the exact drop-in's is too, not the FFT's round-off of either sign, so
    a ReLU after it passes a gradient exactly where the original's does (float64: any
    round-off crossing the kink shows)."""
    torch.manual_seed(0)
    settings = {"padding": 1, **options}
    layer = st.SpectralConv2d(6, 6, 3, dtype=torch.float64, **settings)
    x = torch.relu(torch.randn(2, 6, 16, 16, dtype=torch.float64))
    x[0, :, 5:] = 0  # a dead region larger than the kernel
    x[1, :3] = 0  # one group dead
    x.requires_grad_()
    conv = nn.Conv2d(6, 6, 3, dtype=torch.float64, **settings)
    conv.weight, conv.bias = layer.weight, layer.bias
    y, expected = layer(x), conv(x)
    dead = (expected == (0 if layer.bias is None else layer.bias.view(-1, 1, 1))).expand_as(y)
    assert dead.any() and torch.equal(y[dead], expected[dead])
    grad = torch.randn_like(y)
    got = torch.autograd.grad(torch.relu(y), [x, layer.weight], grad)
    want = torch.autograd.grad(torch.relu(expected), [x, layer.weight], grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_the_functional_drop_in_is_exact_on_all_zero_fields():
    torch.manual_seed(0)
    x = torch.zeros(1, 2, 12, 12, dtype=torch.float64)
    x[..., :3, :3] = torch.randn(2, 3, 3, dtype=torch.float64)
    weight, bias = torch.randn(3, 2, 3, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    y = spectral_conv2d(x, weight, bias, padding=1)
    expected = nn.functional.conv2d(x, weight, bias, padding=1)
    assert torch.equal(y[..., 6:, 6:], expected[..., 6:, 6:])


def _train_step(seed):
    torch.manual_seed(seed)
    block = st.SpectralSequential(_layer(), st.SpectralConv2d(3, 4, 3, padding=1, stride=2, beta=0.5))
    x = torch.randn(3, 2, 9, 9, requires_grad=True)
    y = block(x)
    grads = torch.autograd.grad(y.square().sum(), [x, *block.parameters()])
    return y, grads


def test_torch_path_is_bitwise_deterministic(monkeypatch):
    monkeypatch.setenv("SPECTRITON_BACKEND", "torch")
    (y1, g1), (y2, g2) = _train_step(7), _train_step(7)
    assert torch.equal(y1, y2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


@pytest.mark.parametrize("value_dtype", [None, torch.bfloat16], ids=["complex64", "bfloat16"])
def test_compressed_bytes_are_identical_for_the_same_input(value_dtype, backend):
    layer = _layer(value_dtype=value_dtype)
    x = torch.randn(2, 2, 9, 9)
    runs = [layer(SpectralFlow.start(x, [layer.shape])) for _ in range(2)]
    for name in ("values", "mask", "offsets"):
        assert torch.equal(getattr(runs[0], name), getattr(runs[1], name)), name
