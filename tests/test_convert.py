"""convert / plan / revert on hand-made and torchvision models."""

import copy
import io
import pickle

import pytest
import torch
from conftest import keep
from torch import nn

import spectriton as st
from spectriton.converted import Absorbed
from spectriton.memory import saved_bytes

torchvision = pytest.importorskip("torchvision")
TORCHVISION = ["vgg11_bn", "resnet18", "densenet121"]


def _torchvision(name):
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(num_classes=10).eval()


def _convs(model):
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("name", TORCHVISION)
def test_linear_mode_keeps_outputs_and_revert_restores_them(name):
    model = _torchvision(name)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        st.convert(model, activation=None, beta=0.0)
        assert any(isinstance(m, st.SpectralConv2d) for m in model.modules())
        torch.testing.assert_close(model(x), expected, atol=1e-4, rtol=1e-4)
        st.revert(model)
        assert not any(isinstance(m, st.SpectralConv2d) for m in model.modules())
        torch.testing.assert_close(model(x), expected, atol=0, rtol=0)


@pytest.mark.parametrize("name", TORCHVISION)
def test_specnet_mode_trains_a_step_and_plan_lists_every_convolution(name):
    model = _torchvision(name)
    convs = _convs(model)
    rows = st.plan(model)
    assert {r.name for r in rows if r.kind == "Conv2d"} == set(convs)
    order = [name for name, _ in model.named_modules()]
    assert [order.index(r.name) for r in rows] == sorted(order.index(r.name) for r in rows)
    assert _convs(model) == convs  # plan touched nothing
    st.convert(model).train()
    spectral = [m for m in model.modules() if isinstance(m, st.SpectralConv2d)]
    assert len(spectral) == sum(r.action.startswith("spectral") for r in rows)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 2]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(m.weight.grad is not None for m in spectral)


def test_specnet_mode_merges_resnet_basic_blocks_and_saves_memory():
    model = _torchvision("resnet18")
    x = torch.randn(2, 3, 32, 32)
    before = saved_bytes(model, x).total
    rows = {r.name: r for r in st.plan(model)}
    assert "layer 1 of the block at layer1.0.conv1" in rows["layer1.0.conv2"].reason
    assert rows["layer1.0.bn1"].action == "bypassed"
    assert rows["layer2.0.downsample.0"].action.startswith("spectral")  # 1x1: a per-frequency product
    st.convert(model, beta=1.0)
    assert saved_bytes(model, x).total < before


def test_a_converted_resnet_recomputes_its_small_blocks_bitwise():
    """From its second step a converted ResNet-18 recomputes the blocks on its small maps
    (their spectra outweigh their outputs), with bitwise the outputs, gradients and running
    moments of the same model keeping every block's spectra."""
    model = st.convert(_torchvision("resnet18")).train()
    x, target = torch.randn(4, 3, 32, 32), torch.arange(4)
    nn.functional.cross_entropy(model(x), target).backward()  # measures what each layer keeps
    model.zero_grad()
    keeping = copy.deepcopy(model)

    def step(model):
        y = model(x)
        nn.functional.cross_entropy(y, target).backward()
        return [y, *(p.grad for p in model.parameters()), *model.buffers()]

    recomputed = step(model)
    assert sum(m.last_keep == "input" for m in model.modules() if isinstance(m, st.SpectralConv2d)) >= 3
    keep(keeping, "spectra")
    for a, b in zip(recomputed, step(keeping), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0, equal_nan=True)


def test_specnet_mode_swaps_densenet_avg_pools_and_revert_restores_them():
    model = _torchvision("densenet121")
    st.convert(model)
    pools = [m for m in model.modules() if isinstance(m, st.CompactAvgPool2d)]
    assert len(pools) == 3  # the transitions' 2x2 average pools
    st.revert(model)
    assert not any(isinstance(m, st.CompactAvgPool2d) for m in model.modules())
    assert type(model.features.transition1.pool) is nn.AvgPool2d


def test_specnet_revert_without_training_restores_outputs():
    model = _torchvision("resnet18")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        st.convert(model)
        assert not torch.allclose(model(x), expected)
        st.revert(model)
        torch.testing.assert_close(model(x), expected, atol=0, rtol=0)
    assert all(p.requires_grad for p in model.parameters())


def _round_trips(model):
    """The model back through torch.save/torch.load, pickle and copy.deepcopy."""
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return {
        "torch.save": torch.load(buffer, weights_only=False),
        "pickle": pickle.loads(pickle.dumps(model)),
        "deepcopy": copy.deepcopy(model),
    }


@pytest.mark.parametrize("density", [None, 0.1], ids=["beta", "density"])
def test_converted_model_is_an_ordinary_model(density):
    """Issue 17 class 4: a rewritten container's forward is part of its class, so every
    round trip keeps it; the original's state_dict loads strictly; revert restores it."""
    original = _torchvision("resnet18")
    model = st.convert(copy.deepcopy(original), density=density)
    block = model.layer1[0]
    assert type(block).__name__ == "ConvertedBasicBlock"
    assert isinstance(block, torchvision.models.resnet.BasicBlock)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.train()(x)  # calibrates the density thresholds
        expected = model.eval()(x)
        for how, copied in _round_trips(model).items():
            assert type(copied.layer1[0]) is type(block), how
            torch.testing.assert_close(copied(x), expected, atol=0, rtol=0, msg=how)
        model.load_state_dict(original.state_dict(), strict=True)
        st.revert(model)
        assert type(model.layer1[0]) is torchvision.models.resnet.BasicBlock
        torch.testing.assert_close(model(x), original(x), atol=0, rtol=0)


def _vgg_like():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 4, 3, padding=1),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 10),
    )


def test_sequential_pattern_becomes_one_block_and_a_compact_pool():
    model = _vgg_like()
    weight = model[1].weight
    st.convert(model, beta=0.5)
    assert isinstance(model[0], st.SpectralConv2d) and model[0].activation == "split_tanh"
    assert isinstance(model[3], st.SpectralConv2d) and model[3].activation == "split_tanh"
    assert isinstance(model[6], st.CompactMaxPool2d)
    assert isinstance(model[7], st.SpectralConv2d) and model[7].activation is None  # nothing after it
    assert isinstance(model, nn.Sequential) and isinstance(model[1], Absorbed)  # its name kept
    assert model[0].affine and model[0].norm.weight is weight  # holds the BN's weight and bias
    assert all(p.requires_grad for p in model[0].norm.parameters())  # they train in the spectral layer
    report = saved_bytes(model, torch.randn(2, 3, 16, 16))
    assert "1" not in report.per_module and "2" not in report.per_module  # BN/ReLU no longer run
    pooled = []
    model[6].register_forward_hook(lambda m, i, o: pooled.append(i[0]))
    x = torch.randn(2, 3, 16, 16)
    model(x)
    torch.testing.assert_close(pooled[0], st.SpectralSequential(model[0], model[3])(x))


def test_keeps_device_dtype_training_flag_buffers_and_hooks():
    model = _vgg_like().double().train()
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(type(m).__name__))
    buffers = {name for name, _ in model.named_buffers()}
    st.convert(model, activation=None, beta=0.0)
    assert model.training and model[0].weight.dtype == torch.float64
    assert {name for name, _ in model.named_buffers()} == buffers
    model(torch.randn(1, 3, 16, 16, dtype=torch.float64))
    assert seen == ["SpectralConv2d"]


def test_density_mode_adds_a_threshold_buffer():
    model = _vgg_like()
    st.convert(model, density=0.1)
    assert torch.isnan(model[0].threshold)
    model(torch.randn(2, 3, 16, 16))
    assert torch.isfinite(model[0].threshold)


def test_filter_fn_and_skip_reasons():
    model = nn.Sequential(
        nn.Conv2d(4, 4, 3, groups=2),
        nn.Conv2d(4, 4, 3, dilation=2),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(4, 4, 1),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Conv2d(4, 4, 3, padding=1),
    )
    rows = st.plan(model, activation=None, filter_fn=lambda m, fqn: fqn != "5")
    reasons = {r.name: r.reason for r in rows}
    assert "padding_mode" in reasons["2"] and "filter_fn" in reasons["5"]
    assert [r.action for r in rows if r.name in "0134"] == ["spectral conv"] * 4  # grouped, dilated, 1x1 too
    x = torch.randn(2, 4, 12, 12)
    expected = model(x)
    st.convert(model, activation=None, beta=0.0, filter_fn=lambda m, fqn: fqn != "5")
    kinds = ["SpectralConv2d"] * 2 + ["Conv2d"] + ["SpectralConv2d"] * 2 + ["Conv2d"]
    assert [type(m).__name__ for m in model] == kinds
    torch.testing.assert_close(model(x), expected, atol=1e-4, rtol=1e-4)
    assert "module" in str(rows) and "reason" in rows.table()


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            x = -x
        return torch.relu(self.bn(self.conv(x)))


def test_untraceable_forward_falls_back_to_conv_only():
    model = _Untraceable()
    rows = st.plan(model)
    assert rows[0].action == "spectral conv" and "does not trace" in rows[0].reason
    st.convert(model)
    assert isinstance(model.conv, st.SpectralConv2d) and model.conv.activation is None
    model(torch.randn(1, 3, 8, 8))


def test_a_bare_conv_and_a_zoo_model():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    layer = st.convert(conv, activation=None, beta=0.0)
    assert isinstance(layer, st.SpectralConv2d) and layer.weight is conv.weight
    assert isinstance(st.revert(layer), nn.Conv2d)
    spec = st.models.lenet5(spectral=True)
    reverted = st.revert(spec)
    assert not any(isinstance(m, (st.SpectralConv2d, st.CompactMaxPool2d)) for m in reverted.modules())


@pytest.mark.parametrize(
    "call,error,words",
    [
        (lambda: st.convert("model"), TypeError, ["model", "Module"]),
        (lambda: st.convert(nn.Conv2d(1, 1, 3), beta=-1.0), ValueError, ["beta"]),
        (lambda: st.convert(nn.Conv2d(1, 1, 3), beta=0.5, density=0.1), ValueError, ["beta", "density"]),
        (lambda: st.convert(nn.Conv2d(1, 1, 3), density=0.0), ValueError, ["density", "(0, 1]"]),
        (lambda: st.convert(nn.Conv2d(1, 1, 3), density=2.0), ValueError, ["density"]),
        (lambda: st.plan(nn.Conv2d(1, 1, 3), activation="relu"), ValueError, ["activation"]),
        (lambda: st.convert(nn.Conv2d(1, 1, 3), filter_fn=3), TypeError, ["filter_fn"]),
        (lambda: st.revert(None), TypeError, ["model"]),
        (lambda: st.convert(nn.Conv2d(1, 1, 3), normalize="yes"), TypeError, ["normalize", "bool"]),
    ],
    ids=[
        "non-module",
        "negative beta",
        "beta and density",
        "density 0",
        "density 2",
        "activation",
        "filter",
        "revert",
        "normalize",
    ],
)
def test_bad_input(call, error, words):
    with pytest.raises(error) as info:
        call()
    assert all(w in str(info.value) for w in words)


class _Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv2(nn.functional.relu(self.conv(x))))


def test_plan_names_functional_calls_readably():
    rows = st.plan(_Functional(), beta=0.5)
    bypassed = [(r.name, r.kind) for r in rows if r.action == "bypassed"]
    assert bypassed == [("(root)", "torch.nn.functional.relu"), ("(root)", "torch.relu")]
    assert "0x" not in str(rows)


def test_a_layer_keeping_under_one_percent_in_training_warns_once():
    model = st.convert(_Functional(), beta=1e6)
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning, match="keeps 0.00% of its spectrum in training") as caught:
        model(x)
        model(x)
    assert len([w for w in caught if "keeps" in str(w.message)]) == 2  # once per layer


@pytest.mark.parametrize("name,size", [("alexnet", 64), ("squeezenet1_0", 48), ("convnext_tiny", 32)])
def test_convolutions_without_a_batchnorm_convert_exactly_at_the_default_beta(name, size):
    """The default beta counts standard deviations of a channel normalised by the BatchNorm
    a layer absorbs; without one it has no scale (an absolute 0.7 kept 0 % of the deep
    layers' spectra and the output did not depend on the input), so such a layer converts
    exactly and its ReLU, LayerNorm or GELU stays; density= or an explicit beta thresholds it."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=10).eval()
    rows = st.plan(model)
    convs = [r for r in rows if r.kind == "Conv2d"]
    assert convs and all(r.action == "spectral conv" and r.reason.startswith("exact") for r in convs)
    assert not [r for r in rows if r.action == "bypassed"]
    x = torch.randn(2, 3, size, size)  # two inputs
    with torch.no_grad():
        expected = model(x)
        st.convert(model)
        y = model(x)
    assert sum(isinstance(m, st.SpectralConv2d) for m in model.modules()) == len(convs)
    spread = (expected[0] - expected[1]).abs().max().item()
    assert (y[0] - y[1]).abs().max() > 0.5 * spread  # depends on its input as the original does
    # float32 round-off of the spectral products, far below what the input changes
    torch.testing.assert_close(y, expected, atol=1e-3 * spread, rtol=1e-4)


def test_an_explicit_beta_or_a_budget_thresholds_layers_without_a_batchnorm_and_the_plan_says_how():
    model = _Functional()
    absolute = {r.name: r.reason for r in st.plan(model, beta=0.5) if r.kind == "Conv2d"}
    assert all(reason.startswith("split tanh at an absolute beta") for reason in absolute.values())
    budget = {r.name: r.action for r in st.plan(model, density=0.1) if r.kind == "Conv2d"}
    assert set(budget.values()) == {"spectral layer"}
    linear = st.plan(model, activation=None)
    assert all(r.reason.startswith("exact") for r in linear)  # the default beta: exact in linear mode too
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    torch.testing.assert_close(st.convert(model, activation=None)(x), expected, atol=1e-5, rtol=1e-5)


def test_a_converted_model_runs_in_float64_after_double():
    """bfloat16 values in a block of two layers: the products run in float64."""
    torch.manual_seed(0)
    model = st.convert(_vgg_like()[:6], beta=0.0).train()
    x = torch.randn(2, 3, 8, 8)
    single = model(x)
    model.double()
    y = model(x.double())
    y.sum().backward()
    assert y.dtype == torch.float64 and model[0].weight.grad.dtype == torch.float64
    torch.testing.assert_close(y, single.double(), atol=2e-2, rtol=2e-2)  # bfloat16 values round either way


def test_plan_and_convert_say_what_hooks_see():
    """A layer inside a spectral block is called on the block's SpectralFlow, and a bypassed
    BatchNorm or ReLU is not called at all: the plan says so and convert warns."""
    model, seen = _vgg_like(), []
    model[0].register_forward_hook(lambda m, i, o: seen.append(type(o).__name__))
    model[1].register_forward_hook(lambda m, i, o: seen.append("bn"))
    model[3].register_full_backward_hook(lambda m, gi, go: seen.append("backward"))
    rows = {r.name: r.reason for r in st.plan(model, beta=0.5)}
    assert rows["0"].endswith(
        "module hooks: forward hooks see SpectralFlow objects (a block's spectral state), not tensors"
    )
    assert rows["1"].endswith("module hooks: none runs (bypassed)")
    assert rows["3"].endswith("module hooks: backward hooks do not run")
    with pytest.warns(
        UserWarning, match=r"0: forward hooks see SpectralFlow.*; 1: none runs .*; 3: backward"
    ):
        st.convert(model, beta=0.5)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    assert seen == ["SpectralFlow"]


def _pretrained(name):
    """A torchvision model whose BatchNorms carry statistics and affine of their own, as
    pretrained ones do."""
    model = _torchvision(name)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.2, 0.2)
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.num_batches_tracked.fill_(1000)
    return model


def _sgd_step(model, x):
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    nn.functional.cross_entropy(model(x), torch.arange(len(x))).backward()
    optimizer.step()


def test_a_converted_resnet_holds_each_batchnorm_once_with_the_originals_state_dict():
    """Issue 24: parameters() yields each BN weight and bias once (in the layer's norm),
    state_dict has the original's keys, the original's loads strictly and is used; the
    layers start from the BNs' own statistics; a copy trains independently."""
    original = _pretrained("resnet18")
    model = st.convert(_torchvision("resnet18"))
    assert list(model.state_dict()) == list(original.state_dict())
    ids = [id(p) for p in model.parameters()]
    assert len(ids) == len(set(ids)) == len(list(original.parameters()))
    model.load_state_dict(original.state_dict(), strict=True)
    layer, bn = model.layer1[0].conv1, original.layer1[0].bn1
    assert torch.equal(layer.norm.weight, bn.weight) and torch.equal(layer.norm.running_var, bn.running_var)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval()(x), st.convert(copy.deepcopy(original)).eval()(x), atol=0, rtol=0
        )

    twin = copy.deepcopy(model)
    for trained, other in ((twin, model), (model, twin)):
        before = [t.clone() for t in (*other.parameters(), *other.buffers())]
        moved = [t.clone() for t in trained.parameters()]
        _sgd_step(trained, x)
        after = [*other.parameters(), *other.buffers()]
        assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
        assert not all(torch.equal(a, b) for a, b in zip(moved, trained.parameters()))
        shown = trained.state_dict(keep_vars=True)["layer1.0.bn1.weight"]
        assert shown is trained.layer1[0].conv1.norm.weight  # its own, not the other's


def test_revert_gives_the_batchnorms_back_as_trained():
    model = st.convert(_pretrained("resnet18"))
    weight = model.layer1[0].conv1.norm.weight
    _sgd_step(model, torch.randn(2, 3, 32, 32))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    st.revert(model)
    bn = model.layer1[0].bn1
    assert type(bn) is nn.BatchNorm2d and bn.weight is weight and weight.requires_grad
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], atol=0, rtol=0, msg=key)


def test_a_printed_converted_resnet_shows_what_runs():
    """Issue 24: every module of a converted ResNet-18 runs but the Absorbed placeholders at
    the old names of the BatchNorms and ReLUs it absorbed (29 of them), which say so; the
    converted Sequential is no SpectralSequential."""
    model = st.convert(_torchvision("resnet18"))
    ran = set()
    for name, module in model.named_modules():
        module.register_forward_hook(lambda *args, name=name: ran.add(name))
    model(torch.randn(2, 3, 32, 32))
    idle = {name: module for name, module in model.named_modules() if name not in ran}
    assert all(isinstance(module, Absorbed) for module in idle.values())
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.ReLU)) for m in idle.values())
    assert len(idle) == 29 and "Absorbed(BatchNorm2d(64" in repr(model.layer1)
    with pytest.raises(RuntimeError, match="runs no more"):
        model.layer1[0].bn1(torch.randn(1, 64, 4, 4))
    downsample = model.layer2[0].downsample
    assert (
        type(downsample).__name__ == "ConvertedSequential"
        and type(downsample).__module__ == "spectriton.converted"
    )
    assert isinstance(downsample, nn.Sequential) and not isinstance(downsample, st.SpectralSequential)


@pytest.mark.parametrize("statistics", ["pretrained", "fresh"])
def test_an_uncalibrated_converted_model_evaluates_each_sample_alone(statistics):
    """Issue 28: converted and evaluated before any training step, each layer normalises
    with its BatchNorm's statistics (a fresh BN's: mean 0, variance 1), never the batch's.
    beta 0 and complex64 values: no keep decision or rounding hangs on the batch's round-off."""
    original = _pretrained("resnet18") if statistics == "pretrained" else _torchvision("resnet18")
    model = st.convert(original, beta=0.0, value_dtype=torch.complex64).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        together, alone = model(x), torch.cat([model(x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)  # float32 round-off, 17 layers


def test_eval_predictions_do_not_depend_on_the_batch_at_the_default_bfloat16_values():
    """Issue 28: trained a few steps at the defaults (bfloat16 values), a converted ResNet-18
    in eval mode gives each sample the output it gives alone. Rounding to bfloat16 there let
    batch-dependent float32 round-off flip roundings and keep decisions: 30 of 64 argmaxes
    changed between one batch and 64 single samples. Eval keeps nothing, so values stay float32."""
    torch.manual_seed(0)
    model = st.convert(_torchvision("resnet18")).train()
    x = torch.randn(16, 3, 32, 32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[:8]), torch.arange(8)).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        together, alone = model(x), torch.cat([model(x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)
