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
// A checkpoint stores it as the "state" region, split into two chunks: the head (fixed part and
// token history) and the logits, so that the logits get the float32 codec hint.
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
}

// ParseState parses a state blob, checking its internal consistency. The result shares no memory
// with b.
func ParseState(b []byte) (*State, error) {
	le := binary.LittleEndian
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
	nl := int(le.Uint32(b[76:]))
	if nl != 0 && nl != s.Vocab {
		return nil, fmt.Errorf("%w: guest state has %d logits for a vocabulary of %d", ErrBadCheckpoint, nl, s.Vocab)
	}
	if uint64(stateFixed)+4*uint64(s.Position)+4*uint64(nl) != uint64(len(b)) {
		return nil, fmt.Errorf("%w: guest state of %d bytes does not hold position %d and %d logits", ErrBadCheckpoint, len(b), s.Position, nl)
	}
	s.HeadLen = stateFixed + 4*s.Position
	s.Tokens = make([]int32, s.Position)
	for i := range s.Tokens {
		s.Tokens[i] = int32(le.Uint32(b[stateFixed+4*i:]))
	}
	if nl > 0 {
		s.Logits = make([]float32, nl)
		for i := range s.Logits {
			s.Logits[i] = math.Float32frombits(le.Uint32(b[s.HeadLen+4*i:]))
		}
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
