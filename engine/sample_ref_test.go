package engine

import (
	"math"
	"slices"
)

// A plain Go implementation of the sampler's selection (the host ops argmax and top_k), kept
// as an independent reference for the engine/cpu kernels the engine runs.

// argmaxRef returns the index of the best element of logits in the sampler's total order (larger
// first, NaN as -Inf, -0 = +0, lowest index on ties); 0 for an empty slice.
func argmaxRef(logits []float32) int {
	if len(logits) == 0 {
		return 0
	}
	best := 0
	bl := logits[0]
	if bl != bl {
		bl = float32(math.Inf(-1))
	}
	// A NaN is never greater; an equal logit (either zero included) never replaces the
	// earlier index.
	for i, l := range logits {
		if l > bl {
			best, bl = i, l
		}
	}
	return best
}

// sortKey maps (logit, id) to a uint64 whose ascending order is the sampler's order.
func sortKey(l float32, id int) uint64 {
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
	// u ascends with l; the key puts larger logits first, then lower ids.
	return uint64(^u)<<32 | uint64(uint32(id))
}

func keyID(k uint64) int32 { return int32(uint32(k)) }

// topKRef writes the len(ids) first elements of logits in the sampler's total order into ids and
// vals (NaN as -Inf), best first; len(vals) must equal len(ids), and 1 ≤ len(ids) ≤
// len(logits). scratch is reused when large enough and returned. A plain Go reference for the kernels
// in engine/cpu. The outputs may not overlap logits.
func topKRef(ids []int32, vals []float32, logits []float32, scratch []uint64) []uint64 {
	k, n := len(ids), len(logits)
	var h []uint64
	if k*16 >= n {
		// A large share of the vocabulary (top-p without top-k sorts all of it): sort keys.
		if cap(scratch) < n {
			scratch = make([]uint64, n)
		}
		h = scratch[:n]
		for i, l := range logits {
			h[i] = sortKey(l, i)
		}
		slices.Sort(h)
		h = h[:k]
	} else {
		if cap(scratch) < k {
			scratch = make([]uint64, k)
		}
		h = topKHeap(scratch[:0], logits, k)
		slices.Sort(h)
	}
	for j, key := range h {
		id := keyID(key)
		ids[j] = id
		l := logits[id]
		if l != l {
			l = float32(math.Inf(-1))
		}
		vals[j] = l
	}
	return scratch
}

// topKHeap returns the keys of the k best elements (unordered) with a max-heap of keys (the
// root is the worst kept) over one pass. Ids arrive in ascending order, so an element beats
// the root only with a strictly larger logit: the scan compares floats and builds a key only
// for the few that do.
func topKHeap(h []uint64, logits []float32, k int) []uint64 {
	for i := 0; i < k; i++ {
		h = append(h, sortKey(logits[i], i))
		siftUp(h, i)
	}
	rootL := keyLogit(h[0])
	for i := k; i < len(logits); i++ {
		if l := logits[i]; l > rootL {
			h[0] = sortKey(l, i)
			siftDown(h)
			rootL = keyLogit(h[0])
		}
	}
	return h
}

// keyLogit recovers the (canonical) logit of a key.
func keyLogit(key uint64) float32 {
	u := ^uint32(key >> 32)
	if u&(1<<31) != 0 {
		u &^= 1 << 31
	} else {
		u = ^u
	}
	return math.Float32frombits(u)
}

func siftUp(h []uint64, j int) {
	for j > 0 {
		p := (j - 1) / 2
		if h[p] >= h[j] {
			return
		}
		h[p], h[j] = h[j], h[p]
		j = p
	}
}

func siftDown(h []uint64) {
	n, j := len(h), 0
	for {
		l := 2*j + 1
		if l >= n {
			return
		}
		w := l
		if r := l + 1; r < n && h[r] > h[l] {
			w = r
		}
		if h[j] >= h[w] {
			return
		}
		h[j], h[w] = h[w], h[j]
		j = w
	}
}
