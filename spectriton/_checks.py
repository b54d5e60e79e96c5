"""Argument checks shared by the public entry points.

Every check raises ``ValueError`` or ``TypeError`` whose message names the argument and
says what was expected, so a bad call fails at the API boundary, not deep inside torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from spectriton.numerics import EIGHT_BIT

ACTIVATIONS = (None, "split_tanh")
VALUE_DTYPES = (None, torch.complex64, torch.bfloat16, torch.float16, EIGHT_BIT)


def describe(value: object) -> str:
    """What a caller passed, for an error message: a tensor's dtype and shape, else its type."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def pair(value: int | Sequence[int], name: str, *, minimum: int) -> tuple[int, int]:
    """Return ``(a, b)`` from an int or a pair of ints, each at least ``minimum``."""
    items = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(items, Sequence)
        or len(items) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in items)
    ):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(items) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(items[0]), int(items[1])


def conv_padding(
    padding: int | Sequence[int] | str, kernel: tuple[int, int], stride: tuple[int, int]
) -> tuple[int, int]:
    """``nn.Conv2d``'s padding: an int, a pair of ints, ``"valid"`` or ``"same"`` (stride 1,
    odd kernel)."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        if stride != (1, 1):
            raise ValueError("padding='same' needs stride 1, as in nn.Conv2d")
        if kernel[0] % 2 == 0 or kernel[1] % 2 == 0:
            raise ValueError(f"padding='same' needs an odd kernel_size, got {kernel}")
        return (kernel[0] // 2, kernel[1] // 2)
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int, a pair of ints, 'valid' or 'same', got {padding!r}")
    return pair(padding, "padding", minimum=0)


def positive_int(value: int, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


def boolean(value: bool, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def function(value: object, name: str, form: str) -> None:
    """``value`` must be callable as ``form`` describes."""
    if not callable(value):
        raise TypeError(f"{name} must be callable as {form}, got {type(value).__name__}")


def real_dtype(value: torch.dtype | None, name: str = "dtype") -> torch.dtype | None:
    """None or a real floating-point dtype (parameters of a convolution)."""
    if value is not None and (not isinstance(value, torch.dtype) or not value.is_floating_point):
        raise TypeError(f"{name} must be a real floating-point torch.dtype or None, got {value!r}")
    return value


MAX_BETA = torch.finfo(torch.float32).max  # spectra are float32: no magnitude lies above it


def beta(value: float) -> float:
    """A threshold: a real number in [0, MAX_BETA]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"beta must be a non-negative float, got {type(value).__name__}")
    if not 0 <= value <= MAX_BETA:
        raise ValueError(
            f"beta must be a finite float in [0, {MAX_BETA:.4g}] (the float32 range of the spectra), "
            f"got {value}"
        )
    return float(value)


class _DefaultBeta(float):
    """The default threshold, told apart from a beta the caller passed."""

    def __repr__(self) -> str:
        return repr(float(self))


DEFAULT_BETA = _DefaultBeta(0.7)  # SpecNet's, the zoo's
CONVERT_BETA = _DefaultBeta(0.3)  # convert's, in standard deviations of a normalised channel


def beta_or_density(beta_value: float, density_value: float | None) -> tuple[float, float | None]:
    """Check a ``beta=`` / ``density=`` pair: at most one of them given by the caller."""
    density_value = density(density_value)
    if density_value is not None:
        if not isinstance(beta_value, _DefaultBeta):
            raise ValueError("give either beta or density, not both")
        return 0.0, density_value
    return beta(beta_value), None


def density(value: float | None) -> float | None:
    """A kept fraction in (0, 1], or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"density must be a float in (0, 1] or None, got {type(value).__name__}")
    if not 0 < value <= 1:
        raise ValueError(f"density must be in (0, 1], got {value}")
    return float(value)


def activation(value: str | None) -> str | None:
    if value not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {value!r}")
    return value


KEEP = ("auto", "spectra", "input")


def keep(value: str) -> str:
    if value not in KEEP:
        raise ValueError(f"keep must be one of {KEEP}, got {value!r}")
    return value


def value_dtype(value: torch.dtype | None) -> torch.dtype | None:
    if value not in VALUE_DTYPES:
        names = ", ".join(str(v) for v in VALUE_DTYPES)
        raise ValueError(f"value_dtype must be one of {names}, got {value!r}")
    return None if value is torch.complex64 else value


def spatial_input(x: object, channels: int | None, name: str = "input") -> torch.Tensor:
    """A real floating-point NCHW tensor with ``channels`` channels (any, if None)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if x.is_complex() or not x.is_floating_point():
        raise TypeError(f"{name} must be a real floating-point tensor, got {x.dtype}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels (dim 1), got {x.shape[1]}")
    return x


def weight(w: object, name: str = "weight") -> torch.Tensor:
    """A real floating-point kernel ``(out_channels, in_channels, kh, kw)``, no dimension 0."""
    if not isinstance(w, torch.Tensor) or w.dim() != 4 or w.is_complex() or not w.is_floating_point():
        raise TypeError(
            f"{name} must be a real floating-point 4-D tensor (out_channels, in_channels, kh, kw), "
            f"got {describe(w)}"
        )
    if min(w.shape) == 0:
        raise ValueError(f"{name} must have no empty dimension, got shape {tuple(w.shape)}")
    return w


def bias(b: object, out_channels: int, name: str = "bias") -> torch.Tensor | None:
    """None, or a real floating-point tensor of shape ``(out_channels,)``."""
    if b is None:
        return None
    if not isinstance(b, torch.Tensor) or b.is_complex() or not b.is_floating_point():
        raise TypeError(f"{name} must be None or a real floating-point tensor, got {describe(b)}")
    if tuple(b.shape) != (out_channels,):
        raise ValueError(f"{name} must have shape ({out_channels},), got {tuple(b.shape)}")
    return b
