// Package repo is a driftstore data directory: the chunk store and the index opened together,
// and the pipelines that move whole byte streams in and out of them.
//
// # Layout
//
//	DIR/packs      the chunk store of a data directory made by this version (cas.Pack: chunks
//	               appended to pack files, an in-memory index built at open)
//	DIR/chunks     the chunk store of a data directory made before packs (cas.Local: one file
//	               per chunk); a directory where DIR/chunks exists keeps using it
//	DIR/index.db   the bbolt index (package index)
//	DIR/models     models (not touched here)
//	DIR/cache      caches (not touched here)
//
// # Ingest and crash safety
//
// Put cuts each input into chunks (FastCDC by default, or fixed-size), stores them in parallel
// with a bounded worker pool (each chunk durable and verified before it is visible under its
// name), records them in the index, and only then commits a manifest with one region per
// input. A process killed at any point leaves chunks without records, or records without a
// manifest: garbage for GC, never a manifest naming something absent, so fsck stays clean.
//
// # Concurrency
//
// One process at a time opens a data directory (the pack store's flock on DIR/packs/LOCK, then
// bbolt's file lock); a second gets ErrInUse quickly. Within the process a Repo is safe for
// concurrent use.
package repo

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/index"
)

// ErrInUse: another process has the data directory open. The error also wraps the lock's own
// error: cas.ErrLocked (the pack store's lock) or index.ErrLocked (bbolt's).
var ErrInUse = errors.New("data directory is in use by another driftstore process (a daemon?): use --server URL")

// Options configure Open. The zero value is usable.
type Options struct {
	// LockTimeout bounds the wait for another process to let go of the directory; 0 means
	// index.DefaultLockTimeout.
	LockTimeout time.Duration
	// ReadOnly opens the index with a shared lock and refuses writes.
	ReadOnly bool
	// NoSync skips fsync in the index and the chunk store (tests and benchmarks only: a crash
	// may lose data).
	NoSync bool
	// Workers bounds the chunks stored or fetched at once; 0 means GOMAXPROCS.
	Workers int
	// Now is the index's clock, for tests; nil means time.Now.
	Now func() time.Time
}

// Repo is an open data directory. Close it when done.
type Repo struct {
	dir     string
	local   cas.Store // the chunk store on this machine's disk: a *cas.Pack or a *cas.Local
	ix      *index.Index
	workers int
	ro      bool // opened read-only: Put refuses before storing anything
}

// Open opens the data directory dir, creating it if needed (unless opts.ReadOnly). When another
// process holds it, Open fails within about opts.LockTimeout with an error wrapping ErrInUse.
func Open(dir string, opts Options) (*Repo, error) {
	if !opts.ReadOnly {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("open data directory: %w", err)
		}
	} else if _, err := os.Stat(filepath.Join(dir, "index.db")); err != nil {
		return nil, fmt.Errorf("open data directory %s read-only: %w", dir, err)
	}
	local, err := openStore(dir, opts)
	if err != nil {
		if errors.Is(err, cas.ErrLocked) {
			return nil, fmt.Errorf("%s: %w (%w)", dir, ErrInUse, err)
		}
		return nil, fmt.Errorf("open data directory %s: %w", dir, err)
	}
	ix, err := index.Open(filepath.Join(dir, "index.db"), local, index.Options{
		LockTimeout: opts.LockTimeout, ReadOnly: opts.ReadOnly, NoSync: opts.NoSync, Now: opts.Now,
	})
	if err != nil {
		closeStore(local)
		if errors.Is(err, index.ErrLocked) {
			return nil, fmt.Errorf("%s: %w (%w)", dir, ErrInUse, err)
		}
		return nil, fmt.Errorf("open data directory %s: %w", dir, err)
	}
	w := opts.Workers
	if w <= 0 {
		w = runtime.GOMAXPROCS(0)
	}
	return &Repo{dir: dir, local: local, ix: ix, workers: w, ro: opts.ReadOnly}, nil
}

// ChunkStoreDir returns the chunk store directory of data directory dir: DIR/chunks when it
// exists (a data directory made before pack files, which keeps its cas.Local), otherwise
// DIR/packs (a cas.Pack).
func ChunkStoreDir(dir string) string {
	legacy := filepath.Join(dir, "chunks")
	if st, err := os.Stat(legacy); err == nil && st.IsDir() {
		return legacy
	}
	return filepath.Join(dir, "packs")
}

// openStore opens the chunk store of data directory dir (see ChunkStoreDir).
func openStore(dir string, opts Options) (cas.Store, error) {
	sdir := ChunkStoreDir(dir)
	if filepath.Base(sdir) == "chunks" {
		return cas.OpenLocal(sdir, cas.LocalOptions{NoSync: opts.NoSync})
	}
	timeout := opts.LockTimeout
	if timeout <= 0 {
		timeout = index.DefaultLockTimeout
	}
	return cas.OpenPack(sdir, cas.PackOptions{NoSync: opts.NoSync, ReadOnly: opts.ReadOnly, LockTimeout: timeout})
}

// closeStore closes the store when it has a Close method.
func closeStore(s any) error {
	if c, ok := s.(interface{ Close() error }); ok {
		return c.Close()
	}
	return nil
}

// Close closes the index and the store. The Repo must not be used afterwards.
func (r *Repo) Close() error {
	err := r.ix.Close()
	return errors.Join(err, closeStore(r.local))
}

// Dir returns the data directory.
func (r *Repo) Dir() string { return r.dir }

// Index returns the index, for callers that need refs, GC or fsck directly.
func (r *Repo) Index() *index.Index { return r.ix }

// Store returns the chunk store.
func (r *Repo) Store() cas.Store { return r.local }

// GCResult is index.GCResult plus what the chunk store's own clean-up did: temporary files
// removed (cas.Local) or pack files compacted (cas.Pack).
type GCResult struct {
	index.GCResult
	TempFiles      int   `json:"temp_files_deleted"`
	PacksCompacted int   `json:"packs_compacted"`
	BytesReclaimed int64 `json:"bytes_reclaimed"` // pack bytes removed less bytes copied
}

// GC collects garbage (see index.Index.GC), then lets the chunk store reclaim space: a store
// with temporary files (cas.Local) removes those that interrupted writers left, when older than
// the grace period (at least a minute); a store with Compact (cas.Pack) rewrites the pack files
// that are more than half dead.
func (r *Repo) GC(ctx context.Context, opts index.GCOptions) (GCResult, error) {
	res, err := r.ix.GC(ctx, opts)
	out := GCResult{GCResult: res}
	if err != nil || opts.DryRun {
		return out, err
	}
	if c, ok := r.local.(interface {
		CleanTemp(context.Context, time.Duration) (int, error)
	}); ok {
		age := opts.Grace
		if age == 0 {
			age = index.DefaultGrace
		}
		if out.TempFiles, err = c.CleanTemp(ctx, max(age, time.Minute)); err != nil {
			return out, err
		}
	}
	if c, ok := r.local.(interface {
		Compact(context.Context) (cas.CompactStats, error)
	}); ok {
		st, err := c.Compact(ctx)
		out.PacksCompacted, out.BytesReclaimed = st.Packs, st.BytesReclaimed
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// Fsck checks the data directory; see index.Index.Fsck.
func (r *Repo) Fsck(ctx context.Context, opts index.FsckOptions) (*index.FsckResult, error) {
	if opts.Workers <= 0 {
		opts.Workers = r.workers
	}
	return r.ix.Fsck(ctx, opts)
}
