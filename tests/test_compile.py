"""torch.compile: the spectral ops are torch.library custom ops, so a spectral model is
captured as one graph (fullgraph=True) and gives the eager results (issue 17, class 10)."""

import copy
import dataclasses
import shutil

import pytest
import torch
import torch.nn.functional as F

import spectriton as st
from spectriton import models
from spectriton.functional import SpectralFlow, spectral_layer
from spectriton.geometry import BlockGeometry, LayerShape
from spectriton.ops.layer import layer
from spectriton.ops.output import output
from spectriton.ops.spec import LayerSpec, to_named


def _layer_args(compressed_source: bool, density=None, power=None, residual=False, crop=(), affine=False):
    """``spectriton::layer``'s arguments and keyword arguments; ``crop`` (offset, full and
    stride) makes the layer strided."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    bias = torch.randn(4, requires_grad=True)
    shapes = [LayerShape((3, 3), (1, 1), (1, 1))] * 2
    flow = SpectralFlow.start(x, shapes)
    geom = flow.geom
    if crop:
        geom = BlockGeometry(geom.size, geom.grid, crop[:2], crop[2:4], crop[4:])
    grid = geom.grid
    if compressed_source:  # the second layer of a block reads the first one's output
        flow = spectral_layer(flow, torch.randn(3, 3, 3, 3), None, (1, 1), 0.3, "split_tanh")
    spec = LayerSpec((3, 3), 0.5, True, None, (3,), ((0, 0),), density, strided=bool(crop))
    spectrum = None
    if residual:  # a residual connection's spectrum, added before the threshold
        spectrum = torch.randn(grid[0] * (grid[1] // 2 + 1), 2, 4, dtype=torch.complex64, requires_grad=True)
    scale_shift = torch.randn(2, 4, requires_grad=True) if affine else None
    names, named = to_named({"moments": power, "affine": scale_shift, "residual": spectrum})
    args = (spec.encode(), weight, bias, [flow.values], [flow.mask], [flow.offsets], named)
    numbers = {"beta": spec.beta, "density": spec.density}
    return args, {"names": names, **numbers, "geometry": geom.to_args(), "batch": 2, "recipe": []}


@pytest.mark.parametrize("compressed_source", [False, True], ids=["spatial-source", "compressed-source"])
@pytest.mark.parametrize("density", [None, 0.2], ids=["beta", "density"])
@pytest.mark.parametrize("power", [None, "calibrated", "uncalibrated"])
def test_layer_op_passes_opcheck(compressed_source, density, power):
    """Schema, fake implementation (data-dependent nnz), autograd registration and AOT
    dispatch with dynamic shapes agree with the real op."""
    if power is not None:
        power = (
            torch.tensor([[0.5], [2.0]]).repeat(1, 4)
            if power == "calibrated"
            else torch.full((2, 4), float("nan"))
        )
    torch.library.opcheck(layer, *_layer_args(compressed_source, density, power))


@pytest.mark.parametrize("compressed_source", [False, True], ids=["spatial-source", "compressed-source"])
def test_strided_layer_op_passes_opcheck(compressed_source):
    """A strided layer's output lies on its output's grid (crop: offset, full, stride)."""
    torch.library.opcheck(layer, *_layer_args(compressed_source, crop=(2, 2, 8, 8, 2, 2)))


@pytest.mark.parametrize("power", [None, "calibrated"])
def test_layer_op_with_a_residual_passes_opcheck(power):
    power = None if power is None else torch.tensor([[0.5], [2.0]]).expand(2, 4).contiguous()
    torch.library.opcheck(layer, *_layer_args(True, None, power, residual=True))


@pytest.mark.parametrize("crop", [(), (2, 2, 8, 8, 2, 2)], ids=["plain", "strided"])
def test_layer_op_with_an_affine_passes_opcheck(crop):
    power = torch.tensor([[0.5], [2.0]]).expand(2, 4).contiguous()
    torch.library.opcheck(layer, *_layer_args(True, None, power, crop=crop, affine=True))


def test_output_op_passes_opcheck():
    args, kwargs = _layer_args(True)
    values, mask, offsets, *_ = layer(*args, **kwargs)
    values = values.detach().requires_grad_()
    geom = BlockGeometry(size=(8, 8), grid=(10, 10), offset=(2, 2), full=(8, 8), stride=(1, 1))
    options = {"batch": 2, "channels": 4, "geometry": geom.to_args(), "dtype": torch.float32}
    options |= {"channels_last": False, "keep_values": True}
    torch.library.opcheck(output, (values, mask, offsets, None), options)


def test_layer_and_output_ops_with_eight_bit_values_pass_opcheck():
    """An 8-bit layer returns its values as bfloat16 and as the 8-bit ones it keeps (the
    same numbers); the output op keeps the 8-bit ones. (opcheck's schema and AOT tests do
    arithmetic on every output, which float8 has not on CPU; compiling a step runs them.)"""
    checks = ("test_autograd_registration", "test_faketensor")
    args, kwargs = _layer_args(True)
    spec = LayerSpec.decode(args[0], kwargs["beta"], kwargs["density"])
    args = (dataclasses.replace(spec, value_dtype=torch.float8_e4m3fn).encode(), *args[1:])
    torch.library.opcheck(layer, args, kwargs, test_utils=checks)
    values, mask, offsets, _, _, stored = layer(*args, **kwargs)
    assert values.dtype == torch.bfloat16 and stored.dtype == torch.float8_e4m3fn
    assert torch.equal(stored.to(torch.bfloat16), values)
    geom = BlockGeometry(size=(8, 8), grid=(10, 10), offset=(2, 2), full=(8, 8), stride=(1, 1))
    options = {"batch": 2, "channels": 4, "geometry": geom.to_args(), "dtype": torch.float32}
    options |= {"channels_last": False, "keep_values": True}
    inputs = (values.detach().requires_grad_(), mask, offsets, stored.detach())
    torch.library.opcheck(output, inputs, options, test_utils=checks)


def _train_step(model, x, y):
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    module = getattr(model, "_orig_mod", model)  # what torch.compile wraps
    return loss.detach(), {name: p.grad for name, p in module.named_parameters() if p.grad is not None}


def _compare_compiled(model, x, y, backend="aot_eager", steps=1):
    """Train ``model`` compiled (fullgraph) and a copy eagerly; losses, gradients and buffers
    must agree at every step."""
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (model, eager)]
    for _ in range(steps):
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss, grads = _train_step(compiled, x, y)
        loss_ref, grads_ref = _train_step(eager, x, y)
        torch.testing.assert_close(loss, loss_ref)
        assert grads.keys() == grads_ref.keys()
        for name in grads:
            torch.testing.assert_close(grads[name], grads_ref[name], atol=1e-6, rtol=1e-5, msg=name)
        for optimizer in optimizers:
            optimizer.step()
    for (name, a), b in zip(model.named_buffers(), eager.buffers()):
        torch.testing.assert_close(a, b, equal_nan=True, msg=name)
    return compiled, eager


def _batch(size=28, channels=1, n=8):
    torch.manual_seed(1)
    return torch.randn(n, channels, size, size), torch.randint(0, 10, (n,))


def test_speclenet_training_step_compiles_whole_in_beta_mode():
    torch.manual_seed(0)
    _compare_compiled(models.lenet5(spectral=True, beta=0.5), *_batch(), steps=2)


def test_speclenet_in_density_mode_compiles_whole_in_train_and_eval():
    """The quantile runs inside the op: a density budget breaks no graph either, and the
    running threshold it calibrates is the same as eager's."""
    torch.manual_seed(0)
    model = models.lenet5(spectral=True, density=0.2)
    x, y = _batch()
    compiled, eager = _compare_compiled(model, x, y, steps=2)
    compiled.eval(), eager.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x))


def test_converted_model_training_step_compiles_whole():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = st.convert(torchvision.models.resnet18(num_classes=10))
    _compare_compiled(model, *_batch(32, 3, 4))


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_speclenet_compiles_with_inductor(device):
    """On CUDA (bench/gpu_check.sh) the Triton kernels run inside the compiled graph."""
    if device == "cpu" and shutil.which("cc") is None:
        pytest.skip("inductor needs a C compiler on CPU")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    torch.manual_seed(0)
    x, y = _batch()
    _compare_compiled(models.lenet5(spectral=True).to(device), x.to(device), y.to(device), backend="inductor")


def test_a_second_batch_size_recompiles_whole():
    """The layer spec holds no size that follows the input (those travel as plain op
    arguments), so a new batch size compiles again, whole, rather than failing."""
    torch.manual_seed(0)
    model = models.lenet5(spectral=True, beta=0.5)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for n in (8, 5):
        x, _ = _batch(n=n)
        torch.testing.assert_close(compiled(x), model(x))


def test_the_exact_drop_in_compiles_whole_with_its_exact_zeros():
    """A linear layer sets its output to the bias where its receptive field is all zeros,
    in place and outside autograd: compiled, it gives eager's outputs and gradients, and
    ``nn.Conv2d``'s exact values there."""
    torch.manual_seed(0)
    layer = st.SpectralConv2d(3, 4, 3, padding=1)
    x = torch.relu(torch.randn(2, 3, 12, 12))
    x[0, :, 4:] = 0
    x.requires_grad_()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    got, want = compiled(x), layer(x)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    dead = F.conv2d(x, layer.weight, layer.bias, padding=1) == layer.bias.view(-1, 1, 1)
    assert dead.any() and torch.equal(got[dead], layer.bias.view(-1, 1, 1).expand_as(got)[dead])
    grads = [torch.autograd.grad(y.relu().sum(), [x, layer.weight]) for y in (got, want)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
