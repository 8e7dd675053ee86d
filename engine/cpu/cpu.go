// Package cpu holds the CPU compute kernels of the Llama forward pass:
// matmul against weights in GGML encodings (F32, F16, BF16, Q8_0), RMSNorm,
// RoPE, attention over a block-major KV cache, SwiGLU, softmax, embedding
// lookup. Kernels are pure functions over Go slices; they know nothing of
// Wasm or model files. The engine bounds-checks guest offsets and then calls
// these on slices of the guest's linear memory.
//
// The heavy kernels (matmul, attention) are C, compiled through cgo: portable
// C, plus AVX2/FMA/F16C variants chosen at run time when the CPU has them.
// The package API is the seam: hand-written SIMD for other targets replaces
// internals only.
//
// # Determinism
//
// Every result is bit-identical across runs and for any thread count: work
// is split only along independent outputs, and every reduction runs in one
// fixed order. Moreover a token's result never depends on the other tokens
// of the call (the batch size n, or where the token sits in it): MatMul's
// dot products use one canonical order (eight lane partial sums, a fixed
// tree, then the k%8 tail) in both its one-token and its batched kernels,
// and Attention's row t depends only on q row t, pos0+t and the cache. So a
// prompt fed in one batch produces the same activations and KV bytes as fed
// one token at a time. Results may differ between the SIMD and the portable
// kernels (fused vs separate multiply-add), i.e. between machines.
//
// # Kernels and threads
//
// MatMul has two kernels. For n <= 3 tokens (decode) weights are converted
// to float32 in registers as they stream by, 8 (or 4) rows at a time, and
// read exactly once. For larger n the rows are split into units of 16 (64
// for matrices of 1024 rows or more); for each token tile of 96 and k-chunk
// of 256 columns a 16-row block is converted once into a packed float32
// panel that stays in L1 and is reused by every token of the tile through a
// 4-row × 3-token register-blocked FMA micro-kernel; the eight-lane partial
// sums of each (row, token) carry over between k-chunks, so the order is
// still the canonical one. Attention works on units of (4 query tokens, one
// KV head), reading the KV rows of the unit through a pointer table.
//
// A Pool's threads are the caller plus persistent worker goroutines; each
// thread makes one cgo call per kernel, and the C workers take units from a
// shared atomic counter, so a thread slowed by other load simply takes fewer
// units. Small calls run on the caller alone.
//
// # Errors
//
// Kernels panic on inconsistent arguments (short slices, bad shapes): the
// caller validates untrusted input before calling; a panic here is a bug in
// the caller.
package cpu

// #cgo CFLAGS: -O3 -std=c11
// #cgo LDFLAGS: -lm
// #include "kernels.h"
import "C"

import (
	"fmt"
	"sync"
	"sync/atomic"
)

var simdAvailable = C.ds_init() != 0

// Backend names the kernel set in use: "avx2" (AVX2+FMA+F16C) or "generic".
func Backend() string {
	if C.ds_using_simd() != 0 {
		return "avx2"
	}
	return "generic"
}

// setGeneric forces the portable kernels (on=true) or restores the best
// available ones. Tests only; not safe while kernels run.
func setGeneric(on bool) {
	v := C.int(0)
	if on {
		v = 1
	}
	C.ds_set_generic(v)
}

// DType values match GGML type ids.
type DType uint32

const (
	F32  DType = 0
	F16  DType = 1
	Q8_0 DType = 8
	BF16 DType = 30
)

// Q8_0 block: an f16 scale followed by 32 int8 values.
const (
	q8BlockElems = 32
	q8BlockBytes = 34
)

func (t DType) String() string {
	switch t {
	case F32:
		return "F32"
	case F16:
		return "F16"
	case Q8_0:
		return "Q8_0"
	case BF16:
		return "BF16"
	}
	return fmt.Sprintf("DType(%d)", uint32(t))
}

// RowBytes is the size in bytes of one row of cols elements of type t, or
// an error if t is not supported or cols is not valid for t.
func (t DType) RowBytes(cols int) (int, error) {
	if cols < 0 {
		return 0, fmt.Errorf("cpu: negative column count %d", cols)
	}
	switch t {
	case F32:
		return cols * 4, nil
	case F16, BF16:
		return cols * 2, nil
	case Q8_0:
		if cols%q8BlockElems != 0 {
			return 0, fmt.Errorf("cpu: Q8_0 needs columns in multiples of 32, got %d", cols)
		}
		return cols / q8BlockElems * q8BlockBytes, nil
	}
	return 0, fmt.Errorf("cpu: unsupported weight type %v", t)
}

// Weights is a row-major Rows×Cols matrix in Type's encoding (GGML layout;
// Q8_0: blocks of 32 = f16 scale + 32 int8; Cols % 32 == 0 for Q8_0). Data
// is only read; kernels keep no reference to it after they return.
type Weights struct {
	Type       DType
	Rows, Cols int
	Data       []byte
}

// maxDim bounds Rows and Cols so C int arithmetic never overflows.
const maxDim = 1 << 30

// Validate reports whether the type is supported and len(Data) is exactly
// Rows rows of Cols elements.
func (w *Weights) Validate() error {
	if w.Rows < 0 || w.Cols < 0 || w.Rows > maxDim || w.Cols > maxDim {
		return fmt.Errorf("cpu: bad weight shape %d×%d", w.Rows, w.Cols)
	}
	rb, err := w.Type.RowBytes(w.Cols)
	if err != nil {
		return err
	}
	if want := int64(rb) * int64(w.Rows); int64(len(w.Data)) != want {
		return fmt.Errorf("cpu: %v %d×%d weights need %d bytes, have %d", w.Type, w.Rows, w.Cols, want, len(w.Data))
	}
	return nil
}

// Pool runs kernels on a fixed number of threads: the calling goroutine
// plus Threads()-1 persistent worker goroutines. Every result is
// bit-identical for any thread count and across runs.
//
// A Pool may be used from several goroutines at once. A kernel call never
// waits for a worker that has not started on it yet: the caller works
// through the units itself and then waits only for workers already inside
// the call, so a worker descheduled by other load on the machine delays
// nothing. After Close, kernels still work, on the calling goroutine alone.
type Pool struct {
	threads int

	mu     sync.RWMutex // guards wake and closed: read-held while posting a job, write-held by Close
	wake   []chan *job  // one per worker
	closed bool
}

// job is one kernel call offered to the workers.
type job struct {
	f func(tid int)
	// state counts the workers inside f (low bits) and has jobClosed set
	// once the caller has finished its share: from then on no worker enters.
	state atomic.Int64
	done  chan struct{} // receives once when the last worker leaves a closed job
}

const jobClosed = 1 << 40

// enter reports whether a worker may run the job (it is not closed yet).
func (j *job) enter() bool {
	for {
		s := j.state.Load()
		if s&jobClosed != 0 {
			return false
		}
		if j.state.CompareAndSwap(s, s+1) {
			return true
		}
	}
}

func (j *job) leave() {
	if j.state.Add(-1) == jobClosed {
		j.done <- struct{}{}
	}
}

// wakeQueue bounds the jobs queued for a worker that is not running; when a
// queue is full the job is not offered to that worker.
const wakeQueue = 64

// NewPool starts a pool of threads threads (at least 1).
func NewPool(threads int) *Pool {
	if threads < 1 {
		threads = 1
	}
	p := &Pool{threads: threads}
	for i := 1; i < threads; i++ {
		ch := make(chan *job, wakeQueue)
		p.wake = append(p.wake, ch)
		go func(tid int) {
			for j := range ch {
				if j.enter() {
					j.f(tid)
					j.leave()
				}
			}
		}(i)
	}
	return p
}

// Threads is the number of threads kernels run on.
func (p *Pool) Threads() int { return p.threads }

// Close stops the worker goroutines. It is idempotent.
func (p *Pool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.closed = true
	for _, ch := range p.wake {
		close(ch)
	}
	p.wake = nil
}

// run calls f(tid) on the caller (tid 0) and offers it to up to want-1
// workers, and returns when every f that started has returned. f must share
// out its work itself (an atomic unit counter) and finish all of it even if
// it runs on the caller alone; so the number of threads that join never
// changes what is computed.
func (p *Pool) run(want int, f func(tid int)) {
	if want > p.threads {
		want = p.threads
	}
	if want <= 1 {
		f(0)
		return
	}
	j := &job{f: f, done: make(chan struct{}, 1)}
	p.mu.RLock()
	if !p.closed {
		for i := 0; i < want-1; i++ {
			select {
			case p.wake[i] <- j:
			default: // that worker is far behind; leave it out
			}
		}
	}
	p.mu.RUnlock()
	// Close the job and wait for the workers inside it even if f panics
	// here: they use memory the caller owns.
	defer func() {
		if s := j.state.Or(jobClosed); s&(jobClosed-1) != 0 {
			<-j.done
		}
	}()
	f(0)
}

// threadsFor picks how many threads a call with the given number of
// independent units and total work (roughly, multiply-adds) is worth.
func (p *Pool) threadsFor(units int, work int64) int {
	const minWorkPerThread = 1 << 16
	t := p.threads
	if int64(t) > work/minWorkPerThread {
		t = int(work / minWorkPerThread)
	}
	if t > units {
		t = units
	}
	if t < 1 {
		t = 1
	}
	return t
}

// parallelFor runs body(u) for u in [0, units), spread over the pool.
func (p *Pool) parallelFor(units int, work int64, body func(u int)) {
	var next atomic.Int64
	p.run(p.threadsFor(units, work), func(int) {
		for {
			u := int(next.Add(1) - 1)
			if u >= units {
				return
			}
			body(u)
		}
	})
}
