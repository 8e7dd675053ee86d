package checkpoint

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/driftstore/driftstore/engine"
)

// The guest's small state (engine.Instance.SaveState/LoadState), version 1, all little-endian:
//
//	0  u32 magic "DSST" (0x54535344)    44 4×u64 RNG state (xoshiro256**)
//	4  u32 version 1                    76 u32 logits count (0 or vocab)
//	8  u32 KV dtype (GGML: 0 f32, 1 f16) 80 position × i32 token history
//	12 u32 block size                   ... logits count × f32 last logits
//	16 u32 vocab
//	20 u32 position
//	24 f32 temperature, 28 u32 top-k, 32 f32 top-p, 36 u64 seed
//
// A checkpoint stores it as the "state" region: Capture writes the head (fixed part and token
// history) as one chunk and the logits as chunks of at most LogitsChunk bytes (the float32 codec
// hint; several chunks decode in parallel), so that a restore can decode them straight into the
// guest's buffers (engine.Instance.StateBuffers). Checkpoints with the state as one chunk (the
// first captures) restore through a buffer.
const (
	stateMagic   = 0x54535344
	stateVersion = 1
	stateFixed   = 80
)

// State is the parsed small state of a guest.
type State struct {
	DType     string // "f16" or "f32"
	BlockSize int
	Vocab     int
	Position  int
	Sampler   engine.Sampler
	RNG       [4]uint64
	Tokens    []int32   // Position ids
	Logits    []float32 // nil when the state has no logits (nothing fed yet)
	HeadLen   int       // bytes before the logits
	NLogits   int       // logits count: 0 or Vocab (Logits is nil after ParseStateHead)
}

// ParseState parses a state blob, checking its internal consistency. The result shares no memory
// with b.
func ParseState(b []byte) (*State, error) {
	s, err := ParseStateHead(b[:min(len(b), stateFixed)], -1)
	if err != nil {
		return nil, err
	}
	if uint64(stateFixed)+4*uint64(s.Position)+4*uint64(s.NLogits) != uint64(len(b)) {
		return nil, fmt.Errorf("%w: guest state of %d bytes does not hold position %d and %d logits", ErrBadCheckpoint, len(b), s.Position, s.NLogits)
	}
	s, err = ParseStateHead(b[:s.HeadLen], s.NLogits)
	if err != nil {
		return nil, err
	}
	if s.NLogits > 0 {
		le := binary.LittleEndian
		s.Logits = make([]float32, s.NLogits)
		for i := range s.Logits {
			s.Logits[i] = math.Float32frombits(le.Uint32(b[s.HeadLen+4*i:]))
		}
	}
	return s, nil
}

// StateHeadLen is the length of the head of a state at position pos: the fixed part and the
// token history, what precedes the logits.
func StateHeadLen(pos int) int { return stateFixed + 4*pos }

// ParseStateHead parses the head of a state (the fixed part and the token history, exactly
// StateHeadLen(position) bytes) whose logits are kept elsewhere: nLogits of them, as the head
// must say (0 or the vocabulary size). nLogits -1 parses only the fixed part (head may then be
// just that, and Tokens is nil). Logits is nil in the result; NLogits is the count. The result
// shares no memory with head.
func ParseStateHead(head []byte, nLogits int) (*State, error) {
	le := binary.LittleEndian
	b := head
	if len(b) < stateFixed {
		return nil, fmt.Errorf("%w: guest state of %d bytes is shorter than its header", ErrBadCheckpoint, len(b))
	}
	if le.Uint32(b) != stateMagic {
		return nil, fmt.Errorf("%w: guest state has a bad magic number", ErrBadCheckpoint)
	}
	if v := le.Uint32(b[4:]); v != stateVersion {
		return nil, fmt.Errorf("%w: guest state version %d, this driftstore reads %d", ErrBadCheckpoint, v, stateVersion)
	}
	s := &State{BlockSize: int(le.Uint32(b[12:])), Vocab: int(le.Uint32(b[16:])), Position: int(le.Uint32(b[20:]))}
	switch le.Uint32(b[8:]) {
	case 0:
		s.DType = "f32"
	case 1:
		s.DType = "f16"
	default:
		return nil, fmt.Errorf("%w: guest state KV dtype %d", ErrBadCheckpoint, le.Uint32(b[8:]))
	}
	s.Sampler = engine.Sampler{
		Temp: math.Float32frombits(le.Uint32(b[24:])), TopK: int(le.Uint32(b[28:])),
		TopP: math.Float32frombits(le.Uint32(b[32:])), Seed: le.Uint64(b[36:]),
	}
	for i := range s.RNG {
		s.RNG[i] = le.Uint64(b[44+8*i:])
	}
	s.NLogits = int(le.Uint32(b[76:]))
	if s.NLogits != 0 && s.NLogits != s.Vocab {
		return nil, fmt.Errorf("%w: guest state has %d logits for a vocabulary of %d", ErrBadCheckpoint, s.NLogits, s.Vocab)
	}
	s.HeadLen = stateFixed + 4*s.Position
	if nLogits < 0 {
		return s, nil
	}
	if s.NLogits != nLogits || uint64(stateFixed)+4*uint64(s.Position) != uint64(len(b)) {
		return nil, fmt.Errorf("%w: guest state head of %d bytes with %d logits elsewhere does not hold position %d and %d logits",
			ErrBadCheckpoint, len(b), nLogits, s.Position, s.NLogits)
	}
	s.Tokens = make([]int32, s.Position)
	for i := range s.Tokens {
		s.Tokens[i] = int32(le.Uint32(b[stateFixed+4*i:]))
	}
	return s, nil
}

// PrefixState builds the state of a guest that has fed exactly tokens (whose KV blocks are in
// place) and has no logits yet, from fresh: the state of a fresh instance with the sampler
// already set (SaveState before any feed). The sampler and RNG come from fresh. The next Prefill
// computes the logits.
func PrefixState(fresh []byte, tokens []int32) ([]byte, error) {
	s, err := ParseState(fresh)
	if err != nil {
		return nil, err
	}
	if s.Position != 0 || s.Logits != nil {
		return nil, fmt.Errorf("checkpoint: prefix state: the base state is not fresh (position %d)", s.Position)
	}
	out := make([]byte, stateFixed+4*len(tokens))
	copy(out, fresh[:stateFixed])
	binary.LittleEndian.PutUint32(out[20:], uint32(len(tokens)))
	binary.LittleEndian.PutUint32(out[76:], 0)
	for i, t := range tokens {
		binary.LittleEndian.PutUint32(out[stateFixed+4*i:], uint32(t))
	}
	return out, nil
}

// Top logits. A checkpoint whose sampler reads only the best few logits (greedy: the argmax;
// top-k sampling with 0 < k < vocab: those k; engine.Sampler.Candidates) keeps those instead of
// the whole vector: a "top logits" chunk of K entries, best first in the sampler's order (the
// larger logit first, NaN as -Inf, -0 equal to +0, the lower id first among equal ones), each
// a little-endian u32 id then its f32 logit (a NaN written as -Inf). A restore writes -Inf into
// the guest's logits and the K values at their ids (ExpandTopLogits); that vector has exactly
// the same k' best as the full one for every k' ≤ K, ties, -Inf and NaN included (NaN reads as
// -Inf either way): every id left out comes after all K in the order, since the K-th entry is
// worse than or equal to it and, when equal (both -Inf), has the lower id. So a sampler that
// reads at most K candidates draws the same tokens from it; one that reads more makes the
// instance recompute the full logits first (engine.Instance.MarkLogitsTop).

// TopLogitBytes is the length of one top-logits entry: u32 id, f32 logit.
const TopLogitBytes = 8

// DefaultTopLogits is the fewest top logits a checkpoint keeps instead of the whole vector
// (CaptureOptions.TopLogits): it keeps max(DefaultTopLogits, what its sampler reads), so a
// later change of top-k up to 64 (llama.cpp's default is 40, Hugging Face's 50) is served
// without a recompute. 64 entries are 512 bytes; selecting them out of the 128256 logits of
// the Llama-3.2-1B vocabulary takes about 30 µs on this project's 2-core test machine, about
// what copying the whole vector out takes, against 75–90 µs for 256 (BenchmarkTopLogits).
const DefaultTopLogits = 64

// AppendTopLogits appends the top-logits entries (ids[j], vals[j]) to dst, in the given order.
func AppendTopLogits(dst []byte, ids []int32, vals []float32) []byte {
	for j, id := range ids {
		dst = binary.LittleEndian.AppendUint32(dst, uint32(id))
		dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(vals[j]))
	}
	return dst
}

// DecodeTopLogits parses a top-logits chunk for a vocabulary of vocab: its ids and logits,
// best first. It refuses (ErrBadCheckpoint), rather than trusting, anything a correct
// selection could not have written: a length that is not a positive multiple of
// TopLogitBytes, more entries than the vocabulary, an id outside it or repeated, a NaN, an
// entry out of the order, and -Inf entries that are not the lowest ids left (in the full
// vector every id not listed comes after the last entry). So for any chunk it accepts,
// ExpandTopLogits gives a vector whose k best, for every k up to the entries, are the entries.
func DecodeTopLogits(b []byte, vocab int) (ids []int32, vals []float32, err error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: top logits: %s", ErrBadCheckpoint, fmt.Sprintf(format, a...))
	}
	k := len(b) / TopLogitBytes
	if k == 0 || len(b)%TopLogitBytes != 0 || k > vocab {
		return nil, nil, bad("%d bytes for a vocabulary of %d", len(b), vocab)
	}
	ids, vals = make([]int32, k), make([]float32, k)
	seen := make([]uint64, (vocab+63)/64) // listed with a finite (or +Inf) logit
	negInf := float32(math.Inf(-1))
	le := binary.LittleEndian
	for j := range ids {
		id, v := le.Uint32(b[TopLogitBytes*j:]), math.Float32frombits(le.Uint32(b[TopLogitBytes*j+4:]))
		if uint64(id) >= uint64(vocab) {
			return nil, nil, bad("entry %d: id %d outside the vocabulary of %d", j, id, vocab)
		}
		if v != v {
			return nil, nil, bad("entry %d: NaN (written as -Inf)", j)
		}
		if j > 0 {
			p, pv := ids[j-1], vals[j-1]
			if v > pv || (v == pv && int32(id) <= p) {
				return nil, nil, bad("entry %d (id %d, %g) does not come after entry %d (id %d, %g)", j, id, v, j-1, p, pv)
			}
		}
		if v != negInf {
			if seen[id/64]&(1<<(id%64)) != 0 {
				return nil, nil, bad("entry %d: id %d listed twice", j, id)
			}
			seen[id/64] |= 1 << (id % 64)
		}
		ids[j], vals[j] = int32(id), v
	}
	// The -Inf entries, in ascending id order (checked above), must be the lowest ids not
	// listed with a larger logit; that also makes them distinct from those.
	next := uint32(0)
	for j := range ids {
		if vals[j] != negInf {
			continue
		}
		for seen[next/64]&(1<<(next%64)) != 0 {
			next++
		}
		if uint32(ids[j]) != next {
			return nil, nil, bad("entry %d: -Inf at id %d, but id %d (not listed) comes before it", j, ids[j], next)
		}
		next++
	}
	return ids, vals, nil
}

// ExpandTopLogits writes the logits vector a restore gives the guest for top logits ids and
// vals (as DecodeTopLogits returns them) into dst, len(dst)/4 little-endian float32s: -Inf
// everywhere, then vals[j] at ids[j]. Every id must be below len(dst)/4.
func ExpandTopLogits(dst []byte, ids []int32, vals []float32) {
	n := len(dst) &^ 3
	if n == 0 {
		return
	}
	binary.LittleEndian.PutUint32(dst, math.Float32bits(float32(math.Inf(-1))))
	for f := 4; f < n; f *= 2 {
		copy(dst[f:n], dst[:f])
	}
	for j, id := range ids {
		binary.LittleEndian.PutUint32(dst[4*int(id):], math.Float32bits(vals[j]))
	}
}
