package cas

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
)

// ErrBatchClosed is returned (wrapped) by a Batch's Put after Commit or Discard.
var ErrBatchClosed = errors.New("batch already committed or discarded")

// Batch stores many chunks with one durability barrier instead of one per chunk. Put encodes
// and verifies a chunk and writes it where it is not yet visible; Commit makes every chunk put
// so far durable and only then visible under its name, all together. The guarantees are those
// of Store.Put, moved to Commit: a chunk is visible under its name only once its bytes are
// durable and verified, and a crash at any point leaves only complete chunks and temporary
// files (which a store cleans up, e.g. Local.CleanTemp).
//
// Put is safe for concurrent use; Commit and Discard must not run concurrently with Put. The
// Info a Put returns describes the chunk as it will be once committed (a chunk already present
// in the store is reported as it is, and costs about a stat); the chunk is not guaranteed to be
// readable, durable or visible before Commit returns nil. Every Batch must end in Commit or
// Discard: a batch may hold per-chunk claims that make a plain Put of the same chunk in the same
// process wait for it. Discard after Commit does nothing, so `defer b.Discard()` is the idiom.
type Batch interface {
	// Put stores data in the batch (see the type's doc). data is only read during the call.
	Put(ctx context.Context, data []byte, hint Hint) (Info, error)
	// PutStored stores a chunk given in stored form in the batch, as StoredWriter.PutStored
	// does, with the durability moved to Commit: stored is decoded and checked to be the
	// content named d before anything is written (a stored form that does not decode, or
	// decodes to other content, is refused with a *CorruptError naming d, and nothing of it is
	// ever committed); then the stored bytes are kept unchanged (no recompression) and become
	// durable and visible under d only when Commit returns nil. A chunk already present costs
	// about a stat and is not verified. stored is only read during the call. Safe for
	// concurrent use with Put and PutStored.
	PutStored(ctx context.Context, d Digest, codec Codec, stored []byte) (Info, error)
	// Commit makes every chunk put so far durable and visible. After Commit, the batch is closed:
	// further Puts fail with ErrBatchClosed. When Commit fails, some of the batch's chunks may
	// be visible (each complete and durable) and the rest are not; Put them again.
	Commit(ctx context.Context) error
	// Discard drops every chunk not yet committed and closes the batch. Idempotent.
	Discard()
}

// Retainer is the optional capability of a Batch to keep a chunk's bytes where the caller
// holds them until it writes them, instead of copying them (Pack's batches do, for chunks
// stored raw, which they gather into runs written with one pwritev each).
type Retainer interface {
	// PutRetained is Put, except that the batch may go on reading data after the call
	// returns, until it calls release. release is called exactly once, from any goroutine,
	// possibly before PutRetained returns (whenever the batch did not keep data, an error
	// included), and at the latest when the batch writes or drops what it kept: on Flush,
	// Commit or Discard, or when a run fills. data must not change until then. Safe for
	// concurrent use with Put, PutStored, PutRetained and Flush.
	PutRetained(ctx context.Context, data []byte, hint Hint, release func()) (Info, error)
	// PutStoredRetained is PutStored with the same keeping of stored, and release, as
	// PutRetained's (a chunk arriving in its stored form goes to the pack file from the
	// caller's buffer).
	PutStoredRetained(ctx context.Context, d Digest, codec Codec, stored []byte, release func()) (Info, error)
	// Flush writes what the batch gathered in memory, so that every chunk kept so far is
	// released; a failed write breaks the batch as a failed Put does, and is returned. Safe
	// for concurrent use with the Puts; not with Commit or Discard.
	Flush() error
}

// SealedGetter is the optional capability of a Store to check a chunk it holds against the
// checksum it sealed the chunk's stored bytes with when it stored them (after hashing them to
// their digest), instead of hashing the content again: much cheaper, and as good against what
// happens to bytes at rest, but no proof against a deliberate rewrite of the store's files (see
// Pack's layout). GetSealed has Get's contract otherwise; a chunk stored without a seal is
// checked against its digest.
type SealedGetter interface {
	GetSealed(ctx context.Context, d Digest, dst []byte) ([]byte, error)
}

// JournalBatch is the optional capability of a Batch to carry one entry of its caller's journal
// (the index's commit log; see index.Index.CommitBatch) with its chunks: CommitJournal is
// Commit, with payload written after the chunks and made durable by the same barrier, never
// before them. When it returns nil the chunks are durable and visible and the entry is
// durable; JournalStore.JournalEntries of the store opened later lists it until a compaction
// of its file, which keeps it while it is held: release (call it exactly once) says the caller
// no longer needs it (it has applied the entry durably elsewhere). On error the entry is
// cancelled (best effort: after a failed sync the fate of the bytes is unknown to everyone) and
// the chunks are as after a failed Commit. payload is only read during the call.
type JournalBatch interface {
	CommitJournal(ctx context.Context, payload []byte) (release func(), err error)
}

// JournalStore is the optional capability of a Store whose batches are JournalBatches: it
// lists the journal entries found when it was opened (see Pack.JournalEntries).
type JournalStore interface {
	JournalEntries(fn func(payload []byte) error) error
}

// Batcher is the optional capability of a Store to write chunks in batches (see Batch).
// NewBatch returns an empty batch; batches are independent of each other and of Put.
type Batcher interface {
	NewBatch() Batch
}

// BatchPutter is the optional capability of storing a whole list of chunks with one
// durability barrier. PutBatch returns the chunks' Infos in order; when it returns nil every
// chunk is durable and visible, as after Put of each. On error none of them is guaranteed to be
// stored (some may be). chunks are only read.
type BatchPutter interface {
	PutBatch(ctx context.Context, chunks [][]byte, hint Hint) ([]Info, error)
}

// NewBatch returns a batch for s: s's own when s is a Batcher, otherwise a batch whose Put is
// s.Put and whose PutStored is WriteStored (each chunk durable and visible at once) and whose
// Commit checks nothing more.
func NewBatch(s Store) Batch {
	if b, ok := s.(Batcher); ok {
		return b.NewBatch()
	}
	return &putBatch{s: s}
}

// putBatch is the Batch of a store without batching: every Put is a Store.Put.
type putBatch struct {
	s      Store
	mu     sync.Mutex
	closed bool
}

func (b *putBatch) Put(ctx context.Context, data []byte, hint Hint) (Info, error) {
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return Info{}, fmt.Errorf("put: %w", ErrBatchClosed)
	}
	return b.s.Put(ctx, data, hint)
}

func (b *putBatch) PutStored(ctx context.Context, d Digest, codec Codec, stored []byte) (Info, error) {
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return Info{}, fmt.Errorf("put stored %s: %w", d, ErrBatchClosed)
	}
	if _, ok := b.s.(StoredWriter); !ok {
		// WriteStored would decode before its Put finds the chunk present.
		if info, err := b.s.Stat(ctx, d); err == nil {
			return info, nil
		}
	}
	return WriteStored(ctx, b.s, d, codec, stored, HintNone)
}

func (b *putBatch) Commit(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return fmt.Errorf("commit: %w", ErrBatchClosed)
	}
	b.closed = true
	return ctx.Err()
}

func (b *putBatch) Discard() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
}

// Compile-time checks.
var (
	_ Batcher     = (*Local)(nil)
	_ BatchPutter = (*Local)(nil)
	_ Retainer    = (*packBatch)(nil)
)

// NewBatch returns a batch that writes chunk files to temporary files in their shard
// directories without syncing them; Commit makes them all durable with one sync (syncfs(2) of
// the store's file system on Linux, an fsync per file elsewhere), renames them into place and
// syncs once more for the renames (and any shard directories created). With NoSync the syncs
// are skipped. Within the process, a chunk being written by a batch or a Put is written once:
// a batch's Put claims the chunk until Commit or Discard when no one else is writing it, and
// otherwise writes its own copy (identical content; the renames replace each other
// atomically, as between processes).
func (l *Local) NewBatch() Batch {
	return &localBatch{l: l, pending: map[Digest]*pendingChunk{}}
}

// PutBatch stores chunks in one batch, one after the other (see BatchPutter). For parallel
// encoding, use PutAll, which drives a batch with several workers.
func (l *Local) PutBatch(ctx context.Context, chunks [][]byte, hint Hint) ([]Info, error) {
	return putAllInBatch(ctx, l.NewBatch(), chunks, hint)
}

// putAllInBatch puts chunks into b one after the other and commits it (BatchPutter's contract); b is
// discarded on error.
func putAllInBatch(ctx context.Context, b Batch, chunks [][]byte, hint Hint) ([]Info, error) {
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

type localBatch struct {
	l *Local

	mu          sync.Mutex // guards the fields below
	pending     map[Digest]*pendingChunk
	written     []*pendingChunk // chunks with a temporary file, in completion order
	rootTouched bool            // a shard directory not known durable: the root must be synced
	closed      bool
}

// pendingChunk is one chunk of a batch. done is closed once the Put that owns it finishes;
// info, tmp and err are set before that and immutable after.
type pendingChunk struct {
	done    chan struct{}
	info    Info
	tmp     string // temporary file awaiting Commit; "" when the chunk was already present
	release func() // the in-process claim on the digest, nil when not held
	err     error
}

func (b *localBatch) Put(ctx context.Context, data []byte, hint Hint) (Info, error) {
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

// PutStored verifies a stored form and writes it to a temporary file (see Batch.PutStored).
func (b *localBatch) PutStored(ctx context.Context, d Digest, codec Codec, stored []byte) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	return b.put(ctx, d, func(dst []byte) (Codec, int, []byte, []byte, error) {
		size, err := verifyStored(d, codec, stored)
		if err != nil {
			return 0, 0, nil, nil, err
		}
		return codec, size, dst, stored, nil
	})
}

// put is the path shared by Put and PutStored: one writer per digest within the batch, the
// others wait for it and share its result.
func (b *localBatch) put(ctx context.Context, d Digest, encode encodeFunc) (Info, error) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return Info{}, fmt.Errorf("put %s: %w", d, ErrBatchClosed)
	}
	if p, ok := b.pending[d]; ok {
		b.mu.Unlock()
		select {
		case <-p.done:
		case <-ctx.Done():
			return Info{}, ctx.Err()
		}
		if p.err != nil {
			return Info{}, p.err
		}
		return p.info, nil
	}
	p := &pendingChunk{done: make(chan struct{})}
	b.pending[d] = p
	b.mu.Unlock()

	info, tmp, created, err := b.write(d, encode, p)
	b.mu.Lock()
	p.info, p.tmp, p.err = info, tmp, err
	if err != nil {
		delete(b.pending, d) // a later Put of d tries again
	} else if tmp != "" {
		b.written = append(b.written, p)
	}
	b.rootTouched = b.rootTouched || created
	b.mu.Unlock()
	close(p.done)
	return info, err
}

// write stores d in a temporary file unless it is present, claiming d when no one else in the
// process is writing it (p.release is then set).
func (b *localBatch) write(d Digest, encode encodeFunc, p *pendingChunk) (Info, string, bool, error) {
	l := b.l
	if info, ok := l.existing(d); ok {
		return info, "", false, nil
	}
	if release, ok := l.tryClaim(d); ok {
		p.release = release
		// Someone may have committed d between the check above and the claim.
		if info, ok := l.existing(d); ok {
			p.release = nil
			release()
			return info, "", false, nil
		}
	}
	fail := func(err error) (Info, string, bool, error) {
		if p.release != nil {
			p.release()
			p.release = nil
		}
		return Info{}, "", false, err
	}
	buf, codec, size, file, err := prepare(encode)
	defer putBuf(buf)
	if err != nil {
		return fail(err)
	}
	created, err := l.ensureShard(d)
	if err != nil {
		return fail(fmt.Errorf("put %s: %w", d, err))
	}
	tmp, mod, err := l.writeTemp(d, file, false)
	if err != nil {
		return fail(fmt.Errorf("put %s: %w", d, err))
	}
	info := Info{Digest: d, Size: int64(size), StoredSize: int64(len(file) - headerSize), Codec: codec, ModTime: mod}
	return info, tmp, created, nil
}

func (b *localBatch) Commit(ctx context.Context) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return fmt.Errorf("commit: %w", ErrBatchClosed)
	}
	b.closed = true
	written, rootTouched := b.written, b.rootTouched
	b.written = nil
	b.mu.Unlock()
	defer b.releaseAll()
	l := b.l
	removeFrom := func(ps []*pendingChunk) {
		for _, p := range ps {
			os.Remove(p.tmp)
		}
	}
	if err := ctx.Err(); err != nil {
		removeFrom(written)
		return err
	}
	if len(written) == 0 {
		return nil
	}
	if !l.opts.NoSync {
		files := make([]string, len(written))
		for i, p := range written {
			files[i] = p.tmp
		}
		if err := syncAll(l.dir, files); err != nil {
			removeFrom(written)
			return fmt.Errorf("commit %d chunks: sync: %w", len(written), err)
		}
	}
	var dirs []string
	seenDir := map[byte]bool{}
	for i, p := range written {
		d := p.info.Digest
		if hook := testHookBeforeRename; hook != nil {
			if err := hook(p.tmp); err != nil {
				removeFrom(written[i:])
				return fmt.Errorf("commit %s: %w", d, errors.Join(err, b.syncDirs(dirs, rootTouched)))
			}
		}
		if err := os.Rename(p.tmp, l.Path(d)); err != nil {
			removeFrom(written[i:])
			return fmt.Errorf("commit %s: %w", d, errors.Join(err, b.syncDirs(dirs, rootTouched)))
		}
		if !seenDir[d[0]] {
			seenDir[d[0]] = true
			dirs = append(dirs, l.shardDir(d))
		}
	}
	if err := b.syncDirs(dirs, rootTouched); err != nil {
		return fmt.Errorf("commit %d chunks: sync directories: %w", len(written), err)
	}
	if rootTouched {
		for _, p := range written {
			l.shardDurable(p.info.Digest)
		}
	}
	return nil
}

// syncDirs makes the renames into dirs (and shard creations, when rootTouched) durable.
func (b *localBatch) syncDirs(dirs []string, rootTouched bool) error {
	if b.l.opts.NoSync || len(dirs) == 0 && !rootTouched {
		return nil
	}
	if rootTouched {
		dirs = append(dirs, b.l.dir)
	}
	return syncAllDirs(b.l.dir, dirs)
}

func (b *localBatch) Discard() {
	b.mu.Lock()
	written := b.written
	b.written = nil
	b.closed = true
	b.mu.Unlock()
	for _, p := range written {
		os.Remove(p.tmp)
	}
	b.releaseAll()
}

// releaseAll lets go of every claim the batch holds. Only after Commit or Discard, when no Put
// runs.
func (b *localBatch) releaseAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range b.pending {
		if p.release != nil {
			p.release()
			p.release = nil
		}
	}
}

// tryClaim is claim without waiting: it fails when another goroutine is writing d.
func (l *Local) tryClaim(d Digest) (release func(), ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, busy := l.inflight[d]; busy {
		return nil, false
	}
	ch := make(chan struct{})
	l.inflight[d] = ch
	return func() {
		l.mu.Lock()
		delete(l.inflight, d)
		l.mu.Unlock()
		close(ch)
	}, true
}
