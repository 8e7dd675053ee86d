// Package cuda runs driftstore's compute kernels on an NVIDIA GPU through the CUDA driver API,
// loaded at run time: the binary builds and runs without CUDA, and Open reports ErrUnavailable
// where no driver (libcuda.so.1) or no device is present.
//
// The kernels are CUDA C in kernels/*.cu, compiled ahead of time to PTX (kernels/kernels.ptx,
// embedded); the driver JIT-compiles the PTX for the card when a Device opens. Weights are
// uploaded once to device memory (Weights); activations and the KV cache live in host memory
// that is registered with the device (Registrar, a wasmmem.Hook), so kernels read and write the
// guest's linear memory in place through the mapped device pointers.
//
// Every kernel sums in a fixed order (no floating-point atomics): the same launch on the same
// inputs gives bit-identical outputs on one GPU, and a token's outputs do not depend on how
// many tokens share the launch (batched prefill writes the same KV bytes as token-by-token
// feeding). F16 and Q8_0 matrix products run on the tensor cores (mma.sync, activations split
// into two F16 terms: float32-level accuracy; DRIFTSTORE_CUDA_TC=0 keeps them on the CUDA
// cores).
//
// Products of many tokens (prefill) may instead run through cuBLAS, loaded at run time
// (libcublas.so.13, .12 or .11; absent, the own kernels run everything: gemm.go).
// DRIFTSTORE_CUDA_GEMM picks: "auto" (the default) uses cuBLAS where it loads, for F16 and
// Q8_0 weights and batches of at least DefaultGEMMMinTokens (DRIFTSTORE_CUDA_GEMM_MIN);
// "own" never; "cublas" as auto, failing where cuBLAS is missing. The trade: cuBLAS rounds
// activations (and Q8_0 weights) to F16 and chooses its algorithm per shape, so with it the
// KV bytes of a batched prefill no longer equal token-by-token feeding's, and a prefix
// prefilled in different batches by two instances gives different KV blocks (no dedup of
// those blocks in the store); resume equivalence still holds (same inputs through the same
// calls give the same bits on one GPU). Decode steps (one token) always use the own kernels.
//
// The same modes govern attention: with "auto" (whether or not cuBLAS loads) or "cublas",
// batches of at least DefaultAttnMinTokens tokens (DRIFTSTORE_CUDA_ATTN_MIN) over F16 KV run
// their attention on
// the tensor cores (ds_attn_tc, flash-attention style: queries and softmax weights rounded to
// F16, float32 accumulation and online softmax), else ds_attn_mq, whose per-token arithmetic
// equals the decode kernel's. ds_attn_tc's output for a token does not depend on the batch it
// came in, but differs from decode's: the KV bytes a batched prefill writes from layer 2 on
// then differ from token-by-token feeding's (the trade cuBLAS makes already; "own" keeps
// batched = token-by-token); resume equivalence holds (same calls, same bits).
//
// A backend Exec defers an export's kernels and replays repeated runs of them as CUDA graphs
// (deferred.go; BackendOptions.Eager or DRIFTSTORE_CUDA_EAGER=1 launches each at once).
package cuda

import (
	"errors"
	"fmt"
	"sync/atomic"
)

// ErrUnavailable is returned (wrapped, with the reason) when the CUDA driver cannot be loaded or
// initialized, or there is no CUDA device.
var ErrUnavailable = errors.New("cuda: CUDA driver or device unavailable")

// Error is a failed driver call.
type Error struct {
	Op   string // the driver function, e.g. "cuMemAlloc"
	Code int    // its CUresult
	Name string // e.g. "CUDA_ERROR_OUT_OF_MEMORY"
	Msg  string // the driver's description
}

func (e *Error) Error() string {
	return fmt.Sprintf("cuda: %s: %s (%d): %s", e.Op, e.Name, e.Code, e.Msg)
}

// DevPtr is a device address: device memory, or registered host memory mapped for the device.
type DevPtr uint64

// argSlots holds kernel parameters, one 8-byte slot each (4-byte values in the low half). It
// contains no Go pointers, so its address may be handed to C.
type argSlots struct {
	v [24]uint64
	n int
}

func (a *argSlots) ptr(p DevPtr) *argSlots { a.v[a.n] = uint64(p); a.n++; return a }
func (a *argSlots) i32(v int) *argSlots    { a.v[a.n] = uint64(uint32(int32(v))); a.n++; return a }
func (a *argSlots) i64(v int64) *argSlots  { a.v[a.n] = uint64(v); a.n++; return a }
func (a *argSlots) f32(v float32) *argSlots {
	a.v[a.n] = uint64(f32bits(v))
	a.n++
	return a
}

// Stats counts a device's work since it opened; safe for concurrent use.
type Stats struct {
	Launches   atomic.Int64
	Registered atomic.Int64 // bytes of host memory registered now
	Uploaded   atomic.Int64 // bytes uploaded as weights
	BLASCalls  atomic.Int64 // matrix products run by cuBLAS
	AttnTC     atomic.Int64 // attention launches on the tensor cores (ds_attn_tc)
}
