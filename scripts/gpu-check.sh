#!/usr/bin/env bash
# GPU check for package cuda, in two halves:
#   scripts/gpu-check.sh build        here (Go, no GPU needed): builds the test binary into
#                                     .devcarry/gpu/cudatest (symbols stripped; glibc linked
#                                     dynamically: a static binary crashes inside dlopen)
#   scripts/gpu-check.sh run [OUT]    on a machine with an NVIDIA GPU (no Go needed): runs every
#                                     test (kernels, whole model vs CPU, checkpoints across
#                                     backends, zero-copy overhead), the 1B-shaped report
#                                     (TestGPUReport: prefill, decode, restore vs re-prefill,
#                                     incremental checkpoint), the kernel benchmarks and
#                                     BenchmarkGenerate; logs to OUT/gpu.log as it goes (OUT
#                                     defaults to $OUT, else /tmp/gpu-check) and prints one
#                                     summary at the end. Exit status 1 if anything failed.
#
# Through the device tool, after `scripts/gpu-check.sh build` here (≈ 2–3 minutes on an H100):
#   run  command:   bash scripts/gpu-check.sh run "$OUT"
#        carry:     [".devcarry/gpu"]
#        timeout_s: 480  (expected run ≈ 2–3 min; the limit only bounds a hang: gpu.log and the
#                   per-phase logs in OUT come back even then)
#
#   scripts/gpu-check.sh ab OUT SPEC...  on a machine with a GPU: BenchmarkDecode (1B shape,
#                                     GPU_CHECK_AB_TOKENS tokens, default 256) with each SPEC in
#                                     turn, GPU_CHECK_AB_ROUNDS rounds (default 3), one line per
#                                     run into OUT/ab.log: an A/B of builds or settings in one
#                                     process order. SPEC is NAME:BINARY[:VAR=VALUE...], e.g.
#                                     base:.devcarry/x/old:DRIFTSTORE_CUDA_PTX= (the binary's own
#                                     PTX) or q8:.devcarry/x/new:DRIFTSTORE_BENCH_TYPE=q8_0.
#
#   scripts/gpu-check.sh kbench [OUT]  on a machine with nvcc and a GPU (no Go): builds
#                                     cuda/tcbench/tcbench.cu (the kernels without Go), checks
#                                     every few-token kernel bit for bit against ds_tcm, times
#                                     them beside the CUDA-core GEMV (weights rotated past L2),
#                                     and profiles them with ncu where it exists
#                                     (GPU_CHECK_NCU=0 skips that); all into OUT/kbench.log.
#
# Environment:
#   GPU_CHECK_BENCH        -test.bench pattern of the kernel benchmarks ('.' by default; 'none'
#                          skips them); GPU_CHECK_BENCHTIME (default 200x)
#   GPU_CHECK_GENERATE=0   skips BenchmarkGenerate (TestGPUReport measures prefill and decode too)
#   GPU_CHECK_REPORT=0     skips TestGPUReport; GPU_CHECK_REPORT=restore runs only its restore
#                          rows (float and raw KV codecs) and their breakdown (reads, BLAKE3,
#                          copies, workers), not the prefill/decode rows per GEMM variant
#   GPU_CHECK_TESTS=0      skips the tests (everything but TestGPUReport and the benchmarks)
#   GPU_CHECK_REPORT_COUNT runs TestGPUReport that many times in one process (default 1): the
#                          ranges of its figures
#   GPU_CHECK_EAGER=1      also runs BenchmarkGenerate with DRIFTSTORE_CUDA_EAGER=1 (every kernel
#                          launched as its op is called: the comparison for deferral and graphs)
#   DRIFTSTORE_CUDA_PTX    kernels to load instead of the embedded PTX (e.g. fresh from gen-ptx.sh)
#   DRIFTSTORE_CUDA_PDL=0  CUDA graphs without programmatic dependent launch (cuda/pdl.go; it is on
#                          by default on compute capability 9.0 and newer)
#   DRIFTSTORE_BENCH_PROFILE=1  BenchmarkDecode also reports where a step goes (device time of the
#                          kernels, of the copy back into linear memory, and device idle; cuda's
#                          BackendOptions.Profile)
#   DRIFTSTORE_CUDA_FLUSH  kernels a deferred stream records after a Sync before it issues them
#                          (1-64, default 8; each next flush twice as many, up to 64; 64 gives
#                          the fixed 64 of before: cuda/deferred.go)
#   DRIFTSTORE_CUDA_TC=0   F16/Q8_0 matrix products on the CUDA cores instead of the tensor cores
#   DRIFTSTORE_CUDA_TCV    the few-token (n <= 8) tensor-core kernels, all with the same results:
#                          stream (default: ds_tcr2 or ds_tcr8, picked per matrix), warp
#                          (ds_tcv), block (ds_tcb)
#   DRIFTSTORE_CUDA_TCW    warps per block of ds_tcr2/ds_tcr8 (default: picked per matrix)
#   DRIFTSTORE_CUDA_GEMM   auto (default) | own | cublas: who multiplies batches of at least
#                          DRIFTSTORE_CUDA_GEMM_MIN tokens (default 9) by F16/Q8_0 weights.
#                          auto: cuBLAS where libcublas.so.13/.12/.11 loads, else the own
#                          kernels; own: always the own kernels; cublas: fail without it.
#                          The trade: with cuBLAS (activations rounded to F16, an algorithm per
#                          shape) a batched prefill no longer writes the KV bits of token-by-
#                          token feeding, so a prefix prefilled in different batches does not
#                          dedup; resume equivalence holds (same inputs, same calls, same
#                          bits). Tests asserting batched == token-by-token force own;
#                          TestMatMulCUBLAS/TestCUBLASModel check cuBLAS; TestGPUReport
#                          measures prefill both ways (rows "own", "cublas").
#   DRIFTSTORE_CUDA_ATTN_MIN  with GEMM auto or cublas, attention of batches of at least this
#                          many tokens (default 9, the cuBLAS threshold) over F16 KV runs on
#                          the tensor cores (ds_attn_tc: F16 queries and softmax weights, float32
#                          accumulation) instead of ds_attn_mq (decode's arithmetic). The same
#                          trade as cuBLAS's: batched prefill no longer writes token-by-token
#                          feeding's KV bits (a token's output does not depend on its batch,
#                          but differs from decode's); own keeps them; resume equivalence holds.
#                          TestAttentionTC/TestAttentionTCMask check the kernel against float64
#                          and exact means, TestAttnTCModel the logits against own; TestGPUReport
#                          shows "cublas" (tensor-core attention) beside "cublas, attn mq".
#   DRIFTSTORE_CUDA_GEMM_Q8=copy  cuBLAS products of Q8_0 weights use an F16 copy kept on the
#                          device (made on first use) instead of dequantizing per product
#   GPU_CHECK_VARIANTS     space-separated NAME=VALUE settings: after the check, for each, the
#                          matmul and whole-model tests, the F16/Q8_0 GEMV benchmarks and
#                          BenchmarkGenerate run again with it set (logged in gpu.log)
#   GPU_CHECK_BIN          the test binary run (default .devcarry/gpu/cudatest)
#   DRIFTSTORE_CUDA_FEW=tc few-token products of F16/Q8_0 weights on the tensor cores even where
#                          cuBLAS takes the batches (default there: the CUDA cores; cuda/few.go)
#   DRIFTSTORE_BENCH_TYPE  BenchmarkDecode's weights: f16 (default) or q8_0
#   DRIFTSTORE_CUDA_MODELS where the synthetic models are kept (default
#                          /tmp/driftstore-cuda-models; never under OUT: ≈ 4 GB)
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
build)
	set -e
	mkdir -p .devcarry/gpu
	go vet ./cuda/ || echo "warning: go vet ./cuda/ failed (above); building anyway" >&2
	go test -c -ldflags='-s -w' -o .devcarry/gpu/cudatest ./cuda/
	ls -l .devcarry/gpu/cudatest
	echo "built .devcarry/gpu/cudatest"
	;;
run)
	out=${2:-${OUT:-/tmp/gpu-check}}
	mkdir -p "$out"
	out=$(cd "$out" && pwd)
	log=$out/gpu.log
	: >"$log"
	bin=${GPU_CHECK_BIN:-$PWD/.devcarry/gpu/cudatest}
	[ -x "$bin" ] || { echo "no $bin: run 'scripts/gpu-check.sh build' first (and carry .devcarry/gpu)" | tee -a "$log" >&2; exit 1; }
	export DRIFTSTORE_CUDA_MODELS=${DRIFTSTORE_CUDA_MODELS:-/tmp/driftstore-cuda-models}
	unset DRIFTSTORE_GPU_REPORT
	status=0
	# phase NAME FILE ARGS...: runs the test binary (in cuda/, where the kernel sources are),
	# its output into OUT/FILE and appended to gpu.log as it comes.
	phase() {
		local name=$1 file=$2
		shift 2
		echo "== $name: cudatest $*" >>"$log"
		local t0=$SECONDS rc
		(cd cuda && "$bin" "$@") 2>&1 | tee -a "$log" >"$out/$file"
		rc=${PIPESTATUS[0]}
		echo "== $name: exit $rc after $((SECONDS - t0)) s" >>"$log"
		[ "$rc" = 0 ] || status=1
	}
	{
		echo "== gpu-check $(date -u +%FT%TZ) on $(hostname)"
		nvidia-smi --query-gpu=name,driver_version --format=csv || echo "nvidia-smi failed"
		nvidia-smi --query-gpu=memory.total,memory.used --format=csv,noheader || true
		uname -r
		ldd --version 2>&1 | head -1
	} >>"$log" 2>&1

	if [ "${GPU_CHECK_TESTS:-1}" != 0 ]; then
		phase tests test.log -test.v -test.count=1 -test.skip '^TestGPUReport$' -test.timeout 180s
	else
		: >"$out/test.log"
	fi
	if [ "${GPU_CHECK_REPORT:-1}" != 0 ]; then
		DRIFTSTORE_GPU_REPORT=${GPU_CHECK_REPORT:-1} phase report report.log -test.v -test.count="${GPU_CHECK_REPORT_COUNT:-1}" -test.run '^TestGPUReport$' -test.timeout $((60 + 120 * ${GPU_CHECK_REPORT_COUNT:-1}))s
	fi
	bench=${GPU_CHECK_BENCH:-.}
	if [ "$bench" != none ]; then
		phase benchmarks bench.log -test.run '^$' -test.bench "$bench" -test.skip BenchmarkGenerate -test.benchtime "${GPU_CHECK_BENCHTIME:-200x}" -test.timeout 150s
	fi
	if [ "${GPU_CHECK_GENERATE:-1}" != 0 ]; then
		phase generate generate.log -test.run '^$' -test.bench BenchmarkGenerate -test.benchtime 1x -test.timeout 150s
		if [ "${GPU_CHECK_EAGER:-0}" = 1 ]; then
			# The same with every kernel launched as its op is called (no deferral, no graphs).
			DRIFTSTORE_CUDA_EAGER=1 phase generate-eager generate-eager.log -test.run '^$' -test.bench BenchmarkGenerate -test.benchtime 1x -test.timeout 150s
		fi
	fi

	vlog=$(mktemp)
	for v in ${GPU_CHECK_VARIANTS:-}; do
		{
			echo "== variant $v"
			(cd cuda && env "$v" "$bin" -test.v -test.count=1 -test.run '^(TestMatMul|TestBackendMatchesCPU)$' -test.timeout 120s) 2>&1 |
				grep -E '^(--- |ok|PASS|FAIL|panic)|max \|cuda-cpu\|'
			for pat in 'GEMV/(F16|Q8_0)/8192x2048/wdev-xdev$' 'PrefillMatMul/F16/n(8|128)$'; do
				(cd cuda && env "$v" "$bin" -test.run '^$' -test.bench "$pat" -test.benchtime 100x -test.timeout 120s) 2>&1 |
					grep -E '^(Benchmark|FAIL|panic)'
			done
			(cd cuda && env "$v" "$bin" -test.run '^$' -test.bench 'Generate' -test.benchtime 1x -test.timeout 150s) 2>&1 |
				grep -E '^(Benchmark|FAIL|panic)'
		} >>"$vlog"
	done
	cat "$vlog" >>"$log"
	grep -q -E '^(--- FAIL|FAIL|panic)' "$vlog" && status=1

	# The summary, from the logs.
	{
		echo
		echo "================ summary ================"
		sed -n '2,3p' "$log"
		grep -h -m1 -E '^cuda: ' "$out"/test.log || true
		echo "== tests (top level)"
		grep -E '^(--- (PASS|FAIL|SKIP)|ok|PASS|FAIL|panic)' "$out/test.log" | sed 's/^/  /'
		if grep -q -E -e '--- FAIL|^panic' "$out/test.log"; then
			echo "== failures (failed tests, then every test message; full log in gpu.log)"
			grep -E -e '^\s*--- FAIL' "$out/test.log" | sed 's/^/  /'
			grep -E '^\s+\S+_test\.go:[0-9]+: ' "$out/test.log" | grep -v -E ': (cross|zero-copy): ' | head -40 | sed 's/^/  /'
			grep -A15 '^panic' "$out/test.log" | head -30 | sed 's/^/  /'
		fi
		echo "== checkpoints across backends (next-pass logits after restore on the other backend)"
		grep -h -o -E 'cross: .*' "$out/test.log" | sed 's/^cross: /  /'
		grep -h -o -E '[^ ]+: max \|cuda-cpu\| logit.*' "$out/test.log" | sed 's/^/  whole run, TestBackendMatchesCPU /'
		echo "== zero-copy overhead (16 MiB region)"
		grep -h -o -E 'zero-copy: .*' "$out/test.log" | sed 's/^zero-copy: /  /'
		if [ -f "$out/report.log" ]; then
			echo "== 1B-shaped report (TestGPUReport)"
			grep -E '^(--- |FAIL|panic)' "$out/report.log" | sed 's/^/  /'
			grep -E '^\s+report_test\.go:[0-9]+: .*(differ|Error|error)' "$out/report.log" | sed 's/^/  /'
			grep -E '^report\| ' "$out/report.log" | sed 's/^report| /  /'
		fi
		for f in bench.log generate.log generate-eager.log; do
			[ -f "$out/$f" ] || continue
			echo "== ${f%.log} (device time per op from CUDA events where shown; ns/op is host wall time)"
			awk '/^Benchmark/ {
				name=$1; sub(/-[0-9]+$/, "", name); sub(/^Benchmark/, "", name)
				line=sprintf("  %-44s", name)
				for (i = 3; i < NF; i += 2) line = line sprintf(" %12s %-14s", $i, $(i+1))
				print line
			} /^(FAIL|panic|--- FAIL)/ {print "  " $0}' "$out/$f"
		done
		if [ -s "$vlog" ]; then
			echo "== variants (tests, then GEMV/PrefillMatMul device us/op, then BenchmarkGenerate)"
			awk '/^== variant/ {print "  " $0; next}
				/^Benchmark/ {name=$1; sub(/-[0-9]+$/, "", name); sub(/^Benchmark/, "", name); line=sprintf("    %-40s", name)
					for (i = 3; i < NF; i += 2) if ($(i+1) != "ns/op") line = line sprintf(" %10s %-14s", $i, $(i+1)); print line; next}
				{print "    " $0}' "$vlog"
		fi
		grep -E '^== [a-z]+: exit' "$log" | sed 's/^== /  /'
		echo "overall: $([ $status = 0 ] && echo OK || echo FAILED) (full log: gpu.log)"
	} | tee -a "$log"
	exit $status
	;;
ab)
	out=${2:?usage: gpu-check.sh ab OUT NAME:BINARY[:VAR=VALUE...]...}
	shift 2
	mkdir -p "$out"
	export DRIFTSTORE_CUDA_MODELS=${DRIFTSTORE_CUDA_MODELS:-/tmp/driftstore-cuda-models}
	status=0
	for round in $(seq 1 "${GPU_CHECK_AB_ROUNDS:-3}"); do
		for spec in "$@"; do
			IFS=: read -r -a f <<<"$spec"
			name=${f[0]} bin=$(cd "$(dirname "${f[1]}")" && pwd)/$(basename "${f[1]}")
			line=$(cd cuda && env "${f[@]:2}" "$bin" -test.run '^$' -test.bench '^BenchmarkDecode$' \
				-test.benchtime "${GPU_CHECK_AB_TOKENS:-256}x" -test.timeout 300s 2>&1 | grep -E '^(BenchmarkDecode|FAIL|panic)')
			[ -n "$line" ] && ! grep -q -E '^(FAIL|panic)' <<<"$line" || status=1
			echo "round $round $name: $(grep -o -E '[0-9.]+ ms/token' <<<"$line" || echo "$line")" | tee -a "$out/ab.log"
		done
	done
	exit $status
	;;
kbench)
	out=${2:-${OUT:-/tmp/gpu-check}}
	mkdir -p "$out"
	log=$out/kbench.log
	: >"$log"
	bin=/tmp/tcbench
	{
		echo "== kbench $(date -u +%FT%TZ) on $(hostname)"
		nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv || true
		nvcc --version | tail -n 1
	} >>"$log" 2>&1
	# ptxas's resource report for the matrix kernels (registers, spills, shared memory).
	if ! nvcc -O3 -arch=sm_90 -std=c++17 -Xptxas -v -o "$bin" cuda/tcbench/tcbench.cu >/tmp/tcbench.build 2>&1; then
		cat /tmp/tcbench.build >>"$log"
		echo "kbench: build failed" | tee -a "$log"
		exit 1
	fi
	grep -A3 -E "Compiling entry function '.*(tc|mv_(f16|q8)_1x1v)" /tmp/tcbench.build |
		grep -E "Compiling|Used|spill" | sed -E "s/^ptxas info *: //" >>"$log"
	status=0
	"$bin" check 2>&1 | tee -a "$log" | tail -n 3 || status=1
	"$bin" ${GPU_CHECK_KBENCH_TIME:-time} 2>&1 | tee -a "$log" || status=1
	if [ "${GPU_CHECK_NCU:-1}" != 0 ] && command -v ncu >/dev/null; then
		echo "== ncu" >>"$log"
		timeout 240 ncu --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \
			--section LaunchStats --section WarpStateStats -k regex:'ds_|h_' "$bin" ncu >"$out/ncu.txt" 2>&1
		echo "ncu exit $?" >>"$log"
		# The headline numbers per kernel, then the whole report.
		grep -E "^  [a-zA-Z_0-9]+.*\(|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Stall Long|Warp Cycles Per Issued|Theoretical Occ" "$out/ncu.txt" >>"$log"
		echo "== ncu full report" >>"$log"
		cat "$out/ncu.txt" >>"$log"
		rm -f "$out/ncu.txt"
	fi
	exit $status
	;;
*)
	awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "$0"
	exit 2
	;;
esac
