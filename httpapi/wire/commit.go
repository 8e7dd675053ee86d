package wire

import (
	"encoding/binary"
	"fmt"

	"github.com/driftstore/driftstore/cas"
)

// PathCommitSuffix ends the route that commits manifests and moves a ref in one request:
// POST PathRefs + "/" + kind + "/" + name + PathCommitSuffix, body a RefCommit.
const PathCommitSuffix = "/commit"

// MediaTypeRefCommit is the content type of an encoded RefCommit.
const MediaTypeRefCommit = "application/vnd.driftstore.ref-commit.v1"

// MaxCommitManifests is the most manifests one ref commit carries; a whole ref commit body is
// bounded like one manifest's (the server's MaxManifestSize, plus CommitOverhead). A client
// with more sends the older manifests one by one first.
const MaxCommitManifests = 1024

// CommitOverhead is the most bytes a ref commit adds around its manifests: magic, the two IDs,
// the count and a length per manifest.
const CommitOverhead = len(commitMagic) + 64 + binary.MaxVarintLen64*(MaxCommitManifests+1)

// Ref commit, version 1: the manifests a ref move needs and the move, in one body.
//
//	commit   = magic old[32] new[32] count:uvarint manifest{count}
//	magic    = "DSRC" 0x01
//	manifest = length:uvarint bytes[length]
//
// old and new are manifest IDs, all zero bytes for none (old none: the ref must not exist; new
// none: delete it). Manifests come parents first, each in its canonical encoding (its ID is the
// BLAKE3 of those bytes). The receiver commits them and moves the ref in one transaction, or
// nothing.
const commitMagic = "DSRC\x01"

// RefCommit is a ref commit's content.
type RefCommit struct {
	Old, New  cas.Digest
	Manifests [][]byte
}

// CommitLimits bound what DecodeRefCommit accepts.
type CommitLimits struct {
	MaxManifests    int // manifests in one commit
	MaxManifestSize int // bytes of one manifest
}

// AppendRefCommit appends c's encoding to dst.
func AppendRefCommit(dst []byte, c *RefCommit) []byte {
	dst = append(dst, commitMagic...)
	dst = append(dst, c.Old[:]...)
	dst = append(dst, c.New[:]...)
	dst = binary.AppendUvarint(dst, uint64(len(c.Manifests)))
	for _, m := range c.Manifests {
		dst = binary.AppendUvarint(dst, uint64(len(m)))
		dst = append(dst, m...)
	}
	return dst
}

// DecodeRefCommit decodes a ref commit from b, for untrusted input: every count and length is
// checked against lim and against what b holds before anything is allocated; nothing may
// follow the last manifest. Errors wrap ErrMalformed. The manifests share b.
func DecodeRefCommit(b []byte, lim CommitLimits) (*RefCommit, error) {
	if len(b) < len(commitMagic)+64 || string(b[:len(commitMagic)]) != commitMagic {
		return nil, fmt.Errorf("%w: not a ref commit (version 1)", ErrMalformed)
	}
	b = b[len(commitMagic):]
	c := &RefCommit{}
	copy(c.Old[:], b)
	copy(c.New[:], b[32:])
	b = b[64:]
	n, k := minimalUvarint(b)
	if k <= 0 {
		return nil, fmt.Errorf("%w: ref commit: bad manifest count", ErrMalformed)
	}
	b = b[k:]
	// Each manifest takes at least its one-byte length.
	if n > uint64(lim.MaxManifests) || n > uint64(len(b)) {
		return nil, fmt.Errorf("%w: ref commit of %d manifests (at most %d)", ErrMalformed, n, lim.MaxManifests)
	}
	c.Manifests = make([][]byte, 0, n)
	for i := range n {
		l, k := minimalUvarint(b)
		if k <= 0 {
			return nil, fmt.Errorf("%w: ref commit: manifest %d: bad length", ErrMalformed, i)
		}
		b = b[k:]
		if l > uint64(lim.MaxManifestSize) {
			return nil, fmt.Errorf("%w: ref commit: manifest %d of %d bytes (at most %d)", ErrMalformed, i, l, lim.MaxManifestSize)
		}
		if l > uint64(len(b)) {
			return nil, fmt.Errorf("%w: ref commit: manifest %d truncated", ErrMalformed, i)
		}
		c.Manifests = append(c.Manifests, b[:l:l])
		b = b[l:]
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: ref commit: %d bytes after the last manifest", ErrMalformed, len(b))
	}
	return c, nil
}

// minimalUvarint is binary.Uvarint refusing (k = 0) an encoding longer than needed, so that a
// ref commit has one encoding.
func minimalUvarint(b []byte) (uint64, int) {
	v, k := binary.Uvarint(b)
	if k > 1 && b[k-1] == 0 {
		return 0, 0
	}
	return v, k
}
