//go:build darwin && arm64 && cgo

package metal

// Tests of the Metal backend on a Mac: every kernel against engine/cpu on the same inputs, the
// operands living in a real wasmmem region of a real wasmtime instance and the weights in
// mmap'd read-only memory at offsets that are not page-aligned (as in a GGUF file); region
// growth and release; refusals; and the whole tiny model through the engine. Written without
// a Mac to run them on: see docs/metal.md.
//
// Tolerances (float32 unit roundoff u = 2^-24):
//   - Embed, StoreKV, Add: bit-exact (the same single rounding, or none).
//   - MatMul: both sides sum the same float32 products in different orders; the difference is
//     at most 2·cols·u·Σ|w·x| (the classic bound for recursive summation, once per side).
//   - RMSNorm: engine/cpu accumulates in float64, the GPU in float32 over ≤ 256-way partial
//     sums; 1e-5 relative (+1e-6 absolute) is ~100× the expected error.
//   - RoPE: the host table holds engine/cpu's float64 sines and cosines rounded to float32;
//     the GPU's rotation adds a few roundings: 4e-7·(|x0|+|x1|) ≈ 7u.
//   - SwiGLU: exp and a division in float32 on both sides, each within a few ulps: 1e-5
//     relative.
//   - Attention: scores differ by summation order (~1e-6 relative); through softmax that moves
//     each output by at most ~2·max|Δscore|·max|v|; 1e-4·max|v| leaves ample margin.
// Beyond agreement with the CPU: on the GPU itself, results are bit-identical between runs,
// and a token's results do not depend on the batch it came in.

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/bytecodealliance/wasmtime-go/v39"
	"golang.org/x/sys/unix"

	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/engine/cpu"
	"github.com/driftstore/driftstore/gguf"
	"github.com/driftstore/driftstore/gguf/dtype"
	"github.com/driftstore/driftstore/wasmmem"
)

var (
	beOnce   sync.Once
	beVal    *Backend
	beErr    error
	cacheDir string
)

// metalBackend opens the backend once per test binary. It skips only where the machine has no
// Metal device at all; any other failure (kernels that do not compile, a device without
// unified memory) fails the test.
func metalBackend(t testing.TB) *Backend {
	t.Helper()
	if !Available() {
		t.Skip("no Metal device on this machine (MTLCreateSystemDefaultDevice returned nil)")
	}
	beOnce.Do(func() {
		beVal, beErr = NewBackend()
		if beErr == nil {
			fmt.Fprintf(os.Stderr, "metal: %s, page %d bytes, max buffer %d MiB\n", beVal.Device(), beVal.page, beVal.maxBuf>>20)
		}
	})
	if beErr != nil {
		t.Fatalf("NewBackend: %v", beErr)
	}
	return beVal
}

func TestMain(m *testing.M) {
	code := m.Run()
	if cacheDir != "" {
		os.RemoveAll(cacheDir)
	}
	if beVal != nil {
		beVal.Close()
	}
	os.Exit(code)
}

// ---------------------------------------------------------------------------------------------
// Linear memory: a wasmtime instance whose memory comes from wasmmem with the backend's hook.

const arenaWAT = `(module
  (memory (export "mem") 64 2048)
  (func (export "grow") (param i32) (result i32) local.get 0 memory.grow))`

type arena struct {
	t     testing.TB
	eng   *wasmtime.Engine
	store *wasmtime.Store
	inst  *wasmtime.Instance
	mem   *wasmtime.Memory
	next  int
}

func newArena(t testing.TB, b *Backend) *arena {
	t.Helper()
	c := wasmmem.NewCreator(wasmmem.Options{})
	c.SetHook(b.RegionHook())
	cfg := wasmtime.NewConfig()
	c.Install(cfg)
	eng := wasmtime.NewEngineWithConfig(cfg)
	wasm, err := wasmtime.Wat2Wasm(arenaWAT)
	if err != nil {
		t.Fatal(err)
	}
	mod, err := wasmtime.NewModule(eng, wasm)
	if err != nil {
		t.Fatal(err)
	}
	store := wasmtime.NewStore(eng)
	in, err := wasmtime.NewInstance(store, mod, nil)
	if err != nil {
		t.Fatalf("instantiate with the Metal region hook: %v", err)
	}
	a := &arena{t: t, eng: eng, store: store, inst: in, mem: in.GetExport(store, "mem").Memory()}
	t.Cleanup(a.close)
	return a
}

func (a *arena) close() {
	if a.store != nil {
		a.store.Close()
		a.eng.Close()
		a.store = nil
	}
}

func (a *arena) bytes() []byte { return a.mem.UnsafeData(a.store) }

func (a *arena) grow(pages int) {
	a.t.Helper()
	if _, err := a.inst.GetFunc(a.store, "grow").Call(a.store, int32(pages)); err != nil {
		a.t.Fatal(err)
	}
}

// alloc returns n bytes of linear memory at the next multiple of align.
func (a *arena) alloc(n, align int) []byte {
	a.t.Helper()
	off := (a.next + align - 1) &^ (align - 1)
	mem := a.bytes()
	if off+n > len(mem) {
		a.t.Fatalf("arena: %d bytes at %d do not fit in %d", n, off, len(mem))
	}
	a.next = off + n
	return mem[off : off+n : off+n]
}

func (a *arena) f32(n int) []float32 {
	b := a.alloc(4*n, 256)
	return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), n)
}

// ---------------------------------------------------------------------------------------------
// Weights: mmap'd memory laid out like a GGUF data section, then made read-only.

type weightFile struct {
	mem  []byte
	next int
}

func newWeightFile(t testing.TB, size int) *weightFile {
	t.Helper()
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	return &weightFile{mem: mem, next: 96} // the first tensor is not on a page boundary
}

func (f *weightFile) put(t testing.TB, data []byte) []byte {
	t.Helper()
	off := (f.next + 31) &^ 31
	if off+len(data) > len(f.mem) {
		t.Fatal("weight file full")
	}
	copy(f.mem[off:], data)
	f.next = off + len(data)
	return f.mem[off : off+len(data) : off+len(data)]
}

func (f *weightFile) seal(t testing.TB) {
	if err := unix.Mprotect(f.mem, unix.PROT_READ); err != nil {
		t.Fatal(err)
	}
}

func encode(typ cpu.DType, v []float32) []byte {
	switch typ {
	case cpu.F32:
		b := make([]byte, 4*len(v))
		dtype.F32sToBytes(b, v)
		return b
	case cpu.F16:
		b := make([]byte, 2*len(v))
		dtype.F32sToF16s(b, v)
		return b
	case cpu.BF16:
		b := make([]byte, 2*len(v))
		dtype.F32sToBF16s(b, v)
		return b
	}
	b := make([]byte, dtype.Q8_0Len(len(v)))
	dtype.QuantizeQ8_0(b, v)
	return b
}

func randn(r *rand.Rand, n int, scale float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64() * scale)
	}
	return v
}

var matTypes = []cpu.DType{cpu.F32, cpu.F16, cpu.BF16, cpu.Q8_0}

const (
	matRows = 70  // not a multiple of the 4 rows of a threadgroup
	matCols = 160 // a multiple of 32, not of 128: some lanes idle in the last step
)

// pair is one model loaded on both backends: the Metal executor under test and the CPU one as
// the reference.
type pair struct {
	t      *engine.Tensors
	mtl    engine.Exec
	ref    engine.Exec
	matIdx map[cpu.DType]int
	normIx int
}

// loadPair builds tensors — a matRows×matCols matrix of every type, a norm of Dim, then the
// token embedding (Vocab×Dim, embedType), the output norm and the output matrix tied to the
// embedding — and loads them on both backends.
func loadPair(t *testing.T, b *Backend, h engine.Hyper, embedType cpu.DType, seed uint64) *pair {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 99))
	f := newWeightFile(t, 4<<20)
	p := &pair{matIdx: map[cpu.DType]int{}}
	var ws []cpu.Weights
	for _, typ := range matTypes {
		p.matIdx[typ] = len(ws)
		ws = append(ws, cpu.Weights{Type: typ, Rows: matRows, Cols: matCols, Data: f.put(t, encode(typ, randn(r, matRows*matCols, 0.5)))})
	}
	norm := randn(r, h.Dim, 1)
	p.normIx = len(ws)
	ws = append(ws, cpu.Weights{Type: cpu.F32, Rows: 1, Cols: h.Dim, Data: f.put(t, encode(cpu.F32, norm))})
	emb := f.put(t, encode(embedType, randn(r, h.Vocab*h.Dim, 1)))
	ws = append(ws,
		cpu.Weights{Type: embedType, Rows: h.Vocab, Cols: h.Dim, Data: emb},
		cpu.Weights{Type: cpu.F32, Rows: 1, Cols: h.Dim, Data: f.put(t, encode(cpu.F32, norm))},
		cpu.Weights{Type: embedType, Rows: h.Vocab, Cols: h.Dim, Data: emb})
	f.seal(t)
	p.t = &engine.Tensors{Hyper: h, W: ws}
	for _, be := range []engine.Backend{b, engine.CPU()} {
		w, err := be.Load(p.t)
		if err != nil {
			t.Fatalf("%s: load: %v", be.Name(), err)
		}
		ex, err := w.NewExec(2)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ex.Close(); w.Close() })
		if be == engine.Backend(b) {
			p.mtl = ex
		} else {
			p.ref = ex
		}
	}
	return p
}

var testHyper = engine.Hyper{Layers: 1, Dim: 160, Heads: 4, KVHeads: 2, HeadDim: 40, FFN: 96, Vocab: 50, CtxMax: 4096, RopeBase: 10000, Eps: 1e-5}

func bitsEqual(a, b []float32) int {
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return i
		}
	}
	return -1
}

func requireBits(t *testing.T, what string, got, want []float32) {
	t.Helper()
	if i := bitsEqual(got, want); i >= 0 {
		t.Fatalf("%s: element %d = %g (%#08x), want %g (%#08x) bit for bit", what, i, got[i], math.Float32bits(got[i]), want[i], math.Float32bits(want[i]))
	}
}

func requireClose(t *testing.T, what string, got, want []float32, bound func(i int) float64) {
	t.Helper()
	worst, at := 0.0, -1
	for i := range want {
		d := math.Abs(float64(got[i]) - float64(want[i]))
		if !(d <= bound(i)) {
			t.Fatalf("%s: element %d = %g, cpu %g: difference %g exceeds %g", what, i, got[i], want[i], d, bound(i))
		}
		if b := bound(i); b > 0 && d/b > worst {
			worst, at = d/b, i
		}
	}
	t.Logf("%s: worst difference %.2f of the bound (element %d)", what, worst, at)
}

// ---------------------------------------------------------------------------------------------
// Kernels against engine/cpu.

func TestMatMul(t *testing.T) {
	b := metalBackend(t)
	p := loadPair(t, b, testHyper, cpu.F16, 1)
	a := newArena(t, b)
	r := rand.New(rand.NewPCG(2, 2))
	for _, typ := range matTypes {
		wi := p.matIdx[typ]
		deq := make([]float32, matRows*matCols)
		ids := make([]int32, matRows)
		for i := range ids {
			ids[i] = int32(i)
		}
		cpu.Embed(deq, &p.t.W[wi], ids) // the dequantized matrix
		for _, n := range []int{1, 3, 9} {
			name := fmt.Sprintf("%v/n=%d", typ, n)
			xv := randn(r, n*matCols, 1)
			x, out := a.f32(n*matCols), a.f32(n*matRows)
			copy(x, xv)
			p.mtl.MatMul(out, wi, x, n)
			want := make([]float32, n*matRows)
			p.ref.MatMul(want, wi, xv, n)
			requireClose(t, name, out, want, func(i int) float64 {
				tk, row := i/matRows, i%matRows
				var s float64
				for c := 0; c < matCols; c++ {
					s += math.Abs(float64(deq[row*matCols+c]) * float64(xv[tk*matCols+c]))
				}
				return 2 * matCols * 0x1p-24 * s
			})
			again := a.f32(n * matRows)
			p.mtl.MatMul(again, wi, x, n)
			requireBits(t, name+": second run", again, out)
			for tk := 0; tk < n; tk++ {
				one := a.f32(matRows)
				p.mtl.MatMul(one, wi, x[tk*matCols:(tk+1)*matCols], 1)
				requireBits(t, fmt.Sprintf("%s: token %d alone vs in the batch", name, tk), one, out[tk*matRows:(tk+1)*matRows])
			}
		}
	}
}

func TestEmbed(t *testing.T) {
	b := metalBackend(t)
	for _, typ := range matTypes {
		p := loadPair(t, b, testHyper, typ, 3)
		a := newArena(t, b)
		ids := []int32{3, 0, 49, 3, 17}
		out := a.f32(len(ids) * testHyper.Dim)
		want := make([]float32, len(out))
		p.mtl.Embed(out, ids)
		p.ref.Embed(want, ids)
		requireBits(t, "embed "+typ.String(), out, want)
	}
}

func TestRMSNorm(t *testing.T) {
	b := metalBackend(t)
	p := loadPair(t, b, testHyper, cpu.F16, 4)
	a := newArena(t, b)
	r := rand.New(rand.NewPCG(4, 4))
	const n = 3
	xv := randn(r, n*testHyper.Dim, 3)
	x, out := a.f32(len(xv)), a.f32(len(xv))
	copy(x, xv)
	p.mtl.RMSNorm(out, x, p.normIx, n)
	want := make([]float32, len(xv))
	p.ref.RMSNorm(want, xv, p.normIx, n)
	requireClose(t, "rmsnorm", out, want, func(i int) float64 { return 1e-5*math.Abs(float64(want[i])) + 1e-6 })
	p.mtl.RMSNorm(x, x, p.normIx, n) // in place
	requireBits(t, "rmsnorm in place vs out of place", x, out)
}

func TestRoPE(t *testing.T) {
	b := metalBackend(t)
	p := loadPair(t, b, testHyper, cpu.F16, 5)
	a := newArena(t, b)
	r := rand.New(rand.NewPCG(5, 5))
	hd := testHyper.HeadDim
	for _, heads := range []int{testHyper.Heads, testHyper.KVHeads} {
		for _, pos0 := range []int{0, 3000} {
			const n = 4
			xv := randn(r, n*heads*hd, 1)
			x := a.f32(len(xv))
			copy(x, xv)
			want := append([]float32(nil), xv...)
			p.mtl.RoPE(x, n, heads, pos0)
			p.ref.RoPE(want, n, heads, pos0)
			requireClose(t, fmt.Sprintf("rope heads=%d pos0=%d", heads, pos0), x, want, func(i int) float64 {
				j := i &^ 1
				return 4e-7 * (math.Abs(float64(xv[j])) + math.Abs(float64(xv[j+1])))
			})
		}
	}
}

func TestSwiGLUAdd(t *testing.T) {
	b := metalBackend(t)
	p := loadPair(t, b, testHyper, cpu.F16, 6)
	a := newArena(t, b)
	r := rand.New(rand.NewPCG(6, 6))
	const n = 1000 // not a multiple of the 256 threads of a threadgroup
	gv, uv := randn(r, n, 4), randn(r, n, 1)
	g, u, out := a.f32(n), a.f32(n), a.f32(n)
	copy(g, gv)
	copy(u, uv)
	p.mtl.SwiGLU(out, g, u)
	want := make([]float32, n)
	p.ref.SwiGLU(want, gv, uv)
	requireClose(t, "swiglu", out, want, func(i int) float64 { return 1e-5*math.Abs(float64(want[i])) + 1e-30 })
	p.mtl.SwiGLU(g, g, u) // out aliases gate
	requireBits(t, "swiglu in place", g, out)

	dv := randn(r, n, 1)
	d := a.f32(n)
	copy(d, dv)
	p.mtl.Add(d, u)
	p.ref.Add(dv, uv)
	requireBits(t, "add", d, dv)
}

// kvCase is a KV cache in linear memory: blocks at 16 KiB-aligned offsets, deliberately not in
// table order, plus a Go copy of the same blocks for the CPU.
type kvCase struct {
	l      engine.KVLayout
	blocks [][]byte // in the arena
	ref    [][]byte // Go memory
}

func newKV(t *testing.T, a *arena, l engine.KVLayout, nb int, fill byte) *kvCase {
	es := 2
	if l.Type == engine.KVF32 {
		es = 4
	}
	l.BlockBytes = 2 * l.BlockSize * l.KVHeads * l.HeadDim * es
	k := &kvCase{l: l}
	raw := make([][]byte, nb)
	for i := range raw {
		raw[i] = a.alloc(l.BlockBytes, 16<<10)
	}
	for i := range raw { // table entry i is the (nb-1-i)-th block in memory
		blk := raw[nb-1-i]
		for j := range blk {
			blk[j] = fill
		}
		k.blocks = append(k.blocks, blk)
		k.ref = append(k.ref, append([]byte(nil), blk...))
	}
	return k
}

func cpuLayout(l engine.KVLayout) cpu.KVLayout {
	t := cpu.F16
	if l.Type == engine.KVF32 {
		t = cpu.F32
	}
	return cpu.KVLayout{BlockSize: l.BlockSize, NKVHeads: l.KVHeads, HeadDim: l.HeadDim, KVType: t}
}

func TestStoreKV(t *testing.T) {
	b := metalBackend(t)
	p := loadPair(t, b, testHyper, cpu.F16, 7)
	r := rand.New(rand.NewPCG(7, 7))
	for _, kt := range []engine.KVType{engine.KVF16, engine.KVF32} {
		a := newArena(t, b)
		kv := newKV(t, a, engine.KVLayout{Layers: 1, BlockSize: 16, KVHeads: 2, HeadDim: 40, Type: kt}, 4, 0xa5)
		row := kv.l.KVHeads * kv.l.HeadDim
		for _, c := range []struct{ n, pos0 int }{{20, 5}, {1, 40}, {16, 48}} {
			kvv, vvv := randn(r, c.n*row, 2), randn(r, c.n*row, 2)
			// Values F16 cannot hold exactly, overflow, underflow and a NaN.
			kvv[0], kvv[1], kvv[2], kvv[3] = 65520, 1e-8, float32(math.NaN()), 3.0e-5
			k, v := a.f32(len(kvv)), a.f32(len(vvv))
			copy(k, kvv)
			copy(v, vvv)
			p.mtl.StoreKV(kv.l, kv.blocks, k, v, c.n, c.pos0)
			p.ref.StoreKV(kv.l, kv.ref, kvv, vvv, c.n, c.pos0)
			for i := range kv.blocks {
				if string(kv.blocks[i]) != string(kv.ref[i]) {
					t.Fatalf("%v n=%d pos0=%d: block %d differs from engine/cpu's bytes", kt, c.n, c.pos0, i)
				}
			}
		}
	}
}

func TestAttention(t *testing.T) {
	b := metalBackend(t)
	r := rand.New(rand.NewPCG(8, 8))
	for _, c := range []struct {
		heads, kvHeads, hd int
		pos0, n            int
	}{
		{4, 2, 40, 37, 6},  // head_dim not a multiple of 32
		{8, 2, 128, 37, 6}, // GQA 4:1
		{6, 6, 64, 0, 9},   // no grouping, from position 0
		{4, 1, 64, 300, 1}, // decode over 19 blocks
		{5, 5, 256, 20, 3}, // the largest head dimension, heads not a multiple of 4
	} {
		h := testHyper
		h.Heads, h.KVHeads, h.HeadDim = c.heads, c.kvHeads, c.hd
		p := loadPair(t, b, h, cpu.F16, 9)
		for _, kt := range []engine.KVType{engine.KVF16, engine.KVF32} {
			name := fmt.Sprintf("heads %d/%d hd %d pos0 %d n %d %v", c.heads, c.kvHeads, c.hd, c.pos0, c.n, kt)
			a := newArena(t, b)
			end := c.pos0 + c.n
			kv := newKV(t, a, engine.KVLayout{Layers: 1, BlockSize: 16, KVHeads: c.kvHeads, HeadDim: c.hd, Type: kt}, ceilDiv(end, 16), 0)
			row := c.kvHeads * c.hd
			kvv, vvv := randn(r, end*row, 1), randn(r, end*row, 1)
			cpu.StoreKV(cpuLayout(kv.l), kv.ref, kvv, vvv, end, 0)
			for i := range kv.blocks {
				copy(kv.blocks[i], kv.ref[i])
			}
			var maxV float64
			for _, x := range vvv {
				maxV = max(maxV, math.Abs(float64(x)))
			}
			qsz := c.n * c.heads * c.hd
			qv := randn(r, qsz, 1)
			q, out := a.f32(qsz), a.f32(qsz)
			copy(q, qv)
			p.mtl.Attention(out, q, c.n, c.pos0, kv.l, kv.blocks)
			want := make([]float32, qsz)
			p.ref.Attention(want, qv, c.n, c.pos0, kv.l, kv.ref)
			requireClose(t, name, out, want, func(int) float64 { return 1e-4 * maxV })
			again := a.f32(qsz)
			p.mtl.Attention(again, q, c.n, c.pos0, kv.l, kv.blocks)
			requireBits(t, name+": second run", again, out)
			w := c.heads * c.hd
			for tk := 0; tk < c.n; tk++ {
				one := a.f32(w)
				p.mtl.Attention(one, q[tk*w:(tk+1)*w], 1, c.pos0+tk, kv.l, kv.blocks)
				requireBits(t, fmt.Sprintf("%s: query %d alone vs in the batch", name, tk), one, out[tk*w:(tk+1)*w])
			}
		}
	}
}

// ---------------------------------------------------------------------------------------------
// Regions, weights and refusals.

func TestRegionGrowAndRelease(t *testing.T) {
	b := metalBackend(t)
	p := loadPair(t, b, testHyper, cpu.F16, 10)
	before, _ := b.Wrapped()
	a := newArena(t, b)
	const page = 64 << 10
	if got, _ := b.Wrapped(); got-before != 64*page {
		t.Fatalf("wrapped %d region bytes for a new 64-page memory, want %d", got-before, 64*page)
	}
	a.grow(64)
	if got, _ := b.Wrapped(); got-before != 128*page {
		t.Fatalf("wrapped %d region bytes after growing to 128 pages, want %d (the old buffer released)", got-before, 128*page)
	}
	// Operands in the grown part, written by the host, read and written by the GPU in place.
	a.next = 100 * page
	r := rand.New(rand.NewPCG(10, 10))
	dv, sv := randn(r, 5000, 1), randn(r, 5000, 1)
	d, s := a.f32(len(dv)), a.f32(len(sv))
	copy(d, dv)
	copy(s, sv)
	p.mtl.Add(d, s)
	for i := range dv {
		dv[i] += sv[i]
	}
	requireBits(t, "add in the grown part of the memory", d, dv)
	a.close()
	if got, _ := b.Wrapped(); got != before {
		t.Fatalf("%d region bytes still wrapped after the store closed, want %d", got, before)
	}
}

func TestRefusals(t *testing.T) {
	b := metalBackend(t)
	p := loadPair(t, b, testHyper, cpu.F16, 11)
	func() {
		defer func() {
			msg := fmt.Sprint(recover())
			if !strings.Contains(msg, "linear memory") {
				t.Errorf("an operand outside linear memory: panic %q, want one naming linear memory", msg)
			}
		}()
		x := make([]float32, 8)
		p.mtl.Add(x, x)
	}()

	f := newWeightFile(t, 1<<20)
	h := testHyper
	emb := f.put(t, encode(cpu.F32, make([]float32, h.Vocab*h.Dim)))
	norm := f.put(t, encode(cpu.F32, make([]float32, h.Dim)))
	good := []cpu.Weights{
		{Type: cpu.F32, Rows: h.Vocab, Cols: h.Dim, Data: emb},
		{Type: cpu.F32, Rows: 1, Cols: h.Dim, Data: norm},
		{Type: cpu.F32, Rows: h.Vocab, Cols: h.Dim, Data: emb},
	}
	if w, err := b.Load(&engine.Tensors{Hyper: h, W: good}); err != nil {
		t.Fatalf("minimal model refused: %v", err)
	} else {
		w.Close()
	}
	odd := f.put(t, encode(cpu.F32, make([]float32, 6*3)))
	bad := append([]cpu.Weights{{Type: cpu.F32, Rows: 6, Cols: 3, Data: odd}}, good...)
	if _, err := b.Load(&engine.Tensors{Hyper: h, W: bad}); err == nil || !strings.Contains(err.Error(), "multiple of 4") {
		t.Errorf("3 columns: %v", err)
	}
	mis := f.put(t, make([]byte, 4*32+2))[2:]
	bad = append([]cpu.Weights{{Type: cpu.F32, Rows: 4, Cols: 8, Data: mis}}, good...)
	if _, err := b.Load(&engine.Tensors{Hyper: h, W: bad}); err == nil || !strings.Contains(err.Error(), "aligned") {
		t.Errorf("F32 weights at a 2-byte offset: %v", err)
	}
	big := h
	big.HeadDim = 2 * maxHeadDim
	if _, err := b.Load(&engine.Tensors{Hyper: big, W: good}); err == nil {
		t.Error("head dimension 512 accepted")
	}
}

// ---------------------------------------------------------------------------------------------
// The whole model through the engine.

func synthModel(t testing.TB, typ gguf.Type) string {
	t.Helper()
	spec, err := gguf.Synth("tiny", typ, 3)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "tiny.gguf")
	if err := spec.WriteFile(path, nil); err != nil {
		t.Fatal(err)
	}
	return path
}

type runResult struct {
	logits []float32
	tokens []int32
	kv     []byte
}

func runModel(t testing.TB, be engine.Backend, path string, kv engine.KVType, prompt []int32, steps int, oneByOne bool) runResult {
	t.Helper()
	if cacheDir == "" {
		d, err := os.MkdirTemp("", "metal-modcache")
		if err != nil {
			t.Fatal(err)
		}
		cacheDir = d
	}
	e, err := engine.New(engine.Options{Backend: be, CacheDir: cacheDir})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	m, err := e.LoadModel(path)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	in, err := m.NewInstance(engine.InstanceOptions{KVType: kv})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if oneByOne {
		for _, tok := range prompt {
			if err := in.Prefill([]int32{tok}); err != nil {
				t.Fatal(err)
			}
		}
	} else if err := in.Prefill(prompt); err != nil {
		t.Fatal(err)
	}
	var res runResult
	if res.logits, err = in.Logits(); err != nil {
		t.Fatal(err)
	}
	regs, err := in.KVRegions()
	if err != nil {
		t.Fatal(err)
	}
	mem := in.Memory()
	for _, g := range regs {
		res.kv = append(res.kv, mem[g.Offset:g.Offset+g.Length]...)
	}
	if steps > 0 {
		if res.tokens, err = in.Generate(steps, nil); err != nil {
			t.Fatal(err)
		}
	}
	return res
}

// TestEngineMatchesCPU runs the tiny synthetic model through the engine on Metal and on the CPU.
// Logits: the two differ by summation order in every op (~1e-6 relative) until a K or V value
// rounds to the other side of an F16 boundary (up to 2^-11 relative); through 6 layers this
// stays well under 1e-2 of the largest logit, the bound used (as for CUDA). On Metal itself:
// bit-identical between runs and between batched and token-by-token prefill.
func TestEngineMatchesCPU(t *testing.T) {
	b := metalBackend(t)
	prompt := make([]int32, 40)
	for i := range prompt {
		prompt[i] = int32((i*7919 + 13) % 32000)
	}
	for _, typ := range []gguf.Type{gguf.TypeQ8_0, gguf.TypeF16} {
		path := synthModel(t, typ)
		for _, kv := range []engine.KVType{engine.KVF16, engine.KVF32} {
			name := fmt.Sprintf("%v/%v", typ, kv)
			ref := runModel(t, engine.CPU(), path, kv, prompt, 16, false)
			g1 := runModel(t, b, path, kv, prompt, 16, false)
			g2 := runModel(t, b, path, kv, prompt, 16, false)
			g3 := runModel(t, b, path, kv, prompt, 0, true)
			requireBits(t, name+": Metal run 2 vs run 1", g2.logits, g1.logits)
			if fmt.Sprint(g1.tokens) != fmt.Sprint(g2.tokens) {
				t.Fatalf("%s: Metal runs generate different tokens", name)
			}
			if string(g1.kv) != string(g3.kv) {
				t.Fatalf("%s: batched and token-by-token prefill leave different KV bytes", name)
			}
			requireBits(t, name+": token-by-token vs batched prefill", g3.logits, g1.logits)
			var maxRef, maxDiff float64
			for i := range ref.logits {
				maxRef = max(maxRef, math.Abs(float64(ref.logits[i])))
				maxDiff = max(maxDiff, math.Abs(float64(ref.logits[i]-g1.logits[i])))
			}
			same := 0
			for i := range ref.tokens {
				if ref.tokens[i] == g1.tokens[i] {
					same++
				}
			}
			t.Logf("%s: max |metal-cpu| logit %.3g (max |logit| %.3g); greedy tokens equal %d/%d", name, maxDiff, maxRef, same, len(ref.tokens))
			if !(maxDiff <= 1e-2*maxRef) {
				t.Fatalf("%s: logits differ from the CPU backend by %g (max |logit| %g)", name, maxDiff, maxRef)
			}
		}
	}
	if regions, weights := b.Wrapped(); regions != 0 || weights != 0 {
		t.Errorf("after every engine closed: %d region and %d weight bytes still wrapped", regions, weights)
	}
}
