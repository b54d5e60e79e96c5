"""8-bit kept values (``value_dtype=torch.float8_e4m3fn``): backward keeps one byte a part,
bfloat16 carries the values and their gradients between layers, backward is exact for the
forward computed, and a checkpoint replays what its forward kept."""

import copy

import pytest
import torch
from conftest import keep, two_block_specnet
from torch import nn

import spectriton as st
import spectriton.reference as reference
from spectriton.memory import saved_bytes
from spectriton.numerics import as_carried, stored_as

E4M3 = torch.float8_e4m3fn


def _specnet(value_dtype, normalize: bool) -> nn.Module:
    return two_block_specnet(value_dtype, normalize, beta=0.3)


def _step(model, x):
    y = model(x)
    return y, torch.autograd.grad(y.square().sum(), [x, *model.parameters()])


def _rounded_to_eight_bits(monkeypatch):
    """bfloat16 values rounded as an 8-bit layer rounds them, kept as bfloat16."""
    for name in ("compact", "compact_whole"):
        original = getattr(reference, name)

        def rounded(*args, original=original):
            out = original(*args)
            out.values = stored_as(out.values, E4M3).to(out.values.dtype)
            return out

        monkeypatch.setattr(reference, name, rounded)


@pytest.mark.parametrize("policy", ["spectra", "input"])
@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "normalised"])
def test_backward_reads_back_exactly_what_the_forward_computed(policy, normalize, monkeypatch):
    """The same numbers kept as bfloat16 and as e4m3 give bitwise the same outputs and
    gradients, so e4m3 loses nothing backward needs, whether a block keeps its spectra or
    its input (rebuilt from the earlier block's e4m3 values) and replays."""
    monkeypatch.setenv("SPECTRITON_BACKEND", "torch")
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    eight = keep(_specnet(E4M3, normalize), policy)
    sixteen = keep(_specnet(torch.bfloat16, normalize), policy)
    sixteen.load_state_dict(eight.state_dict())
    y8, g8 = _step(eight, x)
    _rounded_to_eight_bits(monkeypatch)
    y16, g16 = _step(sixteen, x)
    assert torch.equal(y8, y16)
    for a, b in zip(g8, g16, strict=True):
        assert torch.equal(a, b)


def test_backward_keeps_e4m3_values_and_no_bfloat16_ones():
    model = keep(_specnet(E4M3, normalize=True), "spectra")
    x = torch.randn(2, 3, 9, 9)
    dtypes = []

    def pack(t):
        dtypes.append((t.dtype, t.dim()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum().backward()
    assert (E4M3, 2) in dtypes  # the values, (nnz, 2)
    assert (torch.bfloat16, 2) not in dtypes
    bf16 = keep(_specnet(torch.bfloat16, normalize=True), "spectra")
    bf16.load_state_dict(model.state_dict())
    values = saved_bytes(bf16, x).total - saved_bytes(model, x).total
    assert values > 0


def test_a_converted_model_keeps_fewer_bytes_and_trains():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    original = torchvision.models.resnet18(num_classes=10)
    x, target = torch.randn(4, 3, 32, 32), torch.arange(4)
    kept = {}
    for value_dtype in (torch.bfloat16, E4M3):
        model = st.convert(copy.deepcopy(original), beta=0.3, value_dtype=value_dtype)
        nn.functional.cross_entropy(model(x), target).backward()  # what each layer keeps is known
        kept[value_dtype] = saved_bytes(model, x).total
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert kept[E4M3] < 0.85 * kept[torch.bfloat16]


def test_values_beyond_the_range_saturate():
    """A linear layer's values may exceed e4m3's 448: they saturate, not turn to NaN."""
    layer = st.SpectralConv2d(2, 2, 3, padding=1, beta=0.5, value_dtype=E4M3)
    flow = layer(st.functional.SpectralFlow.start(1e4 * torch.randn(2, 2, 6, 6), [layer.shape]))
    assert flow.values.abs().max() == 448 and not flow.values.isnan().any()
    assert torch.equal(flow.stored.to(torch.bfloat16), flow.values)


def test_reading_8_bit_pairs_gives_torchs_conversion_of_every_code():
    """The CPU table of :func:`as_carried` against torch's own conversion, for all 65,536
    two-value codes (NaNs, subnormals and signed zeros included), and any other shape."""
    every = torch.arange(1 << 16, dtype=torch.int32).to(torch.uint16).view(E4M3).view(-1, 2)
    assert torch.equal(as_carried(every).view(torch.int16), every.to(torch.bfloat16).view(torch.int16))
    odd = every[:99, 0]  # not pairs: converted by torch
    assert torch.equal(as_carried(odd).view(torch.int16), odd.to(torch.bfloat16).view(torch.int16))
    assert as_carried(every[:0]).shape == (0, 2)


@pytest.mark.parametrize("value_dtype", [torch.bfloat16, E4M3])
def test_a_checkpointed_block_replays_what_its_forward_kept(value_dtype):
    """Under ``torch.utils.checkpoint`` a block input rebuilt from the block before keeps
    the same tensors in the forward and the replay (the checkpoint checks their shapes)."""
    model = _specnet(value_dtype, normalize=True)
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    plain = _step(model, x)
    y = torch.utils.checkpoint.checkpoint(model, x, use_reentrant=False)
    checkpointed = y, torch.autograd.grad(y.square().sum(), [x, *model.parameters()])
    torch.testing.assert_close(checkpointed, plain, atol=0, rtol=0)
