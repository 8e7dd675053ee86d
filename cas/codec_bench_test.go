package cas

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/driftstore/driftstore/cas/castest/half"
)

// kvLike returns n bytes of float16 values shaped like a KV cache: normally distributed, rows
// of 64 channels with a per-channel scale (log-normal), deterministic in seed. (castest has the
// richer generator, but an internal test cannot import it.)
func kvLike(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 0x6b76))
	var scale [64]float64
	for i := range scale {
		scale[i] = 0.3 * math.Exp(0.6*rng.NormFloat64())
	}
	out := make([]byte, n)
	for i := 0; i+1 < n; i += 2 {
		binary.LittleEndian.PutUint16(out[i:], half.FromFloat32(float32(rng.NormFloat64()*scale[(i/2)%64])))
	}
	return out
}

// BenchmarkCodecPut measures what a store's Put and Get spend on the codec for one 64 KiB
// chunk (the default FastCDC average) at a time: encode with the verification Put runs
// (encodeVerified), and decode followed by the BLAKE3 check Get runs. One goroutine;
// throughput is of uncompressed bytes.
func BenchmarkCodecPut(b *testing.B) {
	const chunk = 64 << 10
	for _, c := range []struct {
		name string
		data []byte
		hint Hint
	}{
		{"kv-f16/hint-f16", kvLike(8<<20, 1), HintFloat16},
		{"kv-f16/no-hint", kvLike(8<<20, 1), HintNone},
		{"random/no-hint", testBytes(8<<20, 2), HintNone},
	} {
		var stored [][]byte
		var codecs []Codec
		var total int
		b.Run(c.name+"/encode+verify", func(b *testing.B) {
			b.SetBytes(int64(len(c.data)))
			buf := make([]byte, 0, 2*chunk)
			for b.Loop() {
				total = 0
				keep := stored == nil
				for off := 0; off < len(c.data); off += chunk {
					p := c.data[off : off+chunk]
					codec, out, err := encodeVerified(buf[:0], p, c.hint)
					if err != nil {
						b.Fatal(err)
					}
					if codec == CodecRaw {
						out = p
					}
					total += len(out)
					if keep { // the first pass keeps the stored forms for decode+verify
						stored, codecs = append(stored, append([]byte(nil), out...)), append(codecs, codec)
					}
				}
			}
			b.ReportMetric(float64(len(c.data))/float64(total), "ratio")
		})
		b.Run(c.name+"/decode+verify", func(b *testing.B) {
			b.SetBytes(int64(len(c.data)))
			dst := make([]byte, chunk)
			for b.Loop() {
				for i, s := range stored {
					out, err := Decode(dst, codecs[i], s, chunk)
					if err != nil {
						b.Fatal(err)
					}
					Sum(out) // the check every Get makes
				}
			}
		})
	}
}
