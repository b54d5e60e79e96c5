"""The paper's four networks in both forms, and the density budget."""

import pytest
import torch
from torch import nn

import spectriton as st
from spectriton import models
from spectriton.memory import saved_bytes


def _batch(name, n=4):
    size = models.input_size(name)
    return torch.randn(n, 1, size, size), torch.randint(0, 10, (n,))


@pytest.mark.parametrize("spectral", [False, True], ids=["spatial", "spec"])
@pytest.mark.parametrize("name", models.MODELS)
def test_trains_a_step(name, spectral):
    model = models.build(name, spectral=spectral)
    x, y = _batch(name)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.95)
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    changed = [not torch.equal(a, p) for a, p in zip(before, model.parameters())]
    assert sum(changed) >= len(changed) - 1  # every layer learns (allow one dead bias)


@pytest.mark.parametrize("name", models.MODELS)
def test_both_forms_have_the_same_convolution_widths(name):
    def widths(model):
        return [m.out_channels for m in model.modules() if isinstance(m, (nn.Conv2d, st.SpectralConv2d))]

    spatial, spec = widths(models.build(name)), widths(models.build(name, spectral=True))
    if name == "densenet":  # the spatial form adds 1x1 bottlenecks (4 x growth)
        spatial = [w for w in spatial if w != 4 * 64]
    assert spatial == spec


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("name", models.MODELS)
def test_spec_layers_are_normalised_where_the_spatial_form_has_batchnorm(name, normalize):
    def batch_normed(model):  # each convolution's: is the next module a BatchNorm?
        modules = [m for m in model.modules() if not isinstance(m, (nn.Sequential, models.DenseLayer))]
        convs = [i for i, m in enumerate(modules) if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
        return [isinstance(modules[i + 1], nn.BatchNorm2d) for i in convs]

    spec = models.build(name, spectral=True, normalize=normalize)
    layers = [m for m in spec.modules() if isinstance(m, st.SpectralConv2d)]
    batch_norm = batch_normed(models.build(name))
    assert any(batch_norm) == (name in models.WITH_BATCHNORM)
    expected = [normalize and bn for bn in batch_norm]
    assert [layer.normalize for layer in layers] == expected
    assert all(layer.affine == layer.normalize for layer in layers)
    x, y = _batch(name)
    nn.functional.cross_entropy(spec(x), y).backward()
    norms = [layer.norm for layer in layers if layer.normalize]
    assert all(norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0 for norm in norms)


# Output size after each block, then after each pool (paper Tables 1, 3, 4, 5).
BLOCK_SIZES = {
    "lenet5": [24, 12, 8, 4],
    "alexnet": [32, 16, 16, 8, 8, 4],
    "vgg16": [32, 16, 16, 8, 8, 4],
    "densenet": [32, 16, 16, 1],
}


@pytest.mark.parametrize("name", models.MODELS)
def test_block_output_sizes_match_the_tables(name):
    model = models.build(name, spectral=True)
    x, _ = _batch(name, 1)
    sizes = []
    for module in model.features:
        x = module(x)
        sizes.append(x.shape[-1])
    assert sizes == BLOCK_SIZES[name]


def test_spectral_grids_follow_the_tables():
    from spectriton.geometry import block_geometry

    vgg = models.build("vgg16", spectral=True)
    blocks = [m for m in vgg.features if isinstance(m, st.SpectralSequential)]
    grids = [block_geometry([layer.shape for layer in b], (s, s)).grid for b, s in zip(blocks, (32, 16, 8))]
    assert grids == [(34, 34), (18, 18), (10, 10)]


def test_beta_and_density_are_exclusive():
    with pytest.raises(ValueError, match="either beta or density"):
        models.lenet5(spectral=True, beta=0.5, density=0.1)
    with pytest.raises(ValueError, match="density"):
        models.lenet5(spectral=True, density=1.5)
    with pytest.raises(ValueError, match="model must be one of"):
        models.build("resnet")


def _kept_fractions(model, x):
    model.train()
    model(x)
    return [m.last_density for m in model.modules() if isinstance(m, st.SpectralConv2d)]


def test_a_fixed_high_beta_starves_deep_layers_but_a_density_budget_keeps_them_alive():
    torch.manual_seed(0)
    x, _ = _batch("vgg16", 4)
    starved = _kept_fractions(models.vgg16(spectral=True, beta=3.0), x)
    assert min(starved) == 0.0  # the failure mode the budget exists for
    budget = _kept_fractions(models.vgg16(spectral=True, density=0.05), x)
    assert min(budget) > 0.02 and max(budget) < 0.1


def test_density_budget_sets_memory():
    torch.manual_seed(0)
    x, _ = _batch("alexnet", 8)
    small = saved_bytes(models.alexnet(spectral=True, density=0.05), x).total
    large = saved_bytes(models.alexnet(spectral=True, density=0.2), x).total
    assert small < 0.7 * large


def test_density_threshold_is_a_running_buffer_used_in_eval():
    layer = st.SpectralConv2d(3, 8, 3, padding=1, activation="split_tanh", density=0.1)
    assert torch.isnan(layer.threshold)
    x = torch.randn(4, 3, 16, 16)
    layer.train()
    layer(x)
    first = layer.threshold.clone()
    assert torch.isfinite(first) and first > 0
    layer(2 * x)
    assert layer.threshold > first  # moved toward the larger batch's quantile, not jumped
    layer.eval()
    frozen = layer.threshold.clone()
    layer(3 * x)
    assert torch.equal(layer.threshold, frozen)
    assert "threshold" in layer.state_dict()


def test_a_converted_model_is_torchvisions_taking_the_input_channels_and_convert_defaults():
    pytest.importorskip("torchvision")
    spatial = models.build("resnet18", in_channels=1)
    assert spatial.conv1.in_channels == 1 and not any(
        isinstance(m, st.SpectralConv2d) for m in spatial.modules()
    )
    spec = models.build("resnet18", spectral=True, in_channels=1)
    layers = [m for m in spec.modules() if isinstance(m, st.SpectralConv2d)]
    assert len(layers) == 20
    assert {(m.beta, m.value_dtype) for m in layers} == {(0.3, torch.float8_e4m3fn)}  # convert's defaults
    chosen = models.build("resnet18", spectral=True, beta=0.7, value_dtype=torch.bfloat16)
    assert {(m.beta, m.value_dtype) for m in chosen.modules() if isinstance(m, st.SpectralConv2d)} == {
        (0.7, torch.bfloat16)
    }
    x, y = _batch("resnet18")
    nn.functional.cross_entropy(spec(x), y).backward()
    assert all(p.grad is not None for p in spec.parameters())
