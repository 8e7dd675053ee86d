package cuda

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/wasmmem"
)

// KVPlacement says where attention reads the KV cache from.
type KVPlacement int

const (
	// KVDevice (the default): each KV block of the guest's linear memory has a device copy,
	// made from the linear-memory bytes on first use; StoreKV writes both (write-through), so
	// the linear memory is always current for checkpoints, and attention reads device memory.
	// After bytes of a live instance's KV blocks are changed behind the backend (a restore
	// into it), call InvalidateKV on its Exec.
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
}

// Backend is the CUDA engine.Backend: weights uploaded once per model, the instances' linear
// memories registered with the device (RegionHook), every host op run by kernels on those
// bytes in place. Safe for concurrent use; each Exec has its own stream.
type Backend struct {
	d    *Device
	reg  *Registrar
	opts BackendOptions
}

var _ engine.Backend = (*Backend)(nil)

// NewBackend opens the GPU. It returns an error wrapping ErrUnavailable where there is none.
func NewBackend(opts BackendOptions) (*Backend, error) {
	d, err := Open(opts.Ordinal)
	if err != nil {
		return nil, err
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
	// The globals follow the layers: token embedding, output norm, output (engine/hostops.go).
	w.embed = len(t.W) - 3
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
	return &Exec{w: w, s: s, mirror: make(map[uintptr]*Buffer)}, nil
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

// Exec runs one instance's host ops on its own stream. Every op waits for its kernels before
// it returns (the guest may read the results at once), and panics on a device error (the
// engine turns the panic into a trap).
type Exec struct {
	w      *cudaWeights
	s      *Stream
	stage  *Buffer             // matmul inputs copied from linear memory
	ostage *Buffer             // matmul outputs, copied to linear memory in one DMA
	mirror map[uintptr]*Buffer // KV block host address -> device copy (KVDevice)
	hostT  []DevPtr
	devT   []DevPtr
}

var _ engine.Exec = (*Exec)(nil)

func must(err error) {
	if err != nil {
		panic(fmt.Errorf("cuda backend: %w", err))
	}
}

func (e *Exec) ptr(p unsafe.Pointer, n int) DevPtr {
	d, err := e.w.b.reg.DevPtrOf(uintptr(p), n)
	must(err)
	return d
}

// copyIn queues a copy of the n host bytes at p (registered linear memory) to dst.
func (e *Exec) copyIn(dst DevPtr, p unsafe.Pointer, n int) {
	pieces, err := e.w.b.reg.Pieces(uintptr(p), n)
	must(err)
	for _, pc := range pieces {
		must(e.s.CopyAsync(dst+DevPtr(pc.Off), pc.Dev, pc.N))
	}
}

func (e *Exec) f32(x []float32) DevPtr { return e.ptr(unsafe.Pointer(unsafe.SliceData(x)), 4*len(x)) }

func (e *Exec) sync() { must(e.s.Sync()) }

func (e *Exec) Embed(out []float32, ids []int32) {
	must(e.s.Embed(e.f32(out), e.w.mats[e.w.embed], ids))
	e.sync()
}

func (e *Exec) RMSNorm(out, x []float32, w int, n int) {
	norm := e.w.norms[w]
	dim := norm.Len / 4
	must(e.s.RMSNorm(e.f32(out[:n*dim]), e.f32(x[:n*dim]), norm.Ptr, dim, n, e.w.h.Eps))
	e.sync()
}

// copyOut queues a copy of n bytes from src to the registered host memory at p.
func (e *Exec) copyOut(p unsafe.Pointer, src DevPtr, n int) {
	pieces, err := e.w.b.reg.Pieces(uintptr(p), n)
	must(err)
	for _, pc := range pieces {
		must(e.s.CopyAsync(pc.Dev, src+DevPtr(pc.Off), pc.N))
	}
}

// MatMul stages x and out in device memory: every warp reads all of x, which over the bus
// would cost more than the product itself, and the kernel's scattered 4-byte stores would
// each be a bus transaction; the copy engine moves both in single DMAs instead.
func (e *Exec) MatMul(out []float32, w int, x []float32, n int) {
	m := e.w.mats[w]
	xb, ob := n*m.Cols*4, n*m.Rows*4
	must(e.s.grow(&e.stage, xb))
	must(e.s.grow(&e.ostage, ob))
	e.copyIn(e.stage.Ptr, unsafe.Pointer(unsafe.SliceData(x)), xb)
	must(e.s.MatMul(e.ostage.Ptr, m, e.stage.Ptr, n))
	e.copyOut(unsafe.Pointer(unsafe.SliceData(out)), e.ostage.Ptr, ob)
	e.sync()
}

func (e *Exec) RoPE(x []float32, n, nHeads, pos0 int) {
	h := e.w.h
	must(e.s.RoPE(e.f32(x[:n*nHeads*h.HeadDim]), n, nHeads, h.HeadDim, nHeads*h.HeadDim, pos0, h.RopeBase))
	e.sync()
}

func layoutOf(l engine.KVLayout) KVLayout {
	t := F16
	if l.Type.GGML() == 0 {
		t = F32
	}
	return KVLayout{BlockSize: l.BlockSize, NKVHeads: l.KVHeads, HeadDim: l.HeadDim, KVType: t}
}

// tables fills e.hostT (and e.devT for KVDevice) for the blocks covering positions [0, end).
func (e *Exec) tables(l KVLayout, blocks [][]byte, end int) {
	nb := ceilDiv(end, l.BlockSize)
	bb := l.BlockBytes()
	e.hostT, e.devT = e.hostT[:0], e.devT[:0]
	for _, blk := range blocks[:nb] {
		hp := e.ptr(unsafe.Pointer(unsafe.SliceData(blk)), bb)
		e.hostT = append(e.hostT, hp)
		if e.w.b.opts.KV != KVDevice {
			continue
		}
		key := uintptr(unsafe.Pointer(unsafe.SliceData(blk)))
		m, ok := e.mirror[key]
		if !ok || m.Len != bb {
			if ok {
				must(m.Free())
			}
			var err error
			m, err = e.w.b.d.Alloc(bb)
			must(err)
			e.copyIn(m.Ptr, unsafe.Pointer(unsafe.SliceData(blk)), bb)
			e.mirror[key] = m
		}
		e.devT = append(e.devT, m.Ptr)
	}
}

func (e *Exec) StoreKV(l engine.KVLayout, blocks [][]byte, k, v []float32, n, pos0 int) {
	cl := layoutOf(l)
	e.tables(cl, blocks, pos0+n)
	row := n * cl.NKVHeads * cl.HeadDim
	kp, vp := e.f32(k[:row]), e.f32(v[:row])
	must(e.s.StoreKV(kp, vp, n, pos0, cl, e.hostT))
	if e.w.b.opts.KV == KVDevice {
		must(e.s.StoreKV(kp, vp, n, pos0, cl, e.devT))
	}
	e.sync()
}

func (e *Exec) Attention(out, q []float32, n, pos0 int, l engine.KVLayout, blocks [][]byte) {
	cl := layoutOf(l)
	e.tables(cl, blocks, pos0+n)
	t := e.hostT
	if e.w.b.opts.KV == KVDevice {
		t = e.devT
	}
	sz := n * e.w.h.Heads * cl.HeadDim
	must(e.s.Attention(e.f32(out[:sz]), e.f32(q[:sz]), n, e.w.h.Heads, pos0, cl, t))
	e.sync()
}

func (e *Exec) SwiGLU(out, gate, up []float32) {
	n := len(out)
	must(e.s.SwiGLU(e.f32(out), e.f32(gate[:n]), e.f32(up[:n]), n))
	e.sync()
}

func (e *Exec) Add(dst, src []float32) {
	n := len(dst)
	d := e.f32(dst)
	must(e.s.Add(d, d, e.f32(src[:n]), n))
	e.sync()
}

// InvalidateKV drops the device copies of KV blocks: call it after the KV bytes in linear
// memory were changed other than by StoreKV (a restore into a live instance).
func (e *Exec) InvalidateKV() {
	e.sync()
	for k, m := range e.mirror {
		m.Free()
		delete(e.mirror, k)
	}
}

// Close frees the stream, the staging memory and the KV copies.
func (e *Exec) Close() {
	e.InvalidateKV()
	e.stage.Free()
	e.ostage.Free()
	e.s.Close()
}
