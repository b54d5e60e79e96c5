"""Every public entry point, every bad input tried, and the error it gets.

Each row is (id, call, error type, words in message): the message must name the argument
and what was expected, and the error must be raised by spectriton itself (its innermost
frame is in the package), never a bare assert or a failure deep inside torch.
"""

from pathlib import Path

import pytest
import torch
from torch import nn

import spectriton as st
from spectriton import functional as fn
from spectriton import memory, models
from spectriton.geometry import LayerShape

PACKAGE = Path(st.__file__).resolve().parent
conv = st.SpectralConv2d
x = torch.randn(2, 3, 9, 9)
w = torch.randn(4, 3, 3, 3)
same3 = LayerShape((3, 3), (1, 1), (1, 1))
spectrum = torch.randn(2, 3, 9, 5, dtype=torch.complex64)
# grid (9, 9): 45 bins; 2 x 3 maps: a stream of 270 entries, 9 mask words
mask, offsets = torch.zeros(9, dtype=torch.int32), torch.zeros(46, dtype=torch.int64)


def block(**change):
    """``functional.spectral_block`` on a valid two-layer call, one argument changed."""
    args = dict(
        x=x,
        weights=[w, torch.randn(2, 4, 3, 3)],
        biases=[None, None],
        shapes=[same3, same3],
        betas=[0.5, 0.5],
        activations=["split_tanh", "split_tanh"],
    )
    return fn.spectral_block(**{**args, **change})


MODULES = [
    ("negative beta", lambda: conv(3, 4, 3, beta=-0.1), ValueError, ["beta", "[0, 3.403e+38]"]),
    ("huge beta", lambda: conv(3, 4, 3, beta=1e300), ValueError, ["beta", "float32"]),
    ("nan beta", lambda: conv(3, 4, 3, beta=float("nan")), ValueError, ["beta", "finite"]),
    ("string beta", lambda: conv(3, 4, 3, beta="0.5"), TypeError, ["beta"]),
    (
        "unknown activation",
        lambda: conv(3, 4, 3, activation="relu"),
        ValueError,
        ["activation", "split_tanh"],
    ),
    ("zero in_channels", lambda: conv(0, 4, 3), ValueError, ["in_channels", "positive"]),
    ("negative out_channels", lambda: conv(3, -1, 3), ValueError, ["out_channels", "positive"]),
    ("float channels", lambda: conv(3.0, 4, 3), TypeError, ["in_channels", "int"]),
    ("zero kernel_size", lambda: conv(3, 4, 0), ValueError, ["kernel_size", ">= 1"]),
    ("triple kernel_size", lambda: conv(3, 4, (3, 3, 3)), TypeError, ["kernel_size", "pair"]),
    ("zero stride", lambda: conv(3, 4, 3, stride=0), ValueError, ["stride", ">= 1"]),
    ("negative padding", lambda: conv(3, 4, 3, padding=-1), ValueError, ["padding", ">= 0"]),
    ("unknown padding string", lambda: conv(3, 4, 3, padding="full"), ValueError, ["padding", "same"]),
    (
        "same padding with stride",
        lambda: conv(3, 4, 3, stride=2, padding="same"),
        ValueError,
        ["same", "stride"],
    ),
    ("same padding, even kernel", lambda: conv(3, 4, 2, padding="same"), ValueError, ["same", "odd"]),
    (
        "reflect padding_mode",
        lambda: conv(3, 4, 3, padding_mode="reflect"),
        ValueError,
        ["padding_mode", "zeros"],
    ),
    ("unknown value_dtype", lambda: conv(3, 4, 3, value_dtype=torch.int8), ValueError, ["value_dtype"]),
    ("value_dtype as string", lambda: conv(3, 4, 3, value_dtype="bfloat16"), ValueError, ["value_dtype"]),
    ("string bias flag", lambda: conv(3, 4, 3, bias="no"), TypeError, ["bias", "bool"]),
    ("integer parameter dtype", lambda: conv(3, 4, 3, dtype=torch.int32), TypeError, ["dtype", "floating"]),
    ("complex parameter dtype", lambda: conv(3, 4, 3, dtype=torch.complex64), TypeError, ["dtype", "real"]),
    ("zero density", lambda: conv(3, 4, 3, density=0.0), ValueError, ["density", "(0, 1]"]),
    ("string density", lambda: conv(3, 4, 3, density="0.5"), TypeError, ["density"]),
    ("beta and density", lambda: conv(3, 4, 3, beta=0.5, density=0.5), ValueError, ["beta", "density"]),
    ("unknown keep policy", lambda: conv(3, 4, 3, keep="never"), ValueError, ["keep", "'spectra'"]),
    ("from_conv of a Linear", lambda: conv.from_conv(nn.Linear(3, 4)), TypeError, ["conv", "Conv2d"]),
    ("groups not dividing channels", lambda: conv(6, 4, 3, groups=4), ValueError, ["groups", "divisible"]),
    ("zero groups", lambda: conv(4, 4, 3, groups=0), ValueError, ["groups"]),
    ("zero dilation", lambda: conv(4, 4, 3, dilation=0), ValueError, ["dilation"]),
    ("3-D input", lambda: conv(3, 4, 3)(torch.randn(3, 9, 9)), ValueError, ["input", "4-D"]),
    ("wrong channels", lambda: conv(3, 4, 3)(torch.randn(2, 5, 9, 9)), ValueError, ["input", "3 channels"]),
    (
        "integer input",
        lambda: conv(3, 4, 3)(torch.ones(2, 3, 9, 9, dtype=torch.int64)),
        TypeError,
        ["input", "real"],
    ),
    (
        "complex input",
        lambda: conv(3, 4, 3)(torch.randn(2, 3, 9, 9, dtype=torch.complex64)),
        TypeError,
        ["input"],
    ),
    ("list input", lambda: conv(3, 4, 3)([1.0, 2.0]), TypeError, ["input", "Tensor"]),
    ("None input", lambda: conv(3, 4, 3)(None), TypeError, ["input", "Tensor"]),
    (
        "kernel larger than padded input",
        lambda: conv(3, 4, 7)(torch.randn(1, 3, 5, 5)),
        ValueError,
        ["kernel_size"],
    ),
    ("empty block", lambda: st.SpectralSequential(), ValueError, ["SpectralConv2d"]),
    ("non-spectral layer in block", lambda: st.SpectralSequential(nn.ReLU()), TypeError, ["layer 0"]),
    ("list of layers in block", lambda: st.SpectralSequential([conv(3, 4, 3)]), TypeError, ["layer 0"]),
    (
        "channel mismatch in block",
        lambda: st.SpectralSequential(conv(3, 4, 3), conv(5, 4, 3)),
        ValueError,
        ["layer 1"],
    ),
    (
        "mixed value_dtype in block",
        lambda: st.SpectralSequential(conv(3, 4, 3), conv(4, 4, 3, value_dtype=torch.bfloat16)),
        ValueError,
        ["value_dtype"],
    ),
    (
        "stride inside a block",
        lambda: st.SpectralSequential(conv(3, 4, 3, stride=2), conv(4, 4, 3))(x),
        ValueError,
        ["stride", "layer 0"],
    ),
    (
        "block input channels",
        lambda: st.SpectralSequential(conv(3, 4, 3))(torch.randn(2, 5, 9, 9)),
        ValueError,
        ["input", "3 channels"],
    ),
    ("dense block zero in_channels", lambda: st.SpectralDenseBlock(0, 4, 2), ValueError, ["in_channels"]),
    ("dense block zero growth", lambda: st.SpectralDenseBlock(3, 0, 2), ValueError, ["growth", "positive"]),
    ("dense block zero layers", lambda: st.SpectralDenseBlock(3, 4, 0), ValueError, ["layers", "positive"]),
    (
        "dense block even kernel",
        lambda: st.SpectralDenseBlock(3, 4, 2, 2),
        ValueError,
        ["kernel_size", "odd"],
    ),
    (
        "dense block pair kernel",
        lambda: st.SpectralDenseBlock(3, 4, 2, (3, 3)),
        TypeError,
        ["kernel_size", "int"],
    ),
    (
        "dense block activation",
        lambda: st.SpectralDenseBlock(3, 4, 2, activation="relu"),
        ValueError,
        ["activation"],
    ),
    ("dense block beta", lambda: st.SpectralDenseBlock(3, 4, 2, beta=-1.0), ValueError, ["beta"]),
    (
        "dense block input channels",
        lambda: st.SpectralDenseBlock(3, 4, 2)(torch.randn(2, 5, 9, 9)),
        ValueError,
        ["input", "3 channels"],
    ),
    ("dense block list input", lambda: st.SpectralDenseBlock(3, 4, 2)([1]), TypeError, ["input", "Tensor"]),
    ("pool padding over half", lambda: st.CompactMaxPool2d(2, padding=2), ValueError, ["padding", "half"]),
    ("pool zero stride", lambda: st.CompactMaxPool2d(2, stride=0), ValueError, ["stride"]),
    ("pool window too big", lambda: st.CompactMaxPool2d(17), ValueError, ["kernel_size", "256"]),
    (
        "avg pool on 3-D input",
        lambda: st.CompactAvgPool2d(2)(torch.randn(3, 8, 8, requires_grad=True)),
        ValueError,
        ["input", "4-D"],
    ),
    ("pool zero kernel", lambda: st.CompactMaxPool2d(0), ValueError, ["kernel_size", ">= 1"]),
    ("pool string kernel", lambda: st.CompactMaxPool2d("2"), TypeError, ["kernel_size", "int"]),
    ("pool on 3-D input", lambda: st.CompactMaxPool2d(2)(torch.randn(3, 8, 8)), ValueError, ["input", "4-D"]),
    (
        "pool on integer input",
        lambda: st.CompactMaxPool2d(2)(torch.ones(1, 1, 4, 4, dtype=torch.int64)),
        TypeError,
        ["input", "floating"],
    ),
    (
        "pool input smaller than window",
        lambda: st.CompactMaxPool2d(3)(torch.ones(1, 1, 2, 4)),
        ValueError,
        ["input", "kernel_size"],
    ),
    ("split tanh on real", lambda: st.SplitTanh()(torch.randn(3)), TypeError, ["complex"]),
    ("split tanh on a list", lambda: st.SplitTanh()([1.0]), TypeError, ["complex"]),
]

COMPRESSED = [
    (
        "from_dense of a real tensor",
        lambda: st.CompressedSpectrum.from_dense(spectrum.real, (9, 9)),
        TypeError,
        ["spectrum", "complex 4-D"],
    ),
    (
        "from_dense of a 3-D spectrum",
        lambda: st.CompressedSpectrum.from_dense(spectrum[0], (9, 9)),
        TypeError,
        ["spectrum", "4-D"],
    ),
    (
        "from_dense grid mismatch",
        lambda: st.CompressedSpectrum.from_dense(spectrum, (7, 7)),
        ValueError,
        ["spectrum", "grid (7, 7)"],
    ),
    (
        "from_dense zero grid",
        lambda: st.CompressedSpectrum.from_dense(spectrum, (0, 9)),
        ValueError,
        ["grid"],
    ),
    (
        "from_dense keep of another shape",
        lambda: st.CompressedSpectrum.from_dense(spectrum, (9, 9), keep=torch.ones(3, 3, dtype=torch.bool)),
        ValueError,
        ["keep", "bool"],
    ),
    (
        "from_dense float keep",
        lambda: st.CompressedSpectrum.from_dense(spectrum, (9, 9), keep=torch.ones(2, 3, 9, 5)),
        ValueError,
        ["keep", "bool"],
    ),
    (
        "from_dense int8 values",
        lambda: st.CompressedSpectrum.from_dense(spectrum, (9, 9), value_dtype=torch.int8),
        ValueError,
        ["value_dtype"],
    ),
    (
        "mask of the wrong shape",
        lambda: st.CompressedSpectrum(torch.zeros(0, 2), mask[:2], offsets, 2, 3, (9, 9)),
        ValueError,
        ["mask", "(9,)"],
    ),
    (
        "offsets that disagree with the mask",
        lambda: st.CompressedSpectrum(torch.zeros(1, 2), mask, offsets + 1, 2, 3, (9, 9)),
        ValueError,
        ["offsets", "popcount"],
    ),
    (
        "values shorter than the mask keeps",
        lambda: st.CompressedSpectrum(
            torch.zeros(1, 2),
            torch.tensor([3] + [0] * 8, dtype=torch.int32),
            torch.tensor([0] + [2] * 45),
            2,
            3,
            (9, 9),
        ),
        ValueError,
        ["values", "2 kept entries"],
    ),
    (
        "mask bits past the last entry",
        lambda: st.CompressedSpectrum(
            torch.zeros(0, 2), torch.tensor([0] * 8 + [-(2**31)], dtype=torch.int32), offsets, 2, 3, (9, 9)
        ),
        ValueError,
        ["past the last entry"],
    ),
    (
        "int32 offsets",
        lambda: st.CompressedSpectrum(torch.zeros(0, 2), mask, offsets.int(), 2, 3, (9, 9)),
        ValueError,
        ["offsets", "int64"],
    ),
    (
        "complex values",
        lambda: st.CompressedSpectrum(torch.zeros(0, dtype=torch.complex64), mask, offsets, 2, 3, (9, 9)),
        ValueError,
        ["values", "(nnz, 2)"],
    ),
    (
        "negative batch",
        lambda: st.CompressedSpectrum(torch.zeros(0, 2), mask, offsets, -2, 3, (9, 9)),
        TypeError,
        ["batch", ">= 0"],
    ),
]

FUNCTIONAL = [
    ("weight not 4-D", lambda: fn.spectral_conv2d(x, torch.randn(4, 3)), TypeError, ["weight", "4-D"]),
    ("weight a list", lambda: fn.spectral_conv2d(x, [[1.0]]), TypeError, ["weight", "4-D"]),
    (
        "integer weight",
        lambda: fn.spectral_conv2d(x, torch.ones(4, 3, 3, 3, dtype=torch.int64)),
        TypeError,
        ["weight", "real floating-point"],
    ),
    ("complex weight", lambda: fn.spectral_conv2d(x, w.to(torch.complex64)), TypeError, ["weight", "real"]),
    ("empty kernel", lambda: fn.spectral_conv2d(x, torch.randn(4, 3, 0, 3)), ValueError, ["weight", "empty"]),
    ("no output channels", lambda: fn.spectral_conv2d(x, torch.randn(0, 3, 3, 3)), ValueError, ["weight"]),
    (
        "bias of the wrong size",
        lambda: fn.spectral_conv2d(x, w, torch.randn(5)),
        ValueError,
        ["bias", "(4,)"],
    ),
    ("bias a list", lambda: fn.spectral_conv2d(x, w, [0.0] * 4), TypeError, ["bias", "tensor"]),
    (
        "input channels differ from weight",
        lambda: fn.spectral_conv2d(x, torch.randn(4, 2, 3, 3)),
        ValueError,
        ["input", "2 channels"],
    ),
    ("input not a tensor", lambda: fn.spectral_conv2d(None, w), TypeError, ["input", "Tensor"]),
    ("string stride", lambda: fn.spectral_conv2d(x, w, stride="1"), TypeError, ["stride", "int"]),
    ("unknown padding", lambda: fn.spectral_conv2d(x, w, padding="full"), ValueError, ["padding", "same"]),
    (
        "functional same padding with stride",
        lambda: fn.spectral_conv2d(x, w, stride=2, padding="same"),
        ValueError,
        ["same"],
    ),
    ("functional negative beta", lambda: fn.spectral_conv2d(x, w, beta=-1), ValueError, ["beta", "[0,"]),
    (
        "functional unknown activation",
        lambda: fn.spectral_conv2d(x, w, activation="gelu"),
        ValueError,
        ["activation"],
    ),
    (
        "functional unknown value_dtype",
        lambda: fn.spectral_conv2d(x, w, value_dtype=torch.float32),
        ValueError,
        ["value_dtype"],
    ),
    ("block lists of unequal length", lambda: block(betas=[0.5]), ValueError, ["betas 1", "one length"]),
    (
        "functional empty block",
        lambda: block(weights=[], biases=[], shapes=[], betas=[], activations=[]),
        ValueError,
        ["non-empty"],
    ),
    (
        "block activations a string",
        lambda: block(activations="split_tanh"),
        TypeError,
        ["activations", "list"],
    ),
    (
        "block channels do not chain",
        lambda: block(weights=[w, torch.randn(2, 5, 3, 3)]),
        ValueError,
        ["weights[1]", "4 in_channels"],
    ),
    (
        "block shape disagrees with kernel",
        lambda: block(shapes=[same3, LayerShape((5, 5), (2, 2), (1, 1))]),
        ValueError,
        ["shapes[1]", "kernel (3, 3)"],
    ),
    ("block shape not a LayerShape", lambda: block(shapes=[same3, (3, 1, 1)]), ValueError, ["shapes[1]"]),
    ("block negative beta", lambda: block(betas=[0.5, -1.0]), ValueError, ["beta", "[0,"]),
    ("block unknown activation", lambda: block(activations=[None, "relu"]), ValueError, ["activation"]),
    ("block bias size", lambda: block(biases=[torch.randn(3), None]), ValueError, ["biases[0]", "(4,)"]),
    ("block 3-D input", lambda: block(x=x[0]), ValueError, ["input", "4-D"]),
    ("block value_dtype", lambda: block(value_dtype=torch.int8), ValueError, ["value_dtype"]),
]

CONVERT = [
    ("convert a non-module", lambda: st.convert(3), TypeError, ["model", "Module"]),
    ("convert string beta", lambda: st.convert(nn.Conv2d(3, 4, 3), beta="x"), TypeError, ["beta"]),
    (
        "convert infinite beta",
        lambda: st.convert(nn.Conv2d(3, 4, 3), beta=float("inf")),
        ValueError,
        ["beta"],
    ),
    (
        "convert activation",
        lambda: st.convert(nn.Conv2d(3, 4, 3), activation="relu"),
        ValueError,
        ["activation"],
    ),
    (
        "convert filter_fn not callable",
        lambda: st.convert(nn.Conv2d(3, 4, 3), filter_fn=3),
        TypeError,
        ["filter_fn", "callable"],
    ),
    (
        "convert beta and density",
        lambda: st.convert(nn.Conv2d(3, 4, 3), beta=0.5, density=0.5),
        ValueError,
        ["beta", "density"],
    ),
    ("convert density above 1", lambda: st.convert(nn.Conv2d(3, 4, 3), density=1.5), ValueError, ["density"]),
    (
        "convert value_dtype",
        lambda: st.convert(nn.Conv2d(3, 4, 3), value_dtype=torch.float32),
        ValueError,
        ["value_dtype"],
    ),
    ("plan a non-module", lambda: st.plan("model"), TypeError, ["model", "Module"]),
    ("plan activation", lambda: st.plan(nn.Conv2d(3, 4, 3), activation="tanh"), ValueError, ["activation"]),
    ("plan zero density", lambda: st.plan(nn.Conv2d(3, 4, 3), density=0), ValueError, ["density"]),
    ("revert a non-module", lambda: st.revert(None), TypeError, ["model", "Module"]),
]

MEMORY = [
    (
        "saved_bytes of a non-module",
        lambda: memory.saved_bytes(lambda t: t, x),
        TypeError,
        ["model", "Module"],
    ),
    (
        "saved_bytes without inputs",
        lambda: memory.saved_bytes(conv(3, 4, 3)),
        TypeError,
        ["inputs", "tensors"],
    ),
    (
        "saved_bytes of a list",
        lambda: memory.saved_bytes(conv(3, 4, 3), [x]),
        TypeError,
        ["inputs", "tensors"],
    ),
    (
        "saved_bytes loss_fn not callable",
        lambda: memory.saved_bytes(conv(3, 4, 3), x, loss_fn=3),
        TypeError,
        ["loss_fn", "callable"],
    ),
    (
        "saved_bytes input the model refuses",
        lambda: memory.saved_bytes(conv(3, 4, 3), torch.randn(2, 5, 9, 9)),
        ValueError,
        ["input", "3 channels"],
    ),
    ("peak_step_bytes of a non-module", lambda: memory.peak_step_bytes(None, x, x), TypeError, ["model"]),
    (
        "peak_step_bytes of a list",
        lambda: memory.peak_step_bytes(conv(3, 4, 3), [1.0], x),
        TypeError,
        ["x", "Tensor"],
    ),
    (
        "peak_step_bytes on the meta device",
        lambda: memory.peak_step_bytes(conv(3, 4, 3), x.to("meta"), torch.zeros(2)),
        ValueError,
        ["x", "CPU or CUDA"],
    ),
    ("largest_batch fits not callable", lambda: memory.largest_batch(3), TypeError, ["fits", "callable"]),
    (
        "largest_batch zero start",
        lambda: memory.largest_batch(bool, start=0),
        ValueError,
        ["start", "positive"],
    ),
    ("largest_batch float start", lambda: memory.largest_batch(bool, start=1.5), TypeError, ["start", "int"]),
    (
        "largest_batch limit below start",
        lambda: memory.largest_batch(bool, start=8, limit=4),
        ValueError,
        ["limit", ">= start"],
    ),
    (
        "compare_table unknown baseline",
        lambda: memory.compare_table({"a": memory.MemoryReport(1)}, "b"),
        ValueError,
        ["baseline", "'b'"],
    ),
    ("compare_table of non-reports", lambda: memory.compare_table({"a": 1}, "a"), TypeError, ["reports"]),
]

MODELS = [
    ("unknown model", lambda: models.build("resnet"), ValueError, ["model", "lenet5"]),
    ("unknown option", lambda: models.build("lenet5", depth=3), TypeError, ["depth"]),
    (
        "model zero in_channels",
        lambda: models.build("lenet5", in_channels=0),
        ValueError,
        ["in_channels", "positive"],
    ),
    ("zero classes", lambda: models.build("alexnet", num_classes=0), ValueError, ["num_classes", "positive"]),
    ("float classes", lambda: models.build("vgg16", num_classes=2.5), TypeError, ["num_classes", "int"]),
    ("string spectral flag", lambda: models.build("lenet5", spectral="yes"), TypeError, ["spectral", "bool"]),
    ("model negative beta", lambda: models.build("lenet5", spectral=True, beta=-1), ValueError, ["beta"]),
    ("model density above 1", lambda: models.build("lenet5", density=2.0), ValueError, ["density"]),
    ("model beta and density", lambda: models.build("lenet5", beta=0.5, density=0.5), ValueError, ["beta"]),
    (
        "model value_dtype",
        lambda: models.build("lenet5", value_dtype=torch.int8),
        ValueError,
        ["value_dtype"],
    ),
    ("zero growth", lambda: models.build("densenet", growth=0), ValueError, ["growth", "positive"]),
    ("zero dense layers", lambda: models.build("densenet", layers=0), ValueError, ["layers", "positive"]),
    (
        "builder zero in_channels",
        lambda: models.lenet5(in_channels=0),
        ValueError,
        ["in_channels", "positive"],
    ),
    ("builder string spectral", lambda: models.alexnet(spectral="no"), TypeError, ["spectral", "bool"]),
    ("builder zero growth", lambda: models.densenet(spectral=True, growth=0), ValueError, ["growth"]),
]

CASES = MODULES + COMPRESSED + FUNCTIONAL + CONVERT + MEMORY + MODELS


@pytest.mark.parametrize("call,error,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error(call, error, words):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    raised_in = Path(info.traceback[-1].path).resolve()
    assert raised_in.is_relative_to(PACKAGE), f"raised in {raised_in}, not by spectriton"


def test_the_table_covers_every_public_entry_point():
    entry_points = {name for name in st.__all__ if name not in ("functional", "memory", "models")}
    entry_points |= {"from_conv", "from_dense", "spectral_conv2d", "spectral_block", "build"}
    entry_points |= {"saved_bytes", "peak_step_bytes", "largest_batch", "compare_table"}
    aliases = {"conv": "SpectralConv2d", "block": "spectral_block"}
    called = {aliases.get(name, name) for case in CASES for name in case[1].__code__.co_names}
    assert len({case[0] for case in CASES}) == len(CASES), "ids must be unique"
    assert entry_points <= called, f"no bad-input row for {entry_points - called}"


def test_unknown_backend_is_named(monkeypatch):
    monkeypatch.setenv("SPECTRITON_BACKEND", "cuda")
    with pytest.raises(ValueError, match="SPECTRITON_BACKEND"):
        conv(3, 4, 3)(x)


def test_triton_on_cpu_without_the_interpreter_says_how_to_fix_it(monkeypatch):
    monkeypatch.setenv("SPECTRITON_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        conv(3, 4, 3)(x)
