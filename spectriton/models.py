"""The paper's four networks (appendix Tables 1, 3, 4, 5), each spatial and Spec.

Every builder takes ``(spectral=False, beta=0.7, density=None, in_channels=1,
num_classes=10)``. The spatial original uses ``nn.Conv2d``, ``nn.BatchNorm2d``,
``nn.ReLU`` and ``nn.MaxPool2d`` as PyTorch ships them; the Spec version has the same
widths, one spectral block (one FFT in, one IFFT out) per resolution, split tanh and the
compact pool, and no batch norm (the paper's Spec columns have none) unless
``normalize=True``: then each Spec layer whose spatial twin has BatchNorm is normalised
as BatchNorm does, with its affine, at beta 0.3 standard deviations of a channel where
``beta`` is left out (``convert``'s), the others plain at 0.7 (README, "The zoo
normalised", has the measurements). Its kept spectral values are stored as bfloat16
pairs unless ``value_dtype=torch.complex64`` asks for full precision (README, Defaults,
has the measurements behind this). Both are
``nn.Sequential(features, classifier)``, so memory tables read ``features.0.0`` etc.
LeNet takes 28 x 28 inputs, the others 32 x 32.

:data:`CONVERTED` names models users already have, built from torchvision, whose Spec form
is what :func:`spectriton.convert` makes of them (at its defaults where ``beta``,
``density`` and ``value_dtype`` are left out), for ``spectriton train`` and ``compare``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from spectriton import _checks
from spectriton.conv import SpectralConv2d, SpectralDenseBlock, SpectralSequential
from spectriton.pooling import CompactMaxPool2d

MODELS = ("lenet5", "alexnet", "vgg16", "densenet")
NORMALIZE = False  # the Spec forms' default for normalize (the paper's: no normalisation)
WITH_BATCHNORM = ("alexnet", "vgg16", "densenet")  # spatial forms with BatchNorm: normalize changes them
CONVERTED = ("resnet18",)  # torchvision's, converted (needs torchvision)


def _spec_options(spectral, beta, density, value_dtype, in_channels, num_classes, normalize) -> dict:
    """Check the options every builder takes; return the keyword arguments of its Spec
    layers (``normalize`` for :func:`_normalised` to apply where the spatial form has BN)."""
    _checks.boolean(spectral, "spectral")
    _checks.boolean(normalize, "normalize")
    _checks.positive_int(in_channels, "in_channels")
    _checks.positive_int(num_classes, "num_classes")
    default = beta is _checks.DEFAULT_BETA and density is None
    beta, density = _checks.beta_or_density(beta, density)
    return dict(
        beta=_checks.DEFAULT_BETA if default else beta,  # told apart by _normalised
        density=density,
        activation="split_tanh",
        value_dtype=_checks.value_dtype(value_dtype),
        normalize=normalize,
    )


def _normalised(options: dict, batch_norm: bool) -> dict:
    """A Spec layer's options where the spatial layer has BatchNorm (``batch_norm``): with
    ``normalize`` it is normalised as BatchNorm does, with its affine, and its default beta
    is ``convert``'s (0.3 standard deviations of a channel); elsewhere plain."""
    normalize = options["normalize"] and batch_norm
    beta = _checks.CONVERT_BETA if normalize and options["beta"] is _checks.DEFAULT_BETA else options["beta"]
    return {**options, "beta": beta, "normalize": normalize, "affine": normalize}


def _network(features: list[nn.Module], classifier: list[nn.Module]) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(features=nn.Sequential(*features), classifier=nn.Sequential(nn.Flatten(), *classifier))
    )


def _conv_stages(stages, in_channels, kernel, padding, spectral, batch_norm, options):
    """Convolution stages, each followed by a 2 x 2 max pool.

    ``stages`` lists the widths of each stage; ``batch_norm[i]`` says whether the
    spatial stage ``i`` has BN. Spec: one spectral block per stage, its layers normalised
    where the spatial stage has BN and ``options`` ask for it (:func:`_normalised`).
    """
    layers: list[nn.Module] = []
    channels = in_channels
    for widths, bn in zip(stages, batch_norm):
        if spectral:
            block = []
            for width in widths:
                layer_options = _normalised(options, bn)
                block.append(SpectralConv2d(channels, width, kernel, padding=padding, **layer_options))
                channels = width
            layers += [SpectralSequential(*block), CompactMaxPool2d(2)]
            continue
        for width in widths:
            layers.append(nn.Conv2d(channels, width, kernel, padding=padding))
            layers += [nn.BatchNorm2d(width)] if bn else []
            layers.append(nn.ReLU(inplace=True))
            channels = width
        layers.append(nn.MaxPool2d(2))
    return layers, channels


def _mlp(sizes: list[int]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
    return layers[:-1]


def lenet5(
    spectral: bool = False,
    beta: float = _checks.DEFAULT_BETA,
    density: float | None = None,
    in_channels: int = 1,
    num_classes: int = 10,
    *,
    value_dtype: torch.dtype | None = torch.bfloat16,
    normalize: bool = NORMALIZE,
) -> nn.Sequential:
    """LeNet-5 (Table 3), 28 x 28 input: conv 6@5x5, pool, conv 16@5x5, pool, FC 120, 80.

    Spec: 28 -> FFT 32 -> 24 -> pool 12 -> FFT 16 -> 8 -> pool 4 (the table's "15 x 15"
    grid for the second block is 12 + 5 - 1 = 16 here, DESIGN.md section 2).
    """
    options = _spec_options(spectral, beta, density, value_dtype, in_channels, num_classes, normalize)
    features, channels = _conv_stages([[6], [16]], in_channels, 5, 0, spectral, [False, False], options)
    return _network(features, _mlp([channels * 4 * 4, 120, 80, num_classes]))


def alexnet(
    spectral: bool = False,
    beta: float = _checks.DEFAULT_BETA,
    density: float | None = None,
    in_channels: int = 1,
    num_classes: int = 10,
    *,
    value_dtype: torch.dtype | None = torch.bfloat16,
    normalize: bool = NORMALIZE,
) -> nn.Sequential:
    """AlexNet-style (Table 4), 32 x 32 input: 24@3x3, pool, 96@3x3, pool, 192, 192, 96
    @3x3 (with BN in the spatial form, as the table has), pool, FC 1024, 1024.

    Spec: blocks on grids 34, 18 and 10, the last holding three layers.
    """
    options = _spec_options(spectral, beta, density, value_dtype, in_channels, num_classes, normalize)
    stages = [[24], [96], [192, 192, 96]]
    features, channels = _conv_stages(stages, in_channels, 3, 1, spectral, [False, False, True], options)
    return _network(features, _mlp([channels * 4 * 4, 1024, 1024, num_classes]))


def vgg16(
    spectral: bool = False,
    beta: float = _checks.DEFAULT_BETA,
    density: float | None = None,
    in_channels: int = 1,
    num_classes: int = 10,
    *,
    value_dtype: torch.dtype | None = torch.bfloat16,
    normalize: bool = NORMALIZE,
) -> nn.Sequential:
    """VGG-style (Table 5), 32 x 32 input: 64 x2, pool, 128 x2, pool, 256 x3, pool, FC 512;
    every spatial conv with BN.

    The table's Spec column shows two 256-wide layers in the last stage where the spatial
    column has three; both forms here have three, so that the comparison is between the
    same widths and depth (what the paper says it compares) and the memory ratio measures
    the representation, not a missing layer.
    """
    options = _spec_options(spectral, beta, density, value_dtype, in_channels, num_classes, normalize)
    stages = [[64, 64], [128, 128], [256, 256, 256]]
    features, channels = _conv_stages(stages, in_channels, 3, 1, spectral, [True] * 3, options)
    return _network(features, _mlp([channels * 4 * 4, 512, num_classes]))


class DenseLayer(nn.Module):
    """Spatial DenseNet-B layer as Table 1 lists it: 1x1 conv (4 x growth), BN, ReLU,
    3x3 conv (growth), BN, ReLU; its output is concatenated to its input."""

    def __init__(self, in_channels: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth),
            nn.ReLU(inplace=True),
            nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False),
            nn.BatchNorm2d(growth),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


def densenet(
    spectral: bool = False,
    beta: float = _checks.DEFAULT_BETA,
    density: float | None = None,
    in_channels: int = 1,
    num_classes: int = 10,
    *,
    growth: int = 64,
    layers: int = 6,
    value_dtype: torch.dtype | None = torch.bfloat16,
    normalize: bool = NORMALIZE,
) -> nn.Sequential:
    """DenseNet-style (Table 1), 32 x 32 input: 3x3 conv (64, BN, ReLU), pool, one dense
    block of 6 layers, global average pool, FC.

    Choices where the table is silent: the stem has 64 channels; growth is 64, the
    Spec column's kernel count, in both forms; the spatial layers are DenseNet-B
    (1x1 bottleneck of 4 x growth, then 3x3), as the table's rows say. The Spec block has
    no 1x1 layers (the table's Spec column has none, and a 1x1 product gains nothing in
    the spectral domain): each layer is a 3x3 spectral layer reading the block input and
    every earlier output, between one FFT and one IFFT.
    """
    options = _spec_options(spectral, beta, density, value_dtype, in_channels, num_classes, normalize)
    _checks.positive_int(growth, "growth")
    _checks.positive_int(layers, "layers")
    stem = 64
    if spectral:
        normalised = _normalised(options, True)  # every spatial convolution has BN
        features: list[nn.Module] = [
            SpectralSequential(SpectralConv2d(in_channels, stem, 3, padding=1, **normalised)),
            CompactMaxPool2d(2),
            SpectralDenseBlock(stem, growth, layers, 3, **normalised),
        ]
    else:
        features = [nn.Conv2d(in_channels, stem, 3, padding=1), nn.BatchNorm2d(stem), nn.ReLU(inplace=True)]
        features.append(nn.MaxPool2d(2))
        features += [DenseLayer(stem + i * growth, growth) for i in range(layers)]
    features.append(nn.AdaptiveAvgPool2d(1))
    return _network(features, [nn.Linear(stem + layers * growth, num_classes)])


def converted(
    name: str,
    spectral: bool = False,
    beta: float = _checks.CONVERT_BETA,
    density: float | None = None,
    value_dtype: torch.dtype | None = None,
    in_channels: int = 1,
    num_classes: int = 10,
) -> nn.Module:
    """torchvision's model ``name`` (one of :data:`CONVERTED`) with its stem taking
    ``in_channels``, freshly initialised; ``spectral``: as :func:`spectriton.convert`
    makes it with these options."""
    import torchvision

    from spectriton.convert import convert

    _checks.boolean(spectral, "spectral")
    _checks.positive_int(in_channels, "in_channels")
    model = getattr(torchvision.models, name)(num_classes=_checks.positive_int(num_classes, "num_classes"))
    if in_channels != model.conv1.in_channels:
        stem = model.conv1
        model.conv1 = nn.Conv2d(
            in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False
        )
    if not spectral:
        return model
    return convert(model, beta=beta, density=density, value_dtype=value_dtype)


def build(name: str, **options) -> nn.Module:
    """One of :data:`MODELS` or :data:`CONVERTED` by name, with the builder's options."""
    if name in CONVERTED:
        return converted(name, **options)
    if name not in MODELS:
        raise ValueError(f"model must be one of {MODELS + CONVERTED}, got {name!r}")
    return globals()[name](**options)


def input_size(name: str) -> int:
    """Side of the square input a model takes: 28 for LeNet, 32 for the others."""
    return 28 if name == "lenet5" else 32
