package index

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/driftstore/driftstore/cas"
)

// LengthMismatchError reports a manifest chunk whose length differs from the recorded size.
type LengthMismatchError struct {
	Digest         cas.Digest
	Length, Record int64
}

func (e *LengthMismatchError) Error() string {
	return fmt.Sprintf("chunk %s: manifest says %d bytes, recorded size is %d", e.Digest, e.Length, e.Record)
}

// PutManifest encodes m and commits it. It is refused with a *MissingChunksError (wrapping
// ErrMissingChunks, listing every missing digest) unless every chunk m names is recorded, with a
// *LengthMismatchError when a chunk's length differs from its record, and with ErrMissingParent
// when m has a parent the index lacks. Putting a manifest that is already present succeeds and
// restarts its grace period. Returns the manifest's ID.
//
// A chunk that m's parent names at the same place (same region, same position, same digest and
// length) is known to be recorded without a look-up: the index keeps every chunk of a present
// manifest recorded (garbage collection removes a manifest in the same transaction as, or before,
// the records only it kept). So a manifest that extends its parent costs look-ups only for its
// new chunks.
func (ix *Index) PutManifest(ctx context.Context, m *Manifest) (ID, error) {
	return ix.CommitManifest(ctx, nil, m)
}

// CommitManifest records infos (as RecordChunks) and commits m (as PutManifest) in one
// transaction: either both happen or neither does, and durably with one commit instead of two.
// The chunks infos describe must be durably in the store (the caller should hold HoldGC from
// their Put until this returns); m may name them, chunks already recorded, and its parent's
// chunks (see PutManifest). On any refusal nothing is recorded. Returns the manifest's ID.
func (ix *Index) CommitManifest(ctx context.Context, infos []cas.Info, m *Manifest) (ID, error) {
	e, err := m.Encoded()
	if err != nil {
		return ID{}, err
	}
	return e.ID(), ix.CommitEncoded(ctx, infos, e)
}

// CommitEncoded is CommitManifest for a manifest already encoded (Manifest.Encoded): the
// caller may encode it while other work (the chunks' durability barrier, say) is under way.
// Same guarantees and errors as CommitManifest.
func (ix *Index) CommitEncoded(ctx context.Context, infos []cas.Info, e *Encoded) error {
	return ix.Commit(ctx, Commit{Chunks: infos, Manifests: []*Encoded{e}})
}

// PutManifestBytes is PutManifest for an encoded manifest from any source: data is decoded
// strictly (see Decode) before anything is written. data is only read during the call.
func (ix *Index) PutManifestBytes(ctx context.Context, data []byte) (ID, error) {
	e, err := DecodeEncoded(data)
	if err != nil {
		return ID{}, err
	}
	return e.id, ix.Commit(ctx, Commit{Manifests: []*Encoded{e}})
}

// Commit is what one index transaction commits: all of it, durably with one commit, or none of
// it.
type Commit struct {
	// Chunks are recorded first (as RecordChunks): they must be durably in the store (the
	// caller should hold HoldGC from their Put until Commit returns).
	Chunks []cas.Info
	// Manifests are committed next, in order, each as PutManifest: its chunks recorded (or in
	// Chunks) and its parent present or earlier in the list. Their regions are kept (the
	// index remembers recent manifests): do not modify them afterwards.
	Manifests []*Encoded
	// Next, when not nil, is one more manifest, committed after Manifests, handed over before
	// it is encoded: the commit encodes it, and CommitBatch with a journal does so while the
	// barrier runs (see Deferred).
	Next *Deferred
	// Ref, when set, is moved last, with compare-and-swap (as CompareAndSwapRef): its target
	// may be one of Manifests, or Next.
	Ref *RefMove
}

// RefMove is a compare-and-swap of ref Kind/Name from Expected (zero: the ref must not exist) to
// Target (zero: delete it), or, with ToNext, to the commit's Next manifest (Target must then be
// zero: Next's ID is not known before the commit encodes it).
type RefMove struct {
	Kind             RefKind
	Name             string
	Expected, Target ID
	ToNext           bool
}

// Deferred is a manifest handed to a commit unencoded (Commit.Next). The commit encodes it (as
// EncodedOwned: its regions and their chunk lists become the index's, and nobody may modify
// them afterwards). CommitBatch, when its store journals and the manifest's parent is one this
// Index committed recently, writes it to the journal in kept form (the references it shares
// with its parent left out, see kept.go) and encodes, hashes and checks it while the journal
// entry's barrier runs: for a checkpoint of a long context, the work that grows with the
// context leaves the commit's critical path. A Deferred belongs to one commit at a time.
type Deferred struct {
	m   *Manifest
	enc *Encoded
}

// Defer hands m to a commit (see Deferred); m must not be modified afterwards.
func Defer(m *Manifest) *Deferred { return &Deferred{m: m} }

// Encoded returns the manifest's encoding once the commit that carried d encoded it (always
// when the commit returned nil); nil before.
func (d *Deferred) Encoded() *Encoded { return d.enc }

// encode encodes d once.
func (d *Deferred) encode() (*Encoded, error) {
	if d.enc == nil {
		e, err := d.m.EncodedOwned()
		if err != nil {
			return nil, err
		}
		d.enc = e
	}
	return d.enc, nil
}

// validNext checks that a move to the next manifest comes with one, and names no target.
func (c Commit) validNext() error {
	if mv := c.Ref; mv != nil && mv.ToNext && (c.Next == nil || !mv.Target.IsZero()) {
		return fmt.Errorf("move %s %q to the next manifest: the commit has no next manifest, or the move also names a target", mv.Kind, mv.Name)
	}
	return nil
}

// settled returns c with its Next encoded and appended to its Manifests, and its ref's ToNext
// resolved to Next's ID. c itself is not modified (but for Next's encoding).
func (c Commit) settled() (Commit, error) {
	if err := c.validNext(); err != nil {
		return Commit{}, err
	}
	if c.Next == nil {
		return c, nil
	}
	e, err := c.Next.encode()
	if err != nil {
		return Commit{}, err
	}
	c.Manifests = append(c.Manifests[:len(c.Manifests):len(c.Manifests)], e)
	c.Next = nil
	if mv := c.Ref; mv != nil && mv.ToNext {
		c.Ref = &RefMove{Kind: mv.Kind, Name: mv.Name, Expected: mv.Expected, Target: e.ID()}
	}
	return c, nil
}

// Commit commits c in one transaction. Errors are those of RecordChunks, PutManifest (a
// *MissingChunksError, a *LengthMismatchError, ErrMissingParent) and CompareAndSwapRef
// (ErrConflict, ErrManifestNotFound), wrapped with what failed; after any error nothing of c
// is committed.
func (ix *Index) Commit(ctx context.Context, c Commit) error {
	if err := ctxErr(ctx); err != nil {
		return err
	}
	c, err := c.settled()
	if err != nil {
		return err
	}
	p, err := ix.prepare(c)
	if err != nil {
		return err
	}
	if err := ix.update(p.tx); err != nil {
		return err
	}
	p.remember()
	return nil
}

// prepared is a Commit checked for what needs no transaction, with its manifests planned.
type prepared struct {
	ix    *Index
	c     Commit
	key   []byte // the ref's key, when c.Ref is set
	now   time.Time
	plans []manifestPlan
}

// prepare prepares c for a transaction at the current time.
func (ix *Index) prepare(c Commit) (*prepared, error) { return ix.prepareAt(c, ix.now()) }

// prepareAt prepares c for a transaction that records now as its time.
func (ix *Index) prepareAt(c Commit, now time.Time) (*prepared, error) {
	if c.Next != nil || (c.Ref != nil && c.Ref.ToNext) {
		return nil, fmt.Errorf("index: commit with its next manifest not settled") // see Commit.settled
	}
	if err := validInfos(c.Chunks); err != nil {
		return nil, err
	}
	p := &prepared{ix: ix, c: c, now: now, plans: make([]manifestPlan, len(c.Manifests))}
	if c.Ref != nil {
		var err error
		if p.key, err = refKey(c.Ref.Kind, c.Ref.Name); err != nil {
			return nil, err
		}
	}
	for i, e := range c.Manifests {
		p.plans[i] = ix.plan(e, p.plans[:i])
	}
	return p, nil
}

// tx writes the commit in tx; an error leaves tx to be rolled back. It may run more than once
// (a check, then the commit).
func (p *prepared) tx(tx *bolt.Tx) error {
	c, now := p.c, p.now
	chunks := tx.Bucket(bucketChunks)
	if err := recordIn(chunks, c.Chunks, now); err != nil {
		return err
	}
	for i := range p.plans {
		if err := p.plans[i].put(tx, chunks, now); err != nil {
			return fmt.Errorf("put manifest %s: %w", p.plans[i].e.id, err)
		}
	}
	if c.Ref != nil {
		mv := c.Ref
		if err := moveRefTx(tx, p.key, casCheck(mv.Kind, mv.Name, mv.Expected), mv.Target, now); err != nil {
			return fmt.Errorf("move %s %q to %s: %w", mv.Kind, mv.Name, idOrNone(mv.Target), err)
		}
	}
	return nil
}

// check makes tx's checks without its writes, in a read transaction: it returns the errors tx
// would, with c's chunks taken as recorded and its earlier manifests as present.
func (p *prepared) check(tx *bolt.Tx) error {
	c := p.c
	pending := make(map[cas.Digest]int64, len(c.Chunks))
	for _, in := range c.Chunks {
		pending[in.Digest] = in.Size
	}
	mb, chunks := tx.Bucket(bucketManifests), tx.Bucket(bucketChunks)
	earlier := func(id ID, n int) int {
		for j := n - 1; j >= 0; j-- {
			if p.plans[j].e.id == id {
				return j
			}
		}
		return -1
	}
	for i := range p.plans {
		pl := &p.plans[i]
		m := pl.e.m
		var known []Region
		parentPresent := m.Parent.IsZero()
		if !parentPresent {
			if v := mb.Get(m.Parent[:]); v != nil {
				parentPresent = true
				if pl.haveParent {
					known = pl.parent.regions
				} else {
					known = knownRegions(mb, m.Parent, v)
				}
			} else if j := earlier(m.Parent, i); j >= 0 {
				parentPresent, known = true, p.plans[j].e.m.Regions
			}
		}
		if err := checkChunks(chunks, m, known, pending); err != nil {
			return fmt.Errorf("put manifest %s: %w", pl.e.id, err)
		}
		if !parentPresent {
			return fmt.Errorf("put manifest %s: %w: %s", pl.e.id, ErrMissingParent, m.Parent)
		}
	}
	if mv := c.Ref; mv != nil {
		var cur ID
		if v := tx.Bucket(bucketRefs).Get(p.key); v != nil {
			if len(v) != len(cur) {
				return fmt.Errorf("%w: %s %q: value of %d bytes", ErrCorruptIndex, mv.Kind, mv.Name, len(v))
			}
			copy(cur[:], v)
		}
		err := casCheck(mv.Kind, mv.Name, mv.Expected)(cur)
		if err == nil && cur != mv.Target && !mv.Target.IsZero() && mb.Get(mv.Target[:]) == nil && earlier(mv.Target, len(p.plans)) < 0 {
			err = fmt.Errorf("%w: %s", ErrManifestNotFound, mv.Target)
		}
		if err != nil {
			return fmt.Errorf("move %s %q to %s: %w", mv.Kind, mv.Name, idOrNone(mv.Target), err)
		}
	}
	return nil
}

// remember keeps the committed manifests as recent (after the transaction committed).
func (p *prepared) remember() {
	for i := range p.plans {
		p.ix.remember(p.plans[i].committed())
	}
}

// manifestPlan is one manifest of a Commit: what is known of its parent before the
// transaction, and its delta form, made outside the transaction.
type manifestPlan struct {
	e          *Encoded
	parent     recentManifest // when haveParent: committed recently, or earlier in the Commit
	haveParent bool
	base       recentManifest // the base of delta
	delta      []byte         // nil: stored full
	storedBase ID             // set by put: the base of the stored delta form, zero when full
}

// plan prepares e's commit. The parent, when this Index committed it recently or it comes
// earlier in the same Commit: then the transaction only checks that it is present (a present
// manifest's chunks are all recorded) rather than rebuilding and decoding its stored bytes. Its
// base (itself when stored full) is the base of e's delta form.
func (ix *Index) plan(e *Encoded, earlier []manifestPlan) manifestPlan {
	p := manifestPlan{e: e}
	find := func(id ID) (recentManifest, bool) {
		for i := len(earlier) - 1; i >= 0; i-- {
			if earlier[i].e.id == id {
				return earlier[i].intended(), true
			}
		}
		return ix.recentManifest(id)
	}
	p.parent, p.haveParent = find(e.m.Parent)
	if p.haveParent {
		base := p.parent
		if !base.base.IsZero() {
			base, _ = find(base.base)
		}
		if base.full != nil {
			p.base = base
			p.delta = makeDelta(base.id, base.full, base.layout, e.data, layoutOf(e.m, len(e.data)))
		}
	}
	return p
}

// intended is the entry p's manifest will have once stored as planned (a later manifest of the
// same Commit builds on it; the transaction checks the base it names before using a delta).
func (p *manifestPlan) intended() recentManifest {
	r := recentManifest{id: p.e.id, regions: p.e.m.Regions}
	if p.delta != nil {
		r.base = p.base.id
	} else {
		r.full, r.layout = p.e.data, layoutOf(p.e.m, len(p.e.data))
	}
	return r
}

// committed is the entry p's manifest has after its transaction.
func (p *manifestPlan) committed() recentManifest {
	r := recentManifest{id: p.e.id, regions: p.e.m.Regions, base: p.storedBase}
	if r.base.IsZero() {
		r.full, r.layout = bytes.Clone(p.e.data), layoutOf(p.e.m, len(p.e.data))
	}
	return r
}

// put commits p's manifest in tx (see PutManifest).
func (p *manifestPlan) put(tx *bolt.Tx, chunks *bolt.Bucket, now time.Time) error {
	m, id := p.e.m, p.e.id
	p.storedBase = ID{}
	mb := tx.Bucket(bucketManifests)
	var known []Region
	parentPresent := m.Parent.IsZero()
	if !parentPresent {
		if v := mb.Get(m.Parent[:]); v != nil {
			parentPresent = true
			if p.haveParent {
				known = p.parent.regions
			} else {
				known = knownRegions(mb, m.Parent, v)
			}
		}
	}
	if err := checkChunks(chunks, m, known, nil); err != nil {
		return err
	}
	if !parentPresent {
		return fmt.Errorf("%w: %s", ErrMissingParent, m.Parent)
	}
	if v := mb.Get(id[:]); v != nil {
		if bytes.HasPrefix(v, []byte(deltaMagic)) && len(v) >= len(deltaMagic)+32 {
			p.storedBase = ID(v[len(deltaMagic) : len(deltaMagic)+32])
		}
	} else {
		value := p.e.data
		// The delta form only against the base as it was made from: present, full and the
		// same bytes (an ancestor of m, so garbage collection keeps it while m lives).
		if p.delta != nil && bytes.Equal(mb.Get(p.base.id[:]), p.base.full) {
			value, p.storedBase = p.delta, p.base.id
		}
		if err := mb.Put(id[:], value); err != nil {
			return err
		}
	}
	return tx.Bucket(bucketMtimes).Put(id[:], putTime(nil, now))
}

// knownRegions returns the regions of the manifest id stored as v in mb, or nil when its bytes
// do not hash to id or do not parse: then nothing is taken as known and every chunk is looked
// up.
func knownRegions(mb *bolt.Bucket, id ID, v []byte) []Region {
	v, err := storedBytes(mb, v)
	if err != nil || cas.Sum(v) != id {
		return nil
	}
	m, err := decodeRegions(v)
	if err != nil {
		return nil
	}
	return m.Regions
}

// checkChunks checks that every chunk m names is recorded with m's length, except those parent
// (the regions of m's present parent, or nil) names at the same place; pending (or nil) lists
// chunks to take as recorded with these sizes. Missing chunks, all of them, take precedence
// over a length mismatch.
func checkChunks(chunks *bolt.Bucket, m *Manifest, parent []Region, pending map[cas.Digest]int64) error {
	var missing []cas.Digest
	var mismatch error
	seen := make(map[cas.Digest]struct{})
	for i, r := range m.Regions {
		var known []ChunkRef
		if i < len(parent) && parent[i].Name == r.Name {
			known = parent[i].Chunks
		}
		for j := commonRefs(known, r.Chunks); j < len(r.Chunks); j++ {
			c := r.Chunks[j]
			if j < len(known) && known[j] == c {
				continue
			}
			if _, ok := seen[c.Digest]; ok {
				continue
			}
			seen[c.Digest] = struct{}{}
			size, ok := pending[c.Digest]
			if !ok {
				v := chunks.Get(c.Digest[:])
				if v == nil {
					missing = append(missing, c.Digest)
					continue
				}
				if mismatch != nil || len(missing) > 0 {
					continue
				}
				rec, err := decodeChunkRecord(c.Digest, v)
				if err != nil {
					return err
				}
				size = rec.Size
			}
			if mismatch == nil && len(missing) == 0 && size != c.Length {
				mismatch = &LengthMismatchError{Digest: c.Digest, Length: c.Length, Record: size}
			}
		}
	}
	if len(missing) > 0 {
		return &MissingChunksError{Missing: missing}
	}
	return mismatch
}

// ManifestBytes returns the canonical bytes of manifest id, verified against the ID. The slice is
// the caller's.
func (ix *Index) ManifestBytes(id ID) ([]byte, error) {
	var out []byte
	err := ix.view(func(tx *bolt.Tx) error {
		mb := tx.Bucket(bucketManifests)
		v := mb.Get(id[:])
		if v == nil {
			return fmt.Errorf("%w: %s", ErrManifestNotFound, id)
		}
		v, err := storedBytes(mb, v)
		if err != nil {
			return fmt.Errorf("%w: manifest %s: %w", ErrCorruptIndex, id, err)
		}
		if cas.Sum(v) != id {
			return fmt.Errorf("%w: manifest %s: stored bytes hash to %s", ErrCorruptIndex, id, cas.Sum(v))
		}
		out = append([]byte(nil), v...)
		return nil
	})
	return out, err
}

// Manifest returns manifest id, decoded and verified. Errors: ErrManifestNotFound, or
// ErrCorruptIndex when the stored bytes do not match the ID or do not decode.
func (ix *Index) Manifest(id ID) (*Manifest, error) {
	data, err := ix.ManifestBytes(id)
	if err != nil {
		return nil, err
	}
	m, err := Decode(data)
	if err != nil {
		return nil, fmt.Errorf("%w: manifest %s: %w", ErrCorruptIndex, id, err)
	}
	return m, nil
}

// HasManifest reports whether manifest id is present.
func (ix *Index) HasManifest(id ID) (bool, error) {
	var ok bool
	err := ix.view(func(tx *bolt.Tx) error {
		ok = tx.Bucket(bucketManifests).Get(id[:]) != nil
		return nil
	})
	return ok, err
}

// ManifestInfo summarises one stored manifest.
type ManifestInfo struct {
	ID      ID
	Kind    string
	Parent  ID
	Regions int
	Chunks  int   // chunk references, counting repeats
	Size    int64 // total bytes of all regions
	Put     time.Time
	Err     error // non-nil when the stored manifest does not decode; the other fields are zero
}

// Manifests lists every stored manifest in ID order. A manifest that does not decode is listed
// with Err set rather than failing the whole listing.
func (ix *Index) Manifests() ([]ManifestInfo, error) {
	var out []ManifestInfo
	err := ix.view(func(tx *bolt.Tx) error {
		mt := tx.Bucket(bucketMtimes)
		mb := tx.Bucket(bucketManifests)
		return mb.ForEach(func(k, v []byte) error {
			id, ok := digestKey(k)
			if !ok {
				out = append(out, ManifestInfo{Err: fmt.Errorf("%w: manifest key %x", ErrCorruptIndex, k)})
				return nil
			}
			info := ManifestInfo{ID: id}
			if t := mt.Get(k); len(t) == 8 {
				info.Put = getTime(t)
			}
			v, err := storedBytes(mb, v)
			var m *Manifest
			if err == nil {
				m, err = Decode(v)
			}
			if err == nil && cas.Sum(v) != id {
				err = fmt.Errorf("stored bytes hash to %s", cas.Sum(v))
			}
			if err != nil {
				info.Err = fmt.Errorf("%w: manifest %s: %w", ErrCorruptIndex, id, err)
				out = append(out, info)
				return nil
			}
			info.Kind, info.Parent, info.Regions, info.Size = m.Kind, m.Parent, len(m.Regions), m.Size()
			for _, r := range m.Regions {
				info.Chunks += len(r.Chunks)
			}
			out = append(out, info)
			return nil
		})
	})
	return out, err
}

// FindManifests returns the IDs of manifests whose hex form starts with prefix (lowercase hex,
// with or without the "blake3:" tag), in ID order, at most limit of them (limit <= 0: all).
func (ix *Index) FindManifests(prefix string, limit int) ([]ID, error) {
	prefix = strings.TrimPrefix(prefix, "blake3:")
	if prefix == "" || len(prefix) > 64 {
		return nil, fmt.Errorf("%w: prefix %q: want 1..64 hex digits", cas.ErrBadDigest, trunc(prefix))
	}
	for i := 0; i < len(prefix); i++ {
		c := prefix[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return nil, fmt.Errorf("%w: prefix %q: not lowercase hex", cas.ErrBadDigest, trunc(prefix))
		}
	}
	// Seek to the first key at or after the prefix's bytes (an odd digit count rounds down).
	seek, _ := hex.DecodeString(prefix[:len(prefix)/2*2])
	if len(prefix)%2 == 1 {
		hi, _ := hex.DecodeString(prefix[len(prefix)-1:] + "0")
		seek = append(seek, hi...)
	}
	var out []ID
	err := ix.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketManifests).Cursor()
		for k, _ := c.Seek(seek); k != nil; k, _ = c.Next() {
			if !strings.HasPrefix(hex.EncodeToString(k), prefix) {
				break
			}
			if id, ok := digestKey(k); ok {
				out = append(out, id)
			}
			if limit > 0 && len(out) >= limit {
				break
			}
		}
		return nil
	})
	return out, err
}
