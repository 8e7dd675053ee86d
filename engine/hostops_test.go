package engine

import (
	"errors"
	"strings"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/driftstore/driftstore/gguf"
)

func mustWat(t testing.TB, wat string) []byte {
	t.Helper()
	b, err := wasmtime.Wat2Wasm(wat)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// liar is a hand-written guest that re-exports every host op with the arguments its caller
// chooses, so the test can pass anything. Memory: 2 pages (128 KiB). At 1024: token id 65535.
// At 2048: a block table whose one entry points past memory; at 2056: one with an unaligned
// block; at 2064: a good table (block at 16384).
const liarWat = `(module
  (import "driftstore" "config" (func $config (param i32 i32) (result i32)))
  (import "driftstore" "embed" (func $embed (param i32 i32 i32)))
  (import "driftstore" "rmsnorm" (func $rmsnorm (param i32 i32 i32 i32)))
  (import "driftstore" "matmul" (func $matmul (param i32 i32 i32 i32)))
  (import "driftstore" "rope" (func $rope (param i32 i32 i32 i32)))
  (import "driftstore" "store_kv" (func $store_kv (param i32 i32 i32 i32 i32 i32)))
  (import "driftstore" "attention" (func $attention (param i32 i32 i32 i32 i32 i32)))
  (import "driftstore" "swiglu" (func $swiglu (param i32 i32 i32 i32)))
  (import "driftstore" "add" (func $add (param i32 i32 i32)))
  (import "driftstore" "argmax" (func $argmax (param i32 i32) (result i32)))
  (import "driftstore" "top_k" (func $top_k (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 1024) "\ff\ff\00\00")
  (data (i32.const 2048) "\00\00\ff\ff")
  (data (i32.const 2056) "\64\00\00\00")
  (data (i32.const 2064) "\00\40\00\00")
  (func (export "config") (param i32 i32) (result i32) local.get 0 local.get 1 call $config)
  (func (export "embed") (param i32 i32 i32) local.get 0 local.get 1 local.get 2 call $embed)
  (func (export "rmsnorm") (param i32 i32 i32 i32) local.get 0 local.get 1 local.get 2 local.get 3 call $rmsnorm)
  (func (export "matmul") (param i32 i32 i32 i32) local.get 0 local.get 1 local.get 2 local.get 3 call $matmul)
  (func (export "rope") (param i32 i32 i32 i32) local.get 0 local.get 1 local.get 2 local.get 3 call $rope)
  (func (export "store_kv") (param i32 i32 i32 i32 i32 i32)
    local.get 0 local.get 1 local.get 2 local.get 3 local.get 4 local.get 5 call $store_kv)
  (func (export "attention") (param i32 i32 i32 i32 i32 i32)
    local.get 0 local.get 1 local.get 2 local.get 3 local.get 4 local.get 5 call $attention)
  (func (export "swiglu") (param i32 i32 i32 i32) local.get 0 local.get 1 local.get 2 local.get 3 call $swiglu)
  (func (export "add") (param i32 i32 i32) local.get 0 local.get 1 local.get 2 call $add)
  (func (export "argmax") (param i32 i32) (result i32) local.get 0 local.get 1 call $argmax)
  (func (export "top_k") (param i32 i32 i32 i32 i32) (result i32)
    local.get 0 local.get 1 local.get 2 local.get 3 local.get 4 call $top_k)
)`

// TestHostOpsRefuseLies: every out-of-range offset, length, alignment, weight id, head count,
// position or token id traps the guest with an error naming the op and the problem; the
// instance is dead afterwards, the host carries on, and other instances are unaffected.
func TestHostOpsRefuseLies(t *testing.T) {
	e := testEngine(t)
	m := testModel(t, "small", gguf.TypeQ8_0) // dim 64, 4 heads, 2 KV heads, head dim 16, ctx 512
	mod, err := wasmtime.NewModule(e.wt, mustWat(t, liarWat))
	if err != nil {
		t.Fatal(err)
	}
	defer mod.Close()
	const memEnd = 2 << 16
	wq := int32(wAttnQ(0))
	cases := []struct {
		name string
		op   string
		args []any
		want string
	}{
		{"out past memory", "matmul", []any{int32(memEnd - 4), wq, int32(0), int32(1)}, "outside linear memory"},
		{"offset wraps", "matmul", []any{int32(-16), wq, int32(0), int32(1)}, "outside linear memory"},
		{"x past memory", "matmul", []any{int32(0), wq, int32(memEnd - 64), int32(1)}, "outside linear memory"},
		{"misaligned", "matmul", []any{int32(2), wq, int32(4096), int32(1)}, "aligned"},
		{"zero rows", "matmul", []any{int32(0), wq, int32(4096), int32(0)}, "row count"},
		{"huge rows", "matmul", []any{int32(0), wq, int32(4096), int32(-1)}, "row count"},
		{"unknown weight", "matmul", []any{int32(0), int32(9999), int32(4096), int32(1)}, "names no tensor"},
		{"unknown global", "matmul", []any{int32(0), int32(1<<20 + 7), int32(4096), int32(1)}, "names no tensor"},
		{"norm as matrix", "matmul", []any{int32(0), int32(0), int32(4096), int32(1)}, "not a matrix"},
		{"matrix as norm", "rmsnorm", []any{int32(0), int32(4096), wq, int32(1)}, "not a norm"},
		{"rmsnorm past memory", "rmsnorm", []any{int32(0), int32(memEnd - 8), int32(0), int32(1)}, "outside"},
		{"token out of vocab", "embed", []any{int32(4096), int32(1024), int32(1)}, "outside the vocabulary"},
		{"ids past memory", "embed", []any{int32(4096), int32(memEnd - 2), int32(1)}, "outside"},
		{"rope heads", "rope", []any{int32(0), int32(1), int32(3), int32(0)}, "head count"},
		{"rope beyond context", "rope", []any{int32(0), int32(1), int32(4), int32(600)}, "context length"},
		{"block past memory", "store_kv", []any{int32(2048), int32(1), int32(4096), int32(8192), int32(1), int32(0)}, "KV block"},
		{"unaligned block", "store_kv", []any{int32(2056), int32(1), int32(4096), int32(8192), int32(1), int32(0)}, "aligned"},
		{"table too short", "store_kv", []any{int32(2064), int32(1), int32(4096), int32(8192), int32(1), int32(16)}, "block table"},
		{"table past memory", "attention", []any{int32(0), int32(4096), int32(1), int32(0), int32(memEnd - 2), int32(1)}, "block table"},
		{"attention beyond context", "attention", []any{int32(0), int32(4096), int32(1), int32(512), int32(2064), int32(40)}, "context length"},
		{"swiglu past memory", "swiglu", []any{int32(0), int32(4), int32(8), int32(1 << 30)}, "outside"},
		{"add past memory", "add", []any{int32(memEnd - 4), int32(0), int32(2)}, "outside"},
		{"config buffer small", "config", []any{int32(0), int32(4)}, "smaller"},
		{"config past memory", "config", []any{int32(memEnd - 8), int32(32)}, "outside"},
		{"argmax of nothing", "argmax", []any{int32(4096), int32(0)}, "logit count"},
		{"argmax huge count", "argmax", []any{int32(0), int32(-1)}, "logit count"},
		{"argmax past memory", "argmax", []any{int32(memEnd - 16), int32(8)}, "outside linear memory"},
		{"argmax wraps", "argmax", []any{int32(-8), int32(4)}, "outside linear memory"},
		{"argmax misaligned", "argmax", []any{int32(4098), int32(4)}, "aligned"},
		{"top_k k zero", "top_k", []any{int32(4096), int32(16), int32(0), int32(8192), int32(8448)}, "k 0"},
		{"top_k k beyond n", "top_k", []any{int32(4096), int32(16), int32(17), int32(8192), int32(8448)}, "k 17"},
		{"top_k of nothing", "top_k", []any{int32(4096), int32(0), int32(0), int32(8192), int32(8448)}, "logit count"},
		{"top_k logits past memory", "top_k", []any{int32(memEnd - 32), int32(16), int32(4), int32(8192), int32(8448)}, "outside linear memory"},
		{"top_k ids past memory", "top_k", []any{int32(4096), int32(16), int32(4), int32(memEnd - 8), int32(8448)}, "ids"},
		{"top_k vals wrap", "top_k", []any{int32(4096), int32(16), int32(4), int32(8192), int32(-8)}, "vals"},
		{"top_k ids misaligned", "top_k", []any{int32(4096), int32(16), int32(4), int32(8194), int32(8448)}, "aligned"},
		{"top_k ids over logits", "top_k", []any{int32(4096), int32(16), int32(4), int32(4096 + 60), int32(8448)}, "overlaps"},
		{"top_k vals over ids", "top_k", []any{int32(4096), int32(16), int32(4), int32(8192), int32(8200)}, "overlaps"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := liar(t, m, mod)
			_, err := in.call(c.op, c.args...)
			if !errors.Is(err, ErrTrap) {
				t.Fatalf("%s%v: err %v, want a trap", c.op, c.args, err)
			}
			if !strings.Contains(err.Error(), "host op "+c.op) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("%s%v: error %q does not name the op and %q", c.op, c.args, err, c.want)
			}
			// The instance is dead from now on; a valid call is refused without running.
			if _, err := in.call("add", int32(0), int32(64), int32(4)); !errors.Is(err, ErrTrap) {
				t.Fatalf("call after trap: %v", err)
			}
		})
	}
	// Valid calls through the same path succeed (so the refusals above are specific).
	in := liar(t, m, mod)
	ok := []struct {
		op   string
		args []any
	}{
		{"config", []any{int32(0), int32(32)}},
		{"add", []any{int32(0), int32(64), int32(4)}},
		{"matmul", []any{int32(0), wq, int32(4096), int32(2)}},
		{"store_kv", []any{int32(2064), int32(1), int32(4096), int32(8192), int32(3), int32(0)}},
		{"attention", []any{int32(0), int32(4096), int32(3), int32(0), int32(2064), int32(1)}},
		{"argmax", []any{int32(4096), int32(16)}},
		{"top_k", []any{int32(4096), int32(16), int32(16), int32(8192), int32(8448)}},
	}
	for _, c := range ok {
		if _, err := in.call(c.op, c.args...); err != nil {
			t.Fatalf("valid %s%v: %v", c.op, c.args, err)
		}
	}
	// And a real guest still works in this process.
	g := newInst(t, m, InstanceOptions{})
	if err := g.Prefill([]int32{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Generate(3, nil); err != nil {
		t.Fatal(err)
	}
}

func wAttnQ(layer int) int { return layer*widStride + kAttnQ }

func liar(t *testing.T, m *Model, mod *wasmtime.Module) *Instance {
	t.Helper()
	in, err := m.instantiate(mod, InstanceOptions{KVType: KVF16, BlockSize: 16, Threads: 1, Batch: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close() })
	for _, ex := range []string{"config", "embed", "rmsnorm", "matmul", "rope", "store_kv", "attention", "swiglu", "add", "argmax", "top_k"} {
		in.fns[ex] = in.inst.GetFunc(in.store, ex)
	}
	return in
}

// TestGuestRefusals: requests the guest refuses come back as ErrGuest and leave the instance
// usable.
func TestGuestRefusals(t *testing.T) {
	m := testModel(t, "small", gguf.TypeF16)
	in := newInst(t, m, InstanceOptions{})
	if _, err := in.Step(); !errors.Is(err, ErrGuest) {
		t.Fatalf("step before any token: %v", err)
	}
	if err := in.Prefill([]int32{1, int32(m.Hyper().Vocab)}); err == nil || !strings.Contains(err.Error(), "outside the vocabulary") {
		t.Fatalf("token outside the vocabulary: %v", err)
	}
	// The guest checks too, for callers that bypass Prefill.
	if err := in.write([]byte{1, 0, 0, 0, 0xff, 0xff, 0, 0}); err != nil {
		t.Fatal(err)
	}
	if err := in.callStatus("feed", int32(2)); !errors.Is(err, ErrGuest) || !strings.Contains(err.Error(), "vocabulary") {
		t.Fatalf("guest feed of a token outside the vocabulary: %v", err)
	}
	if err := in.callStatus("feed", int32(1<<20)); !errors.Is(err, ErrGuest) {
		t.Fatalf("guest feed of more tokens than the buffer holds: %v", err)
	}
	if err := in.Prefill(prompt(m.Hyper().CtxMax+1, m.Hyper().Vocab, 1)); !errors.Is(err, ErrGuest) {
		t.Fatalf("prompt beyond the context: %v", err)
	}
	if _, err := in.AllocKV(m.Hyper().CtxMax + 1); !errors.Is(err, ErrGuest) {
		t.Fatalf("AllocKV beyond the context: %v", err)
	}
	if p, _ := in.Position(); p != 0 {
		t.Fatalf("position %d after refusals", p)
	}
	if err := in.Prefill([]int32{1, 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := in.Step(); err != nil {
		t.Fatal(err)
	}
}

// TestF32RowsOverflow: n rows of width floats where n·width is 2^32 (65536 rows of a
// 65536-wide model, both allowed) must be refused, not wrap to an empty range that passes
// the bounds check while the kernel goes on to process n rows.
func TestF32RowsOverflow(t *testing.T) {
	mem := make([]byte, 64)
	if got, err := f32rows("rope", "x", mem, 0, maxOpRows, 1<<16); err == nil {
		t.Fatalf("65536×65536 rows accepted: %d floats", len(got))
	} else if !strings.Contains(err.Error(), "overflows") {
		t.Fatalf("error %q does not name the overflow", err)
	}
	if got, err := f32rows("rope", "x", mem, 0, 4, 4); err != nil || len(got) != 16 {
		t.Fatalf("4×4 rows in 64 bytes: %d floats, %v", len(got), err)
	}
	if _, err := f32rows("rope", "x", mem, 4, 4, 4); err == nil {
		t.Fatal("4×4 rows at offset 4 of 64 bytes accepted")
	}
}

// TestGenerateCounts: a negative count is an error and a count far beyond the context neither
// panics nor allocates for it: generation stops where the guest refuses the context's end.
func TestGenerateCounts(t *testing.T) {
	m := testModel(t, "small", gguf.TypeQ8_0)
	in := newInst(t, m, InstanceOptions{})
	if _, err := in.Generate(-1, nil); err == nil {
		t.Fatal("Generate(-1) succeeded")
	}
	if err := in.Prefill([]int32{1, 2}); err != nil {
		t.Fatal(err)
	}
	ctx := m.Hyper().CtxMax
	got, err := in.Generate(1<<40, nil)
	if !errors.Is(err, ErrGuest) || len(got) != ctx-2 {
		t.Fatalf("Generate(1<<40) at context %d: %d tokens, %v", ctx, len(got), err)
	}
}

// TestSetSamplerTopKRange: a top-k that does not fit the guest's i32 is refused, not
// truncated (1<<32 would reach the guest as 0, "all", while Options reported 1<<32).
func TestSetSamplerTopKRange(t *testing.T) {
	m := testModel(t, "small", gguf.TypeQ8_0)
	in := newInst(t, m, InstanceOptions{})
	for _, k := range []int{-1, 1 << 32, 1<<31 + 5} {
		if err := in.SetSampler(Sampler{Temp: 1, TopK: k}); err == nil {
			t.Errorf("SetSampler(TopK %d) accepted; Options has %+v", k, in.Options().Sampler)
		}
	}
	if err := in.SetSampler(Sampler{Temp: 1, TopK: 40}); err != nil || in.Options().Sampler.TopK != 40 {
		t.Fatalf("TopK 40: %v, %+v", err, in.Options().Sampler)
	}
}

// TestNewInstanceThreadLimit: an absurd thread count is refused before any goroutine starts.
func TestNewInstanceThreadLimit(t *testing.T) {
	m := testModel(t, "small", gguf.TypeQ8_0)
	if in, err := m.NewInstance(InstanceOptions{Threads: 1 << 20}); err == nil {
		in.Close()
		t.Fatal("NewInstance with 1<<20 threads succeeded")
	}
}
