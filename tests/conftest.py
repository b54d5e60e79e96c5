"""Shared fixtures, and where the Triton kernels run.

Triton runs kernels on CPU tensors only under its interpreter, and ``triton.jit`` chooses
interpreter or compiler once, when it decorates a kernel (``TRITON_INTERPRET`` is read as
``spectriton.kernels`` is imported). Triton 3.6-3.9 have no per-launch switch (their
``InterpretedFunction`` is internal and a decorated kernel serves every device), and the
library keeps one ``spectriton.kernels``, so one process runs either the compiled kernels
(CUDA tensors) or the interpreted ones (CPU tensors), never both. Hence:

- no CUDA, or ``TRITON_INTERPRET=1`` already set: everything runs here, kernels interpreted;
- CUDA: the compiled kernels run here (the CUDA tests), and the tests that force the
  Triton backend on CPU tensors run in one pytest subprocess with ``TRITON_INTERPRET=1``
  and the GPU hidden, started when the first of them runs; each of them then reports,
  under its own node id, its outcome in that subprocess.

A test forces the Triton backend on CPU tensors (:func:`_needs_interpreter`) if it is
marked ``interpreter``, is parametrized on ``"triton"`` (the ``backend`` fixture), or names
``"triton"`` in its body in a module that sets ``SPECTRITON_BACKEND``. The rule may pick a
test that needs no interpreter (it runs the same there, without the GPU); a test it misses
fails with backend.py's error naming ``TRITON_INTERPRET``: mark it ``interpreter``.
"""

import inspect
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

# Must be set before spectriton.kernels is imported: triton.jit reads it at decoration.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
INTERPRETED_HERE = os.environ.get("TRITON_INTERPRET") == "1"
# Equality with the torch twin is tested on exact float32 tensor-core inputs; the TF32 and
# bf16 paths have their own tests, with the tolerance plain torch shows at that precision.
os.environ.setdefault("SPECTRITON_PRECISION", "ieee")

import contextlib  # noqa: E402

import pytest  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Set in the interpreter subprocess: where it writes each test's outcome.
RESULTS = "SPECTRITON_INTERPRETER_RESULTS"
_results: dict[str, dict] = {}  # the interpreter subprocess's outcomes, by node id


def pytest_configure(config):
    config.addinivalue_line("markers", "interpreter: forces the Triton backend on CPU tensors")
    if os.environ.get(RESULTS):
        config.pluginmanager.register(_Recorder(Path(os.environ[RESULTS])), "interpreter-results")


def _needs_interpreter(item) -> bool:
    if item.get_closest_marker("cuda"):
        return False
    if item.get_closest_marker("interpreter"):
        return True
    if "triton" in _string_params(item):
        return True
    function = getattr(item, "function", None)
    if function is None:
        return False
    try:
        body, module = inspect.getsource(function), inspect.getsource(item.module)
    except (OSError, TypeError):
        return False
    return '"triton"' in body and "SPECTRITON_BACKEND" in module


def _string_params(item) -> list[str]:
    callspec = getattr(item, "callspec", None)
    values = callspec.params.values() if callspec is not None else ()
    return [v if isinstance(v, str) else str(v) for v in values if isinstance(v, (str, torch.device))]


def _on_cuda(item) -> bool:
    return "cuda" in _string_params(item)


@pytest.hookimpl(tryfirst=True)  # before -m reads the marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        if _on_cuda(item):
            item.add_marker(pytest.mark.cuda)
        if not INTERPRETED_HERE and _needs_interpreter(item):
            item.runtest = _replay.__get__(item)


def _replay(item) -> None:
    """The outcome of ``item`` in the interpreter subprocess (run once per session)."""
    if not _results:
        _run_interpreted([i.nodeid for i in item.session.items if _needs_interpreter(i)], item.config)
    result = _results.get(item.nodeid)
    if result is None:
        pytest.fail(f"the interpreter session did not report {item.nodeid}:\n{_results['']['text']}")
    if result["outcome"] == "skipped":
        pytest.skip(f"in the interpreter session: {result['text']}")
    if result["outcome"] != "passed":
        where = "in the interpreter session (TRITON_INTERPRET=1, no GPU)"
        pytest.fail(f"{where}:\n{result['text']}", pytrace=False)


def _run_interpreted(nodeids: list[str], config) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "results.json"
        env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": "", RESULTS: str(path)}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *nodeids]
        done = subprocess.run(command, cwd=config.rootpath, env=env, capture_output=True, text=True)
        if path.exists():
            _results.update(json.loads(path.read_text()))
    _results[""] = {"outcome": "log", "text": (done.stdout[-4000:] + done.stderr[-2000:]).strip()}


class _Recorder:
    """In the interpreter subprocess: each test's outcome, the worst of its phases."""

    RANK = {"passed": 0, "skipped": 1, "failed": 2}

    def __init__(self, path: Path):
        self.path, self.outcomes = path, {}

    def pytest_runtest_logreport(self, report):
        seen = self.outcomes.get(report.nodeid)
        if seen is None or self.RANK[report.outcome] > self.RANK[seen["outcome"]]:
            skipped = report.skipped and isinstance(report.longrepr, tuple)
            text = report.longrepr[2] if skipped else report.longreprtext
            self.outcomes[report.nodeid] = {"outcome": report.outcome, "text": text}

    def pytest_sessionfinish(self):
        self.path.write_text(json.dumps(self.outcomes))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=["torch", "triton"])
def backend(request, monkeypatch):
    """Run the test once per backend (SPECTRITON_BACKEND)."""
    monkeypatch.setenv("SPECTRITON_BACKEND", request.param)
    return request.param


@contextlib.contextmanager
def poisoned_empty():
    """``torch.empty`` returns NaN-filled float and -1-filled integer tensors, so that an
    output element a kernel forgets to store shows up in the comparison."""
    empty = torch.empty

    def poisoned(*args, **kwargs):
        t = empty(*args, **kwargs)
        if t.is_floating_point() or t.is_complex():
            return t.fill_(float("nan"))
        return t.fill_(-1) if t.dtype != torch.bool else t

    torch.empty = poisoned
    try:
        yield
    finally:
        torch.empty = empty


def safe_beta(magnitudes: torch.Tensor, quantile: float, margin: float = 1e-3) -> float:
    """A threshold near ``quantile`` of ``magnitudes`` with no magnitude within ``margin``
    of it, so that finite differences never flip a keep decision."""
    m = magnitudes.flatten().double().sort().values
    target = int(quantile * (m.numel() - 1))
    gaps = m[1:] - m[:-1]
    order = sorted(range(gaps.numel()), key=lambda i: (gaps[i] < 2 * margin, abs(i - target)))
    i = order[0]
    if gaps[i] < 2 * margin:
        raise ValueError("no gap wide enough for a safe threshold")
    return float((m[i] + m[i + 1]) / 2)


def keep(model, policy: str):
    """Set what every spectral block of ``model`` keeps for backward (``SpectralConv2d.keep``,
    read from each block's first layer): ``"spectra"``, ``"input"`` or ``"auto"``."""
    from spectriton import SpectralConv2d

    for module in model.modules():
        if isinstance(module, SpectralConv2d):
            module.keep = policy
    return model


def two_block_specnet(value_dtype, normalize: bool = False, beta: float = 0.5):
    """A small SpecNet: two blocks (the first ending in a strided layer) and a pool between
    them, so that the second block rebuilds its input from the first one's spectrum."""
    import spectriton as st

    torch.manual_seed(1)
    options = dict(
        beta=beta, activation="split_tanh", value_dtype=value_dtype, normalize=normalize, affine=normalize
    )
    return torch.nn.Sequential(
        st.SpectralSequential(
            st.SpectralConv2d(3, 6, 3, padding=1, **options),
            st.SpectralConv2d(6, 4, 3, padding=1, stride=2, **options),
        ),
        st.CompactMaxPool2d(2),
        st.SpectralSequential(st.SpectralConv2d(4, 3, 3, padding=1, **options)),
    )
