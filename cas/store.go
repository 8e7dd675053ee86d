package cas

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Codec says how a chunk's bytes are kept at rest.
type Codec uint8

const (
	CodecRaw       Codec = 1 // the uncompressed bytes
	CodecZstd      Codec = 2 // zstd frame of the bytes
	CodecF16Planes Codec = 3 // float16 values split into high/low byte planes, each plane zstd-compressed
)

// Hint tells a store what the bytes are, so it can pick a codec that pays. It never changes the
// chunk's Digest or its decoded bytes.
type Hint uint8

const (
	HintNone    Hint = 0 // unknown bytes
	HintFloat16 Hint = 1 // little-endian IEEE float16 values
	HintFloat32 Hint = 2 // little-endian IEEE float32 values
)

// Info describes one stored chunk.
type Info struct {
	Digest     Digest
	Size       int64     // uncompressed length
	StoredSize int64     // bytes at rest, after the codec
	Codec      Codec     // how it is kept
	ModTime    time.Time // when it was written (used by garbage collection's grace period)
}

// Sentinel errors. Stores wrap them with context; test with errors.Is.
var (
	// ErrNotFound: the store has no chunk with this digest.
	ErrNotFound = errors.New("chunk not found")
	// ErrCorrupt: stored bytes exist but do not decode to content with this digest.
	// Returned wrapped in a *CorruptError that names the chunk.
	ErrCorrupt = errors.New("chunk corrupt")
	// ErrSizeMismatch: a caller's destination buffer does not have the chunk's size.
	ErrSizeMismatch = errors.New("chunk size mismatch")
)

// CorruptError names a chunk whose stored bytes fail verification.
type CorruptError struct {
	Digest Digest
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("chunk %s corrupt: %s", e.Digest, e.Reason)
}

// Unwrap makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptError) Unwrap() error { return ErrCorrupt }

// Store is the chunk store contract. Every implementation must pass the conformance suite in
// cas/castest. All methods are safe for concurrent use.
type Store interface {
	// Has reports whether the chunk is present. It does not verify the content.
	Has(ctx context.Context, d Digest) (bool, error)
	// Stat describes a present chunk, or returns ErrNotFound.
	Stat(ctx context.Context, d Digest) (Info, error)
	// Get decodes the chunk into dst and verifies it against d. It appends to dst[:0]; when
	// cap(dst) is at least the chunk's size no allocation happens and the returned slice shares
	// dst's backing array. On any error the contents of dst are unspecified (they may hold part
	// of the chunk). Returns ErrNotFound or a *CorruptError (wrapped).
	Get(ctx context.Context, d Digest, dst []byte) ([]byte, error)
	// Put stores data under its digest and returns the chunk's Info. Putting a chunk that is
	// already present succeeds and costs about a stat. data is only read during the call. The
	// chunk becomes visible under its name only once it is durable and verified.
	Put(ctx context.Context, data []byte, hint Hint) (Info, error)
	// Delete removes the chunk; deleting an absent chunk is not an error.
	Delete(ctx context.Context, d Digest) error
	// Walk calls fn for every stored chunk, in no particular order, until fn returns an error,
	// which Walk returns.
	Walk(ctx context.Context, fn func(Info) error) error
}
