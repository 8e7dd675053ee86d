package index

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/driftstore/driftstore/cas"
)

// storeOnly stores chunks without recording them and returns their infos and refs.
func (f *fixture) storeOnly(parts ...string) ([]cas.Info, []ChunkRef) {
	f.t.Helper()
	var infos []cas.Info
	var refs []ChunkRef
	for _, p := range parts {
		in, err := f.store.Put(context.Background(), []byte(p), cas.HintNone)
		if err != nil {
			f.t.Fatal(err)
		}
		infos = append(infos, in)
		refs = append(refs, ChunkRef{Digest: in.Digest, Length: in.Size})
	}
	return infos, refs
}

// dropRecord deletes a chunk record behind the index's back (a state only a damaged index has).
func (f *fixture) dropRecord(d cas.Digest) {
	f.t.Helper()
	if err := f.ix.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketChunks).Delete(d[:]) }); err != nil {
		f.t.Fatal(err)
	}
}

func TestPutManifestWithParentChecksNewChunks(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	base := f.put("a0", "a1")
	parent, err := f.ix.PutManifest(ctx, &Manifest{Kind: "file", Regions: []Region{{Name: "r", Chunks: base}}})
	if err != nil {
		t.Fatal(err)
	}
	// The parent's chunks plus one that is stored but not recorded: refused, naming only it.
	_, ghost := f.storeOnly("new")
	child := &Manifest{Kind: "file", Parent: parent, Regions: []Region{{Name: "r", Chunks: append(append([]ChunkRef(nil), base...), ghost[0])}}}
	var me *MissingChunksError
	if _, err := f.ix.PutManifest(ctx, child); !errors.As(err, &me) || len(me.Missing) != 1 || me.Missing[0] != ghost[0].Digest {
		t.Fatalf("err = %v, want the new chunk missing", err)
	}
	// A new chunk with the wrong length, and a parent chunk at its place with another length.
	rec := f.put("new")
	for _, c := range []ChunkRef{{rec[0].Digest, 99}, {base[0].Digest, 7}} {
		bad := &Manifest{Kind: "file", Parent: parent, Regions: []Region{{Name: "r", Chunks: []ChunkRef{base[0], base[1], c}}}}
		if c.Digest == base[0].Digest {
			bad.Regions[0].Chunks[0] = c
		}
		var le *LengthMismatchError
		if _, err := f.ix.PutManifest(ctx, bad); !errors.As(err, &le) || le.Digest != c.Digest {
			t.Fatalf("%v: err = %v, want a length mismatch", c, err)
		}
	}
	// Recorded now: accepted.
	if _, err := f.ix.PutManifest(ctx, child); err != nil {
		t.Fatal(err)
	}
}

func TestPutManifestTakesParentChunksAsRecorded(t *testing.T) {
	f := newFixture(t)
	f.problemsOK = true // the test removes a record behind the index's back
	ctx := context.Background()
	base := f.put("b0", "b1")
	parent, err := f.ix.PutManifest(ctx, &Manifest{Kind: "file", Regions: []Region{{Name: "kv", Chunks: base}}})
	if err != nil {
		t.Fatal(err)
	}
	f.dropRecord(base[0].Digest)
	next := f.put("b2")
	// Named by the parent at the same place: taken as recorded without a look-up.
	child := &Manifest{Kind: "file", Parent: parent, Regions: []Region{{Name: "kv", Chunks: []ChunkRef{base[0], base[1], next[0]}}}}
	if _, err := f.ix.PutManifest(ctx, child); err != nil {
		t.Fatalf("child of a present parent: %v", err)
	}
	// Elsewhere (another position, another region, or no parent): looked up, so missing.
	for i, m := range []*Manifest{
		{Kind: "file", Parent: parent, Regions: []Region{{Name: "kv", Chunks: []ChunkRef{base[1], base[0]}}}},
		{Kind: "file", Parent: parent, Regions: []Region{{Name: "other", Chunks: []ChunkRef{base[0]}}}},
		{Kind: "file", Regions: []Region{{Name: "kv", Chunks: []ChunkRef{base[0], base[1]}}}},
	} {
		var me *MissingChunksError
		if _, err := f.ix.PutManifest(ctx, m); !errors.As(err, &me) || len(me.Missing) != 1 || me.Missing[0] != base[0].Digest {
			t.Fatalf("manifest %d: err = %v, want %s missing", i, err, base[0].Digest)
		}
	}
}

func TestCommitManifestIsOneTransaction(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	base := f.put("c0")
	parent, err := f.ix.PutManifest(ctx, &Manifest{Kind: "file", Regions: []Region{{Name: "r", Chunks: base}}})
	if err != nil {
		t.Fatal(err)
	}
	infos, refs := f.storeOnly("c1", "c2")
	_, ghost := f.storeOnly("c3")
	notRecorded := func(what string) {
		t.Helper()
		for _, in := range infos {
			if _, err := f.ix.Chunk(in.Digest); !errors.Is(err, ErrChunkNotRecorded) {
				t.Fatalf("%s: chunk %s recorded by a refused commit (%v)", what, in.Digest, err)
			}
		}
	}
	// Refusals record nothing: a chunk neither in infos nor recorded; a missing parent; a bad info.
	m := &Manifest{Kind: "file", Parent: parent, Regions: []Region{{Name: "r", Chunks: []ChunkRef{base[0], refs[0], refs[1], ghost[0]}}}}
	if _, err := f.ix.CommitManifest(ctx, infos, m); !errors.Is(err, ErrMissingChunks) {
		t.Fatalf("err = %v, want ErrMissingChunks", err)
	}
	notRecorded("missing chunk")
	m = &Manifest{Kind: "file", Parent: cas.Sum([]byte("no such parent")), Regions: []Region{{Name: "r", Chunks: refs}}}
	if _, err := f.ix.CommitManifest(ctx, infos, m); !errors.Is(err, ErrMissingParent) {
		t.Fatalf("err = %v, want ErrMissingParent", err)
	}
	notRecorded("missing parent")
	bad := append([]cas.Info{{Digest: ghost[0].Digest}}, infos...)
	if _, err := f.ix.CommitManifest(ctx, bad, &Manifest{Kind: "file", Regions: []Region{{Name: "r", Chunks: refs}}}); err == nil {
		t.Fatal("invalid info accepted")
	}
	notRecorded("invalid info")
	// Accepted: the chunks are recorded and the manifest is there, its chunks all recorded.
	m = &Manifest{Kind: "file", Parent: parent, Regions: []Region{{Name: "r", Chunks: []ChunkRef{base[0], refs[0], refs[1]}}}}
	id, err := f.ix.CommitManifest(ctx, infos, m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := f.ix.Manifest(id)
	if err != nil || got.Parent != parent || len(got.Regions[0].Chunks) != 3 {
		t.Fatalf("Manifest: %+v %v", got, err)
	}
	for _, in := range infos {
		if r, err := f.ix.Chunk(in.Digest); err != nil || r.Size != in.Size || r.Codec != in.Codec {
			t.Fatalf("chunk %s: %+v %v", in.Digest, r, err)
		}
	}
}

// BenchmarkPutManifestChild commits a checkpoint-like manifest of 16 regions × 256 chunks whose
// parent names all but the last chunk of each region, with and without the parent (without, every
// chunk is looked up, as before parents were taken into account).
func BenchmarkPutManifestChild(b *testing.B) {
	for _, withParent := range []bool{true, false} {
		b.Run(fmt.Sprintf("parent=%v", withParent), func(b *testing.B) {
			dir := b.TempDir()
			st, err := cas.OpenLocal(filepath.Join(dir, "chunks"), cas.LocalOptions{NoSync: true})
			if err != nil {
				b.Fatal(err)
			}
			ix, err := Open(filepath.Join(dir, "index.db"), st, Options{NoSync: true})
			if err != nil {
				b.Fatal(err)
			}
			defer ix.Close()
			ctx := context.Background()
			const regions, per = 16, 256
			var infos []cas.Info
			parent := &Manifest{Kind: "checkpoint"}
			for r := 0; r < regions; r++ {
				reg := Region{Name: fmt.Sprintf("kv/%d", r)}
				for c := 0; c < per; c++ {
					d := cas.Sum([]byte(fmt.Sprintf("%d/%d", r, c)))
					infos = append(infos, cas.Info{Digest: d, Size: 1 << 16, StoredSize: 1 << 15, Codec: 1})
					if c < per-1 {
						reg.Chunks = append(reg.Chunks, ChunkRef{d, 1 << 16})
					}
				}
				parent.Regions = append(parent.Regions, reg)
			}
			if err := ix.RecordChunks(ctx, infos); err != nil {
				b.Fatal(err)
			}
			pid, err := ix.PutManifest(ctx, parent)
			if err != nil {
				b.Fatal(err)
			}
			child := &Manifest{Kind: "checkpoint"}
			if withParent {
				child.Parent = pid
			}
			for r := range parent.Regions {
				reg := Region{Name: parent.Regions[r].Name, Chunks: append([]ChunkRef(nil), parent.Regions[r].Chunks...)}
				reg.Chunks = append(reg.Chunks, ChunkRef{infos[r*per+per-1].Digest, 1 << 16})
				child.Regions = append(child.Regions, reg)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				child.Meta = map[string]Value{"i": Uint64(uint64(i))}
				if _, err := ix.CommitManifest(ctx, infos[:16], child); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// A parent committed through this Index is taken from memory (Index.remember); the memory must
// be the committed regions, not the caller's slices, and must not stand in for a parent that is
// gone.
func TestRecentParentRegions(t *testing.T) {
	f := newFixture(t)
	f.problemsOK = true // the test removes a manifest behind the index's back
	ctx := context.Background()
	base := f.put("p0", "p1")
	pm := &Manifest{Kind: "file", Regions: []Region{{Name: "r", Chunks: append([]ChunkRef(nil), base...)}}}
	parent, err := f.ix.PutManifest(ctx, pm)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := f.ix.recentManifest(parent); !ok {
		t.Fatal("parent not remembered after its commit")
	}
	// The caller changes its manifest afterwards: the index still knows the parent as
	// committed, so a child naming an unrecorded chunk at that place is refused.
	_, ghost := f.storeOnly("ghost")
	pm.Regions[0].Chunks[0] = ghost[0]
	child := &Manifest{Kind: "file", Parent: parent, Regions: []Region{{Name: "r", Chunks: []ChunkRef{ghost[0], base[1]}}}}
	var me *MissingChunksError
	if _, err := f.ix.PutManifest(ctx, child); !errors.As(err, &me) || len(me.Missing) != 1 || me.Missing[0] != ghost[0].Digest {
		t.Fatalf("err = %v, want the changed chunk missing", err)
	}
	// Encoded copies too: a change after Encoded does not reach the commit.
	e, err := (&Manifest{Kind: "file", Parent: parent, Regions: []Region{{Name: "r", Chunks: []ChunkRef{base[0], base[1]}}}}).Encoded()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.ix.CommitEncoded(ctx, nil, e); err != nil {
		t.Fatal(err)
	}
	if got, err := f.ix.Manifest(e.ID()); err != nil || got.Parent != parent || len(got.Regions[0].Chunks) != 2 {
		t.Fatalf("committed child: %+v, %v", got, err)
	}
	// The parent removed behind the index's back: remembered or not, the child is refused.
	if err := f.ix.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketManifests).Delete(parent[:]) }); err != nil {
		t.Fatal(err)
	}
	other := &Manifest{Kind: "file", Parent: parent, Regions: []Region{{Name: "r", Chunks: []ChunkRef{base[1]}}}}
	if _, err := f.ix.PutManifest(ctx, other); !errors.Is(err, ErrMissingParent) {
		t.Fatalf("err = %v, want ErrMissingParent", err)
	}
}

// encodedChain returns n manifests, each the child of the one before (the first a child of
// parent): 64 recorded chunks, then two more per manifest stored but not yet recorded (their
// infos are returned too).
func (f *fixture) encodedChain(parent ID, n int, tag string) ([]*Encoded, []cas.Info) {
	f.t.Helper()
	var all []cas.Info
	var chunks []ChunkRef
	for i := range 64 {
		chunks = append(chunks, f.put(fmt.Sprintf("%s-base-%d", tag, i))...)
	}
	var es []*Encoded
	for i := range n {
		infos, refs := f.storeOnly(fmt.Sprintf("%s-%d-a", tag, i), fmt.Sprintf("%s-%d-b", tag, i))
		all = append(all, infos...)
		chunks = append(chunks, refs...)
		m := &Manifest{Kind: "checkpoint", Parent: parent, Regions: []Region{{Name: "kv", Chunks: append([]ChunkRef(nil), chunks...)}}}
		e, err := m.Encoded()
		if err != nil {
			f.t.Fatal(err)
		}
		es, parent = append(es, e), e.ID()
	}
	return es, all
}

// TestCommitChainAndRef: chunks, a chain of manifests (each the parent of the next) and the
// move of a ref to the last, in one transaction; the children are stored as deltas against
// the first, as PutManifest one by one would.
func TestCommitChainAndRef(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	es, infos := f.encodedChain(ID{}, 4, "c")
	last := es[len(es)-1].ID()
	err := f.ix.Commit(ctx, Commit{Chunks: infos, Manifests: es, Ref: &RefMove{Kind: RefSession, Name: "s", Target: last}})
	if err != nil {
		t.Fatal(err)
	}
	if head, err := f.ix.Ref(RefSession, "s"); err != nil || head != last {
		t.Fatalf("ref at %v, %v; want %v", head, err, last)
	}
	if h, err := f.ix.RefHistory(RefSession, "s"); err != nil || len(h) != 1 || !h[0].Old.IsZero() || h[0].New != last {
		t.Fatalf("history %+v, %v", h, err)
	}
	for i, e := range es {
		got, err := f.ix.ManifestBytes(e.ID())
		if err != nil || string(got) != string(e.Bytes()) {
			t.Fatalf("manifest %d: %v", i, err)
		}
		v := f.storedValue(e.ID())
		if delta := len(v) >= 36 && string(v[:4]) == deltaMagic; delta != (i > 0) || delta && ID(v[4:36]) != es[0].ID() {
			t.Fatalf("manifest %d stored as delta: %v", i, delta)
		}
	}
	// The next commit builds on the remembered chain: a delta against the same base.
	infos, refs := f.storeOnly("d-1", "d-2")
	child := &Manifest{Kind: "checkpoint", Parent: last, Regions: []Region{{Name: "kv", Chunks: append(append([]ChunkRef(nil), es[len(es)-1].m.Regions[0].Chunks...), refs...)}}}
	ce, err := child.Encoded()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.ix.Commit(ctx, Commit{Chunks: infos, Manifests: []*Encoded{ce}, Ref: &RefMove{Kind: RefSession, Name: "s", Expected: last, Target: ce.ID()}}); err != nil {
		t.Fatal(err)
	}
	if v := f.storedValue(ce.ID()); string(v[:4]) != deltaMagic || ID(v[4:36]) != es[0].ID() {
		t.Fatal("a child of a committed chain not stored as a delta against its base")
	}
}

// TestCommitAllOrNothing: a conflicting ref, a missing chunk in a later manifest, or a parent
// neither present nor earlier in the list: Commit fails and nothing of it is there.
func TestCommitAllOrNothing(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	other, _ := f.encodedChain(ID{}, 1, "o")
	if err := f.ix.Commit(ctx, Commit{Chunks: nil, Manifests: nil}); err != nil {
		t.Fatal(err)
	}
	head := f.put("h")
	hm, err := f.ix.PutManifest(ctx, &Manifest{Kind: "file", Regions: []Region{{Name: "r", Chunks: head}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ix.SetRef(ctx, RefSession, "s", hm); err != nil {
		t.Fatal(err)
	}
	es, infos := f.encodedChain(ID{}, 3, "x")
	_, ghost := f.storeOnly("never recorded")
	broken := &Manifest{Kind: "checkpoint", Parent: es[1].ID(), Regions: []Region{{Name: "kv", Chunks: ghost}}}
	be, err := broken.Encoded()
	if err != nil {
		t.Fatal(err)
	}
	orphan := &Manifest{Kind: "checkpoint", Parent: other[0].ID(), Regions: []Region{{Name: "kv", Chunks: head}}}
	oe, err := orphan.Encoded()
	if err != nil {
		t.Fatal(err)
	}
	var me *MissingChunksError
	for _, c := range []struct {
		name string
		c    Commit
		is   func(error) bool
	}{
		{"conflict", Commit{Chunks: infos, Manifests: es, Ref: &RefMove{Kind: RefSession, Name: "s", Expected: ID{}, Target: es[2].ID()}},
			func(err error) bool { return errors.Is(err, ErrConflict) }},
		{"missing chunk", Commit{Chunks: infos, Manifests: []*Encoded{es[0], es[1], be}, Ref: &RefMove{Kind: RefSession, Name: "s", Expected: hm, Target: be.ID()}},
			func(err error) bool {
				return errors.As(err, &me) && len(me.Missing) == 1 && me.Missing[0] == ghost[0].Digest
			}},
		{"missing parent", Commit{Chunks: infos, Manifests: []*Encoded{es[0], oe}},
			func(err error) bool { return errors.Is(err, ErrMissingParent) }},
		{"target absent", Commit{Chunks: infos, Manifests: es[:1], Ref: &RefMove{Kind: RefSession, Name: "s", Expected: hm, Target: es[2].ID()}},
			func(err error) bool { return errors.Is(err, ErrManifestNotFound) }},
	} {
		err := f.ix.Commit(ctx, c.c)
		if !c.is(err) {
			t.Fatalf("%s: err = %v", c.name, err)
		}
		for _, e := range append(es, be, oe) {
			if has, err := f.ix.HasManifest(e.ID()); has || err != nil {
				t.Fatalf("%s: manifest %s stored (%v)", c.name, e.ID(), err)
			}
		}
		for _, in := range infos {
			if _, err := f.ix.Chunk(in.Digest); !errors.Is(err, ErrChunkNotRecorded) {
				t.Fatalf("%s: chunk recorded (%v)", c.name, err)
			}
		}
		if h, err := f.ix.Ref(RefSession, "s"); err != nil || h != hm {
			t.Fatalf("%s: ref moved to %v (%v)", c.name, h, err)
		}
	}
}
