"""Every bad input tried, and the error it gets: (id, call, error type, words in message).

Messages must name the argument and what was expected.
"""

import pytest
import torch

import spectriton as st

conv = st.SpectralConv2d
x = torch.randn(2, 3, 9, 9)

CASES = [
    ("negative beta", lambda: conv(3, 4, 3, beta=-0.1), ValueError, ["beta", ">= 0"]),
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
    (
        "reflect padding_mode",
        lambda: conv(3, 4, 3, padding_mode="reflect"),
        ValueError,
        ["padding_mode", "zeros"],
    ),
    ("unknown value_dtype", lambda: conv(3, 4, 3, value_dtype=torch.int8), ValueError, ["value_dtype"]),
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
    (
        "kernel larger than padded input",
        lambda: conv(3, 4, 7)(torch.randn(1, 3, 5, 5)),
        ValueError,
        ["kernel_size"],
    ),
    ("empty block", lambda: st.SpectralSequential(), ValueError, ["SpectralConv2d"]),
    ("non-spectral layer in block", lambda: st.SpectralSequential(torch.nn.ReLU()), TypeError, ["layer 0"]),
    (
        "channel mismatch in block",
        lambda: st.SpectralSequential(conv(3, 4, 3), conv(5, 4, 3)),
        ValueError,
        ["layer 1"],
    ),
    (
        "stride inside a block",
        lambda: st.SpectralSequential(conv(3, 4, 3, stride=2), conv(4, 4, 3))(x),
        ValueError,
        ["stride", "layer 0"],
    ),
    ("pool stride differs", lambda: st.CompactMaxPool2d(2, stride=1), ValueError, ["stride", "kernel_size"]),
    ("pool window too big", lambda: st.CompactMaxPool2d(17), ValueError, ["kernel_size", "256"]),
    ("pool on 3-D input", lambda: st.CompactMaxPool2d(2)(torch.randn(3, 8, 8)), ValueError, ["input", "4-D"]),
    ("split tanh on real", lambda: st.SplitTanh()(torch.randn(3)), TypeError, ["complex"]),
    (
        "functional weight not 4-D",
        lambda: st.functional.spectral_conv2d(x, torch.randn(4, 3)),
        TypeError,
        ["weight"],
    ),
    (
        "saved_bytes of a non-module",
        lambda: st.memory.saved_bytes(lambda t: t, x),
        TypeError,
        ["model", "Module"],
    ),
]


@pytest.mark.parametrize("call,error,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error(call, error, words):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_unknown_backend_is_named(monkeypatch):
    monkeypatch.setenv("SPECTRITON_BACKEND", "cuda")
    with pytest.raises(ValueError, match="SPECTRITON_BACKEND"):
        conv(3, 4, 3)(x)
