"""Normalised spectral layers (``normalize=True``): what BatchNorm contributes, kept when
``convert`` bypasses it."""

import copy

import pytest
import torch
from torch import nn

import spectriton as st


def _layer(scale=1.0, **options):
    torch.manual_seed(0)
    layer = st.SpectralConv2d(3, 5, 3, padding=1, activation="split_tanh", normalize=True, **options)
    with torch.no_grad():
        layer.weight.mul_(scale)
    return layer


def test_what_a_normalised_layer_keeps_does_not_depend_on_the_weights_scale():
    x = torch.randn(4, 3, 8, 8)
    kept, outputs = [], []
    for scale in (0.25, 1.0, 4.0):
        layer = _layer(scale, beta=0.7, bias=False)
        outputs.append(layer(x))
        kept.append(layer.last_density)
    assert kept[0] == kept[1] == kept[2] and 0.05 < kept[1] < 0.95
    torch.testing.assert_close(outputs[0], outputs[2], atol=1e-4, rtol=1e-3)  # up to the eps
    plain = st.SpectralConv2d(3, 5, 3, padding=1, activation="split_tanh", beta=0.7, bias=False)
    densities = []
    for scale in (0.25, 4.0):  # without normalisation the scale decides
        with torch.no_grad():
            plain.weight.copy_(_layer(scale).weight)
        plain(x)
        densities.append(plain.last_density)
    assert densities[0] < densities[1]


def test_running_moments_calibrate_on_the_first_batch_then_follow_with_momentum():
    layer = _layer(beta=0.5, bias=False)
    initial = torch.tensor([[0.0], [1.0]]).expand(2, 5)  # BatchNorm's: uncalibrated
    assert torch.equal(layer.running_moments, initial) and layer.norm.num_batches_tracked == 0
    x = torch.randn(4, 3, 8, 8)
    layer(x).sum().backward()
    first = layer.running_moments.clone()
    assert torch.isfinite(first).all()
    y = layer(2 * x)  # twice the mean, four times the mean square
    assert torch.equal(layer.running_moments, first)  # moved once the backward comes
    y.sum().backward()
    expected = first * torch.tensor([[0.9 + 0.1 * 2], [0.9 + 0.1 * 4]])
    torch.testing.assert_close(layer.running_moments, expected, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # no backward will come: at once, as BatchNorm
        layer(x)
    expected = expected * 0.9 + first * 0.1
    torch.testing.assert_close(layer.running_moments, expected, rtol=1e-4, atol=1e-6)
    layer.eval()
    before = layer.running_moments.clone()
    layer(3 * x)
    assert torch.equal(layer.running_moments, before)  # eval reads them, does not update them


@pytest.mark.parametrize("grid", [(6, 7), (6, 8)], ids=str)
def test_the_moments_are_the_mean_and_mean_square_of_the_map_on_the_grid(grid):
    """The mean from the DC bin, the mean square by Parseval from the half spectrum: the
    spatial moments of the product on the grid."""
    from spectriton.moments import channel_moments

    torch.manual_seed(0)
    y = torch.randn(2, 3, *grid) + torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1)
    spectrum = torch.fft.rfft2(y, norm="ortho").permute(2, 3, 0, 1).reshape(-1, 2, 3)
    expected = torch.stack([y.mean((0, 2, 3)), y.square().mean((0, 2, 3))])
    torch.testing.assert_close(channel_moments(spectrum, grid), expected)


def test_a_normalised_linear_layer_is_batchnorm_with_the_running_moments():
    """No threshold, no activation, one layer whose grid is its map (1x1 kernel): the
    output is (y - mean) / sqrt(var + eps) with the batch's moments on the first call."""
    torch.manual_seed(0)
    layer = st.SpectralConv2d(3, 4, 1, normalize=True, value_dtype=torch.complex64).train()
    x = torch.randn(4, 3, 6, 6) + 1.0
    y = nn.functional.conv2d(x, layer.weight, layer.bias)
    mean, var = y.mean((0, 2, 3), keepdim=True), y.var((0, 2, 3), unbiased=False, keepdim=True)
    torch.testing.assert_close(layer(x), (y - mean) / (var + 1e-5).sqrt(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("stride", [1, 2])
def test_a_normalised_linear_layer_with_its_affine_is_batchnorm(stride):
    """With ``affine``, BatchNorm's weight and bias scale and shift each channel; a strided
    layer normalises its output's own pixels (1x1 kernel: its grid is its output)."""
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 1, stride=stride), nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    layer = st.SpectralConv2d.from_conv(conv, bn, value_dtype=torch.complex64).train()
    assert layer.normalize and layer.affine and layer.norm.weight is bn.weight
    x = torch.randn(4, 3, 6, 6) + 1.0
    torch.testing.assert_close(layer(x), bn.train()(conv(x)), atol=1e-4, rtol=1e-4)


def test_affine_gradients_pass_gradcheck():
    from torch.autograd import gradcheck

    torch.manual_seed(0)
    layer = st.SpectralConv2d(2, 3, 3, padding=1, activation="split_tanh", normalize=True, affine=True)
    layer = layer.double()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    layer(x)  # calibrates the running moments: constants of the steps below
    layer.eval()
    with torch.no_grad():
        layer.norm_weight.copy_(torch.tensor([1.5, 0.3, -0.5]))
        layer.norm_bias.copy_(torch.tensor([0.2, -0.1, 0.0]))

    def f(weight, scale, shift):
        params = {"weight": weight, "bias": layer.bias, "norm.weight": scale, "norm.bias": shift}
        return torch.func.functional_call(layer, params, (x,))

    args = [p.detach().clone().requires_grad_() for p in (layer.weight, layer.norm_weight, layer.norm_bias)]
    assert gradcheck(f, args)


def test_state_dict_loads_strictly_without_running_moments_and_deepcopies():
    conv = nn.Conv2d(3, 5, 3, padding=1)
    layer = st.SpectralConv2d.from_conv(conv, activation="split_tanh", normalize=True)
    layer.load_state_dict(conv.state_dict(), strict=True)
    layer(torch.randn(2, 3, 8, 8))
    twin = copy.deepcopy(layer).eval()
    assert torch.equal(twin.running_moments, layer.running_moments)
    fresh = st.SpectralConv2d(3, 5, 3, padding=1, activation="split_tanh", normalize=True)
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh.running_moments, layer.running_moments)
    assert "normalize=True" in repr(layer)


def test_convert_normalises_the_layers_that_absorb_a_batchnorm():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
    )  # fmt: skip
    rows = {r.name: r for r in st.plan(model)}
    assert "normalised" in rows["0"].reason and "normalised" not in rows["3"].reason
    assert "with its weight and bias" in rows["0"].reason
    weight, bias = model[1].weight, model[1].bias
    st.convert(model)
    assert model[0].normalize and not model[3].normalize
    assert model[0].affine and model[0].norm.weight is weight and model[0].norm.bias is bias
    bypassed = st.convert(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()), normalize=False
    )
    assert not bypassed[0].normalize


def _conv_bn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())


def test_a_zero_initialised_batchnorm_weight_is_left_out_until_loaded_otherwise():
    """timm zero-initialises each residual branch's last BN weight; split tanh cannot start
    as the identity, so such a weight is left out (decided when the layer first runs, so
    that loading pretrained weights after converting still takes them)."""
    x = torch.randn(2, 3, 6, 6)
    pretrained = _conv_bn()
    with torch.no_grad():
        pretrained[1].weight.uniform_(0.5, 1.5)
        pretrained[1].bias.uniform_(-1, 1)
    zeroed = _conv_bn()
    nn.init.zeros_(zeroed[1].weight)
    st.convert(zeroed)
    assert zeroed[0].affine and zeroed[0].norm.scale_shift() is None
    plain = st.convert(_conv_bn(), affine=False)
    plain.load_state_dict(zeroed.state_dict())
    torch.testing.assert_close(zeroed(x), plain(x), atol=0, rtol=0)
    zeroed(x).sum().backward()
    assert zeroed[0].norm.weight.requires_grad and zeroed[0].norm.weight.grad is None  # not frozen, not read

    for assign in (False, True):  # pretrained weights loaded after converting are read
        model = st.convert(_conv_bn())
        model(x)  # (decided once, then again after a load)
        model.load_state_dict(pretrained.state_dict(), assign=assign)
        reference = st.convert(copy.deepcopy(pretrained))
        torch.testing.assert_close(model(x), reference(x), atol=0, rtol=0)
        assert torch.equal(model[0].norm.scale_shift()[0], pretrained[1].weight)


def test_convert_works_on_the_meta_device():
    with torch.device("meta"):
        model = _conv_bn()
    weight = model[1].weight
    st.convert(model)
    assert model[0].weight.is_meta and model[0].norm.weight is weight and weight.is_meta


def test_bad_input():
    with pytest.raises(TypeError, match="normalize must be a bool"):
        st.SpectralConv2d(3, 5, 3, normalize=1)
    with pytest.raises(ValueError, match="affine=True needs normalize=True"):
        st.SpectralConv2d(3, 5, 3, affine=True)
    with pytest.raises(TypeError, match="norm must be a BatchNorm"):
        st.SpectralConv2d.from_conv(nn.Conv2d(3, 5, 3), nn.LayerNorm(5))


def test_from_conv_holds_its_batchnorm_as_a_submodule():
    """The BN's weight and bias are the layer's parameters, once; a copy of the layer owns
    a copy of them (it trains what it shows)."""
    conv, bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
    layer = st.SpectralConv2d.from_conv(conv, bn, activation="split_tanh")
    named = dict(layer.named_parameters())
    assert list(named) == ["weight", "bias", "norm.weight", "norm.bias"]
    assert named["norm.weight"] is bn.weight and named["norm.bias"] is bn.bias
    assert layer.norm.running_mean is bn.running_mean and layer.norm.running_var is bn.running_var
    twin = copy.deepcopy(layer)
    shared = {id(t) for t in (*layer.parameters(), *layer.buffers())}
    assert not shared & {id(t) for t in (*twin.parameters(), *twin.buffers())}


def test_the_layer_starts_from_its_batchnorms_running_statistics():
    """Issue 28: converted before any training step (a pretrained model), eval mode uses the
    BN's own statistics (as the grid's mean and variance), not the batch's."""
    conv, bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.num_batches_tracked.fill_(100)
    layer = st.SpectralConv2d.from_conv(conv, bn, activation="split_tanh", value_dtype=torch.complex64)
    expected = torch.stack([bn.running_mean, bn.running_var + bn.running_mean.square()])
    assert torch.equal(layer.running_moments, expected)
    layer.eval()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        together, alone = layer(x), torch.cat([layer(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=1e-5)  # float32 round-off
    layer.train()(x).sum().backward()  # calibrated already: a training step moves them by the momentum
    assert layer.norm.num_batches_tracked == 101 and not torch.equal(layer.running_moments, expected)


def test_a_layer_saved_before_its_norm_was_a_submodule_loads():
    layer = _layer(beta=0.5, affine=True)
    layer(torch.randn(2, 3, 8, 8))
    state = {k: v for k, v in layer.state_dict().items() if not k.startswith("norm.")}
    state.update(running_moments=layer.running_moments, norm_weight=layer.norm.weight + 1)
    state.update(norm_bias=layer.norm.bias - 1)
    fresh = _layer(beta=0.5, affine=True)
    fresh.load_state_dict(state, strict=True)
    torch.testing.assert_close(fresh.running_moments, layer.running_moments)
    assert torch.equal(fresh.norm_weight, layer.norm.weight + 1)
    assert torch.equal(fresh.norm_bias, layer.norm.bias - 1)
