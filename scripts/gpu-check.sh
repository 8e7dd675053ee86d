#!/usr/bin/env bash
# GPU check for package cuda, in two halves:
#   scripts/gpu-check.sh build        here (Go, no GPU needed): builds the test binary into
#                                     .devcarry/cudatest (glibc linked dynamically; a static
#                                     binary crashes inside dlopen)
#   scripts/gpu-check.sh run [OUT]    on a machine with an NVIDIA GPU (no Go needed), e.g.
#                                     through the device tool with carry [".devcarry"]: runs
#                                     every test and benchmark, writes logs to OUT (default
#                                     /tmp/gpu-check), prints a table.
# Set GPU_CHECK_BENCH to a -test.bench pattern ('.' by default; 'none' skips benchmarks) and
# GPU_CHECK_BENCHTIME (default 200x).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
build)
	mkdir -p .devcarry
	go test -c -o .devcarry/cudatest ./cuda/
	echo "built .devcarry/cudatest"
	;;
run)
	out=${2:-/tmp/gpu-check}
	mkdir -p "$out"
	bin=$PWD/.devcarry/cudatest
	[ -x "$bin" ] || { echo "no $bin: run 'scripts/gpu-check.sh build' first" >&2; exit 1; }
	nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/gpu: /' || true
	cd cuda
	status=0
	"$bin" -test.v -test.count=1 -test.timeout 300s >"$out/test.log" 2>&1 || status=$?
	grep -E '^cuda: ' "$out/test.log" | head -1 || true
	echo "== tests"
	grep -E '^(--- |ok|PASS|FAIL)|^\s+\S+_test.go:[0-9]+: (no CUDA|.*: max \|cuda-cpu)' "$out/test.log" | sed 's/^/  /'
	bench=${GPU_CHECK_BENCH:-.}
	if [ "$bench" != none ]; then
		# Kernel benchmarks repeat many times; the whole-model one (synthesizes and loads the
		# 1B-shaped models) runs once.
		"$bin" -test.run '^$' -test.bench "$bench" -test.skip BenchmarkGenerate -test.benchtime "${GPU_CHECK_BENCHTIME:-200x}" -test.timeout 400s >"$out/bench.log" 2>&1 || status=$?
		if [[ BenchmarkGenerate =~ $bench ]]; then
			"$bin" -test.run '^$' -test.bench BenchmarkGenerate -test.benchtime 1x -test.timeout 400s >>"$out/bench.log" 2>&1 || status=$?
		fi
		echo "== benchmarks (device time per op from CUDA events; ns/op is host wall time)"
		awk '/^Benchmark/ {
			name=$1; sub(/-[0-9]+$/, "", name); sub(/^Benchmark/, "", name)
			line=sprintf("  %-44s", name)
			for (i = 3; i < NF; i += 2) line = line sprintf(" %12s %-14s", $i, $(i+1))
			print line
		} /^(FAIL|panic|---)/ {print "  " $0}' "$out/bench.log"
	fi
	exit $status
	;;
*)
	sed -n '2,12p' "$0"
	exit 2
	;;
esac
