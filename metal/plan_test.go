package metal

// These tests run on every platform: they check the backend's platform-independent half (page
// planning, region checks, operand location, the RoPE table) and that the Go side and
// kernels.metal agree on kernel names, buffer indices, parameter structs and launch constants,
// since the Metal side cannot be compiled here.

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/driftstore/driftstore/engine/cpu"
)

// mslKernel is a kernel signature parsed from kernels.metal.
type mslKernel struct {
	buffers []string // buffer argument names by index
	paramTy string   // type of the last buffer argument (the parameter struct, or "uint")
}

var (
	reDefine   = regexp.MustCompile(`(?m)^#define (\w+_KERNEL)\(NAME, WTYPE\)`)
	reUse      = regexp.MustCompile(`(?m)^(\w+_KERNEL)\((\w+), \w+\)`)
	reKernel   = regexp.MustCompile(`kernel void (\w+)\(`)
	reBuffer   = regexp.MustCompile(`(?:(constant)\s+(\w+)\s*&|device\s+(?:const\s+)?\w+\s*\*)\s*(\w+)\s*\[\[buffer\((\d+)\)\]\]`)
	reStruct   = regexp.MustCompile(`(?s)struct (\w+) \{(.*?)\};`)
	reField    = regexp.MustCompile(`(?m)^\s*(uint|float) (\w+);`)
	reConstant = regexp.MustCompile(`(?m)^#define (\w+) (\d+)u`)
)

// signature returns the argument list following the "(" at src[open:].
func signature(t *testing.T, src string, open int) string {
	t.Helper()
	end := strings.Index(src[open:], ")")
	for end >= 0 && !strings.HasPrefix(strings.TrimLeft(strings.ReplaceAll(src[open+end+1:], "\\", ""), " \t\n"), "{") {
		next := strings.Index(src[open+end+1:], ")")
		if next < 0 {
			end = -1
			break
		}
		end += next + 1
	}
	if end < 0 {
		t.Fatalf("unterminated signature at %d", open)
	}
	return src[open : open+end]
}

func parseKernels(t *testing.T, src string) map[string]mslKernel {
	t.Helper()
	parse := func(sig string) mslKernel {
		var k mslKernel
		for i, m := range reBuffer.FindAllStringSubmatch(sig, -1) {
			idx, _ := strconv.Atoi(m[4])
			if idx != i {
				t.Errorf("buffer %s has index %d, want %d (indices must be 0, 1, ...)", m[3], idx, i)
			}
			k.buffers = append(k.buffers, m[3])
			k.paramTy = m[2]
		}
		return k
	}
	macros := map[string]mslKernel{}
	for _, m := range reDefine.FindAllStringSubmatchIndex(src, -1) {
		name := src[m[2]:m[3]]
		body := src[m[1]:]
		at := reKernel.FindStringIndex(body)
		if at == nil {
			t.Fatalf("macro %s has no kernel", name)
		}
		macros[name] = parse(signature(t, body, at[1]))
	}
	out := map[string]mslKernel{}
	for _, m := range reUse.FindAllStringSubmatch(src, -1) {
		k, ok := macros[m[1]]
		if !ok {
			t.Fatalf("kernel %s uses unknown macro %s", m[2], m[1])
		}
		out[m[2]] = k
	}
	for _, m := range reKernel.FindAllStringSubmatchIndex(src, -1) {
		name := src[m[2]:m[3]]
		if name == "NAME" {
			continue
		}
		out[name] = parse(signature(t, src, m[1]))
	}
	return out
}

// kernelParams returns the parameters the Go side binds for k (with arbitrary values).
func kernelParams(k kernel) *params {
	switch k {
	case kMatMulF32, kMatMulF16, kMatMulBF16, kMatMulQ8:
		return matmulParams(1, 4, 1, 16)
	case kEmbedF32, kEmbedF16, kEmbedBF16, kEmbedQ8:
		return embedParams(1, 4, 1, 16)
	case kRMSNorm:
		return normParams(4, 1e-5)
	case kRoPE:
		return ropeParams(1, 1, 2)
	case kStoreKV:
		return kvParams(1, 0, 16, 8, true)
	case kAttention:
		return attnParams(1, 1, 0, 16, 1, 8, true)
	case kSwiGLU, kAdd:
		return countParams(1)
	}
	return nil
}

func TestKernelSourceMatchesGo(t *testing.T) {
	src := kernelSource
	kernels := parseKernels(t, src)
	structs := map[string][]string{}
	for _, m := range reStruct.FindAllStringSubmatch(src, -1) {
		for _, f := range reField.FindAllStringSubmatch(m[2], -1) {
			structs[m[1]] = append(structs[m[1]], f[2])
		}
	}
	if len(kernels) != int(numKernels) {
		t.Errorf("kernels.metal has %d kernels, the Go side names %d", len(kernels), numKernels)
	}
	for k := kernel(0); k < numKernels; k++ {
		name := kernelNames[k]
		ks, ok := kernels[name]
		if !ok {
			t.Errorf("kernel %s is not in kernels.metal", name)
			continue
		}
		want := append(append([]string(nil), kernelBuffers[k]...), "p")
		p := kernelParams(k)
		var fields []string
		if ks.paramTy == "uint" {
			want[len(want)-1] = "n"
			fields = []string{"n"}
		} else {
			fields = structs[ks.paramTy]
			if fields == nil {
				t.Errorf("%s: parameter struct %q not found", name, ks.paramTy)
			}
		}
		if strings.Join(ks.buffers, ",") != strings.Join(want, ",") {
			t.Errorf("%s: buffers %v in kernels.metal, the Go side binds %v then the parameters", name, ks.buffers, kernelBuffers[k])
		}
		got := p.names[:p.n/4]
		if strings.Join(got, ",") != strings.Join(fields, ",") {
			t.Errorf("%s: parameters %v in kernels.metal (%s), the Go side writes %v", name, fields, ks.paramTy, got)
		}
	}
	consts := map[string]int{"MM_SG": mmRowsPerTG, "MM_TT": mmTokens, "AT_SG": atHeadsPerTG, "AT_MAXD": maxHeadDim / simdWidth}
	seen := 0
	for _, m := range reConstant.FindAllStringSubmatch(src, -1) {
		if want, ok := consts[m[1]]; ok {
			seen++
			if got, _ := strconv.Atoi(m[2]); got != want {
				t.Errorf("kernels.metal: %s = %d, the Go side uses %d", m[1], got, want)
			}
		}
	}
	if seen != len(consts) {
		t.Errorf("found %d of the %d launch constants in kernels.metal", seen, len(consts))
	}
	types := map[string]cpu.DType{"T_F32": cpu.F32, "T_F16": cpu.F16, "T_Q8_0": cpu.Q8_0, "T_BF16": cpu.BF16}
	for _, m := range reConstant.FindAllStringSubmatch(src, -1) {
		if want, ok := types[m[1]]; ok {
			if got, _ := strconv.Atoi(m[2]); got != int(want) {
				t.Errorf("kernels.metal: %s = %d, GGML id is %d", m[1], got, want)
			}
		}
	}
}

func TestParamsEncoding(t *testing.T) {
	p := attnParams(3, 8, 17, 16, 2, 64, true)
	if p.n != 32 {
		t.Fatalf("attention parameters are %d bytes, want 32", p.n)
	}
	for i, want := range []uint32{3, 8, 17, 16, 2, 64, 1} {
		if got := binary.LittleEndian.Uint32(p.b[4*i:]); got != want {
			t.Errorf("field %d (%s) = %d, want %d", i, p.names[i], got, want)
		}
	}
	if got := math.Float32frombits(binary.LittleEndian.Uint32(p.b[28:])); got != 0.125 {
		t.Errorf("scale = %g, want 0.125", got)
	}
	defer func() {
		if recover() == nil {
			t.Error("a negative parameter was accepted")
		}
	}()
	countParams(-1)
}

func TestPlanWraps(t *testing.T) {
	const page = 16 << 10
	// A "file" mapped at a page boundary with tensors at 32-byte aligned, unaligned-to-page
	// offsets, one of them used twice (tied embedding), one empty.
	file := uintptr(0x1000_0000)
	spans := []span{
		{file + 96, 40000},
		{file + 96 + 40000 + 32, 5000},
		{file + 96, 40000}, // tied
		{0, 0},             // absent
		{file + 200000, 100},
	}
	ws, pl, err := planWraps(spans, page, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 2 {
		t.Fatalf("got %d buffers, want 2 (the first three tensors' pages touch, the last is apart): %+v", len(ws), ws)
	}
	if ws[0].base != file || ws[0].n != 3*page {
		t.Errorf("first buffer %+v, want base %#x, 3 pages", ws[0], file)
	}
	if pl[0] != (place{0, 96}) || pl[2] != pl[0] || pl[1] != (place{0, 96 + 40000 + 32}) {
		t.Errorf("places %+v", pl[:3])
	}
	if pl[3].buf != -1 {
		t.Errorf("empty tensor placed: %+v", pl[3])
	}
	if pl[4] != (place{1, uint64((200000) % page)}) {
		t.Errorf("last tensor at %+v", pl[4])
	}

	// A maximum buffer length forces splits; a tensor larger than it is refused.
	ws, pl, err = planWraps([]span{{file, 3 * page}, {file + 3*page, 3 * page}}, page, 4*page)
	if err != nil || len(ws) != 2 || pl[1] != (place{1, 0}) {
		t.Errorf("split: %+v %+v %v", ws, pl, err)
	}
	if _, _, err := planWraps([]span{{file + 1, 4 * page}}, page, 4*page); err == nil {
		t.Error("a tensor spanning 5 pages fit a 4-page maximum")
	}
	if _, _, err := planWraps(nil, 3000, 1<<20); err == nil {
		t.Error("a page size that is not a power of two was accepted")
	}
}

// TestPlanWrapsRandom checks the invariants on random layouts: every buffer is whole pages
// within the maximum, every tensor lies inside its buffer at the offset given.
func TestPlanWrapsRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for iter := 0; iter < 200; iter++ {
		page := 1 << (12 + r.IntN(3))
		maxLen := page * (8 + r.IntN(64))
		spans := make([]span, 1+r.IntN(40))
		addr := uintptr(0x4000_0000)
		for i := range spans {
			addr += uintptr(r.IntN(3 * page))
			n := r.IntN(4 * page)
			spans[i] = span{addr, n}
			if r.IntN(4) > 0 {
				addr += uintptr(n)
			}
		}
		r.Shuffle(len(spans), func(i, j int) { spans[i], spans[j] = spans[j], spans[i] })
		ws, pl, err := planWraps(spans, page, maxLen)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range ws {
			if w.base%uintptr(page) != 0 || w.n%page != 0 || w.n <= 0 || w.n > maxLen {
				t.Fatalf("buffer %+v: page %d, max %d", w, page, maxLen)
			}
		}
		for i, s := range spans {
			if s.n == 0 {
				if pl[i].buf != -1 {
					t.Fatalf("empty span %d placed", i)
				}
				continue
			}
			w := ws[pl[i].buf]
			if w.base+uintptr(pl[i].off) != s.addr || pl[i].off+uint64(s.n) > uint64(w.n) {
				t.Fatalf("span %+v placed at %+v in %+v", s, pl[i], w)
			}
		}
	}
}

func TestCheckRegion(t *testing.T) {
	for _, c := range []struct {
		base uintptr
		n    int
		page int
		ok   bool
	}{
		{0x10000, 64 << 10, 4096, true},
		{0x14000, 16 << 10, 16 << 10, true},
		{0x11000, 64 << 10, 4096, false}, // 4 KiB aligned only
		{0x10000, 20 << 10, 4096, false}, // length not a multiple of 16 KiB
		{0x10000, 0, 4096, false},
		{0x10000, 64 << 10, 64 << 10, true},
		{0x14000, 64 << 10, 64 << 10, false}, // larger OS page
	} {
		if err := checkRegion(c.base, c.n, c.page); (err == nil) != c.ok {
			t.Errorf("checkRegion(%#x, %d, page %d) = %v, want ok=%v", c.base, c.n, c.page, err, c.ok)
		}
	}
}

func TestBlockOffsets(t *testing.T) {
	mem := make([]byte, 1<<16)
	base := uintptr(unsafe.Pointer(&mem[0]))
	blocks := [][]byte{mem[4096:8192], mem[0:4096], mem[60000 : 64096-500]}
	dst := make([]uint32, 2)
	if err := blockOffsets(dst, base, len(mem), blocks, 4096); err != nil || dst[0] != 4096 || dst[1] != 0 {
		t.Fatalf("offsets %v, %v", dst, err)
	}
	if err := blockOffsets(make([]uint32, 3), base, len(mem), blocks, 4096); err == nil {
		t.Error("a short block was accepted")
	}
	if err := blockOffsets(make([]uint32, 1), base, len(mem)-8192, [][]byte{mem[60000:64096]}, 4096); err == nil {
		t.Error("a block outside the memory was accepted")
	}
	other := make([]byte, 4096)
	if err := blockOffsets(make([]uint32, 1), base, len(mem), [][]byte{other}, 4096); err == nil {
		t.Error("a block in other memory was accepted")
	}
	if _, ok := within(base, len(mem), base+uintptr(len(mem))-4, 8); ok {
		t.Error("a range crossing the end was accepted")
	}
	if off, ok := within(base, len(mem), base+uintptr(len(mem))-4, 4); !ok || off != uint64(len(mem)-4) {
		t.Error("the last 4 bytes were refused")
	}
}

// TestRopeTable: the host table plus the kernel's arithmetic (ropeApply, the same expression as
// kernels.metal) reproduce engine/cpu's RoPE, whose angles are float64; the table holds them
// rounded to float32, so each output is within a few float32 ulps of |x0|+|x1|.
func TestRopeTable(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	pool := cpu.NewPool(1)
	defer pool.Close()
	const heads, hd = 3, 64
	for _, pos0 := range []int{0, 7, 5000, 100000} {
		const n = 5
		x := make([]float32, n*heads*hd)
		for i := range x {
			x[i] = float32(r.NormFloat64())
		}
		want := append([]float32(nil), x...)
		pool.RoPE(want, n, heads, hd, pos0, 500000)
		cs := make([]float32, n*hd)
		ropeTable(cs, n, pos0, hd, 500000)
		ropeApply(x, cs, n, heads, hd)
		for i := 0; i < len(x); i += 2 {
			mag := math.Abs(float64(want[i])) + math.Abs(float64(want[i+1]))
			for j := i; j < i+2; j++ {
				if d := math.Abs(float64(x[j] - want[j])); d > 4e-7*mag+1e-30 {
					t.Fatalf("pos0 %d: element %d = %g, cpu %g (diff %g, bound %g)", pos0, j, x[j], want[j], d, 4e-7*mag)
				}
			}
		}
	}
}
