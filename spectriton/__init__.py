"""spectriton: memory-frugal spectral-domain CNN training (SpecNet) for PyTorch."""

from spectriton import functional, memory, models
from spectriton.activation import SplitTanh
from spectriton.compressed import CompressedSpectrum
from spectriton.conv import SpectralConv2d, SpectralDenseBlock, SpectralSequential
from spectriton.convert import convert, plan, revert
from spectriton.pooling import CompactAvgPool2d, CompactMaxPool2d

__version__ = "0.1.0"

__all__ = [
    "CompactAvgPool2d",
    "CompactMaxPool2d",
    "CompressedSpectrum",
    "SplitTanh",
    "SpectralConv2d",
    "SpectralDenseBlock",
    "SpectralSequential",
    "convert",
    "functional",
    "memory",
    "models",
    "plan",
    "revert",
]
