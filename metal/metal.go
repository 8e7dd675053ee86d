// Package metal runs driftstore's host ops on an Apple GPU through Metal, on the very bytes the
// Wasm guest uses: Apple Silicon's CPU and GPU share one physical memory, so an instance's
// linear memory (a wasmmem region: 16 KiB-aligned, reserved once, never moved) is wrapped as a
// Metal buffer with newBufferWithBytesNoCopy, and so are the weights in the mmap'd GGUF file.
// Nothing is copied across the Wasm boundary or into GPU memory.
//
// The backend exists only in darwin/arm64 builds with cgo (Objective-C, -framework Metal). Every
// other build has a stub whose NewBackend returns an error wrapping ErrUnavailable, so callers
// (package backends) compile everywhere.
//
// # Design
//
//   - Regions: the Backend's RegionHook wraps each region's accessible part [Base, Base+Len)
//     in one no-copy MTLBuffer (storage mode shared, no deallocator: wasmmem owns the bytes and
//     unmaps them only after RegionReleased). Both the base and the length must be multiples
//     of the OS page size and of 16 KiB; anything else is refused. On growth a new buffer
//     covering the new length replaces the old one, which is released once no operation of
//     the instance is using it (operations hold the region's read lock while their command
//     buffer runs; growth and release take the write lock).
//   - Operands: every slice an Exec receives is located in its region and bound as (region
//     buffer, byte offset) with setBuffer:offset:atIndex:; KV blocks are passed to the kernels
//     as a table of byte offsets into the region buffer.
//   - Weights: tensors are wrapped where they lie. A tensor's data rarely starts on a page, so
//     the enclosing page range is wrapped and the tensor is bound at an offset into it;
//     tensors whose page ranges touch share one buffer (a GGUF file's tensors are contiguous,
//     so a model usually needs one buffer, or a few when it exceeds the device's
//     maxBufferLength).
//   - Kernels are Metal Shading Language (kernels.metal, embedded), compiled when the backend
//     opens with fast math off. Each op is one command buffer that the calling goroutine waits
//     for, so results are in linear memory when the op returns.
//
// # Determinism
//
// No kernel uses atomics; every sum runs in a fixed order (per-lane strided partial sums, then
// the SIMD-group reduction simd_sum, then a fixed loop over SIMD groups). On one GPU, the same
// inputs give bit-identical outputs, and a token's results do not depend on the batch it came
// in. Results differ from the CPU backend in the last bits (different summation order); the
// F16 KV conversion is done in integer arithmetic, bit-exact with engine/cpu.
//
// # What was run
//
// None of the darwin code has been compiled or run by its authors (no macOS machine was
// available); see docs/metal.md for what was checked and how to verify it on a Mac.
package metal

import (
	_ "embed"
	"errors"
)

// ErrUnavailable is returned (wrapped, with the reason) when Metal cannot be used: not
// darwin/arm64 with cgo, no Metal device, a device without unified memory, or kernels that
// do not compile.
var ErrUnavailable = errors.New("metal: Metal unavailable")

//go:embed kernels.metal
var kernelSource string

// kernel identifies a compute function of kernels.metal; kernelNames[k] is its name there.
type kernel int

const (
	kMatMulF32 kernel = iota
	kMatMulF16
	kMatMulBF16
	kMatMulQ8
	kEmbedF32
	kEmbedF16
	kEmbedBF16
	kEmbedQ8
	kRMSNorm
	kRoPE
	kStoreKV
	kAttention
	kSwiGLU
	kAdd
	numKernels
)

var kernelNames = [numKernels]string{
	kMatMulF32:  "ds_matmul_f32",
	kMatMulF16:  "ds_matmul_f16",
	kMatMulBF16: "ds_matmul_bf16",
	kMatMulQ8:   "ds_matmul_q8_0",
	kEmbedF32:   "ds_embed_f32",
	kEmbedF16:   "ds_embed_f16",
	kEmbedBF16:  "ds_embed_bf16",
	kEmbedQ8:    "ds_embed_q8_0",
	kRMSNorm:    "ds_rmsnorm",
	kRoPE:       "ds_rope",
	kStoreKV:    "ds_store_kv",
	kAttention:  "ds_attention",
	kSwiGLU:     "ds_swiglu",
	kAdd:        "ds_add",
}

// kernelBuffers lists each kernel's buffer arguments by their names in kernels.metal, in index
// order; the parameter struct (or count) is bound at the next index.
var kernelBuffers = [numKernels][]string{
	kMatMulF32:  {"out", "x", "w"},
	kMatMulF16:  {"out", "x", "w"},
	kMatMulBF16: {"out", "x", "w"},
	kMatMulQ8:   {"out", "x", "w"},
	kEmbedF32:   {"out", "ids", "w"},
	kEmbedF16:   {"out", "ids", "w"},
	kEmbedBF16:  {"out", "ids", "w"},
	kEmbedQ8:    {"out", "ids", "w"},
	kRMSNorm:    {"out", "x", "w"},
	kRoPE:       {"x", "cs"},
	kStoreKV:    {"mem", "k", "v", "table"},
	kAttention:  {"out", "q", "mem", "table"},
	kSwiGLU:     {"out", "gate", "up"},
	kAdd:        {"dst", "src"},
}

// Launch geometry shared with kernels.metal (the constants of the same names there).
const (
	simdWidth     = 32  // threads per SIMD group on every Apple GPU; checked when the backend opens
	mmRowsPerTG   = 4   // MM_SG: matmul rows (one SIMD group each) per threadgroup
	mmTokens      = 8   // MM_TT: tokens per matmul SIMD group
	atHeadsPerTG  = 4   // AT_SG: attention heads (one SIMD group each) per threadgroup
	maxHeadDim    = 256 // AT_MAXD*32: the attention kernel keeps head_dim/32 values per lane
	normThreads   = 256 // threads per RMSNorm threadgroup (one row)
	elemThreads   = 256 // threads per threadgroup of the elementwise kernels
	maxParamBytes = 128 // DSM_MAX_PARAMS in bridge.h
)
