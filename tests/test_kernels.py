"""Each Triton kernel against its pure-torch twin (under TRITON_INTERPRET=1 on CPU).

Outputs are allocated NaN-filled (see ``poisoned_empty``) so a missed store shows. The
compressed format is deterministic in stream order, so masks and offsets must be equal,
except on CUDA within ``BAND`` of the threshold.
"""

import ast
import warnings
from pathlib import Path

import pytest
import torch
from conftest import DEVICE, poisoned_empty, safe_beta

from spectriton import reference as ref
from spectriton.compressed import CompressedSpectrum, offsets_from_counts, unpack_bits

kernels = pytest.importorskip("spectriton.kernels")
# Every tensor here lives on DEVICE: on a CUDA machine these are the CUDA kernel tests.
pytestmark = [pytest.mark.cuda] if DEVICE == "cuda" else []

# (batch, channels, grid): odd sizes 7, 9, 33, the paper's grids (LeNet 32, VGG 34, 18), and
# channel counts that are (33) and are not (3, 5) whole mask words per row.
GRIDS = [
    (2, 3, (7, 7)),
    (2, 3, (9, 9)),
    (1, 2, (33, 33)),
    (2, 2, (32, 32)),
    (1, 2, (34, 34)),
    (2, 5, (18, 18)),
    (3, 33, (5, 5)),
]
IDS = [f"B{b}-C{c}-P{g[0]}" for b, c, g in GRIDS]
# The GEMM kernels run one program per frequency tile, so the interpreter's cost grows with
# the grid; their maths does not depend on it. Small grids, odd sizes and 33 channels
# (a K loop of several chunks, partial tiles everywhere).
GEMM_GRIDS = [(2, 3, (7, 7)), (2, 3, (5, 9)), (3, 33, (5, 5)), (2, 5, (6, 6))]
GEMM_IDS = [f"B{b}-C{c}-P{g[0]}x{g[1]}" for b, c, g in GEMM_GRIDS]
DTYPES = [torch.float32, torch.float64]


# On CUDA, Triton contracts the threshold's ``re^2 + im^2`` into an FMA (one rounding
# instead of two, each 2^-24 relative) and computes tanh with ex2.approx: an entry whose
# squared magnitude lies within a few ulps of beta^2 may be kept on one side only, and kept
# values err like torch's own float32 ones rather than bit for bit. The interpreter (numpy)
# rounds as torch does: no band.
BAND = 2**-21 if DEVICE == "cuda" else 0.0  # 8 float32 ulps of beta^2


def _near_threshold(dense: torch.Tensor, beta: float) -> torch.Tensor:
    """Stream entries of a dense ``(bins, N, C)`` spectrum within ``BAND`` of ``beta^2``."""
    magnitude2 = torch.view_as_real(dense.to(torch.complex128)).square().sum(-1).reshape(-1)
    beta2 = float(beta) ** 2
    return (magnitude2 - beta2).abs() <= BAND * beta2


def _dense_pairs(c: CompressedSpectrum) -> torch.Tensor:
    """Float64 ``(numel, 2)`` pairs, zero where ``c`` keeps nothing."""
    pairs = torch.zeros(c.numel, 2, dtype=torch.float64, device=c.values.device)
    pairs[unpack_bits(c.mask, c.numel)] = c.values.double()
    return pairs


def _bins(grid):
    return grid[0] * (grid[1] // 2 + 1)


def _spectrum(batch, channels, grid, scale=1.0, dtype=torch.float32):
    complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    return scale * torch.randn(_bins(grid), batch, channels, dtype=complex_dtype, device=DEVICE)


def _compressed(batch, channels, grid, beta=0.8, dtype=torch.float32):
    """A compressed spectrum whose first frequency keeps nothing."""
    spectrum = _spectrum(batch, channels, grid, dtype=dtype)
    spectrum[0] *= 1e-3
    return ref.threshold_compact(spectrum, beta, True, None, grid)


def _assert_same_compressed(a: CompressedSpectrum, b: CompressedSpectrum, atol=0.0, near=None, exact=None):
    """``b`` (the kernel's) holds what ``a`` (the twin's) holds. Keep decisions may differ
    only at ``near`` entries (see ``BAND``; their count is warned); values are compared
    where both keep: within ``atol``, or, given ``exact`` (the twin in float64), with at most
    twice the twin's own error plus ``atol`` (flash-attention's rule)."""
    assert a.shape == b.shape and a.values.dtype == b.values.dtype
    keep_a, keep_b = unpack_bits(a.mask, a.numel), unpack_bits(b.mask, b.numel)
    flips = keep_a != keep_b
    if near is None:
        near = torch.zeros_like(flips)
    assert not (flips & ~near).any(), f"{int((flips & ~near).sum())} keep decisions differ off the threshold"
    if flips.any():
        flipped = f"{int(flips.sum())} of {int(near.sum())} entries within {BAND:.1e} of beta^2 flipped"
        warnings.warn(flipped, stacklevel=2)
    else:
        assert a.nnz == b.nnz and torch.equal(a.mask, b.mask) and torch.equal(a.offsets, b.offsets)
    counts = keep_b.view(a.offsets.numel() - 1, -1).sum(1)
    assert torch.equal(b.offsets, offsets_from_counts(counts)) and b.nnz == int(counts.sum())
    both = keep_a & keep_b
    if exact is not None:
        both &= unpack_bits(exact.mask, exact.numel)
    got, want = _dense_pairs(b)[both], _dense_pairs(a)[both]
    if exact is None:
        torch.testing.assert_close(got, want, atol=atol, rtol=0)
    elif both.any():
        truth = _dense_pairs(exact)[both]
        err_got, err_twin = (got - truth).abs().max(), (want - truth).abs().max()
        assert err_got <= 2 * err_twin + atol, (float(err_got), float(err_twin))


@pytest.mark.parametrize("batch,channels,grid", GRIDS, ids=IDS)
@pytest.mark.parametrize("activation", [False, True], ids=["threshold", "split_tanh"])
@pytest.mark.parametrize("beta", [0.0, 0.9, 1e3], ids=["beta0", "beta0.9", "beta_above_all"])
def test_threshold_compact(batch, channels, grid, activation, beta):
    spectrum = _spectrum(batch, channels, grid)
    spectrum[1] = 0  # an all-zero frequency
    expected = ref.threshold_compact(spectrum.clone(), beta, activation, None, grid)
    exact = None  # the interpreter's tanh is torch's: compared within atol
    if DEVICE == "cuda":
        exact = ref.threshold_compact(spectrum.to(torch.complex128), beta, activation, None, grid)
    with poisoned_empty():
        got = kernels.threshold_compact(spectrum.clone(), beta, activation, None, grid)
    near = _near_threshold(spectrum, beta)
    _assert_same_compressed(expected, got, atol=2e-7, near=near, exact=exact)  # tanh: float32 round-off
    if beta == 1e3:
        assert got.nnz == 0
    if beta == 0.0:  # the identity: its zeros kept too
        assert got.nnz == expected.numel


def test_keep_decisions_may_differ_at_the_threshold_only():
    """The comparison's band: a decision flipped at ``near`` entries passes, and is
    counted; one flipped elsewhere fails."""
    spectrum = _spectrum(2, 3, (7, 7))
    spectrum.view(-1)[40] = 0.5  # |X| = beta exactly: the twin drops it, a threshold 1e-6 lower keeps it
    dropped = ref.threshold_compact(spectrum, 0.5, False, None, (7, 7))
    kept = ref.threshold_compact(spectrum, 0.5 * (1 - 1e-6), False, None, (7, 7))
    at = torch.arange(spectrum.numel(), device=DEVICE) == 40
    with pytest.warns(UserWarning, match="1 of 1 entries"):
        _assert_same_compressed(dropped, kept, near=at)
    with pytest.raises(AssertionError, match="1 keep decisions differ off the threshold"):
        _assert_same_compressed(dropped, kept)


@pytest.mark.parametrize("value_dtype", [torch.bfloat16, torch.float16])
def test_threshold_compact_low_precision_values(value_dtype):
    grid = (9, 9)
    spectrum = _spectrum(2, 3, grid)
    expected = ref.threshold_compact(spectrum.clone(), 0.5, True, value_dtype, grid)
    got = kernels.threshold_compact(spectrum.clone(), 0.5, True, value_dtype, grid)
    near = _near_threshold(spectrum, 0.5)
    _assert_same_compressed(expected, got, atol=float(torch.finfo(value_dtype).eps), near=near)


def test_threshold_compact_with_a_threshold_on_the_device():
    """A density budget's threshold stays a device tensor (no host round trip)."""
    grid = (9, 9)
    spectrum = _spectrum(2, 3, grid)
    beta = torch.tensor(0.9, dtype=torch.float64, device=DEVICE)
    expected = ref.threshold_compact(spectrum.clone(), 0.9, True, None, grid)
    for ops in (ref, kernels):
        got = ops.threshold_compact(spectrum.clone(), beta, True, None, grid)
        _assert_same_compressed(expected, got, atol=2e-7, near=_near_threshold(spectrum, 0.9))


def test_threshold_keeps_nan_and_inf():
    grid = (7, 7)
    spectrum = _spectrum(1, 2, grid, scale=0.01)
    spectrum[5, 0, 1] = complex(float("nan"), 0)
    spectrum[9, 0, 0] = complex(float("inf"), 1)
    got = kernels.threshold_compact(spectrum.clone(), 0.5, True, None, grid)
    assert got.nnz == 2
    assert torch.isnan(got.values[0]).any() and got.values[1, 0] == 1.0


def _imported_modules(path: Path) -> set[str]:
    """Every module a Python file imports, and every ``module.name`` it imports from one."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_kernels_import_nothing_from_their_twin():
    """The twin is independent: a bug in the reference cannot pass the equality tests by
    being shared. Numerics both need live in :mod:`spectriton.numerics`."""
    files = sorted(Path(kernels.__file__).parent.glob("*.py"))
    imports = {path.name: _imported_modules(path) for path in files}
    assert "spectriton.numerics.scaled_threshold" in imports["threshold.py"]  # the parse sees imports
    for name, modules in imports.items():
        leaked = {m for m in modules if m == "spectriton.reference" or m.startswith("spectriton.reference.")}
        assert not leaked, f"kernels/{name} imports {leaked}"


TINY = [(torch.float32, 1e-24), (torch.float64, 1e-170)]
TINY_IDS = ["float32-1e-24", "float64-1e-170"]


@pytest.mark.parametrize("dtype,scale", TINY, ids=TINY_IDS)
@pytest.mark.parametrize("on_device", [False, True], ids=["beta_on_host", "beta_on_device"])
def test_beta0_keeps_every_entry_however_tiny(dtype, scale, on_device):
    """At beta 0 every entry is kept: zeros (the threshold is the identity there) and entries
    whose square underflows to 0 (these entries' squares do, in their dtype)."""
    grid = (7, 7)
    spectrum = _spectrum(2, 3, grid, scale=scale, dtype=dtype)
    spectrum[1] = 0
    assert (spectrum.abs().square() == 0).all()
    beta = torch.zeros((), dtype=torch.float64, device=DEVICE) if on_device else 0.0
    expected = ref.threshold_compact(spectrum.clone(), beta, False, None, grid)
    with poisoned_empty():
        got = kernels.threshold_compact(spectrum.clone(), beta, False, None, grid)
    _assert_same_compressed(expected, got)
    assert got.nnz == got.numel
    assert torch.equal(got.to_frequency_major(), spectrum)


@pytest.mark.parametrize("dtype,scale", TINY, ids=TINY_IDS)
def test_product_threshold_at_beta0_keeps_tiny_products(dtype, scale):
    batch, channels, grid = 2, 3, (5, 9)
    x = ref.threshold_compact(
        _spectrum(batch, channels, grid, scale=scale, dtype=dtype), 0.0, False, None, grid
    )
    kernel = _spectrum(channels, 4, grid, dtype=dtype)
    assert (ref.product(x, kernel, None).abs().square() == 0).all()  # every square underflows
    expected = ref.product_threshold(x, kernel, None, 0.0, False, None, grid)
    with poisoned_empty():
        got = kernels.product_threshold(x, kernel, None, 0.0, False, None, grid)
    assert got.nnz == got.numel  # and no product entry is zero
    tol = 1e-12 if dtype == torch.float64 else 1e-5  # as test_product, relative to the entries' scale
    _assert_same_compressed(expected, got, atol=tol * scale)


@pytest.mark.parametrize("batch,channels,grid", GEMM_GRIDS, ids=GEMM_IDS)
@pytest.mark.parametrize("packed", [True, False], ids=["compressed_input", "dense_input"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_product(batch, channels, grid, packed, dtype):
    x = _compressed(batch, channels, grid, dtype=dtype)
    assert x.offsets[1] == 0
    inputs = x if packed else x.to_frequency_major()
    kernel = _spectrum(channels, 4, grid, dtype=dtype)
    bias = torch.randn(4, dtype=dtype, device=DEVICE)
    expected = ref.product(inputs, kernel, bias)
    with poisoned_empty():
        got = kernels.product(inputs, kernel, bias)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("batch,channels,grid", GEMM_GRIDS, ids=GEMM_IDS)
@pytest.mark.parametrize("out_channels", [4, 32], ids=["O4", "O32"])
@pytest.mark.parametrize("activation", [False, True], ids=["threshold", "split_tanh"])
@pytest.mark.parametrize("value_dtype", [None, torch.bfloat16], ids=["float32", "bfloat16"])
def test_product_threshold(batch, channels, grid, out_channels, activation, value_dtype):
    """The fused epilogue: bias, threshold, split tanh, keep bits (word-aligned rows with
    32 output channels, atomics otherwise), packed values."""
    x = _compressed(batch, channels, grid)
    kernel = _spectrum(channels, out_channels, grid, scale=0.5)
    bias = torch.randn(out_channels, device=DEVICE)
    dense = ref.product(x, kernel, bias)
    beta = safe_beta(dense.abs(), 0.6, margin=1e-4)  # float32 round-off cannot flip a decision
    expected = ref.product_threshold(x, kernel, bias, beta, activation, value_dtype, grid)
    with poisoned_empty():
        got = kernels.product_threshold(x, kernel, bias, beta, activation, value_dtype, grid)
    atol = 1e-5 if value_dtype is None else 2 * float(torch.finfo(value_dtype).eps)
    scale = max(1.0, float(dense.abs().max()))
    _assert_same_compressed(expected, got, atol=atol * scale, near=_near_threshold(dense, beta))


@pytest.mark.parametrize("batch,channels,grid", GEMM_GRIDS, ids=GEMM_IDS)
@pytest.mark.parametrize("packed_out", [True, False], ids=["packed_grad", "dense_grad"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_product_input_grad(batch, channels, grid, packed_out, dtype):
    grad = _compressed(batch, 4, grid, dtype=dtype)
    kernel_h = _spectrum(4, channels, grid, dtype=dtype)
    like = _compressed(batch, channels, grid, dtype=dtype) if packed_out else None
    expected = ref.product_input_grad(grad, kernel_h, like)
    with poisoned_empty():
        got = kernels.product_input_grad(grad, kernel_h, like)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("batch,channels,grid", GEMM_GRIDS, ids=GEMM_IDS)
@pytest.mark.parametrize("x_packed", [True, False], ids=["compressed_input", "dense_input"])
@pytest.mark.parametrize("g_packed", [True, False], ids=["compressed_grad", "dense_grad"])
def test_product_weight_grad(batch, channels, grid, x_packed, g_packed):
    x = _compressed(batch, channels, grid)
    grad = _compressed(batch, 4, grid, beta=1.2)
    inputs = x if x_packed else x.to_frequency_major()
    grads = grad if g_packed else grad.to_frequency_major()
    expected = ref.product_weight_grad(inputs, grads)
    with poisoned_empty():
        got = kernels.product_weight_grad(inputs, grads)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_weight_grad_in_float64():
    grid = (9, 9)
    x = _compressed(3, 5, grid, dtype=torch.float64)
    grad = _compressed(3, 4, grid, beta=1.2, dtype=torch.float64)
    got = kernels.product_weight_grad(x, grad)
    assert got.dtype == torch.complex128
    torch.testing.assert_close(got, ref.product_weight_grad(x, grad), atol=1e-12, rtol=1e-12)


def test_product_with_all_zero_input_gives_bias_only():
    grid = (9, 9)
    x = ref.threshold_compact(_spectrum(2, 3, grid), 1e3, True, None, grid)
    bias = torch.randn(4, device=DEVICE)
    got = kernels.product(x, _spectrum(3, 4, grid), bias)
    expected = torch.zeros_like(got)
    expected[0] = bias
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("batch,channels,grid", GRIDS[:3] + GRIDS[-1:], ids=IDS[:3] + IDS[-1:])
def test_pack_and_unpack(batch, channels, grid):
    x = _compressed(batch, channels, grid)
    with poisoned_empty():
        dense = kernels.unpack(x)
    torch.testing.assert_close(dense, ref.unpack(x), atol=0, rtol=0)
    other = _spectrum(batch, channels, grid)
    with poisoned_empty():
        packed = kernels.pack(other, x.mask, x.nnz)
    assert torch.equal(packed, ref.pack(other, x.mask, x.nnz))


def test_unpack_tiles_yield_the_rows_of_the_whole():
    """Each tile of a compressed spectrum, unpacked alone (the torch twin, from two offsets
    and the mask bits of the tile's range, tiles not aligned to mask words) or cut from one
    whole unpack (the Triton launcher), is those rows of the whole dense spectrum."""
    x = _compressed(3, 5, (9, 9))  # 45 bins of 15 entries each
    tiles = [slice(0, 7), slice(7, 8), slice(8, 30), slice(30, 45)]
    whole = ref.unpack(x)
    for backend in (ref, kernels):
        for tile, part in zip(tiles, backend.unpack_tiles(x, tiles), strict=True):
            torch.testing.assert_close(part, whole[tile], atol=0, rtol=0)


def test_activation_backward():
    x = _compressed(2, 3, (9, 9))
    grad = torch.randn_like(x.values)
    for values in (x.values, x.values.to(torch.bfloat16)):
        with poisoned_empty():
            got = kernels.activation_backward(values, grad)
        torch.testing.assert_close(got, ref.activation_backward(values, grad), atol=1e-6, rtol=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="tensor-core precisions need a GPU")
@pytest.mark.parametrize("precision,real", [("tf32", torch.float32), ("bf16", torch.bfloat16)])
def test_low_precision_products_err_like_plain_torch(monkeypatch, precision, real):
    """Error against a float64 product <= 2 x the error of torch's own product with operands
    rounded to that precision, plus round-off (flash-attention's rule)."""
    grid, batch, channels = (18, 18), 64, 64
    x = _compressed(batch, channels, grid)
    kernel = _spectrum(channels, channels, grid, scale=0.1)
    exact = ref.product(x.to_frequency_major().to(torch.complex128), kernel.to(torch.complex128), None)

    def rounded(z):
        pairs = torch.view_as_real(z).to(torch.float32 if precision == "tf32" else real)
        if precision == "tf32":  # keep 10 mantissa bits, as TF32 does
            pairs = (pairs.view(torch.int32) & ~0x1FFF).view(torch.float32)
        return torch.view_as_complex(pairs.float().contiguous())

    plain = ref.product(rounded(x.to_frequency_major()), rounded(kernel), None)
    monkeypatch.setenv("SPECTRITON_PRECISION", precision)
    got = kernels.product(x, kernel, None)
    err_plain = (plain.to(torch.complex128) - exact).abs().max()
    err_got = (got.to(torch.complex128) - exact).abs().max()
    assert err_got <= 2 * err_plain + 1e-5
