// Package index is driftstore's catalogue, kept in one bbolt file: a record for every chunk in
// the chunk store, the manifests that arrange chunks into regions, and named refs (sessions and
// tags) that point at manifests, with their history. Garbage collection and fsck live here too,
// because only the index knows what is reachable.
//
// # Schema (version 1)
//
//	meta       "schema" → uvarint schema version
//	chunks     digest (32) → chunk record: raw size, stored size (8+8 bytes BE), codec (1),
//	           time recorded (8, Unix ns BE)
//	manifests  ID (32) → canonical manifest bytes (see Manifest)
//	mtimes     ID (32) → time the manifest was put (8, Unix ns BE)
//	refs       kind byte + name → ID (32)
//	history    kind byte + name → nested bucket: sequence (8 BE) → time (8) + old ID + new ID
//
// An index whose schema version is newer than this code knows is refused (ErrSchemaTooNew); an
// empty file is initialised.
//
// # Invariants
//
// Every chunk record names a chunk present in the store (chunks are stored durably before they
// are recorded, and garbage collection deletes the record before the chunk). Every manifest
// names only recorded chunks and an existing parent. A chunk in the store without a record is
// garbage left by an interrupted writer, not an error; GC removes it after the grace period.
//
// # Concurrency
//
// bbolt allows one process at a time to open the file for writing; Open waits at most
// Options.LockTimeout and then fails with ErrLocked. Within a process every method is safe for
// concurrent use. Writers that put chunks into the store and then record them hold
// HoldGC across both steps, so that garbage collection cannot delete a chunk between the moment a
// writer found it present and the moment the writer recorded it.
package index

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/driftstore/driftstore/cas"
)

// SchemaVersion is the schema this code writes and reads: 2 since manifests may be stored in
// delta form (delta.go); an index of schema 1 is upgraded when opened for writing.
const SchemaVersion = 2

var (
	bucketMeta      = []byte("meta")
	bucketChunks    = []byte("chunks")
	bucketManifests = []byte("manifests")
	bucketMtimes    = []byte("mtimes")
	bucketRefs      = []byte("refs")
	bucketHistory   = []byte("history")
	keySchema       = []byte("schema")
)

// Sentinel errors. Methods wrap them with context; test with errors.Is.
var (
	// ErrLocked: another process holds the index open for writing.
	ErrLocked = errors.New("index is locked by another process")
	// ErrSchemaTooNew: the index was written by a newer driftstore.
	ErrSchemaTooNew = errors.New("index schema is newer than this driftstore understands")
	// ErrCorruptIndex: an index entry does not decode, or a manifest's bytes do not hash to its ID.
	ErrCorruptIndex = errors.New("index entry corrupt")
	// ErrManifestNotFound: no manifest with this ID.
	ErrManifestNotFound = errors.New("manifest not found")
	// ErrChunkNotRecorded: no chunk record for this digest.
	ErrChunkNotRecorded = errors.New("chunk not recorded")
	// ErrMissingChunks: a manifest names chunks the index has no record of. Returned wrapped in a
	// *MissingChunksError that lists them.
	ErrMissingChunks = errors.New("manifest names chunks that are not recorded")
	// ErrMissingParent: a manifest's parent is not in the index.
	ErrMissingParent = errors.New("manifest parent not found")
	// ErrRefNotFound: no ref of this kind and name.
	ErrRefNotFound = errors.New("ref not found")
	// ErrBadRefName: a ref name breaks the naming rules (see ValidRefName).
	ErrBadRefName = errors.New("bad ref name")
	// ErrConflict: a compare-and-swap found the ref not at the expected ID; nothing changed.
	ErrConflict = errors.New("ref changed concurrently")
	// ErrReadOnly: a write on an index opened read-only.
	ErrReadOnly = errors.New("index is open read-only")
)

// MissingChunksError lists the chunks a refused manifest names but the index has not recorded.
type MissingChunksError struct {
	Missing []cas.Digest
}

func (e *MissingChunksError) Error() string {
	if len(e.Missing) == 1 {
		return fmt.Sprintf("%v: %s", ErrMissingChunks, e.Missing[0])
	}
	return fmt.Sprintf("%v: %d chunks, first %s", ErrMissingChunks, len(e.Missing), e.Missing[0])
}

// Unwrap makes errors.Is(err, ErrMissingChunks) true.
func (e *MissingChunksError) Unwrap() error { return ErrMissingChunks }

// Options configure Open. The zero value is usable.
type Options struct {
	// LockTimeout bounds the wait for the file lock; 0 means DefaultLockTimeout.
	LockTimeout time.Duration
	// ReadOnly opens the file with a shared lock; every write returns ErrReadOnly.
	ReadOnly bool
	// NoSync skips fsync on commit. Only for tests and benchmarks: a crash may lose commits.
	NoSync bool
	// Now is the clock, for tests; nil means time.Now.
	Now func() time.Time
}

// DefaultLockTimeout is how long Open waits for another process to let go of the index.
const DefaultLockTimeout = 500 * time.Millisecond

// Index is an open index file bound to a chunk store. Close it when done.
type Index struct {
	db    *bolt.DB
	store cas.Store
	now   func() time.Time
	path  string

	// gcMu guards the window between a writer finding a chunk present in the store and recording
	// it: writers hold it shared (HoldGC), garbage collection's sweep holds it exclusively.
	gcMu sync.RWMutex

	// recentMu guards recent: the last few manifests committed through this Index, newest
	// last (see remember). A manifest's ID is the hash of the encoding of exactly its regions,
	// so they are what its stored bytes would decode to: a child's commit takes its parent's
	// regions from here instead of rebuilding and decoding the parent's stored bytes inside
	// the write transaction, and takes the base of its delta form from here (delta.go).
	recentMu sync.Mutex
	recent   []recentManifest

	j journal // see journal.go
}

// recentManifest is one entry of Index.recent. Its slices are never modified.
type recentManifest struct {
	id      ID
	regions []Region
	base    ID        // the base of its delta form; zero when stored full
	full    []byte    // stored full: its canonical encoding
	layout  refLayout // stored full: where its chunk references lie in full
}

// recentManifests is how many manifests Index.recent keeps (a few sessions checkpointing in
// turn each find their parent and its base there).
const recentManifests = 16

// remember records e as the newest recent manifest.
func (ix *Index) remember(e recentManifest) {
	ix.recentMu.Lock()
	defer ix.recentMu.Unlock()
	for i, r := range ix.recent {
		if r.id == e.id {
			ix.recent = append(ix.recent[:i], ix.recent[i+1:]...)
			break
		}
	}
	if len(ix.recent) >= recentManifests {
		ix.recent = append(ix.recent[:0], ix.recent[1:]...)
	}
	ix.recent = append(ix.recent, e)
}

// recentManifest returns manifest id's entry if this Index committed it recently.
func (ix *Index) recentManifest(id ID) (recentManifest, bool) {
	ix.recentMu.Lock()
	defer ix.recentMu.Unlock()
	for _, r := range ix.recent {
		if r.id == id {
			return r, true
		}
	}
	return recentManifest{}, false
}

// Open opens (creating if needed) the index file at path, bound to store, which garbage
// collection and fsck read and delete from. A file held by another process gives ErrLocked
// after opts.LockTimeout; a file with a newer schema gives ErrSchemaTooNew.
func Open(path string, store cas.Store, opts Options) (*Index, error) {
	timeout := opts.LockTimeout
	if timeout <= 0 {
		timeout = DefaultLockTimeout
	}
	mode := os.FileMode(0o600)
	if opts.ReadOnly {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("open index %s read-only: %w", path, err)
		}
	}
	db, err := bolt.Open(path, mode, &bolt.Options{Timeout: timeout, ReadOnly: opts.ReadOnly, NoSync: opts.NoSync})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("open index %s: %w (waited %v)", path, ErrLocked, timeout)
		}
		return nil, fmt.Errorf("open index %s: %w", path, err)
	}
	ix := &Index{db: db, store: store, now: opts.Now, path: path}
	if ix.now == nil {
		ix.now = time.Now
	}
	if err := ix.initSchema(opts.ReadOnly); err != nil {
		db.Close()
		return nil, fmt.Errorf("open index %s: %w", path, err)
	}
	if err := ix.initJournal(opts.ReadOnly); err != nil {
		db.Close()
		return nil, fmt.Errorf("open index %s: %w", path, err)
	}
	return ix, nil
}

func (ix *Index) initSchema(readOnly bool) error {
	// ok: a schema version is recorded; old: it is older than SchemaVersion.
	check := func(tx *bolt.Tx) (ok, old bool, err error) {
		mb := tx.Bucket(bucketMeta)
		if mb == nil {
			return false, false, nil
		}
		raw := mb.Get(keySchema)
		v, n := binary.Uvarint(raw)
		if n <= 0 || n != len(raw) {
			return false, false, fmt.Errorf("%w: schema version entry %x", ErrCorruptIndex, raw)
		}
		if v > SchemaVersion {
			return false, false, fmt.Errorf("%w: version %d, this driftstore knows up to %d; upgrade driftstore", ErrSchemaTooNew, v, SchemaVersion)
		}
		if v < 1 {
			return false, false, fmt.Errorf("%w: schema version %d", ErrCorruptIndex, v)
		}
		return true, v < SchemaVersion, nil
	}
	if readOnly {
		return ix.db.View(func(tx *bolt.Tx) error {
			ok, _, err := check(tx)
			if err == nil && !ok {
				return fmt.Errorf("%w: no schema version (empty index opened read-only)", ErrCorruptIndex)
			}
			return err
		})
	}
	return ix.db.Update(func(tx *bolt.Tx) error {
		ok, old, err := check(tx)
		if err != nil {
			return err
		}
		for _, name := range [][]byte{bucketMeta, bucketChunks, bucketManifests, bucketMtimes, bucketRefs, bucketHistory} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		if !ok || old {
			// Schema 1 is schema 2 without delta forms (delta.go): opened for writing, it
			// becomes schema 2, which an older driftstore refuses rather than misreads.
			return tx.Bucket(bucketMeta).Put(keySchema, binary.AppendUvarint(nil, SchemaVersion))
		}
		return nil
	})
}

// Close closes the index file, once the journaled commit being applied, if any, is. The store
// is not closed.
func (ix *Index) Close() error {
	ix.waitApplied()
	return ix.db.Close()
}

// Path returns the index file's path.
func (ix *Index) Path() string { return ix.path }

// Store returns the chunk store the index is bound to.
func (ix *Index) Store() cas.Store { return ix.store }

// HoldGC keeps garbage collection's sweep from running until release is called. Writers hold it
// from the moment they put (or find present) a chunk in the store until they have recorded it
// and, ideally, committed the manifest naming it. Holding it for long delays GC, nothing else.
// release must be called exactly once.
func (ix *Index) HoldGC() (release func()) {
	ix.gcMu.RLock()
	var once sync.Once
	return func() { once.Do(ix.gcMu.RUnlock) }
}

// Check runs bbolt's own consistency check of the file's pages and returns what it found.
func (ix *Index) Check() error {
	return ix.view(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	})
}

// update runs a write transaction, after every journaled commit is applied and with no journaled
// commit between its check and its apply (see journal.go).
func (ix *Index) update(fn func(tx *bolt.Tx) error) error {
	ix.j.mu.Lock()
	defer ix.j.mu.Unlock()
	if err := ix.waitApplied(); err != nil {
		return err
	}
	err := ix.db.Update(fn)
	if errors.Is(err, berrors.ErrDatabaseReadOnly) {
		return fmt.Errorf("%w: %s", ErrReadOnly, ix.path)
	}
	return err
}

// ctxErr returns ctx's error if it is done.
func ctxErr(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	default:
		return nil
	}
}

func putTime(b []byte, t time.Time) []byte {
	return binary.BigEndian.AppendUint64(b, uint64(t.UnixNano()))
}

func getTime(b []byte) time.Time {
	return time.Unix(0, int64(binary.BigEndian.Uint64(b)))
}
