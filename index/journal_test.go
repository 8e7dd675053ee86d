package index

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/driftstore/driftstore/cas"
)

// journalDir is a data directory with a pack store (which journals) and an index.
type journalDir struct {
	t     *testing.T
	dir   string
	store *cas.Pack
	ix    *Index
}

func openJournalDir(t *testing.T, dir string) *journalDir {
	t.Helper()
	store, err := cas.OpenPack(filepath.Join(dir, "chunks"), cas.PackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ix, err := Open(filepath.Join(dir, "index.db"), store, Options{})
	if err != nil {
		store.Close()
		t.Fatal(err)
	}
	return &journalDir{t: t, dir: dir, store: store, ix: ix}
}

func (d *journalDir) close() {
	d.ix.Close()
	d.store.Close()
}

// commit stores parts as new chunks in one batch and commits a manifest of them (child of
// parent) with the session ref moved from expected to it, through CommitBatch.
func (d *journalDir) commit(parent, expected ID, parts ...string) (ID, error) {
	return d.commitOn(parent, expected, nil, parts...)
}

// commitOn is commit with the manifest naming old (chunks already stored and recorded) before
// parts.
func (d *journalDir) commitOn(parent, expected ID, old []string, parts ...string) (ID, error) {
	ctx := context.Background()
	release := d.ix.HoldGC()
	defer release()
	b := cas.NewBatch(d.store)
	defer b.Discard()
	infos, refs, err := putParts(ctx, b, old, parts)
	if err != nil {
		return ID{}, err
	}
	var id ID
	_, err = d.ix.CommitBatch(ctx, b, func() (Commit, error) {
		e, err := (&Manifest{Kind: "file", Parent: parent, Regions: []Region{{Name: "r", Chunks: refs}}}).Encoded()
		if err != nil {
			return Commit{}, err
		}
		id = e.ID()
		return Commit{Chunks: infos, Manifests: []*Encoded{e}, Ref: &RefMove{Kind: RefSession, Name: "s", Expected: expected, Target: id}}, nil
	})
	return id, err
}

// putParts puts parts in b as new chunks and returns their infos, and the references of old
// (chunks already stored and recorded) followed by those of parts.
func putParts(ctx context.Context, b cas.Batch, old, parts []string) ([]cas.Info, []ChunkRef, error) {
	var infos []cas.Info
	var refs []ChunkRef
	for _, p := range old {
		refs = append(refs, ChunkRef{Digest: cas.Sum([]byte(p)), Length: int64(len(p))})
	}
	for _, p := range parts {
		in, err := b.Put(ctx, []byte(p), cas.HintNone)
		if err != nil {
			return nil, nil, err
		}
		infos = append(infos, in)
		refs = append(refs, ChunkRef{Digest: in.Digest, Length: in.Size})
	}
	return infos, refs, nil
}

// copyTree copies the regular files under src to dst: the bytes on disk at this moment, as a
// crash would leave them (every write here went through the page cache of one machine).
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		if fi.IsDir() {
			return os.MkdirAll(to, 0o755)
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.Create(to)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
}

// crashAfter runs commit (one CommitBatch) and copies the data directory as a crash would leave
// it after the commit returned and before its entry was applied to the index file; then it
// lets the apply go on and closes d. It returns the copy.
func (d *journalDir) crashAfter(commit func() error) string {
	d.t.Helper()
	hold, held := make(chan struct{}), make(chan struct{})
	d.ix.j.beforeApply = func() {
		close(held)
		<-hold
	}
	if err := commit(); err != nil {
		d.t.Fatal(err)
	}
	<-held
	crash := filepath.Join(d.t.TempDir(), "crash")
	copyTree(d.t, d.dir, crash)
	close(hold)
	d.close()
	return crash
}

func (d *journalDir) wantHead(want ID, chunks ...string) {
	d.t.Helper()
	r, err := d.ix.Ref(RefSession, "s")
	if err != nil || r != want {
		d.t.Fatalf("head %v (%v), want %s", r, err, want)
	}
	m, err := d.ix.Manifest(want)
	if err != nil {
		d.t.Fatal(err)
	}
	for i, c := range chunks {
		if _, err := d.ix.Chunk(cas.Sum([]byte(c))); err != nil {
			d.t.Fatalf("chunk %q: %v", c, err)
		}
		got, err := d.store.Get(context.Background(), m.Regions[0].Chunks[i].Digest, nil)
		if err != nil || !bytes.Equal(got, []byte(c)) {
			d.t.Fatalf("chunk %d: %q %v", i, got, err)
		}
	}
	res, err := d.ix.Fsck(context.Background(), FsckOptions{})
	if err != nil || !res.OK() {
		d.t.Fatalf("fsck: %v %v", res.Problems, err)
	}
}

func TestJournaledCommitIsVisibleAtOnce(t *testing.T) {
	d := openJournalDir(t, t.TempDir())
	defer d.close()
	var head ID
	for i, parts := range [][]string{{"a", "b"}, {"a", "b", "c"}, {"d"}} {
		parent := head
		id, err := d.commit(parent, head, parts...)
		if err != nil {
			t.Fatalf("commit %d: %v", i, err)
		}
		head = id
		// No wait: every read sees the commit (waiting for its apply if needed).
		d.wantHead(head, parts...)
	}
	// A conflicting move is refused before anything is journaled, and changes nothing.
	if _, err := d.commit(head, ID{}, "e"); !errors.Is(err, ErrConflict) {
		t.Fatalf("conflicting commit: %v", err)
	}
	d.wantHead(head, "d")
	// A commit naming a parent that does not exist is refused too.
	if _, err := d.commit(ID{1}, head, "f"); !errors.Is(err, ErrMissingParent) {
		t.Fatalf("orphan commit: %v", err)
	}
	d.close()
	d = openJournalDir(t, d.dir)
	d.wantHead(head, "d")
}

// TestJournalReplaysAfterCrash takes the files as a crash would leave them after CommitBatch
// returned and before the index file was brought up to date: the reopened index applies the
// journal entry, once.
func TestJournalReplaysAfterCrash(t *testing.T) {
	dir := t.TempDir()
	d := openJournalDir(t, dir)
	first, err := d.commit(ID{}, ID{}, "one", "two")
	if err != nil {
		t.Fatal(err)
	}
	d.wantHead(first, "one", "two")
	var second ID
	crash := d.crashAfter(func() (err error) {
		second, err = d.commit(first, first, "one", "three")
		return err
	})

	// The copy: the index file lacks the second commit; the pack holds it.
	parts := []string{"one", "three"}
	for round := 0; round < 2; round++ {
		c := openJournalDir(t, crash)
		c.wantHead(second, parts...)
		if _, err := c.ix.Manifest(first); err != nil {
			t.Fatal(err)
		}
		// The next commit follows on, and survives a reopen (round 1 reopens after it).
		if round == 0 {
			third, err := c.commit(second, second, "four")
			if err != nil {
				t.Fatal(err)
			}
			second, parts = third, []string{"four"}
			c.wantHead(second, parts...)
		}
		c.close()
	}

	// A new index file beside the same pack store (the old one deleted) never applies the
	// entries of the old one.
	fresh := filepath.Join(t.TempDir(), "fresh")
	copyTree(t, crash, fresh)
	if err := os.Remove(filepath.Join(fresh, "index.db")); err != nil {
		t.Fatal(err)
	}
	f := openJournalDir(t, fresh)
	defer f.close()
	if _, err := f.ix.Ref(RefSession, "s"); !errors.Is(err, ErrRefNotFound) {
		t.Fatalf("fresh index: ref %v", err)
	}
}

// TestJournalApplyFailureIsSticky: when the index file cannot take an apply, later writes fail
// with a JournalError, and a reopen applies the entry.
func TestJournalApplyFailureIsSticky(t *testing.T) {
	dir := t.TempDir()
	d := openJournalDir(t, dir)
	first, err := d.commit(ID{}, ID{}, "x")
	if err != nil {
		t.Fatal(err)
	}
	d.wantHead(first, "x") // applied: the hook below is for the next commit
	crash := filepath.Join(t.TempDir(), "crash")
	d.ix.j.beforeApply = func() {
		copyTree(t, dir, crash)
		d.ix.db.Close() // the apply's transaction fails
	}
	if _, err := d.commit(first, first, "y"); err != nil {
		t.Fatal(err)
	}
	var je *JournalError
	if _, err := d.commit(first, first, "z"); !errors.As(err, &je) || je.Seq == 0 {
		t.Fatalf("commit after a failed apply: %v", err)
	}
	d.store.Close()
	c := openJournalDir(t, crash)
	defer c.close()
	r, err := c.ix.Ref(RefSession, "s")
	if err != nil || r == first {
		t.Fatalf("after reopen: head %v %v, want the second commit", r, err)
	}
}

func TestJournalEntryRoundTrip(t *testing.T) {
	ix := newFixture(t).ix
	e1, err := (&Manifest{Kind: "file", Regions: []Region{{Name: "r", Chunks: []ChunkRef{{Digest: cas.Sum([]byte("a")), Length: 1}}}}}).Encoded()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(0, 1234567890123)
	c := Commit{
		Chunks:    []cas.Info{{Digest: cas.Sum([]byte("a")), Size: 1, StoredSize: 1, Codec: cas.CodecRaw, ModTime: now}},
		Manifests: []*Encoded{e1},
		Ref:       &RefMove{Kind: RefTag, Name: "t.1", Target: e1.ID()},
	}
	p, err := ix.prepareAt(c, now)
	if err != nil {
		t.Fatal(err)
	}
	epoch := [16]byte{1, 2, 3}
	b := encodeJournal(epoch, 7, p.now, p.c.Chunks, p.forms(), p.c.Ref)
	e, err := decodeJournal(b)
	if err != nil || e.epoch != epoch || e.seq != 7 || !e.now.Equal(now) {
		t.Fatalf("decode: %v %+v", err, e)
	}
	got, err := ix.resolve(e)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Chunks) != 1 || got.Chunks[0].Digest != c.Chunks[0].Digest || !got.Chunks[0].ModTime.Equal(now) ||
		len(got.Manifests) != 1 || got.Manifests[0].ID() != e1.ID() || *got.Ref != *c.Ref {
		t.Fatalf("decoded %+v", got)
	}
	// Every cut is refused, never a panic.
	for i := range b {
		if _, err := decodeJournal(b[:i]); err == nil {
			t.Fatalf("prefix of %d bytes decoded", i)
		}
	}
}

// TestJournalCarriesDeltas: a checkpoint-like chain journals its manifests as deltas (the
// entry does not grow with the manifest), and a replay rebuilds them.
func TestJournalCarriesDeltas(t *testing.T) {
	dir := t.TempDir()
	d := openJournalDir(t, dir)
	var refs []string
	for i := 0; i < 400; i++ {
		refs = append(refs, fmt.Sprintf("block %d", i))
	}
	head, err := d.commit(ID{}, ID{}, refs...)
	if err != nil {
		t.Fatal(err)
	}
	d.wantHead(head, refs...)
	var next ID
	crash := d.crashAfter(func() (err error) {
		next, err = d.commitOn(head, head, refs, "block 400")
		return err
	})
	refs = append(refs, "block 400")
	c := openJournalDir(t, crash)
	defer c.close()
	c.wantHead(next, refs...)
	// The entry held a delta: far smaller than the manifest.
	var sizes []int
	if err := c.store.JournalEntries(func(b []byte) error {
		sizes = append(sizes, len(b))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	full, err := c.ix.ManifestBytes(next)
	if err != nil || len(sizes) != 2 || sizes[1] > len(full)/4 {
		t.Fatalf("entries of %v bytes for a manifest of %d (%v)", sizes, len(full), err)
	}
}

func FuzzJournalEntry(f *testing.F) {
	st, err := cas.OpenLocal(filepath.Join(f.TempDir(), "chunks"), cas.LocalOptions{NoSync: true})
	if err != nil {
		f.Fatal(err)
	}
	ix, err := Open(filepath.Join(f.TempDir(), "index.db"), st, Options{NoSync: true})
	if err != nil {
		f.Fatal(err)
	}
	defer ix.Close()
	e1, _ := (&Manifest{Kind: "file", Regions: []Region{{Name: "r"}}}).Encoded()
	for _, c := range []Commit{
		{Manifests: []*Encoded{e1}, Ref: &RefMove{Kind: RefSession, Name: "s", Target: e1.ID()}},
		{Chunks: []cas.Info{{Digest: cas.Digest{1}, Size: 3, StoredSize: 2, Codec: cas.CodecZstd}}},
	} {
		p, err := ix.prepareAt(c, time.Unix(5, 0))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(encodeJournal([16]byte{9}, 1, p.now, p.c.Chunks, p.forms(), p.c.Ref))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decodeJournal(b)
		if err != nil {
			return
		}
		if _, err := ix.resolve(e); err != nil {
			return
		}
	})
}

// TestJournalCheckRefusesWhatTheTransactionWould: the read-only check of a journaled commit
// refuses what the transaction itself refuses (index_test and commit_test hold those cases
// for Commit), with the same errors, and changes nothing.
func TestJournalCheckRefusesWhatTheTransactionWould(t *testing.T) {
	ctx := context.Background()
	d := openJournalDir(t, t.TempDir())
	defer d.close()
	head, err := d.commit(ID{}, ID{}, "p", "q")
	if err != nil {
		t.Fatal(err)
	}
	ghost := ChunkRef{Digest: cas.Sum([]byte("never stored")), Length: 12}
	pRef := ChunkRef{Digest: cas.Sum([]byte("p")), Length: 1}
	cases := []struct {
		name string
		m    *Manifest
		ref  *RefMove
		want error
	}{
		{"missing chunk", &Manifest{Kind: "file", Parent: head, Regions: []Region{{Name: "r", Chunks: []ChunkRef{pRef, ghost}}}}, nil, ErrMissingChunks},
		{"length mismatch", &Manifest{Kind: "file", Regions: []Region{{Name: "r", Chunks: []ChunkRef{{Digest: pRef.Digest, Length: 5}}}}}, nil, nil},
		{"missing parent", &Manifest{Kind: "file", Parent: ID{7}, Regions: []Region{{Name: "r", Chunks: []ChunkRef{pRef}}}}, nil, ErrMissingParent},
		{"conflict", &Manifest{Kind: "file", Parent: head, Regions: []Region{{Name: "r", Chunks: []ChunkRef{pRef}}}}, &RefMove{Kind: RefSession, Name: "s", Expected: ID{9}}, ErrConflict},
		{"target not found", &Manifest{Kind: "file", Regions: []Region{{Name: "r", Chunks: []ChunkRef{pRef}}}}, &RefMove{Kind: RefTag, Name: "t", Target: ID{3}}, ErrManifestNotFound},
	}
	for _, c := range cases {
		e, err := c.m.Encoded()
		if err != nil {
			t.Fatal(err)
		}
		commit := Commit{Manifests: []*Encoded{e}, Ref: c.ref}
		if c.ref != nil && c.ref.Target.IsZero() {
			c.ref.Target = e.ID()
		}
		b := cas.NewBatch(d.store)
		_, jerr := d.ix.CommitBatch(ctx, b, func() (Commit, error) { return commit, nil })
		switch {
		case jerr == nil:
			t.Fatalf("%s: journaled commit accepted", c.name)
		case c.want != nil && !errors.Is(jerr, c.want):
			t.Fatalf("%s: %v, want %v", c.name, jerr, c.want)
		case c.name == "length mismatch" && !errors.As(jerr, new(*LengthMismatchError)):
			t.Fatalf("%s: %v", c.name, jerr)
		}
	}
	d.wantHead(head, "p", "q")
}

// TestJournalSkipsUnacknowledgedEntries: an entry whose commit failed (its barrier did not
// return) can still reach the disk without its chunks; the reopened index skips it, and the
// entries after it apply.
func TestJournalSkipsUnacknowledgedEntries(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := openJournalDir(t, dir)
	first, err := d.commit(ID{}, ID{}, "a")
	if err != nil {
		t.Fatal(err)
	}
	d.wantHead(first, "a")
	// An entry that names a chunk no store holds, numbered as the next commit would be, written
	// as a failed barrier may leave it (checked by nobody, then durable).
	ghost := ChunkRef{Digest: cas.Sum([]byte("lost with its barrier")), Length: 21}
	e, err := (&Manifest{Kind: "file", Parent: first, Regions: []Region{{Name: "r", Chunks: []ChunkRef{ghost}}}}).Encoded()
	if err != nil {
		t.Fatal(err)
	}
	p, err := d.ix.prepare(Commit{Chunks: []cas.Info{{Digest: ghost.Digest, Size: 21, StoredSize: 21, Codec: cas.CodecRaw}}, Manifests: []*Encoded{e},
		Ref: &RefMove{Kind: RefSession, Name: "s", Expected: first, Target: e.ID()}})
	if err != nil {
		t.Fatal(err)
	}
	d.ix.j.mu.Lock()
	d.ix.j.seq++
	payload := encodeJournal(d.ix.j.epoch, d.ix.j.seq, p.now, p.c.Chunks, p.forms(), p.c.Ref)
	d.ix.j.mu.Unlock()
	b := cas.NewBatch(d.store)
	if _, err := b.(cas.JournalBatch).CommitJournal(ctx, payload); err != nil {
		t.Fatal(err)
	}
	// The index file has applied neither entry when the crash comes.
	var second ID
	crash := d.crashAfter(func() (err error) {
		second, err = d.commit(first, first, "b")
		return err
	})
	c := openJournalDir(t, crash)
	defer c.close()
	c.wantHead(second, "b")
	if _, err := c.ix.Manifest(e.ID()); !errors.Is(err, ErrManifestNotFound) {
		t.Fatalf("the unacknowledged entry's manifest: %v", err)
	}
}

// commitNext is commitOn with the manifest handed over unencoded (Commit.Next) and the ref
// moved to it (ToNext): a kept form goes into the journal when the parent is recent.
func (d *journalDir) commitNext(parent, expected ID, old []string, parts ...string) (ID, error) {
	ctx := context.Background()
	release := d.ix.HoldGC()
	defer release()
	b := cas.NewBatch(d.store)
	defer b.Discard()
	infos, refs, err := putParts(ctx, b, old, parts)
	if err != nil {
		return ID{}, err
	}
	m := &Manifest{Kind: "file", Parent: parent, Regions: []Region{{Name: "r", Chunks: refs}},
		Meta: map[string]Value{"turn": Uint64(uint64(len(refs)))}}
	want, err := (&Manifest{Kind: m.Kind, Parent: parent, Regions: m.Regions, Meta: m.Meta}).Encoded()
	if err != nil {
		return ID{}, err
	}
	next := Defer(m)
	if _, err := d.ix.CommitBatch(ctx, b, func() (Commit, error) {
		return Commit{Chunks: infos, Next: next, Ref: &RefMove{Kind: RefSession, Name: "s", Expected: expected, ToNext: true}}, nil
	}); err != nil {
		return ID{}, err
	}
	if e := next.Encoded(); e == nil || e.ID() != want.ID() || !bytes.Equal(e.Bytes(), want.Bytes()) {
		return ID{}, fmt.Errorf("committed %v, want the encoding of %s", e, want.ID())
	}
	return want.ID(), nil
}

// journalForms returns the forms of the manifests of every journal entry in d's store, in the
// store's order.
func (d *journalDir) journalForms() [][][]byte {
	d.t.Helper()
	var forms [][][]byte
	if err := d.store.JournalEntries(func(b []byte) error {
		e, err := decodeJournal(b)
		if err != nil {
			return err
		}
		var fs [][]byte
		for _, f := range e.forms {
			fs = append(fs, bytes.Clone(f))
		}
		forms = append(forms, fs)
		return nil
	}); err != nil {
		d.t.Fatal(err)
	}
	return forms
}

// TestJournalCarriesKeptForms: a manifest handed over unencoded, whose parent the index
// committed recently, is journaled in kept form (its new references only), and a replay after
// a crash rebuilds it (here on a base the index stores as a delta) and moves the ref to it; one
// whose parent is not recent goes the usual way.
func TestJournalCarriesKeptForms(t *testing.T) {
	dir := t.TempDir()
	d := openJournalDir(t, dir)
	var refs []string
	for i := 0; i < 400; i++ {
		refs = append(refs, fmt.Sprintf("block %d", i))
	}
	head, err := d.commitNext(ID{}, ID{}, nil, refs...) // no parent: encoded first
	if err != nil {
		t.Fatal(err)
	}
	d.wantHead(head, refs...)
	second, err := d.commitNext(head, head, refs, "block 400")
	if err != nil {
		t.Fatal(err)
	}
	refs = append(refs, "block 400")
	d.wantHead(second, refs...)
	var third ID
	crash := d.crashAfter(func() (err error) {
		third, err = d.commitNext(second, second, refs, "block 401")
		return err
	})
	refs = append(refs, "block 401")
	c := openJournalDir(t, crash)
	defer c.close()
	c.wantHead(third, refs...)
	forms := c.journalForms()
	if len(forms) != 3 {
		t.Fatalf("%d journal entries, want 3", len(forms))
	}
	for i, base := range []ID{{}, head, second} {
		f := forms[i][0]
		got, kept := keptBase(f)
		if kept != (i > 0) || got != base || (kept && len(f) > 200) {
			t.Fatalf("entry %d: a form of %d bytes starting %q: want the kept form on %s", i, len(f), f[:4], base)
		}
	}
	// The replayed index goes on: a commit on a parent it did not commit itself.
	fourth, err := c.commitNext(third, third, refs, "block 402")
	if err != nil {
		t.Fatal(err)
	}
	c.wantHead(fourth, append(refs, "block 402")...)
}

// TestJournalKeptRefused: a kept-form commit refused by the check that runs beside its barrier
// fails with the check's error, and its entry, durable, is never applied: not by this index,
// nor by one reopened on the same files after what the check missed was supplied directly (the
// entry's number is recorded as applied); the next commit goes through.
func TestJournalKeptRefused(t *testing.T) {
	for _, tc := range []struct {
		name     string
		expected func(head ID) ID
		old      []string
		want     error
	}{
		{"ref moved meanwhile", func(ID) ID { return ID{7} }, nil, ErrConflict},
		{"chunk missing", func(head ID) ID { return head }, []string{"stored later"}, ErrMissingChunks},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			d := openJournalDir(t, dir)
			head, err := d.commitNext(ID{}, ID{}, nil, "a", "b")
			if err != nil {
				t.Fatal(err)
			}
			_, err = d.commitNext(head, tc.expected(head), append([]string{"a", "b"}, tc.old...), "c")
			if !errors.Is(err, tc.want) {
				t.Fatalf("refused commit: %v, want %v", err, tc.want)
			}
			d.wantHead(head, "a", "b")
			// What the check missed, supplied directly: a replay's check would now pass.
			in, err := d.store.Put(ctx, []byte("stored later"), cas.HintNone)
			if err != nil {
				t.Fatal(err)
			}
			if err := d.ix.RecordChunks(ctx, []cas.Info{in}); err != nil {
				t.Fatal(err)
			}
			crash := filepath.Join(t.TempDir(), "crash")
			copyTree(t, dir, crash)
			next, err := d.commitNext(head, head, []string{"a", "b"}, "d")
			if err != nil {
				t.Fatal(err)
			}
			d.wantHead(next, "a", "b", "d")
			d.close()
			c := openJournalDir(t, crash)
			defer c.close()
			if forms := c.journalForms(); len(forms) != 2 || !bytes.HasPrefix(forms[1][0], []byte(keptMagic)) {
				t.Fatalf("%d journal entries: want the refused one durable, in kept form", len(forms))
			}
			c.wantHead(head, "a", "b")
			if _, err := c.ix.Chunk(cas.Sum([]byte("c"))); !errors.Is(err, ErrChunkNotRecorded) {
				t.Fatalf("the refused commit's chunk is recorded: %v", err)
			}
		})
	}
}
