// Package chunker splits bytes into chunks for the content-addressed store: FastCDC
// (content-defined, for byte streams without structure) and aligned fixed-size blocks (for
// page-aligned memory regions such as a KV cache, where block boundaries are known).
//
// Everything here is a pure function of the input bytes and the parameters: the same bytes and
// parameters give the same boundaries on every machine and in every version, which is what makes
// deduplication across checkpoints, sessions and machines work. The FastCDC boundaries are those
// of the published algorithm (see FastCDC); the golden file testdata/fastcdc-golden.txt pins them.
// Params.Align, an extension, rounds cuts down to element boundaries for arrays of float16 or
// float32 values; its boundaries are pinned in the same file.
//
// Values of type *FastCDC are immutable after construction and safe for concurrent use. A
// *Stream is used by one goroutine at a time.
package chunker

import (
	"errors"
	"fmt"
)

// ErrInvalidParams is returned (wrapped) for chunk-size parameters outside the documented limits.
var ErrInvalidParams = errors.New("invalid chunker parameters")

// Limits on FastCDC parameters. They are those of the Rust fastcdc crate's v2020 module, so any
// parameters valid here are valid there and give the same boundaries.
const (
	MinSizeLimitLow  = 64       // smallest allowed Params.Min
	MinSizeLimitHigh = 1 << 20  // largest allowed Params.Min
	AvgSizeLimitLow  = 256      // smallest allowed Params.Avg
	AvgSizeLimitHigh = 4 << 20  // largest allowed Params.Avg
	MaxSizeLimitLow  = 1024     // smallest allowed Params.Max
	MaxSizeLimitHigh = 16 << 20 // largest allowed Params.Max
	MaxNormalization = 3        // largest allowed Params.Normalization
)

// Defaults (see DefaultParams).
const (
	DefaultMin           = 16 << 10  // 16 KiB
	DefaultAvg           = 64 << 10  // 64 KiB
	DefaultMax           = 256 << 10 // 256 KiB
	DefaultNormalization = 1
)

// MaxFixedSize is the largest block size for fixed-size and aligned chunking.
const MaxFixedSize = 64 << 20

// Params are FastCDC's chunk-size parameters.
//
// Min and Max bound every chunk except the last of an input, which may be shorter than Min.
// Avg sets the cut masks: log2(Avg), rounded, is the number of mask bits, so chunk sizes centre
// on a power of two near Avg. Normalization (0..3) is the paper's normalised-chunking level:
// before Avg bytes the mask has Normalization more bits (cuts are harder), after it that many
// fewer (cuts are easier), which narrows the size distribution around Avg. Level 0 is plain
// gear-hash chunking with cut-point skipping.
//
// Valid parameters satisfy: Min even, MinSizeLimitLow ≤ Min ≤ MinSizeLimitHigh,
// AvgSizeLimitLow ≤ Avg ≤ AvgSizeLimitHigh, MaxSizeLimitLow ≤ Max ≤ MaxSizeLimitHigh,
// Min < Avg < Max, 0 ≤ Normalization ≤ MaxNormalization. Min must be even because the 2020
// algorithm hashes two bytes per step starting at byte Min/2·2; an odd Min would let a chunk end
// one byte short of it.
//
// Align (an extension, not in the paper or the Rust crate) makes every cut but the end of the
// input fall on a multiple of Align bytes from the chunk's start: each cut point the algorithm
// finds (or Max, when it finds none) is rounded down to a multiple of Align, never below Min.
// For arrays of fixed-size elements (2 for float16, 4 for float32) it keeps every chunk
// starting on an element boundary, so byte-plane codecs see the same planes in every chunk. 0
// and 1 mean no alignment and give exactly the published boundaries; valid values are 0, 1, 2,
// 4 and 8, and Min must be a multiple of Align. Aligned boundaries are pinned by their own
// cases in the golden file.
type Params struct {
	Min, Avg, Max int
	Normalization int
	Align         int
}

// AlignFor returns the Align for arrays of elements of size bytes: size for 2, 4 and 8, else 0.
func AlignFor(size int) int {
	switch size {
	case 2, 4, 8:
		return size
	}
	return 0
}

// DefaultParams returns the defaults: 16 KiB / 64 KiB / 256 KiB, normalisation level 1 (the Rust
// crate's default level). 64 KiB chunks keep per-chunk overhead (a file, an index record, a
// digest in a manifest) small against the data while still deduplicating edits at a fine grain.
func DefaultParams() Params {
	return Params{Min: DefaultMin, Avg: DefaultAvg, Max: DefaultMax, Normalization: DefaultNormalization}
}

// Validate reports whether p is usable, with an error wrapping ErrInvalidParams that names the
// offending field.
func (p Params) Validate() error {
	switch {
	case p.Min < MinSizeLimitLow || p.Min > MinSizeLimitHigh:
		return fmt.Errorf("%w: min %d outside [%d, %d]", ErrInvalidParams, p.Min, MinSizeLimitLow, MinSizeLimitHigh)
	case p.Min%2 != 0:
		return fmt.Errorf("%w: min %d is odd", ErrInvalidParams, p.Min)
	case p.Avg < AvgSizeLimitLow || p.Avg > AvgSizeLimitHigh:
		return fmt.Errorf("%w: avg %d outside [%d, %d]", ErrInvalidParams, p.Avg, AvgSizeLimitLow, AvgSizeLimitHigh)
	case p.Max < MaxSizeLimitLow || p.Max > MaxSizeLimitHigh:
		return fmt.Errorf("%w: max %d outside [%d, %d]", ErrInvalidParams, p.Max, MaxSizeLimitLow, MaxSizeLimitHigh)
	case !(p.Min < p.Avg && p.Avg < p.Max):
		return fmt.Errorf("%w: want min < avg < max, got %d, %d, %d", ErrInvalidParams, p.Min, p.Avg, p.Max)
	case p.Normalization < 0 || p.Normalization > MaxNormalization:
		return fmt.Errorf("%w: normalization level %d outside [0, %d]", ErrInvalidParams, p.Normalization, MaxNormalization)
	case p.Align != 0 && p.Align != 1 && p.Align != 2 && p.Align != 4 && p.Align != 8:
		return fmt.Errorf("%w: align %d is not 0, 1, 2, 4 or 8", ErrInvalidParams, p.Align)
	case p.Align > 1 && p.Min%p.Align != 0:
		return fmt.Errorf("%w: min %d is not a multiple of align %d", ErrInvalidParams, p.Min, p.Align)
	}
	return nil
}

// Chunk is one piece of an input.
type Chunk struct {
	Offset int64 // position of the first byte in the whole input
	Length int   // number of bytes; equals len(Data)
	// Fingerprint is the gear hash as of the cut, exactly as the Rust fastcdc crate (v2020)
	// reports it; 0 for a final chunk shorter than Min and for fixed-size chunks. It is not a
	// content digest.
	Fingerprint uint64
	// Data is the chunk's bytes. For chunks from Split, Chunks and Aligned it aliases the input;
	// for chunks from a Stream it aliases the Stream's buffer and is valid only until the next
	// call to Next or Reset.
	Data []byte
}
