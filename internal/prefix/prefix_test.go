package prefix

import (
	"fmt"
	"testing"
)

type ref struct {
	digest [32]byte
	length int64
}

// TestCommon: the prefix found a run at a time equals the one found entry by entry, wherever
// the first difference is and whatever the lengths, for entries of 4 and of 40 bytes.
func TestCommon(t *testing.T) {
	naive := func(n int, eq func(i int) bool) int {
		k := 0
		for k < n && eq(k) {
			k++
		}
		return k
	}
	for _, n := range []int{0, 1, 50, 51, 52, 511, 512, 513, 1500} {
		for _, at := range []int{-1, 0, 1, 50, 51, 52, 100, 511, 512, 513, 1024, 1499} {
			for _, bl := range []int{n, n / 2, max(0, n-1)} {
				ia, ib := make([]int32, n), make([]int32, n)
				ra, rb := make([]ref, n), make([]ref, n)
				for i := range n {
					ia[i], ib[i] = int32(i*7), int32(i*7)
					ra[i].digest[i%32], rb[i].digest[i%32] = byte(i), byte(i)
					ra[i].length, rb[i].length = int64(i), int64(i)
				}
				if at >= 0 && at < n {
					ib[at]++
					if at%2 == 0 {
						rb[at].digest[31] ^= 1
					} else {
						rb[at].length++
					}
				}
				name := fmt.Sprintf("n %d, differs at %d, b of %d", n, at, bl)
				if got, want := Common(ia, ib[:bl]), naive(min(n, bl), func(i int) bool { return ia[i] == ib[i] }); got != want {
					t.Fatalf("%s: int32: %d, want %d", name, got, want)
				}
				if got, want := Common(ra, rb[:bl]), naive(min(n, bl), func(i int) bool { return ra[i] == rb[i] }); got != want {
					t.Fatalf("%s: ref: %d, want %d", name, got, want)
				}
			}
		}
	}
}
