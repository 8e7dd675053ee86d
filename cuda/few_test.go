package cuda

import (
	"bytes"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// TestFewTokenFused: on a deferred stream, consecutive few-token products of the same
// activations (q, k, v; gate, up) are recorded as one launch (ds_tcq on the tensor cores,
// ds_mvm on the CUDA cores) that writes, for every product, the bits of its own launch on an
// eager stream: F16 and Q8_0, n = 1, 3, 8, aligned and misaligned activations, partial row
// tiles and segments, every ds_tcq instance with its segment sums added in shared memory and
// across blocks. Products that must not share a launch (an output overlapping the input, other
// activations, a fourth product) are recorded separately and still give the eager bits.
func TestFewTokenFused(t *testing.T) {
	d := device(t)
	ownGEMM(t, d)
	r := rand.New(rand.NewPCG(21, 22))
	type shape struct {
		rows []int
		cols int
	}
	shapes := []shape{{[]int{1000, 130, 48}, 2080}, {[]int{2048, 512, 512}, 2048}, {[]int{2200, 2200}, 512}, {[]int{64, 300}, 8192},
		{[]int{6000, 64, 520}, 4096}} // CUDA cores: one warp per row at 2200x512 (mvSplit), split elsewhere
	type variant struct {
		name  string
		cores bool
		force [2]int
	}
	variants := []variant{{"tc", false, [2]int{}}, {"cores", true, [2]int{}}}
	for _, rr := range []int{1, 2, 4} {
		for _, nsg := range []int{1, 2, 3} {
			variants = append(variants, variant{name: "tcq", force: [2]int{rr, nsg}})
		}
	}
	defer func() { d.tcqForce = [2]int{} }()
	eager, fused := newStream(t, d), newStream(t, d)
	if err := fused.SetDeferred(true); err != nil {
		t.Fatal(err)
	}
	// Scratch for segment sums across blocks, allocated now: growing it later would issue the
	// recorded product the next one is to join (fuseFew then launches them separately).
	if err := fused.tcScratch(8<<20, 64<<10); err != nil {
		t.Fatal(err)
	}
	for _, ty := range []DType{F16, Q8_0} {
		for _, sh := range shapes {
			ws := make([]*Weights, len(sh.rows))
			for i, rows := range sh.rows {
				raw, _ := encode(r, ty, rows, sh.cols)
				w, err := d.UploadWeights(ty, rows, sh.cols, raw)
				if err != nil {
					t.Fatal(err)
				}
				defer w.Free()
				ws[i] = w
			}
			if !d.tensorCores(ws[0]) {
				t.Skipf("%v not on the tensor cores (DRIFTSTORE_CUDA_TC=0?)", ty)
			}
			x := randF32(r, 8*sh.cols+1, 1)
			for i := range x {
				x[i] = float32(math.Ldexp(float64(x[i]), r.IntN(41)-20))
			}
			xb := devBuf(t, d, x, len(x))
			for _, v := range variants {
				nseg := ceilDiv(sh.cols/32, 8)
				if v.force[0] > 0 && (v.force[1] > nseg || ceilDiv(nseg, ceilDiv(nseg, v.force[1])) != v.force[1] ||
					(v.force[1] == 1 && v.force[0]*nseg*512 > 48<<10)) {
					continue // an empty segment group, or sums past 48 KB of shared memory
				}
				for _, w := range ws {
					w.CUDACores = v.cores
				}
				d.tcqForce = v.force
				for _, n := range []int{1, 3, 8} {
					for _, mis := range []int{0, 1} {
						xp := xb.Ptr + DevPtr(4*mis)
						outs := make([]*Buffer, len(ws))
						want := make([][]float32, len(ws))
						for i, w := range ws {
							ref := devBuf(t, d, nil, n*w.Rows)
							if err := eager.MatMul(ref.Ptr, w, xp, n); err != nil {
								t.Fatal(err)
							}
							want[i] = readF32(t, ref, 0, n*w.Rows)
							ref.Free()
							outs[i] = devBuf(t, d, nil, n*w.Rows)
						}
						before := len(fused.q.recs.fns)
						for i, w := range ws {
							if err := fused.MatMul(outs[i].Ptr, w, xp, n); err != nil {
								t.Fatal(err)
							}
						}
						if got := len(fused.q.recs.fns) - before; got != 1 {
							t.Errorf("%v %v %s%v n=%d: %d products recorded as %d launches, want 1", ty, sh.rows, v.name, v.force, n, len(ws), got)
						}
						if err := fused.Sync(); err != nil {
							t.Fatal(err)
						}
						for i, w := range ws {
							if j := bitsEqual(want[i], readF32(t, outs[i], 0, n*w.Rows)); j >= 0 {
								t.Errorf("%v %v %s%v n=%d mis%d: product %d, token %d row %d differs from its own launch",
									ty, sh.rows, v.name, v.force, n, mis, i, j/w.Rows, j%w.Rows)
							}
							outs[i].Free()
						}
					}
				}
			}
			for _, w := range ws {
				w.CUDACores = false
			}
			d.tcqForce = [2]int{}
		}
	}

	// What must not share a launch. x is [2][cols]; products of 2 tokens.
	raw, _ := encode(r, F16, 256, 256)
	w, err := d.UploadWeights(F16, 256, 256, raw)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Free()
	for _, cores := range []bool{false, true} {
		w.CUDACores = cores
		x := randF32(r, 4*256, 1)
		run := func(s *Stream) (a, b, c, e []float32, launches int) {
			t.Helper()
			buf := devBuf(t, d, x, len(x)) // x at 0, then room for outputs: [4][256]
			o1, o2, o3, o4 := devBuf(t, d, nil, 512), devBuf(t, d, nil, 512), devBuf(t, d, nil, 512), devBuf(t, d, nil, 512)
			before := 0
			if s.q != nil {
				before = len(s.q.recs.fns)
			}
			steps := []struct {
				out, x DevPtr
			}{
				{o1.Ptr, buf.Ptr},
				{buf.Ptr + 4*256, buf.Ptr}, // overwrites the input's second token: not joined
				{o2.Ptr, buf.Ptr},          // joins nothing before it (the last one overlaps x); starts a group
				{o3.Ptr, buf.Ptr + 4*512},  // other activations: not joined
				{o4.Ptr, buf.Ptr + 4*512},  // joins the one before
			}
			for _, st := range steps {
				if err := s.MatMulStrided(st.out, 256, w, st.x, 256, 2); err != nil {
					t.Fatal(err)
				}
			}
			if s.q != nil {
				launches = len(s.q.recs.fns) - before
			}
			if err := s.Sync(); err != nil {
				t.Fatal(err)
			}
			return readF32(t, o1, 0, 512), readF32(t, o2, 0, 512), readF32(t, o3, 0, 512), readF32(t, buf, 0, 1024), launches
		}
		a1, b1, c1, e1, _ := run(eager)
		a2, b2, c2, e2, n := run(fused)
		if n != 4 {
			t.Errorf("cores %v: 5 products recorded as %d launches, want 4 (only the last two joined)", cores, n)
		}
		for i, p := range [][2][]float32{{a1, a2}, {b1, b2}, {c1, c2}, {e1, e2}} {
			if j := bitsEqual(p[0], p[1]); j >= 0 {
				t.Errorf("cores %v: output %d differs at %d from the eager stream's", cores, i, j)
			}
		}
	}
	w.CUDACores = false
}

// TestFewCoresAuto: with cuBLAS taking the batches (GEMM auto), few-token products of
// tensor-core weights run on the CUDA cores (few.go) and a token's bits do not depend on n up
// to tcvMaxTokens; with DRIFTSTORE_CUDA_FEW=tc (fewTC) they are the tensor-core kernels' bits.
func TestFewCoresAuto(t *testing.T) {
	d := device(t)
	needCUBLAS(t, d)
	setGEMM(t, d, GEMMOptions{Mode: GEMMAuto})
	saved := d.fewTC
	defer func() { d.fewTC = saved }()
	r := rand.New(rand.NewPCG(23, 24))
	s := newStream(t, d)
	for _, ty := range []DType{F16, Q8_0} {
		raw, _ := encode(r, ty, 1000, 2048)
		w, err := d.UploadWeights(ty, 1000, 2048, raw)
		if err != nil {
			t.Fatal(err)
		}
		x := randF32(r, 8*2048, 1)
		xb := devBuf(t, d, x, len(x))
		product := func(n int, cores bool) []float32 {
			t.Helper()
			w.CUDACores = cores
			defer func() { w.CUDACores = false }()
			ob := devBuf(t, d, nil, n*1000)
			defer ob.Free()
			if err := s.MatMul(ob.Ptr, w, xb.Ptr, n); err != nil {
				t.Fatal(err)
			}
			return readF32(t, ob, 0, n*1000)
		}
		d.fewTC = false
		if !d.fewCores(w) {
			t.Fatalf("%v: GEMM auto with cuBLAS loaded, few-token products not on the CUDA cores", ty)
		}
		batch := product(8, false)
		one := product(1, false)
		if i := bitsEqual(batch[:1000], one); i >= 0 {
			t.Errorf("%v: token 0 alone differs from the batch of 8 at row %d", ty, i)
		}
		if i := bitsEqual(one, product(1, true)); i >= 0 {
			t.Errorf("%v: one token differs from the CUDA-core kernel's at row %d", ty, i)
		}
		d.fewTC = true
		if d.fewCores(w) {
			t.Fatalf("%v: fewTC set, few-token products still on the CUDA cores", ty)
		}
		tc := product(1, false)
		if bitsEqual(one, tc) < 0 {
			t.Errorf("%v: tensor-core and CUDA-core products have the same bits: the test checks nothing", ty)
		}
		d.fewTC = saved
		w.Free()
		xb.Free()
	}
}

// TestSwiGLUFused: gate and up on the CUDA cores then SwiGLU in place over gate's output, on a
// deferred stream, are recorded as one ds_mvsw launch that leaves gate's and up's outputs with
// the bits of the three separate launches on an eager stream (F16 and Q8_0, n = 1, 3, 8,
// aligned and misaligned activations, a partial block of rows); a SwiGLU into another buffer
// is not fused and gives the eager bits too.
func TestSwiGLUFused(t *testing.T) {
	d := device(t)
	ownGEMM(t, d)
	r := rand.New(rand.NewPCG(25, 26))
	eager, fused := newStream(t, d), newStream(t, d)
	if err := fused.SetDeferred(true); err != nil {
		t.Fatal(err)
	}
	// 1000x992: one warp per row; 1002x4128: split (mvSplit: 8 F16, 4 Q8_0), a partial block.
	for _, sh := range [][2]int{{1000, 992}, {1002, 4128}} {
		rows, cols := sh[0], sh[1]
		for _, ty := range []DType{F16, Q8_0} {
			var ws [2]*Weights
			for i := range ws {
				raw, _ := encode(r, ty, rows, cols)
				w, err := d.UploadWeights(ty, rows, cols, raw)
				if err != nil {
					t.Fatal(err)
				}
				defer w.Free()
				w.CUDACores = true
				ws[i] = w
			}
			x := randF32(r, 8*cols+1, 1)
			xb := devBuf(t, d, x, len(x))
			for _, n := range []int{1, 3, 8} {
				for _, mis := range []int{0, 1} {
					for _, inPlace := range []bool{true, false} {
						xp := xb.Ptr + DevPtr(4*mis)
						run := func(s *Stream) (g, u, o []float32, launches int) {
							t.Helper()
							gb, ub, ob := devBuf(t, d, nil, n*rows), devBuf(t, d, nil, n*rows), devBuf(t, d, nil, n*rows)
							defer gb.Free()
							defer ub.Free()
							defer ob.Free()
							out := ob.Ptr
							if inPlace {
								out = gb.Ptr
							}
							before := 0
							if s.q != nil {
								before = len(s.q.recs.fns)
							}
							if err := s.MatMul(gb.Ptr, ws[0], xp, n); err != nil {
								t.Fatal(err)
							}
							if err := s.MatMul(ub.Ptr, ws[1], xp, n); err != nil {
								t.Fatal(err)
							}
							if err := s.SwiGLU(out, gb.Ptr, ub.Ptr, n*rows); err != nil {
								t.Fatal(err)
							}
							if s.q != nil {
								launches = len(s.q.recs.fns) - before
							}
							if err := s.Sync(); err != nil {
								t.Fatal(err)
							}
							return readF32(t, gb, 0, n*rows), readF32(t, ub, 0, n*rows), readF32(t, ob, 0, n*rows), launches
						}
						g1, u1, o1, _ := run(eager)
						g2, u2, o2, k := run(fused)
						want := 2
						if inPlace {
							want = 1
						}
						if k != want {
							t.Errorf("%v n=%d in place %v: %d launches, want %d", ty, n, inPlace, k, want)
						}
						for i, p := range [][2][]float32{{g1, g2}, {u1, u2}, {o1, o2}} {
							if j := bitsEqual(p[0], p[1]); j >= 0 {
								t.Errorf("%v n=%d mis%d in place %v: output %d differs from the separate launches' at token %d row %d",
									ty, n, mis, inPlace, i, j/rows, j%rows)
							}
						}
					}
				}
			}
			xb.Free()
		}
	}
}

// TestMVKernelNames needs no GPU: every kernel the CUDA-core GEMV paths can name (ds_mvm,
// ds_mvsw; F16 and Q8_0, 1 or 8 tokens a block, vectorized or not, with the type's row split
// or without) is an entry of the embedded PTX, named for its type, tokens and loads.
func TestMVKernelNames(t *testing.T) {
	seen := map[string]bool{}
	for _, name := range []func(DType, int, bool) string{mvmName, mvswName} {
		for _, typ := range []DType{F16, Q8_0} {
			split := map[DType]int{F16: 8, Q8_0: 4}[typ]
			for _, nt := range []int{1, 8} {
				for _, vec := range []bool{false, true} {
					for _, sp := range []int{1, split} {
						base := name(typ, nt, vec)
						want := map[DType]string{F16: "_f16_", Q8_0: "_q8_"}[typ] + map[int]string{1: "1x1", 8: "1x8"}[nt]
						if vec {
							want += "v"
						}
						if !strings.HasSuffix(base, want) {
							t.Errorf("%s for type %v, %d tokens, vec %v: want a name ending %q", base, typ, nt, vec, want)
						}
						n := base + mvSuffix(sp)
						if seen[n] {
							t.Fatalf("%s named twice", n)
						}
						seen[n] = true
						if !bytes.Contains(kernelsPTX, []byte(".entry "+n+"(")) {
							t.Errorf("%s (type %v, %d tokens, vec %v, split %d) is not in the PTX", n, typ, nt, vec, sp)
						}
					}
				}
			}
		}
	}
}
