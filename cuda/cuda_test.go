package cuda

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"unsafe"

	"github.com/driftstore/driftstore/engine/cpu"
	"github.com/driftstore/driftstore/gguf/dtype"
)

var (
	testDevOnce sync.Once
	testDev     *Device
	testDevErr  error
)

// device opens GPU 0 once for the whole test binary, or skips the test with the reason.
func device(t testing.TB) *Device {
	t.Helper()
	testDevOnce.Do(func() {
		testDev, testDevErr = Open(0)
		if testDevErr == nil {
			i := testDev.Info()
			lib, err := CUBLASLibrary()
			if lib == "" {
				lib = fmt.Sprintf("none (%v)", err)
			}
			fmt.Fprintf(os.Stderr, "cuda: %s, sm_%d%d, %d SMs, %d MiB, driver %d, host ptr = device ptr: %v; GEMM %+v, cuBLAS %s\n",
				i.Name, i.CC[0], i.CC[1], i.SMs, i.TotalMem>>20, i.DriverVersion, i.HostPtrIsDevPtr, testDev.GEMM(), lib)
		}
	})
	if errors.Is(testDevErr, ErrUnavailable) {
		t.Skipf("no CUDA driver: %v", testDevErr)
	}
	if testDevErr != nil {
		t.Fatalf("open CUDA device: %v", testDevErr)
	}
	return testDev
}

func TestMain(m *testing.M) {
	code := m.Run()
	if cacheDir != "" {
		os.RemoveAll(cacheDir)
	}
	if testDev != nil {
		testDev.Close()
	}
	os.Exit(code)
}

func newStream(t testing.TB, d *Device) *Stream {
	t.Helper()
	s, err := d.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func f32Bytes(v []float32) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
}

// devBuf is a device buffer holding v (or poison when v is nil: NaN bytes, so unwritten
// outputs show).
func devBuf(t testing.TB, d *Device, v []float32, n int) *Buffer {
	t.Helper()
	b, err := d.Alloc(4 * n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Free() })
	src := v
	if src == nil {
		src = make([]float32, n)
		for i := range src {
			src[i] = float32(math.NaN())
		}
	}
	if err := b.Upload(0, f32Bytes(src[:n])); err != nil {
		t.Fatal(err)
	}
	return b
}

func readF32(t testing.TB, b *Buffer, off, n int) []float32 {
	t.Helper()
	v := make([]float32, n)
	if err := b.Download(f32Bytes(v), off); err != nil {
		t.Fatal(err)
	}
	return v
}

func randF32(r *rand.Rand, n int, scale float32) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = (r.Float32()*2 - 1) * scale
	}
	return v
}

// encode returns rows x cols random weights in GGUF layout, with their exact float values.
func encode(r *rand.Rand, t DType, rows, cols int) ([]byte, []float32) {
	f := randF32(r, rows*cols, 1)
	switch t {
	case F32:
		return append([]byte(nil), f32Bytes(f)...), f
	case F16:
		raw := make([]byte, 2*len(f))
		dtype.F32sToF16s(raw, f)
		dtype.F16sToF32s(f, raw)
		return raw, f
	case BF16:
		raw := make([]byte, 2*len(f))
		dtype.F32sToBF16s(raw, f)
		dtype.BF16sToF32s(f, raw)
		return raw, f
	case Q8_0:
		raw := make([]byte, dtype.Q8_0Len(len(f)))
		dtype.QuantizeQ8_0(raw, f)
		dtype.DequantizeQ8_0(f, raw)
		return raw, f
	}
	panic(t)
}

const u32 = 1.0 / (1 << 24) // float32 unit roundoff

func bitsEqual(a, b []float32) int {
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return i
		}
	}
	return -1
}

// TestPTXCurrent fails when a kernel source changed without regenerating the PTX
// (scripts/gen-ptx.sh). It needs no GPU.
func TestPTXCurrent(t *testing.T) {
	names, err := filepath.Glob("kernels/*.cu")
	if err != nil || len(names) == 0 {
		t.Fatalf("no kernel sources: %v", err)
	}
	sort.Strings(names)
	var lines strings.Builder
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.Sum256(b)
		fmt.Fprintf(&lines, "%s  %s\n", hex.EncodeToString(h[:]), filepath.Base(n))
	}
	h := sha256.Sum256([]byte(lines.String()))
	want := hex.EncodeToString(h[:])
	got, err := os.ReadFile("kernels/kernels.ptx.sum")
	if err != nil {
		t.Fatalf("%v: run scripts/gen-ptx.sh on a machine with nvcc", err)
	}
	if strings.TrimSpace(string(got)) != want {
		t.Fatalf("kernels/kernels.ptx is stale: sources hash to %s, PTX was built from %s; run scripts/gen-ptx.sh", want, strings.TrimSpace(string(got)))
	}
	if !strings.Contains(string(kernelsPTX), ".entry ds_attn") {
		t.Fatal("embedded PTX lacks the kernels")
	}
}

// Matrix products: each output is compared with a float64 reference and with engine/cpu.
// Tolerance: a GPU output is a sum of cols products of exact float32 values (the weights
// dequantize exactly) in float32 with at most cols/32 + 5 roundings along any path, so
// |gpu - ref| <= (cols/32 + 5) * u * sum|w*x|; engine/cpu's order differs, bounded by
// cols * u * sum|w*x|. The test uses (cols + 8) * u * sum|w*x| for both, and 2x that between
// them. The tensor-core path (F16 and Q8_0 with cols % 32 == 0) stays inside it: each
// activation is split exactly up to 2^-22 of its chunk's largest magnitude, products are exact
// and each chunk adds two F32 mma chains of 16 products, a seg and a total sum: far fewer than
// cols roundings of u * sum|w*x| each. Misaligned inputs also spread magnitudes over 2^±20.
func TestMatMul(t *testing.T) {
	d := device(t)
	ownGEMM(t, d) // batch independence is the own kernels' property (gemm_test.go: cuBLAS)
	s := newStream(t, d)
	pool := cpu.NewPool(2)
	defer pool.Close()
	r := rand.New(rand.NewPCG(1, 2))
	shapes := []struct{ rows, cols int }{{288, 288}, {100, 768}, {72, 40}, {33, 20}, {1000, 2048}, {64, 8192}}
	for _, ty := range []DType{F32, F16, BF16, Q8_0} {
		for _, sh := range shapes {
			if ty == Q8_0 && sh.cols%32 != 0 {
				continue
			}
			raw, wf := encode(r, ty, sh.rows, sh.cols)
			w, err := d.UploadWeights(ty, sh.rows, sh.cols, raw)
			if err != nil {
				t.Fatal(err)
			}
			cw := &cpu.Weights{Type: cpu.DType(ty), Rows: sh.rows, Cols: sh.cols, Data: raw}
			for _, n := range []int{1, 3, 8, 17, 70} {
				for _, misalign := range []int{0, 1} {
					name := fmt.Sprintf("%v/%dx%d/n%d/mis%d", ty, sh.rows, sh.cols, n, misalign)
					x := randF32(r, n*sh.cols+misalign, 1)
					if misalign == 1 { // and a wide dynamic range: magnitudes 2^-20 .. 2^20
						for i := range x {
							x[i] = float32(math.Ldexp(float64(x[i]), r.IntN(41)-20))
						}
					}
					xb := devBuf(t, d, x, len(x))
					x = x[misalign:]
					ob := devBuf(t, d, nil, n*sh.rows)
					xp := xb.Ptr + DevPtr(4*misalign)
					if err := s.MatMul(ob.Ptr, w, xp, n); err != nil {
						t.Fatal(name, err)
					}
					got := readF32(t, ob, 0, n*sh.rows)
					cres := make([]float32, n*sh.rows)
					pool.MatMul(cres, cw, x, n)
					worst := 0.0
					for tk := 0; tk < n; tk++ {
						for row := 0; row < sh.rows; row++ {
							var ref, mag float64
							for c := 0; c < sh.cols; c++ {
								p := float64(wf[row*sh.cols+c]) * float64(x[tk*sh.cols+c])
								ref += p
								mag += math.Abs(p)
							}
							tol := float64(sh.cols+8) * u32 * mag
							g := float64(got[tk*sh.rows+row])
							c := float64(cres[tk*sh.rows+row])
							if !(math.Abs(g-ref) <= tol) || !(math.Abs(g-c) <= 2*tol) {
								t.Fatalf("%s: out[%d][%d] = %g, ref %g, cpu %g, tol %g", name, tk, row, g, ref, c, tol)
							}
							if mag > 0 {
								worst = max(worst, math.Abs(g-ref)/mag)
							}
						}
					}
					// Determinism, and independence of the batch: token j alone gives the same bits.
					if err := s.MatMul(ob.Ptr, w, xp, n); err != nil {
						t.Fatal(err)
					}
					if i := bitsEqual(got, readF32(t, ob, 0, n*sh.rows)); i >= 0 {
						t.Fatalf("%s: second run differs at %d", name, i)
					}
					j := n - 1
					ob1 := devBuf(t, d, nil, sh.rows)
					if err := s.MatMul(ob1.Ptr, w, xp+DevPtr(4*j*sh.cols), 1); err != nil {
						t.Fatal(err)
					}
					if i := bitsEqual(got[j*sh.rows:(j+1)*sh.rows], readF32(t, ob1, 0, sh.rows)); i >= 0 && sh.cols%8 == 0 {
						t.Fatalf("%s: token %d alone differs from the batch at row %d", name, j, i)
					}
					if testing.Verbose() && misalign == 0 && (n == 1 || n == 70) {
						t.Logf("%s: max |gpu-ref|/sum|wx| = %.3g", name, worst)
					}
				}
			}
			w.Free()
		}
	}
}

// TestFewTokenKernels: every few-token tensor-core kernel (DRIFTSTORE_CUDA_TCV's choices, and
// each ds_tcr instance and warp count that tcrShape picks, plus an odd warp count) gives each
// token the same bits as ds_tcm's batch of 12 (n > tcvMaxTokens), for n = 1, 3, 8, aligned and
// misaligned activations, shapes with a partial row tile and a partial segment, and activations
// spread over 2^±20 with an all-zero chunk and a huge value.
func TestFewTokenKernels(t *testing.T) {
	d := device(t)
	ownGEMM(t, d)
	s := newStream(t, d)
	saved, savedW := d.tcv, d.tcw
	defer func() { d.tcv, d.tcw = saved, savedW }()
	type config struct {
		mode tcMode
		tcw  int
	}
	configs := []config{{tcStream, 0}, {tcStream, 3}, {tcWarp, 0}, {tcBlock, 0}}
	r := rand.New(rand.NewPCG(7, 8))
	const batch = 12
	for _, ty := range []DType{F16, Q8_0} {
		// ds_tcr8 x 8 warps; ds_tcr2 x 9 (partial segment); ds_tcr2 x 32; ds_tcr2 x 2 (more row
		// tiles than an H100/H200 has SMs)
		for _, sh := range []struct{ rows, cols int }{{1000, 2048}, {130, 2080}, {64, 8192}, {2200, 512}} {
			raw, _ := encode(r, ty, sh.rows, sh.cols)
			w, err := d.UploadWeights(ty, sh.rows, sh.cols, raw)
			if err != nil {
				t.Fatal(err)
			}
			if !d.tensorCores(w) {
				w.Free()
				t.Skipf("%v %dx%d not on the tensor cores (DRIFTSTORE_CUDA_TC=0?)", ty, sh.rows, sh.cols)
			}
			x := randF32(r, batch*sh.cols+1, 1)
			for i := range x {
				x[i] = float32(math.Ldexp(float64(x[i]), r.IntN(41)-20))
			}
			for i := 32; i < 64; i++ {
				x[i] = 0
			}
			x[100] = 3e30
			xb := devBuf(t, d, x, len(x))
			for _, mis := range []int{0, 1} {
				xp := xb.Ptr + DevPtr(4*mis)
				ref := devBuf(t, d, nil, batch*sh.rows)
				if err := s.MatMul(ref.Ptr, w, xp, batch); err != nil {
					t.Fatal(err)
				}
				want := readF32(t, ref, 0, batch*sh.rows)
				for _, cf := range configs {
					d.tcv, d.tcw = cf.mode, cf.tcw
					for _, n := range []int{1, 3, 8} {
						ob := devBuf(t, d, nil, n*sh.rows)
						if err := s.MatMul(ob.Ptr, w, xp, n); err != nil {
							t.Fatal(err)
						}
						if i := bitsEqual(want[:n*sh.rows], readF32(t, ob, 0, n*sh.rows)); i >= 0 {
							t.Errorf("%v %dx%d mis%d %v (tcw %d) n=%d: token %d row %d differs from the batch",
								ty, sh.rows, sh.cols, mis, cf.mode, cf.tcw, n, i/sh.rows, i%sh.rows)
						}
						ob.Free()
					}
				}
				d.tcv, d.tcw = saved, savedW
				ref.Free()
			}
			w.Free()
		}
	}
}

func TestNormRopeElementwise(t *testing.T) {
	d := device(t)
	s := newStream(t, d)
	pool := cpu.NewPool(2)
	defer pool.Close()
	r := rand.New(rand.NewPCG(3, 4))
	for _, dim := range []int{288, 2048} {
		n := 5
		x := randF32(r, n*dim, 3)
		w := randF32(r, dim, 1)
		xb, wb, ob := devBuf(t, d, x, n*dim), devBuf(t, d, w, dim), devBuf(t, d, nil, n*dim)
		if err := s.RMSNorm(ob.Ptr, xb.Ptr, wb.Ptr, dim, n, 1e-5); err != nil {
			t.Fatal(err)
		}
		got := readF32(t, ob, 0, n*dim)
		want := make([]float32, n*dim)
		pool.RMSNorm(want, x, w, n, dim, 1e-5)
		// The GPU sums squares in float32 (at most dim/256 + 13 roundings), engine/cpu in
		// float64; the scale's relative error is half the sum's, plus a few roundings.
		tol := (float64(dim)/256 + 20) * u32
		for i := range got {
			if !(math.Abs(float64(got[i]-want[i])) <= tol*math.Abs(float64(want[i]))+1e-30) {
				t.Fatalf("rmsnorm dim %d [%d]: %g vs cpu %g", dim, i, got[i], want[i])
			}
		}
		// in place
		if err := s.RMSNorm(xb.Ptr, xb.Ptr, wb.Ptr, dim, n, 1e-5); err != nil {
			t.Fatal(err)
		}
		if i := bitsEqual(got, readF32(t, xb, 0, n*dim)); i >= 0 {
			t.Fatalf("rmsnorm in place differs at %d", i)
		}
	}
	// RoPE: both sides compute in float64; only sin/cos may differ by an ulp of a double,
	// so results agree to within one float32 rounding.
	for _, c := range []struct{ n, heads, hd, pos0 int }{{3, 6, 48, 0}, {2, 32, 64, 5000}, {7, 8, 64, 123}} {
		x := randF32(r, c.n*c.heads*c.hd, 2)
		xb := devBuf(t, d, x, len(x))
		if err := s.RoPE(xb.Ptr, c.n, c.heads, c.hd, c.heads*c.hd, c.pos0, 500000); err != nil {
			t.Fatal(err)
		}
		got := readF32(t, xb, 0, len(x))
		pool.RoPE(x, c.n, c.heads, c.hd, c.pos0, 500000)
		for i := range got {
			if !(math.Abs(float64(got[i]-x[i])) <= 2*u32*(math.Abs(float64(x[i]))+1e-6)) {
				t.Fatalf("rope %+v [%d]: %g vs cpu %g", c, i, got[i], x[i])
			}
		}
	}
	// SwiGLU: CUDA's expf is within 2 ulp, glibc's within 1: a few float32 roundings apart.
	n := 10000
	g, u := randF32(r, n, 8), randF32(r, n, 2)
	gb, ub, ob := devBuf(t, d, g, n), devBuf(t, d, u, n), devBuf(t, d, nil, n)
	if err := s.SwiGLU(ob.Ptr, gb.Ptr, ub.Ptr, n); err != nil {
		t.Fatal(err)
	}
	got := readF32(t, ob, 0, n)
	want := make([]float32, n)
	pool.SwiGLU(want, g, u)
	for i := range got {
		if !(math.Abs(float64(got[i]-want[i])) <= 8*u32*math.Abs(float64(want[i]))+1e-30) {
			t.Fatalf("swiglu [%d]: %g vs cpu %g", i, got[i], want[i])
		}
	}
	// Add is exact.
	if err := s.Add(gb.Ptr, gb.Ptr, ub.Ptr, n); err != nil {
		t.Fatal(err)
	}
	cpu.Add(g, u)
	if i := bitsEqual(g, readF32(t, gb, 0, n)); i >= 0 {
		t.Fatalf("add differs at %d", i)
	}
	// Softmax against float64.
	rows, cnt := 3, 32000
	x := randF32(r, rows*cnt, 10)
	xb := devBuf(t, d, x, len(x))
	if err := s.Softmax(xb.Ptr, cnt, rows); err != nil {
		t.Fatal(err)
	}
	got = readF32(t, xb, 0, len(x))
	for row := 0; row < rows; row++ {
		xr := x[row*cnt : (row+1)*cnt]
		m := math.Inf(-1)
		for _, v := range xr {
			m = math.Max(m, float64(v))
		}
		var sum float64
		for _, v := range xr {
			sum += math.Exp(float64(v) - m)
		}
		for i, v := range xr {
			ref := math.Exp(float64(v)-m) / sum
			if !(math.Abs(float64(got[row*cnt+i])-ref) <= 1e-5*ref+1e-12) {
				t.Fatalf("softmax [%d][%d]: %g vs %g", row, i, got[row*cnt+i], ref)
			}
		}
	}
	// Argmax: first index of the maximum, with ties planted.
	x = randF32(r, rows*cnt, 1)
	x[0*cnt+77], x[0*cnt+31000] = 5, 5
	x[1*cnt+31999] = 7
	x[2*cnt+5] = float32(math.NaN())
	x[2*cnt+6] = 3
	xb = devBuf(t, d, x, len(x))
	idx, err := s.Argmax(xb.Ptr, cnt, rows)
	if err != nil {
		t.Fatal(err)
	}
	if idx[0] != 77 || idx[1] != 31999 || idx[2] != 6 {
		t.Fatalf("argmax = %v, want [77 31999 6]", idx)
	}
}

func TestEmbed(t *testing.T) {
	d := device(t)
	s := newStream(t, d)
	r := rand.New(rand.NewPCG(5, 6))
	for _, ty := range []DType{F32, F16, BF16, Q8_0} {
		rows, cols := 500, 288
		raw, _ := encode(r, ty, rows, cols)
		w, err := d.UploadWeights(ty, rows, cols, raw)
		if err != nil {
			t.Fatal(err)
		}
		ids := []int32{0, 499, 17, 17, 250}
		ob := devBuf(t, d, nil, len(ids)*cols)
		if err := s.Embed(ob.Ptr, w, ids); err != nil {
			t.Fatal(err)
		}
		want := make([]float32, len(ids)*cols)
		cpu.Embed(want, &cpu.Weights{Type: cpu.DType(ty), Rows: rows, Cols: cols, Data: raw}, ids)
		if i := bitsEqual(want, readF32(t, ob, 0, len(want))); i >= 0 {
			t.Fatalf("embed %v differs from engine/cpu at %d", ty, i)
		}
		if err := s.Embed(ob.Ptr, w, []int32{500}); err == nil {
			t.Fatal("embed accepted token 500 of 500 rows")
		}
		w.Free()
	}
}

// hostMem maps n bytes of anonymous memory (page-aligned, outside Go's heap).
func hostMem(t testing.TB, n int) []byte {
	t.Helper()
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Munmap(b) })
	return b
}

func addr(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }

// TestKVAttention stores K/V with the GPU into registered host memory (placement a: the
// guest's linear memory), checks the bytes against engine/cpu's StoreKV, then compares
// attention over those same blocks on both sides.
//
// Tolerance: scores differ by the float32 dot product's rounding, at most
// (hd/32 + 5) u * S on the GPU and hd u * S on the CPU, S = scale * sum|q*k|; a score error
// e changes the softmax weights by a factor within exp(+-2e), moving the output by at most
// 4e * max|v|. The weighted sums add ctx terms in float32 in different orders:
// 2 * ctx * u * max|v|. So tol = (4 * 2 * hd * S + 2 * ctx + 16) * u * max|v|.
func TestKVAttention(t *testing.T) {
	d := device(t)
	ownGEMM(t, d) // ds_attn/ds_attn_mq: attention of batches on the tensor cores is TestAttentionTC's
	s := newStream(t, d)
	reg := NewRegistrar(d)
	pool := cpu.NewPool(2)
	defer pool.Close()
	r := rand.New(rand.NewPCG(7, 8))
	cases := []struct {
		heads, nkv, hd, bsize int
		kv                    DType
		steps                 [][2]int // (pos0, n) in order
	}{
		{6, 6, 48, 16, F16, [][2]int{{0, 20}, {20, 1}, {21, 1}}},
		{32, 8, 64, 16, F16, [][2]int{{0, 40}, {40, 1}, {41, 7}}},
		{32, 8, 64, 32, F32, [][2]int{{0, 33}, {33, 1}}},
		{32, 8, 64, 16, F16, [][2]int{{0, 1500}, {1500, 1}, {1501, 600}, {2101, 1}}}, // 47, 66 splits
		{16, 2, 128, 16, F16, [][2]int{{0, 70}, {70, 1}, {71, 2}}},
		{4, 4, 20, 8, F16, [][2]int{{0, 9}, {9, 1}, {10, 1}}},
		{12, 4, 32, 16, F32, [][2]int{{0, 31}, {31, 1}, {32, 1}}},
		{4, 1, 64, 32, F16, [][2]int{{0, 4130}, {4130, 1}, {4131, 1}}}, // 130, 131 splits: past the merge's 128 kept in registers
	}
	for ci, c := range cases {
		l := KVLayout{BlockSize: c.bsize, NKVHeads: c.nkv, HeadDim: c.hd, KVType: c.kv}
		cl := cpu.KVLayout{BlockSize: c.bsize, NKVHeads: c.nkv, HeadDim: c.hd, KVType: cpu.DType(c.kv)}
		last := c.steps[len(c.steps)-1]
		ctxMax := last[0] + last[1]
		nb := ceilDiv(ctxMax, c.bsize)
		bb := l.BlockBytes()
		gpuMem, cpuMem := hostMem(t, nb*bb+4096), hostMem(t, nb*bb)
		if err := reg.Register(addr(gpuMem), len(gpuMem)); err != nil {
			t.Fatal(err)
		}
		// Blocks in reverse order: the table, not the layout, decides.
		var dblocks []DevPtr
		var gblocks, cblocks [][]byte
		for b := 0; b < nb; b++ {
			off := (nb - 1 - b) * bb
			p, err := reg.DevPtr(addr(gpuMem), off, bb)
			if err != nil {
				t.Fatal(err)
			}
			dblocks = append(dblocks, p)
			gblocks = append(gblocks, gpuMem[off:off+bb])
			cblocks = append(cblocks, cpuMem[off:off+bb])
		}
		row := c.nkv * c.hd
		for _, st := range c.steps {
			pos0, n := st[0], st[1]
			name := fmt.Sprintf("case%d/pos%d/n%d", ci, pos0, n)
			k, v, q := randF32(r, n*row, 1), randF32(r, n*row, 1), randF32(r, n*c.heads*c.hd, 1)
			kb, vb, qb := devBuf(t, d, k, len(k)), devBuf(t, d, v, len(v)), devBuf(t, d, q, len(q))
			if err := s.StoreKV(kb.Ptr, vb.Ptr, n, pos0, l, dblocks); err != nil {
				t.Fatal(err)
			}
			if err := s.Sync(); err != nil {
				t.Fatal(err)
			}
			cpu.StoreKV(cl, cblocks, k, v, n, pos0)
			for b := range gblocks {
				if string(gblocks[b]) != string(cblocks[b]) {
					t.Fatalf("%s: KV block %d written by the GPU differs from engine/cpu's", name, b)
				}
			}
			ob := devBuf(t, d, nil, len(q))
			if err := s.Attention(ob.Ptr, qb.Ptr, n, c.heads, pos0, l, dblocks); err != nil {
				t.Fatal(err)
			}
			got := readF32(t, ob, 0, len(q))
			want := make([]float32, len(q))
			pool.Attention(want, q, n, c.heads, pos0, cl, gblocks)
			scale := 1 / math.Sqrt(float64(c.hd))
			S := scale * float64(c.hd) // |q|, |k| <= 1
			tol := (8*float64(c.hd)*S + 2*float64(pos0+n) + 16) * u32
			for i := range got {
				if !(math.Abs(float64(got[i]-want[i])) <= tol) {
					t.Fatalf("%s: out[%d] = %g, cpu %g, tol %g", name, i, got[i], want[i], tol)
				}
			}
			if err := s.Attention(ob.Ptr, qb.Ptr, n, c.heads, pos0, l, dblocks); err != nil {
				t.Fatal(err)
			}
			if i := bitsEqual(got, readF32(t, ob, 0, len(q))); i >= 0 {
				t.Fatalf("%s: second run differs at %d", name, i)
			}
			{ // ds_attn_dec (decode's kernel) against ds_attn: the same bits
				attnDec, attnMQ = !attnDec, false
				err := s.Attention(ob.Ptr, qb.Ptr, n, c.heads, pos0, l, dblocks)
				attnDec, attnMQ = !attnDec, true
				if err != nil {
					t.Fatal(err)
				}
				if i := bitsEqual(got, readF32(t, ob, 0, len(q))); i >= 0 {
					t.Fatalf("%s: ds_attn_dec and ds_attn differ at %d (attnDec %v)", name, i, attnDec)
				}
			}
			// ds_attn_dec with other numbers of splits per block (8 is capped by its shared
			// memory): a split's partial and the merge do not depend on the block.
			for _, spb := range []int{1, 2, 3, 8} {
				attnSPB, attnMQ = spb, false
				err := s.Attention(ob.Ptr, qb.Ptr, n, c.heads, pos0, l, dblocks)
				attnSPB, attnMQ = 0, true
				if err != nil {
					t.Fatal(err)
				}
				if i := bitsEqual(got, readF32(t, ob, 0, len(q))); i >= 0 {
					t.Fatalf("%s: ds_attn_dec with %d splits per block differs at %d (attnDec %v)", name, spb, i, attnDec)
				}
			}
			if n > 1 { // ds_attn_mq against ds_attn, one token's query per block: the same bits
				attnMQ = false
				err := s.Attention(ob.Ptr, qb.Ptr, n, c.heads, pos0, l, dblocks)
				attnMQ = true
				if err != nil {
					t.Fatal(err)
				}
				if i := bitsEqual(got, readF32(t, ob, 0, len(q))); i >= 0 {
					t.Fatalf("%s: shared-load attention differs from per-token attention at %d", name, i)
				}
			}
		}
		if err := reg.Unregister(addr(gpuMem)); err != nil {
			t.Fatal(err)
		}
	}
	if n := d.Stats.Registered.Load(); n != 0 {
		t.Fatalf("%d bytes still registered", n)
	}
}
