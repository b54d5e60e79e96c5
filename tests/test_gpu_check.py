"""The GPU tooling, checked where there is no GPU: bench/gpu_check.sh's interface (it runs
nothing real here), bench/report.py's tables and bench/profile_step.py on CPU."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
STAGES = ("env", "tests", "bench", "profile", "kernels", "report")


def _script(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OUT"} if env is None else env
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="no shellcheck")
def test_shellcheck_is_clean():
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_help_lists_the_options():
    result = _script("--help")
    assert result.returncode == 0
    for option in ("--out", "--quick", "--dry-run", "--help"):
        assert option in result.stdout


def test_dry_run_prints_every_stage_and_creates_nothing(tmp_path):
    out = tmp_path / "out"
    result = _script("--dry-run", "--quick", "--out", str(out))
    assert result.returncode == 0, result.stderr
    for stage in STAGES:
        assert f"\n{stage} (" in "\n" + result.stdout
    assert "pytest" in result.stdout and "--quick" in result.stdout and "profile_step.py" in result.stdout
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_dry_run_takes_out_from_the_environment(tmp_path):
    result = _script("--dry-run", env={**os.environ, "OUT": str(tmp_path / "o")})
    assert result.returncode == 0 and f"{tmp_path}/o/report.md" in result.stdout


@pytest.mark.parametrize("args", [("--bogus",), ("--dry-run", "--out")])
def test_bad_options_exit_2_with_one_line(args):
    result = _script(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""


def test_no_output_folder_exits_2():
    result = _script("--dry-run")
    assert result.returncode == 2 and "--out" in result.stderr


def _report(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "bench" / "report.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def _bench(suite: str, test: str, params: dict, median: float, **extra) -> dict:
    """One benchmark as pytest-benchmark writes it (the fields report.py reads)."""
    param = "-".join(map(str, params.values()))
    name = f"{test}[{param}]"
    info = {"device": "NVIDIA H200", "torch": "2.11.0", "triton": "3.6.0", **extra}
    return {
        "group": None,
        "name": name,
        "fullname": f"bench/test_{suite}_bench.py::{name}",
        "params": params,
        "param": param,
        "extra_info": info,
        "stats": {"min": median, "median": median, "mean": median, "rounds": 5},
    }


def test_report_tables(tmp_path):
    kernels = [
        _bench(
            "kernels", "test_threshold_compact_split_tanh", {"size": "paper", "provider": p}, t,
            provider=p, shape="B64 C64 P34x34", **{"GB/s": bw, "fraction_of_peak": f}, density=0.1,
        )
        for p, t, bw, f in (("torch", 2e-3, 50.0, None), ("triton", 5e-4, 2400.0, 0.5))
    ]  # fmt: skip
    memory = [
        _bench(
            "memory", "test_memory_of_a_training_step", {"name": "vgg16", "variant": v}, 0.1,
            provider=v, model="vgg16", batch=64, saved_bytes_per_sample=s, peak_bytes=p, largest_batch_8GiB=n,
        )
        for v, s, p, n in (("spatial", 3 * 2**20, 2**30, 2500), ("spec", 2**19, 2**28, 20000))
    ]  # fmt: skip
    run = {"version": "5.3.1", "datetime": "2026-11-30T10:00:00", "commit_info": {"id": "abcdef123"}}
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({**run, "benchmarks": kernels}))
    second.write_text(json.dumps({**run, "benchmarks": memory}))
    markdown, merged = tmp_path / "report.md", tmp_path / "all.json"
    result = _report(str(first), str(second), "--out", str(markdown), "--merge", str(merged))
    assert result.returncode == 0, result.stderr
    text = markdown.read_text()
    assert "### NVIDIA H200: torch 2.11.0, triton 3.6.0" in text
    assert "pytest-benchmark 5.3.1, commit abcdef1, 2026-11-30 10:00 UTC" in text
    lines = text.splitlines()
    assert "| shape | provider | median ms | speedup vs torch | GB/s | of peak | kept |" in lines
    assert "| B64 C64 P34x34 | torch | 2.00 | 1.00x | 50.0 |  | 10.0 % |" in lines
    assert "| B64 C64 P34x34 | triton | 0.500 | 4.00x | 2400 | 50 % | 10.0 % |" in lines
    assert "| vgg16 | batch 64 | spec | 100 | 1.00x | 512 KiB | 0.167 | 256 MiB | 20000 |" in lines
    assert len(json.loads(merged.read_text())["benchmarks"]) == 4


def test_report_refuses_empty_input(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"benchmarks": []}))
    result = _report(str(empty))
    assert result.returncode == 1 and "no benchmarks" in result.stderr


def test_profile_step_runs_on_cpu():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "profile_step.py"), "--model", "lenet5", "--batch", "2",
         "--steps", "2", "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "step 0 (warmup)" in result.stdout and "step 1 (last)" in result.stdout
