"""The benchmark suites keep running: ``pytest bench --quick`` once, untimed."""

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pytest_benchmark")

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_suites_pass_untimed():
    command = [
        sys.executable,
        "-m",
        "pytest",
        "bench",
        "--quick",
        "--benchmark-disable",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout.splitlines()[-1]
