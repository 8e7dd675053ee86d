package cas_test

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/driftstore/driftstore/cas"
)

// BenchmarkStore measures cas.Local (one file per chunk) and cas.Pack (pack files) side by
// side over the 8 MiB of BenchmarkLocal in 256 KiB chunks: durable ingest through one batch
// (PutAll: Local one syncfs + renames + one more syncfs, Pack one fdatasync) and through one
// Put per chunk (a sync each; Pack shares them between concurrent Puts), and read-back of raw
// (random data) and compressed (float16 KV planes) chunks through GetAll, with 1 and 2 workers.
// Compare the local/pack lines of one run: this machine's numbers are noisy.
func BenchmarkStore(b *testing.B) {
	stores := []struct {
		name string
		open func(b *testing.B, noSync bool) cas.Store
	}{
		{"local", func(b *testing.B, noSync bool) cas.Store {
			s, err := cas.OpenLocal(b.TempDir(), cas.LocalOptions{NoSync: noSync})
			if err != nil {
				b.Fatal(err)
			}
			return s
		}},
		{"pack", func(b *testing.B, noSync bool) cas.Store {
			s, err := cas.OpenPack(b.TempDir(), cas.PackOptions{NoSync: noSync})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { s.Close() })
			return s
		}},
	}
	for _, kind := range []string{"kv-f16", "random"} {
		data := benchData()[kind]
		chunks := chunksOf(data)
		hint := cas.HintNone
		if kind == "kv-f16" {
			hint = cas.HintFloat16
		}
		for _, mode := range []string{"batch", "each"} {
			for _, workers := range []int{1, 2} {
				for _, st := range stores {
					b.Run(fmt.Sprintf("%s/put-%s/workers=%d/%s", kind, mode, workers, st.name), func(b *testing.B) {
						b.SetBytes(int64(len(data)))
						for b.Loop() {
							b.StopTimer()
							s := st.open(b, false)
							b.StartTimer()
							if mode == "batch" {
								if _, err := cas.PutAll(bg, s, workers, chunks, hint); err != nil {
									b.Fatal(err)
								}
							} else {
								parallel(workers, chunks, func(i int) {
									if _, err := s.Put(bg, chunks[i], hint); err != nil {
										b.Error(err)
									}
								})
							}
							b.StopTimer()
							if c, ok := s.(interface{ Close() error }); ok {
								c.Close()
							}
							b.StartTimer()
						}
					})
				}
			}
		}
		for _, workers := range []int{1, 2} {
			for _, st := range stores {
				b.Run(fmt.Sprintf("%s/get/workers=%d/%s", kind, workers, st.name), func(b *testing.B) {
					s := st.open(b, true)
					infos, err := cas.PutAll(bg, s, 2, chunks, hint)
					if err != nil {
						b.Fatal(err)
					}
					out := make([]byte, len(data))
					reqs := make([]cas.GetRequest, len(chunks))
					for i, in := range infos {
						reqs[i] = cas.GetRequest{Digest: in.Digest, Dst: out[i*benchChunk : i*benchChunk+len(chunks[i])]}
					}
					b.SetBytes(int64(len(data)))
					b.ResetTimer()
					for b.Loop() {
						if err := cas.GetAll(bg, s, workers, reqs); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
		}
	}
}

// BenchmarkPackOpen measures OpenPack of a store of 1 GiB in 4,096 raw 256 KiB chunks (the
// scan reads every record header; no payload is read, as a sync marker vouches for them).
// The page cache is warm (the store was just written): a cold open reads the same 4,096
// headers from disk.
func BenchmarkPackOpen(b *testing.B) {
	dir := b.TempDir()
	p, err := cas.OpenPack(dir, cas.PackOptions{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	const n = 4096
	chunk := make([]byte, benchChunk)
	copy(chunk, benchData()["random"])
	batch := p.NewBatch()
	for i := range n {
		binary.LittleEndian.PutUint64(chunk, uint64(i)) // distinct chunks, still incompressible
		if _, err := batch.Put(bg, chunk, cas.HintNone); err != nil {
			b.Fatal(err)
		}
	}
	if err := batch.Commit(bg); err != nil {
		b.Fatal(err)
	}
	p.Close()
	b.ResetTimer()
	for b.Loop() {
		p, err := cas.OpenPack(dir, cas.PackOptions{NoSync: true})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		p.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(n), "chunks")
}
