// Sampler selection kernels (package cpu, sample.go). Total order: larger value first, NaN as
// -Inf, -0 equal to +0, lower index first among equals.
#pragma once
#include <stdint.h>

// Index of the first best element of x[0..n), n >= 1 (0 when none beats -Inf).
int64_t ds_argmax(const float *x, int64_t n);

// The keys (see sample.go) of the k best elements of x[0..n), 1 <= k <= n, unordered, in
// keys[0..k) (a max-heap: keys[0] is the worst kept).
void ds_topk_keys(const float *x, int64_t n, int64_t k, uint64_t *keys);
