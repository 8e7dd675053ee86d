package cas

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// fastZstdRawOnly parses a frame of the fast encoder and reports whether every block is raw.
func fastZstdRawOnly(t testing.TB, frame []byte) bool {
	t.Helper()
	var h zstd.Header
	if err := h.Decode(frame); err != nil {
		t.Fatalf("frame header: %v", err)
	}
	p := frame[h.HeaderSize:]
	for {
		if len(p) < 3 {
			t.Fatalf("frame ends inside a block header")
		}
		bh := uint32(p[0]) | uint32(p[1])<<8 | uint32(p[2])<<16
		last, typ, size := bh&1 == 1, (bh>>1)&3, int(bh>>3)
		p = p[3:]
		if typ != 0 { // rle or compressed
			return false
		}
		if len(p) < size {
			t.Fatalf("raw block of %d bytes truncated", size)
		}
		p = p[size:]
		if last {
			return len(p) == 0
		}
	}
}

// zstdAttemptPays is encode's decision without the probe: the fast encoder's frame, kept when
// it saves MinSavings.
func zstdAttemptPays(data []byte) (pays bool, frame []byte) {
	frame, err := EncodeWith(nil, data, CodecZstd)
	if err != nil {
		panic(err)
	}
	return float64(len(frame)) <= float64(len(data))*(1-MinSavings), frame
}

// checkProbe checks, on the real encoder, that a chunk the probe clears is one the fast
// encoder stores in raw blocks only, and that encode's choice is the one the full attempt
// makes. It returns whether the probe cleared the chunk.
func checkProbe(t testing.TB, name string, data []byte) bool {
	t.Helper()
	may := fastZstdMayMatch(data)
	pays, frame := zstdAttemptPays(data)
	if len(data) > 0 && !may && !fastZstdRawOnly(t, frame) {
		t.Fatalf("%s (%d bytes): the probe found no possible match, but the fast encoder wrote a non-raw block", name, len(data))
	}
	want := CodecRaw
	if pays && len(data) > 0 {
		want = CodecZstd
	}
	if got, _ := encode(nil, data, HintNone); got != want {
		t.Fatalf("%s (%d bytes): encode chose %s, the zstd attempt says %s", name, len(data), got, want)
	}
	return !may
}

func randBytes(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 0x9e37))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// The probe never clears a chunk that the fast encoder compresses, over random, float16,
// structured and tiny inputs and over repeats placed around the encoder's block boundaries
// (where its search restarts densely); and it clears almost all random and float16 KV-like
// chunks, which is what makes it worth having.
func TestFastZstdProbe(t *testing.T) {
	sizes := []int{0, 1, 7, 9, 10, 11, 17, 64, 1000, 4096, 16 << 10, 65535, 65536, 65537, 65536 + 9,
		65536 + 10, 65536 + 11, 100 << 10, 131072, 131072 + 10, 200 << 10, 256 << 10, 300 << 10,
		fastZstdProbeLimit, fastZstdProbeLimit + 1}
	cleared := map[string]int{}
	total := map[string]int{}
	for _, n := range sizes {
		for seed := uint64(1); seed <= 4; seed++ {
			for kind, data := range map[string][]byte{"random": randBytes(n, seed), "f16": kvLike(n, seed)} {
				total[kind]++
				if checkProbe(t, fmt.Sprintf("%s seed %d", kind, seed), data) {
					cleared[kind]++
				}
			}
		}
	}
	for _, kind := range []string{"random", "f16"} {
		t.Logf("%s: the probe cleared %d of %d chunks", kind, cleared[kind], total[kind])
		// Chunks over the probe limit are not probed (4 of each kind); allow as many chance
		// repeats besides.
		if min := total[kind] - 8; cleared[kind] < min {
			t.Errorf("%s: the probe cleared %d of %d chunks, want at least %d", kind, cleared[kind], total[kind], min)
		}
	}

	// Repeats of several lengths copied within random data, landing at and just after each
	// block start, at random places, and reaching back across blocks.
	base := randBytes(300<<10, 9)
	rng := rand.New(rand.NewPCG(5, 6))
	// (A block stays raw unless the match saves over 1/64 of it, so only long repeats can show
	// a probe that misses a match.)
	for _, l := range []int{6, 2048, 4096} {
		var dsts []int
		for b := 0; b < len(base); b += fastZstdBlock {
			for _, d := range []int{0, 1, 5, 64, 1000} {
				dsts = append(dsts, b+d)
			}
		}
		for range 5 {
			dsts = append(dsts, rng.IntN(len(base)-l))
		}
		for _, dst := range dsts {
			if dst+l > len(base) || dst < 1 {
				continue
			}
			// Sources where the encoder looks at every position (the start of each block,
			// where it would find the repeat), and one anywhere.
			srcs := []int{rng.IntN(dst)}
			for b := 0; b < dst; b += fastZstdBlock {
				for _, d := range []int{0, 1, 2, 10, 40} {
					if b+d < dst {
						srcs = append(srcs, b+d)
					}
				}
			}
			for _, src := range srcs {
				data := bytes.Clone(base)
				copy(data[dst:dst+l], data[src:src+l])
				checkProbe(t, fmt.Sprintf("repeat of %d bytes from %d at %d", l, src, dst), data)
			}
		}
	}

	// Structured data: the encoder compresses it and the probe must let it try.
	text := bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog; "), 2000)
	for name, data := range map[string][]byte{
		"zeros":   make([]byte, 64<<10),
		"text":    text,
		"pattern": bytes.Repeat([]byte{1, 2, 3, 4, 5, 6, 7}, 20000),
		"blocks":  bytes.Repeat(randBytes(8<<10, 3), 12), // repeats 8 KiB apart, past the dense start
	} {
		checkProbe(t, name, data)
		if got, _ := encode(nil, data, HintNone); got != CodecZstd {
			t.Errorf("%s: encode chose %s, want zstd", name, got)
		}
	}
	// The float16 hint still takes the plane codec.
	if got, _ := encode(nil, kvLike(64<<10, 1), HintFloat16); got != CodecF16Planes {
		t.Errorf("float16 hint: encode chose %s, want %s", got, CodecF16Planes)
	}
}

func FuzzFastZstdProbe(f *testing.F) {
	f.Add([]byte("abcdefghijabcdefghij"))
	f.Add(randBytes(70000, 1))
	f.Add(kvLike(4096, 2))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkProbe(t, "fuzz", data)
	})
}

// BenchmarkFastZstdProbe compares the probe with the zstd attempt it saves, on 64 KiB chunks
// that the fast encoder stores raw (throughput of chunk bytes, one goroutine).
func BenchmarkFastZstdProbe(b *testing.B) {
	const chunk = 64 << 10
	for _, ds := range []struct {
		name string
		data []byte
	}{{"f16", kvLike(chunk*16, 1)}, {"random", randBytes(chunk*16, 1)}} {
		b.Run(ds.name+"/probe", func(b *testing.B) {
			b.SetBytes(chunk)
			i := 0
			for b.Loop() {
				if fastZstdMayMatch(ds.data[i*chunk : (i+1)*chunk]) {
					b.Fatal("probe found a possible match")
				}
				i = (i + 1) % 16
			}
		})
		b.Run(ds.name+"/zstd-attempt", func(b *testing.B) {
			b.SetBytes(chunk)
			dst := make([]byte, 0, 2*chunk)
			i := 0
			for b.Loop() {
				dst, _ = EncodeWith(dst[:0], ds.data[i*chunk:(i+1)*chunk], CodecZstd)
				i = (i + 1) % 16
			}
		})
	}
}
