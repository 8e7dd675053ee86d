package cuda

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// TestRMSNormBits checks the properties decode and prefill rely on: a row's RMSNorm bits do not
// depend on the number of rows in the launch or on the rows' alignment (float4 and scalar
// loads), and ds_add_rmsnorm (what a deferred stream records for Add followed by RMSNorm of its
// result) writes the bits of ds_add then ds_rmsnorm to both outputs. Dims: not a multiple of 4
// (scalar path), past the 4096 floats kept in registers, and the 1B shape's 2048.
func TestRMSNormBits(t *testing.T) {
	d := device(t)
	r := rand.New(rand.NewPCG(11, 12))
	for _, dim := range []int{288, 2048, 2050, 4608, 4102} {
		const n = 5
		x, y, w := randF32(r, n*dim, 3), randF32(r, n*dim, 2), randF32(r, dim, 1)
		// +1 float: every row of the shifted copies is misaligned for float4.
		xb, yb, wb := devBuf(t, d, append(x, 0), n*dim+1), devBuf(t, d, y, n*dim), devBuf(t, d, w, dim)
		sumb, outb := devBuf(t, d, nil, n*dim+1), devBuf(t, d, nil, n*dim+1)
		s := newStream(t, d)
		sync := func() {
			t.Helper()
			if err := s.Sync(); err != nil {
				t.Fatal(err)
			}
		}
		// Reference, eager: add then norm, n rows at once.
		if err := s.Add(sumb.Ptr, xb.Ptr, yb.Ptr, n*dim); err != nil {
			t.Fatal(err)
		}
		if err := s.RMSNorm(outb.Ptr, sumb.Ptr, wb.Ptr, dim, n, 1e-5); err != nil {
			t.Fatal(err)
		}
		sync()
		wantSum, want := readF32(t, sumb, 0, n*dim), readF32(t, outb, 0, n*dim)
		// Row by row, and misaligned by one float.
		sh := devBuf(t, d, nil, n*dim+1)
		if err := s.CopyAsync(sh.Ptr+4, sumb.Ptr, 4*n*dim); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < n; i++ {
			o := DevPtr(4 * i * dim)
			if err := s.RMSNorm(outb.Ptr+o, sumb.Ptr+o, wb.Ptr, dim, 1, 1e-5); err != nil {
				t.Fatal(err)
			}
		}
		sync()
		if i := bitsEqual(want, readF32(t, outb, 0, n*dim)); i >= 0 {
			t.Fatalf("dim %d: rmsnorm row by row differs at %d", dim, i)
		}
		if err := s.RMSNorm(sh.Ptr+4, sh.Ptr+4, wb.Ptr, dim, n, 1e-5); err != nil {
			t.Fatal(err)
		}
		sync()
		if i := bitsEqual(want, readF32(t, sh, 4, n*dim)); i >= 0 {
			t.Fatalf("dim %d: rmsnorm misaligned (in place) differs at %d", dim, i)
		}
		// Deferred: Add then RMSNorm of its output fuse into one ds_add_rmsnorm record.
		if err := s.SetDeferred(true); err != nil {
			t.Fatal(err)
		}
		xs := devBuf(t, d, x, n*dim)
		for _, shift := range []int{0, 1} {
			ob := DevPtr(0)
			if shift == 1 { // sum and out misaligned: the scalar path of the fused kernel
				if err := s.CopyAsync(sh.Ptr+4, xs.Ptr, 4*n*dim); err != nil {
					t.Fatal(err)
				}
				ob = 4
			} else if err := s.CopyAsync(sh.Ptr, xs.Ptr, 4*n*dim); err != nil {
				t.Fatal(err)
			}
			before := len(s.q.recs.fns)
			if err := s.Add(sh.Ptr+ob, sh.Ptr+ob, yb.Ptr, n*dim); err != nil {
				t.Fatal(err)
			}
			if err := s.RMSNorm(outb.Ptr+ob, sh.Ptr+ob, wb.Ptr, dim, n, 1e-5); err != nil {
				t.Fatal(err)
			}
			if got := len(s.q.recs.fns) - before; got != 1 || s.q.recs.fns[before] != d.fns["ds_add_rmsnorm"] {
				t.Fatalf("dim %d: add + rmsnorm recorded %d kernels, not one ds_add_rmsnorm", dim, got)
			}
			sync()
			if i := bitsEqual(wantSum, readF32(t, sh, int(ob), n*dim)); i >= 0 {
				t.Fatalf("dim %d shift %d: fused add differs at %d", dim, shift, i)
			}
			if i := bitsEqual(want, readF32(t, outb, int(ob), n*dim)); i >= 0 {
				t.Fatalf("dim %d shift %d: fused rmsnorm differs at %d", dim, shift, i)
			}
		}
		// An RMSNorm of anything else after an Add stays a separate launch.
		before := len(s.q.recs.fns)
		if err := s.Add(sh.Ptr, sh.Ptr, yb.Ptr, n*dim); err != nil {
			t.Fatal(err)
		}
		if err := s.RMSNorm(outb.Ptr, sh.Ptr, wb.Ptr, dim, n-1, 1e-5); err != nil {
			t.Fatal(err)
		}
		if got := len(s.q.recs.fns) - before; got != 2 {
			t.Fatalf("dim %d: add + rmsnorm of fewer rows recorded %d kernels, want 2", dim, got)
		}
		sync()
		if err := s.SetDeferred(false); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRoPEPairFused checks that a deferred stream records RoPE of queries then keys (same
// tokens and positions, disjoint rows) as one ds_rope2 with the bits of two ds_rope launches,
// and that RoPEs of overlapping rows stay two launches in order.
func TestRoPEPairFused(t *testing.T) {
	d := device(t)
	r := rand.New(rand.NewPCG(13, 14))
	const n, hq, hk, hd, pos0 = 3, 8, 2, 64, 77
	q, k := randF32(r, n*hq*hd, 2), randF32(r, n*hk*hd, 2)
	s := newStream(t, d)
	run := func(deferred bool) (gq, gk, twice []float32) {
		t.Helper()
		if err := s.SetDeferred(deferred); err != nil {
			t.Fatal(err)
		}
		qb, kb := devBuf(t, d, q, len(q)), devBuf(t, d, k, len(k))
		if err := s.RoPE(qb.Ptr, n, hq, hd, hq*hd, pos0, 500000); err != nil {
			t.Fatal(err)
		}
		before := 0
		if deferred {
			before = len(s.q.recs.fns)
		}
		if err := s.RoPE(kb.Ptr, n, hk, hd, hk*hd, pos0, 500000); err != nil {
			t.Fatal(err)
		}
		if deferred && (len(s.q.recs.fns) != before || s.q.recs.fns[before-1] != d.fns["ds_rope2"]) {
			t.Fatalf("rope of q then k: %d records after, want one ds_rope2", len(s.q.recs.fns)-before+1)
		}
		// The same rows twice: two rotations, in order.
		if err := s.RoPE(kb.Ptr, n, hk, hd, hk*hd, pos0, 500000); err != nil {
			t.Fatal(err)
		}
		if deferred && len(s.q.recs.fns) != before+1 {
			t.Fatalf("rope of the same rows again fused")
		}
		if err := s.Sync(); err != nil {
			t.Fatal(err)
		}
		gq, twice = readF32(t, qb, 0, len(q)), readF32(t, kb, 0, len(k))
		// Keys rotated once, for the comparison.
		kb2 := devBuf(t, d, k, len(k))
		if err := s.SetDeferred(false); err != nil {
			t.Fatal(err)
		}
		if err := s.RoPE(kb2.Ptr, n, hk, hd, hk*hd, pos0, 500000); err != nil {
			t.Fatal(err)
		}
		if err := s.Sync(); err != nil {
			t.Fatal(err)
		}
		return gq, readF32(t, kb2, 0, len(k)), twice
	}
	wq, wk, w2 := run(false)
	gq, gk, g2 := run(true)
	if i := bitsEqual(wq, gq); i >= 0 {
		t.Fatalf("fused rope: queries differ at %d", i)
	}
	if i := bitsEqual(wk, gk); i >= 0 {
		t.Fatalf("keys differ at %d", i)
	}
	if i := bitsEqual(w2, g2); i >= 0 {
		t.Fatalf("fused rope then rope again: keys differ at %d", i)
	}
	if bitsEqual(wk, w2) < 0 {
		t.Fatalf("keys rotated twice equal keys rotated once: the test checks nothing")
	}
}

// TestRoPEStoreKVFused checks that a deferred stream records RoPE of queries, RoPE of keys and
// StoreKV of those keys (decode's sequence) as one ds_rope_kv writing the bits of the three
// separate launches: queries, keys, and the KV blocks through both tables (F16 and F32 KV,
// tokens across a block boundary).
func TestRoPEStoreKVFused(t *testing.T) {
	d := device(t)
	r := rand.New(rand.NewPCG(15, 16))
	const n, hq, hk, hd, pos0 = 3, 8, 2, 64, 14
	q, k, v := randF32(r, n*hq*hd, 2), randF32(r, n*hk*hd, 2), randF32(r, n*hk*hd, 2)
	for _, kt := range []DType{F16, F32} {
		l := KVLayout{BlockSize: 16, NKVHeads: hk, HeadDim: hd, KVType: kt}
		bb := l.BlockBytes()
		s := newStream(t, d)
		run := func(deferred bool) [][]float32 {
			t.Helper()
			if err := s.SetDeferred(deferred); err != nil {
				t.Fatal(err)
			}
			qb, kb, vb := devBuf(t, d, q, len(q)), devBuf(t, d, k, len(k)), devBuf(t, d, v, len(v))
			blk := devBuf(t, d, nil, 4*bb/4) // 4 blocks: table 1 (0, 1), table 2 (2, 3)
			var tb [4 * 8]byte
			for i := range 4 {
				binary.LittleEndian.PutUint64(tb[8*i:], uint64(blk.Ptr)+uint64(i*bb))
			}
			tab, err := d.Alloc(len(tb))
			if err != nil {
				t.Fatal(err)
			}
			defer tab.Free()
			if err := tab.Upload(0, tb[:]); err != nil {
				t.Fatal(err)
			}
			if err := s.RoPE(qb.Ptr, n, hq, hd, hq*hd, pos0, 500000); err != nil {
				t.Fatal(err)
			}
			before := 0
			if deferred {
				before = len(s.q.recs.fns)
			}
			if err := s.RoPE(kb.Ptr, n, hk, hd, hk*hd, pos0, 500000); err != nil {
				t.Fatal(err)
			}
			if err := s.StoreKVTable2(kb.Ptr, vb.Ptr, n, pos0, l, tab.Ptr, tab.Ptr+16, 2); err != nil {
				t.Fatal(err)
			}
			if deferred && (len(s.q.recs.fns) != before || s.q.recs.fns[before-1] != d.fns["ds_rope_kv"]) {
				t.Fatalf("%v: rope q, rope k, store kv: %d records, want one ds_rope_kv", kt, len(s.q.recs.fns)-before+1)
			}
			if err := s.Sync(); err != nil {
				t.Fatal(err)
			}
			if err := s.SetDeferred(false); err != nil {
				t.Fatal(err)
			}
			return [][]float32{readF32(t, qb, 0, len(q)), readF32(t, kb, 0, len(k)), readF32(t, blk, 0, bb)}
		}
		want, got := run(false), run(true)
		for i, name := range []string{"queries", "keys", "KV blocks"} {
			if j := bitsEqual(want[i], got[i]); j >= 0 {
				t.Fatalf("%v: fused rope + store kv: %s differ at %d", kt, name, j)
			}
		}
		// Both tables were written, and the store wrote something.
		kv := f32Bytes(got[2])
		if !bytes.Equal(kv[:2*bb], kv[2*bb:]) {
			t.Fatalf("%v: the two block tables got different bytes", kt)
		}
		if bitsEqual(want[1], k) < 0 {
			t.Fatalf("keys not rotated: the test checks nothing")
		}
	}
}
