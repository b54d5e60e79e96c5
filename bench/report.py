"""Markdown tables for the README from pytest-benchmark JSON files.

    pytest bench --benchmark-json=bench/results/<device>.json
    python bench/report.py bench/results/*.json [--out FILE] [--merge FILE]

One section per device and torch / triton versions, one table per suite (kernels, layers,
models, memory), one row per provider: median time, speedup over the suite's baseline
provider, and whatever the suite recorded in ``extra_info`` (FLOP rate, bandwidth, fraction
of peak, density, saved bytes, peak bytes, largest batch). Columns no row fills are left out.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

# The provider each suite's speedup and relative memory are measured against.
BASELINES = {"kernels": "torch", "layers": "nn.Conv2d", "models": "spatial", "memory": "spatial"}


@dataclass
class Row:
    suite: str
    test: str
    case: str
    shape: str
    provider: str
    median: float
    info: dict


def sig(x: float | None, digits: int = 3) -> str:
    """``x`` to ``digits`` significant digits, never in exponent form."""
    if x is None:
        return ""
    if x == 0:
        return "0"
    x = float(f"{x:.{digits}g}")  # rounded first, so that 99.96 gives 100, not 100.0
    return f"{x:.{max(0, digits - 1 - math.floor(math.log10(abs(x))))}f}"


def size(n: float | None) -> str:
    """Bytes in binary units, 3 significant digits."""
    if n is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{sig(n)} {unit}"
        n /= 1024
    raise AssertionError


def rows(benchmarks: list[dict]) -> list[Row]:
    out = []
    for b in benchmarks:
        info = b.get("extra_info", {})
        match = re.search(r"test_(\w+?)_bench\.py", b["fullname"])
        provider = str(info.get("provider", b.get("param") or ""))
        params = {k: str(v) for k, v in (b.get("params") or {}).items() if str(v) != provider}
        size_name = params.pop("size", None)
        shape = info.get("shape") or size_name or (f"batch {info['batch']}" if "batch" in info else "")
        test = b["name"].split("[")[0].removeprefix("test_")
        suite = match.group(1) if match else "other"
        out.append(Row(suite, test, ",".join(params.values()), shape, provider, b["stats"]["median"], info))
    return out


def _saved(row: Row) -> float | None:
    return row.info.get("saved_bytes", row.info.get("saved_bytes_per_sample"))


def _ratio(a: float | None, b: float | None) -> str:
    return "" if a is None or not b else sig(a / b)


def _percent(x: float | None, digits: int) -> str:
    return "" if x is None else f"{sig(100 * x, digits)} %"


def table(suite_rows: list[Row], baseline: str | None) -> str:
    """One Markdown table: rows grouped by case and shape, the baseline first in each."""
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for row in suite_rows:
        groups.setdefault((row.test, row.case, row.shape), []).append(row)
    several = len({r.test for r in suite_rows}) > 1  # else the test's name says nothing

    def label(r: Row) -> str:
        return (r.test + (f"[{r.case}]" if r.case else "")) if several else r.case

    saved_title = "saved/sample" if any("saved_bytes_per_sample" in r.info for r in suite_rows) else "saved"
    columns = {
        "benchmark": lambda r, base: label(r),
        "shape": lambda r, base: r.shape,
        "provider": lambda r, base: r.provider,
        "median ms": lambda r, base: sig(r.median * 1e3),
        f"speedup vs {baseline}": lambda r, base: f"{_ratio(base.median, r.median)}x" if base else "",
        "GFLOP/s": lambda r, base: sig(r.info["flops"] / r.median / 1e9) if r.info.get("flops") else "",
        "GB/s": lambda r, base: sig(r.info.get("GB/s")),
        "of peak": lambda r, base: _percent(r.info.get("fraction_of_peak"), 2),
        "kept": lambda r, base: _percent(r.info.get("density"), 3),
        saved_title: lambda r, base: size(_saved(r)),
        f"memory vs {baseline}": lambda r, base: _ratio(_saved(r), base and _saved(base)),
        "peak": lambda r, base: size(r.info.get("peak_bytes")),
        "largest batch (8 GiB)": lambda r, base: str(r.info.get("largest_batch_8GiB", "")),
    }
    body = []
    for group in groups.values():
        base = next((r for r in group if r.provider == baseline), None)
        group.sort(key=lambda r: r is not base)
        body += [[cell(r, base) for cell in columns.values()] for r in group]
    keep = [i for i in range(len(columns)) if any(line[i] for line in body)]
    titles = list(columns)
    lines = ["| " + " | ".join(titles[i] for i in keep) + " |", "|" + "---|" * len(keep)]
    lines += ["| " + " | ".join(line[i] for i in keep) + " |" for line in body]
    return "\n".join(lines)


def render(runs: list[dict]) -> str:
    """Markdown for the benchmarks of ``runs`` (parsed JSON files)."""
    sections: dict[tuple[str, str, str], tuple[dict, list[Row]]] = {}
    for run in runs:
        for row in rows(run["benchmarks"]):
            key = tuple(str(row.info.get(k, "?")) for k in ("device", "torch", "triton"))
            sections.setdefault(key, (run, []))[1].append(row)
    out = []
    for (device, torch_version, triton_version), (run, section) in sections.items():
        commit = run.get("commit_info", {})
        stamp = f"commit {commit.get('id', '?')[:7]}{' (dirty)' if commit.get('dirty') else ''}"
        when = run.get("datetime", "?")[:16].replace("T", " ")
        out.append(f"### {device}: torch {torch_version}, triton {triton_version}\n")
        out.append(f"pytest-benchmark {run.get('version', '?')}, {stamp}, {when} UTC; times are medians.\n")
        suites = sorted({r.suite for r in section}, key=lambda s: (list(BASELINES) + [s]).index(s))
        for suite in suites:
            out.append(
                f"#### {suite}\n\n" + table([r for r in section if r.suite == suite], BASELINES.get(suite))
            )
            out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="pytest-benchmark JSON files")
    parser.add_argument("--out", type=Path, help="write the Markdown here instead of printing it")
    parser.add_argument(
        "--merge", type=Path, help="also write every benchmark of the inputs as one JSON file"
    )
    args = parser.parse_args(argv)
    runs = [json.loads(path.read_text()) for path in args.files]
    if not any(run["benchmarks"] for run in runs):
        print("report.py: no benchmarks in the input", file=sys.stderr)
        return 1
    if args.merge:
        merged = {**runs[0], "benchmarks": [b for run in runs for b in run["benchmarks"]]}
        args.merge.write_text(json.dumps(merged, indent=1))
    markdown = render(runs)
    if args.out:
        args.out.write_text(markdown)
    else:
        print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
