package engine

import (
	"encoding/binary"
	"fmt"
	"unsafe"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// Host ops: the imports of module "driftstore" (see guest/ABI.md). Every op checks every
// offset, length, alignment, weight id and position against the calling instance's current
// memory and model before touching anything; a violation traps the guest with an error that
// names the op and the argument, and marks the instance dead. Nothing a guest passes can make
// the host read or write outside the instance's region, or panic.

// weight kinds per layer (the guest's wid = layer*16 + kind), and model-wide ids from 1<<20.
const (
	kAttnNorm = iota
	kAttnQ
	kAttnK
	kAttnV
	kAttnOut
	kFFNNorm
	kFFNGate
	kFFNUp
	kFFNDown
	kindsPerLayer

	widStride = 16
	widGlobal = 1 << 20
)

// Dense weight indexes: layer l kind k is l*kindsPerLayer+k; the globals follow the layers.
func wiGlobal(layers, g int) int { return layers*kindsPerLayer + g }

const (
	gTokenEmbd = iota
	gOutputNorm
	gOutput
	nGlobals
)

// opError is a refused host-op call.
type opError struct {
	op, msg string
}

func (e *opError) Error() string { return "host op " + e.op + ": " + e.msg }

func refuse(op, format string, a ...any) *opError {
	return &opError{op: op, msg: fmt.Sprintf(format, a...)}
}

type opFunc func(in *Instance, mem []byte, a []wasmtime.Val) (int32, *opError)

type opDef struct {
	name    string
	nParams int
	result  bool
	fn      opFunc
}

var opDefs = []opDef{
	{"config", 2, true, opConfig},
	{"embed", 3, false, opEmbed},
	{"rmsnorm", 4, false, opRMSNorm},
	{"matmul", 4, false, opMatMul},
	{"rope", 4, false, opRoPE},
	{"store_kv", 6, false, opStoreKV},
	{"attention", 6, false, opAttention},
	{"swiglu", 4, false, opSwiGLU},
	{"add", 3, false, opAdd},
	{"nop", 0, false, nil},
	{"argmax", 2, true, opArgmax},
	{"top_k", 5, true, opTopK},
}

func newLinker(wt *wasmtime.Engine) (*wasmtime.Linker, error) {
	l := wasmtime.NewLinker(wt)
	if err := l.DefineWasi(); err != nil {
		l.Close()
		return nil, fmt.Errorf("engine: define WASI: %w", err)
	}
	i32 := wasmtime.NewValType(wasmtime.KindI32)
	for _, d := range opDefs {
		params := make([]*wasmtime.ValType, d.nParams)
		for i := range params {
			params[i] = i32
		}
		var results []*wasmtime.ValType
		if d.result {
			results = []*wasmtime.ValType{i32}
		}
		ty := wasmtime.NewFuncType(params, results)
		var err error
		if d.fn == nil {
			err = l.FuncNew("driftstore", d.name, ty, func(*wasmtime.Caller, []wasmtime.Val) ([]wasmtime.Val, *wasmtime.Trap) {
				return nil, nil
			})
		} else {
			err = l.FuncNew("driftstore", d.name, ty, wrapOp(d))
		}
		if err != nil {
			l.Close()
			return nil, fmt.Errorf("engine: define host op %s: %w", d.name, err)
		}
	}
	return l, nil
}

// wrapOp turns an op into a wasmtime callback: finds the instance, its current memory, runs
// the op, and converts refusals and panics into traps (a Go panic must never unwind through
// wasmtime, and wasmtime-go would re-raise it in the host).
func wrapOp(d opDef) func(*wasmtime.Caller, []wasmtime.Val) ([]wasmtime.Val, *wasmtime.Trap) {
	return func(c *wasmtime.Caller, args []wasmtime.Val) (res []wasmtime.Val, trap *wasmtime.Trap) {
		in, _ := c.Data().(*Instance)
		if in == nil || in.region == nil {
			return nil, wasmtime.NewTrap("host op " + d.name + ": caller is not a driftstore instance")
		}
		defer func() {
			if p := recover(); p != nil {
				err := refuse(d.name, "internal error: %v", p)
				in.fault = err
				res, trap = nil, wasmtime.NewTrap(err.Error())
			}
		}()
		mem := in.region.Bytes()
		r, err := d.fn(in, mem, args)
		if err != nil {
			in.fault = err
			return nil, wasmtime.NewTrap(err.Error())
		}
		if d.result {
			return []wasmtime.Val{wasmtime.ValI32(r)}, nil
		}
		return nil, nil
	}
}

func u32(v wasmtime.Val) uint32 { return uint32(v.I32()) }

// span checks [off, off+n*size) against mem and the alignment, and returns that range.
func span(op, what string, mem []byte, off, n uint32, size, align uint64) ([]byte, *opError) {
	end := uint64(off) + uint64(n)*size
	if end > uint64(len(mem)) {
		return nil, refuse(op, "%s [%d, %d) is outside linear memory (%d bytes)", what, off, end, len(mem))
	}
	if uint64(off)%align != 0 {
		return nil, refuse(op, "%s offset %d is not %d-byte aligned", what, off, align)
	}
	return mem[off:end:end], nil
}

func f32s(op, what string, mem []byte, off, n uint32) ([]float32, *opError) {
	b, err := span(op, what, mem, off, n, 4, 4)
	if err != nil || n == 0 {
		return nil, err
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), n), nil
}

func i32s(op, what string, mem []byte, off, n uint32) ([]int32, *opError) {
	b, err := span(op, what, mem, off, n, 4, 4)
	if err != nil || n == 0 {
		return nil, err
	}
	return unsafe.Slice((*int32)(unsafe.Pointer(&b[0])), n), nil
}

// rows checks a row count against maxOpRows, the ABI's limit for every op (not the
// instance's batch: the guest may split its work differently). Products of a row count with
// a model width can still reach 2^32; f32rows checks them.
func (in *Instance) rows(op string, n uint32) *opError {
	if n == 0 || n > maxOpRows {
		return refuse(op, "row count %d is outside 1..%d", n, maxOpRows)
	}
	return nil
}

const maxOpRows = 1 << 16

func mul(op string, a, b uint32) (uint32, *opError) {
	p := uint64(a) * uint64(b)
	if p > 1<<32-1 {
		return 0, refuse(op, "size %d×%d overflows", a, b)
	}
	return uint32(p), nil
}

// f32rows checks and returns n rows of width float32 values at off. The product is checked:
// n ≤ 65536 times a width up to 65536 (the model's Dim) reaches 2^32, which as a uint32 would
// wrap to an empty range while the kernel still processes n rows.
func f32rows(op, what string, mem []byte, off, n, width uint32) ([]float32, *opError) {
	sz, err := mul(op, n, width)
	if err != nil {
		return nil, err
	}
	return f32s(op, what, mem, off, sz)
}

// f32rows2 checks two such ranges of the same shape (an op's output and input, or K and V).
func f32rows2(op, whatA, whatB string, mem []byte, offA, offB, n, width uint32) (a, b []float32, err *opError) {
	if a, err = f32rows(op, whatA, mem, offA, n, width); err != nil {
		return nil, nil, err
	}
	if b, err = f32rows(op, whatB, mem, offB, n, width); err != nil {
		return nil, nil, err
	}
	return a, b, nil
}

// weight resolves a guest weight id to a dense index, checking that it exists and that it is
// a norm vector (norm) or a matrix (!norm).
func (in *Instance) weight(op string, wid uint32, norm bool) (int, *opError) {
	h := &in.model.hyper
	var i int
	switch {
	case wid < widGlobal:
		l, k := int(wid/widStride), int(wid%widStride)
		if l >= h.Layers || k >= kindsPerLayer {
			return 0, refuse(op, "weight id %d names no tensor", wid)
		}
		i = l*kindsPerLayer + k
	case wid-widGlobal < nGlobals:
		i = wiGlobal(h.Layers, int(wid-widGlobal))
	default:
		return 0, refuse(op, "weight id %d names no tensor", wid)
	}
	w := &in.model.tensors.W[i]
	if w.Data == nil {
		return 0, refuse(op, "weight id %d names no tensor", wid)
	}
	if (w.Rows == 1) != norm {
		kind := "matrix"
		if norm {
			kind = "norm vector"
		}
		return 0, refuse(op, "weight id %d is not a %s", wid, kind)
	}
	return i, nil
}

func opConfig(in *Instance, mem []byte, a []wasmtime.Val) (int32, *opError) {
	dst, n := u32(a[0]), u32(a[1])
	const words = 8
	if n < words*4 {
		return 0, refuse("config", "buffer of %d bytes is smaller than %d", n, words*4)
	}
	b, err := span("config", "dst", mem, dst, words, 4, 4)
	if err != nil {
		return 0, err
	}
	h := &in.model.hyper
	for i, v := range []int{h.Layers, h.Dim, h.Heads, h.KVHeads, h.HeadDim, h.FFN, h.Vocab, h.CtxMax} {
		binary.LittleEndian.PutUint32(b[4*i:], uint32(v))
	}
	return words * 4, nil
}

func opEmbed(in *Instance, mem []byte, a []wasmtime.Val) (int32, *opError) {
	const op = "embed"
	outOff, idsOff, n := u32(a[0]), u32(a[1]), u32(a[2])
	if err := in.rows(op, n); err != nil {
		return 0, err
	}
	h := &in.model.hyper
	ids, err := i32s(op, "ids", mem, idsOff, n)
	if err != nil {
		return 0, err
	}
	out, err := f32rows(op, "out", mem, outOff, n, uint32(h.Dim))
	if err != nil {
		return 0, err
	}
	// The guest may change ids concurrently only if it had threads; it has none, but copy
	// anyway so a checked id cannot change before use.
	tmp := in.idScratch(int(n))
	copy(tmp, ids)
	for _, t := range tmp {
		if t < 0 || int(t) >= h.Vocab {
			return 0, refuse(op, "token id %d outside the vocabulary (%d)", t, h.Vocab)
		}
	}
	in.exec.Embed(out, tmp)
	return 0, nil
}

func opRMSNorm(in *Instance, mem []byte, a []wasmtime.Val) (int32, *opError) {
	const op = "rmsnorm"
	outOff, xOff, wid, n := u32(a[0]), u32(a[1]), u32(a[2]), u32(a[3])
	if err := in.rows(op, n); err != nil {
		return 0, err
	}
	w, err := in.weight(op, wid, true)
	if err != nil {
		return 0, err
	}
	out, x, err := f32rows2(op, "out", "x", mem, outOff, xOff, n, uint32(in.model.tensors.W[w].Cols))
	if err != nil {
		return 0, err
	}
	in.exec.RMSNorm(out, x, w, int(n))
	return 0, nil
}

func opMatMul(in *Instance, mem []byte, a []wasmtime.Val) (int32, *opError) {
	const op = "matmul"
	outOff, wid, xOff, n := u32(a[0]), u32(a[1]), u32(a[2]), u32(a[3])
	if err := in.rows(op, n); err != nil {
		return 0, err
	}
	w, err := in.weight(op, wid, false)
	if err != nil {
		return 0, err
	}
	tw := &in.model.tensors.W[w]
	out, err := f32rows(op, "out", mem, outOff, n, uint32(tw.Rows))
	if err != nil {
		return 0, err
	}
	x, err := f32rows(op, "x", mem, xOff, n, uint32(tw.Cols))
	if err != nil {
		return 0, err
	}
	in.exec.MatMul(out, w, x, int(n))
	return 0, nil
}

func (in *Instance) checkPos(op string, pos0, n uint32) *opError {
	end := uint64(pos0) + uint64(n)
	if lim := uint64(in.model.hyper.CtxMax); lim != 0 && end > lim {
		return refuse(op, "positions [%d, %d) exceed the context length %d", pos0, end, lim)
	}
	if end > 1<<24 {
		return refuse(op, "positions [%d, %d) are out of range", pos0, end)
	}
	return nil
}

func opRoPE(in *Instance, mem []byte, a []wasmtime.Val) (int32, *opError) {
	const op = "rope"
	xOff, n, nHeads, pos0 := u32(a[0]), u32(a[1]), u32(a[2]), u32(a[3])
	if err := in.rows(op, n); err != nil {
		return 0, err
	}
	h := &in.model.hyper
	if nHeads != uint32(h.Heads) && nHeads != uint32(h.KVHeads) {
		return 0, refuse(op, "head count %d is neither %d nor %d", nHeads, h.Heads, h.KVHeads)
	}
	if err := in.checkPos(op, pos0, n); err != nil {
		return 0, err
	}
	x, err := f32rows(op, "x", mem, xOff, n, nHeads*uint32(h.HeadDim))
	if err != nil {
		return 0, err
	}
	in.exec.RoPE(x, int(n), int(nHeads), int(pos0))
	return 0, nil
}

// blocks reads a block table of nb offsets and checks each block region; it returns the
// blocks covering positions [0, end).
func (in *Instance) blocks(op string, mem []byte, tableOff, nb uint32, end uint64) ([][]byte, *opError) {
	l := in.layout
	need := (end + uint64(l.BlockSize) - 1) / uint64(l.BlockSize)
	if uint64(nb) < need {
		return nil, refuse(op, "block table has %d blocks, positions up to %d need %d", nb, end, need)
	}
	tbl, err := span(op, "block table", mem, tableOff, uint32(need), 4, 4)
	if err != nil {
		return nil, err
	}
	bs := in.blockScratch(int(need))
	for i := range bs {
		o := binary.LittleEndian.Uint32(tbl[4*i:])
		b, err := span(op, "KV block", mem, o, 1, uint64(l.BlockBytes), BlockAlign)
		if err != nil {
			err.msg = fmt.Sprintf("%s (table entry %d)", err.msg, i)
			return nil, err
		}
		bs[i] = b
	}
	return bs, nil
}

// kvBlocks checks n rows at positions pos0.. and returns the blocks of the table that cover
// positions [0, pos0+n).
func (in *Instance) kvBlocks(op string, mem []byte, tableOff, nb, n, pos0 uint32) ([][]byte, *opError) {
	if err := in.rows(op, n); err != nil {
		return nil, err
	}
	if err := in.checkPos(op, pos0, n); err != nil {
		return nil, err
	}
	return in.blocks(op, mem, tableOff, nb, uint64(pos0)+uint64(n))
}

func opStoreKV(in *Instance, mem []byte, a []wasmtime.Val) (int32, *opError) {
	const op = "store_kv"
	tableOff, nb, kOff, vOff, n, pos0 := u32(a[0]), u32(a[1]), u32(a[2]), u32(a[3]), u32(a[4]), u32(a[5])
	blocks, err := in.kvBlocks(op, mem, tableOff, nb, n, pos0)
	if err != nil {
		return 0, err
	}
	k, v, err := f32rows2(op, "k", "v", mem, kOff, vOff, n, uint32(in.layout.KVHeads*in.layout.HeadDim))
	if err != nil {
		return 0, err
	}
	in.exec.StoreKV(in.layout, blocks, k, v, int(n), int(pos0))
	return 0, nil
}

func opAttention(in *Instance, mem []byte, a []wasmtime.Val) (int32, *opError) {
	const op = "attention"
	outOff, qOff, n, pos0, tableOff, nb := u32(a[0]), u32(a[1]), u32(a[2]), u32(a[3]), u32(a[4]), u32(a[5])
	blocks, err := in.kvBlocks(op, mem, tableOff, nb, n, pos0)
	if err != nil {
		return 0, err
	}
	h := &in.model.hyper
	out, q, err := f32rows2(op, "out", "q", mem, outOff, qOff, n, uint32(h.Heads*h.HeadDim))
	if err != nil {
		return 0, err
	}
	in.exec.Attention(out, q, int(n), int(pos0), in.layout, blocks)
	return 0, nil
}

func opSwiGLU(in *Instance, mem []byte, a []wasmtime.Val) (int32, *opError) {
	const op = "swiglu"
	outOff, gOff, uOff, n := u32(a[0]), u32(a[1]), u32(a[2]), u32(a[3])
	out, g, err := f32rows2(op, "out", "gate", mem, outOff, gOff, n, 1)
	if err != nil {
		return 0, err
	}
	u, err := f32s(op, "up", mem, uOff, n)
	if err != nil {
		return 0, err
	}
	if n > 0 {
		in.exec.SwiGLU(out, g, u)
	}
	return 0, nil
}

func opAdd(in *Instance, mem []byte, a []wasmtime.Val) (int32, *opError) {
	const op = "add"
	dOff, sOff, n := u32(a[0]), u32(a[1]), u32(a[2])
	d, s, err := f32rows2(op, "dst", "src", mem, dOff, sOff, n, 1)
	if err != nil {
		return 0, err
	}
	if n > 0 {
		in.exec.Add(d, s)
	}
	return 0, nil
}
