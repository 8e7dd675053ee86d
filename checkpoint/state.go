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
