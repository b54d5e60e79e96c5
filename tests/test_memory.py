"""What the layers save for backward, measured with saved-tensor hooks."""

import copy
import math
import pickle

import pytest
import torch
from conftest import keep
from torch import nn

import spectriton as st
from spectriton.memory import saved_bytes


class _Saved:
    """Distinct storages (non-parameter) handed to autograd, with their bytes."""

    def __init__(self, params=()):
        self.storages, self.skip = {}, {p.untyped_storage().data_ptr() for p in params}

    def pack(self, t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self.skip:
            self.storages[ptr] = t.untyped_storage().nbytes()
        return t

    @property
    def total(self):
        return sum(self.storages.values())


def _measure(module, x):
    saved = _Saved(module.parameters())
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        y = module(x)
    return saved, y


def _budget(nnz, numel, maps, bins, value_bytes=8):
    """DESIGN.md section 3."""
    return nnz * value_bytes + math.ceil(numel / 8) + 16 * maps + 8 * bins + 1024


def _layer_nnz(layers, x):
    """Kept entries of every layer's output, from a forward run of the block's layers."""
    from spectriton.functional import SpectralFlow

    flow, nnz = SpectralFlow.start(x, [m.shape for m in layers]), []
    with torch.no_grad():
        for m in layers:
            flow = m(flow)
            nnz.append(flow.values.shape[0])
    return flow.geom, nnz


@pytest.mark.parametrize(
    "value_dtype,value_bytes", [(None, 8), (torch.bfloat16, 4), (torch.float8_e4m3fn, 2)]
)
@pytest.mark.parametrize("layers", [1, 3])
def test_byte_budget_of_a_specnet_block(layers, value_dtype, value_bytes):
    channels = [3, 16, 16, 8][: layers + 1]
    block = st.SpectralSequential(
        *[
            st.SpectralConv2d(a, b, 3, padding=1, beta=0.7, activation="split_tanh", value_dtype=value_dtype)
            for a, b in zip(channels, channels[1:])
        ]
    )
    x = torch.randn(4, 3, 32, 32)
    saved, y = _measure(block, x)
    geom, nnz = _layer_nnz(list(block), x)
    budget = x.numel() * 4 + sum(
        _budget(n, 4 * c * geom.bins, 4 * c, geom.bins, value_bytes) for n, c in zip(nnz, channels[1:])
    )
    assert saved.total <= budget
    assert min(nnz) < 0.8 * 4 * min(channels[1:]) * geom.bins  # the threshold did something
    assert saved.total >= x.numel() * 4 + nnz[-1] * value_bytes  # the values are really kept


def test_linear_layer_saves_its_input_and_a_bitmask():
    layer = st.SpectralConv2d(3, 8, 3, padding=1)
    x = torch.randn(2, 3, 16, 16)
    saved, _ = _measure(layer, x)
    bins = 18 * 10
    assert saved.total <= x.numel() * 4 + _budget(0, 2 * 8 * bins, 2 * 8, bins)


def test_overlapping_compact_pool_matches_max_pool_and_keeps_four_bits_per_output():
    x = torch.randn(2, 4, 9, 8, requires_grad=True)
    x.data[0, 0, :2, :2] = -float("inf")  # a window whose valid entries are all -inf
    pool, reference = st.CompactMaxPool2d(3, 2, 1), nn.MaxPool2d(3, 2, 1)
    saved, y = _measure(pool, x * 1)
    assert saved.total == -(-y.numel() // 2)
    torch.testing.assert_close(y, reference(x), atol=0, rtol=0)
    g = torch.randn_like(y)
    expected = torch.autograd.grad(reference(x), x, g)[0]
    torch.testing.assert_close(torch.autograd.grad(pool(x), x, g)[0], expected, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_overlapping_compact_pool_sums_gradients_bitwise_as_max_pool(dtype):
    """Issue 28: where windows overlap, an input's gradient sums several outputs'. Summed by
    ``scatter_add_`` in half precision it differed from ``nn.MaxPool2d``'s by an ulp (37 of
    the 9,248 entries here in bfloat16); the pool now runs ``nn.MaxPool2d``'s own backward on its
    packed positions. Two-NaN windows send their gradient where it does too."""
    torch.manual_seed(0)
    x = torch.randn(4, 8, 17, 17).to(dtype)
    x[0, 0, 1:3, 1:3] = float("nan")
    x.requires_grad_()
    pool, reference = st.CompactMaxPool2d(3, 2, 1), nn.MaxPool2d(3, 2, 1)
    y, expected = pool(x), reference(x)
    torch.testing.assert_close(y, expected, atol=0, rtol=0, equal_nan=True)
    g = torch.randn_like(y)
    got, want = torch.autograd.grad(y, x, g)[0], torch.autograd.grad(expected, x, g)[0]
    torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize(
    "window", [((3, 3), (2, 2), (1, 1)), ((2, 2), (2, 2), (0, 0)), ((3, 2), (1, 2), (1, 0))]
)
def test_packed_pool_positions_read_back_the_maxima_and_route_as_max_pool(window):
    """The packed positions give back each window's maximum bitwise (what a rebuilt block
    input reads) and send the gradient where ``nn.MaxPool2d`` does: ties, a window of -inf
    reaching into the padding, a NaN."""
    from spectriton.windows import window_max, window_values

    x = torch.randn(2, 3, 11, 10, dtype=torch.float64)
    x[0, 0, :3, :3] = -float("inf")
    x[0, 1, 4:7, 4:7] = 1.0
    x[1, 2, 2, 2] = float("nan")
    maxima, packed = window_max(x, *window)
    expected = nn.functional.max_pool2d(x, *window)
    torch.testing.assert_close(maxima, expected, atol=0, rtol=0, equal_nan=True)
    torch.testing.assert_close(window_values(x, packed, *window), maxima, atol=0, rtol=0, equal_nan=True)
    x.requires_grad_()
    g = torch.randn_like(expected)
    got = torch.autograd.grad(st.CompactMaxPool2d(*window)(x), x, g)[0]
    torch.testing.assert_close(got, torch.autograd.grad(nn.MaxPool2d(*window)(x), x, g)[0], atol=0, rtol=0)


@pytest.mark.parametrize(
    "options",
    [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)],
    ids=["2x2", "3x3-ceil"],
)
def test_compact_avg_pool_matches_avg_pool_and_keeps_nothing(options):
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    pool, reference = st.CompactAvgPool2d(**options), nn.AvgPool2d(**options)
    saved, y = _measure(pool, x * 1)
    assert saved.total == 0 and _measure(reference, x * 1)[0].total > 0
    torch.testing.assert_close(y, reference(x), atol=0, rtol=0)
    g = torch.randn_like(y)
    expected = torch.autograd.grad(reference(x), x, g)[0]
    torch.testing.assert_close(torch.autograd.grad(pool(x), x, g)[0], expected, atol=0, rtol=0)


def test_compact_pool_keeps_two_bits_per_output():
    pool = st.CompactMaxPool2d(2)
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    saved, y = _measure(pool, x * 1)
    assert saved.total == -(-y.numel() // 4)
    reference = nn.MaxPool2d(2)
    torch.testing.assert_close(y, reference(x))
    g = torch.randn_like(y)
    expected = torch.autograd.grad(reference(x), x, g)[0]
    torch.testing.assert_close(torch.autograd.grad(pool(x), x, g)[0], expected)


def test_no_grad_saves_nothing():
    block = st.SpectralSequential(st.SpectralConv2d(3, 4, 3, padding=1, beta=0.5, activation="split_tanh"))
    saved = _Saved(block.parameters())
    with torch.no_grad(), torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        block(torch.randn(2, 3, 9, 9))
    assert saved.total == 0


def test_report_per_module_and_table():
    model = nn.Sequential(
        st.SpectralSequential(st.SpectralConv2d(1, 6, 5, beta=0.7, activation="split_tanh")),
        st.CompactMaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 12 * 12, 10),
    )
    x = torch.randn(8, 1, 28, 28)
    report = saved_bytes(model, x)
    assert set(report.per_module) == {"0.0", "1", "3"}  # the layer inside the block, by name
    assert report.per_module["1"] == 8 * 6 * 12 * 12 // 4  # two bits per pooled output
    assert report.total == sum(report.per_module.values())
    assert report.per_sample == report.total / 8
    table = report.table()
    assert "total" in table and f"{report.total:,}" in table
    assert model.training  # restored


def test_report_counts_shared_storage_once_and_skips_parameters():
    relu = nn.ReLU()
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, relu)
    x = torch.randn(3, 4)
    report = saved_bytes(model, x)
    # Linear saves x (its weight is a parameter), ReLU saves its output.
    assert report.total == x.numel() * 4 + 3 * 4 * 4


def test_spectral_block_saves_far_less_than_its_spatial_twin():
    spatial = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU()
    )
    spectral = st.SpectralSequential(
        st.SpectralConv2d(3, 32, 3, padding=1, beta=1.5, activation="split_tanh"),
        st.SpectralConv2d(32, 32, 3, padding=1, beta=1.5, activation="split_tanh"),
    )
    x = torch.randn(4, 3, 32, 32)
    assert saved_bytes(spectral, x).total < 0.6 * saved_bytes(spatial, x).total


def test_report_has_no_side_effects_on_buffers():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), st.SpectralConv2d(4, 4, 3, density=0.2))
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    saved_bytes(model, torch.randn(2, 3, 9, 9))
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]) or (value.isnan().all() and state[key].isnan().all())


def test_a_strided_layer_keeps_the_spectrum_of_its_output():
    """Not a spectrum on its input's grid (stride**2 times its output): the spectrum of its
    output, on the output's own 8 x 8 grid (DESIGN.md section 3: no layer keeps more than
    its output needs)."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16)
    strided = st.SpectralConv2d(3, 8, 3, stride=2, padding=1, activation="split_tanh", bias=False)
    saved = saved_bytes(strided, x).total
    bins, maps = 8 * 5, 4 * 8  # the 8 x 8 output's half spectrum, batch x channels
    nnz = round(strided.last_density * bins * maps)
    assert nnz > 0
    assert saved == x.numel() * 4 + nnz * 8 + 4 * math.ceil(bins * maps / 32) + 8 * (bins + 1)


def test_a_block_whose_spectra_outweigh_its_input_keeps_the_input_and_recomputes():
    """On 1 x 1 maps a block's spectra (6 bins a map on its 3 x 3 grid) outweigh its input:
    after a first step, which measures what each layer keeps, the block keeps its input
    (and the moments it normalised with) and runs again in backward, with the outputs,
    gradients and running moments that kept spectra give."""
    torch.manual_seed(0)
    options = dict(padding=1, activation="split_tanh", normalize=True, affine=True)
    recomputing = st.SpectralSequential(
        st.SpectralConv2d(16, 16, 3, **options), st.SpectralConv2d(16, 16, 3, **options)
    )
    keeping = keep(copy.deepcopy(recomputing), "spectra")
    x = torch.randn(8, 16, 1, 1)

    def step(model):
        model.zero_grad()
        y = model(x)
        y.square().sum().backward()
        return [y, *(p.grad for p in model.parameters()), *model.buffers()]

    step(recomputing)
    assert saved_bytes(recomputing, x).total == x.numel() * 4 + 2 * (2 * 16 * 4)
    recomputed = step(recomputing)
    step(keeping)
    assert saved_bytes(keeping, x).total > 4 * x.numel() * 4
    for a, b in zip(recomputed, step(keeping), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


class _Stage(nn.Module):
    """Two one-layer blocks, each max-pooled (a main path and a shortcut), feeding a
    two-layer block that adds the shortcut (``identity``: its own input) before its last
    activation."""

    def __init__(self, identity: bool) -> None:
        super().__init__()
        options = dict(padding=1, activation="split_tanh")
        self.identity = identity
        self.main = nn.Sequential(
            st.SpectralSequential(st.SpectralConv2d(3, 8, 3, **options)), st.CompactMaxPool2d(2)
        )
        self.shortcut = nn.Sequential(
            st.SpectralSequential(st.SpectralConv2d(3, 8, 3, **options)), st.CompactMaxPool2d(2)
        )
        self.block = st.SpectralSequential(
            st.SpectralConv2d(8, 8, 3, **options), st.SpectralConv2d(8, 8, 3, **options)
        )

    def forward(self, x):
        from spectriton.blocks import run_layers

        h = self.main(x)
        return run_layers(list(self.block), h, residual=h if self.identity else self.shortcut(x))


@pytest.mark.parametrize("identity", [True, False], ids=["identity", "shortcut"])
def test_a_recomputed_block_keeps_the_recipes_of_its_input_and_shortcut(identity):
    """Recomputed, a block whose input and shortcut are earlier blocks' outputs keeps the
    spectra those blocks keep anyway, not the maps: it adds to what the model keeps only a
    byte a sample for each (which samples were not finite), and its replay rebuilds both,
    bitwise, for the gradients of the block that keeps its spectra."""
    torch.manual_seed(0)
    keeping = keep(_Stage(identity), "spectra")
    recomputing = copy.deepcopy(keeping)
    recomputing.block[0].keep = "input"
    x = torch.randn(2, 3, 8, 8)
    kept = saved_bytes(keeping, x).per_module
    assert kept["block.0"] > 0 and kept["block.1"] > 0
    upstream = sum(v for name, v in kept.items() if not name.startswith("block"))
    assert saved_bytes(recomputing, x).total == upstream + x.shape[0] * (1 if identity else 2)
    results = []
    for model in (keeping, recomputing):
        y = model(x)
        y.square().sum().backward()
        results.append([y, *(p.grad for p in model.parameters())])
    assert recomputing.block[0].last_keep == "input" and keeping.block[0].last_keep == "spectra"
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_a_recomputed_block_replays_in_the_mode_it_ran():
    """Switched to eval between forward and backward, a recomputed block with a density
    budget still replays its training forward (the batch's quantile, not the running one)."""
    torch.manual_seed(0)
    options = dict(padding=1, activation="split_tanh", density=0.3)
    model = st.SpectralSequential(
        st.SpectralConv2d(16, 16, 3, **options), st.SpectralConv2d(16, 16, 3, **options)
    )
    x = torch.randn(8, 16, 1, 1)
    model(x).sum().backward()  # measures what each layer keeps
    model.zero_grad()
    model(x).sum().backward()
    reference = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    y = model(x)
    model.eval()
    y.sum().backward()
    for p, g in zip(model.parameters(), reference):
        torch.testing.assert_close(p.grad, g, atol=0, rtol=0)


def test_an_outer_checkpoint_replays_a_block_as_its_forward_decided():
    """Under the user's own checkpoint, the replay in backward keeps to the forward's
    choice between spectra and recomputing, though the forward measured densities since
    that would choose otherwise."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    model = st.SpectralSequential(st.SpectralConv2d(4, 4, 3, padding=1, activation="split_tanh", beta=0.1))
    x = torch.randn(8, 4, 1, 1)
    model(x).sum().backward()  # 1 x 1 maps keeping most of their spectra: recompute next
    quiet = (x * 1e-6).requires_grad_()  # keeps nothing: would keep spectra, if asked again
    with pytest.warns(UserWarning, match="too little to learn from"):
        y = checkpoint(model, quiet, use_reentrant=False)
    assert model[0].last_keep == "input" and model[0].last_density == 0
    y.sum().backward()
    assert quiet.grad is not None and model[0].last_keep == "input"


def test_a_block_between_forward_and_backward_copies_and_pickles():
    """A decision pending until the next backward is not copied: the copy and the
    unpickled model decide afresh, and the original's backward still ends its own."""
    model = st.SpectralSequential(st.SpectralConv2d(4, 4, 3, padding=1, activation="split_tanh"))
    x = torch.randn(2, 4, 5, 5)
    y = model(x)
    for again in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        z = again(x)
        z.sum().backward()
        torch.testing.assert_close(z, y, atol=0, rtol=0)
        assert again[0].weight.grad is not None
    y.sum().backward()
    torch.testing.assert_close(model[0].weight.grad, again[0].weight.grad, atol=0, rtol=0)
