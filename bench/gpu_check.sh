#!/usr/bin/env bash
# shellcheck disable=SC2317,SC2329  # the stage functions are called by name: "stage_$name"
# The one command for a lent GPU: see usage below.
set -euo pipefail

usage() {
	cat <<'EOF'
Usage: bench/gpu_check.sh [--out DIR] [--budget SECONDS] [--quick] [--rehearse] [--dry-run] [--help]

Checks spectriton on a CUDA machine from this source tree, offline and installing
nothing, within --budget seconds (default 400: under 7 minutes). Stages run in order,
each cut at its share of the time left (shares below, in %; what a stage leaves unused
goes to the ones after it); each writes its file under the output folder as it goes, so
a stage cut short still leaves what it did. One failing does not stop the others; the
exit status is 1 if any failed or ran out of time.

  env      (5)  python/torch/triton/GPU versions, profilers found          -> env.txt
  tests    (40) the GPU tests: python -m pytest -v tests -m cuda (kernels
                vs their torch twins on CUDA, TF32/bf16 tolerances, density,
                compile; tests/test_bench_suites.py left out)            -> tests.txt
  timings  (30) bench/gpu_timings.py: SpecVGG layers against cuDNN, SpecVGG
                against the spatial and checkpointed VGG, a converted
                ResNet-18 step against the original; warmed (Triton's
                compiles and autotuning cached for the run), median ms and
                peak memory                                               -> timings.txt, timings.json
  profile  (20) one SpecVGG training step (bench/profile_step.py) under
                Nsight Systems if an nsys makes a report of a trivial
                command, else under torch.profiler                         -> profile.txt,
                                                                              profile.nsys-rep | profile.json.gz
  report   (5)  the stages' budgets and results, the tests' summary, the
                timings table                                              -> report.md

Options:
  --out DIR         where the files go (default: $OUT; one of the two is required)
  --budget SECONDS  the whole run's time (default 400)
  --quick           fewer timing rounds (3 instead of 10)
  --rehearse        every stage on CPU: the tests with torch.cuda.is_available()
                    pretended (-p tests.pretend_cuda), tiny timings with the Triton
                    kernels interpreted, the profile on LeNet-5
  --dry-run         print the stages, their budgets and commands, run nothing
  --help            this text

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
rehearse=0
budget=400
while (($#)); do
	case $1 in
	-h | --help)
		usage
		exit 0
		;;
	--quick) quick=1 ;;
	--dry-run) dry=1 ;;
	--rehearse) rehearse=1 ;;
	--out | --budget)
		(($# >= 2)) || die "$1 needs a value"
		if [[ $1 == --out ]]; then out=$2; else budget=$2; fi
		shift
		;;
	--out=*) out=${1#--out=} ;;
	--budget=*) budget=${1#--budget=} ;;
	*) die "unknown option '$1' (see --help)" ;;
	esac
	shift
done
[[ -n $out ]] || die "no output folder: pass --out DIR or set OUT"
[[ $out == /* ]] || out=$PWD/$out
if [[ ! $budget =~ ^[0-9]+$ ]] || ((budget < 30)); then
	die "--budget must be a whole number of seconds >= 30"
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
py=${PYTHON:-python3}
if ((dry)); then
	tmp="\$TMPDIR/gpu_check.XXXXXX"
else
	mkdir -p "$out"
	out=$(cd "$out" && pwd)
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
fi
# Triton's compiles and autotuning results, kept for the run: each shape is tuned once,
# whichever stage meets it first.
export TRITON_CACHE_DIR="$tmp/triton" TRITON_CACHE_AUTOTUNING=1
# A stage's command is interrupted (SIGINT: pytest prints its summary, Python scripts stop
# where they are) $grace seconds before its budget ends (5, or a fifth of a short budget),
# and killed at the end.
grace=5

deadline=0
# run CMD...: CMD under the time left to the current stage (printed only, with --dry-run).
run() {
	if ((dry)); then
		echo "    $*"
		return 0
	fi
	local left=$((deadline - SECONDS - grace))
	((left > 0)) || return 124
	timeout -s INT -k "$grace" "$left" "$@"
}

# tool NAME CANDIDATE...: NAME on PATH, then the executable candidates, one a line.
tools() {
	local name=$1 path
	shift
	command -v "$name" || true
	for path in "$@"; do
		[[ -x $path ]] && echo "$path"
	done
	true
}

# The first nsys that writes a report of a trivial command (the one inside Nsight Compute
# writes a .qdstrm and no report on the lent machines).
working_nsys() {
	local nsys
	while read -r nsys; do
		[[ -n $nsys ]] || continue
		rm -f "$tmp/probe.nsys-rep"
		if timeout 60 "$nsys" profile --force-overwrite=true -o "$tmp/probe" true >/dev/null 2>&1 &&
			[[ -s $tmp/probe.nsys-rep ]]; then
			echo "$nsys"
			return
		fi
		echo "$nsys makes no report: not used" >&2
	done < <(tools nsys /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys \
		/opt/nvidia/nsight-compute/*/host/target-linux-x64/nsys)
}

# Importing spectriton.kernels from this tree: an editable install already does it;
# otherwise a folder of links (spectriton/* plus kernels/ as spectriton/kernels) goes on
# PYTHONPATH, with PYTHONSAFEPATH=1 so that ./spectriton, which lacks kernels/, never
# shadows it (also in subprocesses). One interpreter start checks that and says what runs.
environment='import pathlib, platform, sys, torch, triton
import spectriton.kernels as k
if not pathlib.Path(k.__file__).resolve().is_relative_to(pathlib.Path.cwd().resolve()):
    sys.exit(f"spectriton.kernels from {k.__file__}, not this tree")
print(f"python {platform.python_version()} ({sys.executable}), torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}")
print(f"spectriton.kernels from {k.__file__}")
print(f"CUDA available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs")
elif sys.argv[1] != "rehearse":
    print("no CUDA device")
    sys.exit(4)  # 1 (an import failed, or not from this tree) sets up the links below'
stage_env() {
	local mode=gpu
	((rehearse)) && mode=rehearse
	if ((dry)); then
		echo "    $py -c <versions, GPU, spectriton.kernels from this tree?> $mode"
		echo "    (if not from this tree: link spectriton/* and kernels/ into $tmp/shim/spectriton;" \
			"PYTHONPATH=$tmp/shim PYTHONSAFEPATH=1, and again)"
		return 0
	fi
	local rc=0
	run "$py" -c "$environment" "$mode" || rc=$?
	if ((rc == 1)); then
		mkdir -p "$tmp/shim/spectriton"
		local f
		for f in spectriton/*; do
			[[ $f == */__pycache__ ]] || ln -s "$root/$f" "$tmp/shim/spectriton/"
		done
		ln -s "$root/kernels" "$tmp/shim/spectriton/kernels"
		export PYTHONPATH="$tmp/shim${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1
		echo "import: PYTHONPATH=$PYTHONPATH PYTHONSAFEPATH=1"
		rc=0
		run "$py" -c "$environment" "$mode" || rc=$?
	fi
	nsys=$(working_nsys)
	echo "nsys: ${nsys:-none that makes a report}"
	uname -a
	nvidia-smi || true
	git rev-parse HEAD 2>/dev/null || true
	return "$rc"
}

stage_tests() {
	local pytest=("$py" -m pytest -v -rfEs -p no:cacheprovider)
	((rehearse)) && pytest+=(-p tests.pretend_cuda)
	run "${pytest[@]}" tests -m cuda --ignore=tests/test_bench_suites.py
}

stage_timings() {
	local timings=("$py" bench/gpu_timings.py --json "$out/timings.json")
	((quick)) && timings+=(--rounds 3)
	if ((rehearse)); then
		timings=(env SPECTRITON_BACKEND=triton TRITON_INTERPRET=1 "${timings[@]}" --tiny --rounds 1 --device cpu)
	fi
	run "${timings[@]}"
}

stage_profile() {
	local step=("$py" bench/profile_step.py --model vgg16 --batch 64 --steps 3)
	((rehearse)) && step=("$py" bench/profile_step.py --model lenet5 --batch 2 --steps 2 --device cpu)
	((dry)) && echo "    if an nsys makes a report of 'true' (else torch.profiler, below):"
	if [[ -n $nsys ]] || ((dry)); then
		run "${nsys:-nsys}" profile --capture-range=cudaProfilerApi --capture-range-end=stop --trace=cuda,nvtx \
			--cuda-memory-usage=true --force-overwrite=true -o "$tmp/profile" "${step[@]}" || return
		run cp "$tmp/profile.nsys-rep" "$out/" # nsys stats writes an SQLite file beside the report
		run "${nsys:-nsys}" stats --report nvtx_sum,cuda_gpu_kern_sum "$tmp/profile.nsys-rep"
		((dry)) || return 0
	fi
	((dry)) || echo "no working nsys: the last step under torch.profiler"
	run "${step[@]}" --trace "$out/profile.json.gz"
}

stage_report() {
	((dry)) && return
	{
		echo "# gpu_check.sh report"
		echo
		echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)," \
			"budget ${budget} s$( ((rehearse)) && echo ', REHEARSAL on CPU')"
		grep -E '^(python|GPU|CUDA available|nsys)' "$out/env.txt" | sed 's/^/    /' || true
		echo
		echo "## Stages"
		echo
		printf '%s\n' "${summary[@]}"
		echo
		echo "## Tests (tests.txt)"
		echo
		grep -E '^(FAILED|ERROR)|(passed|failed|skipped|error|deselected)[^a-z]* in [0-9.]+s|warnings? summary|flipped' \
			"$out/tests.txt" | sed 's/^/    /' || echo "    (no pytest summary: see tests.txt)"
		echo
		echo "## Timings (timings.txt, timings.json)"
		echo
		grep -E '^\|' "$out/timings.txt" || echo "(no timings: see timings.txt)"
		echo
		echo "## Profile (profile.txt)"
		echo
		grep -E '^step ' "$out/profile.txt" | sed 's/^/    /' || true
		local trace
		for trace in "$out"/profile.nsys-rep "$out"/profile.json.gz; do
			[[ ! -e $trace ]] || echo "    trace: ${trace##*/}"
		done
	} >"$out/report.md"
}

# name:share:floor:file: a stage gets its share (percent) of the time left among the stages
# left, and at least floor seconds (interpreter starts take seconds on a loaded machine).
stages=(env:5:15:env.txt tests:40:20:tests.txt timings:30:20:timings.txt profile:20:15:profile.txt
	report:5:2:report.md)
summary=("| stage | budget s | status | seconds |" "|---|---|---|---|")
nsys=
failed=0
planned=0 # with --dry-run, each stage is taken to use its whole budget
shares_left=0
for entry in "${stages[@]}"; do
	IFS=: read -r _ share _ _ <<<"$entry"
	shares_left=$((shares_left + share))
done
for entry in "${stages[@]}"; do
	IFS=: read -r name share floor log <<<"$entry"
	stage_budget=$(((budget - (dry ? planned : SECONDS)) * share / shares_left))
	shares_left=$((shares_left - share))
	((stage_budget >= floor)) || stage_budget=$floor
	planned=$((planned + stage_budget))
	grace=$((stage_budget >= 25 ? 5 : stage_budget / 5))
	echo "gpu_check: $name: budget ${stage_budget} s -> $out/$log"
	start=$SECONDS
	deadline=$((start + stage_budget))
	if ((dry)); then
		"stage_$name"
		continue
	fi
	rc=0
	if [[ $name == report ]]; then
		"stage_$name" || rc=$?
	else
		"stage_$name" >"$out/$log" 2>&1 || rc=$?
	fi
	case $rc in
	0) status=ok ;;
	124 | 137) status=TIMEOUT ;;
	*) status="FAILED (exit $rc)" ;;
	esac
	((rc == 0)) || failed=1
	summary+=("| $name | $stage_budget | $status | $((SECONDS - start)) |")
	echo "gpu_check: $name: $status, $((SECONDS - start)) s"
done
exit "$failed"
