package replicate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/httpapi/ingest"
	"github.com/driftstore/driftstore/httpapi/wire"
	"github.com/driftstore/driftstore/index"
)

// Peer is one end of a transfer, as the transfer sees it: refs, manifests and the missing-set
// question. *Client (a daemon) and *Local (a data directory's index) implement it.
type Peer interface {
	Ref(ctx context.Context, kind index.RefKind, name string) (index.ID, error)
	HasManifest(ctx context.Context, id index.ID) (bool, error)
	ManifestBytes(ctx context.Context, id index.ID) ([]byte, error)
	PutManifestBytes(ctx context.Context, data []byte) (index.ID, error)
	Missing(ctx context.Context, ds []cas.Digest) ([]cas.Digest, error)
	CompareAndSwapRef(ctx context.Context, kind index.RefKind, name string, expected, target index.ID) error
	// CommitRef commits manifests (canonical bytes, parents first) and moves the ref from
	// expected to target, as one transaction.
	CommitRef(ctx context.Context, kind index.RefKind, name string, expected, target index.ID, manifests [][]byte) error
	Refs(ctx context.Context, kind index.RefKind) ([]index.Ref, error)
}

// ErrDiverged: the destination's ref is not an ancestor of the source's, so moving it would
// lose manifests. Nothing was sent. Options.Force moves it anyway.
var ErrDiverged = errors.New("refs have diverged")

// Options tune a transfer. The zero value is usable.
type Options struct {
	// Concurrency is how many chunk batches are in flight at once (default 4).
	Concurrency int
	// BatchBytes and BatchChunks bound one batch, which travels as one chunk stream (defaults
	// 64 MiB of uncompressed bytes and 2048 chunks); a transfer is also cut into Concurrency
	// batches where each keeps at least 8 MiB, so that several streams run at once. The
	// receiver verifies and commits a stream while it arrives, so a large batch costs no memory
	// there; each batch costs a request and at least one durability barrier, and a failed batch
	// is resumed from what arrived.
	BatchBytes  int64
	BatchChunks int
	// Retries is how often a failed batch is tried again, after asking the destination what
	// it still lacks (default 4; negative means none). Backoff is the first wait, doubled
	// each time (default 200ms).
	Retries int
	Backoff time.Duration
	// Force moves the destination's ref even when it is not an ancestor of the source's.
	Force bool
	// Progress, when set, is called with the uncompressed bytes moved so far and the total to
	// move, from any goroutine, possibly concurrently.
	Progress func(done, total int64)
	// Limits bound the chunks a pull accepts from a daemon (default 64 MiB per chunk).
	Limits wire.StreamLimits
}

func (o *Options) setDefaults() {
	if o.Concurrency <= 0 {
		o.Concurrency = 4
	}
	if o.BatchBytes <= 0 {
		o.BatchBytes = 64 << 20
	}
	if o.BatchChunks <= 0 || o.BatchChunks > wire.MaxMissingDigests {
		o.BatchChunks = 2048
	}
	if o.Retries == 0 {
		o.Retries = 4
	} else if o.Retries < 0 {
		o.Retries = 0
	}
	if o.Backoff <= 0 {
		o.Backoff = 200 * time.Millisecond
	}
	if o.Limits.MaxChunkSize <= 0 {
		o.Limits.MaxChunkSize = 64 << 20
	}
	if o.Limits.MaxStoredSize <= 0 {
		o.Limits.MaxStoredSize = o.Limits.MaxChunkSize + o.Limits.MaxChunkSize/8 + 4096
	}
}

// Stats says what a transfer did.
type Stats struct {
	Kind       string   `json:"kind"`
	Name       string   `json:"name"`
	Head       index.ID `json:"head"`     // the source's head, where the destination's ref now points
	OldHead    index.ID `json:"old_head"` // where the destination's ref pointed before (zero: nowhere)
	UpToDate   bool     `json:"up_to_date"`
	Manifests  int      `json:"manifests"`   // manifests the destination lacked and got
	Chunks     int      `json:"chunks"`      // distinct chunks those manifests name
	ChunksSent int      `json:"chunks_sent"` // chunks the destination lacked and got
	RawBytes   int64    `json:"raw_bytes"`   // uncompressed bytes of the chunks sent
	Bytes      int64    `json:"bytes"`       // stored-form bytes of the chunks sent
	Retries    int      `json:"retries"`     // batches tried again
}

// mover moves chunks ds from the source to the destination and reports how many chunks and
// stored bytes it sent. After an error some of them may have arrived; the caller asks the
// destination again.
// sizes holds the uncompressed size of every chunk, from the manifests; it is only read.
type mover func(ctx context.Context, ds []cas.Digest, sizes map[cas.Digest]int64, sent func(chunks int, raw, stored int64)) error

// Push copies ref kind/name, with every manifest and chunk it needs, from the local index to
// the daemon, sending only what the daemon lacks, then moves the daemon's ref with
// compare-and-swap.
func Push(ctx context.Context, local *index.Index, remote *Client, kind index.RefKind, name string, opts Options) (Stats, error) {
	return Copy(ctx, NewLocal(local), remote, kind, name, opts)
}

// Pull copies ref kind/name from the daemon into the local index: the mirror image of Push.
func Pull(ctx context.Context, remote *Client, local *index.Index, kind index.RefKind, name string, opts Options) (Stats, error) {
	return Copy(ctx, remote, NewLocal(local), kind, name, opts)
}

// Copy copies ref kind/name from src to dst, each a *Local or a *Client: local to daemon (a
// push), daemon to local (a pull), daemon to daemon (chunks relayed through this process as
// stored, one download stream feeding one upload stream per batch) or local to local.
func Copy(ctx context.Context, src, dst Peer, kind index.RefKind, name string, opts Options) (Stats, error) {
	opts.setDefaults()
	move, err := moverFor(src, dst, opts)
	if err != nil {
		return Stats{}, err
	}
	return transfer(ctx, src, dst, kind, name, opts, move)
}

// CopyManifest copies manifest id, its ancestors and their chunks from src to dst, sending only
// what dst lacks, and moves no ref. The manifest is then unreferenced on dst until a ref names
// it; garbage collection's grace period keeps it meanwhile.
func CopyManifest(ctx context.Context, src, dst Peer, id index.ID, opts Options) (Stats, error) {
	opts.setDefaults()
	move, err := moverFor(src, dst, opts)
	if err != nil {
		return Stats{}, err
	}
	st := Stats{Head: id}
	send, err := copyChain(ctx, src, dst, id, index.ID{}, opts, move, &st)
	if err != nil {
		return st, err
	}
	for _, m := range send {
		if _, err := dst.PutManifestBytes(ctx, m); err != nil {
			return st, fmt.Errorf("put manifest %s: %w", cas.Sum(m), err)
		}
	}
	return st, nil
}

func moverFor(src, dst Peer, opts Options) (mover, error) {
	var move mover
	switch s := src.(type) {
	case *Local:
		switch d := dst.(type) {
		case *Client:
			move = func(ctx context.Context, ds []cas.Digest, sizes map[cas.Digest]int64, sent func(int, int64, int64)) error {
				return uploadChunks(ctx, s.ix, d, ds, sizes, sent)
			}
		case *Local:
			move = func(ctx context.Context, ds []cas.Digest, _ map[cas.Digest]int64, sent func(int, int64, int64)) error {
				return copyLocal(ctx, s.ix, d.ix, ds, sent)
			}
		}
	case *Client:
		lim := opts.Limits
		switch d := dst.(type) {
		case *Local:
			move = func(ctx context.Context, ds []cas.Digest, _ map[cas.Digest]int64, sent func(int, int64, int64)) error {
				return downloadChunks(ctx, s, d.ix, ds, lim, sent)
			}
		case *Client:
			move = func(ctx context.Context, ds []cas.Digest, _ map[cas.Digest]int64, sent func(int, int64, int64)) error {
				return relayChunks(ctx, s, d, ds, lim, sent)
			}
		}
	}
	if move == nil {
		return nil, fmt.Errorf("replicate: cannot copy from %T to %T", src, dst)
	}
	return move, nil
}

func transfer(ctx context.Context, src, dst Peer, kind index.RefKind, name string, opts Options, move mover) (Stats, error) {
	opts.setDefaults()
	st := Stats{Kind: kind.String(), Name: name}
	if err := index.ValidRefName(name); err != nil {
		return st, err
	}
	head, err := src.Ref(ctx, kind, name)
	if err != nil {
		return st, fmt.Errorf("source %s %q: %w", kind, name, err)
	}
	st.Head = head
	old, err := dst.Ref(ctx, kind, name)
	if err != nil && !errors.Is(err, index.ErrRefNotFound) {
		return st, fmt.Errorf("destination %s %q: %w", kind, name, err)
	}
	st.OldHead = old
	if old == head {
		st.UpToDate = true
		return st, nil
	}

	send, err := copyChain(ctx, src, dst, head, old, opts, move, &st)
	if err != nil {
		return st, err
	}
	// The manifests and the move of the ref: one request, one transaction there.
	if err := dst.CommitRef(ctx, kind, name, old, head, send); err != nil {
		return st, fmt.Errorf("move destination %s %q from %s to %s: %w", kind, name, idOrNone(old), head, err)
	}
	return st, nil
}

// copyChain sends the chunks of manifest head and of its ancestors that dst lacks, and returns
// those manifests' bytes, parents first, for the caller to commit. old is dst's current head
// (zero: none), which must be an ancestor of head unless opts.Force; nothing is sent otherwise.
func copyChain(ctx context.Context, src, dst Peer, head, old index.ID, opts Options, move mover, st *Stats) ([][]byte, error) {
	// Walk the source's chain from its head: manifests the destination lacks are to be sent
	// (their chain ends at the first one it has, whose ancestors it has too); then on to the
	// destination's head, which must be an ancestor unless Force.
	type manifest struct {
		id   index.ID
		data []byte
		m    *index.Manifest
	}
	var send []manifest // newest first
	var base index.ID   // the newest manifest of the chain the destination already has
	found := old.IsZero()
	seen := make(map[index.ID]bool)
	sending := true
	for id := head; !id.IsZero() && !seen[id]; {
		seen[id] = true
		if id == old {
			found = true
			base = id // the destination's head: it holds that manifest
			break
		}
		if sending {
			has, err := dst.HasManifest(ctx, id)
			if err != nil {
				return nil, err
			}
			sending = !has
			if has {
				base = id
			}
		}
		if !sending && (found || opts.Force) {
			break
		}
		data, err := src.ManifestBytes(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("source manifest %s: %w", id, err)
		}
		m, err := index.Decode(data)
		if err != nil {
			return nil, fmt.Errorf("source manifest %s: %w", id, err)
		}
		if sending {
			send = append(send, manifest{id, data, m})
		}
		id = m.Parent
	}
	if !found && !opts.Force {
		return nil, fmt.Errorf("%w: the destination is at %s, which is not an ancestor of %s", ErrDiverged, old, head)
	}

	// Chunks: every distinct chunk of the manifests to send, less those of base (a manifest
	// the destination holds has all its chunks: its index refuses a manifest otherwise, and GC
	// keeps them), then only those the destination says are missing. A checkpoint shares most
	// of its chunks with its parent, so the missing-set request grows with the new blocks, not
	// with the context.
	present := make(map[cas.Digest]bool)
	if !base.IsZero() && len(send) > 0 {
		if data, err := src.ManifestBytes(ctx, base); err == nil {
			if m, err := index.Decode(data); err == nil {
				for _, d := range m.Digests() {
					present[d] = true
				}
			}
		}
	}
	sizes := make(map[cas.Digest]int64)
	var all []cas.Digest
	for _, mf := range send {
		for _, r := range mf.m.Regions {
			for _, c := range r.Chunks {
				if present[c.Digest] {
					continue
				}
				if _, ok := sizes[c.Digest]; !ok {
					sizes[c.Digest] = c.Length
					all = append(all, c.Digest)
				}
			}
		}
	}
	st.Manifests, st.Chunks = len(send), len(all)
	missing, err := dst.Missing(ctx, all)
	if err != nil {
		return nil, fmt.Errorf("ask missing chunks: %w", err)
	}
	if err := moveChunks(ctx, dst, missing, sizes, opts, move, st); err != nil {
		return nil, err
	}

	out := make([][]byte, 0, len(send))
	for i := len(send) - 1; i >= 0; i-- { // parents first
		out = append(out, send[i].data)
	}
	return out, nil
}

func idOrNone(id index.ID) string {
	if id.IsZero() {
		return "(none)"
	}
	return id.String()
}

// minBatchBytes is the smallest batch batchLimit makes to spread a transfer over streams.
const minBatchBytes = 8 << 20

// batchLimit is the most uncompressed bytes of one batch of a transfer of total bytes: the
// transfer is cut into Concurrency batches, one stream each, where that keeps them at least
// minBatchBytes (and at most opts.BatchBytes). Streams running at once keep both ends busy:
// on the 2-core benchmark machine a 32 MiB push in four streams of 8 MiB ran at 0.89–1.06×
// a plain copy's speed against 0.72–0.90× in one stream (BENCHMARKS.md).
func batchLimit(total int64, opts Options) int64 {
	even := (total + int64(opts.Concurrency) - 1) / int64(opts.Concurrency)
	return min(opts.BatchBytes, max(even, minBatchBytes))
}

// moveChunks sends the missing chunks in batches, Concurrency at a time. A failed batch is
// tried again after asking the destination which of its chunks still lack, so nothing that
// arrived is sent twice.
func moveChunks(ctx context.Context, dst Peer, missing []cas.Digest, sizes map[cas.Digest]int64, opts Options, move mover, st *Stats) error {
	var total int64
	for _, d := range missing {
		total += sizes[d]
	}
	var done atomic.Int64
	var mu sync.Mutex // guards st's counters while batches run
	sent := func(chunks int, raw, stored int64) {
		mu.Lock()
		st.ChunksSent += chunks
		st.RawBytes += raw
		st.Bytes += stored
		mu.Unlock()
		n := done.Add(raw)
		if opts.Progress != nil {
			opts.Progress(n, total)
		}
	}
	if opts.Progress != nil {
		opts.Progress(0, total)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opts.Concurrency)
	limit := batchLimit(total, opts)
	for len(missing) > 0 {
		n, bytes := 0, int64(0)
		for n < len(missing) && n < opts.BatchChunks && (n == 0 || bytes+sizes[missing[n]] <= limit) {
			bytes += sizes[missing[n]]
			n++
		}
		batch := missing[:n]
		missing = missing[n:]
		g.Go(func() error {
			delay := opts.Backoff
			for attempt := 0; ; attempt++ {
				err := move(gctx, batch, sizes, sent)
				if err == nil {
					return nil
				}
				if attempt >= opts.Retries || !retryable(err) && !errors.Is(err, io.ErrUnexpectedEOF) {
					return err
				}
				mu.Lock()
				st.Retries++
				mu.Unlock()
				t := time.NewTimer(delay)
				select {
				case <-gctx.Done():
					t.Stop()
					return err
				case <-t.C:
				}
				delay *= 2
				rest, merr := dst.Missing(gctx, batch)
				if merr != nil {
					continue // the destination may still be down; try again later
				}
				batch = rest
				if len(batch) == 0 {
					return nil
				}
			}
		})
	}
	return g.Wait()
}

// uploadChunks sends chunks from the local store to the daemon in one stream, in their stored
// form.
func uploadChunks(ctx context.Context, local *index.Index, remote *Client, ds []cas.Digest, sizes map[cas.Digest]int64, sent func(int, int64, int64)) error {
	store := local.Store()
	_, err := remote.Upload(ctx, func(sw *wire.ChunkStreamWriter) error {
		var buf []byte // one buffer for every chunk's stored form: WriteChunk only reads it
		for _, d := range ds {
			codec, stored, err := cas.AppendStored(ctx, store, d, buf, cas.HintNone)
			buf = stored
			if err != nil {
				return fmt.Errorf("read local chunk %s: %w", d, err)
			}
			// The size is the manifest's; the daemon checks it against the decoded chunk.
			size := sizes[d]
			if _, err := sw.WriteChunk(wire.StoredChunk{Digest: d, Codec: codec, Size: size, Stored: stored}); err != nil {
				return err
			}
			// Counted as sent once handed to the connection; a failure later makes the batch
			// ask again.
			sent(1, size, int64(len(stored)))
		}
		return nil
	})
	return err
}

// downloadChunks fetches chunks from the daemon in one stream and stores them locally through
// an ingester (package ingest): each chunk is verified on the workers as it arrives, and groups
// are committed and recorded behind the stream. Chunks count as sent once recorded.
func downloadChunks(ctx context.Context, remote *Client, local *index.Index, ds []cas.Digest, lim wire.StreamLimits, sent func(int, int64, int64)) error {
	in := ingest.New(ctx, local, ingest.Config{MaxChunkSize: lim.MaxChunkSize, Committed: sent})
	err := remote.download(ctx, ds, lim, func(sr *wire.ChunkStreamReader) error {
		if err := in.ReadStream(sr); err != nil {
			return fmt.Errorf("download: %w", err)
		}
		return nil
	})
	_, cerr := in.Close()
	return errors.Join(cerr, err)
}

// relayChunks moves chunks from one daemon to another: a download stream from src feeds an
// upload stream to dst, frame by frame, without decoding.
func relayChunks(ctx context.Context, src, dst *Client, ds []cas.Digest, lim wire.StreamLimits, sent func(int, int64, int64)) error {
	_, err := dst.Upload(ctx, func(sw *wire.ChunkStreamWriter) error {
		return src.Download(ctx, ds, lim, func(ch wire.StoredChunk) error {
			if _, err := sw.WriteChunk(ch); err != nil {
				return err
			}
			sent(1, ch.Size, int64(len(ch.Stored)))
			return nil
		})
	})
	return err
}

// copyLocal copies chunks between two local indexes and their stores, as stored, through an
// ingester (verified on its workers, committed and recorded in groups).
func copyLocal(ctx context.Context, src, dst *index.Index, ds []cas.Digest, sent func(int, int64, int64)) error {
	in := ingest.New(ctx, dst, ingest.Config{Committed: sent})
	var err error
	for _, d := range ds {
		var codec cas.Codec
		var stored []byte
		codec, stored, err = cas.ReadStored(ctx, src.Store(), d, cas.HintNone)
		if err != nil {
			break
		}
		if err = in.Add(wire.StoredChunk{Digest: d, Codec: codec, Size: -1, Stored: stored}); err != nil {
			break
		}
	}
	_, cerr := in.Close()
	return errors.Join(cerr, err)
}
