package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/gguf"
)

// ownGEMM runs the test with d's products on the own kernels, restoring d's options after.
func ownGEMM(t testing.TB, d *Device) {
	t.Helper()
	setGEMM(t, d, GEMMOptions{Mode: GEMMOwn})
}

// setGEMM sets d's GEMM options for the test, restoring them after.
func setGEMM(t testing.TB, d *Device, o GEMMOptions) {
	t.Helper()
	saved := d.GEMM()
	if err := d.SetGEMM(o); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.SetGEMM(saved) })
}

func mustSetGEMM(t testing.TB, d *Device, o GEMMOptions) {
	t.Helper()
	if err := d.SetGEMM(o); err != nil {
		t.Fatal(err)
	}
}

// needCUBLAS skips the test where cuBLAS does not load (the own kernels then run everything,
// which the other tests cover).
func needCUBLAS(t testing.TB, d *Device) {
	t.Helper()
	if err := loadBLAS(); err != nil {
		t.Skipf("cuBLAS not available, cuBLAS test skipped: %v", err)
	}
}

// f16u is the unit roundoff of F16 (11-bit significand).
const f16u = 1.0 / (1 << 11)

// TestMatMulCUBLAS: products that go to cuBLAS (F16 and Q8_0 weights, n at and above the
// threshold, aligned and misaligned activations with a row stride) against a float64
// reference, twice (bit-identical), with Q8_0 weights dequantized per product and from the
// kept F16 copy (the same F16 weights: the same bits), and against the own kernels.
//
// Tolerance: cuBLAS multiplies the F16 roundings of x (and, for Q8_0, of each weight d*q)
// exactly and sums in float32. Rounding a normal value to F16 changes it by at most f16u
// relative; a value below 2^-14 (F16 subnormal) by at most 2^-25 absolute. So
// |gpu - ref| <= (c*f16u + (cols+8)*u) * sum|w*x| * (1+2*f16u) + 2^-25 * sum|w| * (1+f16u),
// c = 1 for F16 weights, 2 for Q8_0 (both operands rounded; the f16u^2 term is in the last
// factor), (cols+8)*u bounding float32 accumulation as TestMatMul does. Inputs keep every
// |x| <= 2^8 (F16's range ends at 65504). Against the own kernels (float32-level, bounded
// by (cols+8)*u*sum|w*x|): the sum of both bounds.
func TestMatMulCUBLAS(t *testing.T) {
	d := device(t)
	needCUBLAS(t, d)
	setGEMM(t, d, GEMMOptions{Mode: GEMMCUBLAS})
	minTok := d.GEMM().MinTokens
	s := newStream(t, d)
	r := rand.New(rand.NewPCG(21, 22))
	shapes := []struct{ rows, cols int }{{288, 288}, {100, 768}, {1000, 2048}, {130, 2080}}
	for _, ty := range []DType{F16, Q8_0} {
		c := 1.0
		if ty == Q8_0 {
			c = 2
		}
		for _, sh := range shapes {
			raw, wf := encode(r, ty, sh.rows, sh.cols)
			w, err := d.UploadWeights(ty, sh.rows, sh.cols, raw)
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range []int{minTok, minTok + 1, 70} {
				for _, mis := range []int{0, 1} {
					name := fmt.Sprintf("%v/%dx%d/n%d/mis%d", ty, sh.rows, sh.cols, n, mis)
					xstride := sh.cols + 3*mis
					x := randF32(r, n*xstride+mis, 1)
					if mis == 1 { // magnitudes 2^-8 .. 2^8 (subnormal F16 roundings included)
						for i := range x {
							x[i] = float32(math.Ldexp(float64(x[i]), r.IntN(17)-8))
						}
					}
					xb := devBuf(t, d, x, len(x))
					x = x[mis:]
					xp := xb.Ptr + DevPtr(4*mis)
					ob := devBuf(t, d, nil, n*sh.rows)
					calls := d.Stats.BLASCalls.Load()
					if err := s.MatMulStrided(ob.Ptr, sh.rows, w, xp, xstride, n); err != nil {
						t.Fatal(name, err)
					}
					got := readF32(t, ob, 0, n*sh.rows)
					if d.Stats.BLASCalls.Load() != calls+1 {
						t.Fatalf("%s: the product did not go to cuBLAS", name)
					}
					worst := 0.0
					for tk := 0; tk < n; tk++ {
						for row := 0; row < sh.rows; row++ {
							var ref, mag, wsum float64
							for col := 0; col < sh.cols; col++ {
								wv, xv := float64(wf[row*sh.cols+col]), float64(x[tk*xstride+col])
								ref += wv * xv
								mag += math.Abs(wv * xv)
								wsum += math.Abs(wv)
							}
							tol := (c*f16u+float64(sh.cols+8)*u32)*mag*(1+2*f16u) + 0x1p-25*wsum*(1+f16u)
							g := float64(got[tk*sh.rows+row])
							if !(math.Abs(g-ref) <= tol) {
								t.Fatalf("%s: out[%d][%d] = %g, ref %g, |diff| %g > tol %g", name, tk, row, g, ref, math.Abs(g-ref), tol)
							}
							if mag > 0 {
								worst = max(worst, math.Abs(g-ref)/mag)
							}
						}
					}
					// The same call again: the same bits.
					if err := s.MatMulStrided(ob.Ptr, sh.rows, w, xp, xstride, n); err != nil {
						t.Fatal(err)
					}
					if i := bitsEqual(got, readF32(t, ob, 0, n*sh.rows)); i >= 0 {
						t.Fatalf("%s: second cuBLAS run differs at %d", name, i)
					}
					if ty == Q8_0 { // the kept F16 copy holds the same F16 weights
						mustSetGEMM(t, d, GEMMOptions{Mode: GEMMCUBLAS, Q8Copy: true})
						if err := s.MatMulStrided(ob.Ptr, sh.rows, w, xp, xstride, n); err != nil {
							t.Fatal(err)
						}
						if i := bitsEqual(got, readF32(t, ob, 0, n*sh.rows)); i >= 0 {
							t.Fatalf("%s: the kept F16 copy gives other bits than per-product dequantization (at %d)", name, i)
						}
						mustSetGEMM(t, d, GEMMOptions{Mode: GEMMCUBLAS})
					}
					// The own kernels: within both bounds.
					mustSetGEMM(t, d, GEMMOptions{Mode: GEMMOwn})
					if err := s.MatMulStrided(ob.Ptr, sh.rows, w, xp, xstride, n); err != nil {
						t.Fatal(err)
					}
					own := readF32(t, ob, 0, n*sh.rows)
					mustSetGEMM(t, d, GEMMOptions{Mode: GEMMCUBLAS})
					for i := range own {
						tk, row := i/sh.rows, i%sh.rows
						var mag, wsum float64
						for col := 0; col < sh.cols; col++ {
							wv := float64(wf[row*sh.cols+col])
							mag += math.Abs(wv * float64(x[tk*xstride+col]))
							wsum += math.Abs(wv)
						}
						tol := (c*f16u+2*float64(sh.cols+8)*u32)*mag*(1+2*f16u) + 0x1p-25*wsum*(1+f16u)
						if diff := math.Abs(float64(own[i]) - float64(got[i])); !(diff <= tol) {
							t.Fatalf("%s: own %g vs cuBLAS %g at token %d row %d: |diff| %g > %g", name, own[i], got[i], tk, row, diff, tol)
						}
					}
					if testing.Verbose() && mis == 0 && n == 70 {
						t.Logf("%s: max |cublas-ref|/sum|wx| = %.3g (F16 unit roundoff %.3g)", name, worst, f16u)
					}
					xb.Free()
					ob.Free()
				}
			}
			if ty == Q8_0 && w.DeviceBytes() != sh.rows*sh.cols*3+sh.rows*sh.cols/32*2 {
				t.Errorf("Q8_0 %dx%d: %d device bytes with the F16 copy, want quants + scales + copy", sh.rows, sh.cols, w.DeviceBytes())
			}
			w.Free()
		}
	}
}

// cublasLogitBound bounds max |logits(cuBLAS) - logits(own)| / RMS(logits(own)) for the tiny
// model's 40-token prefill (TestCUBLASModel).
//
// Why 2e-2: the two differ by the F16 rounding of every product's activations (and, for Q8_0,
// weights): at most f16u ≈ 4.9e-4 relative per element, ≈ 2.8e-4 RMS (uniform rounding
// error). For dot products of independent signs that is a relative error of ≈ 3e-4 of a
// product's RMS output; 6 layers × 3 products in sequence (qkv → o, gate/up → down) add
// roughly as independent noise: ≈ sqrt(18) × 3e-4 ≈ 1.3e-3 (×√2 for Q8_0's rounded
// weights) of the RMS, and the largest of 32,000 logits deviates ≈ 4.5× that: ≈ 6-8e-3.
// F16 KV roundings landing on the other side of a boundary add at most one F16 ulp per
// element. 2e-2 keeps ≈ 2.5× over that estimate; an error in the cuBLAS call (a transposed
// operand, a wrong stride or length) gives O(1) differences and fails it by far.
const cublasLogitBound = 2e-2

// TestCUBLASModel runs the tiny model (F16 and Q8_0 weights, f16 KV) through the engine with
// cuBLAS products (GEMMCUBLAS) and with the own kernels: the cuBLAS runs give bit-identical
// logits and KV bytes twice (same inputs, same calls), their logits agree with the own
// kernels' within cublasLogitBound, and the prefill reached cuBLAS.
func TestCUBLASModel(t *testing.T) {
	d := device(t)
	needCUBLAS(t, d)
	own := newCUDABackendOpts(t, BackendOptions{GEMM: &GEMMOptions{Mode: GEMMOwn}})
	bl := newCUDABackendOpts(t, BackendOptions{GEMM: &GEMMOptions{Mode: GEMMCUBLAS}})
	for _, typ := range []gguf.Type{gguf.TypeF16, gguf.TypeQ8_0} {
		path := synthModel(t, "tiny", typ)
		prompt := promptTokens(40, 32000)
		calls := bl.d.Stats.BLASCalls.Load()
		c1 := runModel(t, bl, path, engine.KVF16, prompt, 8, false)
		if bl.d.Stats.BLASCalls.Load() == calls {
			t.Fatalf("%v: no product went to cuBLAS", typ)
		}
		c2 := runModel(t, bl, path, engine.KVF16, prompt, 8, false)
		if bitsEqual(c1.logits, c2.logits) >= 0 || bitsEqual(c1.last, c2.last) >= 0 || string(c1.kv) != string(c2.kv) {
			t.Fatalf("%v: two cuBLAS runs of the same inputs differ", typ)
		}
		o := runModel(t, own, path, engine.KVF16, prompt, 0, false)
		var ss, worst float64
		for i := range o.logits {
			ss += float64(o.logits[i]) * float64(o.logits[i])
			worst = max(worst, math.Abs(float64(o.logits[i])-float64(c1.logits[i])))
		}
		rms := math.Sqrt(ss / float64(len(o.logits)))
		sameKV := string(o.kv) == string(c1.kv)
		t.Logf("%v: max |cublas-own| logit / RMS = %.3g (bound %.0e; RMS %.3g); KV bytes equal to the own kernels': %v", typ, worst/rms, cublasLogitBound, rms, sameKV)
		if !(worst <= cublasLogitBound*rms) {
			t.Fatalf("%v: cuBLAS logits differ from the own kernels' by %.3g of their RMS (bound %.0e)", typ, worst/rms, cublasLogitBound)
		}
	}
}

// TestGEMMOptionsFromEnv: the settings parse as documented and bad values are errors (no GPU).
func TestGEMMOptionsFromEnv(t *testing.T) {
	cases := []struct {
		mode, min, q8, attn string
		want                GEMMOptions
		bad                 bool
	}{
		{want: GEMMOptions{Mode: GEMMAuto}},
		{mode: "own", want: GEMMOptions{Mode: GEMMOwn}},
		{mode: "cublas", min: "32", q8: "copy", want: GEMMOptions{Mode: GEMMCUBLAS, MinTokens: 32, Q8Copy: true}},
		{mode: "auto", q8: "dequant", want: GEMMOptions{Mode: GEMMAuto}},
		{mode: "fast", bad: true},
		{min: "1", bad: true},
		{min: "x", bad: true},
		{q8: "keep", bad: true},
		{attn: "64", want: GEMMOptions{AttnMinTokens: 64}},
		{attn: "1", bad: true},
		{attn: "many", bad: true},
	}
	for _, c := range cases {
		t.Setenv("DRIFTSTORE_CUDA_GEMM", c.mode)
		t.Setenv("DRIFTSTORE_CUDA_GEMM_MIN", c.min)
		t.Setenv("DRIFTSTORE_CUDA_GEMM_Q8", c.q8)
		t.Setenv("DRIFTSTORE_CUDA_ATTN_MIN", c.attn)
		got, err := gemmFromEnv()
		if c.bad {
			if err == nil {
				t.Errorf("%+v: no error", c)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%+v: got %+v, %v", c, got, err)
		}
	}
	for _, m := range []GEMMMode{GEMMAuto, GEMMOwn, GEMMCUBLAS} {
		if p, err := ParseGEMMMode(m.String()); err != nil || p != m {
			t.Errorf("%v: parses as %v, %v", m, p, err)
		}
	}
}

// TestBLASOpenMissing: a library that is not there is an error naming it, and leaves nothing
// loaded (no GPU; the process's real cuBLAS, if any, is loaded by loadBLAS only).
func TestBLASOpenMissing(t *testing.T) {
	const path = "/nonexistent/libcublas.so.13"
	err := blasOpen(path, "/nonexistent/libcublasLt.so.13")
	if err == nil {
		t.Fatal("opening a missing library succeeded")
	}
	if !strings.Contains(err.Error(), "nonexistent") {
		t.Errorf("error %q does not name the library", err)
	}
}
