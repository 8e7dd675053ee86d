package cpu

// #include "kernels.h"
import "C"

import (
	"fmt"
	"math"
	"runtime"
	"unsafe"

	"github.com/driftstore/driftstore/gguf/dtype"
)

func f32ptr(s []float32) *C.float { return (*C.float)(unsafe.Pointer(&s[0])) }

// MatMul computes out[t*w.Rows + r] = sum_c W[r][c] * x[t*w.Cols + c] for
// t < n. It needs len(out) >= n*w.Rows and len(x) >= n*w.Cols; out must not
// overlap x or w.Data. Each output is the canonical-order dot product (see
// the package doc), so out row t does not depend on n or on the other rows
// of x.
func (p *Pool) MatMul(out []float32, w *Weights, x []float32, n int) {
	if err := w.Validate(); err != nil {
		panic(err)
	}
	if n < 0 || int64(n) > maxDim {
		panic(fmt.Sprintf("cpu: MatMul: bad token count %d", n))
	}
	if int64(len(out)) < int64(n)*int64(w.Rows) || int64(len(x)) < int64(n)*int64(w.Cols) {
		panic(fmt.Sprintf("cpu: MatMul: %d tokens of %d×%d need out %d and x %d floats, have %d and %d",
			n, w.Rows, w.Cols, n*w.Rows, n*w.Cols, len(out), len(x)))
	}
	if n == 0 || w.Rows == 0 {
		return
	}
	if w.Cols == 0 {
		clear(out[:n*w.Rows])
		return
	}
	units := int(C.ds_matmul_units(C.int(w.Rows), C.int(n)))
	ctr := new(int64)
	data := unsafe.Pointer(&w.Data[0])
	op, xp := f32ptr(out), f32ptr(x)
	p.run(p.threadsFor(units, int64(w.Rows)*int64(w.Cols)*int64(n)), func(int) {
		C.ds_matmul_worker(C.int(w.Type), C.int(w.Rows), C.int(w.Cols), data, op, xp, C.int(n), (*C.int64_t)(ctr))
	})
}

// RMSNorm normalizes each of n rows of dim values: out[t] = x[t] /
// sqrt(mean(x[t]^2) + eps) * weight. The mean of squares is accumulated in
// float64, sequentially. out may alias x (exactly); len(weight) >= dim.
func (p *Pool) RMSNorm(out, x, weight []float32, n, dim int, eps float32) {
	if n < 0 || dim < 0 || len(out) < n*dim || len(x) < n*dim || len(weight) < dim {
		panic(fmt.Sprintf("cpu: RMSNorm: bad sizes n=%d dim=%d out=%d x=%d weight=%d", n, dim, len(out), len(x), len(weight)))
	}
	if n == 0 || dim == 0 {
		return
	}
	weight = weight[:dim]
	p.parallelFor(n, int64(n)*int64(dim)/4, func(t int) {
		xr := x[t*dim : (t+1)*dim]
		or := out[t*dim : (t+1)*dim]
		var ss float64
		for _, v := range xr {
			ss += float64(v) * float64(v)
		}
		s := float32(1 / math.Sqrt(ss/float64(dim)+float64(eps)))
		for i, v := range xr {
			or[i] = float32(v*s) * weight[i]
		}
	})
}

// RoPE rotates x in place: x is [n][nHeads*headDim], row t at position
// pos0+t. GGML "normal" (adjacent-pair) rotation as llama.cpp uses for
// llama: pairs (2i, 2i+1) of each head, theta_i = pos * base^(-2i/headDim).
// Angles, sines and cosines are computed in float64.
func (p *Pool) RoPE(x []float32, n, nHeads, headDim, pos0 int, base float32) {
	if n < 0 || nHeads < 0 || headDim < 0 || headDim%2 != 0 || pos0 < 0 || len(x) < n*nHeads*headDim {
		panic(fmt.Sprintf("cpu: RoPE: bad sizes n=%d heads=%d headDim=%d pos0=%d len=%d", n, nHeads, headDim, pos0, len(x)))
	}
	if n == 0 || nHeads == 0 || headDim == 0 {
		return
	}
	half := headDim / 2
	freq := make([]float64, half)
	for i := range freq {
		freq[i] = math.Pow(float64(base), -2*float64(i)/float64(headDim))
	}
	row := nHeads * headDim
	p.parallelFor(n, int64(n)*int64(row), func(t int) {
		pos := float64(pos0 + t)
		xr := x[t*row : (t+1)*row]
		for i, f := range freq {
			s, c := math.Sincos(pos * f)
			for h := 0; h < nHeads; h++ {
				j := h*headDim + 2*i
				x0, x1 := float64(xr[j]), float64(xr[j+1])
				xr[j] = float32(x0*c - x1*s)
				xr[j+1] = float32(x0*s + x1*c)
			}
		}
	})
}

// KVLayout describes one layer's KV cache: a list of blocks, block b holding
// positions [b*BlockSize, (b+1)*BlockSize). Within a block: K as
// [BlockSize][NKVHeads][HeadDim], then V likewise, each element in KVType
// (F16 or F32).
type KVLayout struct {
	BlockSize, NKVHeads, HeadDim int
	KVType                       DType
}

// Validate reports whether the layout is usable.
func (l KVLayout) Validate() error {
	if l.BlockSize <= 0 || l.NKVHeads <= 0 || l.HeadDim <= 0 || l.BlockSize > maxDim || l.NKVHeads > maxDim || l.HeadDim > maxDim {
		return fmt.Errorf("cpu: bad KV layout %d×%d×%d", l.BlockSize, l.NKVHeads, l.HeadDim)
	}
	if l.KVType != F16 && l.KVType != F32 {
		return fmt.Errorf("cpu: unsupported KV type %v", l.KVType)
	}
	if int64(l.BlockSize)*int64(l.NKVHeads)*int64(l.HeadDim)*8 > math.MaxInt32 {
		return fmt.Errorf("cpu: KV block %d×%d×%d too large", l.BlockSize, l.NKVHeads, l.HeadDim)
	}
	return nil
}

func (l KVLayout) elemSize() int {
	if l.KVType == F16 {
		return 2
	}
	return 4
}

// BlockBytes is the size of one block: K and V for BlockSize positions.
func (l KVLayout) BlockBytes() int {
	return 2 * l.BlockSize * l.NKVHeads * l.HeadDim * l.elemSize()
}

// blocksFor checks that blocks covers positions [0, end) and that every
// block it needs is at least BlockBytes long.
func (l KVLayout) checkBlocks(op string, blocks [][]byte, end int) {
	if err := l.Validate(); err != nil {
		panic(fmt.Sprintf("cpu: %s: %v", op, err))
	}
	need := (end + l.BlockSize - 1) / l.BlockSize
	if len(blocks) < need {
		panic(fmt.Sprintf("cpu: %s: positions up to %d need %d blocks, have %d", op, end, need, len(blocks)))
	}
	bb := l.BlockBytes()
	for b := 0; b < need; b++ {
		if len(blocks[b]) < bb {
			panic(fmt.Sprintf("cpu: %s: block %d has %d bytes, need %d", op, b, len(blocks[b]), bb))
		}
	}
}

// StoreKV writes n rows of k and v ([n][NKVHeads*HeadDim] float32) for
// positions pos0..pos0+n-1 into blocks, converting to KVType
// (round-to-nearest-even for F16).
func StoreKV(l KVLayout, blocks [][]byte, k, v []float32, n, pos0 int) {
	if n < 0 || pos0 < 0 {
		panic(fmt.Sprintf("cpu: StoreKV: bad n=%d pos0=%d", n, pos0))
	}
	if n == 0 {
		return
	}
	l.checkBlocks("StoreKV", blocks, pos0+n)
	row := l.NKVHeads * l.HeadDim
	if len(k) < n*row || len(v) < n*row {
		panic(fmt.Sprintf("cpu: StoreKV: %d rows of %d need k, v of %d floats, have %d and %d", n, row, n*row, len(k), len(v)))
	}
	es := l.elemSize()
	rowBytes := row * es
	vOff := l.BlockSize * rowBytes
	// Consecutive positions within a block are consecutive rows: convert
	// each block's run of positions in one go.
	for t := 0; t < n; {
		pos := pos0 + t
		blk := blocks[pos/l.BlockSize]
		o := pos % l.BlockSize
		m := min(l.BlockSize-o, n-t)
		kd := blk[o*rowBytes : (o+m)*rowBytes]
		vd := blk[vOff+o*rowBytes : vOff+(o+m)*rowBytes]
		ks, vs := k[t*row:(t+m)*row], v[t*row:(t+m)*row]
		if l.KVType == F16 {
			// The C conversion (hardware F16C where present) rounds to
			// nearest even exactly like gguf/dtype.F32sToF16s.
			cToF16Bytes(kd, ks)
			cToF16Bytes(vd, vs)
		} else {
			dtype.F32sToBytes(kd, ks)
			dtype.F32sToBytes(vd, vs)
		}
		t += m
	}
}

// Attention computes causal multi-head attention for n query rows against
// the cache. q and out are [n][nHeads*HeadDim]; row t is at position
// pos0+t and attends to positions 0..pos0+t inclusive, which must already
// be stored in blocks. GQA: head h uses KV head h/(nHeads/NKVHeads). Scores
// are scaled by 1/sqrt(HeadDim); softmax in float32 with max subtraction.
// out must not overlap q or the blocks. Row t's result depends only on q row
// t, pos0+t and the cache contents.
func (p *Pool) Attention(out, q []float32, n, nHeads, pos0 int, l KVLayout, blocks [][]byte) {
	if n < 0 || pos0 < 0 || nHeads <= 0 || int64(pos0)+int64(n) > maxDim {
		panic(fmt.Sprintf("cpu: Attention: bad n=%d heads=%d pos0=%d", n, nHeads, pos0))
	}
	if n == 0 {
		return
	}
	l.checkBlocks("Attention", blocks, pos0+n)
	if nHeads%l.NKVHeads != 0 {
		panic(fmt.Sprintf("cpu: Attention: %d heads not a multiple of %d KV heads", nHeads, l.NKVHeads))
	}
	row := nHeads * l.HeadDim
	if len(q) < n*row || len(out) < n*row {
		panic(fmt.Sprintf("cpu: Attention: %d rows of %d need q, out of %d floats, have %d and %d", n, row, n*row, len(q), len(out)))
	}
	nb := (pos0 + n + l.BlockSize - 1) / l.BlockSize
	ptrs := make([]unsafe.Pointer, nb)
	var pin runtime.Pinner
	defer pin.Unpin()
	for b := range ptrs {
		pin.Pin(&blocks[b][0])
		ptrs[b] = unsafe.Pointer(&blocks[b][0])
	}
	units := int(C.ds_attention_units(C.int(n), C.int(l.NKVHeads)))
	ctr := new(int64)
	ctxWork := int64(pos0) + int64(n+1)/2 // mean context length
	work := int64(n) * int64(nHeads) * int64(l.HeadDim) * ctxWork * 2
	op, qp, bp := f32ptr(out), f32ptr(q), &ptrs[0]
	p.run(p.threadsFor(units, work), func(int) {
		C.ds_attention_worker(op, qp, C.int(n), C.int(nHeads), C.int(pos0), C.int(l.BlockSize),
			C.int(l.NKVHeads), C.int(l.HeadDim), C.int(l.KVType), bp, (*C.int64_t)(ctr))
	})
}

// SwiGLU computes out = silu(gate) * up elementwise over len(out) values,
// silu(g) = g / (1 + exp(-g)) in float32. out may alias gate or up exactly.
func (p *Pool) SwiGLU(out, gate, up []float32) {
	n := len(out)
	if len(gate) < n || len(up) < n {
		panic(fmt.Sprintf("cpu: SwiGLU: out %d, gate %d, up %d", n, len(gate), len(up)))
	}
	if n == 0 {
		return
	}
	const chunk = 1 << 14
	units := (n + chunk - 1) / chunk
	p.parallelFor(units, int64(n)*8, func(u int) {
		lo, hi := u*chunk, min((u+1)*chunk, n)
		C.ds_swiglu(f32ptr(out[lo:]), f32ptr(gate[lo:]), f32ptr(up[lo:]), C.int64_t(hi-lo))
	})
}

// Add computes dst[i] += src[i] for i < len(dst); len(src) >= len(dst).
func Add(dst, src []float32) {
	src = src[:len(dst)]
	for i := range dst {
		dst[i] += src[i]
	}
}

// Softmax replaces x by softmax(x): exp(x - max) in float32, normalized by
// the float64 sum.
func Softmax(x []float32) {
	if len(x) == 0 {
		return
	}
	C.ds_softmax(f32ptr(x), C.int64_t(len(x)))
}

// Embed writes row ids[t] of the embedding matrix w, dequantized to float32
// (Q8_0: the rounded product of scale and value), to out[t*w.Cols:]. It
// panics if an id is out of range or out is shorter than len(ids)*w.Cols.
func Embed(out []float32, w *Weights, ids []int32) {
	if err := w.Validate(); err != nil {
		panic(err)
	}
	if len(out) < len(ids)*w.Cols {
		panic(fmt.Sprintf("cpu: Embed: %d ids of %d need %d floats, have %d", len(ids), w.Cols, len(ids)*w.Cols, len(out)))
	}
	rb, _ := w.Type.RowBytes(w.Cols)
	for t, id := range ids {
		if id < 0 || int(id) >= w.Rows {
			panic(fmt.Sprintf("cpu: Embed: token id %d out of range [0, %d)", id, w.Rows))
		}
		dequantRow(out[t*w.Cols:(t+1)*w.Cols], w.Type, w.Data[int(id)*rb:(int(id)+1)*rb])
	}
}

// dequantRow converts one encoded row to float32.
func dequantRow(dst []float32, t DType, src []byte) {
	switch t {
	case F32:
		dtype.F32sFromBytes(dst, src)
	case F16:
		dtype.F16sToF32s(dst, src)
	case BF16:
		dtype.BF16sToF32s(dst, src)
	case Q8_0:
		dtype.DequantizeQ8_0(dst, src)
	default:
		panic(fmt.Sprintf("cpu: unsupported weight type %v", t))
	}
}

// cToF16 and cToF32 run the C conversions (hardware F16C where present);
// the tests compare them with the Go ones.
func cToF16(dst []uint16, src []float32) {
	C.ds_f32_to_f16((*C.uint16_t)(unsafe.Pointer(&dst[0])), f32ptr(src), C.int64_t(len(src)))
}

// cToF16Bytes writes src as little-endian binary16 into dst (2 bytes each;
// len(dst) == 2*len(src), which callers guarantee).
func cToF16Bytes(dst []byte, src []float32) {
	if len(src) == 0 {
		return
	}
	C.ds_f32_to_f16((*C.uint16_t)(unsafe.Pointer(&dst[0])), f32ptr(src), C.int64_t(len(src)))
}

func cToF32(dst []float32, src []uint16) {
	C.ds_f16_to_f32(f32ptr(dst), (*C.uint16_t)(unsafe.Pointer(&src[0])), C.int64_t(len(src)))
}
