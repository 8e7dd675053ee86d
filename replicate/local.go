package replicate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/httpapi/wire"
	"github.com/driftstore/driftstore/index"
)

// Local is a data directory's index as a transfer Peer.
type Local struct {
	ix *index.Index
}

// NewLocal wraps ix.
func NewLocal(ix *index.Index) *Local { return &Local{ix: ix} }

var (
	_ Peer = (*Local)(nil)
	_ Peer = (*Client)(nil)
)

func (l *Local) Ref(_ context.Context, kind index.RefKind, name string) (index.ID, error) {
	return l.ix.Ref(kind, name)
}

func (l *Local) HasManifest(_ context.Context, id index.ID) (bool, error) {
	return l.ix.HasManifest(id)
}

func (l *Local) ManifestBytes(_ context.Context, id index.ID) ([]byte, error) {
	return l.ix.ManifestBytes(id)
}

func (l *Local) PutManifestBytes(ctx context.Context, data []byte) (index.ID, error) {
	return l.ix.PutManifestBytes(ctx, data)
}

// Missing answers from the index's chunk records, as a daemon does.
func (l *Local) Missing(_ context.Context, ds []cas.Digest) ([]cas.Digest, error) {
	return l.ix.MissingChunks(ds)
}

func (l *Local) CompareAndSwapRef(ctx context.Context, kind index.RefKind, name string, expected, target index.ID) error {
	return l.ix.CompareAndSwapRef(ctx, kind, name, expected, target)
}

// Refs lists the index's refs of one kind (0: all).
func (l *Local) Refs(_ context.Context, kind index.RefKind) ([]index.Ref, error) {
	return l.ix.Refs(kind)
}

// ingester stores chunks that arrive in stored form into a local index's store in groups:
// each group goes through cas.PutStoredAll (verified on several goroutines, written into one
// batch, one durability barrier) and is then recorded in one index transaction, so a chunk is
// recorded only once durable and verified. The caller holds the index's HoldGC from the first
// add until finish. Use: newIngester, add or readStream, finish (always). Not safe for
// concurrent use.
type ingester struct {
	ix      *index.Index
	workers int
	sent    func(chunks int, raw, stored int64)

	group []cas.StoredChunk
	sizes []int64 // the size each chunk's frame declared (-1: unknown)
	ap    *[]byte // the pooled arena
	arena []byte  // backing store for the group's stored bytes, reused between groups
}

// Groups end at ingestChunks chunks or ingestBytes stored bytes, as on a daemon.
const (
	ingestChunks = 256
	ingestBytes  = 8 << 20
)

// arenas holds ingest arenas (capacity ingestBytes) between transfers.
var arenas = sync.Pool{New: func() any { b := make([]byte, 0, ingestBytes); return &b }}

func newIngester(ix *index.Index, sent func(int, int64, int64)) *ingester {
	ap := arenas.Get().(*[]byte)
	return &ingester{ix: ix, workers: min(runtime.GOMAXPROCS(0), 8), sent: sent, ap: ap, arena: (*ap)[:0]}
}

// finish stores the last group and lets go of the arena; the ingester is not used afterwards.
// It returns the group's error, if any, joined before err.
func (in *ingester) finish(ctx context.Context, err error) error {
	if ferr := in.flush(ctx); ferr != nil {
		err = errors.Join(ferr, err)
	}
	in.arena, in.group = nil, nil
	arenas.Put(in.ap)
	return err
}

// readStream adds every chunk of sr, reading each frame straight into the group's arena. A
// stream that breaks off leaves the chunks that arrived whole in the group (finish stores
// them); the error then says where it broke.
func (in *ingester) readStream(ctx context.Context, sr *wire.ChunkStreamReader) error {
	for {
		ch, grown, err := sr.NextInto(in.arena)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("download: %w", err)
		}
		if len(grown) > len(in.arena) {
			in.arena = grown
			in.group = append(in.group, cas.StoredChunk{Digest: ch.Digest, Codec: ch.Codec, Stored: ch.Stored})
			in.sizes = append(in.sizes, ch.Size)
			if len(in.group) >= ingestChunks {
				err = in.flush(ctx)
			}
		} else {
			err = in.add(ctx, ch)
		}
		if err != nil {
			return err
		}
	}
}

// add copies ch (its Stored bytes are only read during the call) into the current group,
// storing the group first when it is full.
func (in *ingester) add(ctx context.Context, ch wire.StoredChunk) error {
	if len(in.group) >= ingestChunks || len(in.arena)+len(ch.Stored) > cap(in.arena) && len(in.group) > 0 {
		if err := in.flush(ctx); err != nil {
			return err
		}
	}
	var stored []byte
	if len(ch.Stored) > cap(in.arena)-len(in.arena) {
		stored = bytes.Clone(ch.Stored)
	} else {
		start := len(in.arena)
		in.arena = append(in.arena, ch.Stored...)
		stored = in.arena[start:len(in.arena):len(in.arena)]
	}
	in.group = append(in.group, cas.StoredChunk{Digest: ch.Digest, Codec: ch.Codec, Stored: stored})
	in.sizes = append(in.sizes, ch.Size)
	return nil
}

// flush stores and records the current group. Every chunk of it that verifies is committed and
// recorded, also when another one fails; the error names the first that failed. It finishes
// its work when ctx ends: the bytes have arrived.
func (in *ingester) flush(ctx context.Context) error {
	if len(in.group) == 0 {
		return nil
	}
	ctx = context.WithoutCancel(ctx)
	group, sizes := in.group, in.sizes
	defer func() {
		clear(group) // let go of chunks cloned outside the arena
		in.group, in.sizes, in.arena = group[:0], sizes[:0], in.arena[:0]
	}()
	infos, err := cas.PutStoredAll(ctx, in.ix.Store(), in.workers, group)
	if infos == nil {
		return err
	}
	stored := make([]cas.Info, 0, len(infos))
	for i, info := range infos {
		if info.Digest != group[i].Digest {
			continue // not stored (err says why)
		}
		if sizes[i] >= 0 && info.Size != sizes[i] && err == nil {
			// Valid content for its digest, only the declared size was wrong: keep the chunk,
			// refuse the rest.
			err = fmt.Errorf("chunk %s: the stream declared %d bytes, it has %d", info.Digest, sizes[i], info.Size)
		}
		stored = append(stored, info)
	}
	if len(stored) > 0 {
		if rerr := in.ix.RecordChunks(ctx, stored); rerr != nil {
			return fmt.Errorf("record %d chunks: %w", len(stored), rerr)
		}
	}
	for i, info := range infos {
		if info.Digest == group[i].Digest {
			in.sent(1, info.Size, int64(len(group[i].Stored)))
		}
	}
	return err
}
