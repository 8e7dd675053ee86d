package checkpoint

import (
	"context"
	"errors"
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
	"github.com/driftstore/driftstore/internal/prefix"
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
	// TopLogits is the fewest of the best logits a checkpoint keeps instead of the whole
	// vector when its sampler reads only the best few (engine.Sampler.Candidates: 1 when
	// greedy, k for top-k sampling with 0 < k < vocab): it keeps K = max(TopLogits, what the
	// sampler reads) of them (Checkpoint.TopLogits), K·8 bytes instead of 4·vocab, so a later
	// top-k change up to K needs no recompute. 0 means DefaultTopLogits. The whole vector is
	// kept when the sampler reads all of it (temperature with top-k 0, with or without top-p),
	// when K entries would not be smaller than the vector (K ≥ vocab/2), and with KeepLogits.
	// An instance whose own logits are partial (restored from top logits:
	// engine.Instance.LogitsTop) keeps at most the entries it holds, even when its sampler
	// now reads more (its restore recomputes them when it samples); a negative value is an
	// error.
	TopLogits int
	// KeepLogits keeps the whole logits vector whatever the sampler (the checkpoint as before
	// top logits). An instance with partial logits recomputes them first
	// (engine.Instance.CompleteLogits: one token's forward pass).
	KeepLogits bool
	// BeforeStore, when set, runs at the start of Commit, before any chunk is hashed or the
	// garbage collector held off; BeforeSync after every chunk was put and before the
	// durability barrier. Tests use them to hold a commit (of a snapshot whose instance runs
	// on meanwhile) at those moments.
	BeforeStore, BeforeSync func()
	// MoveRef, when set, moves a ref to the new checkpoint (compare-and-swap from
	// MoveRef.Expected; MoveRef.Target is ignored) in the same index transaction: a conflict
	// commits nothing (the error wraps index.ErrConflict).
	MoveRef *index.RefMove
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
	// and writing the chunks, making them durable and committing the manifest that records
	// them (Store: index.CommitBatch); what is left (Commit).
	Prepare, Store, Commit time.Duration
	// Parts of Store: hashing, encoding and writing the chunks (Put), and the rest of the commit
	// (Sync: where the store journals, writing the chunks, then the one barrier of the chunks
	// and the journal entry, beside which the manifest is encoded, hashed and checked;
	// elsewhere, the chunks' barrier, then the index transaction with its own two barriers,
	// which is also Index). Encode, within Sync, is the time spent building the manifest, beside
	// the chunks' write or barrier. With the journal Index is 0: the index file is brought up
	// to date in the background.
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
// Capture is TakeSnapshot and Snapshot.Commit in one call, except that the blocks are read in
// place rather than copied (the instance is not used until Capture returns).
//
// A crash or cancellation at any point leaves at worst chunks without a manifest (garbage for
// GC); the previous checkpoint and the index stay consistent.
func Capture(ctx context.Context, ix *index.Index, model *engine.Model, in *engine.Instance, opts CaptureOptions) (*Result, error) {
	snap, err := takeSnapshot(model, in, opts, false)
	if err != nil {
		return nil, err
	}
	return snap.Commit(ctx, ix)
}

// Snapshot is a checkpoint read out of a live instance and not yet stored: the small state and
// copies of exactly the KV blocks a Capture with the same options would store (those not known
// from the parent or the reused blocks), in buffers the snapshot owns (pooled). Nothing of it
// is hashed, encoded or written before Commit. Once TakeSnapshot has returned, the snapshot is
// independent of the instance: the instance may run on (feed tokens, write into its last,
// partial block) or be closed while the snapshot is committed on another goroutine.
//
// A Snapshot is used once: Commit it, or Release it. It is not safe for concurrent use (one
// Commit at a time); its read-only accessors may be called at any time.
type Snapshot struct {
	cp      *Checkpoint // all but the references of the chunks in jobs, and the ID
	opts    CaptureOptions
	state   []byte  // the guest's small state (in *sbuf)
	sbuf    *[]byte // from statePool
	headLen int
	jobs    []job // the KV blocks to store (owned copies, or live memory for Capture)
	bufs    []*[]byte
	pool    *sync.Pool // of the layout's block buffers (bufs)
	used    bool

	start    time.Time
	duration time.Duration
	copied   int64
}

// TakeSnapshot reads a live instance's checkpoint (see Snapshot) without storing anything: it
// calls into the guest for its state and its KV region list (the calls end with the backend's
// barrier, so on a GPU backend linear memory holds every KV byte written so far; see
// engine.Syncer), decides which blocks the parent and opts.Reuse already hold, and copies the
// others and the state into buffers the snapshot owns. Its cost grows with the bytes copied: the
// blocks the tokens since the parent touched, plus the logits (or the selection of the top
// logits, see CaptureOptions.TopLogits). The instance must not be used by
// anyone else during the call; afterwards it is free.
//
// The options are those of Capture; Commit uses Workers, KVCodec and the hooks. Reuse's chunks
// must still be in the store when Commit runs (see CaptureOptions.Reuse).
func TakeSnapshot(model *engine.Model, in *engine.Instance, opts CaptureOptions) (*Snapshot, error) {
	return takeSnapshot(model, in, opts, true)
}

// takeSnapshot is TakeSnapshot; with own false its KV jobs alias the instance's memory (Capture,
// which commits before the instance runs again).
func takeSnapshot(model *engine.Model, in *engine.Instance, opts CaptureOptions, own bool) (*Snapshot, error) {
	start := time.Now()
	if _, err := ParseKVCodec(string(opts.KVCodec)); err != nil {
		return nil, err
	}
	if opts.TopLogits < 0 {
		return nil, fmt.Errorf("checkpoint: %d top logits", opts.TopLogits)
	}
	layout := LayoutOf(in.Layout())
	sbuf := statePool.Get().(*[]byte)
	state, err := in.AppendStateHead((*sbuf)[:0])
	if err != nil {
		statePool.Put(sbuf)
		return nil, fmt.Errorf("checkpoint: save state: %w", err)
	}
	snap := &Snapshot{opts: opts, state: state, sbuf: sbuf, start: start}
	ok := false
	defer func() {
		if !ok {
			snap.Release()
		}
	}()
	// The head is all a snapshot needs to parse; then the logits follow it in the state
	// buffer as they are, or only the best of them (top logits).
	st, err := ParseStateHead(state[:min(len(state), stateFixed)], -1)
	if err == nil {
		if len(state) != st.HeadLen {
			err = fmt.Errorf("%w: guest state head of %d bytes does not hold position %d", ErrBadCheckpoint, len(state), st.Position)
		} else {
			st, err = ParseStateHead(state, st.NLogits)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	snap.headLen = st.HeadLen
	top := 0
	if st.NLogits > 0 {
		top = topLogits(opts, st.Sampler, st.NLogits, in.LogitsTop())
		if top > 0 {
			ids, vals := make([]int32, top), make([]float32, top)
			if err = in.TopLogits(ids, vals); err == nil {
				state = AppendTopLogits(state, ids, vals)
			}
		} else if state, err = in.AppendLogits(state); err == nil && len(state) != st.HeadLen+4*st.NLogits {
			err = fmt.Errorf("%w: guest state of %d bytes does not hold position %d and %d logits", ErrBadCheckpoint, len(state), st.Position, st.NLogits)
		}
		if state != nil {
			snap.state = state
		}
		if err != nil {
			return nil, fmt.Errorf("checkpoint: save logits: %w", err)
		}
	}
	table, err := in.KVTable()
	if err != nil {
		return nil, fmt.Errorf("checkpoint: KV regions: %w", err)
	}
	nb := layout.Blocks(st.Position)
	if st.Position == 0 {
		return nil, fmt.Errorf("checkpoint: %w: nothing has been fed yet", ErrEmpty)
	}
	if len(table) != layout.Layers || len(table[0]) != nb {
		return nil, fmt.Errorf("checkpoint: guest lists KV blocks of %d layers for %d layers × %d blocks", len(table), layout.Layers, nb)
	}
	cp := &Checkpoint{
		Model: model.Fingerprint(), ModelSource: opts.ModelSource, Vocab: model.Hyper().Vocab,
		Guest: cas.Digest(guest.Fingerprint), GuestABI: guest.ABIVersion,
		Layout: layout, Position: st.Position, Tokens: st.Tokens, Sampler: st.Sampler, RNG: st.RNG,
		HasLogits: st.NLogits > 0, TopLogits: top, KV: make([][]index.ChunkRef, layout.Layers),
	}
	snap.cp = cp
	if opts.Parent != nil {
		cp.Parent = opts.Parent.ID
	}
	refs := make([]index.ChunkRef, layout.Layers*nb) // one allocation for every layer's
	for l := range cp.KV {
		cp.KV[l] = refs[l*nb : (l+1)*nb : (l+1)*nb]
	}

	// Known blocks: from the parent and opts.Reuse, where their tokens are a prefix of ours.
	// A block not known keeps a zero reference until Commit stores it.
	known := opts.Reuse
	if opts.Parent != nil && opts.Parent.Layout == layout {
		known = append([]Blocks{opts.Parent.Known()}, known...)
	}
	// Block b is known from k when the tokens it holds, [b*BlockSize, min((b+1)*BlockSize,
	// position)), are all in the common prefix: the first common/BlockSize blocks, or all of
	// them when every token is.
	blockBytes := int64(layout.BlockBytes)
	for _, k := range known {
		if len(k.KV) != layout.Layers {
			continue
		}
		common := prefix.Common(k.Tokens, st.Tokens)
		nk := common / layout.BlockSize
		if common == st.Position {
			nk = nb
		}
		for l := range k.KV {
			src := k.KV[l][:min(nk, len(k.KV[l]))]
			dst := cp.KV[l][:len(src)]
			for b := range src {
				if dst[b].Length == 0 && src[b].Length == blockBytes {
					dst[b] = src[b]
				}
			}
		}
	}

	mem := in.Memory()
	for l, offs := range table {
		for b, off := range offs {
			if cp.KV[l][b].Length != 0 { // known
				continue
			}
			end := uint64(off) + uint64(layout.BlockBytes)
			if end > uint64(len(mem)) {
				return nil, fmt.Errorf("checkpoint: guest block %d of layer %d at %d outside memory", b, l, off)
			}
			snap.jobs = append(snap.jobs, job{data: mem[off:end:end], l: l, b: b})
		}
	}
	if own && len(snap.jobs) > 0 {
		snap.copyBlocks(layout.BlockBytes, opts.Workers)
	}
	snap.duration = time.Since(start)
	ok = true
	return snap, nil
}

// copyBlocks replaces the jobs' data (live memory) by copies in pooled buffers, on up to
// workers goroutines (0: GOMAXPROCS) when there is enough to copy.
func (s *Snapshot) copyBlocks(blockBytes, workers int) {
	p, _ := blockPools.LoadOrStore(blockBytes, &sync.Pool{New: func() any {
		b := make([]byte, blockBytes)
		return &b
	}})
	s.pool = p.(*sync.Pool)
	s.bufs = make([]*[]byte, len(s.jobs))
	for i := range s.bufs {
		s.bufs[i] = s.pool.Get().(*[]byte)
	}
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	// Below about 1 MiB a goroutine's start costs more than it saves.
	workers = max(1, min(workers, len(s.jobs)*blockBytes>>20))
	cp := func(i int) {
		buf := *s.bufs[i]
		copy(buf, s.jobs[i].data)
		s.jobs[i].data = buf[:blockBytes:blockBytes]
	}
	if workers == 1 {
		for i := range s.jobs {
			cp(i)
		}
	} else {
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				for i := w; i < len(s.jobs); i += workers {
					cp(i)
				}
			})
		}
		wg.Wait()
	}
	s.copied = int64(len(s.jobs)) * int64(blockBytes)
}

// blockPools holds pools of KV block buffers by block size (*sync.Pool of *[]byte).
var blockPools sync.Map

// Duration is the time TakeSnapshot took: what a turn that commits in the background pays.
func (s *Snapshot) Duration() time.Duration { return s.duration }

// Position is the number of tokens the snapshot holds.
func (s *Snapshot) Position() int { return s.cp.Position }

// Parent is the ID of the checkpoint the snapshot follows (zero for none).
func (s *Snapshot) Parent() index.ID { return s.cp.Parent }

// BlocksCopied is the number of KV blocks the snapshot holds (to be stored); BytesCopied their
// bytes plus the state's.
func (s *Snapshot) BlocksCopied() int { return len(s.jobs) }

// BytesCopied is the bytes the snapshot copied out of the instance: its KV blocks and state.
func (s *Snapshot) BytesCopied() int64 { return s.copied + int64(len(s.state)) }

// Blocks is the number of KV block chunks the checkpoint will name.
func (s *Snapshot) Blocks() int { return s.cp.Layout.Layers * s.cp.Layout.Blocks(s.cp.Position) }

// Release returns the snapshot's buffers to their pools without committing it. Idempotent;
// Commit releases them itself. After Release, Commit fails with ErrSnapshotUsed.
func (s *Snapshot) Release() {
	s.used = true
	if s.sbuf != nil {
		*s.sbuf = s.state[:0]
		statePool.Put(s.sbuf)
		s.sbuf, s.state = nil, nil
	}
	for i, b := range s.bufs {
		s.pool.Put(b)
		s.bufs[i] = nil
	}
	s.bufs = nil
	for i := range s.jobs {
		s.jobs[i].data = nil
	}
}

// ErrSnapshotUsed is returned by Commit of a snapshot already committed or released.
var ErrSnapshotUsed = errors.New("checkpoint: snapshot already committed or released")

// Commit stores the snapshot as Capture would have stored it when the snapshot was taken: it
// hashes and encodes the state and the copied blocks, puts them in one store batch made durable
// with one barrier, then records them and commits the manifest in one index transaction; it
// does not move any ref. The checkpoint and its ID are exactly Capture's for the same instance
// state and options. It may run on any goroutine, while the instance runs on. It releases the
// snapshot's buffers when it returns, whatever the outcome: a snapshot is committed once.
//
// The Result's Duration is the snapshot's time plus the commit's own (not the time between
// them); Prepare is the snapshot's time.
func (s *Snapshot) Commit(ctx context.Context, ix *index.Index) (*Result, error) {
	if s.used {
		return nil, ErrSnapshotUsed
	}
	defer s.Release()
	start := time.Now()
	opts, cp, state, st := s.opts, s.cp, s.state, s.headLen
	layout := cp.Layout
	nb := layout.Blocks(cp.Position)
	store := ix.Store()
	if opts.BeforeStore != nil {
		opts.BeforeStore()
	}
	// Hold off garbage collection from the first Put to the manifest commit.
	release := ix.HoldGC()
	defer release()

	hint := opts.KVCodec.Hint(layout)
	// The small state: the head (fixed part and token history) as one chunk, the logits as
	// chunks of at most LogitsChunk bytes, so that a restore decodes them in parallel straight
	// into the guest's buffers. They go first: at short contexts they are most of the work.
	// Top logits are one small chunk of ids and logits, with no codec hint.
	jobs := []job{{data: state[:st:st], state: 1, hint: cas.HintNone}}
	step, lhint := LogitsChunk, cas.HintFloat32
	if cp.TopLogits > 0 {
		step, lhint = len(state)-st, cas.HintNone
	}
	for off := st; off < len(state); off += step {
		end := min(off+step, len(state))
		jobs = append(jobs, job{data: state[off:end:end], state: 1, hint: lhint})
	}
	for _, j := range s.jobs {
		j.hint = hint
		jobs = append(jobs, j)
	}
	written := len(s.jobs)
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
	// stores' Puts are visible at once, so there Commit asks before it puts (two hashes).
	_, statAfter := store.(cas.Batcher)
	var bytesWritten atomic.Int64
	err := parallel(ctx, workers, len(jobs), func(ctx context.Context, i int) error {
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
	cp.State = cp.State[:0]
	for i, j := range jobs {
		ref := index.ChunkRef{Digest: infos[i].Digest, Length: int64(len(j.data))}
		switch j.state {
		case 0:
			cp.KV[j.l][j.b] = ref
		default:
			cp.State = append(cp.State, ref)
		}
	}
	if opts.BeforeSync != nil {
		opts.BeforeSync()
	}
	// One call makes the chunks durable and commits the manifest (with the head's move) in the
	// index: where the store journals, the manifest goes into the chunks' own barrier (one
	// sync in all; the index file is brought up to date in the background, see
	// index.CommitBatch); elsewhere the chunks' barrier runs while the manifest of the whole
	// context is built, encoded and hashed, and the manifest is committed after it. Either
	// way the manifest is committed only with every chunk it names durable and recorded.
	// Chunks the parent names at the same place are not looked up again (index.PutManifest).
	// The manifest is handed over unencoded: with a journal, the index encodes, hashes and
	// checks it while the barrier runs (index.Deferred).
	var next *index.Deferred
	var encode time.Duration
	ixTime, err := ix.CommitBatch(ctx, batch, func() (index.Commit, error) {
		t0 := time.Now()
		var err error
		next, err = cp.deferred()
		encode = time.Since(t0)
		if err != nil {
			return index.Commit{}, fmt.Errorf("checkpoint: manifest: %w", err)
		}
		commit := index.Commit{Chunks: infos, Next: next}
		if mv := opts.MoveRef; mv != nil {
			commit.Ref = &index.RefMove{Kind: mv.Kind, Name: mv.Name, Expected: mv.Expected, ToNext: true}
		}
		return commit, nil
	})
	if err != nil {
		return nil, fmt.Errorf("checkpoint: commit %d chunks and the manifest: %w", len(jobs), err)
	}
	stored := time.Now()
	cp.ID = next.Encoded().ID()
	res := &Result{
		Checkpoint: cp, Position: cp.Position, Blocks: nb * layout.Layers, BlocksWritten: written,
		KVBytes: cp.KVBytes(), BytesWritten: bytesWritten.Load(), Duration: s.duration + time.Since(start),
		Prepare: s.duration, Store: stored.Sub(start),
		Put: put.Sub(start), Encode: encode, Sync: stored.Sub(put), Index: ixTime,
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

// topLogits is the number of best logits a snapshot keeps instead of the whole vector of
// vocab, 0 for the whole vector (see CaptureOptions.TopLogits), for an instance whose logits
// are partial with partial entries (0: the whole vector).
func topLogits(opts CaptureOptions, smp engine.Sampler, vocab, partial int) int {
	if opts.KeepLogits {
		return 0
	}
	floor := opts.TopLogits
	if floor == 0 {
		floor = DefaultTopLogits
	}
	need := smp.Candidates(vocab)
	k := max(need, floor)
	if partial > 0 {
		// What the instance holds is all it has without a forward pass; a sampler that
		// reads more makes the restored instance recompute.
		k = min(k, partial)
	} else if need >= vocab {
		return 0
	}
	if 2*k >= vocab {
		return 0
	}
	return k
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
