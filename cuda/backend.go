package cuda

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
	"unsafe"

	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/wasmmem"
)

// KVPlacement says where attention reads the KV cache from.
type KVPlacement int

const (
	// KVDevice (the default): each KV block of the guest's linear memory has a device copy,
	// made from the linear-memory bytes on first use; StoreKV writes both (write-through), so
	// the linear memory is current for checkpoints after each export, and attention reads
	// device memory. After bytes of a live instance's KV blocks are changed behind the
	// backend (a restore into it), the engine calls InvalidateKV on its Exec (LoadState).
	KVDevice KVPlacement = iota
	// KVHost: attention reads the blocks in the registered linear memory over the bus.
	KVHost
)

func (p KVPlacement) String() string {
	if p == KVHost {
		return "host"
	}
	return "device"
}

// BackendOptions configures NewBackend.
type BackendOptions struct {
	Ordinal int // GPU ordinal
	KV      KVPlacement
	// Eager issues every kernel as its op is called, instead of deferring an export's kernels
	// and replaying repeated runs of them through CUDA graphs (deferred.go). For comparison;
	// DRIFTSTORE_CUDA_EAGER=1 in the environment sets it too.
	Eager bool
	// GEMM, when not nil, replaces the GEMM options the environment gave the device
	// (DRIFTSTORE_CUDA_GEMM...; gemm.go): whether prefill products may run through cuBLAS.
	GEMM *GEMMOptions
	// Profile times every Exec's Syncs with CUDA events (Backend.Profile): where a step's
	// wall time goes between the device's kernels, the copy back into linear memory and the
	// host. For measurement: it adds three event records and a flush boundary to each Sync.
	// Ignored with Eager.
	Profile bool
}

// Profile sums, over the Syncs of a backend's Execs made with BackendOptions.Profile, where
// the time between one Sync's return and the next went. Kernels: device time from the
// first issue of the kernels queued since the previous Sync to the end of the last of them
// (any wait of the device for the host in between included); CopyBack: the copy of what they
// wrote back into linear memory; Wall: host time from the previous Sync's return (or the
// first op) to this one's. Wall − Kernels − CopyBack is the time the device had nothing of
// this Exec's to run: the host's work before the first issue, and the Sync's wake-up.
type Profile struct {
	Syncs                   int
	Kernels, CopyBack, Wall time.Duration
}

// Profile returns the sums since the last ResetProfile (zero without BackendOptions.Profile).
func (b *Backend) Profile() Profile {
	b.profMu.Lock()
	defer b.profMu.Unlock()
	return b.prof
}

// ResetProfile zeroes the sums.
func (b *Backend) ResetProfile() {
	b.profMu.Lock()
	b.prof = Profile{}
	b.profMu.Unlock()
}

// Backend is the CUDA engine.Backend: weights uploaded once per model, the instances' linear
// memories registered with the device (RegionHook), every host op run by kernels on those
// bytes in place. Safe for concurrent use; each Exec has its own stream.
type Backend struct {
	d    *Device
	reg  *Registrar
	opts BackendOptions

	profMu sync.Mutex
	prof   Profile
}

var _ engine.Backend = (*Backend)(nil)

// NewBackend opens the GPU. It returns an error wrapping ErrUnavailable where there is none.
func NewBackend(opts BackendOptions) (*Backend, error) {
	d, err := Open(opts.Ordinal)
	if err != nil {
		return nil, err
	}
	if os.Getenv("DRIFTSTORE_CUDA_EAGER") == "1" {
		opts.Eager = true
	}
	if opts.GEMM != nil {
		if err := d.SetGEMM(*opts.GEMM); err != nil {
			d.Close()
			return nil, err
		}
	}
	return &Backend{d: d, reg: NewRegistrar(d), opts: opts}, nil
}

// Name is "cuda".
func (b *Backend) Name() string { return "cuda" }

// Device is the backend's GPU.
func (b *Backend) Device() *Device { return b.d }

// RegionHook registers every linear memory (and growth) with the device.
func (b *Backend) RegionHook() wasmmem.Hook { return b.reg }

// Close releases the device; models and instances must be closed first.
func (b *Backend) Close() error { return b.d.Close() }

// Load uploads the model's weights to device memory; a tied output matrix (the same bytes
// as the token embedding) is uploaded once.
func (b *Backend) Load(t *engine.Tensors) (engine.Weights, error) {
	w := &cudaWeights{b: b, h: t.Hyper, mats: make([]*Weights, len(t.W)), norms: make([]*Buffer, len(t.W))}
	if len(t.W) < 3 {
		return nil, fmt.Errorf("cuda backend: %d tensors", len(t.W))
	}
	w.embed = t.TokenEmbd()
	seen := map[uintptr]*Weights{}
	for i := range t.W {
		tw := &t.W[i]
		if tw.Data == nil {
			continue
		}
		if tw.Rows == 1 {
			if tw.Type != 0 {
				w.Close()
				return nil, fmt.Errorf("cuda backend: norm weight %d is %v, want F32", i, tw.Type)
			}
			buf, err := b.d.Alloc(len(tw.Data))
			if err == nil {
				err = buf.Upload(0, tw.Data)
			}
			if err != nil {
				w.Close()
				return nil, err
			}
			w.norms[i] = buf
			continue
		}
		key := uintptr(unsafe.Pointer(unsafe.SliceData(tw.Data)))
		if m, ok := seen[key]; ok && m.Rows == tw.Rows && m.Cols == tw.Cols && m.Type == DType(tw.Type) {
			w.mats[i] = m
			continue
		}
		m, err := b.d.UploadWeights(DType(tw.Type), tw.Rows, tw.Cols, tw.Data)
		if err != nil {
			w.Close()
			return nil, fmt.Errorf("cuda backend: weight %d: %w", i, err)
		}
		seen[key] = m
		w.mats[i] = m
	}
	// The guest multiplies the output matrix by one token only (the last one's logits): the
	// CUDA-core GEMV streams it at full bandwidth, the tensor-core path at less than half.
	if m := w.mats[t.Output()]; m != nil {
		m.CUDACores = true
	}
	return w, nil
}

type cudaWeights struct {
	b     *Backend
	h     engine.Hyper
	embed int
	mats  []*Weights
	norms []*Buffer
	once  sync.Once
}

func (w *cudaWeights) NewExec(threads int) (engine.Exec, error) {
	s, err := w.b.d.NewStream()
	if err != nil {
		return nil, err
	}
	s.stableX = true // the mirror changes only through the stream's operations
	if !w.b.opts.Eager {
		err = s.SetDeferred(true)
		if err == nil && w.b.opts.Profile {
			err = s.setProfile()
		}
		if err != nil {
			s.Close()
			return nil, err
		}
	}
	return &Exec{w: w, s: s, kvDev: w.b.opts.KV == KVDevice, tabs: make(map[uintptr]*kvTable)}, nil
}

func (w *cudaWeights) Close() error {
	var err error
	w.once.Do(func() {
		freed := map[*Weights]bool{}
		for _, m := range w.mats {
			if m != nil && !freed[m] {
				freed[m] = true
				err = errors.Join(err, m.Free())
			}
		}
		for _, n := range w.norms {
			err = errors.Join(err, n.Free())
		}
	})
	return err
}

// Exec runs one instance's host ops on its own stream, asynchronously: an op queues its
// kernels and returns. Unless the backend is Eager, the stream is deferred: kernels are
// recorded and issued in runs (through CUDA graphs once a run repeats, as every decode step's
// does), at the latest when the engine calls Sync. It is an engine.Syncer: the engine calls Sync at the end of every
// guest export, and only then do the results reach linear memory.
//
// The instance's linear memory has a device copy (the mirror, offset for offset). Ops read
// and write the mirror at device speed; what they wrote since the last Sync (the dirty
// ranges) is copied back into the registered linear memory by the copy engine at Sync.
// Within one export the mirror of an op's input is current when an earlier op of that export
// wrote it (the guest hands host ops nothing else but the token ids, which Embed copies, and
// the KV blocks); anything else is uploaded from linear memory first. KV blocks stay current
// across exports: StoreKV writes the mirror and the linear memory (write-through), and a
// block is uploaded once when first seen; InvalidateKV forgets them all.
//
// Block tables are kept on the device per layer (keyed by the address of the layer's first
// block) and only the entries that changed are uploaded, about once per BlockSize tokens.
// Device errors panic in an op (the engine turns the panic into a trap) or come back from
// Sync.
type Exec struct {
	w     *cudaWeights
	s     *Stream
	kvDev bool

	hm     hostMap // cached snapshot of the registered linear memory
	gen    uint64  // the registrar's generation when hm was taken
	ident  bool
	offs   []int
	mirror *Buffer
	valid  ivals // mirror ranges current for this export
	dirty  ivals // mirror ranges written since the last Sync
	kvOK   []uint64
	tabs   map[uintptr]*kvTable
	queued bool
	up     []byte
	raw    []uint64
}

var (
	_ engine.Exec          = (*Exec)(nil)
	_ engine.Syncer        = (*Exec)(nil)
	_ engine.KVInvalidator = (*Exec)(nil)
)

// kvTable is one layer's block table on the device: the mirror addresses of its blocks
// (dev) and their registered host addresses (host, for write-through and KVHost).
type kvTable struct {
	offs      []int
	dev, host *Buffer
	cap       int
}

func must(err error) {
	if err != nil {
		panic(fmt.Errorf("cuda backend: %w", err))
	}
}

// begin is called at the start of every op: when a linear memory grew since the last op, it
// refreshes the cached registration and grows the mirror, before the op takes any address.
func (e *Exec) begin() {
	if g := e.w.b.reg.gen.Load(); g != e.gen && e.hm.n != 0 {
		hm, ok := e.w.b.reg.snapshot(e.hm.base)
		if !ok {
			must(fmt.Errorf("linear memory at %#x is no longer registered", e.hm.base))
		}
		e.hm, e.gen = hm, g
		if e.mirror.Len < e.hm.n {
			e.growMirror(e.hm.n)
		}
	}
}

// off returns the offset in linear memory of the n bytes at p.
func (e *Exec) off(p unsafe.Pointer, n int) int {
	a := uintptr(p)
	if e.hm.n == 0 { // the first op: find the memory
		e.gen = e.w.b.reg.gen.Load()
		hm, ok := e.w.b.reg.snapshot(a)
		if !ok {
			must(fmt.Errorf("host address %#x is not in registered memory", a))
		}
		e.hm, e.ident = hm, e.w.b.d.info.HostPtrIsDevPtr
		e.growMirror(e.hm.n)
	}
	if a < e.hm.base || a+uintptr(n) > e.hm.base+uintptr(e.hm.n) {
		must(fmt.Errorf("range [%#x,+%d) is outside the linear memory's %d registered bytes at %#x", a, n, e.hm.n, e.hm.base))
	}
	return int(a - e.hm.base)
}

const mirrorGranule = 16 << 20

func (e *Exec) growMirror(n int) {
	size := n
	if e.mirror != nil {
		size = max(n, e.mirror.Len+e.mirror.Len/2)
	}
	size = (size + mirrorGranule - 1) / mirrorGranule * mirrorGranule
	nb, err := e.w.b.d.Alloc(size)
	must(err)
	if old := e.mirror; old != nil {
		must(e.s.CopyAsync(nb.Ptr, old.Ptr, old.Len))
		must(e.s.flush()) // recorded work uses the old mirror
		must(old.Free())  // waits for the device
	}
	e.mirror = nb
	for _, t := range e.tabs { // their entries point into the old mirror
		t.offs = t.offs[:0]
	}
}

// in returns the mirror address of x, uploading it first unless this export's ops wrote it.
func (e *Exec) in(x []float32) DevPtr {
	nb := 4 * len(x)
	o := e.off(unsafe.Pointer(unsafe.SliceData(x)), nb)
	if !e.valid.covers(o, o+nb) {
		// Staged through Go memory: the driver copies pageable bytes before it returns, so
		// the guest may change them afterwards without affecting the queued op.
		if cap(e.up) < nb {
			e.up = make([]byte, nb)
		}
		copy(e.up[:nb], unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(x))), nb))
		must(e.s.UploadAsync(e.mirror.Ptr+DevPtr(o), e.up[:nb]))
		e.valid.add(o, o+nb)
	}
	e.queued = true
	return e.mirror.Ptr + DevPtr(o)
}

// out returns the mirror address of x and records that an op writes it.
func (e *Exec) out(x []float32) DevPtr {
	nb := 4 * len(x)
	o := e.off(unsafe.Pointer(unsafe.SliceData(x)), nb)
	e.valid.add(o, o+nb)
	e.dirty.add(o, o+nb)
	e.queued = true
	return e.mirror.Ptr + DevPtr(o)
}

// inout is in followed by out (in-place ops).
func (e *Exec) inout(x []float32) DevPtr {
	p := e.in(x)
	e.out(x)
	return p
}

// hostPieces calls f for each part of linear memory [o, o+n) that lies in one registration,
// with its device address.
func (e *Exec) hostPieces(o, n int, f func(rel int, dev DevPtr, n int)) {
	for _, r := range e.hm.ranges {
		lo, hi := max(o, r.off), min(o+n, r.off+r.n)
		if lo < hi {
			f(lo-o, r.dev+DevPtr(lo-r.off), hi-lo)
		}
	}
}

// addProfile adds the Sync just done to the backend's Profile.
func (e *Exec) addProfile() error {
	p := e.s.prof
	now := time.Now()
	wall := now.Sub(p.last)
	p.last, p.started = now, false
	k, err := e.s.d.drv.eventElapsed(p.start, p.kern)
	if err != nil {
		return err
	}
	c, err := e.s.d.drv.eventElapsed(p.kern, p.copied)
	if err != nil {
		return err
	}
	ms := func(v float32) time.Duration { return time.Duration(float64(v) * 1e6) }
	b := e.w.b
	b.profMu.Lock()
	b.prof.Syncs++
	b.prof.Kernels += ms(k)
	b.prof.CopyBack += ms(c)
	b.prof.Wall += wall
	b.profMu.Unlock()
	return nil
}

// Sync copies what the ops wrote back into linear memory and waits for the stream.
func (e *Exec) Sync() error {
	if !e.queued {
		return nil
	}
	var err error
	if e.s.prof != nil {
		// Everything before the copies issued, then the event that ends the kernels.
		if err = e.s.flush(); err == nil {
			err = e.s.d.drv.eventRecord(e.s.prof.kern, e.s.s)
		}
	}
	for _, iv := range e.dirty {
		e.hostPieces(iv.lo, iv.hi-iv.lo, func(rel int, dev DevPtr, n int) {
			if err == nil {
				err = e.s.CopyAsync(dev, e.mirror.Ptr+DevPtr(iv.lo+rel), n)
			}
		})
	}
	if e.s.prof != nil && err == nil {
		if err = e.s.flush(); err == nil {
			err = e.s.d.drv.eventRecord(e.s.prof.copied, e.s.s)
		}
	}
	if serr := e.s.Sync(); err == nil {
		err = serr
	}
	if e.s.prof != nil && err == nil {
		err = e.addProfile()
	}
	e.dirty, e.valid, e.queued = e.dirty[:0], e.valid[:0], false
	if err != nil {
		return fmt.Errorf("cuda backend: %w", err)
	}
	return nil
}

func (e *Exec) Embed(out []float32, ids []int32) {
	e.begin()
	must(e.s.Embed(e.out(out), e.w.mats[e.w.embed], ids))
}

func (e *Exec) RMSNorm(out, x []float32, w int, n int) {
	e.begin()
	norm := e.w.norms[w]
	dim := norm.Len / 4
	xp := e.in(x[:n*dim])
	must(e.s.RMSNorm(e.out(out[:n*dim]), xp, norm.Ptr, dim, n, e.w.h.Eps))
}

func (e *Exec) MatMul(out []float32, w int, x []float32, n int) {
	e.begin()
	m := e.w.mats[w]
	xp := e.in(x[:n*m.Cols])
	must(e.s.MatMul(e.out(out[:n*m.Rows]), m, xp, n))
}

func (e *Exec) RoPE(x []float32, n, nHeads, pos0 int) {
	e.begin()
	h := e.w.h
	must(e.s.RoPE(e.inout(x[:n*nHeads*h.HeadDim]), n, nHeads, h.HeadDim, nHeads*h.HeadDim, pos0, h.RopeBase))
}

func layoutOf(l engine.KVLayout) KVLayout {
	t := F16
	if l.Type.GGML() == 0 {
		t = F32
	}
	return KVLayout{BlockSize: l.BlockSize, NKVHeads: l.KVHeads, HeadDim: l.HeadDim, KVType: t}
}

func (e *Exec) kvValid(o int) bool {
	i := o / engine.BlockAlign
	return i/64 < len(e.kvOK) && e.kvOK[i/64]&(1<<(i%64)) != 0
}

func (e *Exec) setKVValid(o int) {
	i := o / engine.BlockAlign
	for i/64 >= len(e.kvOK) {
		e.kvOK = append(e.kvOK, 0)
	}
	e.kvOK[i/64] |= 1 << (i % 64)
}

// table returns the device block tables (mirror addresses, registered host addresses) of the
// blocks covering positions [0, end), uploading the entries that changed since the last call
// for the same layer and, for KVDevice, the blocks the mirror does not hold yet.
func (e *Exec) table(l KVLayout, blocks [][]byte, end int) (dev, host DevPtr) {
	nb := ceilDiv(end, l.BlockSize)
	bb := l.BlockBytes()
	key := uintptr(unsafe.Pointer(unsafe.SliceData(blocks[0])))
	t := e.tabs[key]
	if t == nil {
		t = &kvTable{}
		e.tabs[key] = t
	}
	offs := e.offs[:0]
	for _, blk := range blocks[:nb] {
		offs = append(offs, e.off(unsafe.Pointer(unsafe.SliceData(blk)), bb))
	}
	e.offs = offs
	first := -1
	for i, o := range offs {
		if i >= len(t.offs) || t.offs[i] != o {
			first = i
			t.offs = append(t.offs[:i], offs[i:]...)
			break
		}
	}
	if nb > t.cap {
		must(e.s.flush()) // recorded work may use the old tables
		t.dev.Free()
		t.host.Free()
		t.cap = max(nb, 2*t.cap, 64)
		var err error
		t.dev, err = e.w.b.d.Alloc(8 * t.cap)
		must(err)
		t.host, err = e.w.b.d.Alloc(8 * t.cap)
		must(err)
		first = 0
	}
	if first >= 0 {
		// Mirror addresses, uploading blocks the mirror does not hold.
		e.raw = e.raw[:0]
		for _, o := range t.offs[first:nb] {
			if e.kvDev && !e.kvValid(o) {
				e.hostPieces(o, bb, func(rel int, dev DevPtr, n int) {
					must(e.s.CopyAsync(e.mirror.Ptr+DevPtr(o+rel), dev, n))
				})
				e.setKVValid(o)
			}
			e.raw = append(e.raw, uint64(e.mirror.Ptr)+uint64(o))
		}
		must(e.s.UploadAsync(t.dev.Ptr+DevPtr(8*first), u64bytes(e.raw)))
		e.raw = e.raw[:0]
		for _, o := range t.offs[first:nb] {
			p, err := e.hm.devPtr(o, bb, e.ident)
			must(err)
			e.raw = append(e.raw, uint64(p))
		}
		must(e.s.UploadAsync(t.host.Ptr+DevPtr(8*first), u64bytes(e.raw)))
	}
	e.queued = true
	return t.dev.Ptr, t.host.Ptr
}

func u64bytes(v []uint64) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v))), 8*len(v))
}

func (e *Exec) StoreKV(l engine.KVLayout, blocks [][]byte, k, v []float32, n, pos0 int) {
	e.begin()
	cl := layoutOf(l)
	row := n * cl.NKVHeads * cl.HeadDim
	kp, vp := e.in(k[:row]), e.in(v[:row])
	dev, host := e.table(cl, blocks, pos0+n)
	nb := ceilDiv(pos0+n, cl.BlockSize)
	if e.kvDev { // one kernel writes the device copy and the linear memory
		must(e.s.StoreKVTable2(kp, vp, n, pos0, cl, dev, host, nb))
	} else {
		must(e.s.StoreKVTable(kp, vp, n, pos0, cl, host, nb))
	}
}

func (e *Exec) Attention(out, q []float32, n, pos0 int, l engine.KVLayout, blocks [][]byte) {
	e.begin()
	cl := layoutOf(l)
	sz := n * e.w.h.Heads * cl.HeadDim
	qp := e.in(q[:sz])
	dev, host := e.table(cl, blocks, pos0+n)
	t := host
	if e.kvDev {
		t = dev
	}
	nb := ceilDiv(pos0+n, cl.BlockSize)
	must(e.s.AttentionTable(e.out(out[:sz]), qp, n, e.w.h.Heads, pos0, cl, t, nb))
}

func (e *Exec) SwiGLU(out, gate, up []float32) {
	e.begin()
	n := len(out)
	g, u := e.in(gate[:n]), e.in(up[:n])
	must(e.s.SwiGLU(e.out(out), g, u, n))
}

func (e *Exec) Add(dst, src []float32) {
	e.begin()
	n := len(dst)
	s := e.in(src[:n])
	d := e.inout(dst)
	must(e.s.Add(d, d, s, n))
}

// InvalidateKV forgets the device copies of KV blocks and the block tables: call it after
// the KV bytes in linear memory were changed other than by StoreKV (a restore into a live
// instance). The engine does (engine.KVInvalidator).
func (e *Exec) InvalidateKV() {
	clear(e.kvOK)
	for _, t := range e.tabs {
		t.offs = t.offs[:0]
	}
}

// Close waits for the stream and frees it, the mirror and the tables. What ops wrote since
// the last Sync is not copied back (the linear memory may be gone already).
func (e *Exec) Close() {
	e.s.Close()
	for k, t := range e.tabs {
		t.dev.Free()
		t.host.Free()
		delete(e.tabs, k)
	}
	e.mirror.Free()
	e.mirror = nil
}

// ivals is a set of byte ranges [lo, hi), sorted, disjoint and not adjacent.
type ivals []ival

type ival struct{ lo, hi int }

func (s ivals) covers(lo, hi int) bool {
	for _, v := range s {
		if v.lo <= lo && hi <= v.hi {
			return true
		}
	}
	return false
}

func (s *ivals) add(lo, hi int) {
	if lo >= hi {
		return
	}
	v := *s
	i := 0
	for i < len(v) && v[i].hi < lo {
		i++
	}
	j := i
	for j < len(v) && v[j].lo <= hi { // overlaps or touches: merge
		lo, hi = min(lo, v[j].lo), max(hi, v[j].hi)
		j++
	}
	if i == j {
		v = append(v, ival{})
		copy(v[i+1:], v[i:])
		v[i] = ival{lo, hi}
	} else {
		v[i] = ival{lo, hi}
		v = append(v[:i+1], v[j:]...)
	}
	*s = v
}
