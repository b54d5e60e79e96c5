"""The layers compose with torch.compile, activation checkpointing, saved-tensor hooks
(CPU offloading) and state_dict serialisation, on both backends."""

import gc
import io

import pytest
import torch
from conftest import keep
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.checkpoint import checkpoint

import spectriton as st
from spectriton.memory import saved_bytes


def _block(density=None):
    torch.manual_seed(0)
    beta = 0.0 if density else 0.3
    return st.SpectralSequential(
        st.SpectralConv2d(2, 4, 3, padding=1, beta=beta, density=density, activation="split_tanh"),
        st.SpectralConv2d(4, 4, 3, padding=1, beta=0.3, activation="split_tanh"),
    )


def _outputs_and_grads(model, x):
    x = x.clone().requires_grad_()
    y = model(x)
    return y, torch.autograd.grad(y.square().sum(), [x, *model.parameters()])


def _assert_same(a, b, atol=1e-6):
    (ya, ga), (yb, gb) = a, b
    torch.testing.assert_close(yb, ya, atol=atol, rtol=1e-5)
    for p, q in zip(ga, gb, strict=True):
        torch.testing.assert_close(q, p, atol=10 * atol, rtol=1e-4)


class _Checkpointed(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        return checkpoint(self.block, x, use_reentrant=False)


def _weak_flows(block):
    """Weak references to the storage of every compressed tensor the block's layers output
    (autograd may keep a saved output as another tensor object on the same storage)."""
    refs = []

    def hook(_module, _inputs, flow):
        refs.extend(StorageWeakRef(t.untyped_storage()) for t in (flow.values, flow.mask, flow.offsets))

    for layer in block:
        layer.register_forward_hook(hook)
    return refs


@pytest.mark.parametrize(
    "compiler", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)], ids=["aot_eager", "inductor"]
)
def test_torch_compile_gives_eager_outputs_and_gradients(compiler, monkeypatch):
    monkeypatch.setenv("SPECTRITON_BACKEND", "torch")
    model = nn.Sequential(_block(), st.CompactMaxPool2d(2))
    x = torch.randn(2, 2, 8, 8)
    eager = _outputs_and_grads(model, x)
    torch.compiler.reset()
    compiled = torch.compile(model, backend=compiler, fullgraph=True)  # one graph, no breaks
    try:
        _assert_same(eager, _outputs_and_grads(compiled, x))
        _assert_same(eager, _outputs_and_grads(compiled, x))  # a second call reuses the graphs
    finally:
        torch.compiler.reset()


def test_checkpoint_gives_the_same_results_and_keeps_nothing_of_the_block():
    block = keep(_block(), "spectra")  # the block keeps its spectra
    x = torch.randn(2, 2, 9, 9)
    plain = _outputs_and_grads(block, x)
    wrapped = _Checkpointed(block)
    _assert_same(plain, _outputs_and_grads(wrapped, x))
    assert saved_bytes(wrapped, x).total < saved_bytes(block, x).total / 4
    refs = _weak_flows(block)
    y = wrapped(x.clone().requires_grad_())
    gc.collect()
    assert refs and all(ref.expired() for ref in refs)  # no tensor hides outside save_for_backward
    y.sum().backward()
    assert all(p.grad is not None for p in block.parameters())


def test_without_checkpoint_the_compressed_outputs_live_until_backward_only():
    block = _block()
    refs = _weak_flows(block)
    y = block(torch.randn(2, 2, 9, 9))
    gc.collect()
    assert not any(ref.expired() for ref in refs)
    y.sum().backward()
    del y
    gc.collect()
    assert all(ref.expired() for ref in refs)


@pytest.mark.parametrize("hooks", ["save_on_cpu", "copy"])
def test_saved_tensor_hooks_see_everything_backward_needs(hooks):
    """Every saved tensor is handed back as a copy: backward must read only those."""
    block = _block()
    x = torch.randn(2, 2, 9, 9)
    plain = _outputs_and_grads(block, x)
    if hooks == "save_on_cpu":
        context = torch.autograd.graph.save_on_cpu(pin_memory=False)
    else:
        context = torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t)
    with context:
        _assert_same(plain, _outputs_and_grads(block, x))


def test_state_dict_round_trip_across_backends(monkeypatch):
    pytest.importorskip("spectriton.kernels")
    monkeypatch.setenv("SPECTRITON_BACKEND", "torch")
    model = nn.Sequential(_block(density=0.4), st.CompactMaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(4, 2, 8, 8)), torch.tensor([0, 1, 2, 0])).backward()
        optimizer.step()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(123)
    loaded = nn.Sequential(
        st.SpectralSequential(
            st.SpectralConv2d(2, 4, 3, padding=1, density=0.4, activation="split_tanh"),
            st.SpectralConv2d(4, 4, 3, padding=1, beta=0.3, activation="split_tanh"),
        ),
        st.CompactMaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.isfinite(loaded[0][0].threshold)  # the density threshold travels too
    model.eval(), loaded.eval()
    x = torch.randn(3, 2, 8, 8)
    expected = model(x)
    assert torch.equal(loaded(x), expected)
    monkeypatch.setenv("SPECTRITON_BACKEND", "triton")
    torch.testing.assert_close(loaded(x), expected, atol=1e-5, rtol=1e-5)


def test_fx_traces_a_converted_model_and_extracts_its_features():
    """Issue 28: ``torch.fx.symbolic_trace`` and torchvision's ``create_feature_extractor``
    rejected converted models (the input check met fx Proxies). Each spectral block is now
    one node of the graph, and the traced model gives the model's outputs and gradients."""
    torchvision = pytest.importorskip("torchvision")
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(0)
    model = st.convert(torchvision.models.resnet18(num_classes=10))
    x = torch.randn(2, 3, 32, 32)
    traced = torch.fx.symbolic_trace(model)
    assert any(node.target is st.blocks.run_layers for node in traced.graph.nodes)
    model(x)  # calibrates the normalised layers, which the traced copy shares
    for module in (traced, model):
        module.zero_grad()
        module(x).square().sum().backward()
    traced_grads = {name: p.grad for name, p in traced.named_parameters()}
    assert traced_grads.keys() == dict(model.named_parameters()).keys()
    for name, p in model.named_parameters():
        torch.testing.assert_close(traced_grads[name], p.grad, rtol=1e-5, atol=1e-6)
    model.eval()
    features = create_feature_extractor(model, {"layer2": "mid", "fc": "logits"})(x)
    seen = []
    model.layer2.register_forward_hook(lambda module, args, out: seen.append(out))
    model(x)
    torch.testing.assert_close(features["mid"], seen[0])
    assert features["logits"].shape == (2, 10)
