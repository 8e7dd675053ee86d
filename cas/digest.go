// Package cas is driftstore's content-addressed chunk store: the Digest that names a chunk, the
// Store contract every backend implements, and the local-disk and in-memory stores.
//
// A chunk is named by the BLAKE3-256 of its uncompressed bytes. Stores may keep a chunk
// compressed, but every read verifies the decoded bytes against the name before returning them.
package cas

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/zeebo/blake3"
)

// Digest is the BLAKE3-256 of a chunk's uncompressed content. It is a comparable value and can
// be used as a map key. The zero Digest names nothing.
type Digest [32]byte

// digestPrefix is the algorithm tag of the text form.
const digestPrefix = "blake3:"

// ErrBadDigest is returned (wrapped) when a digest's text form cannot be parsed.
var ErrBadDigest = errors.New("bad digest")

// Sum returns the Digest of data.
func Sum(data []byte) Digest { return Digest(blake3.Sum256(data)) }

// String returns the text form, "blake3:" followed by 64 lowercase hex digits.
func (d Digest) String() string {
	var buf [len(digestPrefix) + 64]byte
	copy(buf[:], digestPrefix)
	hex.Encode(buf[len(digestPrefix):], d[:])
	return string(buf[:])
}

// Hex returns the 64 lowercase hex digits without the algorithm tag.
func (d Digest) Hex() string { return hex.EncodeToString(d[:]) }

// IsZero reports whether d is the zero Digest.
func (d Digest) IsZero() bool { return d == Digest{} }

// ParseDigest parses the text form "blake3:<64 lowercase hex>". Anything else, including upper
// case hex, a missing tag or a wrong length, is refused with an error wrapping ErrBadDigest.
func ParseDigest(s string) (Digest, error) {
	var d Digest
	hexPart, ok := strings.CutPrefix(s, digestPrefix)
	if !ok {
		return d, fmt.Errorf("%w %q: want %s<64 hex digits>", ErrBadDigest, truncate(s), digestPrefix)
	}
	if len(hexPart) != 64 {
		return d, fmt.Errorf("%w %q: want 64 hex digits, got %d", ErrBadDigest, truncate(s), len(hexPart))
	}
	for i := 0; i < len(hexPart); i++ {
		c := hexPart[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return d, fmt.Errorf("%w %q: character %d is not lowercase hex", ErrBadDigest, truncate(s), len(digestPrefix)+i)
		}
	}
	if _, err := hex.Decode(d[:], []byte(hexPart)); err != nil {
		return d, fmt.Errorf("%w %q: %v", ErrBadDigest, truncate(s), err)
	}
	return d, nil
}

// MarshalText implements encoding.TextMarshaler with the text form.
func (d Digest) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; it accepts exactly what ParseDigest does.
func (d *Digest) UnmarshalText(b []byte) error {
	p, err := ParseDigest(string(b))
	if err != nil {
		return err
	}
	*d = p
	return nil
}

// truncate keeps error messages about untrusted input short.
func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
