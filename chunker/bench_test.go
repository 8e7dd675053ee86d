package chunker

import (
	"bytes"
	"io"
	"testing"
)

func BenchmarkFastCDC(b *testing.B) {
	in := randomInput(32<<20, 11)
	for _, tc := range []struct {
		name string
		p    Params
	}{
		{"default-64KiB", DefaultParams()},
		{"16KiB", Params{Min: 4096, Avg: 16384, Max: 65536, Normalization: 1}},
	} {
		c, _ := NewFastCDC(tc.p)
		b.Run("slice/"+tc.name, func(b *testing.B) {
			b.SetBytes(int64(len(in)))
			var n int
			for b.Loop() {
				n = 0
				for range c.Chunks(in) {
					n++
				}
			}
			b.ReportMetric(float64(len(in))/float64(n), "B/chunk")
		})
		b.Run("stream/"+tc.name, func(b *testing.B) {
			b.SetBytes(int64(len(in)))
			s, _ := NewStream(bytes.NewReader(in), tc.p)
			b.ReportAllocs()
			for b.Loop() {
				s.Reset(bytes.NewReader(in))
				for {
					if _, err := s.Next(); err == io.EOF {
						break
					} else if err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
