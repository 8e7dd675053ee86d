package engine

import (
	"fmt"
	"unsafe"

	"github.com/driftstore/driftstore/engine/cpu"
	"github.com/driftstore/driftstore/wasmmem"
)

// Backend runs host ops on one kind of compute device. It is the seam where CUDA (Linux) and
// Metal (darwin) plug in next to the CPU: a backend loads a model's weights once (Load), makes a
// per-instance executor (Exec) and may follow the instances' linear memories through a wasmmem
// hook (to register them with a device), since every slice an Exec receives points into one
// of those regions.
//
// Implementations must be safe for concurrent use by several instances; one Exec is used by
// one instance at a time.
type Backend interface {
	// Name is "cpu", "cuda", "metal".
	Name() string
	// Load prepares the weights of a model (upload, or nothing). The tensors' Data stays valid
	// until the returned Weights is closed.
	Load(t *Tensors) (Weights, error)
	// RegionHook is installed on the engine's memory creator; nil when the backend needs none.
	RegionHook() wasmmem.Hook
}

// Weights is a backend's view of one model's weights, shared by that model's instances.
type Weights interface {
	// NewExec returns an executor for one instance, using up to threads host threads.
	NewExec(threads int) (Exec, error)
	Close() error
}

// Exec executes host ops for one instance. The engine has already checked every argument:
// slices have the lengths the shapes require, weight indexes are valid and of the right kind,
// positions are within the blocks given. Slices point into the instance's linear memory; an
// Exec that is not a Syncer must finish with them before the call returns (the guest may read
// the results at once), a Syncer may keep using them until its next Sync.
type Exec interface {
	// Embed writes the rows of the token embedding for ids into out ([len(ids)][dim]).
	Embed(out []float32, ids []int32)
	// RMSNorm normalizes n rows of x into out with the norm weight w.
	RMSNorm(out, x []float32, w int, n int)
	// MatMul computes out[i] = W · x[i] for n rows (out [n][rows], x [n][cols]).
	MatMul(out []float32, w int, x []float32, n int)
	// RoPE rotates n rows of nHeads heads at positions pos0.. in place.
	RoPE(x []float32, n, nHeads, pos0 int)
	// StoreKV writes the keys and values of positions pos0..pos0+n-1 into the blocks.
	StoreKV(l KVLayout, blocks [][]byte, k, v []float32, n, pos0 int)
	// Attention computes causal grouped-query attention of n queries at pos0.. over the blocks.
	Attention(out, q []float32, n, pos0 int, l KVLayout, blocks [][]byte)
	// SwiGLU computes out = silu(gate) * up elementwise.
	SwiGLU(out, gate, up []float32)
	// Add computes dst += src.
	Add(dst, src []float32)
	// Close releases the executor's threads.
	Close()
}

// Syncer is implemented by an Exec that runs host ops asynchronously (a GPU queue): an op may
// return before its results are in linear memory, and may read its inputs later.
//
// The engine calls Sync at the end of every guest export that it calls (Instance methods):
// it is the only point where the guest or the host reads memory that an op wrote, or writes
// memory that a later op reads, other than through host ops. The guest relies on this: within
// one export it never reads or writes the buffers host ops write (activations, logits, KV
// blocks) other than by passing them to further host ops; it reads the logits in a later
// export (sample, step, state_save), and the host reads KV blocks and logits after an export
// returned. Sync waits until every op queued since the last Sync has written its results to
// linear memory and reports the first device error since then (which kills the instance).
// After Sync the Exec holds no reference to linear memory.
type Syncer interface {
	Sync() error
}

// KVInvalidator is implemented by an Exec that keeps copies of KV blocks (device memory). The
// engine calls InvalidateKV after the host wrote KV block bytes into linear memory other than
// through StoreKV (LoadState after a restore, AdoptPrefix), before any op reads them.
type KVInvalidator interface {
	InvalidateKV()
}

// Tensors is the backend-independent description of a model's weights: the tensors indexed by
// weight index (see weightIndex), in the file's own types, plus the hyperparameters.
type Tensors struct {
	Hyper Hyper
	// W[i] is the tensor with weight index i. Norm weights are F32 vectors (Rows 1).
	W []cpu.Weights
}

// TokenEmbd is the weight index of the token embedding (what Embed reads).
func (t *Tensors) TokenEmbd() int { return wiGlobal(t.Hyper.Layers, gTokenEmbd) }

// OutputNorm is the weight index of the final norm vector.
func (t *Tensors) OutputNorm() int { return wiGlobal(t.Hyper.Layers, gOutputNorm) }

// Output is the weight index of the output (logits) matrix; its Data may be the token
// embedding's bytes (tied embeddings).
func (t *Tensors) Output() int { return wiGlobal(t.Hyper.Layers, gOutput) }

// CPU returns the portable CPU backend (engine/cpu kernels over the guest's memory in place).
func CPU() Backend { return cpuBackend{} }

type cpuBackend struct{}

func (cpuBackend) Name() string             { return "cpu" }
func (cpuBackend) RegionHook() wasmmem.Hook { return nil }

func (cpuBackend) Load(t *Tensors) (Weights, error) {
	w := &cpuWeights{t: t, norms: make([][]float32, len(t.W))}
	for i := range t.W {
		tw := &t.W[i]
		if tw.Rows != 1 || tw.Data == nil {
			continue
		}
		if tw.Type != cpu.F32 {
			return nil, fmt.Errorf("cpu backend: norm weight %d is %v, want F32", i, tw.Type)
		}
		w.norms[i] = unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(tw.Data))), len(tw.Data)/4)
	}
	return w, nil
}

type cpuWeights struct {
	t     *Tensors
	norms [][]float32
}

func (w *cpuWeights) NewExec(threads int) (Exec, error) {
	if threads < 1 {
		threads = 1
	}
	return &cpuExec{w: w, pool: cpu.NewPool(threads), h: w.t.Hyper}, nil
}

func (w *cpuWeights) Close() error { return nil }

type cpuExec struct {
	w    *cpuWeights
	pool *cpu.Pool
	h    Hyper
	keys []uint64 // TopK scratch
}

var (
	_ Argmaxer = (*cpuExec)(nil)
	_ TopKer   = (*cpuExec)(nil)
)

func (e *cpuExec) Embed(out []float32, ids []int32) {
	cpu.Embed(out, &e.w.t.W[wiGlobal(e.h.Layers, gTokenEmbd)], ids)
}

func (e *cpuExec) RMSNorm(out, x []float32, w int, n int) {
	norm := e.w.norms[w]
	e.pool.RMSNorm(out, x, norm, n, len(norm), e.h.Eps)
}

func (e *cpuExec) MatMul(out []float32, w int, x []float32, n int) {
	e.pool.MatMul(out, &e.w.t.W[w], x, n)
}

func (e *cpuExec) RoPE(x []float32, n, nHeads, pos0 int) {
	e.pool.RoPE(x, n, nHeads, e.h.HeadDim, pos0, e.h.RopeBase)
}

func (e *cpuExec) StoreKV(l KVLayout, blocks [][]byte, k, v []float32, n, pos0 int) {
	cpu.StoreKV(l.cpu(), blocks, k, v, n, pos0)
}

func (e *cpuExec) Attention(out, q []float32, n, pos0 int, l KVLayout, blocks [][]byte) {
	e.pool.Attention(out, q, n, e.h.Heads, pos0, l.cpu(), blocks)
}

func (e *cpuExec) Argmax(logits []float32) int { return cpu.Argmax(logits) }

func (e *cpuExec) TopK(ids []int32, vals []float32, logits []float32) {
	e.keys = cpu.TopK(ids, vals, logits, e.keys)
}

func (e *cpuExec) SwiGLU(out, gate, up []float32) { e.pool.SwiGLU(out, gate, up) }
func (e *cpuExec) Add(dst, src []float32)         { cpu.Add(dst, src) }
func (e *cpuExec) Close()                         { e.pool.Close() }
