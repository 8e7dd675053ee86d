package index

import (
	"context"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"slices"
	"testing"

	"github.com/driftstore/driftstore/cas"
)

// missingTestIndex opens an index (no syncs) holding records for digests n(0) .. n(stored-1).
func missingTestIndex(tb testing.TB, stored int) (*Index, func(int) cas.Digest) {
	tb.Helper()
	st, err := cas.OpenLocal(filepath.Join(tb.TempDir(), "chunks"), cas.LocalOptions{NoSync: true})
	if err != nil {
		tb.Fatal(err)
	}
	ix, err := Open(filepath.Join(tb.TempDir(), "index.db"), st, Options{NoSync: true})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ix.Close() })
	n := func(i int) cas.Digest {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], uint64(i))
		return cas.Sum(b[:])
	}
	var infos []cas.Info
	for i := range stored {
		infos = append(infos, cas.Info{Digest: n(i), Size: 1, StoredSize: 1, Codec: cas.CodecRaw})
		if len(infos) == 10_000 || i == stored-1 {
			if err := ix.RecordChunks(context.Background(), infos); err != nil {
				tb.Fatal(err)
			}
			infos = infos[:0]
		}
	}
	return ix, n
}

// TestMissingChunks: the digests without a record, in the order given, each once, whatever
// the duplicates among present and missing digests; nil when none is missing.
func TestMissingChunks(t *testing.T) {
	ix, n := missingTestIndex(t, 100)
	var zero cas.Digest
	cases := []struct {
		ds, want []cas.Digest
	}{
		{nil, nil},
		{[]cas.Digest{n(1), n(2), n(1)}, nil},
		{[]cas.Digest{n(500)}, []cas.Digest{n(500)}},
		{[]cas.Digest{n(500), n(3), n(500), n(501), n(3), zero, n(501), n(502)}, []cas.Digest{n(500), n(501), zero, n(502)}},
		{[]cas.Digest{n(99), n(100), n(0), n(100), n(100)}, []cas.Digest{n(100)}},
	}
	for i, c := range cases {
		got, err := ix.MissingChunks(c.ds)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("case %d: missing %v, want %v", i, got, c.want)
		}
	}
	// A larger request agrees with Chunks, record by record.
	var ds []cas.Digest
	for i := range 3000 {
		ds = append(ds, n((i*7919)%250))
	}
	got, err := ix.MissingChunks(ds)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := ix.Chunks(ds)
	if err != nil {
		t.Fatal(err)
	}
	var want []cas.Digest
	for i, r := range recs {
		if r.Codec == 0 && !slices.Contains(want, ds[i]) {
			want = append(want, ds[i])
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("missing %d digests, Chunks says %d", len(got), len(want))
	}
}

// BenchmarkMissingChunks answers a missing-set request of 10,000 digests (the wire's limit),
// half of them recorded, against an index of 20,000 and 200,000 chunk records.
func BenchmarkMissingChunks(b *testing.B) {
	for _, stored := range []int{20_000, 200_000} {
		b.Run(fmt.Sprintf("records=%d", stored), func(b *testing.B) {
			ix, n := missingTestIndex(b, stored)
			ds := make([]cas.Digest, 10_000)
			for i := range ds {
				if i%2 == 0 {
					ds[i] = n(i * (stored / len(ds)))
				} else {
					ds[i] = n(stored + i)
				}
			}
			b.ResetTimer()
			for b.Loop() {
				m, err := ix.MissingChunks(ds)
				if err != nil || len(m) != len(ds)/2 {
					b.Fatal(len(m), err)
				}
			}
		})
	}
}
