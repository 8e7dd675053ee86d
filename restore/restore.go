// Package restore turns a checkpoint back into a live engine instance: it checks that the
// checkpoint fits the model, the guest and the KV layout, allocates the KV blocks in a fresh
// instance, decodes every chunk straight into its block region of the instance's linear memory
// (cas Get into the exact region slice: no intermediate buffer), verified, in parallel, and then
// hands the guest its small state (position, token history, sampler, RNG, last logits: the whole
// vector, or the best of them for a checkpoint that keeps only those, written as a vector of
// -Inf with those values at their ids and marked partial: engine.Instance.MarkLogitsTop).
//
// A restore never touches an existing instance: it builds a new one and returns it only on
// success, so a caller swaps its live instance only when the restore worked.
//
// Speed. The floor is copying the KV bytes into place while checking them, on every core: against
// the pack store's seals (CRC-32C, the default, VerifySealed) or their digests (BLAKE3,
// VerifyFull, about ten times the work). Two things kept a restore off it, and both are dealt
// with outside the decode loop:
//   - Page faults. Fresh linear memory faults in a page at a time as the chunks land (on
//     2-core VMs 10–50 ms per 64 MiB). Restore makes its instance for the checkpoint's
//     context (engine.InstanceOptions.Context), so the KV blocks are allocated and populated
//     when the instance is made, as llama.cpp's context clears its KV buffer when it is made;
//     IntoWith callers should do the same.
//   - The codec. Raw chunks (checkpoint.KVCodecRaw) are one copy straight into place out of
//     the pack file's mapping and a check (a pack store: cas.Pack); float16-plane chunks decode
//     at about 1 GB/s a core. See BenchmarkRestore1B and BenchmarkVerifyCopy1B.
//
// And one inside it: waking the workers. Goroutines started per call wake their threads one
// after another; on a 16-core host the last began 0.6-0.8 ms into a 3 ms restore. The
// decode's workers are therefore a crew parked on a futex and woken by one system call (see
// DecodeWith): all 16 decoding within 0.1 ms. What was left of a raw restore there was BLAKE3
// (about 2.4 GB/s a core with zeebo/blake3's AVX2 code) and the pread's copy
// (docs/bench/cuda-notes-2026-11-26.md, "Restore on the host's cores"); sealed verification
// and mapped pack files took both down (BENCHMARKS.md).
package restore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sync/atomic"
	"time"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/checkpoint"
	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/guest"
	"github.com/driftstore/driftstore/index"
)

// ErrChunk: a chunk a checkpoint names could not be restored (missing, corrupt or of the wrong
// size). Returned wrapped in a *ChunkError that names it; the cas error (cas.ErrNotFound,
// cas.ErrCorrupt, cas.ErrSizeMismatch) is wrapped too.
var ErrChunk = errors.New("checkpoint chunk unusable")

// ChunkError names the chunk a restore failed on and where it belongs.
type ChunkError struct {
	Checkpoint index.ID
	Where      string // "layer 3 block 7", "state chunk 0"
	Digest     cas.Digest
	Err        error
}

func (e *ChunkError) Error() string {
	cp := ""
	if !e.Checkpoint.IsZero() {
		cp = " of checkpoint " + e.Checkpoint.String()
	}
	return fmt.Sprintf("restore: chunk %s (%s%s): %v", e.Digest, e.Where, cp, e.Err)
}

// Unwrap returns ErrChunk and the underlying error, for errors.Is.
func (e *ChunkError) Unwrap() []error { return []error{ErrChunk, e.Err} }

// Options configure a restore.
type Options struct {
	// Instance configures the new instance. Threads, Batch and the sampler's absence matter;
	// KVType and BlockSize, when set, must equal the checkpoint's (zero: take the checkpoint's).
	// Context is raised to the checkpoint's position: the instance is made with the memory of
	// every block the restore writes already resident (engine.InstanceOptions.Context).
	Instance engine.InstanceOptions
	// Workers bounds the chunks decoded at once; 0 means GOMAXPROCS.
	Workers int
	// HugePages asks for transparent huge pages under the KV blocks: those of the new
	// instance's context before they are populated (engine.InstanceOptions.HugePages), and any
	// the restore allocates past it (IntoOptions.HugePages).
	HugePages bool
	// Verify says how each chunk is checked (DecodeOptions.Verify).
	Verify Verify
}

// Verify says how a restore checks the chunks it reads.
type Verify uint8

const (
	// VerifySealed (the default) checks a chunk against the seal its store took when it stored
	// it, where the store keeps one (cas.SealedGetter: a pack store's CRC-32C of the stored
	// bytes, taken after the bytes were hashed to their digest, or BLAKE3-verified when they
	// came from another machine); other chunks against their digest. It catches what happens
	// to bytes at rest at a tenth of BLAKE3's cost, not a deliberate rewrite of the store's
	// files (see cas.Pack).
	VerifySealed Verify = iota
	// VerifyFull hashes every chunk's content with BLAKE3 and compares it with its digest.
	VerifyFull
)

func (v Verify) String() string {
	if v == VerifyFull {
		return "full"
	}
	return "sealed"
}

// ParseVerify parses "sealed" or "full".
func ParseVerify(s string) (Verify, error) {
	switch s {
	case "sealed", "":
		return VerifySealed, nil
	case "full":
		return VerifyFull, nil
	}
	return 0, fmt.Errorf("unknown verification %q (sealed or full)", s)
}

// IntoOptions configure IntoWith.
type IntoOptions struct {
	// Workers bounds the chunks decoded at once; 0 means GOMAXPROCS.
	Workers int
	// HugePages advises transparent huge pages over the fresh KV blocks before decoding into
	// them (wasmmem.Region.HugePages): one page fault per 2 MiB instead of per 4 KiB. Measured on
	// a 2-core VM, 64 MiB of KV took 9–17 ms of faults instead of 38–53 ms once the process had
	// freed huge pages before (a long-lived process: a daemon, a benchmark), but 190–320 ms in
	// about half of fresh processes, whose huge pages the hypervisor had never backed. So it is
	// for long-lived processes that restore many times; off by default.
	HugePages bool
	// Spawn: the decode's workers are goroutines started for the call (DecodeOptions.Spawn).
	Spawn bool
	// Verify says how each chunk is checked (DecodeOptions.Verify).
	Verify Verify
}

// Result describes a restore.
type Result struct {
	Checkpoint  *checkpoint.Checkpoint
	Position    int
	Chunks      int           // chunks decoded (KV blocks and state)
	KVBytes     int64         // bytes decoded into KV block regions
	StateBytes  int64         // bytes of the small state
	NewInstance time.Duration // instantiating the guest
	Alloc       time.Duration // allocating the KV blocks
	Decode      time.Duration // reading, decoding and verifying the chunks into place
	Workers     Stats         // how the decode used its workers
	Load        time.Duration // handing the small state to the guest
	Total       time.Duration
}

// Target returns what checkpoints are checked against for a model and an instance layout.
func Target(model *engine.Model, layout engine.KVLayout) checkpoint.Target {
	return checkpoint.Target{Model: model.Fingerprint(), Guest: cas.Digest(guest.Fingerprint),
		Vocab: model.Hyper().Vocab, Layout: checkpoint.LayoutOf(layout)}
}

// Check refuses, with a *checkpoint.MismatchError naming every difference, a checkpoint that
// does not fit model (fingerprint, vocabulary, KV shape), the running guest, or the KV dtype
// and block size opts asks for (when set).
func Check(model *engine.Model, cp *checkpoint.Checkpoint, opts engine.InstanceOptions) error {
	h := model.Hyper()
	lay := checkpoint.Layout{Layers: h.Layers, KVHeads: h.KVHeads, HeadDim: h.HeadDim,
		BlockSize: cp.Layout.BlockSize, DType: cp.Layout.DType}
	if opts.BlockSize != 0 {
		lay.BlockSize = opts.BlockSize
	}
	if opts.KVType != engine.KVDefault {
		lay.DType = opts.KVType.String()
	}
	if es := lay.ElemSize(); es != 0 {
		lay.BlockBytes = 2 * lay.BlockSize * lay.KVHeads * lay.HeadDim * es
	}
	return cp.Check(checkpoint.Target{Model: model.Fingerprint(), Guest: cas.Digest(guest.Fingerprint), Vocab: h.Vocab, Layout: lay})
}

// Restore builds a fresh instance of model holding checkpoint cp, read from store. It checks
// the checkpoint first (see Check), and on any error closes the instance it made and returns
// nil: the caller's other instances are never touched. Errors naming a chunk are *ChunkError.
func Restore(ctx context.Context, store cas.Store, model *engine.Model, cp *checkpoint.Checkpoint, opts Options) (*engine.Instance, *Result, error) {
	start := time.Now()
	if err := Check(model, cp, opts.Instance); err != nil {
		return nil, nil, fmt.Errorf("restore: %w", err)
	}
	io := opts.Instance
	kv, err := engine.ParseKVType(cp.Layout.DType)
	if err != nil {
		return nil, nil, fmt.Errorf("restore: %w", err)
	}
	io.KVType, io.BlockSize = kv, cp.Layout.BlockSize
	// Made for at least the checkpoint's context: the KV blocks are allocated and resident
	// before IntoWith starts (populated by the kernel at creation instead of faulted in a page
	// at a time while the chunks land), so NewInstance carries that cost, not the decode.
	io.Context = max(io.Context, cp.Position)
	io.HugePages = io.HugePages || opts.HugePages
	in, err := model.NewInstance(io)
	if err != nil {
		return nil, nil, fmt.Errorf("restore: %w", err)
	}
	made := time.Since(start)
	res, err := IntoWith(ctx, store, in, cp, IntoOptions{Workers: opts.Workers, HugePages: opts.HugePages, Verify: opts.Verify})
	if err != nil {
		in.Close()
		return nil, nil, err
	}
	res.NewInstance = made
	res.Total = time.Since(start)
	return in, res, nil
}

// Into restores checkpoint cp into in, a fresh instance (nothing fed) of the checkpoint's model
// with its KV layout (checked: a *checkpoint.MismatchError otherwise). On error in is left in an
// unspecified state and must be closed by the caller. Result.NewInstance is zero.
func Into(ctx context.Context, store cas.Store, in *engine.Instance, cp *checkpoint.Checkpoint, workers int) (*Result, error) {
	return IntoWith(ctx, store, in, cp, IntoOptions{Workers: workers})
}

// IntoWith is Into with options.
func IntoWith(ctx context.Context, store cas.Store, in *engine.Instance, cp *checkpoint.Checkpoint, opts IntoOptions) (*Result, error) {
	workers := opts.Workers
	start := time.Now()
	if err := cp.Check(Target(in.Model(), in.Layout())); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	if pos, err := in.Position(); err != nil || pos != 0 {
		return nil, fmt.Errorf("restore checkpoint %s: instance is not fresh (position %d, %v)", cp.ID, pos, err)
	}
	regions, err := in.AllocKV(cp.Position)
	if err != nil {
		return nil, fmt.Errorf("restore checkpoint %s: allocate KV blocks: %w", cp.ID, err)
	}
	nb := cp.Layout.Blocks(cp.Position)
	if len(regions) != nb*cp.Layout.Layers {
		return nil, fmt.Errorf("restore checkpoint %s: guest allocated %d block regions, the checkpoint has %d layers × %d blocks", cp.ID, len(regions), cp.Layout.Layers, nb)
	}
	if opts.HugePages {
		hugePages(in, regions)
	}
	alloc := time.Since(start)
	// The small state goes straight into the guest's buffers when its chunks split where the
	// guest keeps it apart (head, then logits); otherwise through a buffer and LoadState. Top
	// logits (cp.TopLogits) are decoded into a small buffer of their own and expanded into the
	// guest's logits buffer (-Inf, then each entry at its id) once verified.
	var head, logits, state, top []byte
	inPlace := false
	headLen, nLogits := checkpoint.StateHeadLen(cp.Position), 0
	if cp.HasLogits {
		nLogits = cp.Vocab
	}
	switch {
	case cp.TopLogits > 0:
		// Parse checked the shape: the head, then one chunk of top logits.
		top = make([]byte, cp.State[1].Length)
		fallthrough
	case len(cp.State) > 0 && cp.State[0].Length == int64(headLen) && cp.StateBytes() == int64(headLen+4*nLogits):
		if head, logits, err = in.StateBuffers(headLen, nLogits); err != nil {
			return nil, fmt.Errorf("restore checkpoint %s: state buffers: %w", cp.ID, err)
		}
		inPlace = true
	default:
		state = make([]byte, cp.StateBytes())
	}
	mem := in.Memory() // valid until the next guest call: LoadState below
	jobs := make([]Job, 0, len(regions)+len(cp.State))
	// The state first: at short contexts its chunks are most of the work.
	off := int64(0)
	for i, ref := range cp.State {
		var dst []byte
		switch {
		case !inPlace:
			dst = state[off : off+ref.Length : off+ref.Length]
		case i == 0:
			dst = head
		case top != nil:
			dst = top
		default:
			o := off - int64(headLen)
			dst = logits[o : o+ref.Length : o+ref.Length]
		}
		jobs = append(jobs, Job{Digest: ref.Digest, Dst: dst, Layer: -1, Block: i})
		off += ref.Length
	}
	for _, r := range regions {
		if r.Layer >= len(cp.KV) || r.Block >= nb {
			return nil, fmt.Errorf("restore checkpoint %s: guest region %+v outside the checkpoint", cp.ID, r)
		}
		end := uint64(r.Offset) + uint64(r.Length)
		if end > uint64(len(mem)) {
			return nil, fmt.Errorf("restore checkpoint %s: guest region %+v outside memory", cp.ID, r)
		}
		ref := cp.KV[r.Layer][r.Block]
		jobs = append(jobs, Job{Digest: ref.Digest, Dst: mem[r.Offset:end:end], Layer: r.Layer, Block: r.Block})
	}
	t1 := time.Now()
	ws, err := DecodeWith(ctx, store, jobs, DecodeOptions{Workers: workers, Spawn: opts.Spawn, Verify: opts.Verify})
	if err != nil {
		var ce *ChunkError
		if errors.As(err, &ce) {
			ce.Checkpoint = cp.ID
		}
		return nil, err
	}
	decode := time.Since(t1)
	var st *checkpoint.State
	if inPlace {
		st, err = checkpoint.ParseStateHead(head, nLogits)
	} else {
		st, err = checkpoint.ParseState(state)
	}
	if err != nil {
		return nil, fmt.Errorf("restore: checkpoint %s: %w", cp.ID, err)
	}
	if st.Position != cp.Position || !slices.Equal(st.Tokens, cp.Tokens) || st.DType != cp.Layout.DType ||
		st.BlockSize != cp.Layout.BlockSize || (st.NLogits != 0) != cp.HasLogits {
		return nil, fmt.Errorf("restore: checkpoint %s: %w: the guest state disagrees with the manifest", cp.ID, checkpoint.ErrBadCheckpoint)
	}
	if top != nil {
		ids, vals, err := checkpoint.DecodeTopLogits(top, cp.Vocab)
		if err != nil {
			return nil, fmt.Errorf("restore: checkpoint %s: %w", cp.ID, err)
		}
		checkpoint.ExpandTopLogits(logits, ids, vals)
	}
	t2 := time.Now()
	if inPlace {
		err = in.LoadStateBuffers()
	} else {
		err = in.LoadState(state)
	}
	if err == nil && top != nil {
		err = in.MarkLogitsTop(cp.TopLogits)
	}
	if err != nil {
		return nil, fmt.Errorf("restore checkpoint %s: load state: %w", cp.ID, err)
	}
	return &Result{
		Checkpoint: cp, Position: cp.Position, Chunks: len(jobs), KVBytes: cp.KVBytes(), StateBytes: cp.StateBytes(),
		Alloc: alloc, Decode: decode, Workers: ws, Load: time.Since(t2), Total: time.Since(start),
	}, nil
}

// hugePages advises transparent huge pages over the span of fresh KV block regions about to be
// written (see IntoOptions.HugePages). Advice only: a failure changes nothing and is ignored.
func hugePages(in *engine.Instance, regions []engine.KVRegion) {
	r := in.Region()
	if r == nil || len(regions) == 0 {
		return
	}
	lo, hi := uint64(math.MaxUint64), uint64(0)
	for _, g := range regions {
		lo = min(lo, uint64(g.Offset))
		hi = max(hi, uint64(g.Offset)+uint64(g.Length))
	}
	if hi > lo && hi <= uint64(r.Len()) {
		_, _ = r.HugePages(int(lo), int(hi-lo))
	}
}

// Prefix restores known full blocks (from the prefix cache) into in, a fresh instance, and sets
// its state to having fed exactly blocks.Tokens, without logits: the caller prefills the rest of
// its prompt next (at least one token, to get logits). The chunks' layout must be in's (the
// caller looked them up with in's layout). On error in is unusable and must be closed.
func Prefix(ctx context.Context, store cas.Store, in *engine.Instance, blocks checkpoint.Blocks, workers int) error {
	lay := in.Layout()
	if len(blocks.Tokens)%lay.BlockSize != 0 || len(blocks.KV) != lay.Layers {
		return fmt.Errorf("restore: prefix of %d tokens over %d layers does not fit the layout", len(blocks.Tokens), len(blocks.KV))
	}
	nb := len(blocks.Tokens) / lay.BlockSize
	fresh, err := in.SaveState()
	if err != nil {
		return fmt.Errorf("restore: prefix: %w", err)
	}
	state, err := checkpoint.PrefixState(fresh, blocks.Tokens)
	if err != nil {
		return fmt.Errorf("restore: prefix: %w", err)
	}
	regions, err := in.AllocKV(len(blocks.Tokens))
	if err != nil {
		return fmt.Errorf("restore: prefix: allocate KV blocks: %w", err)
	}
	mem := in.Memory()
	jobs := make([]Job, 0, len(regions))
	for _, r := range regions {
		if r.Layer >= lay.Layers || r.Block >= nb || len(blocks.KV[r.Layer]) != nb {
			return fmt.Errorf("restore: prefix: guest region %+v outside the prefix", r)
		}
		end := uint64(r.Offset) + uint64(r.Length)
		if end > uint64(len(mem)) {
			return fmt.Errorf("restore: prefix: guest region %+v outside memory", r)
		}
		jobs = append(jobs, Job{Digest: blocks.KV[r.Layer][r.Block].Digest, Dst: mem[r.Offset:end:end], Layer: r.Layer, Block: r.Block})
	}
	if err := Decode(ctx, store, jobs, workers); err != nil {
		return err
	}
	if err := in.LoadState(state); err != nil {
		return fmt.Errorf("restore: prefix: load state: %w", err)
	}
	return nil
}

// Job is one chunk to decode into place. Dst must have exactly the chunk's length; Layer and
// Block name the place in errors (Layer -1: the small state's chunk Block).
type Job struct {
	Digest       cas.Digest
	Dst          []byte
	Layer, Block int
}

func (j Job) where() string {
	switch j.Layer {
	case -1:
		return fmt.Sprintf("state chunk %d", j.Block)
	}
	return fmt.Sprintf("layer %d block %d", j.Layer, j.Block)
}

// Decode reads, decodes and verifies every job's chunk straight into its Dst (cas Get with
// Dst[:0:len(Dst)], so nothing is allocated and nothing outside Dst is written), on at most
// workers goroutines (0: GOMAXPROCS). The first failure stops the rest and is returned as a
// *ChunkError; the Dst ranges are then unspecified.
func Decode(ctx context.Context, store cas.Store, jobs []Job, workers int) error {
	_, err := DecodeWith(ctx, store, jobs, DecodeOptions{Workers: workers})
	return err
}

// Stats say how a Decode used its workers: how many goroutines it started, how many of them
// decoded at least one chunk, when each started and how long each was busy. Each worker reads
// the clock twice (at its first chunk and when it finds none left), never per chunk.
type Stats struct {
	Workers int // goroutines started: min(workers, jobs)
	Active  int // workers that decoded at least one chunk
	// MinChunks and MaxChunks: the fewest and most chunks one active worker decoded.
	MinChunks, MaxChunks int
	Wall                 time.Duration // the call, from start to return
	// Busy: summed over the active workers, from taking its first chunk to finding none left
	// (Busy / Wall is the mean number of cores the chunks kept busy).
	Busy time.Duration
	// FirstStart and LastStart: from the call to the first and to the last active worker
	// taking its first chunk (the cost of waking the goroutines).
	FirstStart, LastStart time.Duration
}

// Cores is Busy / Wall: how many workers were decoding on average.
func (s Stats) Cores() float64 {
	if s.Wall <= 0 {
		return 0
	}
	return float64(s.Busy) / float64(s.Wall)
}

func (s Stats) String() string {
	return fmt.Sprintf("%d workers, %d active (%d-%d chunks each), wall %.3f ms, busy %.3f ms (%.1f cores), first/last start %.3f/%.3f ms",
		s.Workers, s.Active, s.MinChunks, s.MaxChunks, float64(s.Wall.Nanoseconds())/1e6, float64(s.Busy.Nanoseconds())/1e6, s.Cores(),
		float64(s.FirstStart.Nanoseconds())/1e6, float64(s.LastStart.Nanoseconds())/1e6)
}

// DecodeOptions configure DecodeWith.
type DecodeOptions struct {
	// Workers bounds the chunks decoded at once; 0 means GOMAXPROCS.
	Workers int
	// Spawn starts the workers as new goroutines for this call instead of waking the parked
	// crew (see DecodeWith): what Decode did before the crew, kept to measure against.
	Spawn bool
	// Verify: VerifySealed (the default) reads through the store's GetSealed where it has one;
	// VerifyFull always through Get, which hashes every chunk.
	Verify Verify
}

// DecodeWith is Decode with options, also returning how it used its workers (on error too,
// as far as it got).
//
// The workers. The calling goroutine decodes too; the others are, on Linux, a crew of
// goroutines parked in the kernel on one futex word, all woken by one FUTEX_WAKE: their
// threads wake in parallel. Goroutines started per call (Spawn) wake one after another,
// each new one waking the next thread, and on the 16-core H100 host the sixteenth started
// 0.6-0.8 ms after the call: a fifth of a 64 MiB raw restore. The crew is made on first
// use, GOMAXPROCS-1 goroutines that stay parked between calls (no CPU, one thread each).
// Calls at the same time share nothing: a call that finds the crew busy, or wants more
// workers than it has, starts goroutines for the rest.
func DecodeWith(ctx context.Context, store cas.Store, jobs []Job, opts DecodeOptions) (Stats, error) {
	start := time.Now()
	workers := opts.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	workers = max(1, min(workers, len(jobs)))
	b := &batch{ctx: ctx, get: store.Get, jobs: jobs, spans: make([]span, workers), done: make(chan struct{})}
	if sg, ok := store.(cas.SealedGetter); ok && opts.Verify == VerifySealed {
		b.get = sg.GetSealed
	}
	b.left.Store(int64(len(jobs)))
	b.slots.Store(int32(workers - 1))
	woken := 0
	if !opts.Spawn && workers > 1 {
		woken = wakeCrew(b, workers-1)
		defer releaseCrew(woken)
	}
	for range workers - 1 - woken {
		go b.join()
	}
	b.work(0)
	// The other workers finish the chunks they hold, at most one each: usually within
	// microseconds, so the caller spins a little before it parks.
	for spin := 0; b.left.Load() > 0; spin++ {
		if spin == 1000 {
			<-b.done
			break
		}
		runtime.Gosched()
	}
	st := Stats{Workers: workers, Wall: time.Since(start)}
	for _, sp := range b.spans {
		if sp.chunks == 0 {
			continue
		}
		first := sp.first.Sub(start)
		if st.Active == 0 {
			st.MinChunks, st.MaxChunks, st.FirstStart, st.LastStart = sp.chunks, sp.chunks, first, first
		}
		st.Active++
		st.MinChunks, st.MaxChunks = min(st.MinChunks, sp.chunks), max(st.MaxChunks, sp.chunks)
		st.FirstStart, st.LastStart = min(st.FirstStart, first), max(st.LastStart, first)
		st.Busy += sp.last.Sub(sp.first)
	}
	if e := b.err.Load(); e != nil {
		return st, *e
	}
	return st, nil
}

// DecodeStats is DecodeWith with only a worker bound.
func DecodeStats(ctx context.Context, store cas.Store, jobs []Job, workers int) (Stats, error) {
	return DecodeWith(ctx, store, jobs, DecodeOptions{Workers: workers})
}

// span is one worker's account in a batch.
type span struct {
	first, last time.Time
	chunks      int
}

// batch is one Decode call's chunks, shared by its workers. Every index below len(jobs) is
// taken once (next) and counted off once when done or skipped (left), so the caller may
// return, and the Dst ranges be reused, exactly when left reaches zero. A worker that arrives
// after the last index was taken touches nothing but the counters.
type batch struct {
	ctx   context.Context
	get   func(context.Context, cas.Digest, []byte) ([]byte, error) // the store's Get or GetSealed
	jobs  []Job
	next  atomic.Int64
	left  atomic.Int64
	slots atomic.Int32 // workers besides the caller that may still join
	ids   atomic.Int32 // span indexes handed to joined workers (the caller has 0)
	stop  atomic.Bool
	err   atomic.Pointer[error]
	spans []span
	done  chan struct{} // closed when left reaches zero
}

// join makes the calling goroutine one of the batch's workers if a slot is left.
func (b *batch) join() {
	if b.slots.Add(-1) < 0 {
		return
	}
	b.work(-1)
}

// work decodes chunks until none are left. id is the span to account in, or -1: claim one
// with the first chunk (a worker that finds none left records nothing, so it never writes a
// span after the caller has read them).
func (b *batch) work(id int) {
	var sp *span
	for {
		i := int(b.next.Add(1) - 1)
		if i >= len(b.jobs) {
			break
		}
		if sp == nil {
			if id < 0 {
				id = int(b.ids.Add(1))
			}
			sp = &b.spans[id]
			sp.first = time.Now()
		}
		sp.chunks++
		if !b.stop.Load() {
			if err := b.decode(b.jobs[i]); err != nil && b.stop.CompareAndSwap(false, true) {
				b.err.Store(&err)
			}
		}
		sp.last = time.Now() // before the count that may let the caller read it
		if b.left.Add(-1) == 0 {
			close(b.done)
		}
	}
}

// decode reads, decodes and verifies job j's chunk into its Dst.
func (b *batch) decode(j Job) error {
	if err := b.ctx.Err(); err != nil {
		return err
	}
	got, err := b.get(b.ctx, j.Digest, j.Dst[:0:len(j.Dst)])
	if err == nil && (len(got) != len(j.Dst) || (len(got) > 0 && &got[0] != &j.Dst[0])) {
		err = fmt.Errorf("%w: chunk is %d bytes, its place %d", cas.ErrSizeMismatch, len(got), len(j.Dst))
	}
	if err != nil {
		if b.ctx.Err() != nil {
			return b.ctx.Err()
		}
		return &ChunkError{Where: j.where(), Digest: j.Digest, Err: err}
	}
	return nil
}
