package index

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/driftstore/driftstore/cas"
)

// # The journal: one durability barrier per commit
//
// A bbolt commit costs two fdatasyncs of the index file (its pages, then its meta page), on top
// of the barrier that made the chunks durable first. When the chunk store can carry journal
// entries with its batches (cas.JournalBatch: a Pack), CommitBatch spends one barrier instead
// of three: the Commit, encoded as a journal entry, is written after its chunks and made
// durable by the same sync, and the index file is brought up to date afterwards, in the
// background, by an ordinary (synced) bbolt transaction that also records the entry's
// sequence number as applied. The pack files are the index's write-ahead log:
//
//   - A commit is checked against the index before its entry is written (the transaction's
//     checks without its writes, in a read transaction: prepared.check), with every earlier
//     journaled commit applied and no other writer in between (j.mu), so the later apply
//     cannot fail for a reason the check could see.
//   - Every read of the index waits for the commit being applied, if any: within the process, a
//     journaled commit is visible to everyone as soon as CommitBatch returns.
//   - Open (for writing) applies the entries of this index's epoch whose sequence numbers are
//     above the applied one, in order: a crash after the barrier loses nothing.
//   - An entry stays pinned in the store (never compacted away) until its apply is durable.
//
// The epoch is a random number kept in the index file: entries of another index file (one
// deleted and made anew beside the same store) are never applied to this one.

// Meta keys of the journal.
var (
	keyJournalEpoch   = []byte("journal.epoch")   // 16 random bytes
	keyJournalApplied = []byte("journal.applied") // uvarint: the last sequence number applied
)

// journalMagic starts every journal entry's payload (version 1).
const journalMagic = "DSJ\x01"

// journal is the Index's journal state.
type journal struct {
	// mu is held by a journaled commit from its check to the hand-off of its apply, and by
	// every direct writer (update) around its transaction: no write slips between a commit's
	// check and its apply.
	mu    sync.Mutex
	epoch [16]byte
	seq   uint64 // the last sequence number written or applied; guarded by mu

	pendMu  sync.Mutex
	pending chan struct{} // closed when the commit being applied is; nil when none
	err     error         // sticky: an apply failed; every later write fails with it

	beforeApply func() // tests: runs in the apply goroutine before the transaction
}

// JournalError is returned by writes after a journaled commit, durable in the store, could not be
// applied to the index file; reopening the index applies it again.
type JournalError struct {
	Seq uint64
	Err error
}

func (e *JournalError) Error() string {
	return fmt.Sprintf("index: journaled commit %d could not be applied (reopen the data directory to apply it again): %v", e.Seq, e.Err)
}

func (e *JournalError) Unwrap() error { return e.Err }

// waitApplied waits for the journaled commit being applied, if any, and returns the sticky
// error of a failed apply.
func (ix *Index) waitApplied() error {
	ix.j.pendMu.Lock()
	ch := ix.j.pending
	ix.j.pendMu.Unlock()
	if ch != nil {
		<-ch
	}
	ix.j.pendMu.Lock()
	defer ix.j.pendMu.Unlock()
	return ix.j.err
}

// view runs a read transaction once the journaled commit being applied, if any, is applied.
func (ix *Index) view(fn func(tx *bolt.Tx) error) error {
	ix.waitApplied()
	return ix.db.View(fn)
}

// CommitBatch makes batch's chunks durable and commits c (see Commit), which build returns; the
// chunks must be in c.Chunks (or recorded) as Commit requires, and batch must come from this
// index's store. build runs once, while the chunks' barrier runs where that is possible; its
// error (or the barrier's) fails the call with nothing committed. The caller holds HoldGC from
// its Puts until CommitBatch returns.
//
// When the store journals (cas.JournalStore, with cas.JournalBatch batches), the commit is
// checked, then written as a journal entry made durable with the chunks by one barrier, and
// applied to the index file in the background (see the journal above); a batch that holds its
// chunks in memory (cas.Retainer's Flush) writes them while build runs. A Next manifest whose
// parent this Index committed recently is written to the entry before it is encoded, and
// encoded, hashed and checked while the barrier runs (see Deferred). When CommitBatch
// returns nil the commit is durable and visible to every reader of this Index, which waits for
// the apply if it has not finished. Otherwise it is batch.Commit, then Commit: three barriers.
// Errors are Commit's, or the batch's; after an error nothing of c is committed (the chunks may
// be stored, as garbage). indexTime is how long the call waited for an index transaction: the
// commit's, without the journal; 0 with it.
func (ix *Index) CommitBatch(ctx context.Context, batch cas.Batch, build func() (Commit, error)) (indexTime time.Duration, err error) {
	jb, ok := batch.(cas.JournalBatch)
	if _, js := ix.store.(cas.JournalStore); !ok || !js {
		synced := make(chan error, 1)
		go func() { synced <- batch.Commit(ctx) }()
		c, err := build()
		if err == nil {
			c, err = c.settled() // Next encoded while the barrier runs
		}
		if serr := <-synced; serr != nil {
			return 0, serr
		}
		if err != nil {
			return 0, err
		}
		t0 := time.Now()
		err = ix.Commit(ctx, c)
		return time.Since(t0), err
	}
	// The commit is built (and a kept form made, see keptForm) on another goroutine while this
	// one writes the batch's chunks held in memory and starts their writeback: the barrier then
	// has less left to wait for.
	type built struct {
		c    Commit
		kept []byte
		err  error
	}
	ready := make(chan built, 1)
	go func() {
		c, err := build()
		var kept []byte
		if err == nil {
			kept, err = ix.keptForm(c)
		}
		ready <- built{c, kept, err}
	}()
	var ferr error
	if f, ok := batch.(flusher); ok {
		ferr = f.Flush()
	}
	b := <-ready
	if b.err == nil && ferr != nil {
		b.err = fmt.Errorf("write the batch's chunks: %w", ferr)
	}
	if b.err != nil {
		batch.Discard()
		return 0, b.err
	}
	return 0, ix.commitJournaled(ctx, batch, jb, b.c, b.kept)
}

// flusher is a batch that can write the chunks it holds before its commit (cas.Retainer).
type flusher interface{ Flush() error }

// keptForm returns the kept form of c's Next manifest when its parent is one this Index
// committed recently (its regions at hand, once the commit being applied, if any, is) and Next
// is c's only manifest; else nil.
func (ix *Index) keptForm(c Commit) ([]byte, error) {
	if err := c.validNext(); err != nil || c.Next == nil || len(c.Manifests) > 0 || c.Next.m.Parent.IsZero() {
		return nil, err
	}
	ix.waitApplied() // its error fails the commit later, under j.mu
	parent, ok := ix.recentManifest(c.Next.m.Parent)
	if !ok {
		return nil, nil
	}
	return encodeKept(c.Next.m, parent.id, parent.regions)
}

// commitJournaled is CommitBatch's journal path, the batch's chunks written.
//
// A commit is checked, then written as a journal entry and made durable with its chunks by
// one barrier, then handed to the background apply. A commit whose Next manifest's parent this
// Index committed recently goes another way: its entry carries Next in kept form (kept, see
// kept.go), written before Next is encoded, and Next is encoded, planned and checked on another
// goroutine while the barrier runs. A commit refused then has a durable entry: its number is
// recorded as applied (skipJournaled), so no reopen applies it.
func (ix *Index) commitJournaled(ctx context.Context, batch cas.Batch, jb cas.JournalBatch, c Commit, kept []byte) error {
	discard := func(err error) error {
		batch.Discard()
		return err
	}
	if err := ctxErr(ctx); err != nil {
		return discard(err)
	}
	if err := c.validNext(); err != nil {
		return discard(err)
	}
	ix.j.mu.Lock()
	defer ix.j.mu.Unlock()
	if err := ix.waitApplied(); err != nil {
		return discard(err)
	}
	if ix.db.IsReadOnly() {
		return discard(fmt.Errorf("%w: %s", ErrReadOnly, ix.path))
	}
	now := ix.now()
	type checked struct {
		p   *prepared
		err error
	}
	check := func() checked {
		sc, err := c.settled()
		if err != nil {
			return checked{err: err}
		}
		p, err := ix.prepareAt(sc, now)
		if err == nil {
			err = ix.db.View(p.check)
		}
		return checked{p, err}
	}
	var r checked
	if kept == nil {
		if r = check(); r.err != nil {
			return discard(r.err)
		}
	}
	var beside chan checked // the kept form's check, beside the barrier
	if kept != nil {
		beside = make(chan checked, 1)
		go func() { beside <- check() }()
	}
	// The number is spent even when the commit fails: its entry may still reach the disk (see
	// cas.JournalBatch), and a later entry must never share its number.
	ix.j.seq++
	seq := ix.j.seq
	var entry []byte
	if kept == nil {
		entry = encodeJournal(ix.j.epoch, seq, now, r.p.c.Chunks, r.p.forms(), r.p.c.Ref)
	} else {
		entry = encodeJournal(ix.j.epoch, seq, now, c.Chunks, [][]byte{kept}, c.Ref)
	}
	release, err := jb.CommitJournal(ctx, entry)
	if beside != nil {
		r = <-beside
	}
	if err != nil {
		return err
	}
	if r.err != nil {
		return ix.skipJournaled(seq, release, r.err)
	}
	ix.applyLater(r.p, seq, release)
	return nil
}

// applyLater applies prepared commit p, journaled as seq, in the background (see the journal
// above); release unpins its entry once the apply is durable.
func (ix *Index) applyLater(p *prepared, seq uint64, release func()) {
	done := make(chan struct{})
	ix.j.pendMu.Lock()
	ix.j.pending = done
	ix.j.pendMu.Unlock()
	go func() {
		if h := ix.j.beforeApply; h != nil {
			h()
		}
		err := ix.apply(p, seq)
		if err == nil {
			release()
		}
		ix.j.pendMu.Lock()
		if err != nil && ix.j.err == nil {
			ix.j.err = &JournalError{Seq: seq, Err: err}
		}
		ix.j.pending = nil
		ix.j.pendMu.Unlock()
		close(done)
	}()
}

// skipJournaled records entry seq, durable but refused by its check (cause), as applied, so that
// no reopen applies it, and returns cause. When that fails the journal's error is made sticky:
// no write reaches the index file before a reopen, whose replay then finds the index as the
// check did and refuses the entry the same way. Called with j.mu held.
func (ix *Index) skipJournaled(seq uint64, release func(), cause error) error {
	err := ix.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keyJournalApplied, binary.AppendUvarint(nil, seq))
	})
	if err != nil {
		ix.j.pendMu.Lock()
		if ix.j.err == nil {
			ix.j.err = &JournalError{Seq: seq, Err: fmt.Errorf("record the refused entry as skipped: %w", err)}
		}
		ix.j.pendMu.Unlock()
		return fmt.Errorf("%w (its journal entry %d is durable; recording it as skipped failed: %v)", cause, seq, err)
	}
	release()
	return cause
}

// apply commits prepared commit p, journaled as seq, to the index file (synced) and records seq as
// applied in the same transaction.
func (ix *Index) apply(p *prepared, seq uint64) error {
	err := ix.db.Update(func(tx *bolt.Tx) error {
		if err := p.tx(tx); err != nil {
			return err
		}
		return tx.Bucket(bucketMeta).Put(keyJournalApplied, binary.AppendUvarint(nil, seq))
	})
	if err != nil {
		return err
	}
	p.remember()
	return nil
}

// initJournal reads (or makes, when writable) the journal's epoch and applied sequence number,
// and, when writable and the store journals, applies the entries of this epoch not yet
// applied, in order. Called by Open.
func (ix *Index) initJournal(readOnly bool) error {
	var applied uint64
	haveEpoch := false
	err := ix.db.View(func(tx *bolt.Tx) error {
		mb := tx.Bucket(bucketMeta)
		if v := mb.Get(keyJournalEpoch); len(v) == len(ix.j.epoch) {
			copy(ix.j.epoch[:], v)
			haveEpoch = true
		}
		if v := mb.Get(keyJournalApplied); v != nil {
			n, k := binary.Uvarint(v)
			if k <= 0 || k != len(v) {
				return fmt.Errorf("%w: journal.applied entry %x", ErrCorruptIndex, v)
			}
			applied = n
		}
		return nil
	})
	if err != nil || readOnly {
		return err
	}
	js, ok := ix.store.(cas.JournalStore)
	if !haveEpoch {
		// A new index file (or one from before the journal): a new epoch, so that entries
		// written for another index file are never applied to this one.
		if _, err := rand.Read(ix.j.epoch[:]); err != nil {
			return fmt.Errorf("journal epoch: %w", err)
		}
		if err := ix.db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketMeta).Put(keyJournalEpoch, ix.j.epoch[:])
		}); err != nil {
			return err
		}
	}
	ix.j.seq = applied
	if !ok || !haveEpoch {
		return nil
	}
	var todo []*journalEntry
	werr := js.JournalEntries(func(payload []byte) error {
		e, err := decodeJournal(payload)
		if err != nil {
			// An entry that passed its digest check but does not decode was written by a
			// newer driftstore or is damaged beyond its checksum: not ours to apply.
			return nil
		}
		if e.epoch != ix.j.epoch || e.seq <= applied {
			return nil
		}
		e.forms = slices.Clone(e.forms) // the payload is only valid during the call
		for i := range e.forms {
			e.forms[i] = bytes.Clone(e.forms[i])
		}
		todo = append(todo, e)
		return nil
	})
	if werr != nil && !errors.As(werr, new(*cas.CorruptError)) {
		return fmt.Errorf("read the journal: %w", werr)
	}
	slices.SortFunc(todo, func(a, b *journalEntry) int {
		switch {
		case a.seq < b.seq:
			return -1
		case a.seq > b.seq:
			return 1
		}
		return 0
	})
	for _, e := range todo {
		// In order; a number missing is a commit that failed before its entry was durable.
		if e.seq <= ix.j.seq {
			continue // the same entry twice (a copy a crash left)
		}
		c, err := ix.resolve(e)
		if err == nil {
			err = ix.inStore(c.Chunks)
		}
		var p *prepared
		if err == nil {
			p, err = ix.prepareAt(c, e.now)
		}
		if err == nil {
			err = ix.apply(p, e.seq)
		}
		if err != nil && refused(err) {
			// Applied in order, an acknowledged entry finds the index as its check did, its
			// chunks durable before it: one refused was never acknowledged (its barrier failed
			// and its bytes reached the disk anyway, without all of its chunks). Skip it.
			err = nil
		}
		if err != nil {
			return fmt.Errorf("apply journal entry %d: %w", e.seq, err)
		}
		ix.j.seq = e.seq
	}
	return nil
}

// inStore checks that the store holds every chunk of infos (a *MissingChunksError otherwise):
// an entry's chunks were made durable before the entry, unless its barrier failed.
func (ix *Index) inStore(infos []cas.Info) error {
	var missing []cas.Digest
	for _, in := range infos {
		if _, err := ix.store.Stat(context.Background(), in.Digest); err != nil {
			if !errors.Is(err, cas.ErrNotFound) {
				return err
			}
			missing = append(missing, in.Digest)
		}
	}
	if len(missing) > 0 {
		return &MissingChunksError{Missing: missing}
	}
	return nil
}

// refused reports whether err is a commit's refusal (what a check finds), not a failure of the
// index file.
func refused(err error) bool {
	var lm *LengthMismatchError
	return errors.Is(err, ErrMissingChunks) || errors.Is(err, ErrMissingParent) || errors.Is(err, ErrConflict) ||
		errors.Is(err, ErrManifestNotFound) || errors.As(err, &lm) ||
		// A kept form's manifest is checked against the encoding's rules only after its entry is
		// written (see commitJournaled): one that breaks them was refused, never acknowledged.
		errors.Is(err, ErrBadManifest)
}

// journalEntry is a decoded journal entry: the commit with its manifests still in stored form
// (full, or a delta against a base; see delta.go), which resolve turns into a Commit.
type journalEntry struct {
	epoch     [16]byte
	seq       uint64
	now       time.Time
	c         Commit   // Manifests nil
	forms     [][]byte // the manifests' forms, in order
	refToLast bool     // c.Ref's target is the last manifest's ID
}

// forms returns the stored forms of p's manifests, as the transaction will store them: a
// delta against the base its plan found, else the canonical bytes.
func (p *prepared) forms() [][]byte {
	forms := make([][]byte, len(p.c.Manifests))
	for i, e := range p.c.Manifests {
		forms[i] = e.data
		if d := p.plans[i].delta; d != nil {
			forms[i] = d
		}
	}
	return forms
}

// encodeJournal encodes a journal entry: magic, epoch, sequence number, the commit's time, its
// chunk infos, its manifests' forms (a delta against a base, a kept form, or the canonical
// bytes: an entry grows with what the checkpoint adds, not with its context) and its ref move.
// A move to the next manifest (ToNext) is written as one to the entry's last manifest.
//
//	"DSJ\x01" epoch(16) uvarint seq  varint now(Unix ns)
//	uvarint n, n × (digest(32) uvarint size uvarint stored byte codec varint modtime)
//	uvarint m, m × (uvarint len, form)
//	byte ref (0 none, 1 set, 2 set to the last manifest)
//	     [byte kind, uvarint len, name, expected(32), (ref 1) target(32)]
func encodeJournal(epoch [16]byte, seq uint64, now time.Time, chunks []cas.Info, forms [][]byte, ref *RefMove) []byte {
	n := len(journalMagic) + 16 + 3*binary.MaxVarintLen64 + len(chunks)*(32+4*binary.MaxVarintLen64) + 1
	for _, f := range forms {
		n += binary.MaxVarintLen64 + len(f)
	}
	if ref != nil {
		n += 1 + binary.MaxVarintLen64 + len(ref.Name) + 64
	}
	b := make([]byte, 0, n)
	b = append(b, journalMagic...)
	b = append(b, epoch[:]...)
	b = binary.AppendUvarint(b, seq)
	b = binary.AppendVarint(b, now.UnixNano())
	b = binary.AppendUvarint(b, uint64(len(chunks)))
	for _, in := range chunks {
		b = append(b, in.Digest[:]...)
		b = binary.AppendUvarint(b, uint64(in.Size))
		b = binary.AppendUvarint(b, uint64(in.StoredSize))
		b = append(b, byte(in.Codec))
		b = binary.AppendVarint(b, in.ModTime.UnixNano())
	}
	b = binary.AppendUvarint(b, uint64(len(forms)))
	for _, f := range forms {
		b = binary.AppendUvarint(b, uint64(len(f)))
		b = append(b, f...)
	}
	if ref == nil {
		return append(b, 0)
	}
	kind := byte(1)
	if ref.ToNext {
		kind = 2
	}
	b = append(b, kind, byte(ref.Kind))
	b = binary.AppendUvarint(b, uint64(len(ref.Name)))
	b = append(b, ref.Name...)
	b = append(b, ref.Expected[:]...)
	if ref.ToNext {
		return b
	}
	return append(b, ref.Target[:]...)
}

// decodeJournal decodes a journal entry strictly, but for its manifests, left in stored form
// (aliasing b). It never panics on any input.
func decodeJournal(b []byte) (*journalEntry, error) {
	e := &journalEntry{}
	if !bytes.HasPrefix(b, []byte(journalMagic)) {
		return nil, fmt.Errorf("journal entry: bad magic")
	}
	r := journalReader{b: b[len(journalMagic):]}
	copy(e.epoch[:], r.bytes(16))
	e.seq = r.uvarint()
	e.now = time.Unix(0, r.varint())
	nc := r.count(32 + 4)
	for range nc {
		var in cas.Info
		in.Digest = cas.Digest(r.bytes(32))
		in.Size = int64(r.uvarint())
		in.StoredSize = int64(r.uvarint())
		in.Codec = cas.Codec(r.byte())
		in.ModTime = time.Unix(0, r.varint())
		e.c.Chunks = append(e.c.Chunks, in)
	}
	nm := r.count(1)
	for range nm {
		f := r.bytes(int(r.count(1)))
		if r.err != nil {
			break
		}
		e.forms = append(e.forms, f)
	}
	switch ref := r.byte(); ref {
	case 0:
	case 1, 2:
		mv := &RefMove{Kind: RefKind(r.byte())}
		mv.Name = string(r.bytes(int(r.count(1))))
		mv.Expected = ID(r.bytes(32))
		if ref == 1 {
			mv.Target = ID(r.bytes(32))
		} else if len(e.forms) == 0 {
			r.fail()
		}
		e.c.Ref, e.refToLast = mv, ref == 2
	default:
		r.fail()
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail()
	}
	if r.err == nil {
		r.err = validInfos(e.c.Chunks)
	}
	if r.err != nil {
		return nil, fmt.Errorf("journal entry: %w", r.err)
	}
	return e, nil
}

// resolve rebuilds e's manifests from their stored forms (a delta's base: an earlier manifest
// of the entry, or one in the index, which replays in order) and returns its Commit.
func (ix *Index) resolve(e *journalEntry) (Commit, error) {
	c := e.c
	err := ix.db.View(func(tx *bolt.Tx) error {
		mb := tx.Bucket(bucketManifests)
		for i, f := range e.forms {
			if base, ok := keptBase(f); ok {
				m, err := ix.resolveKept(mb, c.Manifests, base, f)
				if err != nil {
					return fmt.Errorf("journal entry %d: manifest %d: %w", e.seq, i, err)
				}
				c.Manifests = append(c.Manifests, m)
				continue
			}
			data := f
			if bytes.HasPrefix(f, []byte(deltaMagic)) && len(f) >= len(deltaMagic)+32 {
				base := ID(f[len(deltaMagic) : len(deltaMagic)+32])
				var err error
				if j := slices.IndexFunc(c.Manifests, func(m *Encoded) bool { return m.id == base }); j >= 0 {
					data, err = applyDelta(c.Manifests[j].data, f[len(deltaMagic)+32:])
				} else {
					data, err = storedBytes(mb, f)
				}
				if err != nil {
					return fmt.Errorf("journal entry %d: manifest %d: %w", e.seq, i, err)
				}
			}
			m, err := DecodeEncoded(bytes.Clone(data))
			if err != nil {
				return fmt.Errorf("journal entry %d: manifest %d: %w", e.seq, i, err)
			}
			c.Manifests = append(c.Manifests, m)
		}
		return nil
	})
	if err == nil && e.refToLast {
		mv := *c.Ref
		mv.Target = c.Manifests[len(c.Manifests)-1].id
		c.Ref = &mv
	}
	return c, err
}

// resolveKept rebuilds the manifest of kept form f, whose base is an earlier manifest of the
// entry (one of earlier) or one in the index.
func (ix *Index) resolveKept(mb *bolt.Bucket, earlier []*Encoded, base ID, f []byte) (*Encoded, error) {
	var regions []Region
	if j := slices.IndexFunc(earlier, func(m *Encoded) bool { return m.id == base }); j >= 0 {
		regions = earlier[j].m.Regions
	} else {
		v := mb.Get(base[:])
		if v == nil {
			return nil, fmt.Errorf("%w: the base of its kept form, %s", ErrMissingParent, base)
		}
		data, err := storedBytes(mb, v)
		if err == nil && cas.Sum(data) != base {
			err = fmt.Errorf("stored bytes hash to %s", cas.Sum(data))
		}
		var bm *Manifest
		if err == nil {
			bm, err = decodeRegions(data)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: manifest %s: %w", ErrCorruptIndex, base, err)
		}
		regions = bm.Regions
	}
	m, err := decodeKept(f, regions)
	if err != nil {
		return nil, err
	}
	return m.EncodedOwned()
}

// journalReader reads a journal entry; after the first error every read returns zeros.
type journalReader struct {
	b   []byte
	err error
}

var errJournalShort = errors.New("truncated or malformed")

func (r *journalReader) fail() {
	if r.err == nil {
		r.err = errJournalShort
	}
	r.b = nil
}

func (r *journalReader) bytes(n int) []byte {
	if r.err != nil || n < 0 || n > len(r.b) {
		r.fail()
		if n >= 0 && n <= 32 {
			return make([]byte, n) // what a fixed-size read converts to an array
		}
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *journalReader) byte() byte { return r.bytes(1)[0] }

func (r *journalReader) uvarint() uint64 {
	v, k := binary.Uvarint(r.b)
	if r.err != nil || k <= 0 || v > 1<<62 {
		r.fail()
		return 0
	}
	r.b = r.b[k:]
	return v
}

func (r *journalReader) varint() int64 {
	v, k := binary.Varint(r.b)
	if r.err != nil || k <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[k:]
	return v
}

// count reads a count of items of at least min bytes each, refusing one the rest cannot hold.
func (r *journalReader) count(min int) uint64 {
	v := r.uvarint()
	if r.err == nil && v > uint64(len(r.b)/min) {
		r.fail()
		return 0
	}
	return v
}
