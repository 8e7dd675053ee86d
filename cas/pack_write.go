package cas

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// packRecord is a record reserved and written by this process, pinning its pack until it is
// published, discarded or failed.
type packRecord struct {
	pf     *packFile
	digest Digest
	entry  packEntry
}

func (r *packRecord) end() int64 { return r.entry.off + r.entry.recordLen() }

// writable reports why the store takes no writes, or nil. Called with p.mu held (either way).
func (p *Pack) writableLocked() error {
	switch {
	case p.closed:
		return ErrClosed
	case p.opts.ReadOnly:
		return ErrReadOnly
	}
	return nil
}

// reserve reserves n bytes at the end of the active pack, rolling over to a new pack when the
// record would take the active one past MaxPackSize, and marks the range pending. Called with
// p.mu held for writing. The caller writes the range and then calls finishWrite.
func (p *Pack) reserve(n int64, pin bool) (*packFile, int64, error) {
	if err := p.writableLocked(); err != nil {
		return nil, 0, err
	}
	pf := p.active
	if pf == nil || pf.sealed || pf.err != nil || pf.size > 0 && pf.size+n > p.opts.MaxPackSize {
		next, err := p.newPackLocked()
		if err != nil {
			return nil, 0, err
		}
		pf = next
	}
	off := pf.size
	pf.size += n
	pf.pending = append(pf.pending, off)
	if pin {
		pf.pins++
	}
	return pf, off, nil
}

// newPackLocked seals the active pack and starts the next one, syncing the directory so that
// the new file's name is durable before any record in it is acknowledged.
func (p *Pack) newPackLocked() (*packFile, error) {
	pf, err := p.openPackFile(p.nextNum, true)
	if err != nil {
		return nil, fmt.Errorf("new pack file: %w", err)
	}
	if !p.opts.NoSync {
		if err := syncDirPath(p.dir); err != nil {
			pf.f.Close()
			return nil, fmt.Errorf("new pack file %s: sync directory: %w", pf.path, err)
		}
	}
	if p.active != nil {
		p.active.sealed = true
	}
	p.nextNum++
	p.packs[pf.num] = pf
	p.active = pf
	return pf, nil
}

// finishWrite ends the write of the range reserved at off. A failed write breaks the pack: no
// later record in it becomes durable, and new records go to a new pack.
func (p *Pack) finishWrite(pf *packFile, off int64, err error) {
	p.mu.Lock()
	if i := slices.Index(pf.pending, off); i >= 0 {
		pf.pending = slices.Delete(pf.pending, i, i+1)
	}
	if err != nil && pf.err == nil {
		pf.err = fmt.Errorf("%s: write at %d failed: %w", pf.path, off, err)
		pf.sealed = true
	}
	p.cond.Broadcast()
	p.mu.Unlock()
}

// unpin releases records that will not be published.
func (p *Pack) unpin(recs ...*packRecord) {
	p.mu.Lock()
	for _, r := range recs {
		r.pf.pins--
	}
	p.cond.Broadcast()
	p.mu.Unlock()
}

// writeChunk encodes a chunk, reserves its record and writes it, without syncing. On success
// the record is pinned.
func (p *Pack) writeChunk(d Digest, encode encodeFunc) (*packRecord, error) {
	buf := getBuf(64 << 10)
	defer putBuf(buf)
	hdr := (*buf)[:packHeaderSize] // filled in once the payload is known
	codec, size, out, tail, err := encode(hdr)
	if err != nil {
		return nil, err
	}
	if cap(out) <= maxPooled {
		*buf = out[:0]
	}
	length := len(out) - packHeaderSize + len(tail)
	n := int64(packHeaderSize + length)
	now := time.Now().UnixNano()
	p.mu.Lock()
	pf, off, err := p.reserve(n, true)
	p.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("put %s: %w", d, err)
	}
	h := recordHeader{kind: kindChunk, codec: codec, digest: d, a: uint64(size), b: uint32(length), time: now}
	h.encode(out[:packHeaderSize])
	werr := pwriteRecord(pf, out, tail, off)
	p.finishWrite(pf, off, werr)
	rec := &packRecord{pf: pf, digest: d, entry: packEntry{
		pack: pf.num, off: off, length: uint32(length), size: uint32(size), codec: codec, mod: now,
	}}
	if werr != nil {
		p.unpin(rec)
		return nil, fmt.Errorf("put %s: %w", d, werr)
	}
	return rec, nil
}

// writeMeta appends a record without payload (tombstone or sync marker) to pf, or to the
// active pack when pf is nil. It is not synced.
func (p *Pack) writeMeta(pf *packFile, h recordHeader) error {
	_, _, err := p.writeMetaAt(pf, h)
	return err
}

// writeMetaAt is writeMeta returning the pack written to and the record's end.
func (p *Pack) writeMetaAt(pf *packFile, h recordHeader) (*packFile, int64, error) {
	p.mu.Lock()
	var off int64
	if pf != nil {
		off = pf.size
		pf.size += packHeaderSize
		pf.pending = append(pf.pending, off)
	} else {
		var err error
		pf, off, err = p.reserve(packHeaderSize, false)
		if err != nil {
			p.mu.Unlock()
			return nil, 0, err
		}
	}
	p.mu.Unlock()
	var b [packHeaderSize]byte
	h.encode(b[:])
	err := pwriteRecord(pf, b[:], nil, off)
	p.finishWrite(pf, off, err)
	return pf, off + packHeaderSize, err
}

// appendTombstone appends a tombstone for the record e of chunk d.
func (p *Pack) appendTombstone(d Digest, e packEntry) error {
	err := p.writeMeta(nil, recordHeader{kind: kindTombstone, digest: d, a: uint64(e.off), b: e.pack, time: time.Now().UnixNano()})
	if err != nil {
		return fmt.Errorf("tombstone for %s: %w", d, err)
	}
	return nil
}

// waitDurable returns once pf's first end bytes are durable: it waits until every record
// before end is written, then syncs (one goroutine syncs for all that wait; the others wait
// for it) and appends a sync marker. With NoSync it only waits for the writes.
func (p *Pack) waitDurable(pf *packFile, end int64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for pf.synced < end {
		if pf.err != nil {
			return pf.err
		}
		if p.closed {
			return ErrClosed
		}
		if pf.syncing || pf.prefix() < end {
			p.cond.Wait()
			continue
		}
		pf.syncing = true
		target := pf.prefix()
		p.mu.Unlock()
		var err error
		if !p.opts.NoSync {
			err = fdatasync(pf.f)
		}
		p.mu.Lock()
		pf.syncing = false
		p.cond.Broadcast()
		if err != nil {
			if pf.err == nil {
				pf.err = fmt.Errorf("%s: sync: %w", pf.path, err)
				pf.sealed = true
			}
			return pf.err
		}
		pf.synced = max(pf.synced, target)
		if p.closed {
			continue
		}
		p.mu.Unlock()
		merr := p.writeMeta(pf, recordHeader{kind: kindSync, a: uint64(target), time: time.Now().UnixNano()})
		p.mu.Lock()
		if merr != nil && pf.synced < end {
			return merr
		}
	}
	return nil
}

// publish makes durable records visible, in order. A record whose chunk became visible
// meanwhile through another copy is a duplicate: it is tombstoned (so that a reopen agrees with
// memory) and the visible copy's Info is returned for it.
func (p *Pack) publish(recs []*packRecord) []Info {
	infos := make([]Info, len(recs))
	var dups []*packRecord
	p.mu.Lock()
	for i, r := range recs {
		r.pf.pins--
		if e, ok := p.index[r.digest]; ok {
			dups = append(dups, r)
			infos[i] = e.info(r.digest)
			continue
		}
		p.index[r.digest] = r.entry
		r.pf.live += r.entry.recordLen()
		infos[i] = r.entry.info(r.digest)
	}
	p.cond.Broadcast()
	p.mu.Unlock()
	for _, r := range dups {
		// Best effort: a duplicate left without a tombstone is only a second copy of the same
		// bytes, which the next open tombstones.
		_ = p.appendTombstone(r.digest, r.entry)
	}
	return infos
}

// existing returns d's Info when visible, refreshing its ModTime when older than TouchInterval.
func (p *Pack) existing(d Digest) (Info, bool) {
	p.mu.RLock()
	e, ok := p.index[d]
	p.mu.RUnlock()
	if !ok {
		return Info{}, false
	}
	if now := time.Now(); now.Sub(time.Unix(0, e.mod)) > TouchInterval {
		p.mu.Lock()
		if cur, ok := p.index[d]; ok && cur.pack == e.pack && cur.off == e.off {
			cur.mod = now.UnixNano()
			p.index[d] = cur
			e = cur
		}
		p.mu.Unlock()
	}
	return e.info(d), true
}

// claim makes this goroutine the only one in the process writing d through Put, waiting for
// (or giving up with ctx on) another. The returned release must be called.
func (p *Pack) claim(ctx context.Context, d Digest) (release func(), err error) {
	for {
		release, ch := p.tryClaim(d)
		if release != nil {
			return release, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// tryClaim claims d, or returns the channel that closes when its current writer is done.
func (p *Pack) tryClaim(d Digest) (release func(), busy <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ch, ok := p.inflight[d]; ok {
		return nil, ch
	}
	ch := make(chan struct{})
	p.inflight[d] = ch
	return func() {
		p.mu.Lock()
		delete(p.inflight, d)
		p.mu.Unlock()
		close(ch)
	}, nil
}

// Put stores data (see Store.Put): encoded, verified, appended to the active pack, synced
// (sharing the sync with concurrent Puts), then made visible. A present chunk costs a map
// lookup.
func (p *Pack) Put(ctx context.Context, data []byte, hint Hint) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	if len(data) > MaxChunkSize {
		return Info{}, fmt.Errorf("put: %d bytes: %w (limit %d)", len(data), ErrTooLarge, MaxChunkSize)
	}
	d := Sum(data)
	return p.put(ctx, d, func(dst []byte) (Codec, int, []byte, []byte, error) {
		return encodeChunk(dst, d, data, hint)
	})
}

// PutStored stores a chunk given in stored form, as is, after decoding it and checking that it
// is the content named d (see StoredWriter). A mismatch gives a *CorruptError naming d.
func (p *Pack) PutStored(ctx context.Context, d Digest, codec Codec, stored []byte) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	return p.put(ctx, d, storedEncoder(d, codec, stored))
}

// storedEncoder is the encodeFunc of a stored form: verified, then written as is.
func storedEncoder(d Digest, codec Codec, stored []byte) encodeFunc {
	return func(dst []byte) (Codec, int, []byte, []byte, error) {
		size, err := verifyStored(d, codec, stored)
		if err != nil {
			return 0, 0, nil, nil, err
		}
		return codec, size, dst, stored, nil
	}
}

func (p *Pack) put(ctx context.Context, d Digest, encode encodeFunc) (Info, error) {
	if info, ok := p.existing(d); ok {
		return info, nil
	}
	if p.opts.ReadOnly { // before encoding for nothing
		return Info{}, fmt.Errorf("put %s: %w", d, ErrReadOnly)
	}
	release, err := p.claim(ctx, d)
	if err != nil {
		return Info{}, err
	}
	defer release()
	if info, ok := p.existing(d); ok {
		return info, nil
	}
	rec, err := p.writeChunk(d, encode)
	if err != nil {
		return Info{}, err
	}
	if err := p.waitDurable(rec.pf, rec.end()); err != nil {
		p.unpin(rec)
		return Info{}, fmt.Errorf("put %s: %w", d, err)
	}
	return p.publish([]*packRecord{rec})[0], nil
}

// Delete drops chunk d and appends a tombstone for its record (not synced: a chunk that
// reappears after a crash is only garbage for the next collection). Deleting an absent chunk
// is not an error. The space is reclaimed by Compact.
func (p *Pack) Delete(ctx context.Context, d Digest) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p.mu.Lock()
	if err := p.writableLocked(); err != nil {
		p.mu.Unlock()
		return fmt.Errorf("delete %s: %w", d, err)
	}
	e, ok := p.index[d]
	if ok {
		delete(p.index, d)
		if pf := p.packs[e.pack]; pf != nil {
			pf.live -= e.recordLen()
		}
	}
	p.mu.Unlock()
	if !ok {
		return nil
	}
	if err := p.appendTombstone(d, e); err != nil {
		return fmt.Errorf("delete %s: %w", d, err)
	}
	return nil
}

// NewBatch returns a batch that appends records without syncing; Commit syncs every pack the
// batch wrote to once (sharing the sync with concurrent Puts) and then makes the chunks
// visible. Discard tombstones the batch's records (their bytes stay as dead space until
// Compact). Within the process a chunk is written once when possible: a batch's Put claims the
// chunk until Commit or Discard when no one else is writing it, and otherwise writes its own
// copy (the second to become visible is tombstoned as a duplicate).
func (p *Pack) NewBatch() Batch {
	return &packBatch{p: p, pending: map[Digest]*packPending{}}
}

// PutBatch stores chunks in one batch, one after the other (see BatchPutter). For parallel
// encoding, use PutAll, which drives a batch with several workers.
func (p *Pack) PutBatch(ctx context.Context, chunks [][]byte, hint Hint) ([]Info, error) {
	b := p.NewBatch()
	defer b.Discard()
	infos := make([]Info, len(chunks))
	for i, c := range chunks {
		info, err := b.Put(ctx, c, hint)
		if err != nil {
			return nil, fmt.Errorf("put chunk %d: %w", i, err)
		}
		infos[i] = info
	}
	if err := b.Commit(ctx); err != nil {
		return nil, err
	}
	return infos, nil
}

type packBatch struct {
	p *Pack

	mu      sync.Mutex // guards the fields below
	pending map[Digest]*packPending
	written []*packPending // chunks with a record awaiting Commit, in completion order
	closed  bool
}

// packPending is one chunk of a batch. done is closed once the Put that owns it finishes; the
// other fields are set before that and immutable after (release is cleared by releaseAll).
type packPending struct {
	done    chan struct{}
	info    Info
	rec     *packRecord // nil when the chunk was already present
	release func()
	err     error
}

func (b *packBatch) Put(ctx context.Context, data []byte, hint Hint) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	if len(data) > MaxChunkSize {
		return Info{}, fmt.Errorf("put: %d bytes: %w (limit %d)", len(data), ErrTooLarge, MaxChunkSize)
	}
	d := Sum(data)
	return b.put(ctx, d, func(dst []byte) (Codec, int, []byte, []byte, error) {
		return encodeChunk(dst, d, data, hint)
	})
}

// PutStored verifies a stored form and appends it (see Batch.PutStored).
func (b *packBatch) PutStored(ctx context.Context, d Digest, codec Codec, stored []byte) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	return b.put(ctx, d, storedEncoder(d, codec, stored))
}

func (b *packBatch) put(ctx context.Context, d Digest, encode encodeFunc) (Info, error) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return Info{}, fmt.Errorf("put %s: %w", d, ErrBatchClosed)
	}
	if pp, ok := b.pending[d]; ok {
		b.mu.Unlock()
		select {
		case <-pp.done:
		case <-ctx.Done():
			return Info{}, ctx.Err()
		}
		if pp.err != nil {
			return Info{}, pp.err
		}
		return pp.info, nil
	}
	pp := &packPending{done: make(chan struct{})}
	b.pending[d] = pp
	b.mu.Unlock()

	info, rec, err := b.write(d, encode, pp)
	b.mu.Lock()
	pp.info, pp.rec, pp.err = info, rec, err
	if err != nil {
		delete(b.pending, d) // a later Put of d tries again
	} else if rec != nil {
		b.written = append(b.written, pp)
	}
	b.mu.Unlock()
	close(pp.done)
	return info, err
}

// write appends d's record unless d is visible, claiming d when no one else in the process is
// writing it (pp.release is then set).
func (b *packBatch) write(d Digest, encode encodeFunc, pp *packPending) (Info, *packRecord, error) {
	p := b.p
	if info, ok := p.existing(d); ok {
		return info, nil, nil
	}
	if release, _ := p.tryClaim(d); release != nil {
		pp.release = release
		if info, ok := p.existing(d); ok {
			pp.release = nil
			release()
			return info, nil, nil
		}
	}
	rec, err := p.writeChunk(d, encode)
	if err != nil {
		if pp.release != nil {
			pp.release()
			pp.release = nil
		}
		return Info{}, nil, err
	}
	return rec.entry.info(d), rec, nil
}

func (b *packBatch) Commit(ctx context.Context) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return fmt.Errorf("commit: %w", ErrBatchClosed)
	}
	b.closed = true
	written := b.written
	b.written = nil
	b.mu.Unlock()
	defer b.releaseAll()
	recs := make([]*packRecord, len(written))
	for i, pp := range written {
		recs[i] = pp.rec
	}
	if err := ctx.Err(); err != nil {
		b.p.drop(recs)
		return err
	}
	if len(recs) == 0 {
		return nil
	}
	ends := map[*packFile]int64{}
	for _, r := range recs {
		ends[r.pf] = max(ends[r.pf], r.end())
	}
	for pf, end := range ends {
		if err := b.p.waitDurable(pf, end); err != nil {
			b.p.drop(recs)
			return fmt.Errorf("commit %d chunks: %w", len(recs), err)
		}
	}
	b.p.publish(recs)
	return nil
}

// drop unpins records that will never be published and tombstones them (best effort: without
// a tombstone a complete record may come back as an unreferenced chunk after a reopen, garbage
// for the next collection).
func (p *Pack) drop(recs []*packRecord) {
	if len(recs) == 0 {
		return
	}
	p.unpin(recs...)
	for _, r := range recs {
		if errors.Is(p.appendTombstone(r.digest, r.entry), ErrClosed) {
			return
		}
	}
}

func (b *packBatch) Discard() {
	b.mu.Lock()
	written := b.written
	b.written = nil
	b.closed = true
	b.mu.Unlock()
	recs := make([]*packRecord, len(written))
	for i, pp := range written {
		recs[i] = pp.rec
	}
	b.p.drop(recs)
	b.releaseAll()
}

// releaseAll lets go of every claim the batch holds. Only after Commit or Discard.
func (b *packBatch) releaseAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, pp := range b.pending {
		if pp.release != nil {
			pp.release()
			pp.release = nil
		}
	}
}
