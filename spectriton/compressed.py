"""The compressed spectrum: keep-bitmask, packed values, per-map offsets (DESIGN.md section 3).

A half spectrum of shape ``(batch, channels, P0, P1 // 2 + 1)`` is ``maps = batch * channels``
maps of ``bins`` complex entries each. It is stored as

- ``mask``: int32 ``(maps, words)``, bit ``j`` of word ``w`` keeps entry ``32 * w + j``;
- ``values``: ``(nnz, 2)`` real/imaginary pairs of the kept entries, map after map, each
  map's entries in row-major order;
- ``offsets``: int64 ``(maps + 1,)``, where each map's run starts (``offsets[-1] == nnz``).

That is ``nnz * value_bytes + ceil(numel / 8) + 12 * maps + 8`` bytes at most, inside the
budget ``nnz * value_bytes + ceil(numel / 8) + 16 * maps + 1 KiB``.
"""

from __future__ import annotations

import torch

from spectriton import _checks

WORD_BITS = 32
VALUE_TYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def words_per_map(bins: int) -> int:
    return -(-bins // WORD_BITS)


def popcount(words: torch.Tensor) -> torch.Tensor:
    """Number of set bits of each 32-bit word, as int64."""
    x = words.to(torch.int64) & 0xFFFFFFFF
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return ((x * 0x01010101) & 0xFFFFFFFF) >> 24


def pack_bits(keep: torch.Tensor) -> torch.Tensor:
    """Bool ``(maps, bins)`` -> int32 ``(maps, words)`` bitmask."""
    maps, bins = keep.shape
    words = words_per_map(bins)
    padded = torch.zeros(maps, words * WORD_BITS, dtype=torch.int64, device=keep.device)
    padded[:, :bins] = keep
    shifts = torch.arange(WORD_BITS, device=keep.device, dtype=torch.int64)
    packed = (padded.view(maps, words, WORD_BITS) << shifts).sum(-1)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def unpack_bits(mask: torch.Tensor, bins: int) -> torch.Tensor:
    """Int32 ``(maps, words)`` bitmask -> bool ``(maps, bins)``."""
    shifts = torch.arange(WORD_BITS, device=mask.device, dtype=torch.int32)
    bits = (mask.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(mask.shape[0], mask.shape[1] * WORD_BITS)[:, :bins].bool()


def word_prefix(mask: torch.Tensor) -> torch.Tensor:
    """Exclusive running count of kept entries before each mask word, int32 ``(maps, words)``.

    Transient: the kernels that index packed values by bit position need it, and it is
    cheap to rebuild, so it is never saved.
    """
    counts = popcount(mask)
    return (counts.cumsum(-1) - counts).to(torch.int32)


def offsets_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """Per-map counts -> int64 ``(maps + 1,)`` run offsets."""
    offsets = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=counts.device)
    torch.cumsum(counts.reshape(-1), 0, out=offsets[1:])
    return offsets


def as_pairs(x: torch.Tensor) -> torch.Tensor:
    """Complex ``(...)`` -> real ``(..., 2)`` view (no copy when contiguous)."""
    return torch.view_as_real(x.resolve_conj())


def as_complex(pairs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Real ``(..., 2)`` pairs in any float dtype -> complex tensor of ``dtype``."""
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    return torch.view_as_complex(pairs.to(real).contiguous())


class CompressedSpectrum:
    """A thresholded half spectrum, stored compactly (see the module docstring).

    ``values`` may be float32 pairs (complex64, the default), float64 pairs (complex128,
    used by gradcheck) or bfloat16 / float16 pairs (4 bytes per entry). Build one with
    :meth:`from_dense`, read it back with :meth:`to_dense`. The constructor checks its
    arguments; the library's own call sites, whose tensors are right by construction, use
    :meth:`_trusted`, which skips the checks (they cost more than a small layer's launch).
    """

    __slots__ = ("values", "mask", "offsets", "batch", "channels", "grid")

    def __init__(
        self,
        values: torch.Tensor,
        mask: torch.Tensor,
        offsets: torch.Tensor,
        batch: int,
        channels: int,
        grid: tuple[int, int],
    ) -> None:
        grid = _checks.pair(grid, "grid", minimum=1)
        for name, count in (("batch", batch), ("channels", channels)):
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise TypeError(f"{name} must be an int >= 0, got {count!r}")
        maps, words = batch * channels, words_per_map(grid[0] * (grid[1] // 2 + 1))
        for name, t, dtype, shape in (
            ("mask", mask, torch.int32, (maps, words)),
            ("offsets", offsets, torch.int64, (maps + 1,)),
        ):
            if not isinstance(t, torch.Tensor) or t.dtype != dtype or tuple(t.shape) != shape:
                raise ValueError(
                    f"{name} must be a {dtype} tensor of shape {shape}, got {_checks.describe(t)}"
                )
        if (
            not isinstance(values, torch.Tensor)
            or values.dtype not in VALUE_TYPES
            or values.dim() != 2
            or values.shape[1] != 2
        ):
            raise ValueError(
                f"values must be float (nnz, 2) real/imaginary pairs, got {_checks.describe(values)}"
            )
        self._set(values, mask, offsets, batch, channels, grid)

    def _set(self, values, mask, offsets, batch, channels, grid) -> None:
        self.values, self.mask, self.offsets = values, mask, offsets
        self.batch, self.channels, self.grid = batch, channels, grid

    @classmethod
    def _trusted(cls, *fields) -> CompressedSpectrum:
        """Build from the constructor's arguments without checking them, for tensors the
        library made itself (``grid`` a tuple)."""
        self = object.__new__(cls)
        self._set(*fields)
        return self

    @classmethod
    def from_dense(
        cls,
        spectrum: torch.Tensor,
        grid: tuple[int, int],
        keep: torch.Tensor | None = None,
        value_dtype: torch.dtype | None = None,
    ) -> CompressedSpectrum:
        """Compress a complex ``(batch, channels, P0, P1 // 2 + 1)`` spectrum.

        ``keep`` (bool, same shape) picks the stored entries; by default the non-zero ones.
        ``value_dtype``: None keeps the spectrum's precision, or bfloat16 / float16 pairs.
        """
        grid = _checks.pair(grid, "grid", minimum=1)
        half = (grid[0], grid[1] // 2 + 1)
        if not isinstance(spectrum, torch.Tensor) or not spectrum.is_complex() or spectrum.dim() != 4:
            raise TypeError(
                f"spectrum must be a complex 4-D tensor (batch, channels, P0, P1 // 2 + 1), "
                f"got {_checks.describe(spectrum)}"
            )
        if tuple(spectrum.shape[2:]) != half:
            raise ValueError(
                f"spectrum must end in {half} for grid {grid}, got shape {tuple(spectrum.shape)}"
            )
        if keep is not None and (
            not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool or keep.shape != spectrum.shape
        ):
            raise ValueError(
                f"keep must be None or a bool tensor of shape {tuple(spectrum.shape)}, "
                f"got {_checks.describe(keep)}"
            )
        value_dtype = _checks.value_dtype(value_dtype)
        batch, channels = spectrum.shape[:2]
        flat = spectrum.reshape(batch * channels, half[0] * half[1])
        keep = (flat != 0) if keep is None else keep.reshape(flat.shape)
        values = as_pairs(flat[keep])
        if value_dtype is not None:
            values = values.to(value_dtype)
        offsets = offsets_from_counts(keep.sum(-1))
        return cls._trusted(values, pack_bits(keep), offsets, batch, channels, grid)

    @property
    def half(self) -> tuple[int, int]:
        return self.grid[0], self.grid[1] // 2 + 1

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Shape of the dense half spectrum this stands for."""
        return (self.batch, self.channels, *self.half)

    @property
    def maps(self) -> int:
        return self.batch * self.channels

    @property
    def bins(self) -> int:
        return self.half[0] * self.half[1]

    @property
    def numel(self) -> int:
        return self.maps * self.bins

    @property
    def nnz(self) -> int:
        return self.values.shape[0]

    @property
    def density(self) -> float:
        return self.nnz / max(self.numel, 1)

    @property
    def dense_dtype(self) -> torch.dtype:
        return torch.complex128 if self.values.dtype == torch.float64 else torch.complex64

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.values, self.mask, self.offsets

    def keep(self) -> torch.Tensor:
        """The keep-mask as bool ``(maps, bins)``."""
        return unpack_bits(self.mask, self.bins)

    def to_dense(self) -> torch.Tensor:
        """The complex half spectrum, zeros where nothing was kept."""
        dense = torch.zeros(self.maps, self.bins, dtype=self.dense_dtype, device=self.values.device)
        dense[self.keep()] = as_complex(self.values, self.dense_dtype)
        return dense.view(self.shape)

    def __repr__(self) -> str:
        return (
            f"CompressedSpectrum(shape={self.shape}, grid={self.grid}, nnz={self.nnz}, "
            f"density={self.density:.3f}, values={self.values.dtype}, nbytes={self.nbytes})"
        )
