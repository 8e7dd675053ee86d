package checkpoint

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/guest"
	"github.com/driftstore/driftstore/index"
)

// Blocks are KV block chunks known to hold the KV of a token prefix: KV[l] lists layer l's
// chunks for blocks 0, 1, … as they were when exactly Tokens had been fed (block b covers
// positions [b*BlockSize, (b+1)*BlockSize); positions not yet written are zero). KV is
// append-only, so block b of a live instance whose history shares a prefix of at least
// min((b+1)*BlockSize, position) tokens with Tokens holds exactly those bytes: capture reuses its
// chunk without reading the block.
type Blocks struct {
	Tokens []int32
	KV     [][]index.ChunkRef
}

// Known returns the blocks of c as Blocks (what a child checkpoint may reuse).
func (c *Checkpoint) Known() Blocks {
	return Blocks{Tokens: c.Tokens, KV: c.KV}
}

// CaptureOptions configure Capture.
type CaptureOptions struct {
	// Parent is the checkpoint this one follows (its ID becomes the manifest's parent); nil for
	// none. Its blocks that the instance has not changed since are reused (see Blocks).
	Parent *Checkpoint
	// Reuse lists more known blocks (from a prefix-cache restore, say). Every chunk named here
	// must be durable in the store and recorded in the index; if garbage collection removed one
	// meanwhile, committing the manifest fails with index.ErrMissingChunks (retry without Reuse).
	Reuse []Blocks
	// ModelSource is recorded in the manifest (where to find the model again).
	ModelSource string
	// Workers bounds the chunks stored at once; 0 means GOMAXPROCS.
	Workers int
	// KVCodec selects how KV blocks are encoded at rest (KVCodecDefault: KVCodecFloat);
	// KVCodecRaw trades bytes at rest for restores at copy speed. Digests are the same either
	// way. An unknown value is an error.
	KVCodec KVCodec
	// BeforeCommit, when set, runs after every chunk is durable and before the chunks are
	// recorded and the manifest committed, which happen together in one index transaction
	// (tests use it to observe that moment).
	BeforeCommit func()
}

// Result describes a capture.
type Result struct {
	Checkpoint    *Checkpoint
	Position      int
	Blocks        int   // KV block chunks the checkpoint names
	BlocksWritten int   // blocks read and stored (the rest reused without reading)
	BlocksNew     int   // of BlocksWritten, chunks that were not in the store before
	KVBytes       int64 // bytes of all KV blocks named
	BytesWritten  int64 // KV and state bytes hashed and stored
	StoredNew     int64 // bytes at rest of the chunks that were new to the store
	Duration      time.Duration
	// Phases of Duration: reading the guest's state and KV regions (Prepare); hashing, encoding
	// and durably storing the chunks (Store); recording them and committing the manifest
	// (Commit).
	Prepare, Store, Commit time.Duration
	// Parts of Store and Commit: hashing, encoding and writing the chunks (Put); then the
	// chunks' durability barrier (Sync) and, at the same time, building, encoding and hashing
	// the manifest (Encode); the index transaction that records the chunks and commits the
	// manifest, its own durability included (Index).
	Put, Sync, Encode, Index time.Duration
}

// Capture checkpoints a live instance into the store and index bound to ix: it stores one chunk
// per KV block region in use (in parallel, at most opts.Workers at once; blocks known from the
// parent or opts.Reuse are not read) and the small state as a chunk, all in one store batch made
// durable with one barrier, and only then records them and commits the manifest, in one index
// transaction (index.CommitManifest). It does not move any ref. The instance must not be
// used by anyone else during the call (its memory is read in place). Cost grows with the blocks
// not known, not with the context.
//
// A crash or cancellation at any point leaves at worst chunks without a manifest (garbage for
// GC); the previous checkpoint and the index stay consistent.
func Capture(ctx context.Context, ix *index.Index, model *engine.Model, in *engine.Instance, opts CaptureOptions) (*Result, error) {
	start := time.Now()
	store := ix.Store()
	layout := LayoutOf(in.Layout())
	sbuf := statePool.Get().(*[]byte)
	state, err := in.AppendState((*sbuf)[:0])
	if err != nil {
		statePool.Put(sbuf)
		return nil, fmt.Errorf("checkpoint: save state: %w", err)
	}
	// The chunks are only read during their Put, and nothing keeps state past this call (the
	// token history is parsed into a slice of its own).
	defer func() {
		*sbuf = state[:0]
		statePool.Put(sbuf)
	}()
	// The head is all Capture needs to read; the logits are stored as they are.
	st, err := ParseStateHead(state[:min(len(state), stateFixed)], -1)
	if err == nil {
		if want := st.HeadLen + 4*st.NLogits; len(state) != want {
			err = fmt.Errorf("%w: guest state of %d bytes does not hold position %d and %d logits", ErrBadCheckpoint, len(state), st.Position, st.NLogits)
		} else {
			st, err = ParseStateHead(state[:st.HeadLen], st.NLogits)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	regions, err := in.KVRegions()
	if err != nil {
		return nil, fmt.Errorf("checkpoint: KV regions: %w", err)
	}
	nb := layout.Blocks(st.Position)
	if st.Position == 0 {
		return nil, fmt.Errorf("checkpoint: %w: nothing has been fed yet", ErrEmpty)
	}
	if len(regions) != nb*layout.Layers {
		return nil, fmt.Errorf("checkpoint: guest lists %d KV regions for %d layers × %d blocks", len(regions), layout.Layers, nb)
	}
	cp := &Checkpoint{
		Model: model.Fingerprint(), ModelSource: opts.ModelSource, Vocab: model.Hyper().Vocab,
		Guest: cas.Digest(guest.Fingerprint), GuestABI: guest.ABIVersion,
		Layout: layout, Position: st.Position, Tokens: st.Tokens, Sampler: st.Sampler, RNG: st.RNG,
		HasLogits: st.NLogits > 0, KV: make([][]index.ChunkRef, layout.Layers),
	}
	if opts.Parent != nil {
		cp.Parent = opts.Parent.ID
	}
	for l := range cp.KV {
		cp.KV[l] = make([]index.ChunkRef, nb)
	}

	// Known blocks: from the parent and opts.Reuse, where their tokens are a prefix of ours.
	known := opts.Reuse
	if opts.Parent != nil && opts.Parent.Layout == layout {
		known = append([]Blocks{opts.Parent.Known()}, known...)
	}
	have := make([][]bool, layout.Layers)
	for l := range have {
		have[l] = make([]bool, nb)
	}
	for _, k := range known {
		if len(k.KV) != layout.Layers {
			continue
		}
		common := commonPrefix(k.Tokens, st.Tokens)
		for l := range k.KV {
			for b := 0; b < len(k.KV[l]) && b < nb && min((b+1)*layout.BlockSize, st.Position) <= common; b++ {
				if !have[l][b] && k.KV[l][b].Length == int64(layout.BlockBytes) {
					cp.KV[l][b] = k.KV[l][b]
					have[l][b] = true
				}
			}
		}
	}

	prepared := time.Now()
	// Hold off garbage collection from the first Put to the manifest commit.
	release := ix.HoldGC()
	defer release()

	mem := in.Memory()
	if _, err := ParseKVCodec(string(opts.KVCodec)); err != nil {
		return nil, err
	}
	hint := opts.KVCodec.Hint(layout)
	var jobs []job
	for _, r := range regions {
		if r.Block >= nb || r.Layer >= layout.Layers {
			return nil, fmt.Errorf("checkpoint: guest region %+v outside position %d", r, st.Position)
		}
		if have[r.Layer][r.Block] {
			continue
		}
		end := uint64(r.Offset) + uint64(r.Length)
		if end > uint64(len(mem)) || int(r.Length) != layout.BlockBytes {
			return nil, fmt.Errorf("checkpoint: guest region %+v outside memory", r)
		}
		jobs = append(jobs, job{data: mem[r.Offset:end:end], l: r.Layer, b: r.Block, hint: hint})
	}
	written := len(jobs)
	// The small state: the head (fixed part and token history) as one chunk, the logits as
	// chunks of at most LogitsChunk bytes, so that a restore decodes them in parallel straight
	// into the guest's buffers. They go first: at short contexts they are most of the work.
	sj := []job{{data: state[:st.HeadLen:st.HeadLen], state: 1, hint: cas.HintNone}}
	for off := st.HeadLen; off < len(state); off += LogitsChunk {
		end := min(off+LogitsChunk, len(state))
		sj = append(sj, job{data: state[off:end:end], state: 1, hint: cas.HintFloat32})
	}
	jobs = append(sj, jobs...)
	infos := make([]cas.Info, len(jobs))
	existed := make([]bool, len(jobs))
	workers := opts.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	// One batch: the workers hash, encode and write the chunks; Commit makes them all durable
	// with one barrier instead of one per chunk.
	batch := cas.NewBatch(store)
	defer batch.Discard()
	// A Batcher's batch makes its chunks visible only at Commit, so a chunk its Put hashed and
	// the store already shows was there before (a shared prefix): one hash per chunk. Other
	// stores' Puts are visible at once, so there Capture asks before it puts (two hashes).
	_, statAfter := store.(cas.Batcher)
	var bytesWritten atomic.Int64
	err = parallel(ctx, workers, len(jobs), func(ctx context.Context, i int) error {
		j := jobs[i]
		// A chunk already present costs a hash and a stat, and is counted as not new.
		// Recording it below restarts its grace period for GC.
		if !statAfter {
			d := cas.Sum(j.data)
			if info, err := store.Stat(ctx, d); err == nil && info.Size == int64(len(j.data)) {
				infos[i], existed[i] = info, true
				bytesWritten.Add(int64(len(j.data)))
				return nil
			}
		}
		info, err := batch.Put(ctx, j.data, j.hint)
		if err != nil {
			return fmt.Errorf("checkpoint: store %s: %w", j.name(), err)
		}
		infos[i] = info
		if statAfter {
			if _, err := store.Stat(ctx, info.Digest); err == nil {
				existed[i] = true
			}
		}
		bytesWritten.Add(int64(len(j.data)))
		return nil
	})
	if err != nil {
		return nil, err
	}
	put := time.Now()
	for i, j := range jobs {
		ref := index.ChunkRef{Digest: infos[i].Digest, Length: int64(len(j.data))}
		switch j.state {
		case 0:
			cp.KV[j.l][j.b] = ref
		default:
			cp.State = append(cp.State, ref)
		}
	}
	// The durability barrier of the chunks (Commit) runs while the manifest of the whole
	// context is built, encoded and hashed: the barrier is mostly waiting on the disk, the
	// manifest mostly CPU, and the manifest is committed only after the barrier.
	synced := make(chan error, 1)
	var syncedAt time.Time
	go func() {
		err := batch.Commit(ctx)
		syncedAt = time.Now()
		synced <- err
	}()
	var enc *index.Encoded
	m, err := cp.Manifest()
	if err == nil {
		enc, err = m.Encoded()
	}
	encoded := time.Now()
	if serr := <-synced; serr != nil {
		return nil, fmt.Errorf("checkpoint: store %d chunks: %w", len(jobs), serr)
	}
	if err != nil {
		return nil, fmt.Errorf("checkpoint: manifest: %w", err)
	}
	stored := time.Now()
	if opts.BeforeCommit != nil {
		opts.BeforeCommit()
	}
	// Record the chunks and commit the manifest in one index transaction: the manifest is
	// committed only with every chunk it names durable (above) and recorded (here). Chunks the
	// parent names at the same place are not looked up again (index.PutManifest).
	ixStart := time.Now()
	if err := ix.CommitEncoded(ctx, infos, enc); err != nil {
		return nil, fmt.Errorf("checkpoint: commit manifest: %w", err)
	}
	cp.ID = enc.ID()
	res := &Result{
		Checkpoint: cp, Position: st.Position, Blocks: nb * layout.Layers, BlocksWritten: written,
		KVBytes: cp.KVBytes(), BytesWritten: bytesWritten.Load(), Duration: time.Since(start),
		Prepare: prepared.Sub(start), Store: stored.Sub(prepared),
		Put: put.Sub(prepared), Sync: syncedAt.Sub(put), Encode: encoded.Sub(put), Index: time.Since(ixStart),
	}
	res.Commit = res.Duration - res.Prepare - res.Store
	for i := range jobs {
		if !existed[i] {
			if jobs[i].state == 0 {
				res.BlocksNew++
			}
			res.StoredNew += infos[i].StoredSize
		}
	}
	return res, nil
}

// statePool holds buffers for the guest's small state (512 KiB of logits at a 128k
// vocabulary): a fresh slice per capture costs about as much as reading the state.
var statePool = sync.Pool{New: func() any { return new([]byte) }}

// LogitsChunk is the most bytes of logits Capture stores in one chunk (a restore decodes the
// chunks of a 128K-entry vocabulary's 512 KiB of logits on several cores at once).
const LogitsChunk = 128 << 10

type job struct {
	data  []byte
	l, b  int
	hint  cas.Hint
	state int // 0: KV block; 1: small state
}

func (j *job) name() string {
	switch j.state {
	case 1:
		return "state"
	}
	return fmt.Sprintf("layer %d block %d", j.l, j.b)
}

func commonPrefix(a, b []int32) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

// parallel runs fn(ctx, i) for i in [0, n) on at most workers goroutines, stopping at the first
// error (returned) or when ctx ends.
func parallel(ctx context.Context, workers, n int, fn func(context.Context, int) error) error {
	workers = max(1, min(workers, n))
	g, ctx := errgroup.WithContext(ctx)
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
