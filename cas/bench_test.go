package cas_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/blake3"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/cas/castest"
)

// Benchmarks over 8 MiB of data in 256 KiB chunks, float16 KV-like (castest.KVFloat16) and
// random. Throughput is of the uncompressed bytes; "ratio" is uncompressed ÷ stored.

const (
	benchTotal = 8 << 20
	benchChunk = 256 << 10
)

var benchData = sync.OnceValue(func() map[string][]byte {
	return map[string][]byte{
		"kv-f16": castest.KVFloat16(benchTotal, 1),
		"random": castest.Random(benchTotal, 2),
	}
})

func chunksOf(data []byte) [][]byte {
	var out [][]byte
	for off := 0; off < len(data); off += benchChunk {
		out = append(out, data[off:min(off+benchChunk, len(data))])
	}
	return out
}

// parallel runs fn over the chunks on g goroutines, each taking every g-th chunk.
func parallel(g int, chunks [][]byte, fn func(i int)) {
	var wg sync.WaitGroup
	for w := range g {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(chunks); i += g {
				fn(i)
			}
		}()
	}
	wg.Wait()
}

func BenchmarkStageLimits(b *testing.B) {
	data := benchData()["kv-f16"]
	chunks := chunksOf(data)
	b.Run("memmove", func(b *testing.B) {
		dst := make([]byte, len(data))
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			copy(dst, data)
		}
	})
	for _, g := range []int{1, 2} {
		b.Run(fmt.Sprintf("blake3/goroutines=%d", g), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				parallel(g, chunks, func(i int) { blake3.Sum256(chunks[i]) })
			}
		})
	}
}

func BenchmarkCodec(b *testing.B) {
	entropy, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderCRC(false), zstd.WithAllLitEntropyCompression(true))
	if err != nil {
		b.Fatal(err)
	}
	type codec struct {
		name   string
		codec  cas.Codec
		encode func(dst, src []byte) []byte
	}
	codecs := []codec{
		{"zstd-default", cas.CodecZstd, func(dst, src []byte) []byte { out, _ := cas.EncodeWith(dst, src, cas.CodecZstd); return out }},
		{"zstd-alllit", cas.CodecZstd, func(dst, src []byte) []byte { return entropy.EncodeAll(src, dst) }},
		{"f16planes", cas.CodecF16Planes, func(dst, src []byte) []byte { out, _ := cas.EncodeWith(dst, src, cas.CodecF16Planes); return out }},
	}
	for _, kind := range []string{"kv-f16", "random"} {
		data := benchData()[kind]
		chunks := chunksOf(data)
		for _, c := range codecs {
			stored := make([][]byte, len(chunks))
			var storedTotal int
			for i, ch := range chunks {
				stored[i] = c.encode(nil, ch)
				storedTotal += len(stored[i])
			}
			ratio := float64(len(data)) / float64(storedTotal)
			b.Run(kind+"/"+c.name+"/encode", func(b *testing.B) {
				b.SetBytes(int64(len(data)))
				buf := make([]byte, 0, 2*benchChunk)
				for b.Loop() {
					for _, ch := range chunks {
						buf = c.encode(buf[:0], ch)
					}
				}
				b.ReportMetric(ratio, "ratio")
			})
			b.Run(kind+"/"+c.name+"/decode", func(b *testing.B) {
				b.SetBytes(int64(len(data)))
				dst := make([]byte, benchChunk)
				for b.Loop() {
					for i := range chunks {
						if _, err := cas.Decode(dst, c.codec, stored[i], len(chunks[i])); err != nil {
							b.Fatal(err)
						}
					}
				}
				b.ReportMetric(ratio, "ratio")
			})
		}
		b.Run(kind+"/auto/encode", func(b *testing.B) {
			hint := cas.HintNone
			if kind == "kv-f16" {
				hint = cas.HintFloat16
			}
			b.SetBytes(int64(len(data)))
			buf := make([]byte, 0, 2*benchChunk)
			var storedTotal int
			for b.Loop() {
				storedTotal = 0
				for _, ch := range chunks {
					_, buf = cas.Encode(buf[:0], ch, hint)
					storedTotal += len(buf)
				}
			}
			b.ReportMetric(float64(len(data))/float64(storedTotal), "ratio")
		})
	}
}

func BenchmarkLocal(b *testing.B) {
	ctx := context.Background()
	for _, kind := range []string{"kv-f16", "random"} {
		data := benchData()[kind]
		chunks := chunksOf(data)
		hint := cas.HintNone
		if kind == "kv-f16" {
			hint = cas.HintFloat16
		}
		for _, sync := range []bool{true, false} {
			for _, workers := range []int{1, 2} {
				for _, each := range []bool{false, true} {
					// each: one Put per chunk (a sync per chunk); otherwise PutAll (one batch).
					mode := map[bool]string{false: "batch", true: "each"}[each]
					name := fmt.Sprintf("%s/put-%s/sync=%v/workers=%d", kind, mode, sync, workers)
					b.Run(name, func(b *testing.B) {
						b.SetBytes(int64(len(data)))
						var stored int64
						for b.Loop() {
							b.StopTimer()
							s, err := cas.OpenLocal(b.TempDir(), cas.LocalOptions{NoSync: !sync})
							if err != nil {
								b.Fatal(err)
							}
							b.StartTimer()
							var infos []cas.Info
							if each {
								infos = make([]cas.Info, len(chunks))
								parallel(workers, chunks, func(i int) {
									infos[i], err = s.Put(ctx, chunks[i], hint)
									if err != nil {
										b.Error(err)
									}
								})
							} else if infos, err = cas.PutAll(ctx, s, workers, chunks, hint); err != nil {
								b.Fatal(err)
							}
							stored = 0
							for _, in := range infos {
								stored += in.StoredSize
							}
						}
						b.ReportMetric(float64(len(data))/float64(stored), "ratio")
					})
				}
			}
		}
		s, err := cas.OpenLocal(b.TempDir(), cas.LocalOptions{NoSync: true})
		if err != nil {
			b.Fatal(err)
		}
		infos, err := cas.PutAll(ctx, s, 2, chunks, hint)
		if err != nil {
			b.Fatal(err)
		}
		out := make([]byte, len(data))
		reqs := make([]cas.GetRequest, len(chunks))
		for i, in := range infos {
			reqs[i] = cas.GetRequest{Digest: in.Digest, Dst: out[i*benchChunk : i*benchChunk+len(chunks[i])]}
		}
		for _, workers := range []int{1, 2} {
			b.Run(fmt.Sprintf("%s/get/workers=%d", kind, workers), func(b *testing.B) {
				b.SetBytes(int64(len(data)))
				for b.Loop() {
					if err := cas.GetAll(ctx, s, workers, reqs); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
