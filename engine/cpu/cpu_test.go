package cpu

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/driftstore/driftstore/gguf/dtype"
)

// u is the unit roundoff of float32.
const u = 1.0 / (1 << 24)

// forEachBackend runs f with the SIMD kernels (when the CPU has them) and
// with the portable ones.
func forEachBackend(t *testing.T, f func(t *testing.T)) {
	t.Helper()
	if simdAvailable {
		t.Run("avx2", f)
	}
	setGeneric(true)
	defer setGeneric(false)
	t.Run("generic", f)
}

func randVec(r *rand.Rand, n int, scale float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64() * scale)
	}
	return v
}

// encode writes vals (rows×cols) in type t and returns the weights and the
// values they actually hold (decoded plainly here, independent of the
// kernels' decoders).
func encode(t DType, rows, cols int, vals []float32) (*Weights, []float64) {
	w := &Weights{Type: t, Rows: rows, Cols: cols}
	dec := make([]float64, rows*cols)
	switch t {
	case F32:
		w.Data = make([]byte, rows*cols*4)
		for i, v := range vals {
			binary.LittleEndian.PutUint32(w.Data[4*i:], math.Float32bits(v))
			dec[i] = float64(v)
		}
	case F16:
		w.Data = make([]byte, rows*cols*2)
		for i, v := range vals {
			h := dtype.F32ToF16(v)
			binary.LittleEndian.PutUint16(w.Data[2*i:], h)
			dec[i] = refHalf(h)
		}
	case BF16:
		w.Data = make([]byte, rows*cols*2)
		for i, v := range vals {
			h := uint16(math.Float32bits(v) >> 16) // truncation is a valid encoding too
			binary.LittleEndian.PutUint16(w.Data[2*i:], h)
			dec[i] = float64(math.Float32frombits(uint32(h) << 16))
		}
	case Q8_0:
		nb := cols / 32
		w.Data = make([]byte, rows*nb*34)
		for r := 0; r < rows; r++ {
			for b := 0; b < nb; b++ {
				blk := w.Data[(r*nb+b)*34:]
				src := vals[r*cols+b*32 : r*cols+b*32+32]
				amax := 0.0
				for _, v := range src {
					amax = math.Max(amax, math.Abs(float64(v)))
				}
				dh := dtype.F32ToF16(float32(amax / 127))
				binary.LittleEndian.PutUint16(blk, dh)
				d := refHalf(dh)
				for i, v := range src {
					q := 0.0
					if d != 0 {
						q = math.Max(-127, math.Min(127, math.Round(float64(v)/d)))
					}
					blk[2+i] = byte(int8(q))
					// The format's value is the float32 product d*q.
					dec[r*cols+b*32+i] = float64(float32(d) * float32(q))
				}
			}
		}
	}
	return w, dec
}

// refHalf decodes binary16 with float64 arithmetic, straight from the
// definition.
func refHalf(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	e := int(h>>10) & 0x1f
	m := float64(h & 0x3ff)
	switch e {
	case 0x1f:
		if m != 0 {
			return math.NaN()
		}
		return sign * math.Inf(1)
	case 0:
		return sign * m * math.Pow(2, -24)
	}
	return sign * (1 + m/1024) * math.Pow(2, float64(e-15))
}

func TestHalfConversions(t *testing.T) {
	// f16 -> f32 is exact for every half (gguf/dtype's conversions; the C
	// kernels' own are compared with them below).
	for h := 0; h < 1<<16; h++ {
		got, want := float64(dtype.F16ToF32(uint16(h))), refHalf(uint16(h))
		if math.IsNaN(want) {
			if !math.IsNaN(got) {
				t.Fatalf("half %#04x: got %v, want NaN", h, got)
			}
			continue
		}
		if got != want || math.Signbit(got) != math.Signbit(want) {
			t.Fatalf("half %#04x: got %v, want %v", h, got, want)
		}
		// Round trip.
		if back := dtype.F32ToF16(float32(got)); back != uint16(h) {
			t.Fatalf("half %#04x round trips to %#04x", h, back)
		}
	}
	// f32 -> f16 rounds to nearest, ties to even: compare with the two
	// neighbouring halves, for random values over the whole range and
	// exact midpoints.
	r := rand.New(rand.NewPCG(1, 2))
	check := func(f float32) {
		h := dtype.F32ToF16(f)
		got := refHalf(h)
		x := float64(f)
		if math.Abs(x) >= 65520 { // rounds to infinity
			if !math.IsInf(got, 0) || math.Signbit(got) != math.Signbit(x) {
				t.Fatalf("%v -> %#04x (%v), want infinity", f, h, got)
			}
			return
		}
		// Neighbours of h towards zero and away.
		for _, n := range []uint16{h - 1, h + 1} {
			if n&0x7c00 == 0x7c00 || (h&0x7fff == 0 && n == h-1) {
				continue
			}
			alt := refHalf(n)
			dg, da := math.Abs(got-x), math.Abs(alt-x)
			if da < dg || (da == dg && h&1 == 1) {
				t.Fatalf("%v -> %#04x (%v), but %#04x (%v) is nearer or even", f, h, got, n, alt)
			}
		}
	}
	for i := 0; i < 200000; i++ {
		check(math.Float32frombits(r.Uint32() & 0xc7ffffff)) // |x| < 2^17 or so
		check(float32(r.NormFloat64() * math.Pow(2, float64(r.IntN(40)-30))))
	}
	for h := uint16(0); h < 0x7bff; h++ { // midpoints between consecutive halves
		check(float32((refHalf(h) + refHalf(h+1)) / 2))
	}
	// The Go conversion and the C one (hardware F16C where present) agree.
	src := make([]float32, 0, 100000)
	for i := 0; i < 100000; i++ {
		src = append(src, math.Float32frombits(r.Uint32()))
	}
	src = append(src, 0, float32(math.Copysign(0, -1)), float32(math.Inf(1)), float32(math.Inf(-1)), 65504, 65520, 65519.99, 1e-8, 2.98e-8, 5.96e-8)
	forEachBackend(t, func(t *testing.T) {
		hs := make([]uint16, len(src))
		cToF16(hs, src)
		for i, f := range src {
			if want := dtype.F32ToF16(f); hs[i] != want && !(math.IsNaN(float64(f)) && hs[i]&0x7e00 == 0x7e00) {
				t.Fatalf("%v (%#08x): C gives %#04x, Go %#04x", f, math.Float32bits(f), hs[i], want)
			}
		}
		all := make([]uint16, 1<<16)
		for i := range all {
			all[i] = uint16(i)
		}
		fs := make([]float32, len(all))
		cToF32(fs, all)
		for i, h := range all {
			want := dtype.F16ToF32(h)
			if math.IsNaN(float64(want)) && math.IsNaN(float64(fs[i])) {
				continue // the hardware quiets signaling NaNs
			}
			if math.Float32bits(fs[i]) != math.Float32bits(want) {
				t.Fatalf("%#04x: C gives %#08x, Go %#08x", h, math.Float32bits(fs[i]), math.Float32bits(want))
			}
		}
	})
}

func TestValidate(t *testing.T) {
	cases := []struct {
		w  Weights
		ok bool
	}{
		{Weights{F32, 2, 3, make([]byte, 24)}, true},
		{Weights{F32, 2, 3, make([]byte, 23)}, false},
		{Weights{F16, 2, 3, make([]byte, 12)}, true},
		{Weights{BF16, 2, 3, make([]byte, 13)}, false},
		{Weights{Q8_0, 2, 64, make([]byte, 136)}, true},
		{Weights{Q8_0, 2, 48, make([]byte, 102)}, false},
		{Weights{DType(2), 1, 32, make([]byte, 20)}, false},
		{Weights{F32, -1, 3, nil}, false},
		{Weights{F32, 0, 0, nil}, true},
	}
	for _, c := range cases {
		err := c.w.Validate()
		if (err == nil) != c.ok {
			t.Errorf("%v %d×%d len %d: err %v, want ok=%v", c.w.Type, c.w.Rows, c.w.Cols, len(c.w.Data), err, c.ok)
		}
	}
}

// dotBound is a rigorous bound on the float32 rounding error of the
// canonical dot product of length k: each lane sums ceil(k/8) products
// sequentially, the tree adds 3 levels, the tail up to 7 more steps; every
// step adds at most u relative to the running sum of absolute values. So
// |err| <= (k/8 + 11) * u * sum |w_c x_c| (+ a little for first-order terms).
func dotBound(k int, absSum float64) float64 {
	return float64(k/8+12) * u * absSum * 1.01
}

func TestMatMul(t *testing.T) {
	pools := []*Pool{NewPool(1), NewPool(2), NewPool(3)}
	defer func() {
		for _, p := range pools {
			p.Close()
		}
	}()
	r := rand.New(rand.NewPCG(3, 4))
	type shape struct{ rows, cols int }
	forEachBackend(t, func(t *testing.T) {
		for _, typ := range []DType{F32, F16, BF16, Q8_0} {
			// Odd row counts, columns below, at and across the 8-lane and
			// 256-column chunk boundaries, and over 1024 rows (larger units).
			shapes := []shape{{1, 1}, {5, 7}, {37, 40}, {5, 300}, {37, 520}, {4, 8}, {1030, 20}}
			if typ == Q8_0 {
				shapes = []shape{{1, 32}, {5, 96}, {37, 544}, {17, 288}, {1030, 32}}
			}
			for _, sh := range shapes {
				vals := randVec(r, sh.rows*sh.cols, 0.5)
				w, dec := encode(typ, sh.rows, sh.cols, vals)
				for _, n := range []int{1, 2, 3, 4, 17, 100} {
					name := fmt.Sprintf("%v/%dx%d/n=%d", typ, sh.rows, sh.cols, n)
					x := randVec(r, n*sh.cols, 1)
					var first []float32
					for _, p := range pools {
						out := make([]float32, n*sh.rows+3)
						for i := range out {
							out[i] = float32(math.NaN())
						}
						p.MatMul(out, w, x, n)
						if !math.IsNaN(float64(out[n*sh.rows])) {
							t.Fatalf("%s: wrote past n*rows", name)
						}
						out = out[:n*sh.rows]
						if first == nil {
							first = out
							checkMatMul(t, name, out, dec, x, sh.rows, sh.cols, n)
							continue
						}
						if i, ok := sameBits(first, out); !ok {
							t.Fatalf("%s: %d threads differ from 1 thread at %d: %v vs %v", name, p.Threads(), i, out[i], first[i])
						}
					}
					// Batch invariance: each token alone gives the same bits.
					if n > 1 && (n <= 4 || n == 17) {
						one := make([]float32, sh.rows)
						for tk := 0; tk < n; tk++ {
							pools[1].MatMul(one, w, x[tk*sh.cols:(tk+1)*sh.cols], 1)
							if i, ok := sameBits(first[tk*sh.rows:(tk+1)*sh.rows], one); !ok {
								t.Fatalf("%s: token %d alone differs at row %d: %v vs %v", name, tk, i, one[i], first[tk*sh.rows+i])
							}
						}
					}
				}
			}
		}
	})
}

func checkMatMul(t *testing.T, name string, out []float32, w []float64, x []float32, rows, cols, n int) {
	t.Helper()
	for tk := 0; tk < n; tk++ {
		for r := 0; r < rows; r++ {
			var ref, abs float64
			for c := 0; c < cols; c++ {
				p := w[r*cols+c] * float64(x[tk*cols+c])
				ref += p
				abs += math.Abs(p)
			}
			got := float64(out[tk*rows+r])
			if d := math.Abs(got - ref); d > dotBound(cols, abs) {
				t.Fatalf("%s: out[%d][%d] = %v, want %v (err %g > %g)", name, tk, r, got, ref, d, dotBound(cols, abs))
			}
		}
	}
}

func sameBits(a, b []float32) (int, bool) {
	if len(a) != len(b) {
		return -1, false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return i, false
		}
	}
	return 0, true
}

func TestRMSNorm(t *testing.T) {
	p := NewPool(2)
	defer p.Close()
	r := rand.New(rand.NewPCG(5, 6))
	for _, sh := range [][2]int{{1, 1}, {1, 288}, {17, 2048}, {3, 5}} {
		n, dim := sh[0], sh[1]
		x := randVec(r, n*dim, 2)
		wt := randVec(r, dim, 1)
		out := make([]float32, n*dim)
		p.RMSNorm(out, x, wt, n, dim, 1e-5)
		alias := append([]float32(nil), x...)
		p.RMSNorm(alias, alias, wt, n, dim, 1e-5)
		if i, ok := sameBits(out, alias); !ok {
			t.Fatalf("aliased result differs at %d", i)
		}
		for tk := 0; tk < n; tk++ {
			var ss float64
			for _, v := range x[tk*dim : (tk+1)*dim] {
				ss += float64(v) * float64(v)
			}
			s := 1 / math.Sqrt(ss/float64(dim)+1e-5)
			for i := 0; i < dim; i++ {
				ref := float64(x[tk*dim+i]) * s * float64(wt[i])
				// The scale and two products are each rounded once to
				// float32: 3 roundings.
				if d := math.Abs(float64(out[tk*dim+i]) - ref); d > 4*u*math.Abs(ref) {
					t.Fatalf("%dx%d: out[%d][%d] = %v, want %v", n, dim, tk, i, out[tk*dim+i], ref)
				}
			}
		}
	}
}

func TestRoPE(t *testing.T) {
	p := NewPool(2)
	defer p.Close()
	r := rand.New(rand.NewPCG(7, 8))
	for _, c := range []struct{ n, heads, hd, pos0 int }{{1, 1, 2, 0}, {17, 4, 64, 5}, {3, 6, 48, 1000}, {2, 32, 64, 130000}} {
		const base = 500000
		x := randVec(r, c.n*c.heads*c.hd, 1)
		got := append([]float32(nil), x...)
		p.RoPE(got, c.n, c.heads, c.hd, c.pos0, base)
		for tk := 0; tk < c.n; tk++ {
			pos := float64(c.pos0 + tk)
			for h := 0; h < c.heads; h++ {
				for i := 0; i < c.hd/2; i++ {
					theta := pos * math.Pow(base, -2*float64(i)/float64(c.hd))
					j := tk*c.heads*c.hd + h*c.hd + 2*i
					x0, x1 := float64(x[j]), float64(x[j+1])
					r0 := x0*math.Cos(theta) - x1*math.Sin(theta)
					r1 := x0*math.Sin(theta) + x1*math.Cos(theta)
					// Computed in float64 and rounded once; allow two
					// float32 ulps of the pair's magnitude.
					tol := 2 * u * (math.Abs(x0) + math.Abs(x1))
					if math.Abs(float64(got[j])-r0) > tol || math.Abs(float64(got[j+1])-r1) > tol {
						t.Fatalf("%+v: token %d head %d pair %d: got (%v, %v), want (%v, %v)", c, tk, h, i, got[j], got[j+1], r0, r1)
					}
				}
			}
		}
		// Row t of a batch equals the row rotated alone at pos0+t.
		for tk := 0; tk < c.n; tk++ {
			row := append([]float32(nil), x[tk*c.heads*c.hd:(tk+1)*c.heads*c.hd]...)
			p.RoPE(row, 1, c.heads, c.hd, c.pos0+tk, base)
			if i, ok := sameBits(row, got[tk*c.heads*c.hd:(tk+1)*c.heads*c.hd]); !ok {
				t.Fatalf("%+v: token %d alone differs at %d", c, tk, i)
			}
		}
	}
}

func TestAttention(t *testing.T) {
	pools := []*Pool{NewPool(1), NewPool(2), NewPool(3)}
	defer func() {
		for _, p := range pools {
			p.Close()
		}
	}()
	r := rand.New(rand.NewPCG(9, 10))
	type tc struct {
		bs, nkv, ratio, hd, pos0, n int
		kv                          DType
	}
	var cases []tc
	for _, bs := range []int{16, 32} {
		for _, kv := range []DType{F16, F32} {
			for _, ratio := range []int{1, 4} {
				for _, pn := range [][2]int{{0, 1}, {0, 17}, {13, 17}, {30, 1}, {40, 33}} {
					cases = append(cases, tc{bs, 2, ratio, 64, pn[0], pn[1], kv})
				}
			}
		}
	}
	// Head dims with fewer than, more than and not a multiple of 8 lanes.
	cases = append(cases, tc{16, 3, 2, 12, 5, 20, F16}, tc{16, 1, 1, 4, 0, 3, F32},
		tc{16, 2, 3, 48, 7, 9, F16}, tc{32, 1, 2, 136, 30, 5, F32}, tc{16, 1, 1, 70, 3, 6, F16})
	forEachBackend(t, func(t *testing.T) {
		for _, c := range cases {
			name := fmt.Sprintf("%+v", c)
			l := KVLayout{BlockSize: c.bs, NKVHeads: c.nkv, HeadDim: c.hd, KVType: c.kv}
			heads := c.nkv * c.ratio
			total := c.pos0 + c.n
			kvRow := c.nkv * c.hd
			k := randVec(r, total*kvRow, 1)
			v := randVec(r, total*kvRow, 1)
			q := randVec(r, c.n*heads*c.hd, 1)
			nb := (total + c.bs - 1) / c.bs
			blocks := make([][]byte, nb+1) // one unused block past the end
			for b := range blocks {
				blocks[b] = make([]byte, l.BlockBytes())
			}
			// Store the history in uneven pieces, crossing block boundaries.
			for pos := 0; pos < total; {
				m := min(1+r.IntN(20), total-pos)
				StoreKV(l, blocks, k[pos*kvRow:], v[pos*kvRow:], m, pos)
				pos += m
			}
			// The cache holds k and v rounded to the KV type.
			kd, vd := roundKV(k, c.kv), roundKV(v, c.kv)
			checkStored(t, name, l, blocks, kd, vd, total)

			var first []float32
			for _, p := range pools {
				out := make([]float32, c.n*heads*c.hd)
				p.Attention(out, q, c.n, heads, c.pos0, l, blocks[:nb])
				if first == nil {
					first = out
					checkAttention(t, name, out, q, kd, vd, c.n, heads, c.nkv, c.hd, c.pos0)
					continue
				}
				if i, ok := sameBits(first, out); !ok {
					t.Fatalf("%s: %d threads differ at %d", name, p.Threads(), i)
				}
			}
			// One row at a time gives the same bits as the batch.
			row := heads * c.hd
			for tk := 0; tk < c.n; tk++ {
				one := make([]float32, row)
				pools[1].Attention(one, q[tk*row:(tk+1)*row], 1, heads, c.pos0+tk, l, blocks)
				if i, ok := sameBits(one, first[tk*row:(tk+1)*row]); !ok {
					t.Fatalf("%s: row %d alone differs at %d", name, tk, i)
				}
			}
		}
	})
}

func roundKV(x []float32, t DType) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		if t == F16 {
			out[i] = refHalf(dtype.F32ToF16(v))
		} else {
			out[i] = float64(v)
		}
	}
	return out
}

func checkStored(t *testing.T, name string, l KVLayout, blocks [][]byte, k, v []float64, total int) {
	t.Helper()
	es := 4
	if l.KVType == F16 {
		es = 2
	}
	read := func(b []byte) float64 {
		if es == 2 {
			return refHalf(binary.LittleEndian.Uint16(b))
		}
		return float64(math.Float32frombits(binary.LittleEndian.Uint32(b)))
	}
	for pos := 0; pos < total; pos++ {
		blk := blocks[pos/l.BlockSize]
		o := pos % l.BlockSize
		for h := 0; h < l.NKVHeads; h++ {
			for d := 0; d < l.HeadDim; d++ {
				i := (pos*l.NKVHeads+h)*l.HeadDim + d
				ko := ((o*l.NKVHeads+h)*l.HeadDim + d) * es
				vo := l.BlockSize*l.NKVHeads*l.HeadDim*es + ko
				if read(blk[ko:]) != k[i] || read(blk[vo:]) != v[i] {
					t.Fatalf("%s: stored K/V at pos %d head %d dim %d wrong", name, pos, h, d)
				}
			}
		}
	}
}

// checkAttention compares with a float64 evaluation over the stored K/V.
// Tolerance: each score is a dot product of length hd (error <= dotBound)
// times the scale; a score error e changes a softmax weight by a relative
// factor of at most about 2e (it enters numerator and normalizer); the
// float32 exponentials, the running sum over ctx terms and the weighted sum
// of V over ctx terms add at most (ctx + 10) u relative to sum w_p |v_p|.
func checkAttention(t *testing.T, name string, out, q []float32, k, v []float64, n, heads, nkv, hd, pos0 int) {
	t.Helper()
	ratio := heads / nkv
	scale := 1 / math.Sqrt(float64(hd))
	for tk := 0; tk < n; tk++ {
		ctx := pos0 + tk + 1
		for h := 0; h < heads; h++ {
			g := h / ratio
			qh := q[(tk*heads+h)*hd : (tk*heads+h+1)*hd]
			s := make([]float64, ctx)
			maxErr, m := 0.0, math.Inf(-1)
			for p := 0; p < ctx; p++ {
				var dot, abs float64
				for d := 0; d < hd; d++ {
					x := float64(qh[d]) * k[(p*nkv+g)*hd+d]
					dot += x
					abs += math.Abs(x)
				}
				s[p] = dot * scale
				maxErr = math.Max(maxErr, dotBound(hd, abs)*scale+2*u*math.Abs(s[p]))
				m = math.Max(m, s[p])
			}
			var sum float64
			for p := range s {
				s[p] = math.Exp(s[p] - m)
				sum += s[p]
			}
			for d := 0; d < hd; d++ {
				var ref, abs float64
				for p := 0; p < ctx; p++ {
					x := s[p] / sum * v[(p*nkv+g)*hd+d]
					ref += x
					abs += math.Abs(x)
				}
				tol := (4*maxErr + float64(ctx+10)*u*2) * abs
				got := float64(out[(tk*heads+h)*hd+d])
				if math.Abs(got-ref) > tol+1e-30 {
					t.Fatalf("%s: out[%d][head %d][%d] = %v, want %v (tol %g)", name, tk, h, d, got, ref, tol)
				}
			}
		}
	}
}

func TestSwiGLUAddSoftmax(t *testing.T) {
	p := NewPool(2)
	defer p.Close()
	r := rand.New(rand.NewPCG(11, 12))
	forEachBackend(t, func(t *testing.T) {
		for _, n := range []int{1, 7, 100000} {
			g := randVec(r, n, 3)
			up := randVec(r, n, 1)
			g[0] = -100 // exp(-g) overflows float32
			if n > 1 {
				g[1] = 95
			}
			out := make([]float32, n)
			p.SwiGLU(out, g, up)
			alias := append([]float32(nil), g...)
			p.SwiGLU(alias, alias, up)
			if i, ok := sameBits(out, alias); !ok {
				t.Fatalf("n=%d: aliased SwiGLU differs at %d", n, i)
			}
			for i := range out {
				x := float64(g[i])
				ref := x / (1 + math.Exp(-x)) * float64(up[i])
				// exp is within 3 ulp (libm's expf within 1, the SIMD
				// polynomial within 3); its relative error shrinks in 1+e,
				// then the add, divide and multiply round: <= 6u; 8u leaves
				// room. Where exp(-g) overflows (g < -88.7) the result is
				// -0: absolute error below 88.8*e^-88.7 < 3e-37.
				if d := math.Abs(float64(out[i]) - ref); d > 8*u*math.Abs(ref)+3e-37 {
					t.Fatalf("n=%d: swiglu[%d] = %v (g %v), want %v", n, i, out[i], g[i], ref)
				}
			}

			dst := append([]float32(nil), g...)
			Add(dst, up)
			for i := range dst {
				if dst[i] != g[i]+up[i] {
					t.Fatalf("add[%d]", i)
				}
			}

			x := randVec(r, n, 4)
			if n > 1 {
				x[n-1] = 150 // everything else lands below exp's normal range
			}
			sm := append([]float32(nil), x...)
			Softmax(sm)
			m := math.Inf(-1)
			for _, v := range x {
				m = math.Max(m, float64(v))
			}
			var sum float64
			for _, v := range x {
				sum += math.Exp(float64(v) - m)
			}
			for i, v := range x {
				ref := math.Exp(float64(v)-m) / sum
				// float32 exp (<= 3 ulp) of the rounded difference (its
				// rounding amplified by |x-m|), one rounded product with the
				// float64-derived 1/sum (2 roundings): (5 + |x-m|) u, with a
				// margin; values whose float32 result would be below the
				// normal range (1.2e-38) may come out as 0.
				tol := (8+math.Abs(float64(v)-m))*u*ref + 1.2e-38
				if d := math.Abs(float64(sm[i]) - ref); d > tol {
					t.Fatalf("n=%d: softmax[%d] = %v, want %v", n, i, sm[i], ref)
				}
			}
		}
	})
}

func TestEmbed(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	for _, typ := range []DType{F32, F16, BF16, Q8_0} {
		rows, cols := 50, 64
		w, dec := encode(typ, rows, cols, randVec(r, rows*cols, 1))
		ids := []int32{0, 49, 7, 7}
		out := make([]float32, len(ids)*cols)
		Embed(out, w, ids)
		for i, id := range ids {
			for c := 0; c < cols; c++ {
				if float64(out[i*cols+c]) != dec[int(id)*cols+c] {
					t.Fatalf("%v: id %d col %d: %v, want %v", typ, id, c, out[i*cols+c], dec[int(id)*cols+c])
				}
			}
		}
	}
}

func TestPanicsOnBadArguments(t *testing.T) {
	p := NewPool(2)
	defer p.Close()
	w := &Weights{Type: F32, Rows: 4, Cols: 8, Data: make([]byte, 128)}
	l := KVLayout{BlockSize: 16, NKVHeads: 1, HeadDim: 8, KVType: F16}
	blocks := [][]byte{make([]byte, l.BlockBytes())}
	cases := map[string]func(){
		"matmul short out": func() { p.MatMul(make([]float32, 7), w, make([]float32, 16), 2) },
		"matmul short x":   func() { p.MatMul(make([]float32, 8), w, make([]float32, 15), 2) },
		"matmul bad data":  func() { p.MatMul(make([]float32, 4), &Weights{F32, 4, 8, make([]byte, 127)}, make([]float32, 8), 1) },
		"attention past":   func() { p.Attention(make([]float32, 8), make([]float32, 8), 1, 1, 16, l, blocks) },
		"attention gqa": func() {
			p.Attention(make([]float32, 24), make([]float32, 24), 1, 3, 0, KVLayout{16, 2, 8, F16}, blocks)
		},
		"store short blk": func() { StoreKV(l, [][]byte{make([]byte, 10)}, make([]float32, 8), make([]float32, 8), 1, 0) },
		"store bad type":  func() { StoreKV(KVLayout{16, 1, 8, BF16}, blocks, make([]float32, 8), make([]float32, 8), 1, 0) },
		"embed bad id":    func() { Embed(make([]float32, 8), w, []int32{4}) },
		"rope short":      func() { p.RoPE(make([]float32, 7), 1, 1, 8, 0, 10000) },
	}
	for name, f := range cases {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f()
		}()
	}
}

func TestPoolClose(t *testing.T) {
	p := NewPool(3)
	r := rand.New(rand.NewPCG(15, 16))
	w, _ := encode(F16, 64, 256, randVec(r, 64*256, 1))
	x := randVec(r, 8*256, 1)
	a, b := make([]float32, 8*64), make([]float32, 8*64)
	p.MatMul(a, w, x, 8)
	p.Close()
	p.Close()
	p.MatMul(b, w, x, 8) // still works, on the caller alone
	if i, ok := sameBits(a, b); !ok {
		t.Fatalf("after Close: differs at %d", i)
	}
}

func TestPoolConcurrentCallers(t *testing.T) {
	p := NewPool(2)
	defer p.Close()
	r := rand.New(rand.NewPCG(17, 18))
	w, _ := encode(Q8_0, 96, 256, randVec(r, 96*256, 1))
	x := randVec(r, 5*256, 1)
	want := make([]float32, 5*96)
	p.MatMul(want, w, x, 5)
	errs := make(chan error, 4)
	for g := 0; g < 4; g++ {
		go func() {
			out := make([]float32, 5*96)
			for i := 0; i < 20; i++ {
				p.MatMul(out, w, x, 5)
				if j, ok := sameBits(want, out); !ok {
					errs <- fmt.Errorf("concurrent call differs at %d", j)
					return
				}
			}
			errs <- nil
		}()
	}
	for g := 0; g < 4; g++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
