package metal

import (
	"encoding/binary"
	"fmt"
	"math"
	"sort"
	"unsafe"
)

// This file holds the platform-independent decisions of the backend (which page ranges to wrap,
// which regions to accept, where operands lie, what the RoPE table holds, how kernel
// parameters are laid out), so that they are tested on every platform, not only on a Mac.

// span is host memory [addr, addr+n) that a kernel reads.
type span struct {
	addr uintptr
	n    int
}

// wrapRange is one no-copy buffer to create: [base, base+n), both multiples of the page size.
type wrapRange struct {
	base uintptr
	n    int
}

// place locates a span inside the wrapped ranges: buffer index and byte offset. buf is -1 for
// an empty span.
type place struct {
	buf int
	off uint64
}

// planWraps chooses the page ranges to wrap so that every non-empty span lies inside one of
// them: each span's enclosing pages [addr rounded down, end rounded up to page), merged with
// the previous range while the two touch or overlap and the merged range stays within maxLen
// bytes. page must be a power of two. It fails if one span alone needs more than maxLen bytes.
//
// Rounding out to whole pages never reaches memory that is not mapped: protection is per page,
// so the pages holding a span's bytes are mapped in full.
func planWraps(spans []span, page, maxLen int) ([]wrapRange, []place, error) {
	if page <= 0 || page&(page-1) != 0 {
		return nil, nil, fmt.Errorf("metal: page size %d is not a power of two", page)
	}
	places := make([]place, len(spans))
	idx := make([]int, 0, len(spans))
	for i, s := range spans {
		places[i].buf = -1
		if s.n < 0 {
			return nil, nil, fmt.Errorf("metal: span %d has negative length %d", i, s.n)
		}
		if s.n > 0 {
			idx = append(idx, i)
		}
	}
	sort.SliceStable(idx, func(a, b int) bool { return spans[idx[a]].addr < spans[idx[b]].addr })
	pg := uintptr(page)
	var out []wrapRange
	for _, i := range idx {
		s := spans[i]
		if s.addr+uintptr(s.n) < s.addr {
			return nil, nil, fmt.Errorf("metal: span %d wraps around the address space", i)
		}
		lo := s.addr &^ (pg - 1)
		hi := (s.addr + uintptr(s.n) + pg - 1) &^ (pg - 1)
		if hi-lo > uintptr(maxLen) {
			return nil, nil, fmt.Errorf("metal: tensor %d needs a %d-byte buffer, more than the device's maximum %d", i, hi-lo, maxLen)
		}
		if k := len(out) - 1; k >= 0 {
			cur := &out[k]
			end := cur.base + uintptr(cur.n)
			if lo <= end && max(end, hi)-cur.base <= uintptr(maxLen) {
				if hi > end {
					cur.n = int(hi - cur.base)
				}
				places[i] = place{buf: k, off: uint64(s.addr - cur.base)}
				continue
			}
		}
		out = append(out, wrapRange{base: lo, n: int(hi - lo)})
		places[i] = place{buf: len(out) - 1, off: uint64(s.addr - lo)}
	}
	return out, places, nil
}

// checkRegion reports whether a linear memory [base, base+n) can be wrapped without a copy:
// newBufferWithBytesNoCopy wants a page-aligned start and a whole number of pages, and
// driftstore promises 16 KiB alignment (Apple Silicon's page) for its regions.
func checkRegion(base uintptr, n, page int) error {
	align := max(page, regionAlign)
	if base%uintptr(align) != 0 {
		return fmt.Errorf("metal: region base %#x is not %d-byte aligned", base, align)
	}
	if n <= 0 || n%align != 0 {
		return fmt.Errorf("metal: region length %d is not a positive multiple of %d bytes", n, align)
	}
	return nil
}

// regionAlign is the alignment driftstore's regions are made with (wasmmem.MinAlignment,
// engine.BlockAlign).
const regionAlign = 16 << 10

// within returns the byte offset of [p, p+n) in the memory [base, base+size), or false if it
// does not lie inside.
func within(base uintptr, size int, a uintptr, n int) (uint64, bool) {
	if n < 0 || a < base || a-base > uintptr(size) || uintptr(n) > uintptr(size)-(a-base) {
		return 0, false
	}
	return uint64(a - base), true
}

// blockOffsets writes the byte offsets of blocks[0:len(dst)] in the memory [base, base+size)
// into dst, checking that each block has at least blockBytes bytes inside that memory.
func blockOffsets(dst []uint32, base uintptr, size int, blocks [][]byte, blockBytes int) error {
	if len(blocks) < len(dst) {
		return fmt.Errorf("metal: %d blocks given, %d needed", len(blocks), len(dst))
	}
	for i := range dst {
		b := blocks[i]
		if len(b) < blockBytes {
			return fmt.Errorf("metal: KV block %d has %d bytes, need %d", i, len(b), blockBytes)
		}
		off, ok := within(base, size, uintptr(unsafe.Pointer(unsafe.SliceData(b))), blockBytes)
		if !ok || off > math.MaxUint32 {
			return fmt.Errorf("metal: KV block %d is not in the instance's linear memory", i)
		}
		dst[i] = uint32(off)
	}
	return nil
}

// ropeTable fills dst ([n][headDim/2][2]) with cos and sin of the rotation angles of positions
// pos0..pos0+n-1, computed in float64 exactly as engine/cpu does (theta_i = pos *
// base^(-2i/headDim)) and rounded to float32; the rope kernel applies them.
func ropeTable(dst []float32, n, pos0, headDim int, base float32) {
	half := headDim / 2
	freq := make([]float64, half)
	for i := range freq {
		freq[i] = math.Pow(float64(base), -2*float64(i)/float64(headDim))
	}
	for t := 0; t < n; t++ {
		pos := float64(pos0 + t)
		row := dst[2*t*half : 2*(t+1)*half]
		for i, f := range freq {
			s, c := math.Sincos(pos * f)
			row[2*i] = float32(c)
			row[2*i+1] = float32(s)
		}
	}
}

// ropeApply is the rope kernel's arithmetic on the host (x [n][nHeads*headDim] in place, cs
// from ropeTable): the reference for the table's tests.
func ropeApply(x, cs []float32, n, nHeads, headDim int) {
	half := headDim / 2
	for t := 0; t < n; t++ {
		for h := 0; h < nHeads; h++ {
			for i := 0; i < half; i++ {
				c, s := cs[2*(t*half+i)], cs[2*(t*half+i)+1]
				j := (t*nHeads+h)*headDim + 2*i
				x0, x1 := x[j], x[j+1]
				x[j] = x0*c - x1*s
				x[j+1] = x0*s + x1*c
			}
		}
	}
}

// params is a kernel's parameter struct as kernels.metal declares it: 4-byte fields (uint or
// float) in order, no padding, bound with setBytes. Each field carries its name in
// kernels.metal, which the tests compare with the source.
type params struct {
	b     [maxParamBytes]byte
	names [maxParamBytes / 4]string
	n     int
}

func (p *params) u32(name string, v int) *params {
	if v < 0 || int64(v) > math.MaxUint32 {
		panic(fmt.Sprintf("metal: kernel parameter %s = %d out of range", name, v))
	}
	p.names[p.n/4] = name
	binary.LittleEndian.PutUint32(p.b[p.n:], uint32(v))
	p.n += 4
	return p
}

func (p *params) f32(name string, v float32) *params {
	p.names[p.n/4] = name
	binary.LittleEndian.PutUint32(p.b[p.n:], math.Float32bits(v))
	p.n += 4
	return p
}

// The parameter structs of kernels.metal, one builder each.

func matmulParams(rows, cols, n, rowBytes int) *params {
	return new(params).u32("rows", rows).u32("cols", cols).u32("n", n).u32("row_bytes", rowBytes)
}

func embedParams(n, cols, rows, rowBytes int) *params {
	return new(params).u32("n", n).u32("cols", cols).u32("rows", rows).u32("row_bytes", rowBytes)
}

func normParams(dim int, eps float32) *params {
	return new(params).u32("dim", dim).f32("eps", eps)
}

func ropeParams(n, heads, headDim int) *params {
	return new(params).u32("n", n).u32("heads", heads).u32("head_dim", headDim)
}

func kvParams(n, pos0, blockSize, row int, f16 bool) *params {
	return new(params).u32("n", n).u32("pos0", pos0).u32("block_size", blockSize).u32("row", row).u32("f16", b2i(f16))
}

func attnParams(n, heads, pos0, blockSize, kvHeads, headDim int, f16 bool) *params {
	// 1.0f / sqrtf((float)hd), as engine/cpu computes the scale.
	scale := 1 / float32(math.Sqrt(float64(headDim)))
	return new(params).u32("n", n).u32("heads", heads).u32("pos0", pos0).u32("block_size", blockSize).
		u32("kv_heads", kvHeads).u32("head_dim", headDim).u32("f16", b2i(f16)).f32("scale", scale)
}

// countParams is the single "n" of the elementwise kernels (bound as constant uint &n).
func countParams(n int) *params { return new(params).u32("n", n) }

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }
