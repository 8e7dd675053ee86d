package cpu

import (
	"math"
	"slices"
	"testing"
)

// TestSampleGenericMatchesSIMD: the AVX2 scans and the generic C give the same argmax and
// top-k (only comparisons, so bit-identical answers) on vectors with ties, NaNs, infinities
// and signed zeros, at sizes that hit the SIMD bodies and tails.
func TestSampleGenericMatchesSIMD(t *testing.T) {
	if !simdAvailable {
		t.Skip("no AVX2 on this CPU")
	}
	defer setGeneric(false)
	nan, inf, negz := float32(math.NaN()), float32(math.Inf(1)), float32(math.Copysign(0, -1))
	x := uint32(12345)
	for _, n := range []int{1, 3, 8, 31, 32, 33, 65, 1000, 5000} {
		for pattern := 0; pattern < 5; pattern++ {
			ls := make([]float32, n)
			for i := range ls {
				x = x*1664525 + 1013904223
				v := float32(int32(x>>8)%2000) / 100
				switch pattern {
				case 1:
					v = float32(int(v+20) % 4) // ties
				case 2:
					if i%5 == 0 {
						v = nan
					}
				case 3:
					if i%3 == 0 {
						v = negz
					} else if i%3 == 1 {
						v = 0
					} else {
						v = -1 - float32(i%7)
					}
				case 4:
					if i == n-1 {
						v = inf
					}
				}
				ls[i] = v
			}
			for _, k := range []int{1, 4, 40, n} {
				if k > n {
					continue
				}
				var am [2]int
				var ids [2][]int32
				var vals [2][]float32
				for g := 0; g < 2; g++ {
					setGeneric(g == 1)
					am[g] = Argmax(ls)
					ids[g], vals[g] = make([]int32, k), make([]float32, k)
					TopK(ids[g], vals[g], ls, nil)
				}
				if am[0] != am[1] || !slices.Equal(ids[0], ids[1]) {
					t.Fatalf("n=%d pattern %d k=%d: SIMD %d %v, generic %d %v", n, pattern, k, am[0], ids[0], am[1], ids[1])
				}
				for j := range vals[0] {
					if math.Float32bits(vals[0][j]) != math.Float32bits(vals[1][j]) {
						t.Fatalf("n=%d pattern %d k=%d: values differ at %d", n, pattern, k, j)
					}
				}
			}
		}
	}
}
