//go:build darwin && arm64 && cgo

package metal

/*
#cgo CFLAGS: -x objective-c -fobjc-arc
#cgo LDFLAGS: -framework Metal -framework Foundation
#include <stdlib.h>
#include "bridge.h"
*/
import "C"

import (
	"fmt"
	"math"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/engine/cpu"
	"github.com/driftstore/driftstore/wasmmem"
)

const errLen = 1024

// errBuf receives the Objective-C side's error messages. It holds no Go pointers, so its
// address may be passed to C.
type errBuf [errLen]C.char

func (e *errBuf) p() *C.char { return &e[0] }

func (e *errBuf) String() string { return C.GoString(&e[0]) }

// Available reports whether this machine has a Metal device (it does not compile the kernels:
// NewBackend does).
func Available() bool { return C.dsm_available() != 0 }

// Backend is the Metal engine.Backend. It wraps every linear memory of the engine it is
// installed on (RegionHook) and every model's weights (Load) as no-copy Metal buffers and
// runs the host ops as Metal kernels on those bytes in place. Safe for concurrent use by
// several instances; each Exec has its own command queue.
type Backend struct {
	ctx    *C.dsm_ctx
	device string
	page   int
	maxBuf int

	mu      sync.RWMutex
	regions map[uintptr]*region // by base address (guarded by mu)

	wrappedRegions atomic.Int64
	wrappedWeights atomic.Int64
	closeOnce      sync.Once
}

var _ engine.Backend = (*Backend)(nil)

// NewBackend opens the system's default Metal device and compiles the kernels. Where there is
// no usable device, or the kernels do not compile, the error wraps ErrUnavailable.
func NewBackend() (*Backend, error) {
	src := C.CString(kernelSource)
	defer C.free(unsafe.Pointer(src))
	names := C.CString(strings.Join(kernelNames[:], "\n"))
	defer C.free(unsafe.Pointer(names))
	var eb errBuf
	ctx := C.dsm_open(src, C.size_t(len(kernelSource)), names, C.uint32_t(simdWidth), eb.p(), errLen)
	if ctx == nil {
		return nil, fmt.Errorf("%w: %s", ErrUnavailable, eb.String())
	}
	var name [256]C.char
	C.dsm_device_name(ctx, &name[0], C.size_t(len(name)))
	maxBuf := uint64(C.dsm_max_buffer_length(ctx))
	if maxBuf > math.MaxInt {
		maxBuf = math.MaxInt
	}
	return &Backend{
		ctx:     ctx,
		device:  C.GoString(&name[0]),
		page:    os.Getpagesize(),
		maxBuf:  int(maxBuf),
		regions: make(map[uintptr]*region),
	}, nil
}

// Name is "metal".
func (b *Backend) Name() string { return "metal" }

// Device is the GPU's name, e.g. "Apple M2".
func (b *Backend) Device() string { return b.device }

// Wrapped reports the bytes currently wrapped as no-copy buffers: linear memories and
// weights (page-rounded). Nothing of either was copied.
func (b *Backend) Wrapped() (regions, weights int64) {
	return b.wrappedRegions.Load(), b.wrappedWeights.Load()
}

// RegionHook wraps each linear memory as a Metal buffer when it is created, rewraps it when it
// grows and releases the buffer when it is released.
func (b *Backend) RegionHook() wasmmem.Hook { return hook{b} }

// Close releases the device. Models, instances and engines using the backend must be closed
// first. Idempotent.
func (b *Backend) Close() error {
	b.closeOnce.Do(func() {
		C.dsm_close(b.ctx)
		b.ctx = nil
	})
	return nil
}

// wrap makes a no-copy buffer over [base, base+n).
func (b *Backend) wrap(base uintptr, n int) (unsafe.Pointer, error) {
	var eb errBuf
	buf := C.dsm_wrap(b.ctx, C.uintptr_t(base), C.size_t(n), eb.p(), errLen)
	if buf == nil {
		return nil, fmt.Errorf("metal: wrap %d bytes at %#x: %s", n, base, eb.String())
	}
	return buf, nil
}

// ---------------------------------------------------------------------------------------------
// Linear memories.

// region is one instance's linear memory and the buffer over its accessible part. Operations
// hold mu for reading while their command buffer runs; growth and release hold it for
// writing, so the buffer they replace or release is never in use.
type region struct {
	base uintptr
	mu   sync.RWMutex
	n    int            // bytes wrapped (guarded by mu)
	buf  unsafe.Pointer // MTLBuffer over [base, base+n); nil when n is 0 or after release
}

type hook struct{ b *Backend }

func (h hook) RegionCreated(r *wasmmem.Region) error {
	b := h.b
	reg := &region{base: r.Base()}
	if n := r.Len(); n > 0 {
		buf, err := b.wrapRegion(reg.base, n)
		if err != nil {
			return err
		}
		reg.buf, reg.n = buf, n
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, dup := b.regions[reg.base]; dup {
		C.dsm_release(reg.buf)
		b.wrappedRegions.Add(-int64(reg.n))
		return fmt.Errorf("metal: region %#x created twice", reg.base)
	}
	b.regions[reg.base] = reg
	return nil
}

func (h hook) RegionGrew(r *wasmmem.Region, oldLen, newLen int) error {
	b := h.b
	b.mu.RLock()
	reg := b.regions[r.Base()]
	b.mu.RUnlock()
	if reg == nil {
		return fmt.Errorf("metal: growth of unknown region %#x", r.Base())
	}
	buf, err := b.wrapRegion(reg.base, newLen)
	if err != nil {
		return err
	}
	reg.mu.Lock()
	old, oldN := reg.buf, reg.n
	reg.buf, reg.n = buf, newLen
	reg.mu.Unlock()
	// No operation holds the old buffer now; a command buffer that used it has completed (each
	// operation waits for its own), and would keep it alive anyway.
	C.dsm_release(old)
	b.wrappedRegions.Add(-int64(oldN))
	return nil
}

func (h hook) RegionReleased(r *wasmmem.Region) {
	b := h.b
	b.mu.Lock()
	reg := b.regions[r.Base()]
	delete(b.regions, r.Base())
	b.mu.Unlock()
	if reg == nil {
		return
	}
	reg.mu.Lock()
	C.dsm_release(reg.buf)
	b.wrappedRegions.Add(-int64(reg.n))
	reg.buf, reg.n = nil, 0
	reg.mu.Unlock()
}

func (b *Backend) wrapRegion(base uintptr, n int) (unsafe.Pointer, error) {
	if err := checkRegion(base, n, b.page); err != nil {
		return nil, err
	}
	if n > b.maxBuf {
		return nil, fmt.Errorf("metal: a %d-byte linear memory exceeds the device's maximum buffer length %d", n, b.maxBuf)
	}
	buf, err := b.wrap(base, n)
	if err != nil {
		return nil, err
	}
	b.wrappedRegions.Add(int64(n))
	return buf, nil
}

// lockRegion finds the region holding [p, p+n) and returns it read-locked.
func (b *Backend) lockRegion(p uintptr, n int) (*region, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	for _, reg := range b.regions {
		reg.mu.RLock()
		if reg.buf != nil && p >= reg.base && p-reg.base < uintptr(reg.n) {
			if _, ok := within(reg.base, reg.n, p, n); ok {
				return reg, nil
			}
			reg.mu.RUnlock()
			return nil, fmt.Errorf("metal: %d bytes at %#x run past the end of linear memory", n, p)
		}
		reg.mu.RUnlock()
	}
	return nil, fmt.Errorf("metal: operand at %#x is not in any instance's linear memory", p)
}

// ---------------------------------------------------------------------------------------------
// Weights.

// tensor is one weight tensor: where it lies in which wrapped buffer, and its shape.
type tensor struct {
	typ              cpu.DType
	rows, cols, rowB int
	buf              unsafe.Pointer
	off              uint64
}

type weights struct {
	b     *Backend
	src   *engine.Tensors // keeps the wrapped bytes reachable
	h     engine.Hyper
	embed int
	t     []tensor
	bufs  []unsafe.Pointer
	bytes int64
	once  sync.Once
}

// Load wraps the model's tensors where they lie (normally the mmap'd GGUF file), without
// copying: the enclosing page ranges become shared Metal buffers.
func (b *Backend) Load(t *engine.Tensors) (engine.Weights, error) {
	h := t.Hyper
	if len(t.W) < 3 {
		return nil, fmt.Errorf("metal backend: %d tensors", len(t.W))
	}
	if h.HeadDim <= 0 || h.HeadDim%2 != 0 || h.HeadDim > maxHeadDim {
		return nil, fmt.Errorf("metal backend: head dimension %d: the kernels take even sizes up to %d", h.HeadDim, maxHeadDim)
	}
	if h.Heads <= 0 || h.KVHeads <= 0 || h.Heads%h.KVHeads != 0 {
		return nil, fmt.Errorf("metal backend: %d heads is not a multiple of %d KV heads", h.Heads, h.KVHeads)
	}
	spans := make([]span, len(t.W))
	for i := range t.W {
		tw := &t.W[i]
		if tw.Data == nil {
			continue
		}
		if err := tw.Validate(); err != nil {
			return nil, fmt.Errorf("metal backend: weight %d: %w", i, err)
		}
		align := 2
		switch tw.Type {
		case cpu.F32:
			align = 4
		case cpu.F16, cpu.BF16, cpu.Q8_0:
		default:
			return nil, fmt.Errorf("metal backend: weight %d: unsupported type %v", i, tw.Type)
		}
		if tw.Rows == 1 && tw.Type != cpu.F32 {
			return nil, fmt.Errorf("metal backend: norm weight %d is %v, want F32", i, tw.Type)
		}
		if tw.Rows != 1 && tw.Cols%4 != 0 {
			return nil, fmt.Errorf("metal backend: weight %d has %d columns; the kernels need a multiple of 4", i, tw.Cols)
		}
		addr := uintptr(unsafe.Pointer(unsafe.SliceData(tw.Data)))
		if addr%uintptr(align) != 0 {
			return nil, fmt.Errorf("metal backend: weight %d (%v) at %#x is not %d-byte aligned", i, tw.Type, addr, align)
		}
		spans[i] = span{addr: addr, n: len(tw.Data)}
	}
	// The globals follow the layers: token embedding, output norm, output (engine/hostops.go).
	embed := len(t.W) - 3
	if e := &t.W[embed]; e.Data == nil || e.Rows != h.Vocab || e.Cols != h.Dim {
		return nil, fmt.Errorf("metal backend: weight %d is not a %d×%d token embedding", embed, h.Vocab, h.Dim)
	}
	ranges, places, err := planWraps(spans, b.page, b.maxBuf)
	if err != nil {
		return nil, fmt.Errorf("metal backend: %w", err)
	}
	w := &weights{b: b, src: t, h: h, embed: embed, t: make([]tensor, len(t.W))}
	for _, r := range ranges {
		buf, err := b.wrap(r.base, r.n)
		if err != nil {
			w.Close()
			return nil, fmt.Errorf("metal backend: weights: %w", err)
		}
		w.bufs = append(w.bufs, buf)
		w.bytes += int64(r.n)
	}
	b.wrappedWeights.Add(w.bytes)
	for i := range t.W {
		tw := &t.W[i]
		if places[i].buf < 0 {
			continue
		}
		rb, _ := tw.Type.RowBytes(tw.Cols)
		w.t[i] = tensor{typ: tw.Type, rows: tw.Rows, cols: tw.Cols, rowB: rb, buf: w.bufs[places[i].buf], off: places[i].off}
	}
	return w, nil
}

// NewExec makes an executor with its own command queue; threads is not used (the GPU runs
// the ops).
func (w *weights) NewExec(threads int) (engine.Exec, error) {
	var eb errBuf
	q := C.dsm_new_queue(w.b.ctx, eb.p(), errLen)
	if q == nil {
		return nil, fmt.Errorf("metal backend: %s", eb.String())
	}
	return &exec{w: w, queue: q}, nil
}

// Close releases the buffers over the weights (not the weights' memory). Instances using them
// must be closed first. Idempotent.
func (w *weights) Close() error {
	w.once.Do(func() {
		for _, buf := range w.bufs {
			C.dsm_release(buf)
		}
		w.b.wrappedWeights.Add(-w.bytes)
		w.bufs, w.t, w.src = nil, nil, nil
	})
	return nil
}

// ---------------------------------------------------------------------------------------------
// Exec.

// exec runs one instance's host ops. Every op is one command buffer that it waits for, so
// results are in linear memory when it returns; it panics on a device error (the engine turns
// the panic into a trap).
type exec struct {
	w     *weights
	queue unsafe.Pointer
	reg   *region // the instance's region, found on first use

	scratch    unsafe.Pointer // shared buffer: token ids, RoPE table, KV block table
	scratchMem unsafe.Pointer // its CPU address (C memory)
	scratchLen int
	table      []uint32
}

var _ engine.Exec = (*exec)(nil)

// bind is one buffer argument: a Metal buffer and a byte offset into it.
type bind struct {
	buf unsafe.Pointer
	off uint64
}

func (m *tensor) bind() bind { return bind{m.buf, m.off} }

// lock returns the instance's region, read-locked, checking that it holds [p, p+n).
func (e *exec) lock(p uintptr, n int) *region {
	if r := e.reg; r != nil {
		r.mu.RLock()
		if r.buf != nil {
			if _, ok := within(r.base, r.n, p, n); ok {
				return r
			}
		}
		r.mu.RUnlock()
	}
	r, err := e.w.b.lockRegion(p, n)
	if err != nil {
		panic(fmt.Errorf("metal backend: %w", err))
	}
	e.reg = r
	return r
}

func addrOf[T any](s []T) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(s))) }

// at binds [p, p+n) of the locked region r.
func at(r *region, p uintptr, n int) bind {
	off, ok := within(r.base, r.n, p, n)
	if !ok {
		panic(fmt.Errorf("metal backend: operand at %#x (%d bytes) is not in the instance's linear memory", p, n))
	}
	return bind{r.buf, off}
}

func f32At(r *region, x []float32) bind { return at(r, addrOf(x), 4*len(x)) }

// scratchBytes returns the scratch buffer's first n bytes (C memory), growing it if needed.
func (e *exec) scratchBytes(n int) []byte {
	if n > e.scratchLen {
		size := (n + 64<<10 - 1) &^ (64<<10 - 1)
		var eb errBuf
		var mem unsafe.Pointer
		buf := C.dsm_new_buffer(e.w.b.ctx, C.size_t(size), &mem, eb.p(), errLen)
		if buf == nil {
			panic(fmt.Errorf("metal backend: scratch buffer: %s", eb.String()))
		}
		C.dsm_release(e.scratch)
		e.scratch, e.scratchMem, e.scratchLen = buf, mem, size
	}
	return unsafe.Slice((*byte)(e.scratchMem), n)
}

func (e *exec) scratchU32(n int) []uint32 {
	b := e.scratchBytes(4 * n)
	return unsafe.Slice((*uint32)(unsafe.Pointer(unsafe.SliceData(b))), n)
}

func (e *exec) scratchF32(n int) []float32 {
	b := e.scratchBytes(4 * n)
	return unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(b))), n)
}

// launch runs one kernel: grid threadgroups of tg threads (x only), buffers bound at indices
// 0.., parameters after them; it waits for completion.
func (e *exec) launch(k kernel, grid [3]int, tg int, p *params, bufs ...bind) {
	var d C.dsm_dispatch
	d.kernel = C.int32_t(k)
	if len(bufs) != len(kernelBuffers[k]) {
		panic(fmt.Sprintf("metal backend: %s takes %d buffers, got %d", kernelNames[k], len(kernelBuffers[k]), len(bufs)))
	}
	d.nbufs = C.int32_t(len(bufs))
	for i, b := range bufs {
		d.bufs[i] = b.buf
		d.offs[i] = C.uint64_t(b.off)
	}
	for i, g := range grid {
		if g <= 0 || g > math.MaxUint32 {
			panic(fmt.Sprintf("metal backend: grid dimension %d out of range", g))
		}
		d.grid[i] = C.uint32_t(g)
	}
	d.tg = [3]C.uint32_t{C.uint32_t(tg), 1, 1}
	if p != nil {
		d.plen = C.uint32_t(p.n)
		for i := 0; i < p.n; i++ {
			d.params[i] = C.uint8_t(p.b[i])
		}
	}
	var eb errBuf
	if C.dsm_run(e.w.b.ctx, e.queue, &d, 1, eb.p(), errLen) != 0 {
		panic(fmt.Errorf("metal backend: %s: %s", kernelNames[k], eb.String()))
	}
}

var matmulKernel = map[cpu.DType]kernel{cpu.F32: kMatMulF32, cpu.F16: kMatMulF16, cpu.BF16: kMatMulBF16, cpu.Q8_0: kMatMulQ8}
var embedKernel = map[cpu.DType]kernel{cpu.F32: kEmbedF32, cpu.F16: kEmbedF16, cpu.BF16: kEmbedBF16, cpu.Q8_0: kEmbedQ8}

func (e *exec) Embed(out []float32, ids []int32) {
	n := len(ids)
	if n == 0 {
		return
	}
	m := &e.w.t[e.w.embed]
	out = out[:n*m.cols]
	sc := e.scratchU32(n)
	for i, id := range ids {
		sc[i] = uint32(id)
	}
	r := e.lock(addrOf(out), 4*len(out))
	defer r.mu.RUnlock()
	p := embedParams(n, m.cols, m.rows, m.rowB)
	e.launch(embedKernel[m.typ], [3]int{ceilDiv(n*m.cols/4, elemThreads), 1, 1}, elemThreads, p,
		f32At(r, out), bind{e.scratch, 0}, m.bind())
}

func (e *exec) RMSNorm(out, x []float32, w int, n int) {
	m := &e.w.t[w]
	if n == 0 || m.cols == 0 {
		return
	}
	sz := n * m.cols
	r := e.lock(addrOf(out), 4*sz)
	defer r.mu.RUnlock()
	e.launch(kRMSNorm, [3]int{n, 1, 1}, normThreads, normParams(m.cols, e.w.h.Eps), f32At(r, out[:sz]), f32At(r, x[:sz]), m.bind())
}

func (e *exec) MatMul(out []float32, w int, x []float32, n int) {
	m := &e.w.t[w]
	if n == 0 || m.rows == 0 {
		return
	}
	r := e.lock(addrOf(out), 4*n*m.rows)
	defer r.mu.RUnlock()
	e.launch(matmulKernel[m.typ], [3]int{ceilDiv(m.rows, mmRowsPerTG), ceilDiv(n, mmTokens), 1}, mmRowsPerTG*simdWidth,
		matmulParams(m.rows, m.cols, n, m.rowB),
		f32At(r, out[:n*m.rows]), f32At(r, x[:n*m.cols]), m.bind())
}

func (e *exec) RoPE(x []float32, n, nHeads, pos0 int) {
	hd := e.w.h.HeadDim
	if n == 0 || nHeads == 0 {
		return
	}
	sz := n * nHeads * hd
	ropeTable(e.scratchF32(n*hd), n, pos0, hd, e.w.h.RopeBase)
	r := e.lock(addrOf(x), 4*sz)
	defer r.mu.RUnlock()
	e.launch(kRoPE, [3]int{ceilDiv(n*nHeads*hd/2, elemThreads), 1, 1}, elemThreads, ropeParams(n, nHeads, hd), f32At(r, x[:sz]), bind{e.scratch, 0})
}

// kvTable writes the byte offsets of the blocks covering positions [0, end) into the scratch
// buffer. r is read-locked by the caller (and unlocked by its deferred call, also on panic).
func (e *exec) kvTable(r *region, l engine.KVLayout, blocks [][]byte, end int) {
	es := 4
	if kvF16(l) {
		es = 2
	}
	bb := 2 * l.BlockSize * l.KVHeads * l.HeadDim * es
	if err := blockOffsets(e.scratchU32(ceilDiv(end, l.BlockSize)), r.base, r.n, blocks, bb); err != nil {
		panic(fmt.Errorf("metal backend: %w", err))
	}
}

func kvF16(l engine.KVLayout) bool { return l.Type.GGML() != 0 }

func (e *exec) StoreKV(l engine.KVLayout, blocks [][]byte, k, v []float32, n, pos0 int) {
	if n == 0 {
		return
	}
	row := l.KVHeads * l.HeadDim
	r := e.lock(addrOf(k), 4*n*row)
	defer r.mu.RUnlock()
	e.kvTable(r, l, blocks, pos0+n)
	e.launch(kStoreKV, [3]int{ceilDiv(n*row, elemThreads), 1, 1}, elemThreads, kvParams(n, pos0, l.BlockSize, row, kvF16(l)),
		bind{r.buf, 0}, f32At(r, k[:n*row]), f32At(r, v[:n*row]), bind{e.scratch, 0})
}

func (e *exec) Attention(out, q []float32, n, pos0 int, l engine.KVLayout, blocks [][]byte) {
	if n == 0 {
		return
	}
	h := e.w.h
	sz := n * h.Heads * l.HeadDim
	r := e.lock(addrOf(out), 4*sz)
	defer r.mu.RUnlock()
	e.kvTable(r, l, blocks, pos0+n)
	e.launch(kAttention, [3]int{ceilDiv(h.Heads, atHeadsPerTG), n, 1}, atHeadsPerTG*simdWidth,
		attnParams(n, h.Heads, pos0, l.BlockSize, l.KVHeads, l.HeadDim, kvF16(l)),
		f32At(r, out[:sz]), f32At(r, q[:sz]), bind{r.buf, 0}, bind{e.scratch, 0})
}

func (e *exec) SwiGLU(out, gate, up []float32) {
	n := len(out)
	if n == 0 {
		return
	}
	r := e.lock(addrOf(out), 4*n)
	defer r.mu.RUnlock()
	e.launch(kSwiGLU, [3]int{ceilDiv(n, elemThreads), 1, 1}, elemThreads, countParams(n), f32At(r, out), f32At(r, gate[:n]), f32At(r, up[:n]))
}

func (e *exec) Add(dst, src []float32) {
	n := len(dst)
	if n == 0 {
		return
	}
	r := e.lock(addrOf(dst), 4*n)
	defer r.mu.RUnlock()
	e.launch(kAdd, [3]int{ceilDiv(n, elemThreads), 1, 1}, elemThreads, countParams(n), f32At(r, dst), f32At(r, src[:n]))
}

// Close releases the command queue and the scratch buffer.
func (e *exec) Close() {
	C.dsm_release(e.scratch)
	C.dsm_release(e.queue)
	e.scratch, e.scratchMem, e.scratchLen, e.queue = nil, nil, 0, nil
}
