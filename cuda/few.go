package cuda

import (
	"fmt"
	"os"
)

// Few-token products: which kernels run them, and one launch for several products of the same
// activations.
//
// Decode multiplies one token by each layer's matrices; q, k and v read the same input, and so
// do gate and up. On a deferred stream, a few-token product that arrives right after another
// of the same activations (the same x, row stride and n; the same column count and weight
// type; nothing queued in between; outputs disjoint from each other and from x) replaces that
// product's unissued launch with one launch for both (up to three): ds_tcq on the tensor
// cores, ds_mvm on the CUDA cores. Each product's outputs are the bits its own launch gives
// (the kernels keep the per-element order of operations: kernels.cu), so fusing changes the
// number of launches, not the results. Measured on an H100 in CUDA graphs
// (docs/bench/cuda-notes-2026-11-26.md, "ds_tcq"): q, k, v of the 1B shape in one ds_tcq launch
// 8.6 µs against 16.6 in three ds_tcr launches.
//
// Gate and up on the CUDA cores followed by the SwiGLU of the two, in place over gate's output
// (the guest's order), become one launch too (ds_mvsw; fuseSwiGLU).
//
// Which kernels: tensor-core weights (Device.tensorCores) take the tensor-core kernels at every
// n, so that a token's bits do not depend on its batch; except where cuBLAS takes every batch
// the few-token kernels do not (GEMM auto or cublas with cuBLAS loaded and MinTokens at most
// tcvMaxTokens+1): batches then have cuBLAS's bits anyway, and the few-token products run on
// the CUDA cores (ds_mv, ds_mvm), which stream large matrices faster at one token on an H100
// (gate and up of the 1B shape: 25.8 µs against 29.5 F16, 17.4 against 23.2 Q8_0). Within
// n <= tcvMaxTokens a token's bits still do not depend on n. DRIFTSTORE_CUDA_FEW=tc keeps them
// on the tensor cores.

// fewMat is one product of a fused few-token launch.
type fewMat struct {
	out     DevPtr
	ostride int
	w       *Weights
}

// fewRec describes the few-token product (or fused products) recorded last.
type fewRec struct {
	seq     uint64
	rec     int
	cores   bool
	x       DevPtr
	xstride int
	n       int
	nmat    int
	mats    [3]fewMat
}

// parseFewMode reads DRIFTSTORE_CUDA_FEW: "" or "auto" (CUDA cores where cuBLAS takes the
// batches), "tc" (tensor cores always). It returns whether the tensor cores are forced.
func parseFewMode(v string) (forceTC bool, err error) {
	switch v {
	case "", "auto":
		return false, nil
	case "tc":
		return true, nil
	}
	return false, fmt.Errorf("cuda: DRIFTSTORE_CUDA_FEW=%q: want auto or tc", v)
}

// fewCores reports whether products of at most tcvMaxTokens tokens with w run on the CUDA cores.
func (d *Device) fewCores(w *Weights) bool {
	if !d.tensorCores(w) {
		return true
	}
	if d.fewTC {
		return false
	}
	o := d.gemm.Load()
	return o.Mode != GEMMOwn && o.MinTokens <= tcvMaxTokens+1 && blasPath != "" && !d.blasBroken.Load()
}

// span is the byte range [lo, hi) of n rows of cols floats, rows stride floats apart.
func span(p DevPtr, stride, cols, n int) [2]DevPtr {
	return [2]DevPtr{p, p + DevPtr(4*((n-1)*stride+cols))}
}

func overlap(a, b [2]DevPtr) bool { return a[0] < b[1] && b[0] < a[1] }

// fusable reports whether a few-token product of n tokens with w (on the CUDA cores or not)
// may share a launch: F16 or Q8_0 weights, and the streaming tensor-core kernels or the
// CUDA-core GEMV.
func (s *Stream) fusable(w *Weights, n int, cores bool) bool {
	if s.q == nil || n > tcvMaxTokens || (w.Type != F16 && w.Type != Q8_0) {
		return false
	}
	if cores {
		return w.Cols%8 == 0
	}
	return s.d.tcv == tcStream
}

// noteFew records the product just launched as the one a next product may join (or forgets
// the last one when this product cannot be joined).
func (s *Stream) noteFew(out DevPtr, ostride int, w *Weights, x DevPtr, xstride, n int, cores bool) {
	lf := &s.lastFew
	lf.nmat = 0
	if !s.fusable(w, n, cores) || len(s.q.recs.fns) == 0 ||
		overlap(span(out, ostride, w.Rows, n), span(x, xstride, w.Cols, n)) {
		return
	}
	*lf = fewRec{seq: s.seq, rec: len(s.q.recs.fns) - 1, cores: cores, x: x, xstride: xstride, n: n, nmat: 1}
	lf.mats[0] = fewMat{out: out, ostride: ostride, w: w}
}

// fuseFew joins the product to the one recorded last when it can (see the notes above): true
// when it did.
func (s *Stream) fuseFew(out DevPtr, ostride int, w *Weights, x DevPtr, xstride, n int, cores bool) (bool, error) {
	lf := &s.lastFew
	if !s.fusable(w, n, cores) || lf.nmat == 0 || lf.nmat >= len(lf.mats) || lf.seq != s.seq ||
		lf.rec != len(s.q.recs.fns)-1 || lf.cores != cores || lf.x != x || lf.xstride != xstride ||
		lf.n != n || lf.mats[0].w.Cols != w.Cols || lf.mats[0].w.Type != w.Type {
		return false, nil
	}
	o := span(out, ostride, w.Rows, n)
	if overlap(o, span(x, xstride, w.Cols, n)) {
		return false, nil
	}
	for _, m := range lf.mats[:lf.nmat] {
		if overlap(o, span(m.out, m.ostride, m.w.Rows, n)) {
			return false, nil
		}
	}
	mats := append(append([]fewMat(nil), lf.mats[:lf.nmat]...), fewMat{out: out, ostride: ostride, w: w})
	vec := x%16 == 0 && xstride%4 == 0
	var a argSlots
	var name string
	var grid, block [3]uint32
	var shmem uint32
	if cores {
		nt := 1
		if n > 1 {
			nt = 8
		}
		blocks := 0
		sp := mvSplit(w.Type, w.Rows, w.Cols)
		for _, m := range mats {
			if mvSplit(m.w.Type, m.w.Rows, m.w.Cols) != sp { // one S per launch
				return false, nil
			}
			blocks += ceilDiv(m.w.Rows, 8/sp)
		}
		name = mvmName(w.Type, nt, vec) + mvSuffix(sp)
		grid, block = [3]uint32{uint32(ceilDiv(n, nt)), uint32(blocks), 1}, [3]uint32{256, 1, 1}
		a.ptr(x).i32(xstride).i32(w.Cols).i32(n).i32(len(mats))
	} else {
		rows := make([]int, len(mats))
		for i, m := range mats {
			rows[i] = m.w.Rows
		}
		r, nsg, nw := s.d.tcqShape(rows, w.Cols, w.Type)
		nseg := ceilDiv(w.Cols/32, 8)
		if f := s.d.tcqForce; f[0] > 0 { // tests: every instance and both ways of adding segments
			r, nsg = f[0], f[1]
			nw = min(8, ceilDiv(nseg, nsg))
		}
		groups := 0
		for _, m := range mats {
			groups += ceilDiv(m.w.Rows, 16*r)
		}
		var part, cnt DevPtr
		if nsg > 1 {
			// Growing the scratch issues what was recorded: then there is nothing to join.
			if err := s.tcScratch(groups*r*nseg*128*4, groups*4); err != nil {
				return true, err
			}
			if lf.rec != len(s.q.recs.fns)-1 {
				return false, nil
			}
			part, cnt = s.tcPart.Ptr, s.tcCnt.Ptr
		} else {
			shmem = uint32(r * nseg * 128 * 4)
		}
		name = tcqName(r, w.Type, vec)
		grid, block = [3]uint32{uint32(groups * nsg), 1, 1}, [3]uint32{uint32(32 * nw), 1, 1}
		a.ptr(x).i32(xstride).i32(w.Cols).i32(n).i32(nsg).ptr(part).ptr(cnt).i32(len(mats))
	}
	for i := range 3 {
		if i < len(mats) {
			m := mats[i]
			a.ptr(m.out).i32(m.ostride).ptr(m.w.data.Ptr).ptr(m.w.scalePtr()).i32(m.w.Rows)
		} else {
			a.ptr(0).i32(0).ptr(0).ptr(0).i32(0)
		}
	}
	f, ok := s.d.fns[name]
	if !ok {
		return true, fmt.Errorf("cuda: no kernel %s", name)
	}
	s.rerecord(lf.rec, f, grid, block, shmem, &a)
	lf.seq = s.seq
	lf.mats[lf.nmat] = fewMat{out: out, ostride: ostride, w: w}
	lf.nmat++
	return true, nil
}

// fuseSwiGLU turns the recorded launch of gate and up (ds_mvm of two products of equal shape,
// outputs [n][rows] each) and the SwiGLU of the two that follows, in place over gate's output,
// into one ds_mvsw launch: up's output as before and gate's overwritten by the SwiGLU, the bits
// of the separate launches (kernels.cu, "mvsw"). True when it did.
func (s *Stream) fuseSwiGLU(out, gate, up DevPtr, count int) (bool, error) {
	lf := &s.lastFew
	if s.q == nil || lf.nmat != 2 || !lf.cores || lf.seq != s.seq || lf.rec != len(s.q.recs.fns)-1 {
		return false, nil
	}
	g, u := lf.mats[0], lf.mats[1]
	rows := g.w.Rows
	if u.w.Rows != rows || g.ostride != rows || u.ostride != rows || gate != g.out || up != u.out ||
		out != gate || count != lf.n*rows {
		return false, nil
	}
	nt := 1
	if lf.n > 1 {
		nt = 8
	}
	sp := mvSplit(g.w.Type, rows, g.w.Cols)
	name := mvswName(g.w.Type, nt, lf.x%16 == 0 && lf.xstride%4 == 0) + mvSuffix(sp)
	f, ok := s.d.fns[name]
	if !ok {
		return true, fmt.Errorf("cuda: no kernel %s", name)
	}
	var a argSlots
	a.ptr(lf.x).i32(lf.xstride).i32(g.w.Cols).i32(lf.n).ptr(g.out).ptr(u.out).i32(rows).
		ptr(g.w.data.Ptr).ptr(g.w.scalePtr()).ptr(u.w.data.Ptr).ptr(u.w.scalePtr()).i32(rows)
	s.rerecord(lf.rec, f, [3]uint32{uint32(ceilDiv(lf.n, nt)), uint32(ceilDiv(rows, 8/sp)), 1}, [3]uint32{256, 1, 1}, 0, &a)
	lf.nmat = 0
	return true, nil
}

// mvswName is the fused gate/up/SwiGLU kernel for F16 or Q8_0 weights, nt tokens per block.
func mvswName(t DType, nt int, vec bool) string { return mvVariant(&mvswNames, t, nt, vec) }

// mvVariant picks from names, laid out as mvmNames and mvswNames are, the kernel for weights
// of type t (F16 or Q8_0), nt tokens per block (1 or 8) and vectorized loads or not.
func mvVariant(names *[8]string, t DType, nt int, vec bool) string {
	i := 0
	if t == Q8_0 {
		i = 4
	}
	if nt == 8 {
		i += 2
	}
	if vec {
		i++
	}
	return names[i]
}

var mvswNames = [8]string{"ds_mvsw_f16_1x1", "ds_mvsw_f16_1x1v", "ds_mvsw_f16_1x8", "ds_mvsw_f16_1x8v",
	"ds_mvsw_q8_1x1", "ds_mvsw_q8_1x1v", "ds_mvsw_q8_1x8", "ds_mvsw_q8_1x8v"}

// tcqShape picks ds_tcq's row tiles per warp (r), segment groups (nsg) and warps per block
// (nw) for matrices of the given rows sharing cols (H100 measurements in the notes): one tile
// per warp while the tiles number at most twice the SMs (q, k, v: 192 tiles, 8.6 µs against
// 9.3 with two); two for more (F16 gate and up: 29.5 µs against 33.9 with one), four for Q8_0
// from six times the SMs (23.2 against 25.2 with two). One segment group (the block adds the
// segment sums in shared memory) where those fit in 48 KB, else two.
func (d *Device) tcqShape(rows []int, cols int, t DType) (r, nsg, nw int) {
	tiles := 0
	for _, n := range rows {
		tiles += ceilDiv(n, 16)
	}
	r = 1
	if tiles > 2*d.info.SMs {
		r = 2
		if t == Q8_0 && tiles >= 6*d.info.SMs {
			r = 4
		}
	}
	nseg := ceilDiv(cols/32, 8)
	nsg = 1
	if r*nseg*128*4 > 48<<10 {
		nsg = 2
	}
	return r, nsg, min(8, ceilDiv(nseg, nsg))
}

// tcqName is the ds_tcq kernel of r row tiles per warp (1, 2 or 4) for F16 or Q8_0 weights;
// vec: the activations are 16-byte aligned with a row stride of a multiple of 4 floats.
func tcqName(r int, t DType, vec bool) string {
	i := 0
	switch r {
	case 2:
		i = 4
	case 4:
		i = 8
	}
	if t == Q8_0 {
		i += 2
	}
	if vec {
		i++
	}
	return tcqNames[i]
}

var tcqNames = [12]string{"ds_tcq1_f16", "ds_tcq1_f16v", "ds_tcq1_q8", "ds_tcq1_q8v",
	"ds_tcq2_f16", "ds_tcq2_f16v", "ds_tcq2_q8", "ds_tcq2_q8v",
	"ds_tcq4_f16", "ds_tcq4_f16v", "ds_tcq4_q8", "ds_tcq4_q8v"}

// mvSplit: the warps that share a row of a CUDA-core GEMV (ds_mv, ds_mvm, ds_mvsw; kernels.cu
// "matrix times activations") of a [rows][cols] matrix of type t: 8 for F16 and 4 for Q8_0
// (the kernels with suffix _s8, _s4) where the matrix has at most 65536 warps' worth of rows
// and every lane keeps at least one 8-column group, else 1. A function of the type and shape
// only: it fixes the order of each row's sums, so a token's bits do not depend on n. On an
// H100 (tcbench mvs, CUDA graphs, µs per 1B layer's products, one warp per row -> split):
// F16 q+k+v 6.7 -> 6.1, o 5.5 -> 4.5, gate+up 24.8 -> 23.1, down 16.2 -> 12.9; Q8_0 (4) o 4.3
// -> 3.6, down 12.2 -> 8.6, q+k+v and gate+up within 0.2 either way; the lm head (128256 rows)
// keeps one warp per row (169 µs; 180-185 split).
func mvSplit(t DType, rows, cols int) int {
	s := 1
	switch t {
	case F16:
		s = 8
	case Q8_0:
		s = 4
	}
	if s == 1 || mvSplitOff || rows*s > 65536 || cols>>3 < 32*s {
		return 1
	}
	return s
}

// mvSplitOff: DRIFTSTORE_CUDA_MV_SPLIT=1 keeps one warp per row everywhere (A/B runs; the order
// of operations before the split).
var mvSplitOff = os.Getenv("DRIFTSTORE_CUDA_MV_SPLIT") == "1"

// mvSuffix names the instance of a split: "" (one warp per row), "_s8", "_s4".
func mvSuffix(s int) string {
	switch s {
	case 8:
		return "_s8"
	case 4:
		return "_s4"
	}
	return ""
}

// mvmName is the fused CUDA-core GEMV for F16 or Q8_0 weights, nt tokens per block (1 or 8).
func mvmName(t DType, nt int, vec bool) string { return mvVariant(&mvmNames, t, nt, vec) }

var mvmNames = [8]string{"ds_mvm_f16_1x1", "ds_mvm_f16_1x1v", "ds_mvm_f16_1x8", "ds_mvm_f16_1x8v",
	"ds_mvm_q8_1x1", "ds_mvm_q8_1x1v", "ds_mvm_q8_1x8", "ds_mvm_q8_1x8v"}
