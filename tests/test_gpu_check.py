"""The GPU tooling, checked where there is no GPU: bench/gpu_check.sh's interface and its
CPU rehearsal, the test suite with a GPU pretended (tests/pretend_cuda.py),
bench/report.py's tables and bench/profile_step.py on CPU."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
STAGES = ("env", "tests", "timings", "profile", "report")


def _script(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OUT"} if env is None else env
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def _budgets(stdout: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r"^gpu_check: (\w+): budget (\d+) s -> ", stdout, re.M)}


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="no shellcheck")
def test_shellcheck_is_clean():
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_help_lists_the_options():
    result = _script("--help")
    assert result.returncode == 0
    for option in ("--out", "--budget", "--quick", "--rehearse", "--dry-run", "--help"):
        assert option in result.stdout


def test_dry_run_prints_every_stage_and_creates_nothing(tmp_path):
    out = tmp_path / "out"
    result = _script("--dry-run", "--quick", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert list(_budgets(result.stdout)) == list(STAGES)
    assert "-m cuda --ignore=tests/test_bench_suites.py" in result.stdout
    assert "gpu_timings.py" in result.stdout and "--rounds 3" in result.stdout
    assert "profile_step.py" in result.stdout and "--trace" in result.stdout
    assert "pretend_cuda" not in result.stdout and "TRITON_INTERPRET" not in result.stdout
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("budget", [None, "100"])
def test_budgets_fit_the_whole_budget(tmp_path, budget):
    """Under 7 minutes by default, each stage's command cut before its budget ends."""
    args = ("--dry-run", "--out", str(tmp_path)) + (("--budget", budget) if budget else ())
    budgets = _budgets(_script(*args).stdout)
    assert sum(budgets.values()) <= int(budget or 420) and budgets["tests"] > budgets["report"]


def test_dry_run_rehearsal_pretends_cuda_and_interprets_the_kernels(tmp_path):
    result = _script("--dry-run", "--rehearse", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "-p tests.pretend_cuda" in result.stdout and "TRITON_INTERPRET=1" in result.stdout
    assert "--tiny" in result.stdout and "--device cpu" in result.stdout


def test_dry_run_takes_out_from_the_environment(tmp_path):
    result = _script("--dry-run", env={**os.environ, "OUT": str(tmp_path / "o")})
    assert result.returncode == 0 and f"{tmp_path}/o/report.md" in result.stdout


@pytest.mark.parametrize(
    "args", [("--bogus",), ("--dry-run", "--out"), ("--dry-run", "--out", "o", "--budget", "soon")]
)
def test_bad_options_exit_2_with_one_line(args):
    result = _script(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""


def test_no_output_folder_exits_2():
    result = _script("--dry-run")
    assert result.returncode == 2 and "--out" in result.stderr


def test_rehearsal_runs_every_stage_on_cpu_and_leaves_its_files(tmp_path):
    """The whole script on CPU within 80 s. A stage may run out of its budget on a loaded
    machine (what it wrote so far stays); none may fail."""
    env = {**{k: v for k, v in os.environ.items() if k != "OUT"}, "PYTHON": sys.executable}
    result = _script("--rehearse", "--budget", "80", "--out", str(tmp_path), env=env, timeout=150)
    assert list(_budgets(result.stdout)) == list(STAGES)
    outcomes = dict(
        re.findall(r"^gpu_check: (\w+): (ok|TIMEOUT|FAILED \(exit \d+\)), \d+ s$", result.stdout, re.M)
    )
    assert list(outcomes) == list(STAGES) and "FAILED" not in result.stdout, result.stdout
    assert result.returncode == (0 if set(outcomes.values()) == {"ok"} else 1)
    for name in ("env.txt", "tests.txt", "timings.txt", "profile.txt"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "CUDA available: False" in (tmp_path / "env.txt").read_text()
    assert "torch.cuda.is_available() is pretended" in (tmp_path / "tests.txt").read_text()
    report = (tmp_path / "report.md").read_text()
    assert all(f"| {stage} |" in report for stage in STAGES[:-1]) and "REHEARSAL" in report
    if (tmp_path / "timings.json").exists():  # written after its first row
        rows = json.loads((tmp_path / "timings.json").read_text())
        assert rows[0]["case"] == "vgg layer" and rows[0]["form"] == "spec" and rows[0]["median_ms"] > 0


def test_with_a_gpu_pretended_triton_tests_on_cpu_tensors_run_interpreted():
    """On a GPU machine TRITON_INTERPRET stays unset for the CUDA kernels; a test that forces
    the Triton backend on CPU tensors then runs in the interpreter subprocess
    (tests/conftest.py) and passes, where in-process it would raise from backend.py."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    node = "tests/test_numerics.py::test_threshold_decision_is_exact_far_from_float32_range[triton-usual]"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "tests.pretend_cuda",
        node,
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 passed" in result.stdout


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
