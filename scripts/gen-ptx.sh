#!/usr/bin/env bash
# Regenerates cuda/kernels/kernels.ptx from cuda/kernels/*.cu with nvcc (needs the CUDA toolkit;
# run it on a machine with nvcc, e.g. through the device tool) and records the hash of the
# sources next to it (kernels.ptx.sum), which cuda's TestPTXCurrent checks, so a changed .cu
# without regenerated PTX fails CI.
#
# The PTX targets compute_80 (Ampere and newer; the driver JIT-compiles it for the card, sm_90 on
# an H100). Usage: scripts/gen-ptx.sh [OUTDIR]  (default: cuda/kernels)
set -euo pipefail
cd "$(dirname "$0")/.."
src=cuda/kernels
out=${1:-$src}
mkdir -p "$out"
NVCC=${NVCC:-nvcc}
"$NVCC" --version | tail -n 2
"$NVCC" -ptx -arch=compute_80 -O3 -std=c++17 -o "$out/kernels.ptx" "$src/kernels.cu"
# The sum: sha256 over the lines "<sha256>  <name>" of every .cu, sorted by name (C locale).
(cd "$src" && LC_ALL=C sha256sum $(LC_ALL=C ls *.cu)) | sha256sum | cut -d' ' -f1 >"$out/kernels.ptx.sum"
echo "wrote $out/kernels.ptx ($(wc -c <"$out/kernels.ptx") bytes), sum $(cat "$out/kernels.ptx.sum")"
