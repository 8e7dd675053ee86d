// Package ingest stores chunks that arrive one after another (an upload stream on a daemon, a
// download stream on a pulling client) into a data directory's store and index, overlapping
// the work: the caller's goroutine only reads frames into pooled buffers and hands them on; a
// pool of workers verifies each chunk as soon as it arrives (decode and BLAKE3, or the hash of
// decoded bytes) and writes it into the current group's cas.Batch; a committer goroutine makes
// each group durable (Batch.Commit: one barrier) and records it in one index transaction, in
// order, while the next group is still arriving. A chunk is recorded only once it is durable
// and verified.
//
// Failure rule: every chunk of a group that verifies is committed and recorded, also when
// another chunk of that group fails; no chunk of a later group is committed (its batch is
// discarded), and the ingester stops taking chunks at the next group boundary. The first error
// in stream order is reported. A chunk that fails verification is never committed.
package ingest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/httpapi/wire"
	"github.com/driftstore/driftstore/index"
)

var (
	// ErrMismatch: a chunk's bytes do not hash (or decode) to its digest. Such a chunk is never
	// committed.
	ErrMismatch = errors.New("content does not match its digest")
	// ErrUnsupportedCodec: a chunk in a codec this build cannot decode, so cannot verify.
	ErrUnsupportedCodec = errors.New("unsupported codec")
	// ErrStopped is returned by Add and ReadStream once an earlier chunk has failed; Close
	// returns that failure.
	ErrStopped = errors.New("ingest stopped after a chunk failed")
)

// Config tunes an Ingester. The zero value is usable.
type Config struct {
	// Workers is how many chunks are verified and written at once (default GOMAXPROCS, at
	// most 8).
	Workers int
	// GroupChunks and GroupBytes end a group (one durability barrier and one index
	// transaction) at that many chunks or stored bytes (defaults 256 and 64 MiB).
	GroupChunks int
	GroupBytes  int64
	// InFlightBytes bounds the stored bytes read but not yet verified and written (default
	// 16 MiB; a single larger chunk is still taken): Add and ReadStream wait beyond it.
	InFlightBytes int64
	// MaxChunkSize is the largest decoded chunk recorded (default cas.MaxChunkSize). A larger
	// one that verifies is committed, never recorded, and fails with wire.ErrTooLarge.
	MaxChunkSize int64
	// Hint is the hint for chunks given decoded (Codec 0), which the store encodes.
	Hint cas.Hint
	// Committed, when set, is called after each group is recorded with the chunks of it that
	// were accepted (stored or already recorded), their decoded and their stored bytes. It
	// runs on the committer goroutine, one call at a time.
	Committed func(chunks int, raw, stored int64)
}

func (c *Config) setDefaults() {
	if c.Workers <= 0 {
		c.Workers = min(runtime.GOMAXPROCS(0), 8)
	}
	if c.GroupChunks <= 0 {
		c.GroupChunks = 256
	}
	if c.GroupBytes <= 0 {
		c.GroupBytes = 64 << 20
	}
	if c.InFlightBytes <= 0 {
		c.InFlightBytes = 16 << 20
	}
	if c.MaxChunkSize <= 0 || c.MaxChunkSize > cas.MaxChunkSize {
		c.MaxChunkSize = cas.MaxChunkSize
	}
}

// Result counts what an ingester did. Refused chunks are not in Chunks.
type Result struct {
	Chunks   int   // chunks accepted: verified and recorded now, or recorded before
	Stored   int   // of those, chunks new to the index
	Deduped  int   // of those, chunks the index had already (not decoded again)
	Refused  int   // chunks whose bytes did not match their digest
	RawBytes int64 // decoded bytes of the accepted chunks
	Bytes    int64 // bytes of the accepted chunks as they arrived
}

// Ingester takes chunks one after another; see the package doc. Use New, then Add or
// ReadStream, then Close (always). Add, ReadStream and Close are called from one goroutine at a
// time.
type Ingester struct {
	ix      *index.Index
	store   cas.Store
	cfg     Config
	ctx     context.Context // the caller's values, never canceled: arrived bytes are stored
	release func()          // HoldGC's

	jobs    chan job
	groups  chan *group
	workers sync.WaitGroup
	done    chan struct{} // closed when the committer has finished
	cur     *group
	failed  atomic.Bool // a chunk or a group failed: stop at the next group boundary
	closed  bool

	mu       sync.Mutex // guards inflight
	cond     *sync.Cond // signaled when inflight drops
	inflight int64      // stored bytes handed to workers and not finished

	// Written by the committer, read after done is closed.
	res Result
	err error
}

type group struct {
	batch   cas.Batch
	entries []entry // preallocated at GroupChunks: workers hold pointers into it
	bytes   int64
	wg      sync.WaitGroup // one per chunk handed to the workers
}

// entry is one chunk's fate, written by the worker that handles it and read by the committer
// after the group's wg.
type entry struct {
	digest   cas.Digest
	size     int64 // declared decoded size, -1 when unknown
	stored   int64 // bytes as they arrived
	recorded bool  // the index had it already; recSize is its size
	recSize  int64
	info     cas.Info // as the batch will commit it
	err      error
	keep     bool // err is set, yet the chunk is valid and recorded (a wrong declared size)
}

type job struct {
	g   *group
	e   *entry
	ch  wire.StoredChunk
	buf *[]byte // pooled buffer holding ch.Stored, nil when not pooled
}

// New starts an ingester storing into ix's store and recording in ix. It holds ix.HoldGC until
// Close.
func New(ctx context.Context, ix *index.Index, cfg Config) *Ingester {
	cfg.setDefaults()
	in := &Ingester{ix: ix, store: ix.Store(), cfg: cfg, ctx: context.WithoutCancel(ctx), release: ix.HoldGC(),
		jobs: make(chan job, 4*cfg.Workers), groups: make(chan *group, maxCoalesce), done: make(chan struct{})}
	in.cond = sync.NewCond(&in.mu)
	for range cfg.Workers {
		in.workers.Add(1)
		go in.work()
	}
	go in.commit()
	return in
}

// Add hands one chunk over: Codec 0 means Stored holds the decoded bytes (the store picks a
// codec, with Config.Hint), any other codec the stored form; Size is the declared decoded size,
// or -1 when unknown. ch.Stored must not change until Close returns. Add returns ErrStopped
// (wrapped) once an earlier group has failed; the failure itself comes from Close.
func (in *Ingester) Add(ch wire.StoredChunk) error {
	return in.add(ch, nil)
}

func (in *Ingester) add(ch wire.StoredChunk, buf *[]byte) error {
	if in.closed {
		putBuf(buf)
		return errors.New("ingest: Add after Close")
	}
	if in.cur == nil {
		if in.failed.Load() {
			putBuf(buf)
			return fmt.Errorf("%w", ErrStopped)
		}
		in.cur = &group{batch: cas.NewBatch(in.store), entries: make([]entry, 0, in.cfg.GroupChunks)}
	}
	g := in.cur
	n := int64(len(ch.Stored))
	in.mu.Lock()
	for in.inflight > 0 && in.inflight+n > in.cfg.InFlightBytes {
		in.cond.Wait()
	}
	in.inflight += n
	in.mu.Unlock()
	g.entries = append(g.entries, entry{digest: ch.Digest, size: ch.Size, stored: n})
	g.bytes += n
	g.wg.Add(1)
	in.jobs <- job{g: g, e: &g.entries[len(g.entries)-1], ch: ch, buf: buf}
	if len(g.entries) >= in.cfg.GroupChunks || g.bytes >= in.cfg.GroupBytes {
		in.cur = nil
		in.groups <- g
	}
	return nil
}

// ReadStream adds every chunk of sr, reading each frame's stored bytes straight into a pooled
// buffer (frames larger than the pool's buffers are copied out of the reader). It returns nil
// at the stream's trailer, the reader's error when the stream is cut off or malformed (the
// chunks that arrived whole are still stored by Close), or ErrStopped (wrapped) once a chunk
// has failed.
func (in *Ingester) ReadStream(sr *wire.ChunkStreamReader) error {
	var buf *[]byte
	get := func(n int) []byte {
		buf = getBuf(n)
		if buf == nil {
			return nil
		}
		return *buf
	}
	for {
		buf = nil
		ch, err := sr.NextWith(get)
		if err == io.EOF {
			putBuf(buf)
			return nil
		}
		if err != nil {
			putBuf(buf)
			return err
		}
		if len(ch.Stored) > 0 && buf == nil {
			ch.Stored = bytes.Clone(ch.Stored) // a frame larger than the pooled buffers
		}
		if err := in.add(ch, buf); err != nil {
			return err
		}
	}
}

// Close waits for every chunk added to be verified, committed and recorded (or refused) and
// returns what was done and the first failure in stream order. It releases the GC hold. Close
// is idempotent in effect: later calls return the same.
func (in *Ingester) Close() (Result, error) {
	if !in.closed {
		in.closed = true
		if in.cur != nil {
			in.groups <- in.cur
			in.cur = nil
		}
		close(in.groups)
		<-in.done
		close(in.jobs)
		in.workers.Wait()
		in.release()
	}
	return in.res, in.err
}

// A worker takes the jobs waiting, up to lookupBatch of them or lookupBytes stored bytes (so
// that large chunks stay spread over the workers), and reads their index records in one
// transaction instead of one each.
const (
	lookupBatch = 16
	lookupBytes = 256 << 10
)

func (in *Ingester) work() {
	defer in.workers.Done()
	batch := make([]job, 0, lookupBatch)
	ds := make([]cas.Digest, 0, lookupBatch)
	for j := range in.jobs {
		// Take what else is waiting, without waiting for more.
		batch = append(batch[:0], j)
		n := len(j.ch.Stored)
	more:
		for len(batch) < lookupBatch && n < lookupBytes {
			select {
			case j, ok := <-in.jobs:
				if !ok {
					break more
				}
				batch = append(batch, j)
				n += len(j.ch.Stored)
			default:
				break more
			}
		}
		ds = ds[:0]
		for _, j := range batch {
			ds = append(ds, j.ch.Digest)
		}
		recs, lerr := in.ix.Chunks(ds)
		for i, j := range batch {
			kept := false
			if lerr != nil {
				j.e.err = fmt.Errorf("look up chunk %s: %w", j.ch.Digest, lerr)
			} else {
				kept = in.verifyAndWrite(j, recs[i])
			}
			if !kept {
				putBuf(j.buf)
			}
			in.mu.Lock()
			in.inflight -= j.e.stored
			in.mu.Unlock()
			in.cond.Signal()
			if j.e.err != nil {
				in.failed.Store(true)
			}
			j.g.wg.Done()
		}
		clear(batch) // let go of the chunks' bytes
	}
}

// verifyAndWrite handles one chunk, filling in its entry. rec is the chunk's index record
// (Codec 0: none). It reports whether it handed j.buf to the batch, which returns it to the
// pool once the chunk's record is written (cas.Retainer); otherwise the caller does.
func (in *Ingester) verifyAndWrite(j job, rec index.ChunkRecord) (kept bool) {
	ch, e := j.ch, j.e
	if ch.Codec != 0 && !ch.Codec.Valid() {
		e.err = fmt.Errorf("%w: chunk %s: codec %d", ErrUnsupportedCodec, ch.Digest, ch.Codec)
		return
	}
	if ch.Codec == 0 {
		// Decoded bytes: the store would file them under their own hash.
		if got := cas.Sum(ch.Stored); got != ch.Digest {
			e.err = fmt.Errorf("%w: chunk %s: the bytes hash to %s", ErrMismatch, ch.Digest, got)
			return
		}
	}
	if rec.Codec != 0 {
		if ch.Codec == cas.CodecRaw {
			// Cheap to check, and a raw chunk's bytes are its content.
			if got := cas.Sum(ch.Stored); got != ch.Digest {
				e.err = fmt.Errorf("%w: chunk %s: the bytes hash to %s", ErrMismatch, ch.Digest, got)
				return
			}
		}
		e.recorded, e.recSize = true, rec.Size
		return
	}
	var info cas.Info
	var err error
	r, retains := j.g.batch.(cas.Retainer)
	switch {
	case ch.Codec == 0:
		info, err = j.g.batch.Put(in.ctx, ch.Stored, in.cfg.Hint)
	case retains && j.buf != nil:
		// Written from the frame's buffer, without a copy into the batch's run.
		buf := j.buf
		info, err = r.PutStoredRetained(in.ctx, ch.Digest, ch.Codec, ch.Stored, func() { putBuf(buf) })
		kept = true
	default:
		info, err = j.g.batch.PutStored(in.ctx, ch.Digest, ch.Codec, ch.Stored)
	}
	switch {
	case errors.Is(err, cas.ErrCorrupt):
		e.err = fmt.Errorf("%w: %w", ErrMismatch, err)
		return
	case err != nil:
		e.err = fmt.Errorf("store chunk %s: %w", ch.Digest, err)
		return
	}
	e.info = info
	switch {
	case info.Size > in.cfg.MaxChunkSize:
		// Verified, so committed, but never recorded: garbage for GC.
		e.err = fmt.Errorf("%w: chunk %s is %d bytes, limit %d", wire.ErrTooLarge, ch.Digest, info.Size, in.cfg.MaxChunkSize)
	case ch.Size >= 0 && info.Size != ch.Size:
		// Valid content for its digest, only the declared size was wrong: keep the chunk,
		// refuse the rest.
		e.err = fmt.Errorf("%w: chunk %s declared %d bytes, has %d", wire.ErrMalformed, ch.Digest, ch.Size, info.Size)
		e.keep = true
	}
	return kept
}

// maxCoalesce bounds the groups the committer takes at once, and the groups queued for it
// (beyond that the reader waits).
const maxCoalesce = 8

// commit runs the groups in order: wait for their chunks, commit the batch, record, count. When
// it falls behind (groups queued while it syncs), it takes every queued group at once: their
// batches share one barrier and their records one index transaction, and the queue does not
// fill up behind a slow barrier. The failure rule holds: a group
// with a failed chunk is committed and recorded, the groups after it are discarded.
func (in *Ingester) commit() {
	defer close(in.done)
	stopped := false
	var recs []cas.Info
	ready := make([]*group, 0, maxCoalesce)
	for g := range in.groups {
		ready = append(ready[:0], g)
	more:
		for len(ready) < maxCoalesce {
			select {
			case g, ok := <-in.groups:
				if !ok {
					break more
				}
				ready = append(ready, g)
			default:
				break more
			}
		}
		// Wait for the groups' chunks, in order, up to the first group with a failed chunk.
		n := len(ready)
		for i, g := range ready {
			g.wg.Wait()
			if n == len(ready) && g.hasFailure() {
				n = i + 1
			}
		}
		if stopped {
			n = 0
		}
		for _, g := range ready[n:] {
			g.batch.Discard()
		}
		ready = ready[:n]
		for i, g := range ready {
			if err := g.batch.Commit(in.ctx); err != nil {
				in.fail(fmt.Errorf("store %d chunks: %w", len(g.entries), err))
				stopped = true
				for _, later := range ready[i+1:] {
					later.batch.Discard()
				}
				ready = ready[:i]
				break
			}
		}
		recs = recs[:0]
		tallies := make([]tally, len(ready))
		for i, g := range ready {
			tallies[i], recs = g.tally(recs)
		}
		if len(recs) > 0 {
			if err := in.ix.RecordChunks(in.ctx, recs); err != nil {
				in.fail(fmt.Errorf("record %d chunks: %w", len(recs), err))
				stopped = true
				continue
			}
		}
		for _, t := range tallies {
			res := t.res
			in.res.Chunks += res.Chunks
			in.res.Stored += res.Stored
			in.res.Deduped += res.Deduped
			in.res.Refused += res.Refused
			in.res.RawBytes += res.RawBytes
			in.res.Bytes += res.Bytes
			if in.cfg.Committed != nil && res.Chunks > 0 {
				in.cfg.Committed(res.Chunks, res.RawBytes, res.Bytes)
			}
			if t.err != nil {
				in.fail(t.err)
				stopped = true
			}
		}
	}
}

// tally is what a committed group comes to: its counts and its first chunk error.
type tally struct {
	res Result
	err error
}

// hasFailure reports whether a chunk of g failed. Call after g.wg.Wait.
func (g *group) hasFailure() bool {
	for i := range g.entries {
		if g.entries[i].err != nil {
			return true
		}
	}
	return false
}

// tally counts the committed group g and appends the records of its new chunks to recs.
func (g *group) tally(recs []cas.Info) (tally, []cas.Info) {
	var t tally
	for i := range g.entries {
		e := &g.entries[i]
		if e.err != nil {
			if errors.Is(e.err, ErrMismatch) {
				t.res.Refused++
			}
			if t.err == nil {
				t.err = e.err
			}
			if !e.keep {
				continue
			}
		}
		t.res.Chunks++
		t.res.Bytes += e.stored
		if e.recorded {
			t.res.Deduped++
			t.res.RawBytes += e.recSize
			continue
		}
		t.res.Stored++
		t.res.RawBytes += e.info.Size
		recs = append(recs, e.info)
	}
	return t, recs
}

func (in *Ingester) fail(err error) {
	if in.err == nil {
		in.err = err
	}
	in.failed.Store(true)
}

// Pooled buffers for stored bytes, in a few size classes; a frame larger than the largest
// class is copied out of the stream reader instead.
var classes = [...]int{64 << 10, 256 << 10, 1 << 20, 4 << 20}

var pools [len(classes)]sync.Pool

// getBuf returns a pooled buffer of length at least n, or nil when n exceeds every class.
func getBuf(n int) *[]byte {
	for i, c := range classes {
		if n <= c {
			if p, ok := pools[i].Get().(*[]byte); ok {
				return p
			}
			b := make([]byte, c)
			return &b
		}
	}
	return nil
}

// putBuf returns a buffer from getBuf to its pool; nil is ignored.
func putBuf(p *[]byte) {
	if p == nil {
		return
	}
	for i, c := range classes {
		if cap(*p) == c {
			*p = (*p)[:c]
			pools[i].Put(p)
			return
		}
	}
}
