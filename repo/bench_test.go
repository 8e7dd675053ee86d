package repo_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path/filepath"
	"testing"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/repo"
	"github.com/driftstore/driftstore/repo/benchstore"
)

// BenchmarkPut measures ingest of 32 MiB of KV-like float16 data (hinted) and of random data
// into a fresh data directory (no fsync), with 1 and 2 workers.
func BenchmarkPut(b *testing.B) {
	kv := make([]byte, 32<<20)
	benchstore.KVFloat16(kv, 1)
	rnd := make([]byte, 32<<20)
	benchstore.Random(rnd, 2)
	for _, ds := range []struct {
		name string
		data []byte
		hint cas.Hint
	}{{"f16-kv", kv, cas.HintFloat16}, {"random", rnd, cas.HintNone}} {
		for _, w := range []int{1, 2} {
			b.Run(fmt.Sprintf("%s/workers=%d", ds.name, w), func(b *testing.B) {
				b.SetBytes(int64(len(ds.data)))
				for b.Loop() {
					b.StopTimer()
					r, err := repo.Open(filepath.Join(b.TempDir(), "data"), repo.Options{NoSync: true, Workers: w})
					if err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
					if _, err := r.PutReader(context.Background(), "kv", bytes.NewReader(ds.data), repo.PutOptions{Hint: ds.hint}); err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					r.Close()
					b.StartTimer()
				}
			})
		}
	}
}

// BenchmarkGet measures read-back (read, decode, verify) of 32 MiB of KV-like data.
func BenchmarkGet(b *testing.B) {
	data := make([]byte, 32<<20)
	benchstore.KVFloat16(data, 1)
	r, err := repo.Open(filepath.Join(b.TempDir(), "data"), repo.Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	res, err := r.PutReader(context.Background(), "kv", bytes.NewReader(data), repo.PutOptions{Hint: cas.HintFloat16})
	if err != nil {
		b.Fatal(err)
	}
	for _, w := range []int{1, 2} {
		b.Run(map[int]string{1: "workers=1", 2: "workers=2"}[w], func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := r.Get(context.Background(), res.ID, io.Discard, repo.GetOptions{Workers: w}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
