package index

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/driftstore/driftstore/cas"
)

// DefaultGrace is how long garbage collection leaves unreferenced manifests and chunks alone: an
// upload stores its chunks first and names them in a manifest later, and must not lose them in
// between.
const DefaultGrace = time.Hour

// GCOptions configure GC.
type GCOptions struct {
	// Grace: manifests put, and chunks recorded or written, less than Grace ago survive even when
	// unreferenced. Zero means DefaultGrace; negative means no grace at all, which is safe only
	// when no other writer uses the store.
	Grace time.Duration
	// DryRun reports what would be deleted and deletes nothing.
	DryRun bool
}

// GCResult counts what garbage collection kept and removed.
type GCResult struct {
	ManifestsKept    int   `json:"manifests_kept"`
	ManifestsDeleted int   `json:"manifests_deleted"`
	ChunksKept       int   `json:"chunks_kept"`
	ChunksDeleted    int   `json:"chunks_deleted"`     // recorded chunks removed (record and store)
	UnrecordedChunks int   `json:"unrecorded_deleted"` // store-only chunks left by interrupted writers, removed
	BytesFreed       int64 `json:"bytes_freed"`        // stored bytes of the removed chunks
	DryRun           bool  `json:"dry_run"`
}

// GC collects garbage by mark and sweep.
//
// Mark: the roots are every ref's target and every manifest put within the grace period. From
// each root it follows the parent chain, so a ref keeps its manifest's whole ancestry (a
// session's earlier checkpoints, which forks and restores may name later). A ref's history log is
// not a root: a manifest only the log names is collected. Every chunk a marked manifest names is
// marked. A marked manifest that cannot be read stops GC with an error (its chunks are unknown).
//
// Sweep, in one index transaction: unmarked manifests put before the grace period, and
// unmarked chunk records recorded before it; then, after the commit, those chunks are deleted
// from the store, followed by store chunks that have no record and were written before the grace
// period. A crash between the commit and the store deletions leaves unrecorded chunks, which the
// next GC removes. GC excludes writers that hold HoldGC for its whole run.
func (ix *Index) GC(ctx context.Context, opts GCOptions) (GCResult, error) {
	grace := opts.Grace
	if grace == 0 {
		grace = DefaultGrace
	}
	if grace < 0 {
		grace = 0
	}
	res := GCResult{DryRun: opts.DryRun}
	ix.gcMu.Lock()
	defer ix.gcMu.Unlock()
	cutoff := ix.now().Add(-grace)

	var doomed []cas.Digest // recorded chunks to delete from the store after the commit
	recorded := make(map[cas.Digest]struct{})
	err := ix.update(func(tx *bolt.Tx) error {
		mb, mt, cb := tx.Bucket(bucketManifests), tx.Bucket(bucketMtimes), tx.Bucket(bucketChunks)
		liveM := make(map[ID]struct{})
		liveC := make(map[cas.Digest]struct{})
		var stack []ID
		refs := tx.Bucket(bucketRefs)
		if err := refs.ForEach(func(k, v []byte) error {
			r, err := decodeRef(k, v)
			if err != nil {
				return err
			}
			stack = append(stack, r.Target)
			return nil
		}); err != nil {
			return err
		}
		if err := mt.ForEach(func(k, v []byte) error {
			id, ok := digestKey(k)
			if ok && len(v) == 8 && getTime(v).After(cutoff) {
				stack = append(stack, id)
			}
			return nil
		}); err != nil {
			return err
		}
		for len(stack) > 0 {
			if err := ctxErr(ctx); err != nil {
				return err
			}
			id := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if _, done := liveM[id]; done {
				continue
			}
			liveM[id] = struct{}{}
			v := mb.Get(id[:])
			if v == nil {
				continue // a dangling ref or parent: fsck reports it; nothing to keep
			}
			if bytes.HasPrefix(v, []byte(deltaMagic)) && len(v) >= len(deltaMagic)+32 {
				// The base of a delta form is an ancestor, kept anyway; marked here too, so
				// that a kept manifest can always be rebuilt.
				stack = append(stack, ID(v[len(deltaMagic):len(deltaMagic)+32]))
			}
			v, err := storedBytes(mb, v)
			if err != nil {
				return fmt.Errorf("%w: manifest %s: %w; run fsck", ErrCorruptIndex, id, err)
			}
			if cas.Sum(v) != id {
				return fmt.Errorf("%w: manifest %s: stored bytes do not match the ID; run fsck", ErrCorruptIndex, id)
			}
			m, err := Decode(v)
			if err != nil {
				return fmt.Errorf("%w: manifest %s: %w; run fsck", ErrCorruptIndex, id, err)
			}
			for _, r := range m.Regions {
				for _, c := range r.Chunks {
					liveC[c.Digest] = struct{}{}
				}
			}
			if !m.Parent.IsZero() {
				stack = append(stack, m.Parent)
			}
		}

		// Sweep manifests (collect first: bbolt forbids deleting while iterating).
		var deadM [][]byte
		total := 0
		if err := mb.ForEach(func(k, _ []byte) error {
			total++
			id, ok := digestKey(k)
			if !ok {
				return nil
			}
			if _, live := liveM[id]; !live {
				deadM = append(deadM, append([]byte(nil), k...))
			}
			return nil
		}); err != nil {
			return err
		}
		res.ManifestsKept = total - len(deadM)
		res.ManifestsDeleted = len(deadM)
		var deadC [][]byte
		if err := cb.ForEach(func(k, v []byte) error {
			d, ok := digestKey(k)
			if !ok {
				return fmt.Errorf("%w: chunk key %x", ErrCorruptIndex, k)
			}
			rec, err := decodeChunkRecord(d, v)
			if err != nil {
				return err
			}
			if _, live := liveC[d]; live || rec.Recorded.After(cutoff) {
				recorded[d] = struct{}{}
				res.ChunksKept++
				return nil
			}
			deadC = append(deadC, append([]byte(nil), k...))
			doomed = append(doomed, d)
			res.BytesFreed += rec.StoredSize
			return nil
		}); err != nil {
			return err
		}
		res.ChunksDeleted = len(deadC)
		if opts.DryRun {
			return errDryRun
		}
		for _, k := range deadM {
			if err := mb.Delete(k); err != nil {
				return err
			}
			if err := mt.Delete(k); err != nil {
				return err
			}
		}
		for _, k := range deadC {
			if err := cb.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, errDryRun) {
		return res, fmt.Errorf("gc: %w", err)
	}
	if !opts.DryRun {
		for _, d := range doomed {
			if err := ix.store.Delete(ctx, d); err != nil {
				return res, fmt.Errorf("gc: delete chunk %s: %w", d, err)
			}
		}
	}
	// Store chunks with no record: left by writers that stopped before recording them.
	dead := make(map[cas.Digest]struct{}, len(doomed))
	for _, d := range doomed {
		dead[d] = struct{}{}
	}
	var stray []cas.Info
	err = ix.store.Walk(ctx, func(in cas.Info) error {
		if _, ok := recorded[in.Digest]; ok {
			return nil
		}
		if _, ok := dead[in.Digest]; ok {
			return nil
		}
		if in.ModTime.After(cutoff) {
			return nil
		}
		stray = append(stray, in)
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("gc: walk store: %w", err)
	}
	for _, in := range stray {
		if !opts.DryRun {
			if err := ix.store.Delete(ctx, in.Digest); err != nil {
				return res, fmt.Errorf("gc: delete unrecorded chunk %s: %w", in.Digest, err)
			}
		}
		res.UnrecordedChunks++
		res.BytesFreed += in.StoredSize
	}
	return res, nil
}

var errDryRun = errors.New("dry run")
