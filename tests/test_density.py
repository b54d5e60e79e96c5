"""The density budget keeps what it promises on real images, whatever the shape, and one
non-finite sample neither changes what the others keep nor poisons the running threshold."""

import copy
import math

import pytest
import torch

import spectriton as st
from spectriton.datasets import load_dataset

pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # NaN on purpose


def _images(batch: int, channels: int, size: int) -> torch.Tensor:
    """``batch`` Fashion-MNIST images (the shipped sample), cropped to ``size``, each channel
    a different image so that channels are not copies of one another."""
    data = load_dataset("sample")
    picked = [data[i][0][:, :size, :size] for i in range(batch * channels)]
    return torch.cat(picked).view(batch, channels, size, size)


@pytest.mark.parametrize("batch", [3, 8, 16])
@pytest.mark.parametrize("channels", [1, 4, 6])
@pytest.mark.parametrize("size", [28, 14, 9])
def test_density_budget_holds_on_real_images(batch, channels, size):
    layer = st.SpectralConv2d(channels, 5, 3, padding=1, density=0.1, activation="split_tanh")
    layer(_images(batch, channels, size))
    assert layer.last_density == pytest.approx(0.1, rel=0.2)


def test_density_budget_holds_where_a_strided_sample_would_alias():
    """1,075,200 entries: a sample strided by numel // 65536 = 16 = the half-spectrum row
    length of the 30 x 30 grid would read a single frequency column."""
    layer = st.SpectralConv2d(1, 140, 3, padding=1, density=0.1, activation="split_tanh")
    layer(_images(16, 1, 28))
    assert layer.last_density == pytest.approx(0.1, rel=0.2)


def test_a_non_finite_sample_does_not_poison_a_density_batch():
    x = _images(4, 2, 14)
    layer = st.SpectralConv2d(2, 3, 3, padding=1, density=0.2, activation="split_tanh")
    clean = copy.deepcopy(layer)
    y_clean = clean(x)
    bad = x.clone()
    bad[1, 0, 3, 3] = float("nan")
    y_bad = layer(bad)
    assert math.isfinite(float(layer.threshold))  # the running threshold stays usable
    assert float(layer.threshold) == pytest.approx(float(clean.threshold), rel=0.1)
    assert torch.isnan(y_bad[1]).all()  # the bad sample surfaces in its own output
    others = [0, 2, 3]
    assert torch.isfinite(y_bad[others]).all()
    # the clean samples keep about what they kept without the bad one (not everything): only
    # entries near the threshold, which moves a little without the bad sample, flip
    change = (y_bad[others] - y_clean[others]).norm() / y_clean[others].norm()
    assert change < 0.1


def test_a_density_layer_loads_a_conv2d_state_dict_strictly():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    layer = st.SpectralConv2d(3, 4, 3, padding=1, density=0.1, activation="split_tanh")
    layer(torch.randn(2, 3, 8, 8))  # calibrates the running threshold
    layer.load_state_dict(conv.state_dict())  # strict, without a "threshold" key
    assert torch.equal(layer.weight, conv.weight) and torch.isnan(layer.threshold)
    layer.threshold.fill_(0.5)
    again = st.SpectralConv2d(3, 4, 3, padding=1, density=0.1, activation="split_tanh")
    again.load_state_dict(layer.state_dict())  # with it, it is loaded
    assert float(again.threshold) == 0.5


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_density_layer_synchronises_with_the_host_once_per_forward():
    """The threshold stays on the device; only sizing the values buffer reads back."""
    layer = st.SpectralConv2d(4, 8, 3, padding=1, density=0.1, activation="split_tanh").cuda()
    x = _images(8, 4, 28).cuda()
    layer(x)  # compiles the kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with pytest.warns(UserWarning) as caught:
            layer(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len([w for w in caught if "synchroniz" in str(w.message)]) == 1


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_an_uncalibrated_budget_in_eval_thresholds_each_sample_at_its_own_quantile(backend, monkeypatch):
    """Issue 28: evaluated before any training step (no running threshold yet), a density
    layer kept each sample's entries by the batch's quantile, so a sample's output hung on
    its batch; now each sample keeps about its own ``density`` of its spectrum."""
    monkeypatch.setenv("SPECTRITON_BACKEND", backend)
    torch.manual_seed(0)
    layer = st.SpectralConv2d(3, 4, 3, padding=1, activation="split_tanh", density=0.2).eval()
    x = torch.randn(4, 3, 10, 10) * torch.tensor([0.1, 1.0, 10.0, 100.0]).view(-1, 1, 1, 1)
    with torch.no_grad():
        together = layer(x)
        alone = [layer(x[i : i + 1]) for i in range(len(x))]
        assert layer.last_density == pytest.approx(0.2, abs=0.02)
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-6, rtol=1e-5)
    assert math.isnan(layer.threshold)  # eval sets no running threshold
