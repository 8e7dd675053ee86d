#!/usr/bin/env bash
# Builds the Wasm guest (guest/src) into guest/guest.wasm, or into the file given as $1.
# Reproducible: fixed GOOS/GOARCH/buildmode, -trimpath, no VCS stamping, stripped, and no
# inherited GOFLAGS; the same Go toolchain gives the same bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-guest/guest.wasm}"
env -u GOFLAGS GOOS=wasip1 GOARCH=wasm CGO_ENABLED=0 GOWASM= \
  go build -trimpath -buildvcs=false -buildmode=c-shared -ldflags='-s -w -buildid=' \
  -o "$out" ./guest/src
