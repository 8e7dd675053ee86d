package engine

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sync"
	"unsafe"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/driftstore/driftstore/engine/cpu"
	"github.com/driftstore/driftstore/guest"
	"github.com/driftstore/driftstore/wasmmem"
)

// BlockAlign is the alignment of every KV block region in linear memory (and of the memory's
// base): the largest OS page size driftstore targets.
const BlockAlign = 16 << 10

// KVType is the element type of the KV cache.
type KVType uint8

const (
	KVDefault KVType = iota // F16
	KVF16
	KVF32
)

func (t KVType) norm() KVType {
	if t == KVDefault {
		return KVF16
	}
	return t
}

// GGML returns the GGML type id (F16 1, F32 0).
func (t KVType) GGML() uint32 {
	if t.norm() == KVF32 {
		return 0
	}
	return 1
}

// String is "f16" or "f32".
func (t KVType) String() string {
	if t.norm() == KVF32 {
		return "f32"
	}
	return "f16"
}

// ParseKVType parses "f16" or "f32".
func ParseKVType(s string) (KVType, error) {
	switch s {
	case "f16", "F16":
		return KVF16, nil
	case "f32", "F32":
		return KVF32, nil
	}
	return 0, fmt.Errorf("KV type %q: want f16 or f32", s)
}

// KVLayout is the KV cache layout of an instance. Layer l's positions are grouped in blocks of
// BlockSize; block b holds positions [b*BlockSize, (b+1)*BlockSize): K as
// [BlockSize][KVHeads][HeadDim] then V likewise, little-endian Type elements, BlockBytes in
// all, contiguous at a BlockAlign-aligned offset of linear memory. Positions not yet written
// are zero.
type KVLayout struct {
	Layers, BlockSize, KVHeads, HeadDim int
	Type                                KVType
	BlockBytes                          int
}

func (l KVLayout) cpu() cpu.KVLayout {
	t := cpu.F16
	if l.Type.norm() == KVF32 {
		t = cpu.F32
	}
	return cpu.KVLayout{BlockSize: l.BlockSize, NKVHeads: l.KVHeads, HeadDim: l.HeadDim, KVType: t}
}

// KVRegion is one KV block of one layer in linear memory.
type KVRegion struct {
	Layer, Block int
	Offset       uint32 // BlockAlign-aligned
	Length       uint32 // KVLayout.BlockBytes
}

// Sampler holds the sampling settings. Temp 0 is greedy (argmax, lowest id on ties); otherwise
// the logits are divided by Temp, restricted to the TopK best (0: all) and then to the
// smallest set whose probability reaches TopP (1: all), and drawn with the instance's RNG
// (xoshiro256** seeded from Seed, its state in guest memory).
type Sampler struct {
	Temp float32
	TopK int
	TopP float32
	Seed uint64
}

// Candidates is how many of the best logits (in the sampler's order: larger first, NaN as
// -Inf, the lower id first among equal ones) s reads to draw a token over a vocabulary of
// vocab: 1 when greedy (Temp 0: the argmax), TopK when 0 < TopK < vocab (the softmax and
// TopP's nucleus run over those alone), and vocab otherwise (temperature over the whole
// vocabulary, with or without TopP: the softmax's sum covers every logit). A sampler drawing
// from logits whose Candidates best entries are exact draws exactly what it draws from the
// full vector (see Instance.MarkLogitsTop).
func (s Sampler) Candidates(vocab int) int {
	switch {
	case s.Temp == 0:
		return min(1, vocab)
	case s.TopK > 0 && s.TopK < vocab:
		return s.TopK
	}
	return vocab
}

// InstanceOptions configures a new instance; zero values pick the defaults.
type InstanceOptions struct {
	KVType    KVType // default F16
	BlockSize int    // positions per KV block; default 16
	Threads   int    // host threads for the ops; default 1, at most 1024
	Batch     int    // prefill batch (tokens per forward pass); default 64
	Sampler   Sampler
	// Context is the number of positions the instance is made for (llama.cpp's n_ctx): at
	// creation the guest allocates the KV blocks of positions [0, Context) and the host makes
	// their memory resident (wasmmem.Region.Populate), so that a restore or a prefill of up to
	// Context positions writes into memory that takes no page faults, as llama.cpp's context
	// allocates and clears its whole KV buffer when it is made. Creation costs that much more
	// (the page faults move there, done by the kernel a span at a time on Threads goroutines:
	// 64 MiB took 11–17 ms on 2 cores of a KVM guest, 6.5–9 ms with HugePages, against
	// ≈ 1.3 ms for a bare instance), and the blocks' memory is resident for the instance's life. 0 allocates blocks as positions are fed. Feeding or
	// restoring past Context works as without it (blocks allocated on demand). A value above
	// the model's context length is clamped to it; a negative one is an error.
	Context int
	// HugePages advises transparent huge pages over the Context's KV blocks before they are
	// populated (wasmmem.Region.HugePages): one 2 MiB page instead of 512 small ones where the
	// kernel has them. Advice only; see restore.IntoOptions.HugePages for when it pays.
	HugePages bool
}

// Instance is one guest: its store, linear memory (a wasmmem Region) and the conversation
// state inside it. Not safe for concurrent use. After ErrTrap every call fails; Close it.
type Instance struct {
	model  *Model
	store  *wasmtime.Store
	inst   *wasmtime.Instance
	region *wasmmem.Region
	exec   Exec
	layout KVLayout
	opts   InstanceOptions

	fns map[string]*wasmtime.Func

	fault  error // the last refused host op
	dead   error // set once the guest trapped
	closed bool

	idBuf  []int32
	blkBuf [][]byte
	keyBuf []uint64 // top_k scratch

	// the state buffers handed out by StateBuffers, until LoadStateBuffers
	stHead, stLogits int
	stPending        bool

	// kvTable[l][b]: the offset of layer l's KV block b, for the blocks the guest has listed so
	// far (KVTable): a block never moves once allocated (guest/ABI.md).
	kvTable [][]uint32

	// logitsTop > 0: the guest's logits are partial, only the logitsTop best exact and -Inf
	// everywhere else (MarkLogitsTop), until they change (a feed or a state load clears it).
	logitsTop int
}

// maxThreads bounds InstanceOptions.Threads: each thread is a goroutine of the instance's
// executor, started with it.
const maxThreads = 1024

var guestExports = []string{
	"abi_version", "init", "set_sampler", "buf", "feed", "sample", "step", "position", "tokens",
	"logits", "kv_regions", "kv_alloc", "state_save", "state_load", "last_error", "nop_loop",
	"logits_in", "state_load_split", "state_save_head", "sample_mode", "kv_regions_from",
}

// NewInstance starts a guest for the model: instantiates the module on fresh linear memory,
// initializes the guest with the KV layout and sampler.
func (m *Model) NewInstance(opts InstanceOptions) (*Instance, error) {
	if opts.BlockSize == 0 {
		opts.BlockSize = 16
	}
	if opts.Threads <= 0 {
		opts.Threads = 1
	}
	if opts.Batch <= 0 {
		opts.Batch = 64
	}
	if opts.BlockSize < 1 || opts.BlockSize > 4096 || opts.Batch > 4096 {
		return nil, fmt.Errorf("engine: block size %d or batch %d out of range (1..4096)", opts.BlockSize, opts.Batch)
	}
	if opts.Threads > maxThreads {
		return nil, fmt.Errorf("engine: %d threads out of range (1..%d)", opts.Threads, maxThreads)
	}
	if opts.Context < 0 {
		return nil, fmt.Errorf("engine: context of %d positions", opts.Context)
	}
	if c := m.hyper.CtxMax; c > 0 && opts.Context > c {
		opts.Context = c
	}
	opts.KVType = opts.KVType.norm()
	in, err := m.instantiate(m.engine.module, opts)
	if err != nil {
		return nil, err
	}
	if err := in.start(); err != nil {
		in.Close()
		return nil, err
	}
	if opts.Context > 0 {
		if err := in.reserve(opts.Context); err != nil {
			in.Close()
			return nil, fmt.Errorf("engine: new instance for %d positions: %w", opts.Context, err)
		}
	}
	return in, nil
}

// reserve allocates the KV blocks of positions [0, npos) and makes their memory resident
// (InstanceOptions.Context).
func (in *Instance) reserve(npos int) error {
	regs, err := in.AllocKV(npos)
	if err != nil {
		return fmt.Errorf("allocate KV blocks: %w", err)
	}
	return in.populateKV(regs, in.opts.HugePages)
}

// populateSplit is the fewest bytes populateKV spreads over several goroutines (a variable for
// tests, whose models are small).
var populateSplit = 4 << 20

// populateKV makes the memory of KV block regions resident and writable now (see
// wasmmem.Region.Populate), so that writing them takes no page faults; contents are
// unchanged. Blocks lie in the guest's slabs, mostly back to back: adjacent regions are joined
// into spans (with the few KiB of padding between them, populated too), and the spans
// populated on up to Threads goroutines (the kernel zeroes pages on all of them at once) in
// pieces of about equal bytes. With huge, each span is first advised transparent huge pages
// (advice: its failure is ignored). Call it between guest calls, like any host access to the
// memory; a region outside the memory is an error.
func (in *Instance) populateKV(regs []KVRegion, huge bool) error {
	if len(regs) == 0 {
		return nil
	}
	if in.closed {
		return ErrClosed
	}
	spans := make([][2]int, 0, len(regs))
	for _, r := range regs {
		spans = append(spans, [2]int{int(r.Offset), int(r.Offset) + int(r.Length)})
	}
	slices.SortFunc(spans, func(a, b [2]int) int { return cmp.Compare(a[0], b[0]) })
	runs := spans[:0]
	total := 0
	for _, s := range spans {
		// Join blocks separated by less than a slot's alignment padding.
		if n := len(runs); n > 0 && s[0] <= runs[n-1][1]+BlockAlign {
			total += max(0, s[1]-runs[n-1][1])
			runs[n-1][1] = max(runs[n-1][1], s[1])
			continue
		}
		total += s[1] - s[0]
		runs = append(runs, s)
	}
	if huge {
		for _, s := range runs {
			_, _ = in.region.HugePages(s[0], s[1]-s[0])
		}
	}
	workers := max(1, min(in.opts.Threads, runtime.GOMAXPROCS(0)))
	if workers == 1 || total < populateSplit {
		for _, s := range runs {
			if err := in.region.Populate(s[0], s[1]-s[0]); err != nil {
				return fmt.Errorf("engine: populate KV blocks: %w", err)
			}
		}
		return nil
	}
	// Cut the runs into workers pieces of about total/workers bytes each (page-aligned cuts).
	per := (total/workers + BlockAlign - 1) &^ (BlockAlign - 1)
	var pieces [][][2]int
	var cur [][2]int
	have := 0
	for _, s := range runs {
		for s[0] < s[1] {
			take := min(s[1]-s[0], per-have)
			cur = append(cur, [2]int{s[0], s[0] + take})
			s[0] += take
			if have += take; have == per {
				pieces, cur, have = append(pieces, cur), nil, 0
			}
		}
	}
	if len(cur) > 0 {
		pieces = append(pieces, cur)
	}
	errs := make([]error, len(pieces))
	var wg sync.WaitGroup
	for i, p := range pieces {
		wg.Go(func() {
			for _, s := range p {
				if err := in.region.Populate(s[0], s[1]-s[0]); err != nil {
					errs[i] = fmt.Errorf("engine: populate KV blocks: %w", err)
					return
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// instantiate makes the store and instance and finds the memory region (no guest calls other
// than the reactor's _initialize).
func (m *Model) instantiate(mod *wasmtime.Module, opts InstanceOptions) (*Instance, error) {
	e := m.engine
	h := m.hyper
	esz := 2
	if opts.KVType == KVF32 {
		esz = 4
	}
	in := &Instance{
		model: m, opts: opts,
		layout: KVLayout{Layers: h.Layers, BlockSize: opts.BlockSize, KVHeads: h.KVHeads, HeadDim: h.HeadDim,
			Type: opts.KVType, BlockBytes: 2 * opts.BlockSize * h.KVHeads * h.HeadDim * esz},
		fns: map[string]*wasmtime.Func{},
	}
	exec, err := m.weights.NewExec(opts.Threads)
	if err != nil {
		return nil, fmt.Errorf("engine: new instance: %w", err)
	}
	in.exec = exec
	in.store = wasmtime.NewStoreWithData(e.wt, in)
	wc := wasmtime.NewWasiConfig()
	wc.InheritStderr() // a guest panic prints its message there
	in.store.SetWasi(wc)
	inst, err := e.linker.Instantiate(in.store, mod)
	if err != nil {
		in.Close()
		return nil, fmt.Errorf("engine: instantiate guest: %w", err)
	}
	in.inst = inst
	ex := inst.GetExport(in.store, "memory")
	if ex == nil || ex.Memory() == nil {
		in.Close()
		return nil, errors.New("engine: guest exports no memory")
	}
	mem := ex.Memory()
	r, ok := e.creator.Lookup(uintptr(mem.Data(in.store)))
	if !ok {
		in.Close()
		return nil, errors.New("engine: guest memory is not a wasmmem region")
	}
	in.region = r
	if f := inst.GetFunc(in.store, "_initialize"); f != nil {
		if _, err := f.Call(in.store); err != nil {
			in.Close()
			return nil, fmt.Errorf("engine: guest _initialize: %w", err)
		}
	}
	return in, nil
}

func (in *Instance) start() error {
	for _, name := range guestExports {
		f := in.inst.GetFunc(in.store, name)
		if f == nil {
			return fmt.Errorf("engine: guest lacks export %s", name)
		}
		in.fns[name] = f
	}
	v, err := in.callI64("abi_version")
	if err != nil {
		return err
	}
	if v != guest.ABIVersion {
		return fmt.Errorf("engine: guest ABI version %d, engine speaks %d", v, guest.ABIVersion)
	}
	if err := in.callStatus("init", int32(in.opts.KVType.GGML()), int32(in.opts.BlockSize), int32(in.opts.Batch)); err != nil {
		return err
	}
	return in.SetSampler(in.opts.Sampler)
}

func (in *Instance) idScratch(n int) []int32 {
	if cap(in.idBuf) < n {
		in.idBuf = make([]int32, n)
	}
	return in.idBuf[:n]
}

func (in *Instance) blockScratch(n int) [][]byte {
	if cap(in.blkBuf) < n {
		in.blkBuf = make([][]byte, n)
	}
	return in.blkBuf[:n]
}

// call invokes an export, turning traps into ErrTrap (and killing the instance).
func (in *Instance) call(name string, args ...any) (any, error) {
	if in.closed {
		return nil, ErrClosed
	}
	if in.dead != nil {
		return nil, in.dead
	}
	in.fault = nil
	r, err := in.fns[name].Call(in.store, args...)
	// The barrier: the guest's export is over, so whoever reads its memory next (the host, or
	// the guest in its next export) must see every op's results (see Syncer).
	if s, ok := in.exec.(Syncer); ok {
		if serr := s.Sync(); serr != nil && err == nil {
			in.dead = fmt.Errorf("%w in %s: backend: %w", ErrTrap, name, serr)
			return nil, in.dead
		}
	}
	if err != nil {
		if in.fault != nil {
			in.dead = fmt.Errorf("%w in %s: %w", ErrTrap, name, in.fault)
		} else {
			in.dead = fmt.Errorf("%w in %s: %v", ErrTrap, name, err)
		}
		return nil, in.dead
	}
	return r, nil
}

func (in *Instance) callI64(name string, args ...any) (int64, error) {
	r, err := in.call(name, args...)
	if err != nil {
		return 0, err
	}
	switch v := r.(type) {
	case int32:
		return int64(v), nil
	case int64:
		return v, nil
	}
	return 0, fmt.Errorf("engine: export %s returned %T", name, r)
}

// callU32 calls an export that returns an offset (u32).
func (in *Instance) callU32(name string, args ...any) (uint32, error) {
	v, err := in.callI64(name, args...)
	return uint32(v), err
}

// callStatus calls an export returning 0 or a negative error.
func (in *Instance) callStatus(name string, args ...any) error {
	v, err := in.callI64(name, args...)
	if err != nil {
		return err
	}
	if v < 0 {
		return in.guestError(name)
	}
	return nil
}

func (in *Instance) guestError(name string) error {
	off, err := in.callU32("last_error")
	if err != nil {
		return err
	}
	msg, err := in.record(off)
	if err != nil {
		return err
	}
	return fmt.Errorf("%w: %s", ErrGuest, msg)
}

// record reads a length-prefixed record at off (checked against memory).
func (in *Instance) record(off uint32) ([]byte, error) { return recordAt(in.region.Bytes(), off) }

// recordAt returns the payload of the record at off in mem. Offsets are computed in 64 bits: in
// a 4 GiB memory, off+4 as a uint32 wraps to 0.
func recordAt(mem []byte, off uint32) ([]byte, error) {
	start := uint64(off) + 4
	if start > uint64(len(mem)) {
		return nil, fmt.Errorf("%w: record offset %d outside memory", ErrGuest, off)
	}
	end := start + uint64(binary.LittleEndian.Uint32(mem[off:]))
	if end > uint64(len(mem)) {
		return nil, fmt.Errorf("%w: record [%d, %d) outside memory", ErrGuest, off, end)
	}
	return mem[start:end:end], nil
}

// write copies data into the guest's transfer buffer.
func (in *Instance) write(data []byte) error {
	n := len(data)
	if n > math.MaxInt32 {
		return fmt.Errorf("engine: %d bytes is too much to hand to the guest", n)
	}
	off, err := in.callU32("buf", int32(n))
	if err != nil {
		return err
	}
	mem := in.region.Bytes()
	if uint64(off)+uint64(n) > uint64(len(mem)) {
		return fmt.Errorf("%w: transfer buffer outside memory", ErrGuest)
	}
	copy(mem[off:], data)
	return nil
}

// Prefill runs the forward pass over tokens (in batches of InstanceOptions.Batch), appending
// them to the history; afterwards Logits holds the last token's logits.
func (in *Instance) Prefill(tokens []int32) error {
	if len(tokens) == 0 {
		return nil
	}
	v := in.model.hyper.Vocab
	for i, t := range tokens {
		if t < 0 || int(t) >= v {
			return fmt.Errorf("engine: prefill: token %d (at %d) is outside the vocabulary [0, %d)", t, i, v)
		}
	}
	b := make([]byte, 4*len(tokens))
	for i, t := range tokens {
		binary.LittleEndian.PutUint32(b[4*i:], uint32(t))
	}
	if err := in.write(b); err != nil {
		return err
	}
	if err := in.callStatus("feed", int32(len(tokens))); err != nil {
		return err
	}
	in.logitsTop = 0
	return nil
}

// Sample draws the next token from the current logits without feeding it (the RNG advances).
// When the logits are partial (MarkLogitsTop) and the sampler reads more candidates than they
// hold, it recomputes them first (CompleteLogits).
func (in *Instance) Sample() (int32, error) {
	if err := in.logitsFor(in.opts.Sampler); err != nil {
		return 0, err
	}
	v, err := in.callI64("sample")
	if err != nil {
		return 0, err
	}
	if v < 0 {
		return 0, in.guestError("sample")
	}
	return int32(v), nil
}

// Step samples the next token, feeds it (one forward pass) and returns it. Partial logits are
// completed first when the sampler needs it, as in Sample.
func (in *Instance) Step() (int32, error) {
	if err := in.logitsFor(in.opts.Sampler); err != nil {
		return 0, err
	}
	v, err := in.callI64("step")
	if err != nil {
		return 0, err
	}
	if v < 0 {
		return 0, in.guestError("step")
	}
	in.logitsTop = 0
	return int32(v), nil
}

// Generate runs n Steps, calling fn (if not nil) after each with the token; an error from fn
// stops generation and is returned. It returns the tokens generated so far. A negative n is
// an error; an n beyond the context runs until the guest refuses the step past it.
func (in *Instance) Generate(n int, fn func(tok int32) error) ([]int32, error) {
	if n < 0 {
		return nil, fmt.Errorf("engine: generate %d tokens: negative count", n)
	}
	out := make([]int32, 0, min(n, in.model.hyper.CtxMax))
	for i := 0; i < n; i++ {
		t, err := in.Step()
		if err != nil {
			return out, err
		}
		out = append(out, t)
		if fn != nil {
			if err := fn(t); err != nil {
				return out, err
			}
		}
	}
	return out, nil
}

// SetSampler replaces the sampling settings and reseeds the RNG.
func (in *Instance) SetSampler(s Sampler) error {
	if s.TopP == 0 {
		s.TopP = 1
	}
	if s.TopK < 0 || s.TopK > math.MaxInt32 {
		return fmt.Errorf("engine: top-k %d is outside 0..%d", s.TopK, math.MaxInt32)
	}
	if err := in.callStatus("set_sampler", s.Temp, int32(s.TopK), s.TopP, int64(s.Seed)); err != nil {
		return err
	}
	in.opts.Sampler = s
	return nil
}

// Position is the number of tokens fed so far.
func (in *Instance) Position() (int, error) {
	v, err := in.callI64("position")
	return int(uint32(v)), err
}

// Tokens returns a copy of the token history.
func (in *Instance) Tokens() ([]int32, error) {
	n, err := in.Position()
	if err != nil || n == 0 {
		return nil, err
	}
	off, err := in.callU32("tokens")
	if err != nil {
		return nil, err
	}
	b, err := in.span(off, uint64(n)*4, "token history")
	if err != nil {
		return nil, err
	}
	out := make([]int32, n)
	for i := range out {
		out[i] = int32(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out, nil
}

func (in *Instance) span(off uint32, n uint64, what string) ([]byte, error) {
	mem := in.region.Bytes()
	if uint64(off)+n > uint64(len(mem)) {
		return nil, fmt.Errorf("%w: %s [%d, +%d) outside memory", ErrGuest, what, off, n)
	}
	return mem[off : uint64(off)+n], nil
}

// Logits returns a copy of the last token's logits, nil before any token was fed. Partial
// logits (MarkLogitsTop) are completed first (CompleteLogits: a forward pass of one token).
func (in *Instance) Logits() ([]float32, error) {
	if err := in.CompleteLogits(); err != nil {
		return nil, err
	}
	off, err := in.callU32("logits")
	if err != nil || off == 0 {
		return nil, err
	}
	v := in.model.hyper.Vocab
	b, err := in.span(off, uint64(v)*4, "logits")
	if err != nil {
		return nil, err
	}
	out := make([]float32, v)
	copy(out, unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), v))
	return out, nil
}

// Layout returns the instance's KV layout.
func (in *Instance) Layout() KVLayout { return in.layout }

// Options returns the options the instance runs with (sampler as last set).
func (in *Instance) Options() InstanceOptions { return in.opts }

// Model returns the instance's model.
func (in *Instance) Model() *Model { return in.model }

// Region returns the instance's linear memory.
func (in *Instance) Region() *wasmmem.Region { return in.region }

// Memory returns the instance's linear memory bytes. The slice aliases the guest's memory: it
// is valid until the next call into the guest (which may grow it) or Close; the caller must
// not write it while the guest could read it, except into regions from AllocKV before
// LoadState.
func (in *Instance) Memory() []byte { return in.region.Bytes() }

// KVRegions lists the KV block regions in use (those holding positions [0, Position)),
// layer-major. Each is checked to lie in memory with the layout's length and alignment.
func (in *Instance) KVRegions() ([]KVRegion, error) {
	off, err := in.callU32("kv_regions")
	if err != nil {
		return nil, err
	}
	return in.parseRegions("kv_regions", off)
}

// KVTable returns the offsets of the KV block regions in use (those holding positions
// [0, Position)): table[l][b] is where layer l's block b starts in Memory(), for
// Layout().BlockBytes bytes, BlockAlign-aligned and inside memory. It asks the guest only for
// the blocks allocated since the last call (a block never moves once allocated), so its cost
// grows with the new blocks, not with the context. The slices are the instance's: read them,
// do not modify or keep them past the next call into the instance.
func (in *Instance) KVTable() ([][]uint32, error) {
	pos, err := in.Position()
	if err != nil {
		return nil, err
	}
	nb := (pos + in.layout.BlockSize - 1) / in.layout.BlockSize
	if in.kvTable == nil {
		in.kvTable = make([][]uint32, in.layout.Layers)
	}
	if have := len(in.kvTable[0]); have < nb {
		off, err := in.callU32("kv_regions_from", int32(have))
		if err != nil {
			return nil, err
		}
		regs, err := in.parseRegions("kv_regions_from", off)
		if err != nil {
			return nil, err
		}
		if err := in.remember(regs, have, nb); err != nil {
			return nil, err
		}
	}
	out := make([][]uint32, len(in.kvTable))
	for l, t := range in.kvTable {
		out[l] = t[:nb:nb]
	}
	return out, nil
}

// remember appends regions, which must be blocks [from, to) of every layer in layer-major
// order, to the table KVTable keeps.
func (in *Instance) remember(regs []KVRegion, from, to int) error {
	if len(regs) != (to-from)*in.layout.Layers {
		return fmt.Errorf("%w: %d KV regions listed for blocks [%d, %d) of %d layers", ErrGuest, len(regs), from, to, in.layout.Layers)
	}
	for i, r := range regs {
		if r.Layer != i/(to-from) || r.Block != from+i%(to-from) {
			return fmt.Errorf("%w: KV region %d is %+v, want layer %d block %d", ErrGuest, i, r, i/(to-from), from+i%(to-from))
		}
	}
	for _, r := range regs {
		in.kvTable[r.Layer] = append(in.kvTable[r.Layer], r.Offset)
	}
	return nil
}

// AllocKV makes sure KV blocks cover positions [0, npos) and returns their regions (like
// KVRegions for npos). Restore calls it on a fresh instance, writes each block's bytes into
// Memory()[Offset:Offset+Length], then calls LoadState.
func (in *Instance) AllocKV(npos int) ([]KVRegion, error) {
	if npos < 0 || npos > math.MaxInt32 {
		return nil, fmt.Errorf("engine: AllocKV(%d) out of range", npos)
	}
	off, err := in.callU32("kv_alloc", int32(npos))
	if err != nil {
		return nil, err
	}
	if off == 0 {
		return nil, in.guestError("kv_alloc")
	}
	return in.parseRegions("kv_alloc", off)
}

func (in *Instance) parseRegions(name string, off uint32) ([]KVRegion, error) {
	rec, err := in.record(off)
	if err != nil {
		return nil, err
	}
	if len(rec) < 4 {
		return nil, fmt.Errorf("%w: %s: short record", ErrGuest, name)
	}
	n := binary.LittleEndian.Uint32(rec)
	// The record's length prefix is the guest's outBuf size; the count must fit in it.
	if uint64(n)*16 > uint64(len(rec)-4) {
		return nil, fmt.Errorf("%w: %s: %d regions do not fit the record", ErrGuest, name, n)
	}
	mem := uint64(in.region.Len())
	out := make([]KVRegion, n)
	for i := range out {
		p := rec[4+16*i:]
		r := KVRegion{
			Layer: int(binary.LittleEndian.Uint32(p)), Block: int(binary.LittleEndian.Uint32(p[4:])),
			Offset: binary.LittleEndian.Uint32(p[8:]), Length: binary.LittleEndian.Uint32(p[12:]),
		}
		if r.Layer >= in.layout.Layers || int(r.Length) != in.layout.BlockBytes || r.Offset%BlockAlign != 0 ||
			uint64(r.Offset)+uint64(r.Length) > mem {
			return nil, fmt.Errorf("%w: %s: bad region %+v", ErrGuest, name, r)
		}
		out[i] = r
	}
	return out, nil
}

// SaveState returns the small state: everything but the KV blocks (position, token history,
// sampler settings, RNG state, last logits), in the guest's versioned format (guest/ABI.md).
// Partial logits (MarkLogitsTop) are completed first, so the state holds the full vector.
func (in *Instance) SaveState() ([]byte, error) { return in.AppendState(nil) }

// AppendState appends the small state (as SaveState returns it) to dst and returns the
// extended slice: a caller that saves often reuses one buffer (a fresh 512 KiB slice per save
// costs more than the save itself at a 128k vocabulary). It is AppendStateHead then
// AppendLogits.
func (in *Instance) AppendState(dst []byte) ([]byte, error) {
	out, nl, err := in.appendHead(dst)
	if err != nil || nl == 0 {
		return out, err
	}
	return in.AppendLogits(slices.Grow(out, 4*nl))
}

// AppendStateHead appends the head of the small state to dst: the fixed part and the token
// history (80 + 4·position bytes), whose header still counts the logits (0 or the vocabulary
// size) although their values are not appended (AppendLogits, or TopLogits, reads them).
// It never recomputes anything: the head of partial logits is the head of the full ones.
func (in *Instance) AppendStateHead(dst []byte) ([]byte, error) {
	out, _, err := in.appendHead(dst)
	return out, err
}

// appendHead is AppendStateHead, also returning the logits count of the header.
func (in *Instance) appendHead(dst []byte) ([]byte, int, error) {
	off, err := in.callU32("state_save_head")
	if err != nil {
		return nil, 0, err
	}
	if off == 0 {
		return nil, 0, in.guestError("state_save_head")
	}
	head, err := in.record(off)
	if err != nil {
		return nil, 0, err
	}
	if len(head) < stateFixed {
		return nil, 0, fmt.Errorf("%w: state_save_head: short record", ErrGuest)
	}
	nl := int(binary.LittleEndian.Uint32(head[76:]))
	if nl != 0 && nl != in.model.hyper.Vocab {
		return nil, 0, fmt.Errorf("%w: state_save_head: %d logits for a vocabulary of %d", ErrGuest, nl, in.model.hyper.Vocab)
	}
	return append(dst, head...), nl, nil
}

// AppendLogits appends the last token's logits to dst as vocabulary-size little-endian
// float32s (the tail of the small state), completing partial logits first (CompleteLogits).
// With no logits (nothing fed, or a prefix adopted) it appends nothing.
func (in *Instance) AppendLogits(dst []byte) ([]byte, error) {
	if err := in.CompleteLogits(); err != nil {
		return nil, err
	}
	lb, err := in.logitBytes()
	if err != nil || lb == nil {
		return dst, err
	}
	return append(dst, lb...), nil
}

// logitBytes is the guest's logits buffer in linear memory (valid until the next guest call),
// nil when it has no logits.
func (in *Instance) logitBytes() ([]byte, error) {
	loff, err := in.callU32("logits")
	if err != nil || loff == 0 {
		return nil, err
	}
	return in.span(loff, 4*uint64(in.model.hyper.Vocab), "logits")
}

// TopLogits writes the len(ids) best of the last token's logits, best first in the sampler's
// order (larger first, NaN as -Inf, -0 equal to +0, the lower id first among equal ones): ids[j]
// the index, vals[j] its logit with NaN written as -Inf. len(vals) must equal len(ids), 1 ≤
// len(ids) ≤ the vocabulary size, and the instance must have logits. When the logits are
// partial and hold fewer than len(ids) entries, they are completed first (CompleteLogits);
// otherwise nothing is recomputed. The selection runs on the host's CPU over linear memory
// (engine/cpu TopK: one pass with a heap of len(ids), then a sort of those).
func (in *Instance) TopLogits(ids []int32, vals []float32) error {
	v := in.model.hyper.Vocab
	if len(ids) < 1 || len(ids) > v || len(vals) != len(ids) {
		return fmt.Errorf("engine: top logits: %d ids and %d values for a vocabulary of %d", len(ids), len(vals), v)
	}
	if in.logitsTop > 0 && len(ids) > in.logitsTop {
		if err := in.CompleteLogits(); err != nil {
			return err
		}
	}
	lb, err := in.logitBytes()
	if err != nil {
		return err
	}
	if lb == nil {
		return errors.New("engine: top logits: the instance has no logits (feed tokens first)")
	}
	in.keyBuf = cpu.TopK(ids, vals, unsafe.Slice((*float32)(unsafe.Pointer(&lb[0])), v), in.keyBuf)
	return nil
}

// MarkLogitsTop tells the instance that its logits (just loaded: LoadState or
// LoadStateBuffers) hold only the k best of the last token's logits: those k exact at their
// ids, in the sampler's order, and -Inf at every other id, as a restore of a checkpoint that
// kept only the top k writes them (checkpoint.ExpandTopLogits). Such a vector has exactly the
// same k' best, for every k' ≤ k, as the full one (ties, -Inf and NaN included: NaN reads as
// -Inf either way), so a sampler whose Candidates are at most k draws from it exactly what it
// draws from the full vector, and the instance samples from it as it is. A sampler that reads
// more (SetSampler to a temperature over the whole vocabulary, say), Logits, SaveState and
// AppendLogits first recompute the full logits (CompleteLogits). The mark lasts until the
// logits change: Prefill, Step or a state load clears it. k ≥ the vocabulary size clears it; k
// < 1 is an error, and so is an instance without logits.
func (in *Instance) MarkLogitsTop(k int) error {
	if k < 1 {
		return fmt.Errorf("engine: mark the top %d logits: want at least 1", k)
	}
	lb, err := in.logitBytes()
	if err != nil {
		return err
	}
	if lb == nil {
		return errors.New("engine: mark top logits: the instance has no logits")
	}
	in.logitsTop = k
	if k >= in.model.hyper.Vocab {
		in.logitsTop = 0
	}
	return nil
}

// LogitsTop is the number of exact best logits the instance holds when they are partial
// (MarkLogitsTop), and 0 when its logits are the full vector (or it has none).
func (in *Instance) LogitsTop() int { return in.logitsTop }

// logitsFor completes partial logits when s reads more candidates than they hold.
func (in *Instance) logitsFor(s Sampler) error {
	if in.logitsTop > 0 && s.Candidates(in.model.hyper.Vocab) > in.logitsTop {
		return in.CompleteLogits()
	}
	return nil
}

// CompleteLogits recomputes the full logits of the last position when they are partial
// (MarkLogitsTop; otherwise it does nothing): it loads the state one position back (the
// history without its last token, the same sampler settings and RNG state, no logits) and
// feeds that last token again, a forward pass of one token over the KV cache of the earlier
// positions. The token's keys and values are written again at the last position; where the
// backend writes other bits than those in place (a kernel that rounds differently for one
// token than for a batch) the bytes in place are put back, so the KV cache, the position,
// the history, the sampler and the RNG are exactly as before: only the logits change.
//
// The recomputed logits are bit-identical to the original ones on the CPU backend, whichever
// way those were computed (a prefill of any batch size, or a Step): its kernels give every
// token the same bits whatever the batch (engine/cpu, "Determinism"; TestCompleteLogits). On
// the CUDA backend (checked on an H100, 2026-11-26) they are bit-identical when a Step or a
// one-token feed computed the originals (the end of a turn that generated), but when a
// batched prefill did (a turn that fed a prompt and generated nothing) they differ in the
// last bits (|diff| up to 5e-5 on a test model), and so do the last token's keys and values
// fed again: those are the bytes put back above.
//
// On error the state is put back as it was (the logits still partial) when the guest still
// runs.
func (in *Instance) CompleteLogits() error {
	k := in.logitsTop
	if k == 0 {
		return nil
	}
	// Rare (a sampler change after a restore), and a forward pass: the scratch is not kept.
	st, nl, err := in.appendHead(nil)
	if err != nil {
		return fmt.Errorf("engine: complete logits: %w", err)
	}
	if nl == 0 {
		in.logitsTop = 0
		return nil
	}
	if st, err = in.appendLogitBytes(st); err != nil {
		return fmt.Errorf("engine: complete logits: %w", err)
	}
	le := binary.LittleEndian
	pos := int(le.Uint32(st[20:]))
	if pos < 1 || len(st) < stateFixed+4*pos {
		return fmt.Errorf("%w: complete logits: state of %d bytes at position %d", ErrGuest, len(st), pos)
	}
	last := int32(le.Uint32(st[stateFixed+4*(pos-1):]))
	// The last position's blocks, as they are.
	regs, err := in.KVRegions()
	if err != nil {
		return fmt.Errorf("engine: complete logits: %w", err)
	}
	b := (pos - 1) / in.layout.BlockSize
	var kv []byte
	var mine []KVRegion
	mem := in.region.Bytes()
	for _, r := range regs {
		if r.Block == b {
			mine = append(mine, r)
			kv = append(kv, mem[uint64(r.Offset):uint64(r.Offset)+uint64(r.Length)]...)
		}
	}
	back := make([]byte, stateFixed+4*(pos-1))
	copy(back, st[:len(back)])
	le.PutUint32(back[20:], uint32(pos-1))
	le.PutUint32(back[76:], 0)
	if err := in.LoadState(back); err != nil {
		in.logitsTop = k
		return fmt.Errorf("engine: complete logits: load the state at position %d: %w", pos-1, err)
	}
	if err := in.Prefill([]int32{last}); err != nil {
		if in.LoadState(st) == nil {
			in.logitsTop = k
		}
		return fmt.Errorf("engine: complete logits: feed token %d at position %d: %w", last, pos-1, err)
	}
	mem = in.region.Bytes()
	changed := false
	for i, r := range mine {
		old := kv[i*int(r.Length) : (i+1)*int(r.Length)]
		if dst := mem[uint64(r.Offset) : uint64(r.Offset)+uint64(r.Length)]; !bytes.Equal(dst, old) {
			copy(dst, old)
			changed = true
		}
	}
	if changed {
		in.invalidateKV()
	}
	return nil
}

// appendLogitBytes appends the logits buffer as it is (partial or not) to dst.
func (in *Instance) appendLogitBytes(dst []byte) ([]byte, error) {
	lb, err := in.logitBytes()
	if err != nil {
		return nil, err
	}
	return append(dst, lb...), nil
}

// LoadState replaces the small state with one from SaveState. The KV blocks for its position
// must have been allocated (AllocKV) and filled first. On error the state is unchanged. The
// loaded logits count as the full vector: a caller that wrote only the best of them marks them
// afterwards (MarkLogitsTop).
//
// A well-formed state goes straight to its places in the guest's memory (the head to the
// transfer buffer, the logits to the guest's logits buffer: StateBuffers); anything else is
// handed to the guest whole, which refuses it with the reason.
func (in *Instance) LoadState(state []byte) error {
	if head, nl, ok := in.stateShape(state); ok {
		hb, lb, err := in.StateBuffers(head, nl)
		if err != nil {
			return err
		}
		copy(hb, state[:head])
		copy(lb, state[head:])
		return in.LoadStateBuffers()
	}
	in.invalidateKV()
	if err := in.write(state); err != nil {
		return err
	}
	if err := in.callStatus("state_load", int32(len(state))); err != nil {
		return err
	}
	in.noteSampler(state)
	in.logitsTop = 0
	return nil
}

// stateShape reads the head length and logits count of a state whose header is consistent
// with its length and this instance's vocabulary (everything else is the guest's to check).
func (in *Instance) stateShape(state []byte) (head, nl int, ok bool) {
	if len(state) < stateFixed || len(state) > math.MaxInt32 {
		return 0, 0, false
	}
	np := uint64(binary.LittleEndian.Uint32(state[20:]))
	n := uint64(binary.LittleEndian.Uint32(state[76:]))
	if n != 0 && n != uint64(in.model.hyper.Vocab) {
		return 0, 0, false
	}
	h := stateFixed + 4*np
	if h+4*n != uint64(len(state)) {
		return 0, 0, false
	}
	return int(h), int(n), true
}

// stateFixed is the length of the small state's fixed part (guest/ABI.md).
const stateFixed = 80

func (in *Instance) invalidateKV() {
	// The host has just written KV blocks into linear memory (restore, AdoptPrefix): copies a
	// backend keeps are stale from here on.
	if inv, ok := in.exec.(KVInvalidator); ok && !in.closed && in.dead == nil {
		inv.InvalidateKV()
	}
}

// noteSampler records the sampler settings of a loaded state.
func (in *Instance) noteSampler(state []byte) {
	if len(state) >= 36+8 {
		in.opts.Sampler = Sampler{
			Temp: math.Float32frombits(binary.LittleEndian.Uint32(state[24:])),
			TopK: int(binary.LittleEndian.Uint32(state[28:])),
			TopP: math.Float32frombits(binary.LittleEndian.Uint32(state[32:])),
			Seed: binary.LittleEndian.Uint64(state[36:]),
		}
	}
}

// StateBuffers returns the places in the guest's memory where a small state is written for
// LoadStateBuffers, so that a restore can decode it there directly: head receives the state's
// first headLen bytes (the fixed part and the token history, 80 + 4·position), logits its
// nLogits float32 logits (nLogits is 0 or the vocabulary size; logits is empty for 0). Both
// alias linear memory and are valid until the next call into the guest or Close; the guest
// reads them only in LoadStateBuffers, which checks everything (nothing the caller writes
// there can harm the host). A KV block slice taken from Memory before this call stays valid
// (memory never moves), but Memory must be fetched again to see any growth.
func (in *Instance) StateBuffers(headLen, nLogits int) (head, logits []byte, err error) {
	if headLen < stateFixed || headLen > math.MaxInt32 || (headLen-stateFixed)%4 != 0 {
		return nil, nil, fmt.Errorf("engine: state head of %d bytes: want 80 + 4·position", headLen)
	}
	if nLogits != 0 && nLogits != in.model.hyper.Vocab {
		return nil, nil, fmt.Errorf("engine: state with %d logits for a vocabulary of %d", nLogits, in.model.hyper.Vocab)
	}
	in.stPending = false
	hoff, err := in.callU32("buf", int32(headLen))
	if err != nil {
		return nil, nil, err
	}
	if head, err = in.span(hoff, uint64(headLen), "transfer buffer"); err != nil {
		return nil, nil, err
	}
	if nLogits > 0 {
		loff, err := in.callU32("logits_in")
		if err != nil {
			return nil, nil, err
		}
		if loff == 0 {
			return nil, nil, fmt.Errorf("%w: no logits buffer", ErrGuest)
		}
		if logits, err = in.span(loff, 4*uint64(nLogits), "logits buffer"); err != nil {
			return nil, nil, err
		}
		// Distinct guest buffers; a guest claiming otherwise is lying.
		if uint64(hoff) < uint64(loff)+uint64(len(logits)) && uint64(loff) < uint64(hoff)+uint64(headLen) {
			return nil, nil, fmt.Errorf("%w: transfer and logits buffers overlap", ErrGuest)
		}
	}
	in.stHead, in.stLogits, in.stPending = headLen, nLogits, true
	return head[:headLen:headLen], logits, nil
}

// LoadStateBuffers loads the state written into the buffers of the last StateBuffers call,
// like LoadState (the header's logits count must be the nLogits given there); the buffers are
// spent either way. On error the state is unchanged.
func (in *Instance) LoadStateBuffers() error {
	if !in.stPending {
		return errors.New("engine: LoadStateBuffers without StateBuffers")
	}
	in.stPending = false
	hoff, err := in.callU32("buf", int32(in.stHead))
	if err != nil {
		return err
	}
	head, err := in.span(hoff, uint64(in.stHead), "transfer buffer")
	if err != nil {
		return err
	}
	if n := int(binary.LittleEndian.Uint32(head[76:])); n != in.stLogits {
		return fmt.Errorf("engine: the state's header counts %d logits, its buffers hold %d", n, in.stLogits)
	}
	sampler := slices.Clone(head[:stateFixed])
	in.invalidateKV()
	if err := in.callStatus("state_load_split", int32(in.stHead)); err != nil {
		return err
	}
	in.noteSampler(sampler)
	in.logitsTop = 0
	return nil
}

// AdoptPrefix makes tokens the instance's history and position without running the model,
// for a prefix whose KV blocks were restored from elsewhere (a prefix cache): call AllocKV
// (len(tokens)) and fill those blocks first. Sampler settings and RNG state are kept; there
// are no logits afterwards, so feed at least one more token (Prefill) before sampling. Only a
// fresh instance (position 0) may adopt a prefix.
func (in *Instance) AdoptPrefix(tokens []int32) error {
	pos, err := in.Position()
	if err != nil {
		return err
	}
	if pos != 0 {
		return fmt.Errorf("engine: AdoptPrefix on an instance at position %d, want a fresh one", pos)
	}
	cur, err := in.SaveState()
	if err != nil {
		return err
	}
	const fixed = stateFixed
	if len(cur) < fixed {
		return fmt.Errorf("%w: short state", ErrGuest)
	}
	st := make([]byte, fixed+4*len(tokens))
	copy(st, cur[:fixed])
	binary.LittleEndian.PutUint32(st[20:], uint32(len(tokens)))
	binary.LittleEndian.PutUint32(st[76:], 0) // no logits
	for i, t := range tokens {
		binary.LittleEndian.PutUint32(st[fixed+4*i:], uint32(t))
	}
	return in.LoadState(st)
}

// NopLoop makes the guest call the empty host op n times (host-op call overhead).
func (in *Instance) NopLoop(n int) error {
	_, err := in.call("nop_loop", int32(n))
	return err
}

// Close releases the store (and so the linear memory region) and the executor. Idempotent.
func (in *Instance) Close() error {
	if in.closed {
		return nil
	}
	in.closed = true
	if in.store != nil {
		in.store.Close()
	}
	if in.exec != nil {
		in.exec.Close()
	}
	return nil
}
