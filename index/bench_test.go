package index

import (
	"context"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/driftstore/driftstore/cas"
)

// BenchmarkCommitChild commits, with the index's syncs on, a checkpoint-like chain: each
// manifest extends its parent's 16 regions by one new chunk each (16 new chunk records) and
// keeps every chunk before them, at 32 to 256 chunks a region (512 to 4096 chunk references:
// the manifest of 512 to 4096 positions of the Llama-3.2-1B shape, 18 to 143 KB). What grows
// with the manifest is what a commit costs beyond its new chunks.
func BenchmarkCommitChild(b *testing.B) {
	for _, per := range []int{32, 256} {
		b.Run(fmt.Sprintf("refs=%d", 16*per), func(b *testing.B) {
			st, err := cas.OpenLocal(filepath.Join(b.TempDir(), "chunks"), cas.LocalOptions{NoSync: true})
			if err != nil {
				b.Fatal(err)
			}
			ix, err := Open(filepath.Join(b.TempDir(), "index.db"), st, Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer ix.Close()
			ctx := context.Background()
			n := 0
			chunk := func() cas.Info {
				n++
				var d cas.Digest
				binary.LittleEndian.PutUint64(d[:], uint64(n))
				d = cas.Sum(d[:])
				return cas.Info{Digest: d, Size: 32 << 10, StoredSize: 30 << 10, Codec: cas.CodecRaw}
			}
			m := &Manifest{Kind: "checkpoint", Meta: map[string]Value{"position": Uint64(uint64(16 * per))}}
			var infos []cas.Info
			for l := range 16 {
				r := Region{Name: fmt.Sprintf("kv/%d", l)}
				for range per {
					in := chunk()
					infos = append(infos, in)
					r.Chunks = append(r.Chunks, ChunkRef{Digest: in.Digest, Length: in.Size})
				}
				m.Regions = append(m.Regions, r)
			}
			parent, err := ix.CommitManifest(ctx, infos, m)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(mustEncode(b, m))))
			for b.Loop() {
				m.Parent = parent
				infos = infos[:0]
				for l := range m.Regions {
					in := chunk()
					infos = append(infos, in)
					m.Regions[l].Chunks = append(m.Regions[l].Chunks, ChunkRef{Digest: in.Digest, Length: in.Size})
				}
				if parent, err = ix.CommitManifest(ctx, infos, m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func mustEncode(b *testing.B, m *Manifest) []byte {
	data, _, err := m.Encode()
	if err != nil {
		b.Fatal(err)
	}
	return data
}

// BenchmarkManifestEncoded encodes and hashes (Manifest.Encoded, EncodedOwned) the manifest of a checkpoint
// of 4096 positions of the Llama-3.2-1B shape: 16 regions of 256 chunk references and a
// 16 KiB token history, 143 KB in all. Every checkpoint pays it.
func BenchmarkManifestEncoded(b *testing.B) {
	m := &Manifest{Kind: "checkpoint", Parent: ID{1}, Meta: map[string]Value{"position": Uint64(4096), "tokens": Bytes(make([]byte, 16<<10))}}
	for r := range 16 {
		var cs []ChunkRef
		for c := range 256 {
			cs = append(cs, ChunkRef{Digest: cas.Sum([]byte{byte(r), byte(c)}), Length: 32 << 10})
		}
		m.Regions = append(m.Regions, Region{Name: fmt.Sprintf("kv/%02d", r), Chunks: cs})
	}
	data, _, err := m.Encode()
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		f    func() (*Encoded, error)
	}{{"copy", m.Encoded}, {"owned", m.EncodedOwned}} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := tc.f(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
