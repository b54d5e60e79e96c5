#!/usr/bin/env bash
# shellcheck disable=SC2317  # the stage functions are called by name: "stage_$name"
# The one command for a lent GPU: see usage below.
set -euo pipefail

usage() {
	cat <<'EOF'
Usage: bench/gpu_check.sh [--out DIR] [--quick] [--dry-run] [--help]

Checks spectriton on a CUDA machine from this source tree, offline and installing
nothing, in under 8 minutes. Stages (each with its own time budget; one failing does not
stop the others; the exit status is 1 if any failed):

  env      python/torch/triton/GPU versions, profilers found          -> env.txt
  tests    python -m pytest -q tests (the AOT build test is left to
           the kernels stage)                                        -> tests.txt
  bench    the four pytest-benchmark suites, one JSON each           -> bench.txt
  profile  one SpecVGG training step (bench/profile_step.py) under
           nsys, else ncu, else unprofiled                           -> profile.txt,
                                                                        profile.nsys-rep | profile.ncu-rep
  kernels  python -m spectriton.kernels (AOT build, sm_80 + sm_90)   -> kernels.txt
  report   bench/report.py: the benchmarks merged, Markdown tables,
           and this run's stage summary                              -> bench-<gpu>.json, report.md

Options:
  --out DIR   where the files go (default: $OUT; one of the two is required)
  --quick     pass --quick to the benchmark suites
  --dry-run   print the stages and their commands, run nothing
  --help      this text

Environment: PYTHON (default python3) is the interpreter that holds torch and triton.
EOF
}

die() {
	echo "gpu_check.sh: $*" >&2
	exit 2
}

out=${OUT:-}
quick=0
dry=0
while (($#)); do
	case $1 in
	-h | --help)
		usage
		exit 0
		;;
	--quick) quick=1 ;;
	--dry-run) dry=1 ;;
	--out)
		(($# >= 2)) || die "--out needs a folder"
		out=$2
		shift
		;;
	--out=*) out=${1#--out=} ;;
	*) die "unknown option '$1' (see --help)" ;;
	esac
	shift
done
[[ -n $out ]] || die "no output folder: pass --out DIR or set OUT"
[[ $out == /* ]] || out=$PWD/$out

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
py=${PYTHON:-python3}
bench_args=()
((quick)) && bench_args+=(--quick)
if ((dry)); then
	tmp="\$TMPDIR/gpu_check.XXXXXX"
	gpu='<gpu>'
else
	mkdir -p "$out"
	out=$(cd "$out" && pwd)
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	gpu=cpu
fi

deadline=0
# run CMD...: CMD under the time left to the current stage (printed only, with --dry-run).
run() {
	if ((dry)); then
		echo "    $*"
		return 0
	fi
	local left=$((deadline - SECONDS))
	((left > 0)) || return 124
	timeout -k 5 "$left" "$@"
}

# made FILE: whether a command made FILE (assumed, with --dry-run).
made() { ((dry)) || [[ -s $1 ]]; }

# tool NAME CANDIDATE...: NAME on PATH, else the first executable candidate, else nothing.
tool() {
	local name=$1 path
	shift
	command -v "$name" && return
	for path in "$@"; do
		[[ -x $path ]] && echo "$path" && return
	done
	true
}

nsys=$(tool nsys /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys \
	/opt/nvidia/nsight-compute/*/host/target-linux-x64/nsys)
ncu=$(tool ncu /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu)

# Importing spectriton.kernels from this tree: an editable install already does it;
# otherwise a folder of links (spectriton/* plus kernels/ as spectriton/kernels) goes on
# PYTHONPATH, with PYTHONSAFEPATH=1 so that ./spectriton, which lacks kernels/, never
# shadows it (also in subprocesses).
check_import='import pathlib, spectriton.kernels as k
assert pathlib.Path(k.__file__).resolve().is_relative_to(pathlib.Path.cwd().resolve()), k.__file__'
import_path() {
	if ((dry)); then
		echo "    link spectriton/* and kernels/ into $tmp/shim/spectriton; PYTHONPATH=$tmp/shim PYTHONSAFEPATH=1"
		return 0
	fi
	if run "$py" -c "$check_import" 2>/dev/null; then
		echo "import: spectriton.kernels already resolves to this tree"
		return 0
	fi
	mkdir -p "$tmp/shim/spectriton"
	local f
	for f in spectriton/*; do
		[[ $f == */__pycache__ ]] || ln -s "$root/$f" "$tmp/shim/spectriton/"
	done
	ln -s "$root/kernels" "$tmp/shim/spectriton/kernels"
	export PYTHONPATH="$tmp/shim${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1
	echo "import: PYTHONPATH=$PYTHONPATH PYTHONSAFEPATH=1"
	run "$py" -c "$check_import"
}

stage_env() {
	import_path || return
	run "$py" - <<'EOF' || return
import platform, sys, torch, triton
import spectriton
print(f"python {platform.python_version()} ({sys.executable}), torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}")
print(f"spectriton from {spectriton.__file__}")
print(f"CUDA available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs")
EOF
	((dry)) || echo "nsys: ${nsys:-not found}; ncu: ${ncu:-not found}"
	if ((!dry)); then
		uname -a
		nvidia-smi || true
		git rev-parse HEAD 2>/dev/null || true
	fi
	run "$py" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"'
}

stage_tests() {
	run "$py" -m pytest -q -p no:cacheprovider tests \
		--deselect tests/test_aot.py::test_every_kernel_builds_for_sm80_and_sm90_without_spills_and_on_tensor_cores
}

stage_bench() {
	local suite rc=0
	for suite in kernels layers models memory; do
		run "$py" -m pytest -q -p no:cacheprovider "bench/test_${suite}_bench.py" "${bench_args[@]}" \
			--benchmark-json="$tmp/bench-$suite.json" || rc=$?
	done
	return "$rc"
}

stage_profile() {
	local step=("$py" bench/profile_step.py --model vgg16 --batch 64 --steps 3)
	if [[ -n $nsys ]]; then
		if run "$nsys" profile --capture-range=cudaProfilerApi --capture-range-end=stop --trace=cuda,nvtx \
			--cuda-memory-usage=true --force-overwrite=true -o "$tmp/profile" "${step[@]}" &&
			made "$tmp/profile.nsys-rep"; then
			run cp "$tmp/profile.nsys-rep" "$out/"
			run "$nsys" stats --report nvtx_sum,cuda_gpu_kern_sum "$tmp/profile.nsys-rep"
			return
		fi
		echo "nsys made no report${ncu:+; trying ncu}"
	fi
	if [[ -n $ncu ]]; then
		run "$ncu" --profile-from-start off -k regex:spectral_ --launch-count 20 --section SpeedOfLight \
			--section MemoryWorkloadAnalysis --force-overwrite -o "$tmp/profile" "${step[@]}" || return
		run cp "$tmp/profile.ncu-rep" "$out/"
		run "$ncu" --import "$tmp/profile.ncu-rep" --print-summary per-kernel
		return
	fi
	[[ -z $nsys ]] || return 1
	echo "note: neither nsys nor ncu found; the step runs unprofiled"
	run "${step[@]}"
}

stage_kernels() {
	run env -u TRITON_INTERPRET "$py" -m spectriton.kernels
}

stage_report() {
	local inputs=("$tmp"/bench-*.json)
	((dry)) || [[ -e ${inputs[0]} ]] || {
		echo "no benchmark JSON to report"
		return 1
	}
	if ((!dry)); then
		gpu=$("$py" -c 'import re, torch
print(re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-") if torch.cuda.is_available() else "cpu")') || true
	fi
	run "$py" bench/report.py "${inputs[@]}" --merge "$out/bench-$gpu.json" --out "$out/report.md"
}

# Budgets in seconds: 445 in all, plus at most 5 s of kill grace per stage: under 8 minutes.
stages=(env:15:env.txt tests:120:tests.txt bench:160:bench.txt profile:60:profile.txt
	kernels:75:kernels.txt report:15:report.md)
summary=("| stage | status | seconds |" "|---|---|---|")
failed=0
for entry in "${stages[@]}"; do
	IFS=: read -r name budget log <<<"$entry"
	if ((dry)); then
		echo "$name (${budget} s) -> $out/$log"
		deadline=$((SECONDS + budget))
		"stage_$name"
		continue
	fi
	start=$SECONDS
	deadline=$((start + budget))
	rc=0
	if [[ $name == report ]]; then
		"stage_$name" >"$tmp/report.log" 2>&1 || rc=$?
	else
		"stage_$name" >"$out/$log" 2>&1 || rc=$?
	fi
	case $rc in
	0) status=ok ;;
	124 | 137) status="TIMEOUT (${budget} s)" ;;
	*) status="FAILED (exit $rc)" ;;
	esac
	((rc == 0)) || failed=1
	summary+=("| $name | $status | $((SECONDS - start)) |")
	echo "gpu_check: $name: $status, $((SECONDS - start)) s -> $log"
done
((dry)) && exit 0

{
	echo
	echo "### gpu_check.sh stages"
	echo
	printf '%s\n' "${summary[@]}"
	if [[ -s $tmp/report.log ]]; then
		printf '\nreport.py said:\n\n'
		sed 's/^/    /' "$tmp/report.log"
	fi
} >>"$out/report.md"
exit "$failed"
