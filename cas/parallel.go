package cas

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"
)

// PutAll stores chunks with at most workers Puts in flight (workers < 1 means 1) and returns
// their Infos in the order of chunks. It runs a fixed pool of min(workers, len(chunks))
// goroutines that take chunks in order; the first error cancels the rest (through the context
// passed to Put) and is returned, with the index of the chunk. chunks are only read.
//
// When s is a Batcher, the chunks go through one Batch (see NewBatch): the workers encode and
// write them, and one Commit at the end makes them all durable and visible, which on a local
// disk costs one or two syncs instead of one per chunk. The guarantees are those of Put for
// each chunk once PutAll returns nil; on error, some chunks may be stored and the rest are not.
func PutAll(ctx context.Context, s Store, workers int, chunks [][]byte, hint Hint) ([]Info, error) {
	b := NewBatch(s)
	defer b.Discard()
	infos := make([]Info, len(chunks))
	err := forEach(ctx, workers, len(chunks), func(ctx context.Context, i int) error {
		info, err := b.Put(ctx, chunks[i], hint)
		if err != nil {
			return fmt.Errorf("put chunk %d: %w", i, err)
		}
		infos[i] = info
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := b.Commit(ctx); err != nil {
		return nil, fmt.Errorf("put %d chunks: %w", len(chunks), err)
	}
	return infos, nil
}

// StoredChunk is one chunk in stored form for PutStoredAll: the digest of its content, the
// codec and the stored bytes (see codec.go).
type StoredChunk struct {
	Digest Digest
	Codec  Codec
	Stored []byte
}

// PutStoredAll verifies and stores chunks given in stored form through one Batch (NewBatch),
// with at most workers PutStored in flight (workers < 1 means 1) on a fixed pool of goroutines,
// then commits the batch: on a local disk, one durability barrier for them all, and decoding
// and verification spread over the workers.
//
// Unlike PutAll it does not stop at a chunk that fails: every chunk is tried, and the batch
// commits every one that verified (a chunk that fails is never committed). infos[i] is chunk
// i's Info, or the zero Info for a chunk not stored; err is the error of the first chunk in
// order that failed, naming its index (a *CorruptError, wrapped, for a stored form that does
// not decode to its digest). When the context ends, the chunks not yet tried fail with its
// error. When Commit fails, infos is nil and err says why: some of the chunks may be stored,
// the rest are not. chunks' stored bytes are only read during the call.
func PutStoredAll(ctx context.Context, s Store, workers int, chunks []StoredChunk) (infos []Info, err error) {
	b := NewBatch(s)
	defer b.Discard()
	infos = make([]Info, len(chunks))
	errs := make([]error, len(chunks))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range max(1, min(workers, len(chunks))) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(chunks) {
					return
				}
				c := chunks[i]
				info, err := b.PutStored(ctx, c.Digest, c.Codec, c.Stored)
				if err != nil {
					errs[i] = fmt.Errorf("put stored chunk %d: %w", i, err)
					continue
				}
				infos[i] = info
			}
		}()
	}
	wg.Wait()
	for _, e := range errs {
		if e != nil {
			err = e
			break
		}
	}
	if cerr := b.Commit(context.WithoutCancel(ctx)); cerr != nil {
		return nil, fmt.Errorf("put %d stored chunks: %w", len(chunks), cerr)
	}
	return infos, err
}

// GetRequest asks GetAll to decode chunk Digest into Dst, whose length must be the chunk's
// size: Dst is typically the chunk's place in a larger buffer, such as a region of live Wasm
// linear memory.
type GetRequest struct {
	Digest Digest
	Dst    []byte
}

// GetAll decodes and verifies every request's chunk straight into its Dst, with at most workers
// Gets in flight (workers < 1 means 1), through a fixed pool of goroutines. GetAll never
// writes outside the requests' Dst ranges (it passes Dst[:0:len(Dst)], so a chunk of another
// size cannot spill into neighbouring memory); a chunk whose size is not len(Dst) fails with
// ErrSizeMismatch. The first error cancels the rest and is returned; the Dst ranges are then
// unspecified.
func GetAll(ctx context.Context, s Store, workers int, reqs []GetRequest) error {
	return forEach(ctx, workers, len(reqs), func(ctx context.Context, i int) error {
		r := reqs[i]
		got, err := s.Get(ctx, r.Digest, r.Dst[:0:len(r.Dst)])
		if err != nil {
			return fmt.Errorf("get chunk %d: %w", i, err)
		}
		if len(got) != len(r.Dst) || (len(got) > 0 && &got[0] != &r.Dst[0]) {
			return fmt.Errorf("get chunk %d %s: %w: chunk is %d bytes, destination %d", i, r.Digest, ErrSizeMismatch, len(got), len(r.Dst))
		}
		return nil
	})
}

// forEach runs fn(ctx, i) for i in [0, n) on min(workers, n) goroutines, stopping at the first
// error or when ctx ends.
func forEach(ctx context.Context, workers, n int, fn func(context.Context, int) error) error {
	workers = max(1, min(workers, n))
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(workers)
	var next atomic.Int64
	for range workers {
		g.Go(func() error {
			for {
				if err := ctx.Err(); err != nil {
					return err
				}
				i := int(next.Add(1) - 1)
				if i >= n {
					return nil
				}
				if err := fn(ctx, i); err != nil {
					return err
				}
			}
		})
	}
	return g.Wait()
}
