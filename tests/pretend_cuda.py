"""A pytest plugin that makes ``torch.cuda.is_available()`` answer True on a machine with
no GPU, to show that the suite has no failure caused by the machine having one:

    python -m pytest -p tests.pretend_cuda tests

It is loaded before ``tests/conftest.py`` is imported, so everything the suite decides from
that answer (``conftest.DEVICE``, the ``skipif`` marks, where the Triton kernels run)
decides as on a GPU machine; torch's own modules keep the real answer. What it cannot give
is a CUDA tensor: torch raises "Torch not compiled with CUDA enabled" at the first one.
The tests that need one are skipped here: those marked ``cuda`` (``tests/conftest.py``
also marks every test parametrized on the device ``"cuda"``, and test_kernels.py marks
itself, its tensors living on ``DEVICE``). That is the whole rule, and it can be checked:
a test that makes a CUDA tensor without the mark fails in this mode with torch's error,
which says the mark is missing. Subprocesses start with the real answer; the interpreter
session that ``tests/conftest.py`` starts on a GPU machine hides the GPU anyway.
"""

import sys

import pytest
import torch

_real_is_available = torch.cuda.is_available


def _is_available() -> bool:
    """True, except to torch itself, which would then initialise CUDA (inductor does for
    CPU graphs): on a GPU machine torch's internal checks succeed, here they cannot."""
    caller = sys._getframe(1).f_globals.get("__name__", "")
    return _real_is_available() if caller.split(".")[0] == "torch" else True


torch.cuda.is_available = _is_available


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a real CUDA device (torch.cuda.is_available() is pretended)")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)
