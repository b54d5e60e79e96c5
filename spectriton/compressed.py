"""The compressed spectrum: keep-bitmask, packed values, per-frequency offsets (DESIGN.md section 3).

A half spectrum of ``batch x channels`` maps on a grid ``P`` has ``bins = P0 * (P1 // 2 + 1)``
frequencies. It is laid out **frequency-major**: entry ``(n, c, f)`` is element
``(f * batch + n) * channels + c`` of one logical stream, so for each frequency the
``batch x channels`` matrix is contiguous and the spectral product is one GEMM per
frequency. Dense frequency-major spectra are complex ``(bins, batch, channels)`` tensors
(``(P0, P1 // 2 + 1, batch, channels)`` flattened over the first two). Stored:

- ``mask``: int32 ``(ceil(numel / 32),)``, the stream's keep bits with no padding between
  rows: bit ``j`` of word ``w`` keeps element ``32 * w + j``;
- ``values``: ``(nnz, 2)`` real/imaginary pairs of the kept entries, in stream order;
- ``offsets``: int64 ``(bins + 1,)``, where each frequency's run starts (``offsets[-1] == nnz``).

That is ``nnz * value_bytes + 4 * ceil(numel / 32) + 8 * bins + 8`` bytes, inside the budget
``nnz * value_bytes + ceil(numel / 8) + 16 * maps + 8 * bins + 1 KiB``. Finer prefixes (per
mask word) are rebuilt from popcounts when a kernel needs them (:func:`word_prefix`), never
saved.
"""

from __future__ import annotations

import functools

import torch

from spectriton import _checks
from spectriton.numerics import EIGHT_BIT, complex_dtype, half_spectrum, spectrum_bins, stored_as

WORD_BITS = 32
VALUE_TYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16, EIGHT_BIT)


def mask_words(numel: int) -> int:
    """Int32 words of the bitmask of a stream of ``numel`` entries."""
    return -(-numel // WORD_BITS)


@functools.cache
def _byte_popcounts(device: torch.device) -> torch.Tensor:
    """Set bits of each byte value, uint8 ``(256,)``."""
    table = torch.arange(256, dtype=torch.uint8, device=device)
    counts = torch.zeros(256, dtype=torch.uint8, device=device)
    for bit in range(8):
        counts += (table >> bit) & 1
    return counts


def popcount(words: torch.Tensor) -> torch.Tensor:
    """Number of set bits of each int32 word, as int32 (a byte table; no 64-bit scratch)."""
    table = _byte_popcounts(words.device)
    per_byte = table[words.reshape(-1).contiguous().view(torch.uint8).to(torch.int32)]
    return per_byte.view(*words.shape, 4).sum(-1, dtype=torch.int32)


def pack_bits(keep: torch.Tensor) -> torch.Tensor:
    """Bool stream ``(numel,)`` -> int32 ``(ceil(numel / 32),)`` bitmask (little-endian words)."""
    numel = keep.numel()
    padded = torch.zeros(mask_words(numel) * WORD_BITS, dtype=torch.uint8, device=keep.device)
    padded[:numel] = keep.reshape(-1)
    shifts = torch.arange(8, dtype=torch.uint8, device=keep.device)
    packed = (padded.view(-1, 8) << shifts).sum(-1, dtype=torch.uint8)
    return packed.view(torch.int32)


def unpack_bits(mask: torch.Tensor, numel: int, start: int = 0) -> torch.Tensor:
    """Int32 bitmask -> bool stream ``(numel,)``: the bits of entries ``start`` on."""
    shifts = torch.arange(8, dtype=torch.uint8, device=mask.device)
    first = start // WORD_BITS
    words = mask[first : mask_words(start + numel)].contiguous()
    bits = (words.view(torch.uint8).unsqueeze(-1) >> shifts) & 1
    skip = start - first * WORD_BITS
    return bits.view(-1)[skip : skip + numel].view(torch.bool)  # 0 or 1: no conversion pass


def word_prefix(mask: torch.Tensor) -> torch.Tensor:
    """Exclusive running count of kept entries before each mask word, int64 ``(words,)``.

    Transient: the kernels that index packed values by stream position need it, and it is
    cheap to rebuild, so it is never saved.
    """
    counts = popcount(mask).to(torch.int64)
    return counts.cumsum(0) - counts


def frequency_offsets(mask: torch.Tensor, prefix: torch.Tensor, bins: int, per_bin: int) -> torch.Tensor:
    """Int64 ``(bins + 1,)`` run offsets read off a finished mask and its :func:`word_prefix`:
    the kept entries before stream position ``f * per_bin``, for every ``f``."""
    device = mask.device
    total = prefix[-1:] + popcount(mask[-1:]) if mask.numel() else prefix.new_zeros(1)
    prefix = torch.cat([prefix, total])
    words = torch.cat([mask, mask.new_zeros(1)]).to(torch.int64) & 0xFFFFFFFF
    position = torch.arange(bins + 1, dtype=torch.int64, device=device) * per_bin
    below = words[position >> 5] & ((1 << (position & 31)) - 1)
    return prefix[position >> 5] + popcount(below.to(torch.int32)).to(torch.int64)


def offsets_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """Per-frequency counts -> int64 ``(bins + 1,)`` run offsets."""
    offsets = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=counts.device)
    torch.cumsum(counts.reshape(-1), 0, out=offsets[1:])
    return offsets


def as_pairs(x: torch.Tensor) -> torch.Tensor:
    """Complex ``(...)`` -> real ``(..., 2)`` view (no copy when contiguous)."""
    return torch.view_as_real(x.resolve_conj())


def frequency_major(spectrum: torch.Tensor) -> torch.Tensor:
    """``(batch, channels, P0, P1 // 2 + 1)`` -> contiguous ``(bins, batch, channels)``."""
    batch, channels, rows, cols = spectrum.shape
    return spectrum.permute(2, 3, 0, 1).contiguous().view(rows * cols, batch, channels)


class CompressedSpectrum:
    """A thresholded half spectrum, stored compactly (see the module docstring).

    ``values`` may be float32 pairs (complex64, the default), float64 pairs (complex128,
    used by gradcheck), bfloat16 / float16 pairs (4 bytes per entry) or float8_e4m3fn pairs
    (2 bytes). Build one with
    :meth:`from_dense`, read it back with :meth:`to_dense`. The constructor checks that its
    parts are consistent (shapes, dtypes, offsets against the mask's popcounts: O(numel));
    the library's own call sites, whose tensors are right by construction, use
    :meth:`_trusted`, which skips the checks.
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
        bins = spectrum_bins(grid)
        numel = batch * channels * bins
        for name, t, dtype, shape in (
            ("mask", mask, torch.int32, (mask_words(numel),)),
            ("offsets", offsets, torch.int64, (bins + 1,)),
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
        if not (values.device == mask.device == offsets.device):
            raise ValueError(
                f"values, mask and offsets must be on one device, got {values.device}, "
                f"{mask.device}, {offsets.device}"
            )
        keep = unpack_bits(mask, mask.numel() * WORD_BITS)
        if keep[numel:].any():
            raise ValueError("mask has bits set past the last entry")
        counts = keep[:numel].view(bins, -1).sum(-1) if numel else torch.zeros_like(offsets[1:])
        if not torch.equal(offsets, offsets_from_counts(counts)):
            raise ValueError("offsets must start at 0 and step by each frequency's popcount of the mask")
        if int(offsets[-1]) != values.shape[0]:
            raise ValueError(
                f"values must hold the mask's {int(offsets[-1])} kept entries, got {values.shape[0]}"
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
        ``value_dtype``: None keeps the spectrum's precision, or bfloat16 / float16 /
        float8_e4m3fn pairs (8-bit ones saturate, :func:`~spectriton.numerics.stored_as`).
        """
        grid = _checks.pair(grid, "grid", minimum=1)
        half = half_spectrum(grid)
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
        dense = frequency_major(spectrum)
        keep = dense != 0 if keep is None else frequency_major(keep)
        return compact(dense, keep, grid, lambda kept: kept, value_dtype)

    @property
    def half(self) -> tuple[int, int]:
        return half_spectrum(self.grid)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Shape of the dense half spectrum this stands for, ``(batch, channels, *half)``."""
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
        return complex_dtype(self.values.dtype)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.values, self.mask, self.offsets

    def keep(self) -> torch.Tensor:
        """The keep-mask as a bool stream ``(numel,)``, frequency-major."""
        return unpack_bits(self.mask, self.numel)

    def to_frequency_major(self) -> torch.Tensor:
        """The complex spectrum as ``(bins, batch, channels)``, zeros where nothing was kept."""
        return self.frequencies(slice(0, self.bins))

    def frequencies(self, run: slice) -> torch.Tensor:
        """The rows ``run`` of :meth:`to_frequency_major`, ``(len(run), batch, channels)``,
        unpacked alone: a tile's worth of memory, for two reads of ``offsets`` (none for
        every row)."""
        per_bin = self.batch * self.channels
        count = (run.stop - run.start) * per_bin
        if self.nnz == self.numel:  # every entry kept: the values are the spectrum, no offsets read
            values = self.values[run.start * per_bin : run.stop * per_bin]
            dense = torch.view_as_complex(values.to(self.dense_dtype.to_real(), copy=True))
            return dense.view(run.stop - run.start, self.batch, self.channels)
        values = self.values
        if (run.start, run.stop) != (0, self.bins):  # a part: its values start at an offset
            first, last = self.offsets[[run.start, run.stop]].tolist()
            values = values[first:last]
        values = torch.view_as_complex(values.to(self.dense_dtype.to_real()))
        dense = torch.zeros(count, dtype=self.dense_dtype, device=self.values.device)
        keep = unpack_bits(self.mask, count, run.start * per_bin)
        dense.masked_scatter_(keep, values)  # no positions: a third of nonzero + index_copy_
        return dense.view(run.stop - run.start, self.batch, self.channels)

    def to_dense(self) -> torch.Tensor:
        """The complex half spectrum ``(batch, channels, P0, P1 // 2 + 1)`` (a permuted view
        of :meth:`to_frequency_major`)."""
        return self.to_frequency_major().view(*self.half, self.batch, self.channels).permute(2, 3, 0, 1)

    def __repr__(self) -> str:
        return (
            f"CompressedSpectrum(shape={self.shape}, grid={self.grid}, nnz={self.nnz}, "
            f"density={self.density:.3f}, values={self.values.dtype}, nbytes={self.nbytes})"
        )


def full_mask(numel: int, device: torch.device) -> torch.Tensor:
    """The bitmask keeping all ``numel`` entries of a stream (no bits past the last)."""
    mask = torch.full((mask_words(numel),), -1, dtype=torch.int32, device=device)
    if numel % WORD_BITS:
        mask[-1] = (1 << numel % WORD_BITS) - 1
    return mask


def compact_whole(
    dense: torch.Tensor, grid: tuple[int, int], activate, value_dtype: torch.dtype | None
) -> CompressedSpectrum:
    """:func:`compact` keeping every entry (beta 0): the values in stream order are the
    frequency-major spectrum itself, so nothing is selected."""
    bins, batch, channels = dense.shape
    values = stored_as(activate(as_pairs(dense.reshape(-1))), value_dtype)
    offsets = torch.arange(bins + 1, dtype=torch.int64, device=dense.device) * (batch * channels)
    return CompressedSpectrum._trusted(
        values, full_mask(dense.numel(), dense.device), offsets, batch, channels, grid
    )


def compact(
    dense: torch.Tensor,
    keep: torch.Tensor,
    grid: tuple[int, int],
    activate,
    value_dtype: torch.dtype | None,
) -> CompressedSpectrum:
    """Frequency-major complex ``(bins, batch, channels)`` -> compressed, keeping ``keep``.

    ``activate`` maps the kept ``(nnz, 2)`` pairs to the stored ones (split tanh, or
    identity). One ``masked_select``.
    """
    bins, batch, channels = dense.shape
    values = activate(as_pairs(dense.resolve_conj().reshape(-1).masked_select(keep.reshape(-1))))
    values = stored_as(values, value_dtype)
    counts = keep.reshape(bins, -1).view(torch.uint8).sum(-1, dtype=torch.int32)  # 5x a bool sum
    return CompressedSpectrum._trusted(
        values, pack_bits(keep), offsets_from_counts(counts), batch, channels, grid
    )
