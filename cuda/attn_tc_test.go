package cuda

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/gguf"
)

// attnKV is a layer's KV cache of F16 values in blocks, with the float64 value of every element
// (the reference reads those).
type attnKV struct {
	l      KVLayout
	ctx    int
	k, v   []float64 // [pos][nkv][hd]
	bytes  []byte    // the blocks, in table order
	blocks []DevPtr  // on the device, in reverse memory order
}

// randHalf returns a random F16 in ±[2^-10, 1) and its value.
func randHalf(r *rand.Rand) (uint16, float64) {
	e := 5 + r.IntN(10) // biased exponent 5..14
	mant := r.IntN(1024)
	h := uint16(e<<10 | mant)
	v := (1 + float64(mant)/1024) * math.Ldexp(1, e-15)
	if r.IntN(2) == 1 {
		h |= 0x8000
		v = -v
	}
	return h, v
}

func newAttnKV(t testing.TB, d *Device, r *rand.Rand, l KVLayout, ctx int) *attnKV {
	t.Helper()
	kv := &attnKV{l: l, ctx: ctx}
	row := l.NKVHeads * l.HeadDim
	nb := ceilDiv(ctx, l.BlockSize)
	bb := l.BlockBytes()
	kv.k, kv.v = make([]float64, nb*l.BlockSize*row), make([]float64, nb*l.BlockSize*row)
	kv.bytes = make([]byte, nb*bb)
	for p := 0; p < nb*l.BlockSize; p++ {
		blk := kv.bytes[(p/l.BlockSize)*bb:]
		for e := 0; e < row; e++ {
			off := 2 * ((p%l.BlockSize)*row + e)
			hk, fk := randHalf(r)
			hv, fv := randHalf(r)
			binary.LittleEndian.PutUint16(blk[off:], hk)
			binary.LittleEndian.PutUint16(blk[bb/2+off:], hv)
			kv.k[p*row+e], kv.v[p*row+e] = fk, fv
		}
	}
	buf, err := d.Alloc(len(kv.bytes))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { buf.Free() })
	for b := 0; b < nb; b++ { // table entry b lies at memory block nb-1-b
		if err := buf.Upload((nb-1-b)*bb, kv.bytes[b*bb:(b+1)*bb]); err != nil {
			t.Fatal(err)
		}
		kv.blocks = append(kv.blocks, buf.Ptr+DevPtr((nb-1-b)*bb))
	}
	return kv
}

// attnRef is the float64 attention of one (token, head) at position pos and the error bound
// for ds_attn_tc's result (every element of the row within it).
//
// The bound: ds_attn_tc rounds q * scale * log2(e) to F16 (relative error u = 2^-11, or 2^-25
// absolute in F16's subnormal range) and sums the hd products in float32 on the tensor cores
// (at most hd * 2^-24 relative to sum|q*k|), so every score s_i is off by at most
// E = scale * ((u + hd*2^-24) * max_i sum_e |q_e k_ie| + hd * 2^-25 * max|k|) (natural-log
// units; exp2f adds ~2^-22 relative, inside the slack). Each weight is then exp(s_i - m) up
// to a factor within exp(±E) and rounded to F16 (factor 1 ± u); the output divides by the sum
// of the same rounded weights, so it is a convex combination whose weights are off by factors
// within exp(±2(E + u)): the output moves by at most (exp(4(E + u)) - 1) * max|v| ≈ 4(E + u)
// * max|v|. The weighted sums add ctx + hd float32 terms: (ctx + hd) * 2^-24 * max|v|. Twice
// that total, for the float32 steps not counted one by one.
func (kv *attnKV) attnRef(q []float32, kvh, pos int) (out []float64, tol float64) {
	l := kv.l
	hd, row := l.HeadDim, l.NKVHeads*l.HeadDim
	scale := 1 / math.Sqrt(float64(hd))
	s := make([]float64, pos+1)
	m := math.Inf(-1)
	var sumAbs, maxK, maxV float64
	for p := 0; p <= pos; p++ {
		var dot, abs float64
		kp := kv.k[p*row+kvh*hd:]
		for e := 0; e < hd; e++ {
			dot += float64(q[e]) * kp[e]
			abs += math.Abs(float64(q[e]) * kp[e])
			maxK = max(maxK, math.Abs(kp[e]))
			maxV = max(maxV, math.Abs(kv.v[p*row+kvh*hd+e]))
		}
		s[p] = dot * scale
		m = max(m, s[p])
		sumAbs = max(sumAbs, abs)
	}
	out = make([]float64, hd)
	var sum float64
	for p := 0; p <= pos; p++ {
		w := math.Exp(s[p] - m)
		sum += w
		vp := kv.v[p*row+kvh*hd:]
		for e := 0; e < hd; e++ {
			out[e] += w * vp[e]
		}
	}
	for e := range out {
		out[e] /= sum
	}
	const u = 1.0 / 2048
	E := scale * ((u+float64(hd)/(1<<24))*sumAbs + float64(hd)/(1<<25)*maxK)
	tol = 2 * (4*(E+u) + float64(pos+1+hd)/(1<<24)) * maxV
	return out, tol
}

// runTC runs ds_attn_tc directly and returns its output.
func runTC(t testing.TB, s *Stream, kv *attnKV, q *Buffer, n, nheads, pos0 int) []float32 {
	t.Helper()
	o := devBuf(t, s.d, nil, n*nheads*kv.l.HeadDim)
	defer o.Free()
	tab, err := s.blockTable(kv.blocks[:ceilDiv(pos0+n, kv.l.BlockSize)])
	if err != nil {
		t.Fatal(err)
	}
	if err := s.attentionTC(o.Ptr, q.Ptr, n, nheads, pos0, kv.l, tab); err != nil {
		t.Fatal(err)
	}
	return readF32(t, o, 0, n*nheads*kv.l.HeadDim)
}

// TestAttentionTC checks ds_attn_tc against a float64 reference (attnRef's bound) for 1 to
// 1100 query tokens, from position 0 and after a prefix (pos0 > 0, as after a restore), up to
// 4096 positions; two score spreads (q in ±1: flat weights; q in ±12: a few positions carry
// most of the weight, so a position wrongly in or out of the mask shows); three GQA shapes.
// Then: the same bits twice, a token's output independent of the batch it came in (the same
// query rows in a batch of 1000 from position 0 and of 900 from 100), and KV blocks at 2-byte
// aligned host addresses (the kernel's unaligned load path) giving the same bits.
func TestAttentionTC(t *testing.T) {
	d := device(t)
	s := newStream(t, d)
	r := rand.New(rand.NewPCG(61, 62))
	shapes := []struct {
		heads, nkv, hd int
		steps          [][2]int // (pos0, n)
	}{
		{32, 8, 64, [][2]int{{0, 1}, {0, 15}, {0, 16}, {0, 17}, {0, 100}, {0, 1000}, {1, 16}, {63, 17}, {64, 100}, {1500, 17}, {1536, 512}, {2996, 1100}}},
		{6, 6, 48, [][2]int{{0, 1}, {0, 17}, {0, 200}, {37, 100}, {900, 65}}},
		{8, 2, 128, [][2]int{{0, 16}, {0, 130}, {500, 33}}},
	}
	for _, sh := range shapes {
		l := KVLayout{BlockSize: 16, NKVHeads: sh.nkv, HeadDim: sh.hd, KVType: F16}
		ctx := 0
		for _, st := range sh.steps {
			ctx = max(ctx, st[0]+st[1])
		}
		kv := newAttnKV(t, d, r, l, ctx)
		G := sh.heads / sh.nkv
		for _, qs := range []float32{1, 12} {
			for _, st := range sh.steps {
				pos0, n := st[0], st[1]
				name := fmt.Sprintf("h%d/kv%d/hd%d/q%g/pos%d/n%d", sh.heads, sh.nkv, sh.hd, qs, pos0, n)
				rowLen := sh.heads * sh.hd
				q := randF32(r, n*rowLen, qs)
				qb := devBuf(t, d, q, len(q))
				got := runTC(t, s, kv, qb, n, sh.heads, pos0)
				// Every token for small batches; for large ones the first and last 24 and every
				// 29th (all heads of each).
				worst := 0.0
				for tok := 0; tok < n; tok++ {
					if n > 100 && tok >= 24 && tok < n-24 && tok%29 != 0 {
						continue
					}
					for h := 0; h < sh.heads; h++ {
						off := (tok*sh.heads + h) * sh.hd
						want, tol := kv.attnRef(q[off:off+sh.hd], h/G, pos0+tok)
						for e, w := range want {
							diff := math.Abs(float64(got[off+e]) - w)
							worst = max(worst, diff/tol)
							if !(diff <= tol) {
								t.Fatalf("%s: token %d head %d elem %d: %g, float64 %g, |diff| %.3g > tol %.3g", name, tok, h, e, got[off+e], w, diff, tol)
							}
						}
					}
				}
				if again := runTC(t, s, kv, qb, n, sh.heads, pos0); bitsEqual(got, again) >= 0 {
					t.Fatalf("%s: a second run gives other bits", name)
				}
				if n >= 200 { // the same rows, in a batch that starts 100 tokens later
					rest := runTC(t, s, kv, &Buffer{Ptr: qb.Ptr + DevPtr(4*100*rowLen)}, n-100, sh.heads, pos0+100)
					if i := bitsEqual(got[100*rowLen:], rest); i >= 0 {
						t.Fatalf("%s: token %d's output differs when its batch starts at token 100", name, 100+i/rowLen)
					}
				}
				qb.Free()
				if n >= 100 || n == 17 {
					t.Logf("%s: max |tc - float64| / bound = %.3g", name, worst)
				}
			}
		}
		// The same blocks in registered host memory at 2-byte aligned addresses.
		reg := NewRegistrar(d)
		bb := l.BlockBytes()
		host := hostMem(t, len(kv.bytes)+4096)
		copy(host[2:], kv.bytes)
		if err := reg.Register(addr(host), len(host)); err != nil {
			t.Fatal(err)
		}
		odd := &attnKV{l: l, ctx: ctx}
		for b := range kv.blocks {
			p, err := reg.DevPtr(addr(host), 2+b*bb, bb)
			if err != nil {
				t.Fatal(err)
			}
			odd.blocks = append(odd.blocks, p)
		}
		last := sh.steps[len(sh.steps)-1]
		q := randF32(r, last[1]*sh.heads*sh.hd, 1)
		qb := devBuf(t, d, q, len(q))
		if i := bitsEqual(runTC(t, s, kv, qb, last[1], sh.heads, last[0]), runTC(t, s, odd, qb, last[1], sh.heads, last[0])); i >= 0 {
			t.Fatalf("h%d/kv%d/hd%d: KV at unaligned host addresses gives other bits at %d", sh.heads, sh.nkv, sh.hd, i)
		}
		qb.Free()
		if err := s.Sync(); err != nil {
			t.Fatal(err)
		}
		if err := reg.Unregister(addr(host)); err != nil {
			t.Fatal(err)
		}
	}
}

// gridHalf encodes k/1024 (|k| <= 1023) as F16, exactly (k has at most 10 significant bits).
func gridHalf(k int) uint16 {
	if k == 0 {
		return 0
	}
	var sign uint16
	if k < 0 {
		sign, k = 0x8000, -k
	}
	e := 0 // k = 2^e * (1 + mant/1024) with 0 <= e <= 9
	for k>>(e+1) != 0 {
		e++
	}
	mant := (k << (10 - e)) & 0x3ff
	return sign | uint16(e-10+15)<<10 | uint16(mant)
}

// TestAttentionTCMask checks the causal mask and the position bookkeeping exactly: with q = 0
// every score is 0, so every weight of a visible position is exp2(0) = 1 (exact in F16) and
// every masked one 0, and with V on the grid k/1024 every partial sum of P V (at most 4096
// positions, |sum| < 2^12, a multiple of 2^-10: 22 bits) is exact in float32. The output is
// then the mean of V over exactly positions 0..pos, up to the final division (1/l, then one
// product: within 2^-22 relative). One position too many or too few moves it by about
// |v|/ctx, at least 2^-10/4096 = 2^-22 absolute and far more in most of the 64 columns.
func TestAttentionTCMask(t *testing.T) {
	d := device(t)
	s := newStream(t, d)
	r := rand.New(rand.NewPCG(65, 66))
	for _, sh := range []struct {
		heads, nkv, hd int
		steps          [][2]int
	}{
		{32, 8, 64, [][2]int{{0, 1}, {0, 100}, {63, 17}, {64, 64}, {1000, 1}, {2996, 1100}}},
		{6, 6, 48, [][2]int{{0, 70}, {37, 100}}},
	} {
		l := KVLayout{BlockSize: 16, NKVHeads: sh.nkv, HeadDim: sh.hd, KVType: F16}
		kv := newAttnKV(t, d, r, l, 4096)
		// V on the grid, in the blocks and in the reference.
		row, bb := sh.nkv*sh.hd, l.BlockBytes()
		nb := len(kv.blocks)
		for p := 0; p < nb*l.BlockSize; p++ {
			for e := 0; e < row; e++ {
				k := r.IntN(2047) - 1023
				binary.LittleEndian.PutUint16(kv.bytes[(p/l.BlockSize)*bb+bb/2+2*((p%l.BlockSize)*row+e):], gridHalf(k))
				kv.v[p*row+e] = float64(k) / 1024
			}
		}
		for b := 0; b < nb; b++ {
			mem := Buffer{d: d, Ptr: kv.blocks[b], Len: bb}
			if err := mem.Upload(0, kv.bytes[b*bb:(b+1)*bb]); err != nil {
				t.Fatal(err)
			}
		}
		G := sh.heads / sh.nkv
		for _, st := range sh.steps {
			pos0, n := st[0], st[1]
			qb := devBuf(t, d, make([]float32, n*sh.heads*sh.hd), n*sh.heads*sh.hd)
			got := runTC(t, s, kv, qb, n, sh.heads, pos0)
			qb.Free()
			sum := make([]float64, row) // over positions 0..pos: exact in float64 too
			for p := 0; p < pos0; p++ {
				for i := range sum {
					sum[i] += kv.v[p*row+i]
				}
			}
			for tok := 0; tok < n; tok++ {
				pos := pos0 + tok
				for i := range sum {
					sum[i] += kv.v[pos*row+i]
				}
				for h := 0; h < sh.heads; h++ {
					for e := 0; e < sh.hd; e++ {
						want := sum[(h/G)*sh.hd+e] / float64(pos+1)
						g := float64(got[(tok*sh.heads+h)*sh.hd+e])
						if !(math.Abs(g-want) <= math.Abs(want)/(1<<22)) {
							t.Fatalf("hd%d pos%d n%d: token %d head %d elem %d: %g, exact mean of positions 0..%d %g", sh.hd, pos0, n, tok, h, e, g, pos, want)
						}
					}
				}
			}
		}
	}
}

// TestAttentionDispatch: Stream.Attention takes ds_attn_tc exactly where the options say (mode
// auto or cublas, at least AttnMinTokens tokens, F16 KV), else ds_attn_mq's bits.
func TestAttentionDispatch(t *testing.T) {
	d := device(t)
	s := newStream(t, d)
	r := rand.New(rand.NewPCG(63, 64))
	l := KVLayout{BlockSize: 16, NKVHeads: 8, HeadDim: 64, KVType: F16}
	kv := newAttnKV(t, d, r, l, 600)
	const heads = 32
	attn := func(n, pos0 int) []float32 {
		q := randF32(rand.New(rand.NewPCG(uint64(n), uint64(pos0))), n*heads*64, 1)
		qb := devBuf(t, d, q, len(q))
		defer qb.Free()
		o := devBuf(t, d, nil, len(q))
		defer o.Free()
		if err := s.Attention(o.Ptr, qb.Ptr, n, heads, pos0, l, kv.blocks); err != nil {
			t.Fatal(err)
		}
		return readF32(t, o, 0, len(q))
	}
	cases := []struct{ n, pos0 int }{{15, 0}, {16, 0}, {40, 500}}
	ref := map[[2]int][]float32{}
	setGEMM(t, d, GEMMOptions{Mode: GEMMOwn})
	for _, c := range cases {
		ref[[2]int{c.n, c.pos0}] = attn(c.n, c.pos0)
	}
	for _, o := range []GEMMOptions{{Mode: GEMMAuto, AttnMinTokens: 16}, {Mode: GEMMAuto, AttnMinTokens: 41}} {
		mustSetGEMM(t, d, o)
		for _, c := range cases {
			before := d.Stats.AttnTC.Load()
			got := attn(c.n, c.pos0)
			tc := d.Stats.AttnTC.Load() > before
			if want := c.n >= o.AttnMinTokens; tc != want {
				t.Fatalf("%+v, n %d: tensor-core attention %v, want %v", o, c.n, tc, want)
			}
			if same := bitsEqual(got, ref[[2]int{c.n, c.pos0}]) < 0; same == tc {
				t.Fatalf("%+v, n %d: tensor cores %v, bits equal to ds_attn_mq's %v", o, c.n, tc, same)
			}
		}
	}
}

// TestAttnTCModel runs the tiny model (hd 48, no GQA; f16 KV) with its 40-token prefill's
// attention on the tensor cores (mode auto, AttnMinTokens 16, products on the own kernels) and
// with everything on the own kernels: two runs give the same bits, the logits lie within cublasLogitBound of the own
// kernels' RMS (the same budget: F16 rounding of queries and weights adds one more 2^-11
// relative perturbation per layer, like cuBLAS's activation rounding), and the batched run's
// KV bytes differ from token-by-token feeding's only because of it (a restored instance
// continues as the captured one: TestGPUReport).
func TestAttnTCModel(t *testing.T) {
	own := newCUDABackendOpts(t, BackendOptions{GEMM: &GEMMOptions{Mode: GEMMOwn}})
	// Products on the own kernels (MinTokens past any batch): only attention differs.
	tc := newCUDABackendOpts(t, BackendOptions{GEMM: &GEMMOptions{Mode: GEMMAuto, MinTokens: 1 << 30, AttnMinTokens: 16}})
	for _, typ := range []gguf.Type{gguf.TypeF16, gguf.TypeQ8_0} {
		path := synthModel(t, "tiny", typ)
		prompt := promptTokens(40, 32000)
		before := tc.d.Stats.AttnTC.Load()
		c1 := runModel(t, tc, path, engine.KVF16, prompt, 8, false)
		if tc.d.Stats.AttnTC.Load() == before {
			t.Fatalf("%v: no attention ran on the tensor cores", typ)
		}
		c2 := runModel(t, tc, path, engine.KVF16, prompt, 8, false)
		if bitsEqual(c1.logits, c2.logits) >= 0 || bitsEqual(c1.last, c2.last) >= 0 || string(c1.kv) != string(c2.kv) {
			t.Fatalf("%v: two runs of the same inputs differ", typ)
		}
		o := runModel(t, own, path, engine.KVF16, prompt, 0, false)
		var ss, worst float64
		for i := range o.logits {
			ss += float64(o.logits[i]) * float64(o.logits[i])
			worst = max(worst, math.Abs(float64(o.logits[i])-float64(c1.logits[i])))
		}
		rms := math.Sqrt(ss / float64(len(o.logits)))
		t.Logf("%v: max |attn-tc - own| logit / RMS = %.3g (bound %.0e; RMS %.3g)", typ, worst/rms, cublasLogitBound, rms)
		if !(worst <= cublasLogitBound*rms) {
			t.Fatalf("%v: logits differ from the own kernels' by %.3g of their RMS (bound %.0e)", typ, worst/rms, cublasLogitBound)
		}
	}
}
