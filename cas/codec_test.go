package cas

import (
	"bytes"
	"testing"
)

// TestPlanesVectorMatchesGo checks the platform's vector split and join (if any) against the
// portable Go versions for every length up to a few vector steps and at unaligned offsets.
func TestPlanesVectorMatchesGo(t *testing.T) {
	buf := testBytes(600, 7)
	for off := 0; off < 3; off++ {
		for n := 0; n+off <= len(buf) && n < 300; n++ {
			src := buf[off : off+n]
			lo, hi := make([]byte, (n+1)/2), make([]byte, n/2)
			wlo, whi := make([]byte, (n+1)/2), make([]byte, n/2)
			splitPlanes(lo, hi, src)
			splitPlanesGo(wlo, whi, src)
			if !bytes.Equal(lo, wlo) || !bytes.Equal(hi, whi) {
				t.Fatalf("off %d n %d: split differs from the Go version", off, n)
			}
			// Join into a slice with guard bytes after it: nothing past n may be written.
			out := bytes.Repeat([]byte{0xa5}, n+40)
			joinPlanes(out[:n], lo, hi)
			if !bytes.Equal(out[:n], src) {
				t.Fatalf("off %d n %d: join(split(x)) != x", off, n)
			}
			for i, c := range out[n:] {
				if c != 0xa5 {
					t.Fatalf("off %d n %d: join wrote byte %d past the end", off, n, i)
				}
			}
		}
	}
}
