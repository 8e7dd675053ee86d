package cas

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
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
	p.preallocate(pf)
	return pf, off, nil
}

// preallocStep is how far ahead of its writes a durable store's active pack has its blocks
// allocated.
const preallocStep = 64 << 20

// preallocate allocates pf's blocks ahead of its reserved end, preallocStep at a time and at
// most to MaxPackSize, without changing its size (fallocate with KEEP_SIZE, where it exists):
// on ext4 each pwrite then finds its blocks allocated instead of allocating them (128 MiB in
// 1 MiB writes: 44–51 ms inside the writes before, 32–35 after). Only for a durable store
// (pf.writeback) on a file system where it pays (allocatesAhead); one without fallocate simply
// goes on without. Close releases what is left past the end. Called with p.mu held for writing.
func (p *Pack) preallocate(pf *packFile) {
	if !pf.writeback || pf.size <= pf.alloc {
		return
	}
	end := min(max(pf.size, pf.alloc)+preallocStep, max(p.opts.MaxPackSize, pf.size))
	if err := allocateAhead(pf.f, pf.alloc, end-pf.alloc); err != nil {
		pf.alloc = math.MaxInt64 // not here: no more tries
		return
	}
	pf.alloc = end
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

// unpinN releases k pins of pf's records that were never placed.
func (p *Pack) unpinN(pf *packFile, k int) {
	p.mu.Lock()
	pf.pins -= k
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

// encodeRecord runs encode into buf (a pooled buffer of the caller's, updated when encode grows
// it) and fills in the record header. The record is the header and payload in out followed by
// tail; both stay valid until buf is reused (tail may be the caller's data). The returned
// record is not yet placed: its pf is nil.
func encodeRecord(d Digest, encode encodeFunc, buf *[]byte) (rec *packRecord, out, tail []byte, err error) {
	hdr := (*buf)[:packHeaderSize] // filled in once the payload is known
	codec, size, out, tail, err := encode(hdr)
	if err != nil {
		return nil, nil, nil, err
	}
	if cap(out) <= maxPooled {
		*buf = out[:0]
	}
	length := len(out) - packHeaderSize + len(tail)
	now := time.Now().UnixNano()
	crc := crc32.Update(crc32.Checksum(out[packHeaderSize:], castagnoli), castagnoli, tail)
	h := recordHeader{kind: kindChunk, codec: codec, digest: d, a: uint64(size), b: uint32(length), time: now, sealed: true, crc: crc}
	h.encode(out[:packHeaderSize])
	rec = &packRecord{digest: d, entry: packEntry{length: uint32(length), size: uint32(size), codec: codec, sealed: true, crc: crc, mod: now}}
	return rec, out, tail, nil
}

// writeChunk encodes a chunk, reserves its record and writes it, without syncing. On success
// the record is pinned.
func (p *Pack) writeChunk(d Digest, encode encodeFunc) (*packRecord, error) {
	buf := getBuf(64 << 10)
	defer putBuf(buf)
	rec, out, tail, err := encodeRecord(d, encode, buf)
	if err != nil {
		return nil, err
	}
	if err := p.writeRecord(rec, out, tail); err != nil {
		return nil, err
	}
	return rec, nil
}

// writeRecord reserves space for rec (encoded as out followed by tail, see encodeRecord) and
// writes it, without syncing. On success rec is placed and pinned; on failure it is neither.
func (p *Pack) writeRecord(rec *packRecord, out, tail []byte) error {
	p.mu.Lock()
	pf, off, err := p.reserve(rec.entry.recordLen(), true)
	p.mu.Unlock()
	if err != nil {
		return fmt.Errorf("put %s: %w", rec.digest, err)
	}
	werr := pwriteRecord(pf, out, tail, off)
	p.finishWrite(pf, off, werr)
	if werr != nil {
		p.unpinN(pf, 1)
		return fmt.Errorf("put %s: %w", rec.digest, werr)
	}
	rec.pf, rec.entry.pack, rec.entry.off = pf, pf.num, off
	return nil
}

// reserveRun reserves space for the longest prefix of recs (records laid out back to back)
// that fits in one pack: the active pack when at least the first record fits there, otherwise a
// new one (a record larger than MaxPackSize gets an empty pack of its own, as in reserve). It
// marks the range pending and pins its k records; the caller writes the n bytes at off and then
// calls finishWrite. What is reserved never spans two packs. Called with p.mu held for writing.
func (p *Pack) reserveRun(recs []*packRecord) (pf *packFile, off int64, k int, n int64, err error) {
	if err := p.writableLocked(); err != nil {
		return nil, 0, 0, 0, err
	}
	fit := func(room int64) (k int, n int64) {
		for k < len(recs) && n+recs[k].entry.recordLen() <= room {
			n += recs[k].entry.recordLen()
			k++
		}
		return k, n
	}
	pf = p.active
	usable := pf != nil && !pf.sealed && pf.err == nil
	if usable {
		k, n = fit(p.opts.MaxPackSize - pf.size)
	}
	if k == 0 && (!usable || pf.size > 0) {
		if pf, err = p.newPackLocked(); err != nil {
			return nil, 0, 0, 0, err
		}
		k, n = fit(p.opts.MaxPackSize)
	}
	if k == 0 {
		k, n = 1, recs[0].entry.recordLen()
	}
	off = pf.size
	pf.size += n
	pf.pending = append(pf.pending, off)
	pf.pins += k
	p.preallocate(pf)
	return pf, off, k, n, nil
}

// writeRun writes the records of a run (ents, in order: each is buf[lo:hi] followed by its
// retained tail) back to back with one pwritev per pack they go to (see reserveRun), without
// syncing. Each record written is placed and pinned. On error, the records written before the
// failure stay placed and pinned (the caller drops them) and the others are not placed.
func (p *Pack) writeRun(buf []byte, ents []runEntry) error {
	recs := make([]*packRecord, len(ents))
	for i, e := range ents {
		recs[i] = e.rec
	}
	iov := make([][]byte, 0, 2*len(ents))
	for len(recs) > 0 {
		p.mu.Lock()
		pf, off, k, _, err := p.reserveRun(recs)
		p.mu.Unlock()
		if err != nil {
			return fmt.Errorf("write %d chunk records: %w", len(recs), err)
		}
		iov = iov[:0]
		for _, e := range ents[:k] {
			iov = append(iov, buf[e.lo:e.hi])
			if len(e.tail) > 0 {
				iov = append(iov, e.tail)
			}
		}
		werr := pwriteRun(pf, iov, off)
		p.finishWrite(pf, off, werr)
		if werr != nil {
			p.unpinN(pf, k)
			return fmt.Errorf("write %d chunk records: %w", len(recs), werr)
		}
		for _, r := range recs[:k] {
			r.pf, r.entry.pack, r.entry.off = pf, pf.num, off
			off += r.entry.recordLen()
		}
		ents, recs = ents[k:], recs[k:]
	}
	return nil
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

// NewBatch returns a batch that gathers its chunks' records in memory and appends them in
// large writes without syncing; Commit writes what is left, syncs every pack the batch wrote
// to once (sharing the sync with concurrent Puts) and then makes the chunks visible.
//
// Coalescing: a Put encodes its record (header and stored form) and copies it into the batch's
// run buffer (pooled); when the buffer reaches coalesceSize (1 MiB), that Put writes the whole
// run with one pwrite (space for all of it reserved at once; no write spans two packs: where the
// active pack would pass MaxPackSize, the run is cut at a record boundary and the rest written
// to a new pack). A record of coalesceMax (512 KiB) or more is written alone at once, from the
// encoder's buffer. Records still in the buffer are written by Commit before its sync, and
// dropped unwritten by Discard. A failed run write breaks the batch: later Puts and Commit fail
// with that error.
//
// The batch is a Retainer: PutRetained keeps a chunk stored raw out of the run buffer and
// writes it straight from the caller's memory (one pwritev per run, the records' headers from
// the buffer and their payloads from where the caller holds them), which spares the copy of
// every raw byte; the caller's release runs once the run is written or dropped.
//
// Discard tombstones the batch's records already written (their bytes stay as dead space until
// Compact). Within the process a chunk is written once when possible: a batch's Put claims the
// chunk until Commit or Discard when no one else is writing it, and otherwise writes its own
// copy (the second to become visible is tombstoned as a duplicate). A plain Put of a chunk
// claimed by a batch waits for that batch's Commit or Discard (or its own context), whether the
// batch's record is written yet or still buffered; a Put of it in another batch never waits.
func (p *Pack) NewBatch() Batch {
	return &packBatch{p: p, pending: map[Digest]*packPending{}}
}

// PutBatch stores chunks in one batch, one after the other (see BatchPutter). For parallel
// encoding, use PutAll, which drives a batch with several workers.
func (p *Pack) PutBatch(ctx context.Context, chunks [][]byte, hint Hint) ([]Info, error) {
	return putAllInBatch(ctx, p.NewBatch(), chunks, hint)
}

// Coalescing of a batch's records (see Pack.NewBatch). Variables only so that
// BenchmarkPackCoalesce can compare settings side by side; nothing else changes them.
var (
	// coalesceSize is the size of a run at which it is written. On ext4, writing 22 MB in
	// 1 MiB pieces costs about a third of the CPU time of the same bytes in 22 KB records (8
	// against 21-25 ms; BenchmarkPackCoalesce shows the difference for a batch). A batch holds
	// one run buffer, plus one per run being written.
	coalesceSize = 1 << 20
	// coalesceMax: a record of this size or more is written alone at once, from the encoder's
	// buffer, instead of being copied into the run. The copy costs less than the pwrite it
	// saves up to records of 256 KiB at least (BenchmarkPackCoalesce, 22 MiB in 256 KiB
	// records: 26-29 CPU ms written one by one, 24.5-26.5 in runs); at 512 KiB it is even.
	coalesceMax = 512 << 10
)

// runPool holds run buffers. A run is written as soon as it reaches coalesceSize and a record
// of coalesceMax or more never enters it, so a buffer taken from the pool does not grow.
var runPool = sync.Pool{New: func() any {
	b := make([]byte, 0, coalesceSize+coalesceMax)
	return &b
}}

type packBatch struct {
	p *Pack

	mu      sync.Mutex // guards the fields below
	pending map[Digest]*packPending
	written []*packPending // chunks with a record awaiting Commit, in completion order
	closed  bool

	runMu   sync.Mutex // guards the fields below; held to append to the run or take it, never during I/O
	run     *[]byte    // the run's bytes held in memory (see runEntry); nil when the run is empty
	runEnts []runEntry // the run's records, in order (rec.pf nil: not placed)
	runLen  int64      // bytes of the run's records, retained payloads included
	runErr  error      // sticky: a run's write failed, so some acknowledged records are lost
}

// runEntry is one record of a run: its bytes run[lo:hi] (the header, and the payload unless
// retained) followed by the retained payload, if any, which stays the caller's memory until
// release is called.
type runEntry struct {
	rec     *packRecord
	lo, hi  int
	tail    []byte
	release func()
}

// retain is a PutRetained's offer of its data: add sets taken when the run keeps it.
type retain struct {
	data    []byte
	release func()
	taken   bool
}

// packPending is one chunk of a batch. done is closed once the Put that owns it finishes; the
// other fields are set before that and immutable after (release is cleared by releaseAll;
// rec's placement is set when its run is written, by a Put of the batch or by Commit).
type packPending struct {
	done    chan struct{}
	info    Info
	rec     *packRecord // nil when the chunk was already present
	release func()
	err     error
}

func (b *packBatch) Put(ctx context.Context, data []byte, hint Hint) (Info, error) {
	return b.putData(ctx, data, hint, nil)
}

// PutRetained is Put, except that a chunk stored raw stays in the caller's memory until its
// run is written (see Retainer).
func (b *packBatch) PutRetained(ctx context.Context, data []byte, hint Hint, release func()) (Info, error) {
	keep := &retain{data: data, release: release}
	defer keep.releaseUnlessTaken()
	return b.putData(ctx, data, hint, keep)
}

// putData is Put, offering data to the run when keep is not nil.
func (b *packBatch) putData(ctx context.Context, data []byte, hint Hint, keep *retain) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	if len(data) > MaxChunkSize {
		return Info{}, fmt.Errorf("put: %d bytes: %w (limit %d)", len(data), ErrTooLarge, MaxChunkSize)
	}
	d := Sum(data)
	return b.put(ctx, d, func(dst []byte) (Codec, int, []byte, []byte, error) {
		return encodeChunk(dst, d, data, hint)
	}, keep)
}

// releaseUnlessTaken releases the data when no run took it.
func (k *retain) releaseUnlessTaken() {
	if !k.taken {
		k.release()
	}
}

// Flush writes the run held in memory (see Retainer).
func (b *packBatch) Flush() error {
	if run, ents := b.takeRun(); run != nil {
		return b.writeRun(run, ents)
	}
	return b.failed()
}

// PutStoredRetained verifies a stored form and appends it from where the caller holds it (see
// Retainer).
func (b *packBatch) PutStoredRetained(ctx context.Context, d Digest, codec Codec, stored []byte, release func()) (Info, error) {
	keep := &retain{data: stored, release: release}
	defer keep.releaseUnlessTaken()
	return b.putStored(ctx, d, codec, stored, keep)
}

// PutStored verifies a stored form and appends it (see Batch.PutStored).
func (b *packBatch) PutStored(ctx context.Context, d Digest, codec Codec, stored []byte) (Info, error) {
	return b.putStored(ctx, d, codec, stored, nil)
}

// putStored is PutStored, offering stored to the run when keep is not nil.
func (b *packBatch) putStored(ctx context.Context, d Digest, codec Codec, stored []byte, keep *retain) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	return b.put(ctx, d, storedEncoder(d, codec, stored), keep)
}

// put stores d's record in the batch; keep, when not nil, offers the chunk's data to the run
// (see retain).
func (b *packBatch) put(ctx context.Context, d Digest, encode encodeFunc, keep *retain) (Info, error) {
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

	info, rec, err := b.write(d, encode, pp, keep)
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

// write adds d's record to the batch unless d is visible, claiming d when no one else in the
// process is writing it (pp.release is then set).
func (b *packBatch) write(d Digest, encode encodeFunc, pp *packPending, keep *retain) (Info, *packRecord, error) {
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
	info, rec, err := b.add(d, encode, keep)
	if err != nil {
		if pp.release != nil {
			pp.release()
			pp.release = nil
		}
		return Info{}, nil, err
	}
	return info, rec, nil
}

// add encodes d's record and appends it to the run, writing the run when it reaches
// coalesceSize; a record of coalesceMax or more is written alone at once. When keep offers
// the chunk's data and the record's payload is that data (a raw chunk), the run keeps a
// reference to it instead of a copy. The record returned may not be placed yet.
func (b *packBatch) add(d Digest, encode encodeFunc, keep *retain) (Info, *packRecord, error) {
	if err := b.failed(); err != nil {
		return Info{}, nil, fmt.Errorf("put %s: %w", d, err)
	}
	buf := getBuf(64 << 10)
	defer putBuf(buf)
	rec, out, tail, err := encodeRecord(d, encode, buf)
	if err != nil {
		return Info{}, nil, err
	}
	info := rec.entry.info(d)
	if rec.entry.recordLen() >= int64(coalesceMax) {
		if err := b.p.writeRecord(rec, out, tail); err != nil {
			return Info{}, nil, err
		}
		return info, rec, nil
	}
	b.runMu.Lock()
	if b.runErr != nil {
		b.runMu.Unlock()
		return Info{}, nil, fmt.Errorf("put %s: %w", d, b.runErr)
	}
	if b.run == nil {
		b.run = runPool.Get().(*[]byte)
	}
	e := runEntry{rec: rec, lo: len(*b.run)}
	*b.run = append(*b.run, out...)
	if keep != nil && len(tail) > 0 && len(tail) == len(keep.data) && &tail[0] == &keep.data[0] {
		e.tail, e.release, keep.taken = tail, keep.release, true
	} else {
		*b.run = append(*b.run, tail...)
	}
	e.hi = len(*b.run)
	b.runEnts = append(b.runEnts, e)
	b.runLen += rec.entry.recordLen()
	var full *[]byte
	var ents []runEntry
	if b.runLen >= int64(coalesceSize) {
		full, ents = b.run, b.runEnts
		b.run, b.runEnts, b.runLen = nil, nil, 0
	}
	b.runMu.Unlock()
	if full != nil {
		if err := b.writeRun(full, ents); err != nil {
			if rec.pf != nil { // written before the failure, but this Put fails: never published
				b.p.drop([]*packRecord{rec})
			}
			return Info{}, nil, fmt.Errorf("put %s: %w", d, err)
		}
	}
	return info, rec, nil
}

// failed returns the batch's sticky error.
func (b *packBatch) failed() error {
	b.runMu.Lock()
	defer b.runMu.Unlock()
	return b.runErr
}

// writeRun writes a run taken from the batch, releases its retained payloads and returns its
// buffer to the pool; a failure breaks the batch.
func (b *packBatch) writeRun(run *[]byte, ents []runEntry) error {
	err := b.p.writeRun(*run, ents)
	releaseRun(run, ents)
	if err != nil {
		b.runMu.Lock()
		if b.runErr == nil {
			b.runErr = err
		}
		b.runMu.Unlock()
	}
	return err
}

// releaseRun lets go of a run that was written or dropped: its retained payloads go back to
// their owners and its buffer to the pool.
func releaseRun(run *[]byte, ents []runEntry) {
	for _, e := range ents {
		if e.release != nil {
			e.release()
		}
	}
	*run = (*run)[:0]
	runPool.Put(run)
}

// takeRun empties the run and returns what it held (nil when empty).
func (b *packBatch) takeRun() (*[]byte, []runEntry) {
	b.runMu.Lock()
	defer b.runMu.Unlock()
	run, ents := b.run, b.runEnts
	b.run, b.runEnts, b.runLen = nil, nil, 0
	return run, ents
}

// dropRun forgets the records still in the run: nothing of them was written.
func (b *packBatch) dropRun() {
	if run, ents := b.takeRun(); run != nil {
		releaseRun(run, ents)
	}
}

// placed returns the records of written that were written to a pack.
func placed(written []*packPending) []*packRecord {
	recs := make([]*packRecord, 0, len(written))
	for _, pp := range written {
		if pp.rec.pf != nil {
			recs = append(recs, pp.rec)
		}
	}
	return recs
}

func (b *packBatch) Commit(ctx context.Context) error {
	_, err := b.commit(ctx, nil)
	return err
}

// CommitJournal is Commit with a journal entry carrying payload written after the batch's
// chunks and made durable by the same sync (see JournalBatch).
func (b *packBatch) CommitJournal(ctx context.Context, payload []byte) (release func(), err error) {
	if len(payload) > MaxJournalSize {
		b.Discard()
		return nil, fmt.Errorf("commit journal entry of %d bytes: over the %d-byte limit", len(payload), MaxJournalSize)
	}
	if payload == nil {
		payload = []byte{}
	}
	jr, err := b.commit(ctx, payload)
	if err != nil {
		return nil, err
	}
	var once sync.Once
	return func() { once.Do(func() { b.p.unpin(jr) }) }, nil
}

// commit is Commit, and with journal non-nil CommitJournal: the entry is written after the
// chunks' last run, and synced last, so that it is never durable without them. The journal
// entry's record is returned still pinned.
func (b *packBatch) commit(ctx context.Context, journal []byte) (*packRecord, error) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, fmt.Errorf("commit: %w", ErrBatchClosed)
	}
	b.closed = true
	written := b.written
	b.written = nil
	b.mu.Unlock()
	defer b.releaseAll()
	if err := ctx.Err(); err != nil {
		b.dropRun()
		b.p.drop(placed(written))
		return nil, err
	}
	if run, ents := b.takeRun(); run != nil {
		b.writeRun(run, ents) // a failure is the batch's sticky error, checked next
	}
	recs := placed(written)
	if err := b.failed(); err != nil {
		b.p.drop(recs)
		return nil, fmt.Errorf("commit %d chunks: %w", len(written), err)
	}
	var jr *packRecord
	if journal != nil {
		var err error
		if jr, err = b.p.writeJournal(journal); err != nil {
			b.p.drop(recs)
			return nil, fmt.Errorf("commit %d chunks: %w", len(recs), err)
		}
	}
	if len(recs) == 0 && jr == nil {
		return nil, nil
	}
	ends := map[*packFile]int64{}
	for _, r := range recs {
		ends[r.pf] = max(ends[r.pf], r.end())
	}
	// The chunks' packs first, the journal entry's last: an entry made durable vouches for
	// chunks already durable.
	fail := func(err error) (*packRecord, error) {
		b.p.drop(recs)
		if jr != nil {
			b.p.cancelJournal(jr)
		}
		return nil, fmt.Errorf("commit %d chunks: %w", len(recs), err)
	}
	for pf, end := range ends {
		if jr != nil && pf == jr.pf {
			continue
		}
		if err := b.p.waitDurable(pf, end); err != nil {
			return fail(err)
		}
	}
	if jr != nil {
		if err := b.p.waitDurable(jr.pf, max(ends[jr.pf], jr.end())); err != nil {
			return fail(err)
		}
	}
	b.p.publish(recs)
	return jr, nil
}

// writeJournal appends a journal entry carrying payload, without syncing. The record is placed
// and pinned.
func (p *Pack) writeJournal(payload []byte) (*packRecord, error) {
	now := time.Now().UnixNano()
	d := Sum(payload)
	rec := &packRecord{digest: d, entry: packEntry{length: uint32(len(payload)), mod: now}}
	hdr := make([]byte, packHeaderSize)
	(&recordHeader{kind: kindJournal, digest: d, b: uint32(len(payload)), time: now}).encode(hdr)
	if err := p.writeRecord(rec, hdr, payload); err != nil {
		return nil, fmt.Errorf("journal entry: %w", err)
	}
	return rec, nil
}

// cancelJournal unpins a journal entry whose commit failed and tombstones it, so that a reopen
// never finds it (best effort: its pack is broken, so the tombstone goes to another).
func (p *Pack) cancelJournal(jr *packRecord) {
	p.unpin(jr)
	p.writeMeta(nil, recordHeader{kind: kindTombstone, digest: jr.digest, a: uint64(jr.entry.off), b: jr.entry.pack, time: time.Now().UnixNano()})
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
	b.dropRun()
	b.p.drop(placed(written))
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
