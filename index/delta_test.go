package index

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/driftstore/driftstore/cas"
)

// storedValue returns the bytes the manifests bucket holds for id.
func (f *fixture) storedValue(id ID) []byte {
	f.t.Helper()
	var v []byte
	if err := f.ix.db.View(func(tx *bolt.Tx) error {
		v = bytes.Clone(tx.Bucket(bucketManifests).Get(id[:]))
		return nil
	}); err != nil {
		f.t.Fatal(err)
	}
	return v
}

// chain commits a checkpoint-like chain: 3 regions that grow by one chunk a step, a metadata
// value that changes every step and a token history (8 KiB, then 64 bytes more a step, last in
// the metadata as in a checkpoint). It returns the IDs and the manifests.
func (f *fixture) chain(parent ID, steps, per int, tag string) ([]ID, []*Manifest) {
	f.t.Helper()
	var regs []Region
	for l := range 3 {
		var parts []string
		for b := range per {
			parts = append(parts, fmt.Sprintf("%s-%d-%d", tag, l, b))
		}
		regs = append(regs, Region{Name: fmt.Sprintf("kv/%d", l), Chunks: f.put(parts...)})
	}
	var ids []ID
	var ms []*Manifest
	toks := make([]byte, 8<<10)
	for i := range toks {
		toks[i] = byte(i*7+i>>8) ^ tag[0]
	}
	for s := range steps {
		for i := range 64 {
			toks = append(toks, byte(s*13+i))
		}
		m := &Manifest{Kind: "checkpoint", Parent: parent, Meta: map[string]Value{"position": Uint64(uint64(per + s)), "tokens": Bytes(bytes.Clone(toks))}}
		for l := range regs {
			if s > 0 {
				regs[l].Chunks = append(regs[l].Chunks, f.put(fmt.Sprintf("%s-%d-step%d", tag, l, s))...)
			}
			m.Regions = append(m.Regions, Region{Name: regs[l].Name, Chunks: append([]ChunkRef(nil), regs[l].Chunks...)})
		}
		id, err := f.ix.PutManifest(context.Background(), m)
		if err != nil {
			f.t.Fatal(err)
		}
		ids, ms, parent = append(ids, id), append(ms, m), id
	}
	return ids, ms
}

func TestDeltaForm(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ids, ms := f.chain(ID{}, 6, 64, "a")
	// The first is stored full, the rest as deltas against it, each far smaller.
	full := f.storedValue(ids[0])
	want0, _, _ := ms[0].Encode()
	if !bytes.Equal(full, want0) {
		t.Fatal("first manifest not stored in its canonical encoding")
	}
	for i, id := range ids[1:] {
		v := f.storedValue(id)
		want, _, _ := ms[i+1].Encode()
		// The new chunk references, the changed metadata and the token history's new bytes.
		if !bytes.HasPrefix(v, []byte(deltaMagic)) || ID(v[4:36]) != ids[0] || len(v) > 1024 {
			t.Fatalf("manifest %d: stored %d bytes (%q...) for %d", i+1, len(v), v[:4], len(want))
		}
		got, err := f.ix.ManifestBytes(id)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("manifest %d: ManifestBytes = %d bytes, %v; want the canonical encoding", i+1, len(got), err)
		}
	}
	// Listing, reopening (nothing remembered: the next child is stored full and becomes a
	// base), GC with everything referenced through the last manifest: all still readable.
	infos, err := f.ix.Manifests()
	if err != nil || len(infos) != len(ids) {
		t.Fatalf("Manifests: %d, %v", len(infos), err)
	}
	for _, in := range infos {
		if in.Err != nil || in.Kind != "checkpoint" {
			t.Fatalf("listed %+v", in)
		}
	}
	f.ix.Close()
	ix, err := Open(f.path, f.store, Options{Now: f.clock.now, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	f.ix = ix
	more, _ := f.chain(ids[len(ids)-1], 3, 64, "b")
	if v := f.storedValue(more[0]); !bytes.HasPrefix(v, []byte(manifestMagic)) {
		t.Fatal("first manifest after a reopen not stored full")
	}
	if v := f.storedValue(more[1]); !bytes.HasPrefix(v, []byte(deltaMagic)) || ID(v[4:36]) != more[0] {
		t.Fatal("second manifest after a reopen not a delta against the first")
	}
	if _, err := f.ix.SetRef(ctx, RefTag, "keep", more[2]); err != nil {
		t.Fatal(err)
	}
	f.clock.advance(2 * DefaultGrace)
	res, err := f.ix.GC(ctx, GCOptions{})
	if err != nil || res.ManifestsDeleted != 0 {
		t.Fatalf("GC: %+v, %v", res, err)
	}
	for _, id := range append(ids, more...) {
		if _, err := f.ix.Manifest(id); err != nil {
			t.Fatalf("after GC: %v", err)
		}
	}
}

func TestDeltaOnlyWhenItPays(t *testing.T) {
	f := newFixture(t)
	a, _ := f.chain(ID{}, 1, 16, "a")
	// A child sharing nothing with its parent is stored full.
	b, _ := f.chain(a[0], 1, 16, "b")
	if v := f.storedValue(b[0]); !bytes.HasPrefix(v, []byte(manifestMagic)) {
		t.Fatal("a child sharing nothing with its parent stored as a delta")
	}
}

func TestDeltaBaseMissing(t *testing.T) {
	f := newFixture(t)
	f.problemsOK = true
	ids, _ := f.chain(ID{}, 2, 32, "a")
	if err := f.ix.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketManifests).Delete(ids[0][:]) }); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ix.ManifestBytes(ids[1]); !errors.Is(err, ErrCorruptIndex) {
		t.Fatalf("ManifestBytes of a delta without its base: %v", err)
	}
	res, err := f.ix.Fsck(context.Background(), FsckOptions{Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range res.Problems {
		found = found || p.Kind == ManifestCorrupt && p.Digest == ids[1]
	}
	if !found {
		t.Fatalf("fsck problems %v: want the delta reported corrupt", res.Problems)
	}
	// Bases are looked up again in the transaction: the next child is stored full.
	more, _ := f.chain(ids[1], 1, 32, "b")
	if v := f.storedValue(more[0]); !bytes.HasPrefix(v, []byte(manifestMagic)) {
		t.Fatal("child stored as a delta against a base that is gone")
	}
}

func TestApplyDeltaRefusesBadOperations(t *testing.T) {
	base := []byte("0123456789")
	ops := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	uv := func(v uint64) []byte { return binary.AppendUvarint(nil, v) }
	good := ops([]byte{opCopy}, uv(2), uv(3), []byte{opLiteral}, uv(2), []byte("ab"))
	if got, err := applyDelta(base, good); err != nil || string(got) != "234ab" {
		t.Fatalf("applyDelta = %q, %v", got, err)
	}
	for i := range good {
		if _, err := applyDelta(base, good[:i]); err == nil && i != 0 && i != 3 {
			t.Errorf("truncated to %d bytes: accepted", i)
		}
	}
	for _, bad := range [][]byte{
		ops([]byte{opCopy}, uv(8), uv(3)),
		ops([]byte{opCopy}, uv(1<<63), uv(1<<63)),
		ops([]byte{opLiteral}, uv(5), []byte("ab")),
		ops([]byte{7}, uv(1)),
	} {
		if _, err := applyDelta(base, bad); err == nil {
			t.Errorf("ops %x accepted", bad)
		}
	}
}

func TestSchemaOneUpgraded(t *testing.T) {
	f := newFixture(t)
	if err := f.ix.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keySchema, binary.AppendUvarint(nil, 1))
	}); err != nil {
		t.Fatal(err)
	}
	f.ix.Close()
	ix, err := Open(f.path, f.store, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	f.ix = ix
	var v uint64
	if err := ix.db.View(func(tx *bolt.Tx) error {
		v, _ = binary.Uvarint(tx.Bucket(bucketMeta).Get(keySchema))
		return nil
	}); err != nil || v != SchemaVersion {
		t.Fatalf("schema after opening a schema-1 index for writing: %d, %v", v, err)
	}
}

// TestCopiesMatch checks makeDelta's check against applyDelta: ops rebuild data exactly when
// applyDelta's output equals data.
func TestCopiesMatch(t *testing.T) {
	base := []byte("0123456789")
	ops := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	uv := func(v uint64) []byte { return binary.AppendUvarint(nil, v) }
	for _, tc := range []struct {
		ops  []byte
		data string
	}{
		{ops([]byte{opCopy}, uv(2), uv(3), []byte{opLiteral}, uv(2), []byte("ab")), "234ab"},
		{ops([]byte{opCopy}, uv(2), uv(3), []byte{opLiteral}, uv(2), []byte("ab")), "234ac"},
		{ops([]byte{opCopy}, uv(2), uv(3), []byte{opLiteral}, uv(2), []byte("ab")), "234ab!"},
		{ops([]byte{opCopy}, uv(2), uv(3)), "23"},
		{ops([]byte{opCopy}, uv(2), uv(3)), "235"},
		{ops([]byte{opCopy}, uv(8), uv(3)), "89"},
		{ops([]byte{opCopy}, uv(1<<63), uv(1<<63)), ""},
		{ops([]byte{opLiteral}, uv(5), []byte("ab")), "ab"},
		{ops([]byte{7}, uv(1)), ""},
		{nil, ""},
		{nil, "x"},
	} {
		got, err := applyDelta(base, tc.ops)
		want := err == nil && string(got) == tc.data
		if copiesMatch(base, tc.ops, []byte(tc.data)) != want {
			t.Errorf("copiesMatch(%x, %q) = %v, applyDelta gives %q, %v", tc.ops, tc.data, !want, got, err)
		}
	}
}

// TestDeltaWrongLayout: a refLayout that does not describe the bytes yields no delta (the full
// form is stored), never a delta that rebuilds other bytes.
func TestDeltaWrongLayout(t *testing.T) {
	f := newFixture(t)
	_, ms := f.chain(ID{}, 2, 16, "w")
	base, _, err := ms[0].Encode()
	if err != nil {
		t.Fatal(err)
	}
	data, _, err := ms[1].Encode()
	if err != nil {
		t.Fatal(err)
	}
	baseID := ID{1}
	bl, nl := layoutOf(ms[0], len(base)), layoutOf(ms[1], len(data))
	if makeDelta(baseID, base, bl, data, nl) == nil {
		t.Fatal("no delta for a right layout")
	}
	for i := range nl.refsAt {
		for _, shift := range []int{-1, 1, 32} {
			wrong := nl
			wrong.refsAt = append([]int(nil), nl.refsAt...)
			wrong.refsAt[i] += shift
			if d := makeDelta(baseID, base, bl, data, wrong); d != nil {
				if got, err := applyDelta(base, d[len(deltaMagic)+32:]); err != nil || !bytes.Equal(got, data) {
					t.Fatalf("region %d shifted by %d: a delta that rebuilds other bytes", i, shift)
				}
			}
		}
	}
}

// TestCommonRefs: the common prefix found a run of references at a time equals the one found
// reference by reference, wherever the first difference is (in the digest or the length).
func TestCommonRefs(t *testing.T) {
	refs := func(n int) []ChunkRef {
		out := make([]ChunkRef, n)
		for i := range out {
			out[i] = ChunkRef{Digest: cas.Sum([]byte{byte(i), byte(i >> 8)}), Length: int64(i + 1)}
		}
		return out
	}
	naive := func(a, b []ChunkRef) int {
		k := 0
		for k < len(a) && k < len(b) && a[k] == b[k] {
			k++
		}
		return k
	}
	for _, n := range []int{0, 1, 63, 64, 65, 200, 256} {
		for _, at := range []int{-1, 0, 1, 62, 63, 64, 65, 127, 128, 199, 255} {
			for _, field := range []string{"digest", "length"} {
				a, b := refs(n), refs(n)
				if at >= 0 && at < n {
					if field == "digest" {
						b[at].Digest[31] ^= 1
					} else {
						b[at].Length++
					}
				}
				for _, bl := range []int{n, n / 2, max(0, n-1)} {
					if got, want := commonRefs(a, b[:bl]), naive(a, b[:bl]); got != want {
						t.Fatalf("n %d, %s differs at %d, b of %d: commonRefs %d, want %d", n, field, at, bl, got, want)
					}
				}
			}
		}
	}
}

func TestUvarintLen(t *testing.T) {
	for _, v := range []uint64{0, 1, 127, 128, 1<<14 - 1, 1 << 14, 32 << 10, 1<<21 - 1, 1 << 21, 1<<63 - 1, 1 << 63, ^uint64(0)} {
		if got, want := uvarintLen(v), len(binary.AppendUvarint(nil, v)); got != want {
			t.Errorf("uvarintLen(%d) = %d, want %d", v, got, want)
		}
	}
}
