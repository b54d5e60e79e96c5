"""Block inputs rebuilt, not kept (issue 15, item 1): a block whose input is an earlier
block's output (straight or through a compact pool) keeps that block's compressed output
and the pool's window index, and rebuilds its input in backward."""

import copy
import io

import pytest
import torch
from conftest import keep
from torch import nn
from torch.autograd import gradcheck
from torch.func import functional_call

import spectriton as st
from spectriton import models, provenance
from spectriton.checkpointing import Checkpointed

D = torch.float64


def _saved(model, x):
    """Unique storages saved for backward (parameters excluded): [(nbytes, dense floating 4-D
    tensor other than the network's input)]."""
    seen = {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in seen and key not in params:
            dense = t.dim() == 4 and t.is_floating_point() and key != x.untyped_storage().data_ptr()
            seen[key] = (t.untyped_storage().nbytes(), dense)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return list(seen.values())


def _dense_share(model, x):
    saved = _saved(model, x)
    return sum(n for n, dense in saved if dense) / sum(n for n, _ in saved)


def _train(model, x, steps=2):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), torch.arange(x.shape[0]) % 10).backward()
        optimizer.step()


@pytest.mark.parametrize("name", models.MODELS)
def test_zoo_models_keep_no_dense_map_but_their_input(name):
    """Done when: dense floating 4-D saved tensors other than the network's input are at
    most 10 % of the saved bytes (density 0.1, after a few steps). They are none."""
    torch.manual_seed(0)
    model = models.build(name, spectral=True, density=0.1)
    size = models.input_size(name)
    x = torch.randn(4, 1, size, size)
    _train(model, x)
    assert _dense_share(model, x) == 0.0


POOLS = {"pool": lambda: st.CompactMaxPool2d(2), "overlapping": lambda: st.CompactMaxPool2d(3, 2, 1)}


def _two_blocks(dtype=torch.float32, pool="pool", activation="split_tanh", beta=0.3):
    """Two blocks joined by ``pool`` (a pool's name, ``"strided"``: the first block ends in
    a stride-2 layer, or None: straight)."""
    torch.manual_seed(0)
    options = dict(padding=1, beta=beta, activation=activation, dtype=dtype)
    stride = 2 if pool == "strided" else 1
    return nn.Sequential(
        st.SpectralSequential(
            st.SpectralConv2d(2, 4, 3, **options), st.SpectralConv2d(4, 4, 3, stride=stride, **options)
        ),
        POOLS[pool]() if pool in POOLS else nn.Identity(),
        st.SpectralSequential(st.SpectralConv2d(4, 3, 3, **options)),
    )


def _grads(model, x):
    x = x.clone().requires_grad_()
    y = model(x)
    return [y, *torch.autograd.grad(y.square().sum(), [x, *model.parameters()])]


@pytest.mark.parametrize(
    "pool", ["pool", "overlapping", None, "strided"], ids=["pool", "overlapping-pool", "straight", "strided"]
)
def test_rebuilt_input_gives_the_gradients_of_the_kept_one(pool, monkeypatch):
    """Bitwise: the rebuilt input is the tensor the forward read."""
    model = keep(_two_blocks(pool=pool), "spectra")  # small blocks that keep spectra
    x = torch.randn(3, 2, 9, 9)
    rebuilt = _grads(model, x)
    assert not any(dense for _, dense in _saved(model, x))
    monkeypatch.setattr(provenance, "lookup", lambda tensor: None)  # keep the input instead
    assert any(dense for _, dense in _saved(model, x))
    for a, b in zip(rebuilt, _grads(model, x), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("pool", ["pool", "strided"])
def test_gradcheck_across_a_block_boundary_with_a_pool(pool):
    model = _two_blocks(D, pool=pool, beta=0.0)  # beta 0: finite differences flip no keep decision
    names = [name for name, _ in model.named_parameters()]
    x = torch.randn(2, 2, 8, 8, dtype=D, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]

    def f(x, *params):
        return functional_call(model, dict(zip(names, params)), (x,))

    assert gradcheck(f, (x, *params))


def test_a_recipe_travels_with_its_tensor_only():
    """The block output carries its recipe; a detached alias does not, and a tensor that
    carries one copies and pickles without it (its parts are autograd's)."""
    model, x = _two_blocks(), torch.randn(2, 2, 8, 8)
    y = model[0](x)
    assert provenance.lookup(y) is not None
    assert provenance.lookup(y.detach()) is None
    with torch.no_grad():
        z = model[0](x)  # a recipe whose parts nothing keeps
    buffer = io.BytesIO()
    torch.save(z, buffer)
    buffer.seek(0)
    for again in (torch.load(buffer), copy.deepcopy(z)):
        torch.testing.assert_close(again, z, atol=0, rtol=0)
        assert provenance.lookup(again) is None


def test_a_modified_input_is_kept_not_rebuilt():
    model, x = _two_blocks(), torch.randn(2, 2, 8, 8)
    pooled = nn.Sequential(model[0], model[1])(x)
    pooled.mul_(2)  # in place: its recipe no longer holds
    assert provenance.lookup(pooled) is None
    reference = pooled.detach().clone().requires_grad_()
    model[2](reference).sum().backward()
    expected = [p.grad.clone() for p in model[2].parameters()]
    model.zero_grad()
    model[2](pooled.detach().requires_grad_()).sum().backward()
    for p, g in zip(model[2].parameters(), expected):
        torch.testing.assert_close(p.grad, g, atol=0, rtol=0)


def test_linear_blocks_and_checkpointed_blocks_keep_their_input():
    """A recipe holds only what autograd keeps anyway: without split tanh the values are
    not kept, and under checkpointing nothing is; the next block then keeps its input."""
    x = torch.randn(2, 2, 8, 8)
    linear = _two_blocks(activation=None)
    assert any(dense for _, dense in _saved(linear, x))

    model = _two_blocks()
    wrapped = nn.Sequential(Checkpointed(model[0]), model[1], model[2])
    assert any(dense for _, dense in _saved(wrapped, x))
    for a, b in zip(_grads(wrapped, x), _grads(model, x), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
