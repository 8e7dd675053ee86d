package cuda

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math"
	"os"
	"strconv"
	"strings"
	"unsafe"
)

// kernelNames lists every kernel Open resolves.
func kernelNames() []string {
	names := []string{"ds_mv_any", "ds_rmsnorm", "ds_rope", "ds_rope2", "ds_rope_kv", "ds_store_kv", "ds_attn",
		"ds_attn_combine", "ds_attn_mq", "ds_attn_dec1", "ds_attn_dec2", "ds_attn_dec4", "ds_attn_tc32", "ds_attn_tc48", "ds_attn_tc64", "ds_attn_tc128", "ds_swiglu", "ds_add", "ds_add_rmsnorm", "ds_embed", "ds_softmax", "ds_argmax", "ds_nop",
		"ds_sum_words", "ds_fill_words", "ds_tcv_f16", "ds_tcm_f16", "ds_tcv_q8", "ds_tcm_q8", "ds_tcb_f16", "ds_tcb_q8",
		"ds_f32_to_f16", "ds_f32_to_f16v", "ds_q8_to_f16",
	}
	names = append(names, tcrNames[:]...)
	names = append(names, tcqNames[:]...)
	for _, n := range append(mvmNames[:], mvswNames[:]...) {
		sf := "_s8" // the split instances (few.go, mvSplit)
		if strings.Contains(n, "_q8_") {
			sf = "_s4"
		}
		names = append(names, n, n+sf)
	}
	for _, t := range []DType{F32, F16, BF16, Q8_0} {
		for _, shape := range []string{"1x1", "1x8", "4x8"} {
			for _, sf := range []string{"", "_s8", "_s4"} {
				if sf == "_s8" && t != F16 || sf == "_s4" && t != Q8_0 {
					continue
				}
				names = append(names, "ds_mv_"+t.suffix()+"_"+shape+sf, "ds_mv_"+t.suffix()+"_"+shape+"v"+sf)
			}
		}
	}
	return names
}

// KVLayout describes the KV blocks of one layer: a block holds K [BlockSize][NKVHeads][HeadDim]
// then V likewise, of KVType (F16 or F32).
type KVLayout struct {
	BlockSize, NKVHeads, HeadDim int
	KVType                       DType
}

// BlockBytes is the size of one block.
func (l KVLayout) BlockBytes() int {
	es := 4
	if l.KVType == F16 {
		es = 2
	}
	return 2 * l.BlockSize * l.NKVHeads * l.HeadDim * es
}

func (l KVLayout) check() error {
	if l.BlockSize <= 0 || l.NKVHeads <= 0 || l.HeadDim <= 0 || l.HeadDim%2 != 0 || l.HeadDim > 256 {
		return fmt.Errorf("cuda: bad KV layout %+v (head dim must be even and at most 256)", l)
	}
	if l.KVType != F16 && l.KVType != F32 {
		return fmt.Errorf("cuda: KV type %v not supported", l.KVType)
	}
	return nil
}

// Stream issues kernels in order on one CUDA stream, with its own scratch memory. Operations
// are asynchronous: they return once queued; Sync waits. Pointers passed to an operation must
// stay valid until the stream has passed it. A Stream is not safe for concurrent use.
type Stream struct {
	d      *Device
	s      cuStream
	part   *Buffer // attention partial results
	tcPart *Buffer // ds_tcv/ds_tcb segment sums
	tcCnt  *Buffer // ds_tcv/ds_tcb tile counters
	// attnCnt: ds_attn's counters of finished splits per token and head (zero between launches)
	attnCnt *Buffer
	small   *Buffer // token ids in, argmax out
	tables  map[uint64]*table
	t0, t1  cuEvent
	prof    *streamProf // non-nil: a profiled Exec's stream (BackendOptions.Profile)
	q       *deferQ     // non-nil: deferred mode (deferred.go)
	blas    *blasRec    // the cuBLAS handle, from the first cuBLAS product on (gemm.go)
	xh, wh  *Buffer     // cuBLAS products: F16 activations, dequantized Q8_0 weights
	seq     uint64      // operations queued (kernels, copies): tells whether xh is still current
	xhOf    xhKey       // what xh holds, valid while seq == xhSeq and stableX
	xhSeq   uint64
	// stableX: device memory that products read changes only through this stream's
	// operations (the backend's Exec and its mirror), so cuBLAS products may reuse the F16
	// activations of the previous product when nothing was queued in between.
	stableX bool
	// lastAdd: the add recorded last (deferred mode), valid while seq == lastAdd.seq: an
	// RMSNorm of its result replaces its record with ds_add_rmsnorm.
	lastAdd struct {
		seq       uint64
		rec       int
		out, x, y DevPtr
		count     int
	}
	// lastRoPE: the RoPE recorded last (deferred mode), valid while seq == lastRoPE.seq: a
	// RoPE of other rows at the same tokens and positions joins it (ds_rope2).
	lastRoPE struct {
		seq                         uint64
		rec                         int
		x                           DevPtr
		n, nheads, hd, stride, pos0 int
		base                        float32
	}
	// lastRoPE2: the ds_rope2 recorded last (q: nq heads, rows of qstride; k: nk heads, rows of
	// kstride), valid while seq == lastRoPE2.seq: a StoreKV of its keys joins it (ds_rope_kv).
	lastRoPE2 struct {
		seq                             uint64
		rec                             int
		q, k                            DevPtr
		nq, qstride, nk, kstride, n, hd int
		pos0                            int
		base                            float32
	}
	// lastFew: the few-token product(s) recorded last (deferred mode), valid while seq ==
	// lastFew.seq: a product of the same activations joins its launch (few.go).
	lastFew fewRec
}

type table struct {
	ptrs []DevPtr
	buf  *Buffer
}

const maxTables = 1024

// NewStream makes a stream on d.
func (d *Device) NewStream() (*Stream, error) {
	s, err := d.drv.streamCreate()
	if err != nil {
		return nil, err
	}
	st := &Stream{d: d, s: s, tables: make(map[uint64]*table)}
	if st.t0, err = d.drv.eventCreate(); err == nil {
		st.t1, err = d.drv.eventCreate()
	}
	if err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

// Close waits for the stream and frees its scratch memory.
func (s *Stream) Close() error {
	if s.s == nil {
		return nil
	}
	s.discard()
	err := s.d.drv.streamSync(s.s)
	s.releaseBLAS()
	s.xh.Free()
	s.wh.Free()
	s.freeGraphs()
	s.q = nil
	s.dropTables()
	s.part.Free()
	s.tcPart.Free()
	s.tcCnt.Free()
	s.attnCnt.Free()
	s.small.Free()
	if s.t0 != nil {
		s.d.drv.eventDestroy(s.t0)
	}
	if s.t1 != nil {
		s.d.drv.eventDestroy(s.t1)
	}
	if p := s.prof; p != nil {
		for _, ev := range []cuEvent{p.start, p.kern, p.copied} {
			if ev != nil {
				s.d.drv.eventDestroy(ev)
			}
		}
		s.prof = nil
	}
	if e := s.d.drv.streamDestroy(s.s); err == nil {
		err = e
	}
	s.s = nil
	return err
}

// Sync issues what a deferred stream recorded and waits until everything queued on the stream
// has run; it reports the first error of an earlier kernel as well.
func (s *Stream) Sync() error {
	ferr := s.flush()
	if s.q != nil {
		s.q.piece, s.q.limit = 0, flushStart
	}
	if err := s.d.drv.streamSync(s.s); err != nil {
		return err
	}
	return ferr
}

func (s *Stream) launch(name string, grid, block [3]uint32, shmem uint32, args *argSlots) error {
	f, ok := s.d.fns[name]
	if !ok {
		return fmt.Errorf("cuda: no kernel %s", name)
	}
	s.d.Stats.Launches.Add(1)
	s.seq++
	if s.q != nil {
		return s.record(f, grid, block, shmem, args)
	}
	if err := s.d.drv.launch(f, grid, block, shmem, s.s, args); err != nil {
		return fmt.Errorf("cuda: launch %s: %w", name, err)
	}
	return nil
}

// mvNames caches the matmul kernel names: [type][shape][vectorized].
var mvNames = func() (m map[[4]int]string) {
	m = map[[4]int]string{}
	for _, t := range []DType{F32, F16, BF16, Q8_0} {
		for _, sh := range [][2]int{{1, 1}, {1, 8}, {4, 8}} {
			for v := 0; v < 2; v++ {
				name := fmt.Sprintf("ds_mv_%s_%dx%d", t.suffix(), sh[0], sh[1])
				if v == 1 {
					name += "v"
				}
				m[[4]int{int(t), sh[0], sh[1], v}] = name
			}
		}
	}
	return m
}()

func mvName(t DType, rw, nt int, vec bool) string {
	v := 0
	if vec {
		v = 1
	}
	return mvNames[[4]int{int(t), rw, nt, v}]
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// grow makes *b at least n bytes (freeing the old buffer waits for the device).
func (s *Stream) grow(b **Buffer, n int) error {
	if *b != nil && (*b).Len >= n {
		return nil
	}
	if err := s.flush(); err != nil { // recorded work may use the old buffer
		return err
	}
	if err := (*b).Free(); err != nil {
		return err
	}
	nb, err := s.d.Alloc(max(n, 4096))
	if err != nil {
		return err
	}
	*b = nb
	return nil
}

// MatMul computes out[t][r] = sum_c W[r][c] * x[t][c] for n tokens: x is [n][Cols] and out
// [n][Rows], float32, contiguous.
func (s *Stream) MatMul(out DevPtr, w *Weights, x DevPtr, n int) error {
	return s.MatMulStrided(out, w.Rows, w, x, w.Cols, n)
}

// MatMulStrided is MatMul with row strides (in floats) for out and x. On the own kernels the
// result for each token does not depend on n or on the other tokens (the same order of
// operations); a product that goes to cuBLAS (the device's GEMMOptions: F16 or Q8_0 weights,
// at least MinTokens tokens; gemm.go) gives bits that depend on n and on where the operands
// lie, the same for the same call. With cuBLAS taking every larger batch, products of at most
// tcvMaxTokens tokens run on the CUDA cores (few.go): their bits do not depend on n up to
// tcvMaxTokens. On a deferred stream consecutive few-token products of the same activations
// share one launch (few.go), with the same bits.
func (s *Stream) MatMulStrided(out DevPtr, ostride int, w *Weights, x DevPtr, xstride, n int) error {
	if n <= 0 {
		return nil
	}
	if ostride < w.Rows || xstride < w.Cols {
		return fmt.Errorf("cuda: matmul strides %d/%d for [%d][%d] weights", ostride, xstride, w.Rows, w.Cols)
	}
	if o := s.d.blasFor(w, n); o != nil {
		if ok, err := s.matMulBLAS(out, ostride, w, x, xstride, n, o); ok || err != nil {
			return err
		}
	}
	cores := n <= tcvMaxTokens && s.d.fewCores(w)
	if n <= tcvMaxTokens {
		if ok, err := s.fuseFew(out, ostride, w, x, xstride, n, cores); ok || err != nil {
			return err
		}
	}
	err := s.matMulOwn(out, ostride, w, x, xstride, n, cores)
	if err == nil && s.q != nil {
		s.noteFew(out, ostride, w, x, xstride, n, cores)
	}
	return err
}

// matMulOwn launches the own kernel of a product: on the CUDA cores when cores (or w is not for
// the tensor cores), else on the tensor cores.
func (s *Stream) matMulOwn(out DevPtr, ostride int, w *Weights, x DevPtr, xstride, n int, cores bool) error {
	var a argSlots
	a.ptr(out).i32(ostride).ptr(w.data.Ptr).ptr(w.scalePtr()).ptr(x).i32(xstride).i32(w.Rows).i32(w.Cols).i32(n)
	if !cores && s.d.tensorCores(w) {
		// Tensor cores, the same arithmetic for every n (kernels.cu, "tensor-core matrix
		// products"): few tokens stream the weights once per 8 tokens, many share them per 64.
		if n <= tcvMaxTokens {
			return s.matMulFew(w, x, xstride, &a)
		}
		return s.launch("ds_tcm_"+w.Type.suffix(), [3]uint32{uint32(ceilDiv(n, 64)), uint32(ceilDiv(w.Rows, 128)), 1}, [3]uint32{256, 1, 1}, 0, &a)
	}
	if w.Cols%8 != 0 {
		a.i32(int(w.Type))
		return s.launch("ds_mv_any", [3]uint32{uint32(ceilDiv(w.Rows, 256)), uint32(n), 1}, [3]uint32{256, 1, 1}, 0, &a)
	}
	rw, nt := 1, 1
	if n > 1 {
		nt = 8
		// Four rows per warp when that still gives every SM several blocks.
		if ceilDiv(n, 8)*ceilDiv(w.Rows, 32) >= 4*s.d.info.SMs {
			rw = 4
		}
	}
	sp := mvSplit(w.Type, w.Rows, w.Cols)
	name := mvName(w.Type, rw, nt, x%16 == 0 && xstride%4 == 0) + mvSuffix(sp)
	grid := [3]uint32{uint32(ceilDiv(n, nt)), uint32(ceilDiv(w.Rows, 8/sp*rw)), 1}
	return s.launch(name, grid, [3]uint32{256, 1, 1}, 0, &a)
}

// tcvMaxTokens: matmuls of up to this many tokens use a few-token kernel (Device.tcv: the
// weights streamed once for all n tokens); larger ones ds_tcm (64-token tiles).
const tcvMaxTokens = 8

// tcMode names a family of few-token tensor-core kernels. All compute the same bits (kernels.cu,
// "tensor-core matrix products"); they differ in speed only. DRIFTSTORE_CUDA_TCV picks one.
type tcMode int

const (
	tcStream tcMode = iota // ds_tcr2/ds_tcr8: one block per 16 rows, register rings per warp
	tcWarp                 // ds_tcv: one warp per 16 rows x 256 columns, partial sums via atomics
	tcBlock                // ds_tcb: ds_tcv with the activation split once per 8-warp block
)

var tcModeNames = []string{tcStream: "stream", tcWarp: "warp", tcBlock: "block"}

func (m tcMode) String() string { return tcModeNames[m] }

// parseTCMode reads DRIFTSTORE_CUDA_TCV ("" is the default, tcStream).
func parseTCMode(v string) (tcMode, error) {
	if v == "" {
		return tcStream, nil
	}
	for i, name := range tcModeNames {
		if v == name {
			return tcMode(i), nil
		}
	}
	return 0, fmt.Errorf("cuda: DRIFTSTORE_CUDA_TCV=%q: want one of %v", v, tcModeNames)
}

// tcrShape picks the ds_tcr instance for a matrix of rowTiles 16-row tiles and nseg 256-column
// segments: its ring depth (2 or 8) and warps per block (never more than nseg). The point is
// to keep every block resident at once with as many warps per SM as the registers allow:
//   - more row tiles than SMs: ds_tcr2 with 8 warps (4 blocks per SM);
//   - at most one tile per SM and at most 8 segments: ds_tcr8, one warp per segment (every
//     chunk in flight at once);
//   - at most one tile per SM and more segments: ds_tcr2, up to 32 warps, one segment each.
//
// DRIFTSTORE_CUDA_TCW overrides the warps per block (within the kernel's limit).
func (d *Device) tcrShape(rowTiles, nseg int) (depth, warps int) {
	depth, warps, limit := 2, 8, 32
	if rowTiles <= d.info.SMs {
		if nseg <= 8 {
			depth, warps, limit = 8, 8, 8
		} else {
			warps = 32
		}
	}
	if d.tcw > 0 {
		warps = min(d.tcw, limit)
	}
	return depth, min(warps, nseg)
}

// tcrName is the ds_tcr kernel of ring depth (2 or 8) for F16 or Q8_0 weights; vec: the
// activations are 16-byte aligned with a row stride of a multiple of 4 floats.
func tcrName(depth int, t DType, vec bool) string {
	i := 0
	if depth == 8 {
		i = 4
	}
	if t == Q8_0 {
		i += 2
	}
	if vec {
		i++
	}
	return tcrNames[i]
}

var tcrNames = [8]string{"ds_tcr2_f16", "ds_tcr2_f16v", "ds_tcr2_q8", "ds_tcr2_q8v",
	"ds_tcr8_f16", "ds_tcr8_f16v", "ds_tcr8_q8", "ds_tcr8_q8v"}

// matMulFew launches the few-token tensor-core product chosen by s.d.tcv; a holds the
// arguments common to every tensor-core kernel (out, ostride, w, scales, x, xstride, rows,
// cols, n).
func (s *Stream) matMulFew(w *Weights, x DevPtr, xstride int, a *argSlots) error {
	rg, nseg := ceilDiv(w.Rows, 16), ceilDiv(w.Cols/32, 8)
	suffix := w.Type.suffix()
	switch s.d.tcv {
	case tcStream:
		depth, nw := s.d.tcrShape(rg, nseg)
		name := tcrName(depth, w.Type, x%16 == 0 && xstride%4 == 0)
		shmem := nseg * 128 * 4 // the tile's segment sums
		return s.launch(name, [3]uint32{uint32(rg), 1, 1}, [3]uint32{uint32(32 * nw), 1, 1}, uint32(shmem), a)
	}
	if err := s.tcScratch(rg*nseg*128*4, rg*4); err != nil {
		return err
	}
	a.ptr(s.tcPart.Ptr).ptr(s.tcCnt.Ptr)
	if s.d.tcv == tcBlock {
		return s.launch("ds_tcb_"+suffix, [3]uint32{uint32(ceilDiv(w.Rows, 128)), uint32(nseg), 1}, [3]uint32{256, 1, 1}, 0, a)
	}
	return s.launch("ds_tcv_"+suffix, [3]uint32{uint32(rg), uint32(nseg), 1}, [3]uint32{32, 1, 1}, 0, a)
}

// attnCounts returns ds_attn's counters, at least n of them, zero between launches (a new
// buffer is zeroed; each launch leaves it so).
func (s *Stream) attnCounts(n int) (DevPtr, error) {
	if s.attnCnt != nil && s.attnCnt.Len >= 4*n {
		return s.attnCnt.Ptr, nil
	}
	if err := s.grow(&s.attnCnt, 4*n); err != nil {
		return 0, err
	}
	return s.attnCnt.Ptr, s.htod(s.attnCnt.Ptr, make([]byte, s.attnCnt.Len))
}

// tcScratch makes the ds_tcv/ds_tcb scratch at least partBytes (segment sums) and cntBytes
// (tile counters, zero between launches: a new buffer is zeroed, and each launch leaves it so).
func (s *Stream) tcScratch(partBytes, cntBytes int) error {
	if err := s.grow(&s.tcPart, partBytes); err != nil {
		return err
	}
	if s.tcCnt != nil && s.tcCnt.Len >= cntBytes {
		return nil
	}
	if err := s.grow(&s.tcCnt, cntBytes); err != nil {
		return err
	}
	return s.htod(s.tcCnt.Ptr, make([]byte, s.tcCnt.Len))
}

// tcMaxCols bounds the columns of a tensor-core matrix (TC_MAXSEG segments of 256).
const tcMaxCols = 64 * 256

// tensorCores reports whether products with w run on the tensor cores: F16 or Q8_0 weights,
// columns a multiple of 32 and at most tcMaxCols, a card of compute capability 8.0 or newer,
// DRIFTSTORE_CUDA_TC not "0" when the device opened, and not marked CUDACores. The choice
// depends on the matrix only, never on the number of tokens: either way a token's outputs are
// the same bits whatever n is.
func (d *Device) tensorCores(w *Weights) bool {
	return d.tc && !w.CUDACores && (w.Type == F16 || w.Type == Q8_0) && w.Cols%32 == 0 && w.Cols <= tcMaxCols
}

// RMSNorm: out[t][i] = x[t][i] / sqrt(mean(x[t]^2) + eps) * w[i] for n rows of dim; out may
// equal x. On a deferred stream, when the operation queued just before is an Add whose output
// is exactly x (n*dim floats) and its kernel is still unissued, the two become one launch of
// ds_add_rmsnorm, which writes the same bits to both outputs.
func (s *Stream) RMSNorm(out, x, w DevPtr, dim, n int, eps float32) error {
	if n <= 0 {
		return nil
	}
	if la := &s.lastAdd; s.q != nil && la.seq == s.seq && la.out == x && la.count == n*dim &&
		la.rec == len(s.q.recs.fns)-1 {
		f, ok := s.d.fns["ds_add_rmsnorm"]
		if !ok {
			return fmt.Errorf("cuda: no kernel ds_add_rmsnorm")
		}
		var a argSlots
		a.ptr(out).ptr(la.out).ptr(la.x).ptr(la.y).ptr(w).i32(dim).i32(n).f32(eps)
		s.rerecord(la.rec, f, [3]uint32{uint32(n), 1, 1}, [3]uint32{rmsThreads, 1, 1}, 0, &a)
		return nil
	}
	var a argSlots
	a.ptr(out).ptr(x).ptr(w).i32(dim).i32(n).f32(eps)
	return s.launch("ds_rmsnorm", [3]uint32{uint32(n), 1, 1}, [3]uint32{rmsThreads, 1, 1}, 0, &a)
}

// rerecord replaces the unissued kernel record k (the last one) of a deferred stream: a fusion
// of the last operation with the one being queued. seq moves on, so nothing fuses into it again.
func (s *Stream) rerecord(k int, f cuFunction, grid, block [3]uint32, shmem uint32, a *argSlots) {
	r := &s.q.recs
	r.fns[k] = f
	copy(r.dims[7*k:7*k+7], []uint32{grid[0], grid[1], grid[2], block[0], block[1], block[2], shmem})
	copy(r.args[maxArgs*k:maxArgs*k+maxArgs], a.v[:maxArgs])
	r.nargs[k] = int32(a.n)
	s.seq++
}

// rmsThreads is RMS_THREADS in kernels.cu.
const rmsThreads = 256

// RoPE rotates adjacent pairs of each of nheads heads (head dim hd) of n tokens at positions
// pos0.. in place; x is [n][stride].
func (s *Stream) RoPE(x DevPtr, n, nheads, hd, stride, pos0 int, base float32) error {
	total := n * nheads * hd / 2
	if total <= 0 {
		return nil
	}
	if hd%2 != 0 || stride < nheads*hd {
		return fmt.Errorf("cuda: rope head dim %d, stride %d", hd, stride)
	}
	span := func(p DevPtr, nh, st int) (DevPtr, DevPtr) { return p, p + DevPtr(4*((n-1)*st+nh*hd)) }
	if lr := &s.lastRoPE; s.q != nil && lr.seq == s.seq && lr.rec == len(s.q.recs.fns)-1 &&
		lr.n == n && lr.hd == hd && lr.pos0 == pos0 && lr.base == base {
		lo1, hi1 := span(lr.x, lr.nheads, lr.stride)
		lo2, hi2 := span(x, nheads, stride)
		if hi1 <= lo2 || hi2 <= lo1 { // disjoint: the order of the two does not matter
			f, ok := s.d.fns["ds_rope2"]
			if !ok {
				return fmt.Errorf("cuda: no kernel ds_rope2")
			}
			var a argSlots
			a.ptr(lr.x).i32(lr.nheads).i32(lr.stride).ptr(x).i32(nheads).i32(stride).i32(n).i32(hd).i32(pos0).f32(base)
			all := total + n*lr.nheads*hd/2
			s.rerecord(lr.rec, f, [3]uint32{uint32(ceilDiv(all, 256)), 1, 1}, [3]uint32{256, 1, 1}, 0, &a)
			l2 := &s.lastRoPE2
			l2.seq, l2.rec, l2.q, l2.k = s.seq, lr.rec, lr.x, x
			l2.nq, l2.qstride, l2.nk, l2.kstride = lr.nheads, lr.stride, nheads, stride
			l2.n, l2.hd, l2.pos0, l2.base = n, hd, pos0, base
			return nil
		}
	}
	var a argSlots
	a.ptr(x).i32(n).i32(nheads).i32(hd).i32(stride).i32(pos0).f32(base)
	err := s.launch("ds_rope", [3]uint32{uint32(ceilDiv(total, 256)), 1, 1}, [3]uint32{256, 1, 1}, 0, &a)
	if err == nil && s.q != nil && len(s.q.recs.fns) > 0 {
		lr := &s.lastRoPE
		lr.seq, lr.rec, lr.x = s.seq, len(s.q.recs.fns)-1, x
		lr.n, lr.nheads, lr.hd, lr.stride, lr.pos0, lr.base = n, nheads, hd, stride, pos0, base
	}
	return err
}

// blockTable returns a device copy of blocks, reusing an identical earlier one (the tables
// of a growing context change only when a block is added).
func (s *Stream) blockTable(blocks []DevPtr) (DevPtr, error) {
	h := fnv.New64a()
	h.Write(unsafe.Slice((*byte)(unsafe.Pointer(&blocks[0])), len(blocks)*8))
	key := h.Sum64()
	if t, ok := s.tables[key]; ok && equalPtrs(t.ptrs, blocks) {
		return t.buf.Ptr, nil
	}
	if len(s.tables) >= maxTables {
		s.dropTables()
	}
	buf, err := s.d.Alloc(len(blocks) * 8)
	if err != nil {
		return 0, err
	}
	raw := make([]byte, len(blocks)*8)
	for i, p := range blocks {
		binary.LittleEndian.PutUint64(raw[8*i:], uint64(p))
	}
	if err := s.htod(buf.Ptr, raw); err != nil {
		buf.Free()
		return 0, err
	}
	if old, ok := s.tables[key]; ok {
		s.dropTables() // a hash collision: rare, start over
		_ = old
	}
	s.tables[key] = &table{ptrs: append([]DevPtr(nil), blocks...), buf: buf}
	return buf.Ptr, nil
}

func (s *Stream) dropTables() {
	s.flush() // recorded work may use the tables; an error shows at the next Sync
	for k, t := range s.tables {
		t.buf.Free()
		delete(s.tables, k)
	}
}

func equalPtrs(a, b []DevPtr) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// StoreKV writes K and V of n tokens at positions pos0.. (k, v: [n][NKVHeads*HeadDim] f32)
// into the blocks (blocks[i] holds positions i*BlockSize..).
func (s *Stream) StoreKV(k, v DevPtr, n, pos0 int, l KVLayout, blocks []DevPtr) error {
	if n <= 0 {
		return nil
	}
	if pos0 < 0 || len(blocks) < ceilDiv(pos0+n, l.BlockSize) {
		return fmt.Errorf("cuda: store kv at %d..%d with %d blocks of %d", pos0, pos0+n, len(blocks), l.BlockSize)
	}
	tab, err := s.blockTable(blocks)
	if err != nil {
		return err
	}
	return s.StoreKVTable(k, v, n, pos0, l, tab, len(blocks))
}

// StoreKVTable is StoreKV with the block table already in device memory (nblocks entries).
func (s *Stream) StoreKVTable(k, v DevPtr, n, pos0 int, l KVLayout, tab DevPtr, nblocks int) error {
	return s.StoreKVTable2(k, v, n, pos0, l, tab, 0, nblocks)
}

// StoreKVTable2 is StoreKVTable writing the same bytes through a second block table too
// (tab2, when not 0, also nblocks entries): one kernel for a device copy and the linear memory.
func (s *Stream) StoreKVTable2(k, v DevPtr, n, pos0 int, l KVLayout, tab, tab2 DevPtr, nblocks int) error {
	if err := l.check(); err != nil {
		return err
	}
	if n <= 0 {
		return nil
	}
	if pos0 < 0 || nblocks < ceilDiv(pos0+n, l.BlockSize) {
		return fmt.Errorf("cuda: store kv at %d..%d with %d blocks of %d", pos0, pos0+n, nblocks, l.BlockSize)
	}
	total := n * l.NKVHeads * l.HeadDim
	row := l.NKVHeads * l.HeadDim
	if l2 := &s.lastRoPE2; s.q != nil && l2.seq == s.seq && l2.rec == len(s.q.recs.fns)-1 &&
		l2.k == k && l2.n == n && l2.pos0 == pos0 && l2.hd == l.HeadDim && l2.nk == l.NKVHeads &&
		l2.kstride == row {
		span := func(p DevPtr, nh, st int) (DevPtr, DevPtr) { return p, p + DevPtr(4*((n-1)*st+nh*l.HeadDim)) }
		vlo, vhi := span(v, l.NKVHeads, row)
		qlo, qhi := span(l2.q, l2.nq, l2.qstride)
		klo, khi := span(k, l.NKVHeads, row)
		if (vhi <= qlo || qhi <= vlo) && (vhi <= klo || khi <= vlo) {
			f, ok := s.d.fns["ds_rope_kv"]
			if !ok {
				return fmt.Errorf("cuda: no kernel ds_rope_kv")
			}
			var a argSlots
			a.ptr(l2.q).i32(l2.nq).i32(l2.qstride).ptr(k).ptr(v).i32(l.NKVHeads).i32(n).i32(l.HeadDim).
				i32(pos0).f32(l2.base).i32(l.BlockSize).i32(int(l.KVType)).ptr(tab).ptr(tab2)
			all := n * (l2.nq + l.NKVHeads) * l.HeadDim / 2
			s.rerecord(l2.rec, f, [3]uint32{uint32(ceilDiv(all, 256)), 1, 1}, [3]uint32{256, 1, 1}, 0, &a)
			return nil
		}
	}
	var a argSlots
	a.ptr(k).ptr(v).i32(n).i32(pos0).i32(l.BlockSize).i32(l.NKVHeads).i32(l.HeadDim).i32(int(l.KVType)).ptr(tab).ptr(tab2)
	return s.launch("ds_store_kv", [3]uint32{uint32(ceilDiv(total, 256)), 1, 1}, [3]uint32{256, 1, 1}, 0, &a)
}

// Attention computes causal attention for n query tokens at positions pos0.. (q, out:
// [n][nheads*HeadDim] f32) over positions 0..pos0+t of the blocks, with grouped KV heads
// (nheads a multiple of NKVHeads) and scores scaled by 1/sqrt(HeadDim).
func (s *Stream) Attention(out, q DevPtr, n, nheads, pos0 int, l KVLayout, blocks []DevPtr) error {
	if n <= 0 {
		return nil
	}
	ctx := pos0 + n
	if pos0 < 0 || len(blocks) < ceilDiv(ctx, l.BlockSize) {
		return fmt.Errorf("cuda: attention over %d positions with %d blocks of %d", ctx, len(blocks), l.BlockSize)
	}
	tab, err := s.blockTable(blocks)
	if err != nil {
		return err
	}
	return s.AttentionTable(out, q, n, nheads, pos0, l, tab, len(blocks))
}

// AttentionTable is Attention with the block table already in device memory (nblocks
// entries).
func (s *Stream) AttentionTable(out, q DevPtr, n, nheads, pos0 int, l KVLayout, tab DevPtr, nblocks int) error {
	if err := l.check(); err != nil {
		return err
	}
	if n <= 0 {
		return nil
	}
	if nheads <= 0 || nheads%l.NKVHeads != 0 {
		return fmt.Errorf("cuda: %d heads over %d KV heads", nheads, l.NKVHeads)
	}
	ctx := pos0 + n
	if pos0 < 0 || nblocks < ceilDiv(ctx, l.BlockSize) {
		return fmt.Errorf("cuda: attention over %d positions with %d blocks of %d", ctx, nblocks, l.BlockSize)
	}
	if s.d.attnTCFor(n, nheads, l) {
		return s.attentionTC(out, q, n, nheads, pos0, l, tab)
	}
	// The context is cut into fixed chunks of attnChunk positions, one block each, merged in
	// order: the split depends on positions only, never on n, so a token's output is the same
	// whether it comes alone or in a batch. Tokens go in groups that bound the partials' memory.
	nsplit := ceilDiv(ctx, attnChunk)
	row := nheads * l.HeadDim
	group := n
	if nsplit > 1 {
		group = max(1, min(n, attnPartBytes/(nheads*nsplit*(l.HeadDim+2)*4)))
		if err := s.grow(&s.part, group*nheads*nsplit*(l.HeadDim+2)*4); err != nil {
			return err
		}
	}
	scale := float32(1 / sqrt64(float64(l.HeadDim)))
	for t0 := 0; t0 < n; t0 += group {
		ng := min(group, n-t0)
		ns := ceilDiv(pos0+t0+ng, attnChunk)
		var part DevPtr
		if ns > 1 {
			part = s.part.Ptr
		}
		o, qq := out+DevPtr(4*t0*row), q+DevPtr(4*t0*row)
		var a argSlots
		if attnMQ && ng > 1 && l.HeadDim <= 128 {
			// Several tokens: ds_attn_mq, the same arithmetic per token with shared K/V loads.
			a.ptr(o).ptr(qq).i32(ng).i32(nheads).i32(pos0 + t0).i32(l.BlockSize).i32(l.NKVHeads).i32(l.HeadDim).
				i32(int(l.KVType)).ptr(tab).f32(scale).i32(ns).ptr(part)
			if err := s.launch("ds_attn_mq", [3]uint32{uint32(l.NKVHeads), uint32(ceilDiv(ng, mqTokens)), uint32(ns)}, [3]uint32{128, 1, 1}, 0, &a); err != nil {
				return err
			}
		} else {
			// The splits merge themselves (the last block of each token and head; kernels.cu,
			// attn_merge): no ds_attn_combine launch.
			var cnt DevPtr
			if ns > 1 {
				var err error
				if cnt, err = s.attnCounts(ng * nheads); err != nil {
					return err
				}
			}
			if attnDec && l.HeadDim <= 128 {
				// One block per KV head, token and spb consecutive splits: the query heads of the
				// KV head share its staged K and V (ds_attn_dec, ds_attn's bits).
				j := 4
				if l.HeadDim <= 32 {
					j = 1
				} else if l.HeadDim <= 64 {
					j = 2
				}
				spb, threads, shmem := attnDecShape(ns, ng, nheads, l)
				a.ptr(o).ptr(qq).i32(ng).i32(nheads).i32(pos0 + t0).i32(l.BlockSize).i32(l.NKVHeads).i32(l.HeadDim).
					i32(int(l.KVType)).ptr(tab).f32(scale).i32(ns).i32(spb).ptr(part).ptr(cnt)
				grid := [3]uint32{uint32(l.NKVHeads), uint32(ng), uint32(ceilDiv(ns, spb))}
				if err := s.launch(fmt.Sprintf("ds_attn_dec%d", j), grid, [3]uint32{uint32(threads), 1, 1}, uint32(shmem), &a); err != nil {
					return err
				}
				continue
			}
			a.ptr(o).ptr(qq).i32(ng).i32(nheads).i32(pos0 + t0).i32(l.BlockSize).i32(l.NKVHeads).i32(l.HeadDim).
				i32(int(l.KVType)).ptr(tab).f32(scale).i32(ns).i32(attnChunk).ptr(part).ptr(cnt)
			if err := s.launch("ds_attn", [3]uint32{uint32(nheads), uint32(ng), uint32(ns)}, [3]uint32{128, 1, 1}, 0, &a); err != nil {
				return err
			}
			continue
		}
		if ns == 1 {
			continue
		}
		var c argSlots
		c.ptr(o).ptr(part).i32(ng).i32(nheads).i32(l.HeadDim).i32(ns)
		if err := s.launch("ds_attn_combine", [3]uint32{uint32(nheads), uint32(ng), 1}, [3]uint32{uint32(min(256, (l.HeadDim+31)/32*32)), 1, 1}, 0, &c); err != nil {
			return err
		}
	}
	return nil
}

// attnTCSupported: the layouts ds_attn_tc has an instance for (F16 KV, head dims 32, 48, 64,
// 128, at most 64 query heads per KV head).
func attnTCSupported(nheads int, l KVLayout) bool {
	switch l.HeadDim {
	case 32, 48, 64, 128:
	default:
		return false
	}
	return l.KVType == F16 && nheads%l.NKVHeads == 0 && nheads/l.NKVHeads <= attnTCRows
}

// attentionTC runs AttentionTable's attention on the tensor cores (ds_attn_tc, kernels.cu):
// F16 Q and weights, F32 accumulation and softmax; a token's output does not depend on n or on
// the other tokens, but differs from ds_attn's (the decode kernel) by F16 rounding. The
// caller checked the layout (attnTCSupported) and the block count.
func (s *Stream) attentionTC(out, q DevPtr, n, nheads, pos0 int, l KVLayout, tab DevPtr) error {
	g := nheads / l.NKVHeads
	tpb := attnTCRows / g
	qscale := float32(math.Log2E / sqrt64(float64(l.HeadDim)))
	var a argSlots
	a.ptr(out).ptr(q).i32(n).i32(nheads).i32(pos0).i32(l.BlockSize).i32(l.NKVHeads).ptr(tab).f32(qscale)
	s.d.Stats.AttnTC.Add(1)
	return s.launch(fmt.Sprintf("ds_attn_tc%d", l.HeadDim), [3]uint32{uint32(ceilDiv(n, tpb)), uint32(l.NKVHeads), 1}, [3]uint32{128, 1, 1}, 0, &a)
}

// attnMQ lets several query tokens share K/V loads (ds_attn_mq); tests and benchmarks turn it
// off to compare with ds_attn, which must give the same bits.
var attnMQ = true

// attnDec sends decode's attention (one query token, or several with attnMQ off) with head
// dimensions up to 128 to ds_attn_dec (one block per KV head: its query heads share the staged
// K and V) instead of ds_attn (one block per query head); the same bits. Tests turn it off to
// compare the two; DRIFTSTORE_CUDA_ATTN_DEC=0 turns it off (A/B runs).
var attnDec = os.Getenv("DRIFTSTORE_CUDA_ATTN_DEC") != "0"

// attnSPB, when positive, is the number of splits each ds_attn_dec block takes (capped by its
// shared memory) instead of attnDecShape's choice; tests set it to check that a split's result
// does not depend on its block, DRIFTSTORE_CUDA_ATTN_SPB sets it for A/B runs.
var attnSPB, _ = strconv.Atoi(os.Getenv("DRIFTSTORE_CUDA_ATTN_SPB"))

// attnDecShape picks ds_attn_dec's splits per block, threads per block and dynamic shared
// memory for ns splits of ng tokens: about attnDecBlocks blocks in all (fewer, longer blocks as
// the context grows: each stages all its splits' K and V at once, and fewer blocks arrive at
// the merge), at most ATT_DEC_SPB splits and attnDecShared bytes of staged K and V (float,
// ATT_KS per head element and split) per block, a warp per (split, query head) pair up to 8
// warps, never fewer than 4. A split's partial is the same whichever block computes it, so the
// choice changes no result.
func attnDecShape(ns, ng, nheads int, l KVLayout) (spb, threads, shmem int) {
	perSplit := 2 * l.HeadDim * attnDecKS * 4 // K and V of one split, staged
	most := min(attnDecSPB, max(1, attnDecShared/perSplit))
	spb = ceilDiv(ns*ng*l.NKVHeads, attnDecBlocks)
	if attnSPB > 0 {
		spb = attnSPB
	}
	spb = max(1, min(spb, most, ns))
	g := nheads / l.NKVHeads
	threads = 32 * max(4, min(8, spb*g))
	return spb, threads, spb * perSplit
}

const (
	attnChunk     = 32       // positions per attention block (ATT_CHUNK in kernels.cu)
	mqTokens      = 8        // tokens per ds_attn_mq block (MQ_TOK)
	attnPartBytes = 64 << 20 // bound on the attention partials of one launch
	attnTCRows    = 64       // query rows (token, head) per ds_attn_tc block (FA_ROWS)
	attnDecSPB    = 8        // most splits per ds_attn_dec block (ATT_DEC_SPB)
	attnDecShared = 46 << 10 // bound on ds_attn_dec's dynamic shared memory (static: 2 KiB)
	attnDecKS     = 36       // floats per staged row of ds_attn_dec (ATT_KS)
	attnDecBlocks = 396      // ds_attn_dec blocks aimed at (3 per SM of an H100; at 128 registers 2 of 256 threads fit at once)
)

func (s *Stream) elementwise(name string, count int, args *argSlots) error {
	if count <= 0 {
		return nil
	}
	return s.launch(name, [3]uint32{uint32(ceilDiv(count, 256)), 1, 1}, [3]uint32{256, 1, 1}, 0, args)
}

// SwiGLU: out[i] = gate[i] / (1 + exp(-gate[i])) * up[i]; out may alias gate or up. On a
// deferred stream, right after gate and up were recorded as one CUDA-core launch and with out
// equal to gate, the three become one launch with the same bits (few.go).
func (s *Stream) SwiGLU(out, gate, up DevPtr, count int) error {
	if ok, err := s.fuseSwiGLU(out, gate, up, count); ok || err != nil {
		return err
	}
	var a argSlots
	a.ptr(out).ptr(gate).ptr(up).i64(int64(count))
	return s.elementwise("ds_swiglu", count, &a)
}

// Add: out[i] = a[i] + b[i]; out may alias a or b.
func (s *Stream) Add(out, x, y DevPtr, count int) error {
	var a argSlots
	a.ptr(out).ptr(x).ptr(y).i64(int64(count))
	if err := s.elementwise("ds_add", count, &a); err != nil || s.q == nil || count <= 0 {
		return err
	}
	if k := len(s.q.recs.fns) - 1; k >= 0 {
		s.lastAdd.seq, s.lastAdd.rec = s.seq, k
		s.lastAdd.out, s.lastAdd.x, s.lastAdd.y, s.lastAdd.count = out, x, y, count
	}
	return nil
}

// Embed writes the rows of w for tokens into out ([len(tokens)][Cols] f32). Token ids are
// checked against w.Rows and copied, so tokens may be reused at once.
func (s *Stream) Embed(out DevPtr, w *Weights, tokens []int32) error {
	if len(tokens) == 0 {
		return nil
	}
	raw := make([]byte, 4*len(tokens))
	for i, t := range tokens {
		if t < 0 || int(t) >= w.Rows {
			return fmt.Errorf("cuda: token %d out of range [0,%d)", t, w.Rows)
		}
		binary.LittleEndian.PutUint32(raw[4*i:], uint32(t))
	}
	if err := s.grow(&s.small, len(raw)); err != nil {
		return err
	}
	if err := s.htod(s.small.Ptr, raw); err != nil {
		return err
	}
	var a argSlots
	a.ptr(out).ptr(w.data.Ptr).ptr(w.scalePtr()).i32(int(w.Type)).i32(w.Cols).ptr(s.small.Ptr).i32(len(tokens))
	return s.launch("ds_embed", [3]uint32{uint32(ceilDiv(w.Cols, 256)), uint32(len(tokens)), 1}, [3]uint32{256, 1, 1}, 0, &a)
}

// Softmax normalizes each of n rows of count floats in place.
func (s *Stream) Softmax(x DevPtr, count, n int) error {
	if n <= 0 || count <= 0 {
		return nil
	}
	var a argSlots
	a.ptr(x).i32(count).i32(n)
	return s.launch("ds_softmax", [3]uint32{uint32(n), 1, 1}, [3]uint32{1024, 1, 1}, 0, &a)
}

// Argmax returns, for each of n rows of count floats, the first index of the largest value.
// It waits for the stream.
func (s *Stream) Argmax(x DevPtr, count, n int) ([]int32, error) {
	if n <= 0 || count <= 0 {
		return nil, nil
	}
	if err := s.grow(&s.small, 4*n); err != nil {
		return nil, err
	}
	var a argSlots
	a.ptr(s.small.Ptr).ptr(x).i32(count).i32(n)
	if err := s.launch("ds_argmax", [3]uint32{uint32(n), 1, 1}, [3]uint32{1024, 1, 1}, 0, &a); err != nil {
		return nil, err
	}
	if err := s.Sync(); err != nil {
		return nil, err
	}
	raw := make([]byte, 4*n)
	if err := s.d.drv.dtoh(raw, s.small.Ptr); err != nil {
		return nil, err
	}
	idx := make([]int32, n)
	for i := range idx {
		idx[i] = int32(binary.LittleEndian.Uint32(raw[4*i:]))
	}
	return idx, nil
}

// Nop launches an empty kernel (launch-overhead measurements).
func (s *Stream) Nop() error {
	var a argSlots
	a.i32(0)
	return s.launch("ds_nop", [3]uint32{1, 1, 1}, [3]uint32{32, 1, 1}, 0, &a)
}

// CopyAsync copies n bytes between device addresses (device or registered host memory).
func (s *Stream) CopyAsync(dst, src DevPtr, n int) error {
	if n <= 0 {
		return nil
	}
	return s.dtod(dst, src, n)
}

// CopyToHostAsync copies n bytes from src to the host address dst, which must be registered
// (or the copy is synchronous) and stay valid until the stream has passed the copy.
func (s *Stream) CopyToHostAsync(dst uintptr, src DevPtr, n int) error {
	if n <= 0 {
		return nil
	}
	return s.dtoh(dst, src, n)
}

// UploadAsync queues a copy of src (staged by the driver before it returns: src may be
// reused at once) to dst.
func (s *Stream) UploadAsync(dst DevPtr, src []byte) error {
	return s.htod(dst, src)
}

// SumWords adds the nwords 4-byte words at p (wrapping) on the device and returns the sum;
// it waits for the stream. Used to read registered memory from the device in tests.
func (s *Stream) SumWords(p DevPtr, nwords int) (uint32, error) {
	const blocks = 264
	if err := s.grow(&s.small, blocks*4); err != nil {
		return 0, err
	}
	var a argSlots
	a.ptr(s.small.Ptr).ptr(p).i64(int64(nwords))
	if err := s.launch("ds_sum_words", [3]uint32{blocks, 1, 1}, [3]uint32{256, 1, 1}, 0, &a); err != nil {
		return 0, err
	}
	if err := s.Sync(); err != nil {
		return 0, err
	}
	raw := make([]byte, blocks*4)
	if err := s.d.drv.dtoh(raw, s.small.Ptr); err != nil {
		return 0, err
	}
	var sum uint32
	for i := 0; i < blocks; i++ {
		sum += binary.LittleEndian.Uint32(raw[4*i:])
	}
	return sum, nil
}

// FillWords writes v+i to word i of the nwords words at p, on the device.
func (s *Stream) FillWords(p DevPtr, nwords int, v uint32) error {
	var a argSlots
	a.ptr(p).i64(int64(nwords)).i32(int(int32(v)))
	return s.elementwise("ds_fill_words", nwords, &a)
}

// Timer measures device time on the stream between Start and Stop.
func (s *Stream) StartTimer() error {
	if err := s.flush(); err != nil {
		return err
	}
	return s.d.drv.eventRecord(s.t0, s.s)
}

// StopTimer records the end and waits for it; it returns the milliseconds since StartTimer.
func (s *Stream) StopTimer() (float32, error) {
	if err := s.flush(); err != nil {
		return 0, err
	}
	if err := s.d.drv.eventRecord(s.t1, s.s); err != nil {
		return 0, err
	}
	if err := s.d.drv.eventSync(s.t1); err != nil {
		return 0, err
	}
	return s.d.drv.eventElapsed(s.t0, s.t1)
}

func sqrt64(v float64) float64 { return math.Sqrt(v) }
