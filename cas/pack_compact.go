package cas

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"slices"
)

// CompactStats says what a Compact did.
type CompactStats struct {
	Packs          int   `json:"packs_compacted"` // pack files rewritten and removed
	RecordsMoved   int   `json:"records_moved"`   // live chunk records (and needed tombstones) copied
	BytesReclaimed int64 `json:"bytes_reclaimed"` // file bytes removed less bytes copied
}

// Compact reclaims the space of deleted chunks: every sealed pack whose dead bytes (deleted or
// duplicate records, tombstones, sync markers) exceed half its size has its live chunk records,
// and the tombstones still needed (those removing a record of a pack that stays), copied into
// the active pack with their write times; the copies are synced, the index moved to them, and
// then the old pack files are removed, oldest first, and the directory synced. The active pack
// is sealed first (a new one started) when it qualifies itself. Packs with records being
// written or awaiting a batch's Commit are left for a later Compact; a damaged pack (see the
// layout in pack.go) is never compacted.
//
// Safe for concurrent use with every other method: Gets of a moved chunk read the old copy
// until the index points to the new one, and a pack file is closed only when no read of it is
// in progress. A crash at any point leaves every chunk readable (at worst in two copies, of
// which the next open tombstones one). One Compact runs at a time.
func (p *Pack) Compact(ctx context.Context) (CompactStats, error) {
	var st CompactStats
	p.compactMu.Lock()
	defer p.compactMu.Unlock()
	if err := ctx.Err(); err != nil {
		return st, err
	}
	p.mu.Lock()
	if err := p.writableLocked(); err != nil {
		p.mu.Unlock()
		return st, fmt.Errorf("compact: %w", err)
	}
	if a := p.active; a != nil && a.size > 0 && 2*(a.size-a.live) > a.size && a.pins == 0 && len(a.pending) == 0 {
		if _, err := p.newPackLocked(); err != nil {
			p.mu.Unlock()
			return st, fmt.Errorf("compact: %w", err)
		}
	}
	var cands []*packFile
	sizes := map[*packFile]int64{} // a candidate's size does not change: nothing writes to it
	for _, pf := range p.packs {
		if pf != p.active && pf.pins == 0 && len(pf.pending) == 0 && pf.err == nil && !pf.damaged && 2*(pf.size-pf.live) > pf.size {
			cands = append(cands, pf)
			sizes[pf] = pf.size
		}
	}
	p.mu.Unlock()
	if len(cands) == 0 {
		return st, nil
	}
	slices.SortFunc(cands, func(a, b *packFile) int { return int(a.num) - int(b.num) })
	going := map[uint32]bool{}
	for _, pf := range cands {
		going[pf.num] = true
	}

	type move struct {
		old packEntry
		rec *packRecord // the copy; nil for a tombstone copy
	}
	var moves []move
	touched := map[*packFile]int64{}
	fail := func(err error) (CompactStats, error) {
		var recs []*packRecord
		for _, m := range moves {
			if m.rec != nil {
				recs = append(recs, m.rec)
			}
		}
		p.drop(recs)
		return st, fmt.Errorf("compact: %w", err)
	}
	for _, pf := range cands {
		if err := ctx.Err(); err != nil {
			return fail(err)
		}
		recs, _, _, err := scanPack(pf.f, 0, sizes[pf])
		if err != nil {
			return fail(fmt.Errorf("%s: %w", pf.path, err))
		}
		for _, r := range recs {
			switch r.h.kind {
			case kindChunk:
				p.mu.RLock()
				e, ok := p.index[r.h.digest]
				p.mu.RUnlock()
				if !ok || e.pack != pf.num || e.off != r.off {
					continue // deleted or a duplicate
				}
				rec, err := p.copyRecord(pf, r)
				if err != nil {
					return fail(err)
				}
				moves = append(moves, move{old: e, rec: rec})
				touched[rec.pf] = max(touched[rec.pf], rec.end())
			case kindTombstone:
				p.mu.RLock()
				_, targetStays := p.packs[r.h.b]
				p.mu.RUnlock()
				if !targetStays || going[r.h.b] {
					continue
				}
				tpf, end, err := p.writeMetaAt(nil, r.h)
				if err != nil {
					return fail(err)
				}
				touched[tpf] = max(touched[tpf], end)
				st.RecordsMoved++
			}
		}
	}
	for pf, end := range touched {
		if err := p.waitDurable(pf, end); err != nil {
			return fail(err)
		}
	}

	// Point the index at the copies; a chunk deleted or replaced meanwhile leaves its copy dead.
	var dead []*packRecord
	p.mu.Lock()
	for _, m := range moves {
		r := m.rec
		r.pf.pins--
		e, ok := p.index[r.digest]
		if !ok || e.pack != m.old.pack || e.off != m.old.off {
			dead = append(dead, r)
			continue
		}
		ne := r.entry
		ne.mod = max(e.mod, ne.mod) // keep a refresh made meanwhile
		p.index[r.digest] = ne
		r.pf.live += ne.recordLen()
		st.RecordsMoved++
	}
	for _, pf := range cands {
		delete(p.packs, pf.num)
	}
	p.cond.Broadcast()
	p.mu.Unlock()
	for _, r := range dead {
		if err := p.appendTombstone(r.digest, r.entry); err != nil {
			return st, fmt.Errorf("compact: %w", err)
		}
	}
	var copied int64
	for _, m := range moves {
		copied += m.rec.entry.recordLen()
	}
	var errs []error
	for _, pf := range cands { // oldest first: a tombstone never outlives the pack it targets
		pf.rw.Lock()
		if !pf.closed {
			pf.closed = true
			errs = append(errs, pf.unmap(), pf.f.Close())
		}
		pf.rw.Unlock()
		if err := os.Remove(pf.path); err != nil {
			errs = append(errs, err)
			continue
		}
		st.Packs++
		st.BytesReclaimed += sizes[pf]
	}
	st.BytesReclaimed -= copied
	if !p.opts.NoSync {
		errs = append(errs, syncDirPath(p.dir))
	}
	if err := errors.Join(errs...); err != nil {
		return st, fmt.Errorf("compact: %w", err)
	}
	return st, nil
}

// copyRecord appends a copy of chunk record r of pf (header fields and payload as they are,
// write time included) to the active pack, without syncing. The copy is pinned.
func (p *Pack) copyRecord(pf *packFile, r scannedRecord) (*packRecord, error) {
	d := r.h.digest
	buf := getBuf(packHeaderSize + int(r.h.b))
	defer putBuf(buf)
	b := (*buf)[:packHeaderSize+int(r.h.b)]
	if err := readAt(pf, d, b[packHeaderSize:], r.off+packHeaderSize); err != nil {
		return nil, err
	}
	if h := r.h; h.sealed && crc32.Checksum(b[packHeaderSize:], castagnoli) != h.crc {
		return nil, &CorruptError{Digest: d, Reason: fmt.Sprintf("payload in %s at %d does not match its seal", pf.path, r.off)}
	}
	n := int64(len(b))
	p.mu.Lock()
	npf, off, err := p.reserve(n, true)
	p.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("copy %s: %w", d, err)
	}
	h := r.h
	h.encode(b[:packHeaderSize])
	werr := pwriteRecord(npf, b, nil, off)
	p.finishWrite(npf, off, werr)
	rec := &packRecord{pf: npf, digest: d, entry: packEntry{
		pack: npf.num, off: off, length: h.b, size: uint32(h.a), codec: h.codec, sealed: h.sealed, crc: h.crc, mod: h.time,
	}}
	if werr != nil {
		p.unpin(rec)
		return nil, fmt.Errorf("copy %s: %w", d, werr)
	}
	return rec, nil
}
