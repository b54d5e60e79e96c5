"""A pytest plugin that makes ``torch.cuda.is_available()`` answer True on a machine with
no GPU, to show that the suite has no failure caused by the machine having one:

    python -m pytest -p tests.pretend_cuda tests

It is loaded before ``tests/conftest.py`` is imported, so everything the suite decides from
that answer (``conftest.DEVICE``, the ``skipif`` marks, where the Triton kernels run, the
CLI's default ``--device``) decides as on a machine with one GPU (``device_count()`` is 1
too); torch's own modules keep the real answers. What it cannot give is a CUDA tensor:
torch raises at the first one. So the tests that need one are skipped: those marked
``cuda`` before they run (``tests/conftest.py`` also marks every test parametrized on the
device ``"cuda"``, and test_kernels.py marks itself, its tensors living on ``DEVICE``),
and those that reach a CUDA tensor through a default (the CLI's ``--device``) when torch
raises that error, which cannot mean anything else here. Any other failure stays one.
Subprocesses start with the real answer; the interpreter session that
``tests/conftest.py`` starts on a GPU machine hides the GPU anyway.
"""

import sys

import pytest
import torch

# torch's errors at a CUDA tensor on a machine without CUDA.
NO_CUDA = ("Torch not compiled with CUDA enabled", "Found no NVIDIA driver")


def _pretended(real, pretence):
    """``pretence`` to everyone but torch itself, which would then initialise CUDA (inductor
    does for CPU graphs): on a GPU machine torch's internal checks succeed, here they cannot."""

    def answer():
        caller = sys._getframe(1).f_globals.get("__name__", "")
        return real() if caller.split(".")[0] == "torch" else pretence

    return answer


torch.cuda.is_available = _pretended(torch.cuda.is_available, True)
torch.cuda.device_count = _pretended(torch.cuda.device_count, 1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    error = call.excinfo.value if report.failed and call.excinfo is not None else None
    while error is not None and not any(text in str(error) for text in NO_CUDA):
        error = error.__cause__ or error.__context__
    if error is not None:
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: reached a CUDA tensor: {error}")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a real CUDA device (torch.cuda.is_available() is pretended)")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)
