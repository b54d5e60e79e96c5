"""convert on the patterns other model libraries write: dense blocks (torchvision's and
hand-written ones), a BatchNorm carrying its activation, nn.Identity placeholders."""

import copy
import pickle

import pytest
import torch
from torch import nn

import spectriton as st
from spectriton.blocks import run_layers
from spectriton.converted import Absorbed


class _Bottleneck(nn.Module):
    """A dense layer with its own names: cat -> BN -> ReLU -> 1x1 -> BN -> ReLU -> 3x3."""

    def __init__(self, channels, growth, kernel=3):
        super().__init__()
        self.bn_a, self.act_a = nn.BatchNorm2d(channels), nn.ReLU()
        self.squeeze = nn.Conv2d(channels, 2 * growth, 1, bias=False)
        self.bn_b, self.act_b = nn.BatchNorm2d(2 * growth), nn.ReLU()
        self.grow = nn.Conv2d(2 * growth, growth, kernel, padding=kernel // 2, bias=False)

    def forward(self, features):
        x = self.act_a(self.bn_a(torch.cat(features, 1)))
        return self.grow(self.act_b(self.bn_b(self.squeeze(x))))


class _DenseStage(nn.Module):
    def __init__(self, channels=4, growth=3, layers=3, kernel=3):
        super().__init__()
        self.units = nn.ModuleList(_Bottleneck(channels + i * growth, growth, kernel) for i in range(layers))

    def forward(self, x):
        features = [x]
        for unit in self.units:
            features.append(unit(features))
        return torch.cat(features, 1)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.stage = _DenseStage()
        self.head = nn.Linear(13, 10)

    def forward(self, x):
        return self.head(self.stage(torch.relu(self.stem(x))).mean((2, 3)))


def _saved_4d(module, x):
    """Floating 4-D tensors ``module(x)`` saves for backward that are not parameters."""
    params = {p.data_ptr() for p in module.parameters()}
    saved = []

    def pack(t):
        if t.dim() == 4 and t.is_floating_point() and t.data_ptr() not in params:
            saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x).sum().backward()
    return saved


def test_a_hand_written_dense_block_becomes_one_spectral_dense_block():
    torch.manual_seed(0)
    model = _Net()
    rows = {r.name: r for r in st.plan(model)}
    assert (
        rows["stage.units.1.bn_a"].action == "bypassed"
        and "pre-activation" in rows["stage.units.1.bn_a"].reason
    )
    assert "bottleneck of layer 1 of the dense block at stage" in rows["stage.units.1.squeeze"].reason
    assert rows["stage.units.1.grow"].action == "spectral layer"
    st.convert(model, beta=0.05)
    assert type(model.stage).__name__ == "Converted_DenseStage"
    assert all(
        isinstance(u.squeeze, st.SpectralConv2d) and isinstance(u.grow, st.SpectralConv2d)
        for u in model.stage.units
    )
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    saved = _saved_4d(model.stage, x)
    assert all(t.data_ptr() == x.data_ptr() for t in saved)  # only its input: no concatenated copy
    loss = nn.functional.cross_entropy(model(torch.randn(2, 1, 8, 8)), torch.tensor([0, 1]))
    loss.backward()
    assert all(u.squeeze.weight.grad.abs().sum() > 0 for u in model.stage.units)
    unit = model.stage.units[0]
    assert not any(p.requires_grad for p in unit.bn_a.parameters())  # pre-activation: bypassed
    # the bottleneck's own BatchNorm: its weight and bias are the layer's, and train
    assert unit.squeeze.affine and isinstance(unit.bn_b, Absorbed) and isinstance(unit.bn_a, Absorbed)
    norm = unit.squeeze.norm
    assert norm.weight.grad.abs().sum() > 0 and norm.bias.grad.abs().sum() > 0


def test_a_dense_layer_whose_first_convolution_is_grouped_is_converted_conv_by_conv():
    """A grouped layer reads one source, so a dense block whose first convolutions are
    grouped is not one spectral dense block: its convolutions convert one by one, and run."""
    torch.manual_seed(0)
    stage = _DenseStage(channels=4, growth=4, layers=2)
    for unit in stage.units:
        unit.squeeze = nn.Conv2d(unit.squeeze.in_channels, 8, 1, groups=2, bias=False)
    rows = {r.name: r for r in st.plan(stage)}
    assert "dense block" not in rows["units.1.squeeze"].reason
    st.convert(stage, beta=0.05)
    assert type(stage).__name__ != "Spectral_DenseStage"
    assert isinstance(stage.units[1].squeeze, st.SpectralConv2d) and stage.units[1].squeeze.groups == 2
    stage(torch.randn(2, 4, 6, 6)).sum().backward()
    assert stage.units[1].squeeze.weight.grad.abs().sum() > 0


def test_a_converted_dense_block_pickles_and_reverts():
    torch.manual_seed(0)
    original = _Net().eval()
    x = torch.randn(2, 1, 8, 8)
    expected = original(x)
    model = st.convert(copy.deepcopy(original), beta=0.05).eval()
    out = model(x)
    torch.testing.assert_close(pickle.loads(pickle.dumps(model))(x), out, atol=0, rtol=0)
    model.load_state_dict(original.state_dict(), strict=True)
    st.revert(model)
    assert type(model.stage) is _DenseStage
    torch.testing.assert_close(model(x), expected, atol=0, rtol=0)


def test_the_spectral_dense_block_matches_its_layers_run_by_hand():
    """Each layer reads the input and every earlier output as the spectrum of their
    concatenation: with 1x1 kernels (no padding, so no circular wrap between layers) and
    exact values, the same as running each layer's block on the concatenated spatial maps."""
    torch.manual_seed(0)
    stage = st.convert(_DenseStage(kernel=1), beta=0.05, value_dtype=torch.complex64)
    assert type(stage).__name__ == "Converted_DenseStage"
    x = torch.randn(2, 4, 6, 6)
    features = [x]
    for unit in stage.units:
        features.append(run_layers([unit.squeeze, unit.grow], torch.cat(features, 1)))
    torch.testing.assert_close(stage(x), torch.cat(features, 1), atol=1e-5, rtol=1e-5)


class _BatchNormAct(nn.BatchNorm2d):
    """A BatchNorm that applies its activation (timm's BatchNormAct2d)."""

    def __init__(self, channels, act=True):
        super().__init__(channels)
        self.drop = nn.Identity()
        self.act = nn.ReLU() if act else nn.Identity()

    def forward(self, x):
        return self.act(self.drop(super().forward(x)))


class _TimmLikeBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = _BatchNormAct(4)
        self.aa = nn.Identity()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = _BatchNormAct(4, act=False)

    def forward(self, x):
        return self.bn2(self.conv2(self.aa(self.bn1(self.conv1(x)))))


def test_identity_placeholders_are_looked_through_and_a_bn_with_its_activation_is_absorbed():
    rows = {r.name: r for r in st.plan(_TimmLikeBlock())}
    assert rows["bn1"].action == "bypassed"
    assert "layer 1 of the block at conv1" in rows["conv2"].reason
    assert rows["conv2"].action == "spectral layer"  # the BN after it stands for split tanh too
    model = st.convert(_TimmLikeBlock(), beta=0.05)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    assert model.conv1.weight.grad is not None


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "mobilenetv2_100"])
def test_timm_models_convert(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10)
    rows = st.plan(model)
    assert not [r for r in rows if r.kind == "Conv2d" and r.action == "skip"]
    st.convert(model, density=0.1).train()
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 2]))
    loss.backward()
    assert torch.isfinite(loss)
    if name == "densenet121":
        assert type(model.features.denseblock1).__name__ == "ConvertedDenseBlock"


class _KeywordCalls(nn.Module):
    """Calls its children by keyword (``nn.Conv2d.forward(input)``), maybe through an
    ``nn.Identity`` placeholder."""

    def __init__(self, placeholder):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.aa = nn.Identity() if placeholder else None
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(input=x)
        if self.aa is not None:
            y = self.aa(input=y)
        return self.conv2(input=torch.relu(self.bn(y)))


@pytest.mark.parametrize("placeholder", [False, True], ids=["direct", "through-identity"])
def test_convolutions_called_by_keyword_convert(placeholder):
    rows = {r.name: r for r in st.plan(_KeywordCalls(placeholder))}
    assert rows["conv"].action == "spectral layer" and rows["bn"].action == "bypassed"
    torch.manual_seed(0)
    model, x = _KeywordCalls(placeholder), torch.randn(2, 3, 8, 8)
    expected = model(x)
    st.convert(model, activation=None, beta=0.0)  # the original forward calls the spectral layers
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    model = st.convert(_KeywordCalls(placeholder))
    assert model.conv.activation == "split_tanh"
    model(x).sum().backward()
    assert model.conv.weight.grad is not None


class _Shifted(nn.Module):
    """``relu(bn(conv(x)) + t)``: the pattern of a residual block, whatever ``t``'s shape."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x, t):
        return torch.relu(self.bn(self.conv(x)) + t)


@pytest.mark.parametrize("shape", [(1, 4, 1, 1), (2, 4, 1, 1), ()], ids=["offset", "gate", "0-d"])
def test_a_shortcut_that_broadcasts_is_added_as_the_add_it_replaces_adds_it(shape):
    torch.manual_seed(0)
    model, x = st.convert(_Shifted()), torch.randn(2, 3, 8, 8)
    model(x, torch.randn(2, 4, 8, 8))  # calibrates the running moments
    model.eval()
    t = torch.randn(shape, requires_grad=True)
    full = t.detach().expand(2, 4, 8, 8).clone().requires_grad_()
    y, y_full = model(x, t), model(x, full)
    torch.testing.assert_close(y, y_full, atol=1e-6, rtol=1e-6)  # the same values, laid out otherwise
    (y * y_full.detach()).sum().backward()
    (y_full * y_full.detach()).sum().backward()
    torch.testing.assert_close(t.grad, full.grad.sum_to_size(shape), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"broadcast to it, got \(2, 4, 8, 8\)"):  # would grow the output
        model(x[:1], full)


def test_tracing_leaves_buffers_as_they_were_so_a_fresh_batchnorm_calibrates():
    """timm's BatchNormAct2d counts num_batches_tracked in its forward, which tracing runs:
    counted, a never-run BN looked pretrained, its layer normalised with mean 0 and
    variance 1 instead of its first batch's, and timm's MobileNetV2 kept nothing."""
    timm_layers = pytest.importorskip("timm.layers")
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), timm_layers.BatchNormAct2d(8), nn.Flatten())
    st.convert(model, value_dtype=torch.complex64)
    norm = model[0].norm
    assert int(norm.num_batches_tracked) == 0
    x = torch.randn(4, 3, 8, 8) * 10
    model(x).sum().backward()  # a training step counts its batch once its backward ran
    expected = nn.functional.conv2d(x, model[0].weight, model[0].bias, padding=1).var((0, 2, 3))
    assert int(norm.num_batches_tracked) == 1
    assert torch.all(norm.running_var > 0.5 * expected)  # the batch's, not BatchNorm's initial 1
