package chunker

import (
	"bytes"
	"testing"
	"testing/iotest"
)

// fuzzParams maps arbitrary numbers onto valid parameters, so that every fuzz input exercises the
// chunker instead of being rejected. Small sizes dominate so that short inputs still cut.
func fuzzParams(a, b, c uint32, level uint8) Params {
	minSize := MinSizeLimitLow + 2*int(a%2048)            // 64 .. 4158, even
	avg := max(minSize+1, AvgSizeLimitLow) + int(b%8192)  // > min, ≥ 256
	maxSize := max(avg+1, MaxSizeLimitLow) + int(c%16384) // > avg, ≥ 1024
	align := []int{0, 2, 4, 8}[(level/4)%4]
	if align > 1 {
		minSize -= minSize % align
	}
	return Params{Min: minSize, Avg: avg, Max: maxSize, Normalization: int(level % 4), Align: align}
}

// FuzzFastCDC: for any input and any valid parameters, Split covers the input exactly, in order,
// every chunk but the last within [Min, Max] (the last within (0, Max]) and a multiple of Align,
// and a Stream fed through a reader that returns short reads gives the same chunks.
func FuzzFastCDC(f *testing.F) {
	f.Add([]byte{}, uint32(0), uint32(0), uint32(0), uint8(0))
	f.Add([]byte("hello, world"), uint32(1), uint32(2), uint32(3), uint8(1))
	f.Add(randomInput(5000, 9), uint32(0), uint32(0), uint32(0), uint8(3))
	f.Add(make([]byte, 3000), uint32(10), uint32(100), uint32(5), uint8(2))
	f.Fuzz(func(t *testing.T, data []byte, a, b, c uint32, level uint8) {
		p := fuzzParams(a, b, c, level)
		if err := p.Validate(); err != nil {
			t.Fatalf("fuzzParams made invalid params %+v: %v", p, err)
		}
		cdc, err := NewFastCDC(p)
		if err != nil {
			t.Fatal(err)
		}
		chunks := cdc.Split(data)
		checkCover(t, data, chunks, p.Min, p.Max)
		checkAligned(t, chunks, p.Align)
		s, err := NewStream(iotest.HalfReader(bytes.NewReader(data)), p)
		if err != nil {
			t.Fatal(err)
		}
		sameChunks(t, chunks, streamChunks(t, s))
	})
}

// FuzzFixed: fixed-size streams and slices agree and cover the input.
func FuzzFixed(f *testing.F) {
	f.Add([]byte("0123456789"), uint16(3))
	f.Add(make([]byte, 4097), uint16(4096))
	f.Fuzz(func(t *testing.T, data []byte, size uint16) {
		sz := int(size%8192) + 1
		seq, err := FixedChunks(data, sz)
		if err != nil {
			t.Fatal(err)
		}
		var chunks []Chunk
		for ch := range seq {
			chunks = append(chunks, ch)
		}
		checkCover(t, data, chunks, sz, sz)
		s, err := NewFixedStream(iotest.OneByteReader(bytes.NewReader(data)), sz)
		if err != nil {
			t.Fatal(err)
		}
		sameChunks(t, chunks, streamChunks(t, s))
	})
}

// checkAligned fails unless every chunk but the last has a length that is a multiple of align.
func checkAligned(t *testing.T, chunks []Chunk, align int) {
	t.Helper()
	if align <= 1 {
		return
	}
	for i, ch := range chunks[:max(0, len(chunks)-1)] {
		if ch.Length%align != 0 {
			t.Fatalf("chunk %d of %d at offset %d: length %d is not a multiple of %d", i, len(chunks), ch.Offset, ch.Length, align)
		}
	}
}
