package index

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/driftstore/driftstore/cas"
)

func keptRefs(prefix string, n int) []ChunkRef {
	refs := make([]ChunkRef, n)
	for i := range refs {
		refs[i] = ChunkRef{Digest: cas.Sum(fmt.Appendf(nil, "%s %d", prefix, i)), Length: int64(1 + i*1000)}
	}
	return refs
}

// keptBaseManifest is the base of the kept-form tests: two regions.
func keptBaseManifest() *Manifest {
	return &Manifest{Kind: "checkpoint", Regions: []Region{{Name: "kv.0", Chunks: keptRefs("a", 10)}, {Name: "state", Chunks: keptRefs("s", 5)}},
		Meta: map[string]Value{"position": Uint64(10)}}
}

// TestKeptFormRoundTrip: a manifest written in kept form against its base reads back as the
// same manifest (the same canonical bytes), whatever it shares with the base.
func TestKeptFormRoundTrip(t *testing.T) {
	base := keptBaseManifest()
	baseID := ID{1}
	grow := append(append([]ChunkRef(nil), base.Regions[0].Chunks...), keptRefs("b", 2)...)
	changed := append(append([]ChunkRef(nil), base.Regions[1].Chunks[:2]...), keptRefs("t", 4)...)
	for _, tc := range []struct {
		name    string
		regions []Region
		kept    int // references the form should leave out
	}{
		{"grown and changed", []Region{{Name: "kv.0", Chunks: grow}, {Name: "state", Chunks: changed}}, 12},
		{"a new region", []Region{{Name: "kv.0", Chunks: grow}, {Name: "state", Chunks: changed}, {Name: "kv.1", Chunks: keptRefs("c", 3)}}, 12},
		{"regions reordered", []Region{{Name: "state", Chunks: changed}, {Name: "kv.0", Chunks: grow}}, 0},
		{"shorter", []Region{{Name: "kv.0", Chunks: grow[:4]}}, 4},
		{"identical", base.Regions, 15},
		{"empty regions", []Region{{Name: "kv.0"}, {Name: "state"}}, 0},
		{"no regions", nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &Manifest{Kind: "checkpoint", Parent: baseID, Regions: tc.regions, Meta: map[string]Value{"position": Uint64(12), "tokens": Bytes([]byte{1, 2, 3})}}
			want, _, err := m.Encode()
			if err != nil {
				t.Fatal(err)
			}
			f, err := encodeKept(m, baseID, base.Regions)
			if err != nil {
				t.Fatal(err)
			}
			if id, ok := keptBase(f); !ok || id != baseID {
				t.Fatalf("base %s %v", id, ok)
			}
			// The form adds its base's ID and a count per region, and leaves out 33-37 bytes
			// per reference kept.
			if left := len(want) + len(baseID) + len(tc.regions) - len(f); left < tc.kept*33 || left > tc.kept*37 {
				t.Fatalf("form of %d bytes for a manifest of %d: want %d references left out", len(f), len(want), tc.kept)
			}
			got, err := decodeKept(f, base.Regions)
			if err != nil {
				t.Fatal(err)
			}
			again, _, err := got.Encode()
			if err != nil || !bytes.Equal(again, want) {
				t.Fatalf("read back as other bytes (%v)", err)
			}
		})
	}
}

// TestKeptFormRefusals: a kept form read against the wrong base, or one cut short, is refused;
// a manifest that breaks the encoding's rules is refused when written.
func TestKeptFormRefusals(t *testing.T) {
	base := keptBaseManifest()
	m := &Manifest{Kind: "checkpoint", Regions: []Region{{Name: "kv.0", Chunks: append(append([]ChunkRef(nil), base.Regions[0].Chunks...), keptRefs("b", 1)...)}}}
	f, err := encodeKept(m, ID{1}, base.Regions)
	if err != nil {
		t.Fatal(err)
	}
	for name, other := range map[string][]Region{
		"no such region":    nil,
		"another name":      {{Name: "kv.9", Chunks: base.Regions[0].Chunks}},
		"a shorter region":  {{Name: "kv.0", Chunks: base.Regions[0].Chunks[:3]}},
		"a different order": {{Name: "state"}, {Name: "kv.0", Chunks: base.Regions[0].Chunks}},
	} {
		if _, err := decodeKept(f, other); !errors.Is(err, ErrBadManifest) {
			t.Errorf("%s: %v, want ErrBadManifest", name, err)
		}
	}
	for i := range f {
		if _, err := decodeKept(f[:i], base.Regions); err == nil {
			t.Fatalf("prefix of %d bytes read", i)
		}
	}
	bad := &Manifest{Kind: "checkpoint", Regions: []Region{{Name: "kv.0", Chunks: append(append([]ChunkRef(nil), base.Regions[0].Chunks...), ChunkRef{Length: 0})}}}
	if _, err := encodeKept(bad, ID{1}, base.Regions); !errors.Is(err, ErrBadManifest) {
		t.Fatalf("a zero-length chunk: %v", err)
	}
}

func FuzzDecodeKept(f *testing.F) {
	base := keptBaseManifest()
	m := &Manifest{Kind: "checkpoint", Regions: []Region{{Name: "kv.0", Chunks: append(append([]ChunkRef(nil), base.Regions[0].Chunks...), keptRefs("b", 2)...)}, {Name: "x", Chunks: keptRefs("x", 1)}},
		Meta: map[string]Value{"k": String("v")}}
	seed, err := encodeKept(m, ID{1}, base.Regions)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add([]byte(keptMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := decodeKept(b, base.Regions)
		if err != nil {
			return
		}
		if _, _, err := got.Encode(); err != nil && !errors.Is(err, ErrBadManifest) {
			t.Fatal(err)
		}
	})
}
