package cpu

// #include "sample.h"
import "C"

import (
	"math"
	"slices"
	"unsafe"
)

// Sampler selection over a vocabulary of logits, in the sampler's total order: larger logit
// first, NaN as -Inf, -0 equal to +0, lower index first among equals (guest/ABI.md). Only
// comparisons: the AVX2 and generic kernels give identical answers.

// Argmax returns the index of the first best element of x; 0 for an empty x.
func Argmax(x []float32) int {
	if len(x) == 0 {
		return 0
	}
	return int(C.ds_argmax((*C.float)(unsafe.Pointer(&x[0])), C.int64_t(len(x))))
}

// SortKey maps (logit, index) to a uint64 whose ascending order is the sampler's order.
func SortKey(l float32, id int) uint64 {
	if l != l {
		l = float32(math.Inf(-1))
	}
	if l == 0 {
		l = 0 // -0 → +0
	}
	u := math.Float32bits(l)
	if u&(1<<31) != 0 {
		u = ^u
	} else {
		u |= 1 << 31
	}
	return uint64(^u)<<32 | uint64(uint32(id))
}

// TopK writes the len(ids) first elements of x in the sampler's order, best first: ids[j]
// the index, vals[j] its value with NaN as -Inf. len(vals) must equal len(ids), 1 ≤ len(ids)
// ≤ len(x), and the outputs must not overlap x. scratch is reused when large enough and
// returned.
func TopK(ids []int32, vals []float32, x []float32, scratch []uint64) []uint64 {
	k, n := len(ids), len(x)
	if k < 1 || k > n || len(vals) != k {
		panic("cpu: TopK: bad sizes")
	}
	var h []uint64
	if k*16 >= n {
		// A large share of the vocabulary (top-p alone sorts all of it): sort every key.
		if cap(scratch) < n {
			scratch = make([]uint64, n)
		}
		h = scratch[:n]
		for i, l := range x {
			h[i] = SortKey(l, i)
		}
		slices.Sort(h)
		h = h[:k]
	} else {
		if cap(scratch) < k {
			scratch = make([]uint64, k)
		}
		h = scratch[:k]
		C.ds_topk_keys((*C.float)(unsafe.Pointer(&x[0])), C.int64_t(n), C.int64_t(k), (*C.uint64_t)(unsafe.Pointer(&h[0])))
		slices.Sort(h)
	}
	for j, key := range h {
		id := int32(uint32(key))
		ids[j] = id
		l := x[id]
		if l != l {
			l = float32(math.Inf(-1))
		}
		vals[j] = l
	}
	return scratch
}
