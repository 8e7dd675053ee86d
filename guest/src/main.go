//go:build wasip1

// Command guest is driftstore's WebAssembly guest: it drives a Llama-family forward pass by
// calling host ops with offsets into its own linear memory, and it owns the conversation state —
// token history, position, activations, sampler and RNG state, the last logits and the KV cache —
// in that memory.
//
// It is built as a WASI reactor (GOOS=wasip1 GOARCH=wasm -buildmode=c-shared, see
// scripts/build-guest.sh); the host calls _initialize once, then init, then the other exports.
// The ABI (exports, imports, record formats) is documented in guest/ABI.md; keep both in step
// and bump abiVersion on any change.
//
// The guest is single-threaded and trusts nothing it did not compute itself except the model
// configuration the host hands it; the host, in turn, bounds-checks every offset the guest
// passes (the guest is untrusted).
package main

import (
	"encoding/binary"
	"math"
	"unsafe"
)

// abiVersion is returned by the abi_version export; the host refuses a guest with another one.
const abiVersion = 3

func main() {}

// ---- host ops (module "driftstore") ----
// Offsets are byte offsets into this module's memory; counts are elements. A host op that finds
// anything out of range traps, which ends the guest.

//go:wasmimport driftstore config
func hostConfig(dst, n uint32) uint32

//go:wasmimport driftstore embed
func hostEmbed(out, ids, n uint32)

//go:wasmimport driftstore rmsnorm
func hostRMSNorm(out, x, wid, n uint32)

//go:wasmimport driftstore matmul
func hostMatMul(out, wid, x, n uint32)

//go:wasmimport driftstore rope
func hostRoPE(x, n, nHeads, pos0 uint32)

//go:wasmimport driftstore store_kv
func hostStoreKV(table, nBlocks, k, v, n, pos0 uint32)

//go:wasmimport driftstore attention
func hostAttention(out, q, n, pos0, table, nBlocks uint32)

//go:wasmimport driftstore swiglu
func hostSwiGLU(out, gate, up, n uint32)

//go:wasmimport driftstore add
func hostAdd(dst, src, n uint32)

//go:wasmimport driftstore nop
func hostNop()

// hostArgmax returns the index of the best of the n f32 logits at off: largest first, NaN as
// -Inf, lowest index on ties (the order of before).
//
//go:wasmimport driftstore argmax
func hostArgmax(logits, n uint32) uint32

// hostTopK writes the k best of the n f32 logits at off, best first in the order of before,
// as k i32 ids at ids and their k f32 logits (NaN as -Inf) at vals; returns k.
//
//go:wasmimport driftstore top_k
func hostTopK(logits, n, k, ids, vals uint32) uint32

// Weight ids: per layer l, l*wPerLayer+k; model-wide tensors from wGlobal on.
const (
	wAttnNorm = iota
	wAttnQ
	wAttnK
	wAttnV
	wAttnOut
	wFFNNorm
	wFFNGate
	wFFNUp
	wFFNDown
	wPerLayer = 16

	wGlobal     = 1 << 20
	wTokenEmbd  = wGlobal + 0
	wOutputNorm = wGlobal + 1
	wOutput     = wGlobal + 2
)

// config is what the host's config op writes: little-endian u32 fields in this order.
type config struct {
	layers, dim, heads, kvHeads, headDim, ffn, vocab, ctxMax uint32
}

const configWords = 8

// KV dtypes, GGML ids.
const (
	kvF32 = 0
	kvF16 = 1
)

const blockAlign = 16 << 10

type sampler struct {
	temp float32
	topK uint32
	topP float32
	seed uint64
}

var (
	cfg       config
	ready     bool
	kvType    uint32
	blockSize uint32
	maxBatch  uint32
	blockLen  uint32 // bytes of one block: K then V, blockSize×kvHeads×headDim each
	stride    uint32 // distance between block slots: blockLen rounded up to blockAlign

	// tables[l] lists the offsets of layer l's blocks in position order.
	tables [][]uint32
	// slabs keeps every block slab alive; blocks never move or get freed.
	slabs    [][]byte
	slabNext uint32 // next free slot offset in the newest slab
	slabEnd  uint32

	tokens []int32
	pos    uint32

	smp sampler
	rng [4]uint64

	// activations, sized for maxBatch rows
	x, xb, xb2, q, k, v, att, hb, hb2 []float32
	ids                               []int32
	logits                            []float32
	haveLogits                        bool
	// logitsIn is where the host writes the logits of a state it loads in place
	// (state_load_split); on success it and logits swap, so a refused state changes nothing.
	logitsIn []float32

	// sampler scratch
	cand  []int32
	candL []float32 // logits of cand (NaN as -Inf)
	prob  []float64
	// sampleMode selects the sampler's selection step: modeHost (host ops) or modeGuest (the
	// reference implementation in Wasm). Not part of the state.
	sampleMode uint32

	ioBuf  []byte // host ↔ guest transfer buffer (buf export)
	outBuf []byte // records returned by kv_regions, kv_alloc, state_save, last_error
	errMsg string
)

func off[T any](s []T) uint32 { return uint32(uintptr(unsafe.Pointer(unsafe.SliceData(s)))) }

func fail(msg string) int32 { errMsg = msg; return -1 }

//go:wasmexport abi_version
func abiVersionExport() uint32 { return abiVersion }

// init_instance sets the KV layout and batch size and allocates the activation buffers. It
// may be called once.
//
//go:wasmexport init
func initExport(kv, bs, batch uint32) int32 {
	if ready {
		return fail("init: already initialized")
	}
	if kv != kvF16 && kv != kvF32 {
		return fail("init: kv dtype must be 0 (f32) or 1 (f16)")
	}
	if bs == 0 || bs > 4096 {
		return fail("init: block size must be in 1..4096")
	}
	if batch == 0 || batch > 4096 {
		return fail("init: batch must be in 1..4096")
	}
	var words [configWords]uint32
	if got := hostConfig(off(words[:]), configWords*4); got != configWords*4 {
		return fail("init: host config has an unexpected size")
	}
	cfg = config{words[0], words[1], words[2], words[3], words[4], words[5], words[6], words[7]}
	c := cfg
	if c.layers == 0 || c.dim == 0 || c.heads == 0 || c.kvHeads == 0 || c.headDim == 0 || c.ffn == 0 || c.vocab == 0 ||
		c.heads%c.kvHeads != 0 || c.layers > 1024 || c.dim > 1<<16 || c.ffn > 1<<18 || c.vocab > 1<<22 ||
		c.heads*c.headDim > 1<<16 || uint64(c.kvHeads)*uint64(c.headDim) > 1<<16 {
		return fail("init: implausible model configuration")
	}
	kvType, blockSize, maxBatch = kv, bs, batch
	esz := uint32(2)
	if kv == kvF32 {
		esz = 4
	}
	bl := uint64(2) * uint64(bs) * uint64(c.kvHeads) * uint64(c.headDim) * uint64(esz)
	if bl > 1<<30 {
		return fail("init: KV block too large")
	}
	blockLen = uint32(bl)
	stride = (blockLen + blockAlign - 1) &^ (blockAlign - 1)
	b := batch
	x = make([]float32, b*c.dim)
	xb = make([]float32, b*c.dim)
	xb2 = make([]float32, b*c.dim)
	q = make([]float32, b*c.heads*c.headDim)
	k = make([]float32, b*c.kvHeads*c.headDim)
	v = make([]float32, b*c.kvHeads*c.headDim)
	att = make([]float32, b*c.heads*c.headDim)
	hb = make([]float32, b*c.ffn)
	hb2 = make([]float32, b*c.ffn)
	ids = make([]int32, b)
	logits = make([]float32, c.vocab)
	logitsIn = make([]float32, c.vocab)
	cand = make([]int32, c.vocab)
	candL = make([]float32, c.vocab)
	prob = make([]float64, c.vocab)
	tables = make([][]uint32, c.layers)
	setSeed(0)
	smp = sampler{temp: 0, topK: 0, topP: 1, seed: 0}
	ready = true
	return 0
}

// set_sampler sets the sampler settings and reseeds the RNG from seed.
//
//go:wasmexport set_sampler
func setSamplerExport(temp float32, topK uint32, topP float32, seed uint64) int32 {
	if !ready {
		return fail("set_sampler: not initialized")
	}
	if math.IsNaN(float64(temp)) || temp < 0 || math.IsNaN(float64(topP)) || topP <= 0 || topP > 1 {
		return fail("set_sampler: temperature must be >= 0 and top-p in (0, 1]")
	}
	smp = sampler{temp: temp, topK: topK, topP: topP, seed: seed}
	setSeed(seed)
	return 0
}

// buf returns the offset of a transfer buffer of at least n bytes, valid until the next call
// to buf.
//
//go:wasmexport buf
func bufExport(n uint32) uint32 {
	if uint32(len(ioBuf)) < n {
		ioBuf = make([]byte, n)
	}
	if len(ioBuf) == 0 {
		ioBuf = make([]byte, 64)
	}
	return off(ioBuf)
}

// feed runs the forward pass over n token ids (int32, little-endian) that the host wrote at
// the start of the transfer buffer, in batches, appending them to the history. Afterwards the
// logits of the last token are ready.
//
//go:wasmexport feed
func feedExport(n uint32) int32 {
	if !ready {
		return fail("feed: not initialized")
	}
	if uint64(n)*4 > uint64(len(ioBuf)) {
		return fail("feed: more tokens than the transfer buffer holds")
	}
	in := unsafe.Slice((*int32)(unsafe.Pointer(unsafe.SliceData(ioBuf))), n)
	for _, t := range in {
		if t < 0 || uint32(t) >= cfg.vocab {
			return fail("feed: token id out of vocabulary")
		}
	}
	if cfg.ctxMax != 0 && uint64(pos)+uint64(n) > uint64(cfg.ctxMax) {
		return fail("feed: context length exceeded")
	}
	// Copy first: ioBuf may be replaced by the host between calls, never during one.
	toks := make([]int32, n)
	copy(toks, in)
	return feed(toks)
}

func feed(toks []int32) int32 {
	for len(toks) > 0 {
		n := uint32(len(toks))
		if n > maxBatch {
			n = maxBatch
		}
		// Only the last batch's logits are kept, so only the last batch computes them.
		if r := forward(toks[:n], n == uint32(len(toks))); r != 0 {
			return r
		}
		toks = toks[n:]
	}
	return 0
}

// ensureBlocks makes every layer's table cover positions [0, npos).
func ensureBlocks(npos uint32) int32 {
	need := (npos + blockSize - 1) / blockSize
	for l := range tables {
		for uint32(len(tables[l])) < need {
			o, ok := allocBlock()
			if !ok {
				return fail("out of memory for KV blocks")
			}
			tables[l] = append(tables[l], o)
		}
	}
	return 0
}

// allocBlock returns the offset of a fresh, zeroed, blockAlign-aligned block slot. Slots come
// from slabs that are never freed, so a block never moves.
func allocBlock() (uint32, bool) {
	if slabNext+stride > slabEnd || slabEnd == 0 {
		per := uint32(2<<20) / stride
		if per < 8 {
			per = 8
		}
		size := uint64(per)*uint64(stride) + blockAlign
		if size > 1<<31 {
			return 0, false
		}
		s := make([]byte, size)
		slabs = append(slabs, s)
		base := off(s)
		start := (base + blockAlign - 1) &^ (blockAlign - 1)
		slabNext = start
		slabEnd = start + per*stride
	}
	o := slabNext
	slabNext += stride
	return o, true
}

// forward runs the model over toks at the current position, appending their keys and values
// to the KV cache. With wantLogits it computes the last token's logits; without, the kept
// logits no longer match the position and are marked absent.
func forward(toks []int32, wantLogits bool) int32 {
	c := cfg
	n := uint32(len(toks))
	if r := ensureBlocks(pos + n); r != 0 {
		return r
	}
	copy(ids, toks)
	hostEmbed(off(x), off(ids), n)
	for l := uint32(0); l < c.layers; l++ {
		w := l * wPerLayer
		tbl := tables[l]
		nb := uint32(len(tbl))
		hostRMSNorm(off(xb), off(x), w+wAttnNorm, n)
		hostMatMul(off(q), w+wAttnQ, off(xb), n)
		hostMatMul(off(k), w+wAttnK, off(xb), n)
		hostMatMul(off(v), w+wAttnV, off(xb), n)
		hostRoPE(off(q), n, c.heads, pos)
		hostRoPE(off(k), n, c.kvHeads, pos)
		hostStoreKV(off(tbl), nb, off(k), off(v), n, pos)
		hostAttention(off(att), off(q), n, pos, off(tbl), nb)
		hostMatMul(off(xb2), w+wAttnOut, off(att), n)
		hostAdd(off(x), off(xb2), n*c.dim)
		hostRMSNorm(off(xb), off(x), w+wFFNNorm, n)
		hostMatMul(off(hb), w+wFFNGate, off(xb), n)
		hostMatMul(off(hb2), w+wFFNUp, off(xb), n)
		hostSwiGLU(off(hb), off(hb), off(hb2), n*c.ffn)
		hostMatMul(off(xb2), w+wFFNDown, off(hb), n)
		hostAdd(off(x), off(xb2), n*c.dim)
	}
	haveLogits = wantLogits
	if wantLogits {
		last := x[(n-1)*c.dim : n*c.dim]
		hostRMSNorm(off(xb), off(last), wOutputNorm, 1)
		hostMatMul(off(logits), wOutput, off(xb), 1)
	}
	tokens = append(tokens, toks...)
	pos += n
	return 0
}

// sample draws the next token from the last logits with the current settings, advancing the
// RNG when temperature > 0. It does not feed the token.
//
//go:wasmexport sample
func sampleExport() int64 {
	if !ready || !haveLogits {
		return int64(fail("sample: no logits yet (feed tokens first)"))
	}
	return int64(sampleNext())
}

// sample_mode selects how the sampler picks its candidates: 0 (the default) with the argmax
// and top_k host ops, 1 in the guest (the reference the host ops must agree with, token for
// token). The RNG, the softmax and the draw run in the guest either way.
//
//go:wasmexport sample_mode
func sampleModeExport(m uint32) int32 {
	if m != modeHost && m != modeGuest {
		return fail("sample_mode: mode must be 0 (host) or 1 (guest)")
	}
	sampleMode = m
	return 0
}

// step samples the next token, feeds it and returns it (negative on error).
//
//go:wasmexport step
func stepExport() int64 {
	if !ready || !haveLogits {
		return int64(fail("step: no logits yet (feed tokens first)"))
	}
	if cfg.ctxMax != 0 && pos+1 > cfg.ctxMax {
		return int64(fail("step: context length exceeded"))
	}
	t := sampleNext()
	if t < 0 {
		return int64(t)
	}
	if r := feed([]int32{t}); r != 0 {
		return int64(r)
	}
	return int64(t)
}

//go:wasmexport position
func positionExport() uint32 { return pos }

// tokens returns the offset of the token history (position int32 values); 0 when empty.
//
//go:wasmexport tokens
func tokensExport() uint32 {
	if len(tokens) == 0 {
		return 0
	}
	return off(tokens)
}

// logits returns the offset of the last logits (vocab float32 values), 0 when there are none.
//
//go:wasmexport logits
func logitsExport() uint32 {
	if !haveLogits {
		return 0
	}
	return off(logits)
}

// kv_regions returns the offset of a record listing the KV block regions in use (the blocks
// that hold positions [0, position)): u32 record length, u32 count, then count × (u32 layer,
// u32 block, u32 offset, u32 length), layer-major. Valid until the next call that returns a
// record.
//
//go:wasmexport kv_regions
func kvRegionsExport() uint32 {
	if !ready {
		return 0
	}
	return regions(pos)
}

// kv_regions_from is kv_regions for the blocks first, first+1, … of each layer only (none when
// first is past the last block in use): a host that remembers the regions it was given asks
// only for the new ones, since a block, once allocated, never moves.
//
//go:wasmexport kv_regions_from
func kvRegionsFromExport(first uint32) uint32 {
	if !ready {
		return 0
	}
	return regionsFrom(first, pos)
}

// kv_alloc makes sure blocks cover positions [0, npos) and returns their regions like
// kv_regions (0 on error). Restore calls it on a fresh instance, writes the blocks' bytes
// into the regions, then calls state_load.
//
//go:wasmexport kv_alloc
func kvAllocExport(npos uint32) uint32 {
	if !ready {
		fail("kv_alloc: not initialized")
		return 0
	}
	if cfg.ctxMax != 0 && npos > cfg.ctxMax {
		fail("kv_alloc: beyond the context length")
		return 0
	}
	if ensureBlocks(npos) != 0 {
		return 0
	}
	return regions(npos)
}

func regions(npos uint32) uint32 { return regionsFrom(0, npos) }

// regionsFrom returns the record of the regions of blocks [first, blocks covering npos) of
// every layer, layer-major.
func regionsFrom(first, npos uint32) uint32 {
	nb := (npos + blockSize - 1) / blockSize
	first = min(first, nb)
	cnt := (nb - first) * cfg.layers
	out := record(8 + cnt*16)
	binary.LittleEndian.PutUint32(out, 4+cnt*16)
	binary.LittleEndian.PutUint32(out[4:], cnt)
	p := out[8:]
	for l := uint32(0); l < cfg.layers; l++ {
		for b := first; b < nb; b++ {
			binary.LittleEndian.PutUint32(p[0:], l)
			binary.LittleEndian.PutUint32(p[4:], b)
			binary.LittleEndian.PutUint32(p[8:], tables[l][b])
			binary.LittleEndian.PutUint32(p[12:], blockLen)
			p = p[16:]
		}
	}
	return off(outBuf)
}

// record returns outBuf resized to n bytes (reallocating when it is too small).
func record(n uint32) []byte {
	if uint32(cap(outBuf)) < n {
		outBuf = make([]byte, n)
	}
	outBuf = outBuf[:n]
	return outBuf
}

// last_error returns the offset of a record with the last error message: u32 length, bytes.
//
//go:wasmexport last_error
func lastErrorExport() uint32 {
	out := record(4 + uint32(len(errMsg)))
	binary.LittleEndian.PutUint32(out, uint32(len(errMsg)))
	copy(out[4:], errMsg)
	return off(outBuf)
}

// nop_loop calls the empty host op n times (to measure host-op call overhead).
//
//go:wasmexport nop_loop
func nopLoopExport(n uint32) {
	for i := uint32(0); i < n; i++ {
		hostNop()
	}
}

// ---- small state ----

const stateMagic = 0x54535344 // "DSST"
const stateVersion = 1

// state_save returns the offset of a record: u32 length, then the small state (everything but
// the KV blocks) in the format of guest/ABI.md.
//
//go:wasmexport state_save
func stateSaveExport() uint32 {
	if !ready {
		fail("state_save: not initialized")
		return 0
	}
	return saveState(true)
}

// state_save_head is state_save without the logits' values: the record ends after the token
// history (the header still counts the logits), and the host appends the logits from the
// logits export's offset itself.
//
//go:wasmexport state_save_head
func stateSaveHeadExport() uint32 {
	if !ready {
		fail("state_save_head: not initialized")
		return 0
	}
	return saveState(false)
}

func saveState(withLogits bool) uint32 {
	nl := uint32(0)
	if haveLogits {
		nl = cfg.vocab
	}
	size := 4 + stateFixed + 4*uint32(len(tokens))
	if withLogits {
		size += 4 * nl
	}
	out := record(size)
	binary.LittleEndian.PutUint32(out, size-4)
	p := out[4:]
	le := binary.LittleEndian
	le.PutUint32(p[0:], stateMagic)
	le.PutUint32(p[4:], stateVersion)
	le.PutUint32(p[8:], kvType)
	le.PutUint32(p[12:], blockSize)
	le.PutUint32(p[16:], cfg.vocab)
	le.PutUint32(p[20:], pos)
	le.PutUint32(p[24:], math.Float32bits(smp.temp))
	le.PutUint32(p[28:], smp.topK)
	le.PutUint32(p[32:], math.Float32bits(smp.topP))
	le.PutUint64(p[36:], smp.seed)
	for i := range rng {
		le.PutUint64(p[44+8*i:], rng[i])
	}
	le.PutUint32(p[76:], nl)
	p = p[stateFixed:]
	// Wasm is little-endian: the slices' bytes are the format's bytes (one bulk copy each).
	p = p[copy(p, bytesOf(tokens)):]
	if withLogits {
		copy(p, bytesOf(logits[:nl]))
	}
	return off(outBuf)
}

// bytesOf views a slice of 4-byte values as its bytes (little-endian in Wasm).
func bytesOf[T int32 | float32](s []T) []byte {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s))), 4*len(s))
}

// logits_in returns the offset of the buffer (vocab f32 values) where the host writes the
// logits of a state it loads with state_load_split; 0 before init.
//
//go:wasmexport logits_in
func logitsInExport() uint32 {
	if !ready {
		return 0
	}
	return off(logitsIn)
}

const stateFixed = 80

// state_load replaces the small state with the n bytes the host wrote at the start of the
// transfer buffer (a state_save record without its length prefix). KV blocks for the restored
// position must already exist (kv_alloc) and hold the right bytes. On error nothing changes.
//
//go:wasmexport state_load
func stateLoadExport(n uint32) int32 {
	if !ready {
		return fail("state_load: not initialized")
	}
	if uint64(n) > uint64(len(ioBuf)) || n < stateFixed {
		return fail("state_load: short or oversized state")
	}
	p := ioBuf[:n]
	nl := binary.LittleEndian.Uint32(p[76:])
	if nl != 0 && nl != cfg.vocab {
		return fail("state_load: logits length differs from the vocabulary")
	}
	head := uint64(n) - 4*uint64(nl)
	if head < stateFixed {
		return fail("state_load: state length does not match its contents")
	}
	if r := loadHead("state_load", p[:head], nl); r != 0 {
		return r
	}
	copy(bytesOf(logits), p[head:]) // never fails from here on
	return 0
}

// state_load_split is state_load with the logits written in place: the n bytes at the start
// of the transfer buffer are the state without its logits (the fixed part and the token
// history), and the logits, when the state has them, are in the logits_in buffer. On success
// that buffer becomes the kept logits (no copy); on error nothing changes.
//
//go:wasmexport state_load_split
func stateLoadSplitExport(n uint32) int32 {
	if !ready {
		return fail("state_load_split: not initialized")
	}
	if uint64(n) > uint64(len(ioBuf)) || n < stateFixed {
		return fail("state_load_split: short or oversized state")
	}
	nl := binary.LittleEndian.Uint32(ioBuf[76:])
	if nl != 0 && nl != cfg.vocab {
		return fail("state_load_split: logits length differs from the vocabulary")
	}
	if r := loadHead("state_load_split", ioBuf[:n], nl); r != 0 {
		return r
	}
	if nl != 0 {
		logits, logitsIn = logitsIn, logits
	}
	return 0
}

// loadHead checks the fixed part and token history p of a state whose logits count is nl and,
// if it is valid, installs everything but the logits' values (haveLogits included); otherwise
// it changes nothing and returns -1.
func loadHead(name string, p []byte, nl uint32) int32 {
	le := binary.LittleEndian
	switch {
	case le.Uint32(p[0:]) != stateMagic:
		return fail(name + ": not a driftstore guest state")
	case le.Uint32(p[4:]) != stateVersion:
		return fail(name + ": unsupported state version")
	case le.Uint32(p[8:]) != kvType:
		return fail(name + ": KV dtype differs from this instance's")
	case le.Uint32(p[12:]) != blockSize:
		return fail(name + ": KV block size differs from this instance's")
	case le.Uint32(p[16:]) != cfg.vocab:
		return fail(name + ": vocabulary size differs")
	}
	np := le.Uint32(p[20:])
	if uint64(stateFixed)+4*uint64(np) != uint64(len(p)) {
		return fail(name + ": state length does not match its contents")
	}
	if cfg.ctxMax != 0 && np > cfg.ctxMax {
		return fail(name + ": position beyond the context length")
	}
	need := (np + blockSize - 1) / blockSize
	for l := range tables {
		if uint32(len(tables[l])) < need {
			return fail(name + ": KV blocks for the position are not allocated (call kv_alloc first)")
		}
	}
	temp := math.Float32frombits(le.Uint32(p[24:]))
	topP := math.Float32frombits(le.Uint32(p[32:]))
	if math.IsNaN(float64(temp)) || temp < 0 || math.IsNaN(float64(topP)) || topP <= 0 || topP > 1 {
		return fail(name + ": invalid sampler settings")
	}
	toks := make([]int32, np)
	copy(bytesOf(toks), p[stateFixed:])
	for _, t := range toks {
		if t < 0 || uint32(t) >= cfg.vocab {
			return fail(name + ": token id out of vocabulary")
		}
	}
	smp = sampler{temp: temp, topK: le.Uint32(p[28:]), topP: topP, seed: le.Uint64(p[36:])}
	for i := range rng {
		rng[i] = le.Uint64(p[44+8*i:])
	}
	tokens = toks
	pos = np
	haveLogits = nl != 0
	return 0
}
