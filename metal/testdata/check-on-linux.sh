#!/bin/bash
# Checks metal's darwin-only code as far as a Linux machine can (no Mac, no Metal compiler):
#  1. the Go side: a scratch copy of the module with the darwin files retargeted to linux and the
#     Objective-C bridge replaced by a C stub of bridge.h, then go vet and go test there (which
#     compiles metal_darwin_test.go; its tests skip: the stub has no device);
#  2. kernels.metal: parsed and type-checked as C++17 against testdata/mslshim, minimal
#     stand-ins for the parts of the Metal standard library it uses (syntax and types only:
#     nothing about Metal semantics).
# Usage: metal/testdata/check-on-linux.sh (from anywhere in the repository).
set -euo pipefail
root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
dst=$(mktemp -d)
trap 'rm -rf "$dst"' EXIT

echo "== kernels.metal as C++ against the shim"
g++ -std=c++17 -fsyntax-only -Wall -Wno-attributes -Wno-unused -I"$root/metal/testdata/mslshim" -x c++ "$root/metal/kernels.metal"

echo "== darwin Go code, retargeted to linux"
(cd "$root" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) | (cd "$dst" && tar xf -)
cd "$dst/metal"
rm bridge_darwin_arm64.m
mv backend_darwin.go backend_mac.go
mv metal_darwin_test.go metal_mac_test.go
sed -i 's#^//go:build darwin && arm64 && cgo#//go:build linux \&\& cgo#' backend_mac.go metal_mac_test.go
sed -i 's#^//go:build !(darwin && arm64 && cgo)#//go:build !(linux \&\& cgo)#' stub.go
sed -i 's#^\#cgo CFLAGS: -x objective-c -fobjc-arc#\#cgo CFLAGS: -Wall -Werror#; s#^\#cgo LDFLAGS: -framework Metal -framework Foundation##' backend_mac.go
cat > bridge_stub.c <<'C'
#include <string.h>
#include "bridge.h"
static void e(char *err, size_t n) { if (n) { strncpy(err, "stub", n - 1); err[n - 1] = 0; } }
int dsm_available(void) { return 0; }
dsm_ctx *dsm_open(const char *src, size_t srclen, const char *names, uint32_t w, char *err, size_t n) { e(err, n); return NULL; }
void dsm_close(dsm_ctx *c) {}
void dsm_device_name(dsm_ctx *c, char *buf, size_t n) { e(buf, n); }
uint64_t dsm_max_buffer_length(dsm_ctx *c) { return 0; }
void *dsm_wrap(dsm_ctx *c, uintptr_t p, size_t sz, char *err, size_t n) { e(err, n); return NULL; }
void *dsm_new_buffer(dsm_ctx *c, size_t sz, void **contents, char *err, size_t n) { e(err, n); return NULL; }
void *dsm_new_queue(dsm_ctx *c, char *err, size_t n) { e(err, n); return NULL; }
void dsm_release(void *obj) {}
int dsm_run(dsm_ctx *c, void *q, const dsm_dispatch *d, int nd, char *err, size_t n) { e(err, n); return -1; }
C
cd "$dst"
go vet ./metal/
go test -count=1 ./metal/
echo "== ok"
